//! Amazon SQS behind [`QueueBackend`]: several hosts pointed at the same
//! queues are competing consumers, and SQS does the coordination.
//!
//! What maps directly: sends (batches of 10), long-polling receives of up
//! to 10, leases as receipt handles, renewals and retry delays as
//! `ChangeMessageVisibility` (at most 12 hours), `ApproximateReceiveCount`
//! as the attempt, counts from `GetQueueAttributes`, purges. What is built
//! on it: a delay past SQS's 15 minutes holds the message (it is sent
//! again, with the time left, until due); a dead letter is sent to the
//! queue's `__dlq` queue with its reason and then deleted; dead letters
//! are listed and redriven by receiving from that queue. What SQS does
//! not have is refused, naming the limit (see [`QueueFeatures`]):
//! priorities, groups and dedup ids on a standard queue, peeking,
//! checkpoints, a delay on a FIFO queue, messages over 256 KiB as sent.
//! A settlement's replies are sent before its delete, so a host that dies
//! in between sends them again (at least once, not exactly once); a stale
//! receipt cannot be told from a live one (SQS accepts both).
//!
//! fnhost queue `q` is the SQS queue `<prefix>q` (`.` becomes `_`; FIFO
//! queues end in `.fifo`). Knows nothing of wasm, functions or HTTP.

mod codec;

use crate::clock::Clock;
use crate::queue::{
    DeadLetter, Delivery, Message, NewMessage, QueueBackend, QueueError, QueueFeatures, QueueStats,
    Receipt, Sent, Settlement,
};
use crate::task::BoxFuture;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use codec::{META, Meta, Received};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest SQS delays a message by itself.
const MAX_SQS_DELAY: Duration = Duration::from_secs(15 * 60);
/// The longest visibility timeout SQS takes.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// The largest message SQS takes, body and attributes together.
const MAX_SQS_MESSAGE: usize = 256 << 10;
/// The suffix of a queue's dead-letter queue (`__` never occurs in a mapped name).
const DLQ_SUFFIX: &str = "__dlq";

/// How fnhost's queues map to SQS queues.
#[derive(Debug, Clone, Default)]
pub struct SqsSettings {
    /// Prepended to every queue name.
    pub prefix: String,
    /// fnhost queues that are FIFO queues on SQS (groups, dedup ids).
    pub fifo: Vec<String>,
    /// Create a queue (and its dead-letter queue) the first time it is used
    /// when it does not exist; otherwise that use fails, naming the queue.
    pub create: bool,
}

/// The SQS queue backend (cheap to share).
pub struct SqsQueues {
    client: aws_sdk_sqs::Client,
    settings: SqsSettings,
    clock: Arc<dyn Clock>,
    /// Queue URLs by SQS name, looked up (or created) once.
    urls: tokio::sync::RwLock<HashMap<String, String>>,
    /// What this host holds leases on: SQS messages cannot be read back by
    /// receipt, and a dead letter needs the message.
    leased: Mutex<HashMap<String, Received>>,
}

impl SqsQueues {
    /// A backend on the SQS endpoint and credentials of `sdk`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        settings: SqsSettings,
        clock: Arc<dyn Clock>,
    ) -> SqsQueues {
        SqsQueues {
            client: aws_sdk_sqs::Client::new(sdk),
            settings,
            clock,
            urls: Default::default(),
            leased: Default::default(),
        }
    }

    /// A backend for `target` (see [`aws::Target`](super::aws::Target)).
    pub async fn connect(
        target: super::aws::Target,
        settings: SqsSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<SqsQueues, QueueError> {
        let sdk = super::aws::sdk_config(target, "queues")
            .await
            .map_err(QueueError::Invalid)?;
        Ok(SqsQueues::new(&sdk, settings, clock))
    }

    /// The ARN of `queue` (created if missing and allowed), which an S3
    /// bucket's notification configuration names.
    pub async fn arn(&self, queue: &str) -> Result<String, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot read the ARN of {queue:?}"), e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| QueueError::backend(format!("SQS gave no ARN for {queue:?}")))
    }

    /// Check that the endpoint answers and the credentials are accepted.
    pub async fn check(&self) -> Result<(), QueueError> {
        self.client
            .list_queues()
            .queue_name_prefix(&self.settings.prefix)
            .max_results(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| sqs_error("cannot reach SQS", e))
    }

    fn is_fifo(&self, queue: &str) -> bool {
        let base = queue.strip_suffix(DLQ_SUFFIX).unwrap_or(queue);
        self.settings.fifo.iter().any(|q| q == base)
    }

    /// The SQS name of fnhost queue `queue` (or of a dead-letter queue).
    fn sqs_name(&self, queue: &str) -> String {
        let mapped = format!("{}{}", self.settings.prefix, queue.replace('.', "_"));
        let fifo = if self.is_fifo(queue) { ".fifo" } else { "" };
        if mapped.len() + fifo.len() <= 80 {
            return format!("{mapped}{fifo}");
        }
        // Too long for SQS: a prefix and a hash of the whole name.
        let hash = &crate::files::sha256_hex(mapped.as_bytes())[..16];
        format!("{}-{hash}{fifo}", &mapped[..80 - 17 - fifo.len()])
    }

    /// The URL of `queue`, created if missing and allowed.
    async fn url(&self, queue: &str) -> Result<String, QueueError> {
        let name = self.sqs_name(queue);
        if let Some(url) = self.urls.read().await.get(&name) {
            return Ok(url.clone());
        }
        let found = self.client.get_queue_url().queue_name(&name).send().await;
        let url = match found {
            Ok(out) => out.queue_url().unwrap_or_default().to_string(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                if !self.settings.create {
                    return Err(QueueError::Invalid(format!(
                        "queue {} has no SQS queue {name:?}; create it (and {:?} for its dead letters), or set `create = true` under [queues] in the host config",
                        crate::text::quote(queue),
                        self.sqs_name(&format!("{queue}{DLQ_SUFFIX}"))
                    )));
                }
                let mut create = self.client.create_queue().queue_name(&name);
                if self.is_fifo(queue) {
                    create = create.attributes(QueueAttributeName::FifoQueue, "true");
                }
                create
                    .send()
                    .await
                    .map_err(|e| sqs_error(&format!("cannot create SQS queue {name:?}"), e))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string()
            }
            Err(e) => return Err(sqs_error(&format!("cannot find SQS queue {name:?}"), e)),
        };
        self.urls.write().await.insert(name, url.clone());
        Ok(url)
    }

    /// The fnhost name of `queue`'s dead-letter queue.
    fn dlq(queue: &str) -> String {
        format!("{queue}{DLQ_SUFFIX}")
    }

    /// Send one message (checked) to `queue`, with `meta` beside the body.
    async fn send_one(
        &self,
        queue: &str,
        msg: NewMessage,
        extra: impl FnOnce(&mut Meta),
    ) -> Result<Sent, QueueError> {
        let entry = self.entry(queue, "0", &msg, extra)?;
        let url = self.url(queue).await?;
        let mut send = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(entry.message_body())
            .set_message_attributes(entry.message_attributes().cloned())
            .set_message_group_id(entry.message_group_id().map(str::to_string))
            .set_message_deduplication_id(entry.message_deduplication_id().map(str::to_string));
        if let Some(d) = entry.delay_seconds() {
            send = send.delay_seconds(d);
        }
        let out = send
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot send to {queue:?}"), e))?;
        Ok(Sent {
            id: out.message_id().unwrap_or_default().to_string(),
            duplicate: false,
        })
    }

    /// `msg` as an SQS batch entry for `queue`, checked against what SQS
    /// can carry; `extra` adds to its metadata.
    fn entry(
        &self,
        queue: &str,
        id: &str,
        msg: &NewMessage,
        extra: impl FnOnce(&mut Meta),
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        let now = self.clock.now_ms();
        self.features(queue).check(queue, msg, "SQS")?;
        let fifo = self.is_fifo(queue);
        let delay_ms = crate::queue::visible_at(msg.delay_ms, msg.not_before_ms, now) - now;
        if fifo && delay_ms > 0 {
            return Err(QueueError::Invalid(format!(
                "queue {} is a FIFO queue on SQS, which takes no delay per message; send without one",
                crate::text::quote(queue)
            )));
        }
        let (delay_secs, due) = if delay_ms <= MAX_SQS_DELAY.as_millis() as u64 {
            (delay_ms.div_ceil(1000) as i32, None)
        } else {
            (MAX_SQS_DELAY.as_secs() as i32, Some(now + delay_ms))
        };
        let (body, base64) = codec::encode_body(&msg.body);
        let mut meta = codec::meta_of(msg, now, due, base64);
        extra(&mut meta);
        let json = serde_json::to_string(&meta).map_err(|e| QueueError::Invalid(e.to_string()))?;
        let size = body.len() + json.len() + META.len() + "String".len();
        if size > MAX_SQS_MESSAGE {
            return Err(QueueError::Invalid(format!(
                "the message is {size} bytes as SQS would carry it (its body{} and fnhost's metadata), over SQS's limit of {MAX_SQS_MESSAGE}",
                if base64 { " in base64" } else { "" }
            )));
        }
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(json)
            .build()
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(body)
            .message_attributes(META, attribute);
        if fifo {
            // Without a group, each message is its own group: no order to keep.
            let group = msg
                .group
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let dedup = match &msg.dedup_id {
                Some(d) => crate::files::sha256_hex(
                    format!("{}/{d}", msg.dedup_scope.as_deref().unwrap_or("")).as_bytes(),
                ),
                None => uuid::Uuid::now_v7().to_string(),
            };
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        } else if delay_secs > 0 {
            entry = entry.delay_seconds(delay_secs);
        }
        entry
            .build()
            .map_err(|e| QueueError::Invalid(e.to_string()))
    }

    /// A message received before it is due (a delay longer than SQS's 15
    /// minutes): sent again with the time left, and the copy received now
    /// deleted, so the receive count of the one finally delivered is its own.
    async fn hold(&self, queue: &str, url: &str, handle: &str, r: &Received, due: u64) {
        let now = self.clock.now_ms();
        let msg = NewMessage {
            not_before_ms: Some(due),
            ..codec::resend(r)
        };
        let meta = r.meta.clone();
        let sent = self
            .send_one(queue, msg, |m| {
                m.sent_at_ms = meta.sent_at_ms;
                m.dedup_id = meta.dedup_id.clone();
            })
            .await;
        match sent {
            Ok(_) => {
                let _ = self.delete(url, handle).await;
            }
            Err(e) => {
                // Left to come back after its visibility timeout.
                tracing::warn!(queue = %queue, error = %e, due_ms = due, now_ms = now, "cannot hold a delayed message; it comes back later");
            }
        }
    }

    async fn delete(&self, url: &str, handle: &str) -> Result<bool, QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(handle)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sqs_error("cannot delete a message", e)),
        }
    }

    async fn visibility(&self, receipt: &Receipt, after: Duration) -> Result<bool, QueueError> {
        let (queue, handle) = lease_parts(receipt)?;
        let url = self.url(queue).await?;
        let secs = seconds(after.min(MAX_VISIBILITY));
        match self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(secs)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(sqs_error("cannot change a message's visibility", e)),
        }
    }

    /// Up to `max` messages of `queue`, leased for `visibility`, waiting
    /// up to `wait` for the first.
    async fn receive_raw(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<(String, Received)>, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.min(crate::queue::MAX_WAIT).as_secs() as i32)
            .visibility_timeout(seconds(visibility.min(MAX_VISIBILITY)))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names(META)
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot receive from {queue:?}"), e))?;
        let visible_at = self.clock.now_ms() + visibility.as_millis() as u64;
        let mut got = Vec::new();
        for m in out.messages() {
            let handle = m.receipt_handle().unwrap_or_default().to_string();
            match codec::decode(queue, m, visible_at) {
                Ok(r) => got.push((handle, r)),
                Err(why) => {
                    tracing::error!(queue = %queue, message = ?m.message_id(), %why, "an SQS message fnhost cannot read is moved to the dead letters");
                    let dead = NewMessage {
                        body: m.body().unwrap_or_default().as_bytes().to_vec(),
                        ..NewMessage::default()
                    };
                    let reason = format!("fnhost cannot read this message: {why}");
                    if self.bury(queue, dead, reason).await.is_ok() {
                        let _ = self.delete(&url, &handle).await;
                    }
                }
            }
        }
        Ok(got)
    }

    /// Approximate counts of `queue` (none when the queue does not exist).
    async fn counts(&self, queue: &str) -> Result<Option<(u64, u64, u64)>, QueueError> {
        let name = self.sqs_name(queue);
        let url = match self.client.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_string(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(sqs_error(&format!("cannot find SQS queue {name:?}"), e)),
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot count {queue:?}"), e))?;
        let get = |a: QueueAttributeName| {
            out.attributes()
                .and_then(|m| m.get(&a))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Some((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )))
    }

    /// Redrive (send back to `queue`) or purge the dead letters of
    /// `queue` that `ids` names (all when none), receiving them from its
    /// dead-letter queue in rounds of 10; the others are made visible again.
    async fn sweep_dead(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
        redrive: bool,
    ) -> Result<u64, QueueError> {
        let dlq = Self::dlq(queue);
        let url = self.url(&dlq).await?;
        let mut done = 0;
        for _ in 0..100 {
            let got = self
                .receive_raw(&dlq, 10, Duration::from_secs(30), Duration::ZERO)
                .await?;
            if got.is_empty() {
                break;
            }
            for (handle, r) in got {
                let id = r.meta.original_id.as_ref().unwrap_or(&r.message.id);
                if ids.as_ref().is_none_or(|ids| ids.contains(id)) {
                    if redrive {
                        self.send_one(queue, codec::resend(&r), |_| {}).await?;
                    }
                    self.delete(&url, &handle).await?;
                    done += 1;
                } else {
                    let back = Receipt {
                        id: r.message.id.clone(),
                        lease: format!("{dlq}\n{handle}"),
                    };
                    let _ = self.visibility(&back, Duration::ZERO).await;
                }
            }
        }
        Ok(done)
    }
}

/// A duration as SQS's whole seconds, rounded up (a 1.5 s lease is 2 s).
fn seconds(d: Duration) -> i32 {
    d.as_millis().div_ceil(1000) as i32
}

/// The queue and the SQS receipt handle a lease names.
fn lease_parts(receipt: &Receipt) -> Result<(&str, &str), QueueError> {
    receipt
        .lease
        .split_once('\n')
        .ok_or_else(|| QueueError::Invalid("not an SQS receipt".into()))
}

/// An SQS call's failure, keeping its cause; throttling says so.
fn sqs_error<E, R>(what: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
    let throttled = e
        .as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c.contains("Throttl") || c.contains("OverLimit"));
    let message = format!("{what}: {}", crate::text::cut(&detail, 512));
    if throttled {
        QueueError::Throttled {
            message,
            source: Some(Arc::new(e)),
        }
    } else {
        QueueError::Backend {
            message,
            source: Some(Arc::new(e)),
        }
    }
}

impl QueueBackend for SqsQueues {
    fn features(&self, queue: &str) -> QueueFeatures {
        let fifo = self.is_fifo(queue);
        QueueFeatures {
            priorities: false,
            groups: fifo,
            dedup: fifo,
            peek: false,
            checkpoints: false,
            exact_pending: false,
            atomic_replies: false,
            max_body_bytes: MAX_SQS_MESSAGE,
            max_receive: 10,
            long_poll: crate::queue::MAX_WAIT,
        }
    }

    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            crate::queue::validate(&queue, &msg, self.clock.now_ms())?;
            self.send_one(&queue, msg, |_| {}).await
        })
    }

    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let now = self.clock.now_ms();
            // Every message is checked before any is sent.
            let mut entries = Vec::with_capacity(msgs.len());
            for (i, m) in msgs.iter().enumerate() {
                crate::queue::validate(&queue, m, now)?;
                entries.push(self.entry(&queue, &i.to_string(), m, |_| {})?);
            }
            let url = self.url(&queue).await?;
            let mut sent = vec![None; entries.len()];
            for chunk in entries.chunks(10) {
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| sqs_error(&format!("cannot send to {queue:?}"), e))?;
                if let Some(f) = out.failed().first() {
                    return Err(QueueError::backend(format!(
                        "SQS refused message {} of the batch ({}: {}); the messages before it were sent",
                        f.id(),
                        f.code(),
                        f.message().unwrap_or("")
                    )));
                }
                for ok in out.successful() {
                    if let Ok(i) = ok.id().parse::<usize>() {
                        sent[i] = Some(Sent {
                            id: ok.message_id().to_string(),
                            duplicate: false,
                        });
                    }
                }
            }
            Ok(sent.into_iter().flatten().collect())
        })
    }

    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let url = self.url(&queue).await?;
            let got = self.receive_raw(&queue, max, visibility, wait).await?;
            let now = self.clock.now_ms();
            let mut out = Vec::with_capacity(got.len());
            for (handle, r) in got {
                if let Some(due) = r.meta.due_ms
                    && due > now + 1000
                {
                    self.hold(&queue, &url, &handle, &r, due).await;
                    continue;
                }
                let receipt = Receipt {
                    id: r.message.id.clone(),
                    lease: format!("{queue}\n{handle}"),
                };
                let message = r.message.clone();
                self.leased.lock().unwrap().insert(receipt.lease.clone(), r);
                out.push(Delivery { message, receipt });
            }
            Ok(out)
        })
    }

    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            let (queue, handle) = lease_parts(&receipt)?;
            // Replies first: SQS has no transaction, and a reply sent twice
            // (the host dying before the delete) beats one never sent.
            for (q, m) in then {
                self.send(&q, m).await?;
            }
            let url = self.url(queue).await?;
            if let Settlement::DeadLetter { error, function } = how {
                let held = self.leased.lock().unwrap().get(&receipt.lease).map(|r| {
                    (
                        codec::resend(r),
                        r.message.dequeue_count,
                        r.message.id.clone(),
                    )
                });
                let Some((msg, attempts, id)) = held else {
                    return Err(QueueError::backend(
                        "this host holds no lease on the message to dead-letter",
                    ));
                };
                let dlq = Self::dlq(queue);
                let error = crate::text::capped(error, crate::queue::MAX_ERROR_BYTES);
                self.send_one(&dlq, msg, |m| {
                    m.error = Some(error);
                    m.function = function;
                    m.attempts = Some(attempts);
                    m.original_id = Some(id);
                })
                .await?;
            }
            let deleted = self.delete(&url, handle).await?;
            self.leased.lock().unwrap().remove(&receipt.lease);
            Ok(deleted)
        })
    }

    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        _error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            let done = self.visibility(&receipt, delay).await;
            self.leased.lock().unwrap().remove(&receipt.lease);
            done
        })
    }

    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            for r in receipts {
                self.visibility(&r, Duration::ZERO).await?;
                self.leased.lock().unwrap().remove(&r.lease);
            }
            Ok(())
        })
    }

    fn checkpoint(
        &self,
        _receipt: Receipt,
        _state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            Err(QueueError::Unsupported(
                "checkpoints are not kept for messages on SQS queues yet".into(),
            ))
        })
    }

    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move { self.visibility(&receipt, visibility).await })
    }

    fn bury(
        &self,
        queue: &str,
        msg: NewMessage,
        error: String,
    ) -> BoxFuture<'_, Result<String, QueueError>> {
        let dlq = Self::dlq(queue);
        Box::pin(async move {
            let error = crate::text::capped(error, crate::queue::MAX_ERROR_BYTES);
            Ok(self
                .send_one(&dlq, msg, |m| m.error = Some(error))
                .await?
                .id)
        })
    }

    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let (ready, delayed, in_flight) = self.counts(&queue).await?.unwrap_or_default();
            let dead = self
                .counts(&Self::dlq(&queue))
                .await?
                .map(|(r, d, f)| r + d + f)
                .unwrap_or(0);
            Ok(QueueStats {
                queue,
                ready,
                delayed,
                in_flight,
                dead_letters: dead,
                oldest_ready_age_ms: None,
            })
        })
    }

    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let (ready, _, in_flight) = self.counts(&queue).await?.unwrap_or_default();
            Ok((ready + in_flight).min(cap))
        })
    }

    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let (ready, delayed, in_flight) = self.counts(&queue).await?.unwrap_or_default();
            Ok((ready + delayed + in_flight).min(cap))
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(async move {
            let mut names = Vec::new();
            let mut next = None;
            loop {
                let out = self
                    .client
                    .list_queues()
                    .queue_name_prefix(&self.settings.prefix)
                    .max_results(1000)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| sqs_error("cannot list SQS queues", e))?;
                for url in out.queue_urls() {
                    let name = url.rsplit('/').next().unwrap_or_default();
                    let name = name.strip_suffix(".fifo").unwrap_or(name);
                    let Some(name) = name.strip_prefix(&self.settings.prefix) else {
                        continue;
                    };
                    if !name.ends_with(DLQ_SUFFIX) {
                        names.push(name.replace('_', "."));
                    }
                }
                next = out.next_token().map(str::to_string);
                if next.is_none() {
                    break;
                }
            }
            names.sort();
            Ok(names)
        })
    }

    fn peek(&self, queue: &str, _max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>> {
        let e = QueueError::Unsupported(format!(
            "queue {} is on SQS, which cannot show messages without leasing them; see its counts with GET /v1/queues/{{queue}}",
            crate::text::quote(queue)
        ));
        Box::pin(async move { Err(e) })
    }

    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        let dlq = Self::dlq(queue);
        Box::pin(async move {
            // Received without a lease (visibility 0): listing hides
            // nothing. A message seen twice is listed once; a round that
            // shows nothing new ends the listing.
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for _ in 0..max.div_ceil(10).clamp(1, 10) {
                let got = self
                    .receive_raw(&dlq, 10, Duration::ZERO, Duration::ZERO)
                    .await?;
                let mut new = false;
                for (_, r) in got {
                    if out.len() < max && seen.insert(r.message.id.clone()) {
                        out.push(codec::dead_letter(r));
                        new = true;
                    }
                }
                if !new {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move { self.sweep_dead(&queue, ids, true).await })
    }

    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move { self.sweep_dead(&queue, ids, false).await })
    }

    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let Some((ready, delayed, in_flight)) = self.counts(&queue).await? else {
                return Ok(0);
            };
            let url = self.url(&queue).await?;
            self.client
                .purge_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| sqs_error(&format!("cannot purge {queue:?}"), e))?;
            Ok(ready + delayed + in_flight)
        })
    }
}
