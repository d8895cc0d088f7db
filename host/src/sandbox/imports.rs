//! The host side of the fnhost imports (`storage`, `queue`, `context`).
//!
//! Every call is checked against the function's grants first
//! ([`crate::capabilities`]); a denial is an error value for the guest.
//! Allowed calls go to the queue and blob backends held in the function's
//! capabilities.

use super::HostState;
use super::bindings::fnhost::job::{context, queue, storage, types};
use crate::blobs::{BlobBackend, BlobError};
use crate::capabilities::Access;
use std::sync::Arc;

const NO_BLOB_STORE: &str = "this host has no blob store configured";
const NO_QUEUES: &str = "this host has no queue backend configured";

use crate::exec::{
    MAX_CHECKPOINT_BYTES as MAX_CHECKPOINT, MAX_LISTED, MAX_PAGE,
    MAX_PROGRESS_MESSAGE_BYTES as MAX_PROGRESS_MESSAGE,
};

impl types::Host for HostState {}

impl HostState {
    /// The blob backend, if `access` to `key` in `bucket` is granted,
    /// with the audit line an access to a sensitive bucket needs written
    /// first ([`Audited::written`]).
    fn storage(
        &self,
        bucket: &str,
        key: &str,
        access: Access,
    ) -> Result<(Arc<dyn BlobBackend>, Audited), storage::StorageError> {
        if let Err(why) = self.profile.grants.check_storage(bucket, key, access) {
            let call = if access == Access::Read {
                "read"
            } else {
                "write"
            };
            self.audit_denial(format!("storage {call} {bucket}/{key}"), &why.to_string());
            return Err(storage::StorageError::Denied(why.to_string()));
        }
        self.granted(bucket, key, access)
    }

    /// The blob backend for a granted access, and its audit line if the
    /// bucket is sensitive.
    fn granted(
        &self,
        bucket: &str,
        key: &str,
        access: Access,
    ) -> Result<(Arc<dyn BlobBackend>, Audited), storage::StorageError> {
        let blobs = (self.stores.blobs.clone())
            .ok_or_else(|| storage::StorageError::Unavailable(NO_BLOB_STORE.into()))?;
        if !self.stores.sensitive.contains(bucket) {
            return Ok((blobs, Audited(None)));
        }
        let call = if access == Access::Read {
            "read"
        } else {
            "write"
        };
        let entry = self.entry(
            "sensitive.access",
            "ok",
            &format!("storage {call} {bucket}/{key}"),
            None,
        );
        let audited = Audited(Some((self.stores.audit.clone(), entry, bucket.to_string())));
        Ok((blobs, audited))
    }

    /// Record a denied call in the audit log (the first
    /// [`super::MAX_AUDITED_DENIALS`] of the invocation, then one line
    /// saying the rest are not).
    fn audit_denial(&self, target: String, why: &str) {
        let n = self.denials.get();
        self.denials.set(n.saturating_add(1));
        let detail = match n {
            n if n < super::MAX_AUDITED_DENIALS => why.to_string(),
            n if n == super::MAX_AUDITED_DENIALS => {
                "more denied calls of this invocation are not recorded".to_string()
            }
            _ => return,
        };
        self.audit("guest.denied", "denied", &target, Some(detail));
    }

    /// An audit line about this invocation's call to `target`, written
    /// as well as the log can (a denial).
    fn audit(
        &self,
        event: &'static str,
        outcome: &'static str,
        target: &str,
        detail: Option<String>,
    ) {
        if let Some(audit) = &self.stores.audit {
            audit.record(self.entry(event, outcome, target, detail));
        }
    }

    /// The audit entry of this invocation's call to `target`.
    fn entry(
        &self,
        event: &'static str,
        outcome: &'static str,
        target: &str,
        detail: Option<String>,
    ) -> crate::audit::Entry {
        crate::audit::Entry {
            event: event.into(),
            outcome: outcome.into(),
            target: Some(format!(
                "{} invocation {}: {target}",
                self.profile.who(),
                self.invocation_id
            )),
            detail,
            ..crate::audit::Entry::default()
        }
    }

    /// The blob backend, if reading the object `key` in `bucket` is
    /// granted: by a read grant, or by a `read-event` grant when it is the
    /// object this invocation's event is about.
    fn object_read(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(Arc<dyn BlobBackend>, Audited), storage::StorageError> {
        let event = self
            .event_object
            .as_ref()
            .map(|(b, k)| (b.as_str(), k.as_str()));
        if self.profile.grants.check_event_read(bucket, key, event) {
            return self.granted(bucket, key, Access::Read);
        }
        self.storage(bucket, key, Access::Read)
    }
}

/// The audit line of an access to a sensitive bucket, if it is one: the
/// log, the line and the bucket.
struct Audited(
    Option<(
        Option<Arc<crate::audit::Audit>>,
        crate::audit::Entry,
        String,
    )>,
);

impl Audited {
    /// Write the line before the access is made: an access whose line
    /// cannot be written does not happen.
    async fn written(self) -> Result<(), storage::StorageError> {
        let Some((audit, entry, bucket)) = self.0 else {
            return Ok(());
        };
        let refused = |why: String| {
            storage::StorageError::Unavailable(format!(
                "the access to the sensitive bucket {} was not made, because the audit log cannot record it ({why}); try again later",
                crate::text::quote(&bucket)
            ))
        };
        let Some(audit) = audit else {
            return Err(refused("this host keeps no audit log".into()));
        };
        audit
            .record_required(entry)
            .await
            .map_err(|e| refused(e.to_string()))
    }
}

fn blob_error(e: BlobError) -> storage::StorageError {
    match e {
        BlobError::InvalidBucket(m) | BlobError::InvalidKey(m) => {
            storage::StorageError::InvalidKey(m)
        }
        BlobError::TooLarge(m) => storage::StorageError::TooLarge(m),
        // The WIT contract (0.1) has no separate variant for a bad value
        // other than the key; the message names the content type.
        BlobError::InvalidContentType(m) => storage::StorageError::InvalidKey(m),
        e @ (BlobError::Backend { .. } | BlobError::Throttled { .. }) => {
            tracing::error!(error = %e, "a guest's storage call failed");
            storage::StorageError::Unavailable("the blob store failed; try again later".into())
        }
    }
}

fn wit_meta(m: crate::blobs::ObjectMeta) -> storage::ObjectMeta {
    storage::ObjectMeta {
        key: m.key,
        size: m.size,
        etag: m.etag,
        content_type: m.content_type,
        modified_ms: m.modified_ms,
    }
}

impl storage::Host for HostState {
    async fn get(
        &mut self,
        bucket: String,
        key: String,
    ) -> Result<Option<Vec<u8>>, storage::StorageError> {
        let (blobs, audited) = self.object_read(&bucket, &key)?;
        audited.written().await?;
        Ok(blobs
            .get(&bucket, &key)
            .await
            .map_err(blob_error)?
            .map(|(_, body)| body))
    }

    async fn head(
        &mut self,
        bucket: String,
        key: String,
    ) -> Result<Option<storage::ObjectMeta>, storage::StorageError> {
        let (blobs, audited) = self.object_read(&bucket, &key)?;
        audited.written().await?;
        Ok(blobs
            .head(&bucket, &key)
            .await
            .map_err(blob_error)?
            .map(wit_meta))
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<storage::ObjectMeta, storage::StorageError> {
        let (blobs, audited) = self.storage(&bucket, &key, Access::Write)?;
        audited.written().await?;
        blobs
            .put(&bucket, &key, body, content_type)
            .await
            .map(|stored| wit_meta(stored.meta))
            .map_err(blob_error)
    }

    async fn delete(&mut self, bucket: String, key: String) -> Result<bool, storage::StorageError> {
        let (blobs, audited) = self.storage(&bucket, &key, Access::Write)?;
        audited.written().await?;
        blobs.delete(&bucket, &key).await.map_err(blob_error)
    }

    async fn list_objects(
        &mut self,
        bucket: String,
        prefix: String,
    ) -> Result<Vec<storage::ObjectMeta>, storage::StorageError> {
        let (blobs, audited) = self.storage(&bucket, &prefix, Access::Read)?;
        audited.written().await?;
        let objects = blobs
            .list(&bucket, &prefix, None, MAX_LISTED + 1)
            .await
            .map_err(blob_error)?;
        if objects.len() > MAX_LISTED {
            // A silently shortened list would look complete to the guest.
            return Err(storage::StorageError::TooLarge(format!(
                "more than {MAX_LISTED} objects in {} start with {}; list them in pages with list-page",
                crate::text::quote(&bucket),
                crate::text::quote(&prefix)
            )));
        }
        Ok(objects.into_iter().map(wit_meta).collect())
    }

    async fn list_page(
        &mut self,
        bucket: String,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<storage::ObjectPage, storage::StorageError> {
        let (blobs, audited) = self.storage(&bucket, &prefix, Access::Read)?;
        audited.written().await?;
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let mut objects = blobs
            .list(&bucket, &prefix, start_after, limit + 1)
            .await
            .map_err(blob_error)?;
        let more = objects.len() > limit;
        objects.truncate(limit);
        let next_start_after = more
            .then(|| objects.last().map(|o| o.key.clone()))
            .flatten();
        Ok(storage::ObjectPage {
            objects: objects.into_iter().map(wit_meta).collect(),
            next_start_after,
        })
    }
}

impl queue::Host for HostState {
    async fn send(
        &mut self,
        queue: String,
        body: Vec<u8>,
        options: queue::SendOptions,
    ) -> Result<String, queue::QueueError> {
        let grants = &self.profile.grants;
        if let Err(why) = grants.check_queue_send(&queue) {
            self.audit_denial(format!("queue send {queue}"), &why.to_string());
            return Err(queue::QueueError::Denied(why.to_string()));
        }
        // A reply goes where the sender says: it must be a queue the sender
        // may send to itself, or `reply_to` would reach any queue.
        if let Some(reply_to) = &options.reply_to
            && let Err(why) = grants.check_queue_send(reply_to)
        {
            self.audit_denial(
                format!("queue send {queue} reply_to {reply_to}"),
                &why.to_string(),
            );
            return Err(queue::QueueError::Denied(format!("reply_to: {why}")));
        }
        let Some(backend) = self.stores.queues.clone() else {
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
            dedup_scope: Some(self.profile.function.clone()),
        };
        crate::queue::validate_user(&queue, &msg, crate::clock::now_ms())
            .map_err(|e| queue::QueueError::Invalid(e.to_string()))?;
        match backend.send(&queue, msg).await {
            Ok(sent) => Ok(sent.id),
            Err(
                crate::queue::QueueError::Invalid(m) | crate::queue::QueueError::Unsupported(m),
            ) => Err(queue::QueueError::Invalid(m)),
            Err(e) => {
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
        tracing::debug!(percent, message = %crate::text::LogSafe(&message), "progress");
        if let Some(reporter) = &self.reporter {
            reporter
                .progress(percent, message.clone())
                .await
                .map_err(|e| context::ContextError::Unavailable(e.to_string()))?;
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
            Some(reporter) => (reporter.checkpoint(state).await)
                .map_err(|e| context::ContextError::Unavailable(e.to_string())),
            None => Err(context::ContextError::Unavailable(
                "checkpoints are kept for queue messages and async jobs; a synchronous invocation has no next attempt to resume"
                    .into(),
            )),
        }
    }

    async fn config(&mut self, key: String) -> Option<String> {
        self.profile.config.get(&key).cloned()
    }
}
