//! Amazon SQS behind [`QueueBackend`]: several hosts pointed at the same
//! queues are competing consumers, and SQS does the coordination.
//!
//! What maps directly: sends (batches of 10), long-polling receives of up
//! to 10, leases as receipt handles, renewals and retry delays as
//! `ChangeMessageVisibility` (at most 12 hours), `ApproximateReceiveCount`
//! as the attempt, counts from `GetQueueAttributes`, purges. What is built
//! on it: a delay past SQS's 15 minutes holds the message (it is sent
//! again, with the time left, until due); deletes go in batches of up to
//! 10 when several are due at once ([`deletes`]); a dead letter is sent to
//! the queue's own redrive target, or to its `__dlq` queue where it has
//! none, with its reason, and then deleted ([`dead`]); checkpoints are
//! documents in the state store ([`checkpoints`]). What SQS does not have
//! is refused, naming the limit (see [`QueueFeatures`]): priorities,
//! groups and dedup ids on a standard queue, peeking, a delay on a FIFO
//! queue, messages over 256 KiB as sent.
//! A settlement's replies are sent before its delete, so a host that dies
//! in between sends them again (at least once, not exactly once); a stale
//! receipt cannot be told from a live one (SQS accepts both).
//!
//! fnhost queue `q` is the SQS queue `<prefix>q` (`.` becomes `_`; FIFO
//! queues end in `.fifo`). Knows nothing of wasm, functions or HTTP.

mod checkpoints;
mod codec;
mod dead;
mod deletes;
mod receive;
mod send;
mod urls;

use crate::clock::Clock;
use crate::queue::{
    DeadLetter, Delivery, Message, NewMessage, QueueError, QueueFeatures, QueueStats, Receipt,
    Sent, Settlement,
};
use crate::queue::{QueueAdmin, QueueDelivery};
use crate::task::BoxFuture;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use codec::{Meta, Received};
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
    deletes: deletes::Deletes,
    /// Where checkpoints are kept (none: checkpoints are refused).
    checkpoints: Option<Arc<dyn crate::state::StateStore>>,
}

impl SqsQueues {
    /// A backend on the SQS endpoint and credentials of `sdk`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        settings: SqsSettings,
        clock: Arc<dyn Clock>,
    ) -> SqsQueues {
        let client = aws_sdk_sqs::Client::new(sdk);
        SqsQueues {
            deletes: deletes::Deletes::new(client.clone()),
            client,
            settings,
            clock,
            urls: Default::default(),
            leased: Default::default(),
            checkpoints: None,
        }
    }

    /// Keep messages' checkpoints in `state` (see [`checkpoints`]).
    pub fn with_checkpoints(mut self, state: Arc<dyn crate::state::StateStore>) -> SqsQueues {
        self.checkpoints = Some(state);
        self
    }

    /// A backend for `target` (see [`aws::Target`](super::aws::Target)).
    pub async fn connect(
        target: super::aws::Target,
        settings: SqsSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<SqsQueues, QueueError> {
        let sdk = super::aws::sdk_config(target, "queues")
            .await
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        Ok(SqsQueues::new(&sdk, settings, clock))
    }

    /// The ARN of `queue` (created if missing and allowed), which an S3
    /// bucket's notification configuration names, and its access policy
    /// (`Policy`), if it has one.
    pub async fn arn_and_policy(
        &self,
        queue: &str,
    ) -> Result<(String, Option<String>), QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::Policy)
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot read the ARN of {queue:?}"), e))?;
        let attribute = |name| out.attributes().and_then(|a| a.get(&name)).cloned();
        let arn = attribute(QueueAttributeName::QueueArn)
            .ok_or_else(|| QueueError::backend(format!("SQS gave no ARN for {queue:?}")))?;
        Ok((arn, attribute(QueueAttributeName::Policy)))
    }

    /// Make `policy` (an IAM policy document) `queue`'s access policy.
    pub async fn set_policy(&self, queue: &str, policy: &str) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        self.client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::Policy, policy)
            .send()
            .await
            .map(drop)
            .map_err(|e| sqs_error(&format!("cannot set the access policy of {queue:?}"), e))
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

impl QueueDelivery for SqsQueues {
    fn features(&self, queue: &str) -> QueueFeatures {
        let fifo = self.is_fifo(queue);
        QueueFeatures {
            priorities: false,
            groups: fifo,
            dedup: fifo,
            peek: false,
            checkpoints: self.checkpoints.is_some(),
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
            for (handle, mut r) in got {
                if let Some(due) = r.meta.due_ms
                    && due > now + 1000
                {
                    self.hold(&queue, &url, &handle, &r, due).await;
                    continue;
                }
                if let Err(e) = self.load_checkpoint(&queue, &mut r).await {
                    // Not delivered: it comes back when the lease runs out.
                    tracing::warn!(queue = %queue, message = %r.message.id, error = %e, "a message that came back is not delivered until its checkpoint can be read");
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
                let held = self.leased.lock().unwrap().get(&receipt.lease).cloned();
                let Some(r) = held else {
                    return Err(QueueError::backend(
                        "this host holds no lease on the message to dead-letter",
                    ));
                };
                self.bury_received(queue, &r, error, function).await?;
            }
            let deleted = self.deletes.delete(&url, handle).await?;
            let held = self.leased.lock().unwrap().remove(&receipt.lease);
            if let Some(r) = held {
                self.drop_checkpoint(queue, &r).await;
            }
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
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            let (queue, _) = lease_parts(&receipt)?;
            self.save_checkpoint(&receipt, queue, state).await
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
}

impl QueueAdmin for SqsQueues {
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
                        out.push(codec::dead_letter(self.with_kept_reason(&dlq, r).await));
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
