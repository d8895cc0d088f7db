//! fnhost queue names as SQS queues: the mapping (prefix, `.` as `_`,
//! `.fifo`, a hash when too long) and the URLs, looked up once and created
//! when missing and allowed.

use super::*;

impl SqsQueues {
    pub(super) fn is_fifo(&self, queue: &str) -> bool {
        let base = queue.strip_suffix(DLQ_SUFFIX).unwrap_or(queue);
        self.settings.fifo.iter().any(|q| q == base)
    }

    /// The SQS name of fnhost queue `queue` (or of a dead-letter queue).
    pub(super) fn sqs_name(&self, queue: &str) -> String {
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
    pub(super) async fn url(&self, queue: &str) -> Result<String, QueueError> {
        if let Some(url) = self.find(queue).await? {
            return Ok(url);
        }
        let name = self.sqs_name(queue);
        if !self.settings.create {
            // A dead-letter queue has none of its own to name.
            let beside = match queue.strip_suffix(DLQ_SUFFIX) {
                Some(of) => format!("the dead-letter queue of {}", crate::text::quote(of)),
                None => format!(
                    "and {:?} for its dead letters, or give it a redrive policy",
                    self.sqs_name(&Self::dlq(queue))
                ),
            };
            return Err(QueueError::Invalid(format!(
                "queue {} has no SQS queue {name:?}; create it ({beside}), or set `create = true` under [queues] in the host config",
                crate::text::quote(queue),
            )));
        }
        let mut create = self.client.create_queue().queue_name(&name);
        if self.is_fifo(queue) {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let url = create
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot create SQS queue {name:?}"), e))?
            .queue_url()
            .unwrap_or_default()
            .to_string();
        self.urls.write().await.insert(name, url.clone());
        Ok(url)
    }

    /// The URL of `queue` if it exists, looked up once. A dead-letter
    /// queue is its queue's redrive target when it has one ([`dead`]).
    pub(super) async fn find(&self, queue: &str) -> Result<Option<String>, QueueError> {
        let name = self.sqs_name(queue);
        if let Some(url) = self.urls.read().await.get(&name) {
            return Ok(Some(url.clone()));
        }
        let target = match queue.strip_suffix(DLQ_SUFFIX) {
            Some(base) => self.redrive_target(base).await?,
            None => None,
        };
        let url = match target {
            Some(url) => Some(url),
            None => self.lookup(&name).await?,
        };
        if let Some(url) = &url {
            self.urls.write().await.insert(name, url.clone());
        }
        Ok(url)
    }

    /// The URL of the SQS queue `name`, if it exists.
    pub(super) async fn lookup(&self, name: &str) -> Result<Option<String>, QueueError> {
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(Some(out.queue_url().unwrap_or_default().to_string())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sqs_error(&format!("cannot find SQS queue {name:?}"), e)),
        }
    }
}
