//! The host side of the fnhost imports (`storage`, `queue`, `context`).
//!
//! Every call is checked against the function's grants first
//! ([`crate::capabilities`]); a denial is an error value for the guest.
//! Allowed queue sends go to the queue backend; storage has no backend yet,
//! so an allowed storage call answers `unavailable` with a message that says so.

use super::HostState;
use super::bindings::fnhost::job::{context, queue, storage, types};
use crate::capabilities::Access;

const NO_BLOB_STORE: &str =
    "this fnhost host has no blob store yet: buckets arrive with blob triggers in a later release";
const NO_QUEUES: &str = "this host has no queue backend configured";

/// Largest checkpoint, in bytes.
const MAX_CHECKPOINT: usize = 256 << 10;

/// Longest progress message kept, in bytes.
const MAX_PROGRESS_MESSAGE: usize = 1024;

impl types::Host for HostState {}

impl HostState {
    fn storage_check(
        &self,
        bucket: &str,
        key: &str,
        access: Access,
    ) -> Result<(), storage::StorageError> {
        self.caps
            .grants
            .check_storage(bucket, key, access)
            .map_err(storage::StorageError::Denied)
    }
}

impl storage::Host for HostState {
    async fn get(
        &mut self,
        bucket: String,
        key: String,
    ) -> Result<Option<Vec<u8>>, storage::StorageError> {
        self.storage_check(&bucket, &key, Access::Read)?;
        Err(storage::StorageError::Unavailable(NO_BLOB_STORE.into()))
    }

    async fn head(
        &mut self,
        bucket: String,
        key: String,
    ) -> Result<Option<storage::ObjectMeta>, storage::StorageError> {
        self.storage_check(&bucket, &key, Access::Read)?;
        Err(storage::StorageError::Unavailable(NO_BLOB_STORE.into()))
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        _body: Vec<u8>,
        _content_type: Option<String>,
    ) -> Result<storage::ObjectMeta, storage::StorageError> {
        self.storage_check(&bucket, &key, Access::Write)?;
        Err(storage::StorageError::Unavailable(NO_BLOB_STORE.into()))
    }

    async fn delete(&mut self, bucket: String, key: String) -> Result<bool, storage::StorageError> {
        self.storage_check(&bucket, &key, Access::Write)?;
        Err(storage::StorageError::Unavailable(NO_BLOB_STORE.into()))
    }

    async fn list_objects(
        &mut self,
        bucket: String,
        prefix: String,
    ) -> Result<Vec<storage::ObjectMeta>, storage::StorageError> {
        self.storage_check(&bucket, &prefix, Access::Read)?;
        Err(storage::StorageError::Unavailable(NO_BLOB_STORE.into()))
    }
}

impl queue::Host for HostState {
    async fn send(
        &mut self,
        queue: String,
        body: Vec<u8>,
        options: queue::SendOptions,
    ) -> Result<String, queue::QueueError> {
        self.caps
            .grants
            .check_queue_send(&queue)
            .map_err(queue::QueueError::Denied)?;
        let Some(backend) = self.caps.queues.clone() else {
            return Err(queue::QueueError::Unavailable(NO_QUEUES.into()));
        };
        let msg = crate::queue::NewMessage {
            body,
            attributes: options.attributes,
            not_before_ms: None,
            delay_ms: options.delay_ms,
            dedup_id: options.dedup_id,
            group: options.group,
            priority: options.priority.unwrap_or(0),
            correlation_id: options.correlation_id,
            reply_to: options.reply_to,
        };
        match backend.send(&queue, msg).await {
            Ok(sent) => Ok(sent.id),
            Err(crate::queue::QueueError::Invalid(m)) => Err(queue::QueueError::Invalid(m)),
            Err(e @ crate::queue::QueueError::Backend(_)) => {
                tracing::error!(queue = %queue, error = %e, "a guest's queue send failed");
                Err(queue::QueueError::Unavailable(
                    "the queue store failed; try again later".into(),
                ))
            }
        }
    }
}

impl context::Host for HostState {
    async fn progress(
        &mut self,
        percent: u8,
        message: String,
    ) -> Result<(), context::ContextError> {
        if percent > 100 {
            return Err(context::ContextError::Invalid(format!(
                "progress is a percentage from 0 to 100, got {percent}"
            )));
        }
        let mut message = message;
        if message.len() > MAX_PROGRESS_MESSAGE {
            let mut end = MAX_PROGRESS_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        tracing::debug!(percent, %message, "progress");
        if let Some(reporter) = &self.reporter {
            reporter
                .progress(percent, message.clone())
                .await
                .map_err(context::ContextError::Unavailable)?;
        }
        self.progress = Some((percent, message));
        Ok(())
    }

    async fn checkpoint(&mut self, state: Vec<u8>) -> Result<(), context::ContextError> {
        if state.len() > MAX_CHECKPOINT {
            return Err(context::ContextError::Invalid(format!(
                "a checkpoint is at most {MAX_CHECKPOINT} bytes, this one is {}",
                state.len()
            )));
        }
        match &self.reporter {
            Some(reporter) => reporter.checkpoint(state).await.map_err(context::ContextError::Unavailable),
            None => Err(context::ContextError::Unavailable(
                "checkpoints are kept for queue messages and async jobs; a synchronous invocation has no next attempt to resume"
                    .into(),
            )),
        }
    }

    async fn config(&mut self, key: String) -> Option<String> {
        self.caps.config.get(&key).cloned()
    }
}
