//! The trusted worker's supervisor (`fnhost trusted-supervisor`), started
//! by the public process before it confines itself, so that it can start
//! the worker again — with the trusted dir the public process gave up —
//! whenever the worker dies. Restarts back off from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], doubling, and start afresh once a
//! worker has lived [`HEALTHY_AFTER`].
//!
//! It stops (SIGUSR1 to the worker, a bounded wait, then SIGKILL) when its
//! stdin closes: the public process closes it after draining, and the
//! kernel closes it when the public process dies, so the worker never
//! outlives the host. Both ignore SIGTERM and SIGINT: a service manager
//! that signals every process of the host reaches the host process, which
//! drains first; the worker dies with the supervisor (SIGKILL from the
//! kernel) should the supervisor die.

use super::worker::WorkerArgs;
use anyhow::Context as _;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The first wait before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that lived this long resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a stopping worker gets before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The arguments that start a worker like `args`.
pub fn worker_command(args: &WorkerArgs) -> Vec<String> {
    let mut v = vec![
        "--trusted-dir".to_string(),
        args.trusted_dir.display().to_string(),
        "--peer-pid".into(),
        args.peer_pid.to_string(),
        "--max-concurrency".into(),
        args.max_concurrency.to_string(),
    ];
    if !args.buckets.is_empty() {
        v.push("--buckets".into());
        v.push(args.buckets.join(","));
    }
    if !args.queues.is_empty() {
        v.push("--queues".into());
        v.push(args.queues.join(","));
    }
    if args.no_pooling {
        v.push("--no-pooling".into());
    }
    if args.accept_without_landlock {
        v.push("--accept-without-landlock".into());
    }
    if let Some(config) = &args.config {
        v.push("--config".into());
        v.push(config.display().to_string());
    }
    v
}

fn spawn(args: &WorkerArgs) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the fnhost executable")?;
    Command::new(exe)
        .arg("trusted-worker")
        .args(worker_command(args))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the trusted worker")
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("the trusted worker did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

/// Keep a worker running until stdin closes.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _ignored = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let stop_now = CancellationToken::new();
    let closed = stop_now.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        closed.cancel();
    });
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut child = spawn(&args)?;
        let started = Instant::now();
        tracing::info!(pid = child.id(), "trusted worker started");
        tokio::select! {
            status = child.wait() => {
                let status = status.context("cannot wait for the trusted worker")?;
                if stop_now.is_cancelled() {
                    return Ok(());
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(%status, restart_in = ?backoff, "the trusted worker exited; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_now.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            _ = stop_now.cancelled() => {
                stop(&mut child).await;
                tracing::info!("trusted worker supervisor stopped");
                return Ok(());
            }
        }
    }
}
