//! Receives and counts: SQS messages (with every attribute a producer
//! gave them) read back as fnhost's, and the approximate counts of a
//! queue.

use super::*;

impl SqsQueues {
    /// Up to `max` messages of `queue`, leased for `visibility`, waiting
    /// up to `wait` for the first.
    pub(super) async fn receive_raw(
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
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot receive from {queue:?}"), e))?;
        let visible_at = self.clock.now_ms() + visibility.as_millis() as u64;
        let mut got = Vec::new();
        for m in out.messages() {
            let handle = m.receipt_handle().unwrap_or_default().to_string();
            got.push((handle, codec::decode(queue, m, visible_at)));
        }
        Ok(got)
    }

    /// Approximate counts of `queue` (none when the queue does not exist).
    pub(super) async fn counts(&self, queue: &str) -> Result<Option<(u64, u64, u64)>, QueueError> {
        let Some(url) = self.find(queue).await? else {
            return Ok(None);
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
}
