//! Dead letters on SQS. A queue's dead letters go to its own redrive
//! target when the queue has a `RedrivePolicy` (SQS moves a message there
//! by itself after `maxReceiveCount` receives, and fnhost sends the ones it
//! gives up on there too, with their reason); otherwise to the queue
//! `<queue>__dlq`, which fnhost keeps. Either way they are listed,
//! redriven and purged by receiving from that queue: SQS has no call to
//! read a message by id.

use super::{DLQ_SUFFIX, SqsQueues, codec, sqs_error};
use crate::queue::{QueueError, Receipt};
use aws_sdk_sqs::types::QueueAttributeName;
use std::time::Duration;

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
                let id = r.meta.original_id.as_ref().unwrap_or(&r.message.id);
                if ids.as_ref().is_none_or(|ids| ids.contains(id)) {
                    if redrive {
                        self.send_one(queue, codec::resend(&r), |_| {}).await?;
                    }
                    self.deletes.delete(&url, &handle).await?;
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
