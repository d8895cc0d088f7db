//! Checkpoints of messages on SQS. SQS messages cannot be changed, so a
//! checkpoint is a document in the host's state store (the fleet's S3
//! state bucket, or the host's own `state.db` when only the queues are on
//! SQS), at `checkpoints/<SQS queue>/<message id>`. It is read when a
//! message comes back (its receive count is over 1: a first delivery has
//! none, and costs no read) and removed once the message is deleted; a
//! host dying in between leaves the document behind, and nothing reads it
//! again.

use super::SqsQueues;
use super::codec::Received;
use crate::queue::{QueueError, Receipt};
use crate::state::Write;

impl SqsQueues {
    fn checkpoint_key(&self, queue: &str, id: &str) -> String {
        let id: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("checkpoints/{}/{id}", self.sqs_name(queue))
    }

    /// Put the stored checkpoint of a message that came back on it. An
    /// error leaves the message undelivered: it comes back when its lease
    /// runs out, rather than run without the progress it saved.
    pub(super) async fn load_checkpoint(
        &self,
        queue: &str,
        r: &mut Received,
    ) -> Result<(), QueueError> {
        let Some(state) = &self.checkpoints else {
            return Ok(());
        };
        if r.message.dequeue_count <= 1 {
            return Ok(());
        }
        let key = self.checkpoint_key(queue, &r.message.id);
        let found = state
            .get(&key)
            .await
            .map_err(|e| QueueError::backend(format!("cannot read the checkpoint {key:?}: {e}")))?;
        if let Some(doc) = found {
            r.message.checkpoint = Some(doc.bytes);
            r.checkpointed = true;
        }
        Ok(())
    }

    /// Save `bytes` as the checkpoint of the leased message; false when
    /// this host holds no lease on it.
    pub(super) async fn save_checkpoint(
        &self,
        receipt: &Receipt,
        queue: &str,
        bytes: Vec<u8>,
    ) -> Result<bool, QueueError> {
        let Some(state) = &self.checkpoints else {
            return Err(QueueError::Unsupported(format!(
                "queue {} is on SQS and this host has no state store for checkpoints",
                crate::text::quote(queue)
            )));
        };
        if !self.leased.lock().unwrap().contains_key(&receipt.lease) {
            return Ok(false);
        }
        let key = self.checkpoint_key(queue, &receipt.id);
        state
            .put(&key, bytes, Write::Overwrite)
            .await
            .map_err(|e| QueueError::backend(format!("cannot save the checkpoint {key:?}: {e}")))?;
        match self.leased.lock().unwrap().get_mut(&receipt.lease) {
            Some(r) => {
                r.checkpointed = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Remove the checkpoint of a message that is done with (deleted or
    /// dead-lettered), if one was stored. A failure is logged: the document
    /// is left behind, and nothing reads it again.
    pub(super) async fn drop_checkpoint(&self, queue: &str, r: &Received) {
        let (Some(state), true) = (&self.checkpoints, r.checkpointed) else {
            return;
        };
        let key = self.checkpoint_key(queue, &r.message.id);
        if let Err(e) = state.delete(&key).await {
            tracing::warn!(key = %key, error = %e, "cannot remove a done message's checkpoint; it is left behind");
        }
    }
}
