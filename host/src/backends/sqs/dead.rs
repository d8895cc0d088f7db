//! Dead letters on SQS. A queue's dead letters go to its own redrive
//! target when the queue has a `RedrivePolicy` (SQS moves a message there
//! by itself after `maxReceiveCount` receives, and fnhost sends the ones it
//! gives up on there too, with their reason); otherwise to the queue
//! `<queue>__dlq` (`<queue>__dlq.fifo` for a FIFO queue), which fnhost
//! keeps. Either way they are listed, redriven and purged by receiving
//! from that queue: SQS has no call to read a message by id.
//!
//! A dead letter is the message as it came — body, a producer's
//! attributes of every type, its group — with its reason, function and
//! attempts in `fnhost-meta`. Every message SQS carried can be
//! dead-lettered: when the reason does not fit beside it (a message at
//! SQS's 256 KiB, or with SQS's ten attributes already), the reason is cut
//! to fit, and when not even that fits the message goes as it came, byte
//! for byte, and its reason is kept in the state store
//! (`dead-letter-reasons/<SQS queue>/<id>`; without one, only in the log).

use super::codec::{Meta, Received};
use super::{DLQ_SUFFIX, MAX_SQS_MESSAGE, SqsQueues, codec, sqs_error};
use crate::queue::{QueueError, Receipt};
use crate::state::Write;
use aws_sdk_sqs::types::QueueAttributeName;
use std::time::Duration;

/// The least of a reason worth keeping beside a message; below it, the
/// message goes as it came and the reason is kept apart.
const MIN_REASON_BYTES: usize = 64;

/// A queue's `RedrivePolicy` attribute (JSON, as SQS keeps it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedrivePolicy {
    dead_letter_target_arn: String,
    max_receive_count: serde_json::Value,
}

impl SqsQueues {
    /// The fnhost name of `queue`'s dead-letter queue.
    pub(super) fn dlq(queue: &str) -> String {
        format!("{queue}{DLQ_SUFFIX}")
    }

    /// The URL of the redrive target `queue` names in its own
    /// `RedrivePolicy`, if it exists and has one.
    pub(super) async fn redrive_target(&self, queue: &str) -> Result<Option<String>, QueueError> {
        let name = self.sqs_name(queue);
        let cached = self.urls.read().await.get(&name).cloned();
        let url = match cached {
            Some(url) => url,
            None => match self.lookup(&name).await? {
                Some(url) => url,
                None => return Ok(None),
            },
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot read the redrive policy of {name:?}"), e))?;
        let Some(json) = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        let policy: RedrivePolicy = serde_json::from_str(json).map_err(|e| {
            QueueError::backend(format!(
                "SQS queue {name:?} has a redrive policy fnhost cannot read ({e}): {}",
                crate::text::cut(json, 256)
            ))
        })?;
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = policy.dead_letter_target_arn.split(':').collect();
        let [.., account, target] = parts.as_slice() else {
            return Err(QueueError::backend(format!(
                "SQS queue {name:?} names a redrive target that is not a queue ARN: {:?}",
                policy.dead_letter_target_arn
            )));
        };
        let found = self
            .client
            .get_queue_url()
            .queue_name(*target)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| {
                sqs_error(
                    &format!("cannot find {target:?}, the redrive target of {name:?}"),
                    e,
                )
            })?;
        tracing::info!(
            queue = %queue,
            dead_letters = %target,
            max_receive_count = %policy.max_receive_count,
            "the queue has its own redrive policy: SQS moves a message there after that many receives, and fnhost sends its dead letters there too"
        );
        Ok(found.queue_url().map(str::to_string))
    }

    /// Send the received message `r` of `queue` to its dead letters, with
    /// why (see the module docs).
    pub(super) async fn bury_received(
        &self,
        queue: &str,
        r: &Received,
        error: String,
        function: Option<String>,
    ) -> Result<(), QueueError> {
        let dlq = Self::dlq(queue);
        let meta = Meta {
            function,
            attempts: Some(r.message.dequeue_count),
            original_id: Some(r.meta.original_id.clone().unwrap_or(r.message.id.clone())),
            error: None,
            ..r.meta.clone()
        };
        let error = crate::text::capped(error, crate::queue::MAX_ERROR_BYTES);
        let mut budget = error.len();
        let fitted = loop {
            let reason = crate::text::capped(error.clone(), budget);
            let with = Meta {
                error: Some(reason),
                ..meta.clone()
            };
            let out = codec::forward(r, &with);
            let size = codec::sqs_size(&out.body, &out.attributes);
            if size <= MAX_SQS_MESSAGE && out.attributes.len() <= codec::MAX_SQS_ATTRIBUTES {
                break Some(out);
            }
            // Escapes make the reason longer in JSON than in bytes: cut by
            // what is over, and again if that was not enough.
            budget = budget.saturating_sub((size - MAX_SQS_MESSAGE.min(size)).max(1));
            if budget < MIN_REASON_BYTES || out.attributes.len() > codec::MAX_SQS_ATTRIBUTES {
                break None;
            }
        };
        if let Some(out) = fitted {
            self.send_out(&dlq, out, r.sqs_group.clone(), 0).await?;
            return Ok(());
        }
        let id = (self.send_out(&dlq, codec::as_it_came(r), r.sqs_group.clone(), 0)).await?;
        let kept = Meta {
            error: Some(error.clone()),
            ..meta
        };
        let where_kept = match self.keep_reason(&dlq, &id, &kept).await {
            Ok(true) => "in the state store",
            Ok(false) => "only in this log (no state store)",
            Err(e) => {
                tracing::error!(queue = %queue, error = %e, "cannot keep a dead letter's reason in the state store");
                "only in this log (the state store failed)"
            }
        };
        tracing::warn!(queue = %queue, message = %r.message.id, dead_letter = %id, reason = %crate::text::LogSafe(&error), "dead-lettered as it came: SQS cannot carry its reason beside it, so the reason is kept {where_kept}");
        Ok(())
    }

    fn reason_key(&self, dlq: &str, id: &str) -> String {
        let id: String = (id.chars())
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("dead-letter-reasons/{}/{id}", self.sqs_name(dlq))
    }

    /// Keep the reason (and the rest of `meta`) of the dead letter `id` of
    /// `dlq` in the state store; false without one.
    async fn keep_reason(&self, dlq: &str, id: &str, meta: &Meta) -> Result<bool, QueueError> {
        let Some(state) = &self.checkpoints else {
            return Ok(false);
        };
        let bytes = serde_json::to_vec(meta).expect("metadata serializes");
        state
            .put(&self.reason_key(dlq, id), bytes, Write::Overwrite)
            .await
            .map_err(|e| QueueError::backend(format!("cannot keep a dead letter's reason: {e}")))?;
        Ok(true)
    }

    /// The dead letter `r` of `dlq` with the reason kept apart from it, if
    /// there is one.
    pub(super) async fn with_kept_reason(&self, dlq: &str, mut r: Received) -> Received {
        if r.meta.error.is_some() {
            return r;
        }
        let Some(state) = &self.checkpoints else {
            return r;
        };
        match state.get(&self.reason_key(dlq, &r.message.id)).await {
            Ok(Some(doc)) => {
                if let Ok(kept) = serde_json::from_slice::<Meta>(&doc.bytes) {
                    r.meta.error = kept.error;
                    r.meta.function = kept.function;
                    r.meta.attempts = kept.attempts;
                    r.meta.original_id = kept.original_id;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dead_letters = %dlq, error = %e, "cannot read a dead letter's reason from the state store")
            }
        }
        r
    }

    /// Forget the reason kept apart for the dead letter `id` of `dlq`.
    async fn forget_reason(&self, dlq: &str, id: &str) {
        if let Some(state) = &self.checkpoints
            && let Err(e) = state.delete(&self.reason_key(dlq, id)).await
        {
            tracing::warn!(dead_letters = %dlq, error = %e, "cannot remove a dead letter's kept reason; it is left behind");
        }
    }

    /// Redrive (send back to `queue`) or purge the dead letters of
    /// `queue` that `ids` names (all when none), receiving them from its
    /// dead-letter queue in rounds of 10; the others are made visible again.
    pub(super) async fn sweep_dead(
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
                let r = self.with_kept_reason(&dlq, r).await;
                let id = r.meta.original_id.as_ref().unwrap_or(&r.message.id);
                if ids.as_ref().is_none_or(|ids| ids.contains(id)) {
                    if redrive {
                        // Back as it came, its dead-letter fields dropped.
                        let meta = Meta {
                            error: None,
                            function: None,
                            attempts: None,
                            original_id: None,
                            ..r.meta.clone()
                        };
                        let out = codec::forward(&r, &meta);
                        self.send_out(queue, out, r.sqs_group.clone(), 0).await?;
                    }
                    self.deletes.delete(&url, &handle).await?;
                    self.forget_reason(&dlq, &r.message.id).await;
                    done += 1;
                } else {
                    let back = Receipt {
                        id: r.message.id.clone(),
                        lease: format!("{dlq}\n{handle}"),
                    };
                    if let Err(e) = self.visibility(&back, Duration::ZERO).await {
                        tracing::warn!(message = %r.message.id, error = %e, "a dead letter not redriven cannot be shown again at once; it reappears after its visibility timeout");
                    }
                }
            }
        }
        Ok(done)
    }
}
