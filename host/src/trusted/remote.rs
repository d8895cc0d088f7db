//! The public process's side of the trusted worker: an [`Executor`] whose
//! executions run in the worker, and the answers to the worker's calls on
//! the stores this process owns (components, queue sends, non-sensitive
//! buckets, progress and checkpoints, audit lines).
//!
//! It connects to the worker's socket and reconnects whenever the worker
//! is restarted. While it is not connected, or when the connection drops
//! with executions in flight, those executions end as
//! [`TrapReason::Unavailable`]: nothing waits on a dead worker.

use super::wire::{self, FromWorker, Reply, Request, ToWorker};
use crate::audit::Audit;
use crate::backends::sealed_queues::Sealer;
use crate::blobs::BlobBackend;
use crate::exec::{Busy, Components, Execution, Failure, Outcome, Reporter, TrapReason, Wait};
use crate::queue::QueueBackend;
use crate::task::BoxFuture;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

/// What the worker's calls reach in this process.
pub struct HostStores {
    /// Deployed components.
    pub components: Arc<dyn Components>,
    /// The queues (sends to sensitive queues are sealed below).
    pub queues: Arc<dyn QueueBackend>,
    /// The same queues without the sealing, for what the worker sealed
    /// itself.
    pub unsealed_queues: Arc<dyn QueueBackend>,
    /// The blob store (never a sensitive bucket: those are the worker's).
    pub blobs: Arc<dyn BlobBackend>,
    /// The audit log.
    pub audit: Arc<Audit>,
    /// The sensitive buckets, refused here.
    pub sensitive: Arc<BTreeSet<String>>,
}

struct Pending {
    done: oneshot::Sender<Result<Outcome, Busy>>,
    reporter: Option<Arc<dyn Reporter>>,
}

/// The current connection to the worker.
struct Conn {
    tx: wire::Writer,
    /// The profiles sent on it, by the address of the `Arc` the dispatcher
    /// holds (kept here, so the address is not reused while listed), with
    /// the number the worker knows each by.
    profiles: HashMap<usize, (Arc<crate::exec::Profile>, u64)>,
}

/// How long past an execution's deadline the host waits for its outcome:
/// the worker ends every execution by its deadline and
/// [`super::DEADLINE_GRACE`], so a little more than that.
const ANSWER_MARGIN: Duration = Duration::from_secs(super::DEADLINE_GRACE.as_secs() + 10);

/// Removes an execution's pending entry when dropped.
struct Forget<'a>(&'a RemoteWorker, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().unwrap().remove(&self.1);
    }
}

/// The trusted worker, as the public process sees it.
pub struct RemoteWorker {
    socket: PathBuf,
    /// The pid of the supervisor this host started: the worker is its
    /// child, and no other process is taken for it.
    supervisor: Option<u32>,
    /// Set once the host is put together ([`RemoteWorker::set_stores`]).
    stores: std::sync::OnceLock<HostStores>,
    /// The connection, while connected.
    conn: Mutex<Option<Conn>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// The worker's pid, once it has said hello; `None`
    /// while it is down.
    hello: watch::Sender<Option<u32>>,
    /// Times the connection was lost.
    lost: AtomicU32,
    /// Seals to the worker's queue key (which it keeps across restarts),
    /// from its first hello on.
    sealer: std::sync::OnceLock<Sealer>,
}

/// An outcome of nothing run, for `failure`.
pub fn ended(failure: Failure) -> Outcome {
    Outcome {
        result: Err(failure),
        fuel_used: 0,
        peak_memory_bytes: 0,
        elapsed: Duration::ZERO,
        progress: None,
        logs: Default::default(),
    }
}

/// An outcome saying the worker is not there.
pub fn unavailable(why: impl Into<String>) -> Outcome {
    ended(Failure::Trap(TrapReason::Unavailable(why.into())))
}

impl RemoteWorker {
    /// Connect to the worker at `socket` (and again after every loss)
    /// until the process ends; with `supervisor`, only to a child of that
    /// process (the worker it started).
    pub fn start(socket: PathBuf, supervisor: Option<u32>) -> Arc<RemoteWorker> {
        let worker = Arc::new(RemoteWorker {
            socket,
            supervisor,
            stores: std::sync::OnceLock::new(),
            conn: Mutex::new(None),
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            hello: watch::channel(None).0,
            lost: AtomicU32::new(0),
            sealer: std::sync::OnceLock::new(),
        });
        tokio::spawn(worker.clone().connect_forever());
        worker
    }

    /// What the worker's calls reach (once; later calls are ignored).
    pub fn set_stores(&self, stores: HostStores) {
        let _ = self.stores.set(stores);
    }

    /// Wait until the worker has said hello, at most `timeout`; answers
    /// the sealer to its queue key.
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<Sealer> {
        let mut rx = self.hello.subscribe();
        let got = tokio::time::timeout(timeout, rx.wait_for(|h| h.is_some())).await;
        match (got, self.sealer.get()) {
            (Ok(Ok(_)), Some(sealer)) => Ok(sealer.clone()),
            _ => anyhow::bail!(
                "the trusted worker did not answer on {:?} within {timeout:?}; see its lines in the host log",
                self.socket
            ),
        }
    }

    /// `bytes` sealed for the worker under `aad` (an async job's input).
    pub fn seal(&self, aad: &str, bytes: &[u8]) -> Result<Vec<u8>, crate::queue::QueueError> {
        match self.sealer.get() {
            Some(sealer) => sealer.seal(aad, bytes),
            None => Err(crate::queue::QueueError::backend(
                "the trusted worker has not started yet",
            )),
        }
    }

    /// The worker's pid while connected.
    pub fn pid(&self) -> Option<u32> {
        *self.hello.borrow()
    }

    /// Times the connection to the worker was lost since start (each
    /// restart of the worker is one).
    pub fn lost(&self) -> u32 {
        self.lost.load(Ordering::Relaxed)
    }

    async fn connect_forever(self: Arc<Self>) {
        let mut logged = false;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => {
                    logged = false;
                    if let Err(e) = self.clone().serve(stream).await {
                        tracing::warn!(error = %e, "the connection to the trusted worker failed");
                    }
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    self.hello.send_replace(None);
                    *self.conn.lock().unwrap() = None;
                    let cut: Vec<Pending> = self
                        .pending
                        .lock()
                        .unwrap()
                        .drain()
                        .map(|(_, p)| p)
                        .collect();
                    if cut.is_empty() {
                        tracing::info!("the connection to the trusted worker closed");
                    } else {
                        tracing::warn!(
                            cut_off = cut.len(),
                            "lost the trusted worker; its executions in flight end as unavailable"
                        );
                    }
                    for p in cut {
                        let _ = p.done.send(Ok(unavailable(
                            "the trusted worker stopped while running it",
                        )));
                    }
                }
                Err(e) if !logged => {
                    tracing::info!(socket = ?self.socket, error = %e, "waiting for the trusted worker");
                    logged = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serve(self: Arc<Self>, stream: UnixStream) -> std::io::Result<()> {
        // The socket's directory is the trusted dir's, 0700: still, talk
        // only to a process of this user, and only to the worker this host
        // started (another process of the user could have bound the socket
        // while the worker was down).
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        // SAFETY: geteuid(2) cannot fail.
        if uid != unsafe { libc::geteuid() } {
            return Err(std::io::Error::other(format!(
                "the process on the worker's socket runs as uid {uid}, not as this host's user"
            )));
        }
        let peer = cred.pid();
        if let Some(supervisor) = self.supervisor {
            let parent = peer.and_then(|pid| parent_of(pid as u32));
            if parent != Some(supervisor) {
                let err = format!(
                    "the process on the worker's socket (pid {}) is not the trusted worker this host started: its parent is {}, not the supervisor (pid {supervisor}); nothing is sent to it",
                    peer.map_or("unknown".into(), |p| p.to_string()),
                    parent.map_or("unknown".into(), |p| format!("pid {p}")),
                );
                tracing::error!("{err}");
                return Err(std::io::Error::other(err));
            }
        }
        let (r, w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let hello = tokio::time::timeout(Duration::from_secs(10), wire::read(&mut r))
            .await
            .map_err(|_| std::io::Error::other("the worker said no hello within 10 s"))??;
        let Some(FromWorker::Hello {
            version,
            pid,
            queue_key,
        }) = hello
        else {
            return Err(std::io::Error::other(
                "the worker's first frame was not a hello",
            ));
        };
        if peer.is_some_and(|p| p as u32 != pid) {
            return Err(std::io::Error::other(format!(
                "the worker says it is pid {pid}, but the socket's peer is pid {peer:?}"
            )));
        }
        if version != wire::VERSION {
            return Err(std::io::Error::other(format!(
                "the trusted worker speaks protocol version {version}, this host {}: restart the host (the fnhost binary was replaced?)",
                wire::VERSION
            )));
        }
        // The key is the worker's for good (kept in the trusted dir): the
        // first hello's sealer serves every later connection.
        let sealer = Sealer::new(queue_key).map_err(std::io::Error::other)?;
        let _ = self.sealer.set(sealer);
        let tx: wire::Writer = Arc::new(tokio::sync::Mutex::new(w));
        *self.conn.lock().unwrap() = Some(Conn {
            tx: tx.clone(),
            profiles: HashMap::new(),
        });
        tracing::info!(pid, "connected to the trusted worker");
        self.hello.send_replace(Some(pid));
        loop {
            match wire::read::<_, FromWorker>(&mut r).await {
                Ok(Some(FromWorker::Done { call, outcome })) => {
                    if let Some(p) = self.pending.lock().unwrap().remove(&call) {
                        let _ = p.done.send(outcome);
                    }
                }
                Ok(Some(FromWorker::Call { call, request })) => {
                    let (me, tx) = (self.clone(), tx.clone());
                    tokio::spawn(async move {
                        let reply = me.answer(request).await;
                        reply_to(&tx, call, reply).await;
                    });
                }
                Ok(Some(FromWorker::Audit(line))) => {
                    let Some(stores) = self.stores.get() else {
                        tracing::error!(
                            "an audit line from the trusted worker came before the host was ready; it is lost"
                        );
                        continue;
                    };
                    if let Err(e) = stores.audit.take_forwarded(&line, false).await {
                        tracing::error!(error = %e, "cannot record an audit line of the trusted worker");
                    }
                }
                Ok(Some(FromWorker::Hello { .. })) => {
                    break Err(std::io::Error::other("a second hello from the worker"));
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    }

    /// Answer one of the worker's calls from this process's stores.
    async fn answer(&self, request: Request) -> Reply {
        wire::answer(self, request).await
    }

    /// The stores, once the host has handed them over.
    fn stores(&self) -> Result<&HostStores, wire::Fault> {
        (self.stores.get()).ok_or_else(|| wire::Fault::Backend("the host is still starting".into()))
    }

    /// The stores, for a call on `bucket`: never a sensitive one, which the
    /// trusted worker holds.
    fn blobs_for(&self, bucket: &str) -> Result<&HostStores, wire::Fault> {
        let s = self.stores()?;
        if s.sensitive.contains(bucket) {
            return Err(wire::Fault::Invalid(format!(
                "{bucket} is a sensitive bucket: the trusted worker holds it"
            )));
        }
        Ok(s)
    }

    fn reporter(&self, invoke: u64) -> Option<Arc<dyn Reporter>> {
        self.pending
            .lock()
            .unwrap()
            .get(&invoke)
            .and_then(|p| p.reporter.clone())
    }

    /// Run `execution` in the worker.
    pub fn execute(
        &self,
        execution: Execution,
        reporter: Option<Arc<dyn Reporter>>,
        wait: Wait,
    ) -> BoxFuture<'_, Result<Outcome, Busy>> {
        Box::pin(async move {
            let Some(tx) = self.conn.lock().unwrap().as_ref().map(|c| c.tx.clone()) else {
                return Ok(unavailable("the trusted worker is not running"));
            };
            // Under the writer's lock: whether the worker knows the profile
            // is decided and the message written in one turn, so no other
            // execution names a profile whose JSON is still to be sent; and
            // the profile counts as sent only once its message was written.
            let mut half = tx.lock().await;
            let key = Arc::as_ptr(&execution.profile) as usize;
            let (profile_id, profile) = {
                let conn = self.conn.lock().unwrap();
                let Some(conn) = conn.as_ref().filter(|c| Arc::ptr_eq(&c.tx, &tx)) else {
                    return Ok(unavailable("the trusted worker is not running"));
                };
                match conn.profiles.get(&key) {
                    Some((_, id)) => (*id, None),
                    None => {
                        let json = serde_json::to_string(execution.profile.as_ref())
                            .expect("a profile serializes");
                        (conn.profiles.len() as u64 + 1, Some(json))
                    }
                }
            };
            let new_profile = profile.is_some();
            let call = self.next.fetch_add(1, Ordering::Relaxed);
            let deadline_ms = execution.invocation.deadline_ms;
            let invoke = ToWorker::Invoke {
                call,
                profile_id,
                profile,
                invocation: execution.invocation,
                event: execution.event,
                wait_at_most: match wait {
                    Wait::Always => None,
                    Wait::AtMost(n) => Some(n.min(u32::MAX as usize) as u32),
                },
                reporter: reporter.is_some(),
            };
            let body = match wire::encode(&invoke) {
                Ok(body) => body,
                // Nothing was written: the connection stays in step.
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand an execution to the trusted worker");
                    return Ok(ended(Failure::Limit(format!(
                        "the invocation cannot be handed to the trusted worker: {e}"
                    ))));
                }
            };
            let (done, result) = oneshot::channel();
            self.pending
                .lock()
                .unwrap()
                .insert(call, Pending { done, reporter });
            // However this ends (answered, failed, timed out, or dropped by
            // its caller), the entry goes.
            let _entry = Forget(self, call);
            let cut = wire::CutOff::arm(&half);
            let sent = wire::write_encoded(&mut *half, body).await;
            cut.disarm();
            if sent.is_err() {
                return Ok(unavailable("the trusted worker is not running"));
            }
            if new_profile
                && let Some(conn) = self.conn.lock().unwrap().as_mut()
                && Arc::ptr_eq(&conn.tx, &tx)
            {
                conn.profiles
                    .insert(key, (execution.profile.clone(), profile_id));
            }
            drop(half);
            // The worker ends every execution by its deadline (and a grace);
            // past that it is not answering.
            let left = deadline_ms.saturating_sub(crate::clock::now_ms());
            let patience = Duration::from_millis(left) + ANSWER_MARGIN;
            match tokio::time::timeout(patience, result).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Ok(unavailable("the trusted worker stopped")),
                Err(_) => Ok(unavailable(
                    "the trusted worker did not answer by the invocation's deadline",
                )),
            }
        })
    }

    /// Executions in the worker now.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap().len()
    }
}

/// The host's answers to the trusted worker's calls (see [`wire::Answer`]).
impl wire::Answer for RemoteWorker {
    fn component(&self, digest: String) -> BoxFuture<'_, Result<Vec<u8>, wire::Fault>> {
        Box::pin(async move {
            let s = self.stores()?;
            s.components
                .component(&digest)
                .await
                .map_err(|e| (&e).into())
        })
    }

    fn send(
        &self,
        queue: String,
        mut message: crate::queue::NewMessage,
        dedup_scope: Option<String>,
        sealed: bool,
    ) -> BoxFuture<'_, Result<crate::queue::Sent, wire::Fault>> {
        Box::pin(async move {
            let s = self.stores()?;
            message.dedup_scope = dedup_scope;
            let queues = if sealed {
                &s.unsealed_queues
            } else {
                &s.queues
            };
            queues.send(&queue, message).await.map_err(|e| (&e).into())
        })
    }

    fn put(
        &self,
        bucket: String,
        key: String,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<crate::blobs::Stored, wire::Fault>> {
        Box::pin(async move {
            let s = self.blobs_for(&bucket)?;
            (s.blobs.put(&bucket, &key, body, content_type))
                .await
                .map_err(|e| (&e).into())
        })
    }

    fn get(
        &self,
        bucket: String,
        key: String,
    ) -> BoxFuture<'_, Result<Option<crate::blobs::Object>, wire::Fault>> {
        Box::pin(async move {
            let s = self.blobs_for(&bucket)?;
            s.blobs.get(&bucket, &key).await.map_err(|e| (&e).into())
        })
    }

    fn head(
        &self,
        bucket: String,
        key: String,
    ) -> BoxFuture<'_, Result<Option<crate::blobs::ObjectMeta>, wire::Fault>> {
        Box::pin(async move {
            let s = self.blobs_for(&bucket)?;
            s.blobs.head(&bucket, &key).await.map_err(|e| (&e).into())
        })
    }

    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<bool, wire::Fault>> {
        Box::pin(async move {
            let s = self.blobs_for(&bucket)?;
            s.blobs.delete(&bucket, &key).await.map_err(|e| (&e).into())
        })
    }

    fn list(
        &self,
        bucket: String,
        prefix: String,
        start_after: Option<String>,
        max: u32,
    ) -> BoxFuture<'_, Result<Vec<crate::blobs::ObjectMeta>, wire::Fault>> {
        Box::pin(async move {
            let s = self.blobs_for(&bucket)?;
            (s.blobs.list(&bucket, &prefix, start_after, max as usize))
                .await
                .map_err(|e| (&e).into())
        })
    }

    fn progress(
        &self,
        invoke: u64,
        percent: u8,
        message: String,
    ) -> BoxFuture<'_, Result<(), wire::Fault>> {
        Box::pin(async move {
            self.stores()?;
            match self.reporter(invoke) {
                Some(r) => r.progress(percent, message).await.map_err(|e| (&e).into()),
                None => Ok(()),
            }
        })
    }

    fn checkpoint(&self, invoke: u64, state: Vec<u8>) -> BoxFuture<'_, Result<(), wire::Fault>> {
        Box::pin(async move {
            self.stores()?;
            match self.reporter(invoke) {
                Some(r) => r.checkpoint(state).await.map_err(|e| (&e).into()),
                None => Err(wire::Fault::Unsupported(
                    "this invocation has nowhere to keep a checkpoint".into(),
                )),
            }
        })
    }

    fn audit(&self, line: String) -> BoxFuture<'_, Result<(), wire::Fault>> {
        Box::pin(async move {
            let s = self.stores()?;
            (s.audit.take_forwarded(&line, true))
                .await
                .map_err(|e| wire::Fault::Backend(e.to_string()))
        })
    }
}

/// Answer the worker's call `call`. A reply that cannot be sent (over the
/// protocol's size) is answered with why, so the call does not wait for
/// an answer that never comes.
async fn reply_to(tx: &wire::Writer, call: u64, reply: Reply) {
    let sent = match wire::encode(&ToWorker::Reply { call, reply }) {
        Ok(body) => {
            let mut half = tx.lock().await;
            let cut = wire::CutOff::arm(&half);
            let sent = wire::write_encoded(&mut *half, body).await;
            cut.disarm();
            sent
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot send an answer to the trusted worker; telling it why");
            let why = Reply::Failed(wire::Fault::TooLarge(e.to_string()));
            wire::send(tx, &ToWorker::Reply { call, reply: why }).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot send an answer to the trusted worker (the connection is lost; its call ends with it)");
    }
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; the command may hold spaces and parens.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
