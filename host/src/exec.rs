//! The execution seam: "run this event in a fresh sandbox under these
//! limits and grants, and say how it ended". On one side, deployments and
//! triggers decide *which* version answers an event; on the other, an
//! [`Executor`] runs it. Everything that crosses is plain data that serde
//! can carry ([`Profile`], [`Invocation`], [`Event`], [`Outcome`]), so a
//! trusted worker in another process can be an executor; in one process it
//! is the sandbox's `LocalExecutor`.
//!
//! The per-invocation limits ([`Limits`]) and their maxima live here too:
//! the manifest fills them in, the executor enforces them.
//!
//! Knows nothing of wasmtime, HTTP, queues' storage or the registry.

pub mod limits;
pub mod slots;

use crate::capabilities::Grants;
use crate::task::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use limits::*;

/// A deployed version as the executor sees it: which component (by
/// digest) under which limits, with which grants and config. Built once
/// per deployed version and shared by its executions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The function's name.
    pub function: String,
    /// The version number.
    pub version: u32,
    /// SHA-256 of the component, hex: what to run.
    pub digest: String,
    /// Per-invocation limits.
    pub limits: Limits,
    /// What the function may reach.
    pub grants: Grants,
    /// The manifest's `[config]` values.
    pub config: BTreeMap<String, String>,
    /// Runs in the trusted worker (`isolation = "trusted"`), not in the
    /// public process.
    #[serde(default)]
    pub trusted: bool,
}

impl Profile {
    /// `function@vN`, as logs and dead letters name a version.
    pub fn who(&self) -> String {
        format!("{}@v{}", self.function, self.version)
    }
}

/// Facts about one invocation, as the guest sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// Unique per invocation (per attempt).
    pub id: String,
    /// The function's name.
    pub function: String,
    /// The version that runs.
    pub version: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The async job it belongs to, if any.
    pub job_id: Option<String>,
    /// The last checkpoint of an earlier attempt, if any.
    pub checkpoint: Option<Vec<u8>>,
    /// Wall-clock deadline, ms since the epoch.
    pub deadline_ms: u64,
}

/// An HTTP request routed to a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Upper-case method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query without `?`.
    pub query: String,
    /// Route parameters.
    pub params: Vec<(String, String)>,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A message from a queue the function is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMessage {
    /// Its id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The payload.
    pub body: Vec<u8>,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Deliveries so far, this one included.
    pub dequeue_count: u32,
    /// When it was sent, ms since the epoch.
    pub enqueued_at_ms: u64,
    /// Its group, if any.
    pub group: Option<String>,
    /// Its correlation id, if any.
    pub correlation_id: Option<String>,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A new key.
    Created,
    /// New content for a key.
    Updated,
    /// The key was deleted.
    Deleted,
}

/// A change to an object in a watched bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChange {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The new content's etag; none for deletes.
    pub etag: Option<String>,
    /// The new content's size; none for deletes.
    pub size: Option<u64>,
    /// The new content's type, if given.
    pub content_type: Option<String>,
}

/// A due tick of a timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerTick {
    /// The schedule that produced it.
    pub schedule: String,
    /// When it was due, ms since the epoch.
    pub scheduled_at_ms: u64,
    /// True when delivered late, after downtime.
    pub past_due: bool,
}

/// What started an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An HTTP request.
    Http(HttpRequest),
    /// A queue message.
    Queue(QueueMessage),
    /// A blob change.
    Blob(BlobChange),
    /// A timer tick.
    Timer(TimerTick),
    /// A direct invocation with its payload.
    Invoke(Vec<u8>),
}

/// A guest's successful result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// The guest returned `job-error::retry`.
    #[error("the job asked to be retried: {0}")]
    Retry(String),
    /// The guest returned `job-error::fail`.
    #[error("the job failed: {0}")]
    Fail(String),
    /// The guest handed the host more than a limit allows (an output over
    /// [`MAX_OUTPUT_BYTES`], say): its fault, and the same next time.
    #[error("the job broke a limit: {0}")]
    Limit(String),
    /// The guest was stopped by the sandbox.
    #[error("{0}")]
    Trap(TrapReason),
}

impl Failure {
    /// True when another attempt may succeed (a retry request, or a trap that
    /// may be transient such as a timeout).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Fail(_) | Failure::Limit(_))
    }
}

/// What stopped a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TrapReason {
    /// The fuel budget ran out.
    #[error("fuel exhausted: the invocation used all {limit} units of its fuel limit")]
    FuelExhausted {
        /// The fuel limit.
        limit: u64,
    },
    /// The guest tried to grow its memory past the limit.
    #[error(
        "memory limit exceeded: the guest asked for {requested} bytes, over its limit of {limit} bytes"
    )]
    MemoryLimit {
        /// The memory limit in bytes.
        limit: usize,
        /// The size the guest asked for.
        requested: usize,
    },
    /// The wall-clock limit passed.
    #[error("timed out: the invocation ran longer than its limit of {limit:?}")]
    Timeout {
        /// The wall-clock limit.
        limit: Duration,
    },
    /// The wasm call stack ran out.
    #[error("stack overflow: the guest exhausted its call stack")]
    StackOverflow,
    /// The guest held more host resources (streams, pollables) than allowed.
    #[error(
        "too many resources: the guest held more than {limit} host resources (streams, pollables) at once"
    )]
    TooManyResources {
        /// The resource limit.
        limit: usize,
    },
    /// The guest panicked (Rust `panic!`), with the panic message when it printed one.
    #[error("the guest panicked: {0}")]
    Panic(String),
    /// Any other trap, with wasmtime's description.
    #[error("the guest trapped: {0}")]
    Other(String),
    /// The host itself could not run the invocation (e.g. no free instance slot).
    #[error("the host could not run the invocation: {0}")]
    Host(String),
    /// The process that runs it is not there now (the trusted worker is
    /// restarting): nothing ran, or what ran was cut off; another attempt
    /// later can succeed.
    #[error("the trusted worker is unavailable: {0}")]
    Unavailable(String),
}

/// What one invocation wrote to stdout and stderr: the kept text (up to
/// its `log_bytes`) and the bytes dropped past it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    /// Kept stdout (lossy UTF-8).
    pub stdout: String,
    /// Stdout bytes past the cap.
    pub stdout_dropped: u64,
    /// Kept stderr (lossy UTF-8).
    pub stderr: String,
    /// Stderr bytes past the cap.
    pub stderr_dropped: u64,
}

impl Logs {
    /// Write the captured output to the host log in the current span:
    /// stdout at INFO, stderr at ERROR (as WebJobs do), each line escaped
    /// so that whatever the guest writes stays inside its own log line.
    pub fn emit(&self) {
        for line in self.stdout.lines() {
            tracing::info!(target: "fnhost::guest", stream = "stdout", "{}", crate::text::LogSafe(line));
        }
        if self.stdout_dropped > 0 {
            tracing::warn!(target: "fnhost::guest", dropped = self.stdout_dropped, "guest stdout over the log cap was dropped");
        }
        for line in self.stderr.lines() {
            tracing::error!(target: "fnhost::guest", stream = "stderr", "{}", crate::text::LogSafe(line));
        }
        if self.stderr_dropped > 0 {
            tracing::warn!(target: "fnhost::guest", dropped = self.stderr_dropped, "guest stderr over the log cap was dropped");
        }
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The guest's result, or why it did not produce one.
    pub result: Result<Output, Failure>,
    /// Fuel the invocation consumed.
    pub fuel_used: u64,
    /// Wall-clock time spent in the sandbox.
    pub elapsed: Duration,
    /// The most linear memory the guest held at once, in bytes.
    pub peak_memory_bytes: u64,
    /// The last progress the guest reported.
    pub progress: Option<(u8, String)>,
    /// What the guest wrote (capped).
    pub logs: Logs,
}

/// One event to run: the version's profile (shared, so an execution costs
/// no copy of grants and config), the invocation and the event. Across a
/// process boundary it travels as the profile's digest, the invocation and
/// the event.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The version to run.
    pub profile: Arc<Profile>,
    /// Facts about the invocation.
    pub invocation: Invocation,
    /// What started it.
    pub event: Event,
}

/// Why a call across the execution seam did not take effect: progress or a
/// checkpoint not kept, a component not found. Says whether trying again
/// can help, and keeps the cause.
#[derive(Debug, thiserror::Error)]
pub enum SeamError {
    /// The message's lease was lost before the checkpoint was saved:
    /// another delivery of it may be running. Retrying cannot help.
    #[error("the message's lease was lost; the checkpoint was not saved")]
    LeaseLost,
    /// Nothing here can keep it (an invocation with no next attempt, say).
    /// Retrying cannot help.
    #[error("{0}")]
    Unsupported(String),
    /// The store, a file or the other process failed; a retry may succeed.
    #[error("{message}")]
    Failed {
        /// What failed, for the log and the guest.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl SeamError {
    /// A failure described by `message`, with no underlying error.
    pub fn failed(message: impl Into<String>) -> SeamError {
        SeamError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`: `what` failed, because of it.
    pub fn caused_by(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> SeamError {
        SeamError::Failed {
            message: format!("{what}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// True when another try may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SeamError::Failed { .. })
    }
}

/// Where a running invocation's progress and checkpoints go (the job
/// record, the queue message). Invocations without one (synchronous HTTP
/// calls) keep progress on the outcome and refuse checkpoints.
pub trait Reporter: Send + Sync {
    /// Record progress.
    fn progress(&self, percent: u8, message: String) -> BoxFuture<'_, Result<(), SeamError>>;
    /// Save a checkpoint for the next attempt.
    fn checkpoint(&self, state: Vec<u8>) -> BoxFuture<'_, Result<(), SeamError>>;
}

/// How long a caller may wait for a free instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// As long as it takes (triggers: the queue is the line).
    Always,
    /// Only while fewer than this many others wait, and fewer than half
    /// of them for the same function ([`slots`]): HTTP callers, who would
    /// rather hear "busy" than wait in a long line.
    AtMost(usize),
}

/// Every instance is busy and the line for one is full: the whole line,
/// or the function's share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// How many callers the line holds.
    pub waiting: usize,
    /// When it was the function's share of the line that was full (the
    /// rest is kept for other functions): how many places that share is.
    pub share: Option<usize>,
}

/// Why a component could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all (a core module, or not wasm).
    #[error("the file is not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component, but not one of the `fnhost:job` world.
    #[error(
        "the component does not implement the fnhost:job@0.1.0 world ({0}); build it with the fnhost guest SDK and `#[job]`"
    )]
    WrongWorld(String),
    /// The executor could not store or read what it needs.
    #[error("cannot prepare the component: {0}")]
    Store(String),
}

/// Where an executor finds a deployed component's bytes, by digest: the
/// registry in the host process, the host over the socket in the trusted
/// worker.
pub trait Components: Send + Sync {
    /// The component whose SHA-256 is `digest`.
    fn component(&self, digest: &str) -> BoxFuture<'_, Result<Vec<u8>, SeamError>>;
}

/// Runs events in fresh sandboxes. The host-wide cap on invocations at
/// once is the executor's.
pub trait Executor: Send + Sync {
    /// Check that `wasm` is an fnhost job and compile it, so its executions
    /// start fast; answers its digest. Nothing else is stored.
    fn prepare(&self, wasm: Vec<u8>) -> BoxFuture<'_, Result<String, LoadError>>;
    /// Run one execution when an instance is free (waiting as `wait`
    /// allows), with `reporter` for its progress and checkpoints.
    fn execute(
        &self,
        execution: Execution,
        reporter: Option<Arc<dyn Reporter>>,
        wait: Wait,
    ) -> BoxFuture<'_, Result<Outcome, Busy>>;
    /// Invocations running now.
    fn in_flight(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_crosses_the_seam_round_trips_through_serde() {
        let profile = Profile {
            function: "f".into(),
            version: 2,
            digest: "ab".into(),
            limits: Limits::default(),
            grants: Grants::default(),
            config: [("k".to_string(), "v".to_string())].into(),
            trusted: false,
        };
        let event = Event::Blob(BlobChange {
            bucket: "b".into(),
            key: "k".into(),
            kind: ChangeKind::Created,
            etag: Some("e".into()),
            size: Some(1),
            content_type: None,
        });
        let outcome = Outcome {
            result: Err(Failure::Trap(TrapReason::Timeout {
                limit: Duration::from_secs(3),
            })),
            fuel_used: 7,
            peak_memory_bytes: 1 << 20,
            elapsed: Duration::from_millis(5),
            progress: Some((50, "half".into())),
            logs: Logs::default(),
        };
        let back: Profile =
            serde_json::from_value(serde_json::to_value(&profile).unwrap()).unwrap();
        assert_eq!(back, profile);
        let back: Event = serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
        assert_eq!(back, event);
        let back: Outcome =
            serde_json::from_value(serde_json::to_value(&outcome).unwrap()).unwrap();
        assert_eq!(back, outcome);
        assert_eq!(profile.who(), "f@v2");
    }
}
