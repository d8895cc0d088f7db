//! The worker's side of the socket: its [`Link`] to the public process
//! (calls and their replies, audit lines sent before the next frame) and
//! what a trusted function reaches through it — [`Remote`] (queue sends,
//! sealed here for sensitive queues; non-sensitive buckets; components),
//! [`SplitBlobs`] (sensitive buckets from the sealed store here, the rest
//! from the host) and [`RemoteReporter`] (progress, sealed checkpoints).

use crate::backends::sealed_queues::Sealer;
use crate::blobs::{BlobBackend, BlobError, Object, ObjectMeta, Stored};
use crate::exec::{Components, Reporter, SeamError};
use crate::queue::{NewMessage, QueueError, QueueSender, Sent};
use crate::task::BoxFuture;
use crate::trusted::wire::{self, Fault, FromWorker, Reply, Request};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The worker's side of the connection to the public process.
pub(super) struct Link {
    pub(super) tx: Mutex<Option<wire::Writer>>,
    pub(super) calls: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    pub(super) next: AtomicU64,
    /// Audit lines recorded (from the guests' synchronous host calls) and
    /// not yet sent: they go out, under the writer's lock, before the next
    /// frame, so an invocation's lines always precede its outcome; a
    /// flusher sends them when no frame comes soon.
    pub(super) audit: Mutex<Vec<String>>,
}

impl Link {
    /// Send `msg` after any pending audit lines; false when not connected
    /// or the write failed.
    pub(super) async fn send(&self, msg: Option<FromWorker>) -> bool {
        let Some(w) = self.tx.lock().unwrap().clone() else {
            return false;
        };
        let mut w = w.lock().await;
        let cut = wire::CutOff::arm(&w);
        let mut lines = std::mem::take(&mut *self.audit.lock().unwrap()).into_iter();
        while let Some(line) = lines.next() {
            let frame = FromWorker::Audit(line);
            if wire::write(&mut *w, &frame).await.is_err() {
                // Not written: back in line for the next connection.
                let FromWorker::Audit(line) = frame else {
                    unreachable!("built above")
                };
                let mut pending = self.audit.lock().unwrap();
                let rest: Vec<String> = std::iter::once(line).chain(lines).collect();
                pending.splice(0..0, rest);
                cut.disarm();
                return false;
            }
        }
        let sent = match msg {
            Some(msg) => wire::write(&mut *w, &msg).await.is_ok(),
            None => true,
        };
        cut.disarm();
        sent
    }

    /// Ask the host `request` and wait for its answer (as long as the
    /// execution that asks is let run: see [`super::Worker::invoke`]).
    pub(super) async fn call(&self, request: Request) -> Result<Reply, Fault> {
        let lost =
            || Fault::Backend("the host process is not connected to the trusted worker".into());
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls.lock().unwrap().insert(call, tx);
        // However this ends (answered, lost, or dropped with its
        // execution), the entry goes.
        let _entry = ForgetCall(self, call);
        if !self.send(Some(FromWorker::Call { call, request })).await {
            return Err(lost());
        }
        match rx.await {
            Ok(Reply::Failed(f)) => Err(f),
            Ok(reply) => Ok(reply),
            Err(_) => Err(lost()),
        }
    }
}

impl wire::Ask for Link {
    fn ask(&self, request: Request) -> BoxFuture<'_, Result<Reply, Fault>> {
        Box::pin(self.call(request))
    }
}

impl Link {
    /// The protocol's calls, asked over this link.
    pub(super) fn calls(&self) -> wire::Calls<'_, Link> {
        wire::Calls(self)
    }
}

/// Removes a call's entry when dropped.
struct ForgetCall<'a>(&'a Link, u64);

impl Drop for ForgetCall<'_> {
    fn drop(&mut self) {
        self.0.calls.lock().unwrap().remove(&self.1);
    }
}

/// The worker's audit log: its lines go to the host process, which writes
/// them; a required one (a sensitive access) is a call answered once it
/// is written.
pub(super) struct LinkAudit(pub(super) Arc<Link>);

impl crate::audit::Forward for LinkAudit {
    fn line(&self, line: String) {
        self.0.audit.lock().unwrap().push(line);
    }

    fn required(&self, line: String) -> BoxFuture<'_, Result<(), crate::audit::AuditError>> {
        Box::pin(async move {
            (self.0.calls().audit(line).await).map_err(|f| {
                crate::audit::AuditError(format!("the host did not write the line: {f:?}"))
            })
        })
    }
}

/// The public process's stores, as a trusted function reaches them; its
/// sends to sensitive queues sealed here, so their data never crosses in
/// plain text.
pub(super) struct Remote {
    pub(super) link: Arc<Link>,
    pub(super) sealer: Sealer,
    pub(super) queues: Arc<BTreeSet<String>>,
}

impl QueueSender for Remote {
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let dedup_scope = msg.dedup_scope.clone();
            let (message, sealed) = crate::backends::sealed_queues::seal_message(
                &self.sealer,
                &self.queues,
                &queue,
                msg,
            )?;
            (self.link.calls().send(queue, message, dedup_scope, sealed))
                .await
                .map_err(Fault::into_queue)
        })
    }
}

impl Components for Remote {
    fn component(&self, digest: &str) -> BoxFuture<'_, Result<Vec<u8>, SeamError>> {
        let digest = digest.to_string();
        Box::pin(async move {
            self.link
                .calls()
                .component(digest)
                .await
                .map_err(Into::into)
        })
    }
}

impl BlobBackend for Remote {
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            (self.link.calls().put(bucket, key, body, content_type))
                .await
                .map_err(Fault::into_blob)
        })
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            (self.link.calls().get(bucket, key))
                .await
                .map_err(Fault::into_blob)
        })
    }

    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            (self.link.calls().head(bucket, key))
                .await
                .map_err(Fault::into_blob)
        })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            (self.link.calls().delete(bucket, key))
                .await
                .map_err(Fault::into_blob)
        })
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
        let max = max.min(u32::MAX as usize) as u32;
        Box::pin(async move {
            (self.link.calls().list(bucket, prefix, start_after, max))
                .await
                .map_err(Fault::into_blob)
        })
    }
}

/// Sensitive buckets from the sealed store here, the rest from the host.
pub(super) struct SplitBlobs {
    pub(super) sensitive: Arc<BTreeSet<String>>,
    pub(super) local: Arc<dyn BlobBackend>,
    pub(super) remote: Arc<dyn BlobBackend>,
}

impl SplitBlobs {
    fn of(&self, bucket: &str) -> &dyn BlobBackend {
        if self.sensitive.contains(bucket) {
            self.local.as_ref()
        } else {
            self.remote.as_ref()
        }
    }
}

impl BlobBackend for SplitBlobs {
    fn replace_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        etag: String,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        self.of(bucket)
            .replace_if(bucket, key, body, content_type, etag)
    }

    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>> {
        self.of(bucket).put(bucket, key, body, content_type)
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>> {
        self.of(bucket).get(bucket, key)
    }

    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>> {
        self.of(bucket).head(bucket, key)
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>> {
        self.of(bucket).delete(bucket, key)
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        self.of(bucket).list(bucket, prefix, start_after, max)
    }
}

/// Progress and checkpoints of one execution, to the host's reporter;
/// checkpoints sealed to the worker's own key first.
pub(super) struct RemoteReporter {
    pub(super) link: Arc<Link>,
    pub(super) invoke: u64,
    pub(super) function: String,
    pub(super) sealer: Sealer,
}

impl Reporter for RemoteReporter {
    fn progress(&self, percent: u8, message: String) -> BoxFuture<'_, Result<(), SeamError>> {
        Box::pin(async move {
            (self.link.calls().progress(self.invoke, percent, message))
                .await
                .map_err(SeamError::from)
        })
    }

    fn checkpoint(&self, state: Vec<u8>) -> BoxFuture<'_, Result<(), SeamError>> {
        Box::pin(async move {
            let state = self
                .sealer
                .seal(&crate::trusted::checkpoint_aad(&self.function), &state)
                .map_err(|e| SeamError::caused_by("cannot seal the checkpoint", e))?;
            (self.link.calls().checkpoint(self.invoke, state))
                .await
                .map_err(SeamError::from)
        })
    }
}
