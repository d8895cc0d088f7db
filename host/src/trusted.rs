//! The trusted tier: functions deployed with `isolation = "trusted"` run
//! in a separate OS process, the trusted worker, which alone holds the
//! sensitive store (the objects of the host config's sensitive buckets)
//! and the keys that seal it and the sensitive queues.
//!
//! Three processes, when a host has sensitive buckets:
//! - `fnhost serve`, the public process: HTTP, the admin API, triggers,
//!   every public function. Before it starts a thread it spawns the
//!   supervisor and confines itself with Landlock ([`crate::confine`]) to
//!   its data dir, so it cannot open the trusted dir at all. Its
//!   [`Tiered`] executor sends trusted functions' executions to the worker
//!   ([`remote::RemoteWorker`]).
//! - `fnhost trusted-supervisor`: starts the worker, restarts it with
//!   backoff when it dies, and stops it when the public process closes its
//!   stdin (on shutdown, or by dying) — [`supervisor`].
//! - `fnhost trusted-worker`: confines itself to the trusted dir, listens
//!   on `<trusted-dir>/run/worker.sock` for the public process (by its
//!   pid, nothing else may connect), and runs trusted functions in its own
//!   sandbox — [`worker`].
//!
//! They speak the length-prefixed protocol of [`wire`]. The worker keeps
//! sensitive buckets to itself; a trusted function's other calls (queue
//! sends, other buckets) go to the public process, which owns those
//! stores. An execution cut off by the worker's death ends as
//! `unavailable`: retried like any failure for a trigger, a `503` for a
//! synchronous caller.

pub mod allowed;
pub mod remote;
pub mod reseal;
pub mod supervisor;
pub mod wire;
pub mod worker;

use crate::exec::{Busy, Execution, Executor, LoadError, Outcome, Reporter, Wait};
use crate::task::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use remote::RemoteWorker;

/// The trusted dir when the host config names none: beside the data dir,
/// `<data-dir>.trusted` (outside it, so that the public process's access
/// to its data dir does not reach it).
pub fn default_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "fnhost".into());
    name.push(".trusted");
    data_dir.with_file_name(name)
}

/// How long past an execution's deadline the trusted worker may take to
/// answer it (waiting for an instance, its component, the host's answers):
/// it ends the execution then, so nothing waits on the worker without
/// bound.
pub const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The associated data an async job's input to `function` is sealed
/// under (the worker opens it when the execution is a job's).
pub fn job_input_aad(function: &str) -> String {
    format!("job-input/{function}")
}

/// The associated data a trusted function's checkpoints are sealed under.
pub fn checkpoint_aad(function: &str) -> String {
    format!("checkpoint/{function}")
}

/// Where the worker listens.
pub fn socket_path(trusted_dir: &Path) -> PathBuf {
    trusted_dir.join("run").join("worker.sock")
}

/// Executions of trusted functions go to the worker, every other to the
/// public process's own executor.
pub struct Tiered {
    /// This process's executor.
    pub public: Arc<dyn Executor>,
    /// The trusted worker.
    pub trusted: Arc<RemoteWorker>,
}

impl Executor for Tiered {
    fn prepare(&self, wasm: Vec<u8>) -> BoxFuture<'_, Result<String, LoadError>> {
        // Checked (and compiled) here; the worker compiles its own copy on
        // first use.
        self.public.prepare(wasm)
    }

    fn execute(
        &self,
        execution: Execution,
        reporter: Option<Arc<dyn Reporter>>,
        wait: Wait,
    ) -> BoxFuture<'_, Result<Outcome, Busy>> {
        if execution.profile.trusted {
            self.trusted.execute(execution, reporter, wait)
        } else {
            self.public.execute(execution, reporter, wait)
        }
    }

    fn in_flight(&self) -> usize {
        self.public.in_flight() + self.trusted.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trusted_dir_sits_beside_the_data_dir() {
        assert_eq!(
            default_dir(Path::new("/var/lib/fnhost")),
            PathBuf::from("/var/lib/fnhost.trusted")
        );
        assert_eq!(
            socket_path(Path::new("/x.trusted")),
            PathBuf::from("/x.trusted/run/worker.sock")
        );
    }
}
