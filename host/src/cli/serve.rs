//! `fnhost serve`: its settings, what must happen before any thread
//! starts (the host config read; with sensitive data, the trusted worker's
//! supervisor started and this process confined), and the host run until
//! SIGTERM or SIGINT.

use super::default_data_dir;
use anyhow::Context as _;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of `fnhost serve`; each has an `FNHOST_*` environment equivalent.
#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FNHOST_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the host keeps its database, components and token.
    #[arg(long, env = "FNHOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The host config file: where queues live (the embedded store when absent).
    #[arg(long, env = "FNHOST_CONFIG")]
    config: Option<PathBuf>,
    /// What this host does: `api` (HTTP triggers, admin API; enqueues async
    /// jobs), `worker` (queues, blob triggers, timers; admin API), or `both`.
    #[arg(long, env = "FNHOST_ROLE", value_enum, default_value_t = crate::host::Role::Both)]
    role: crate::host::Role,
    /// How long to drain in-flight invocations on shutdown, e.g. 30s.
    #[arg(long, env = "FNHOST_STOPPING_WAIT_TIME", default_value = "30s", value_parser = humantime::parse_duration)]
    stopping_wait_time: Duration,
    /// Largest HTTP-trigger request body in bytes (at most 1 GiB).
    #[arg(long, env = "FNHOST_MAX_BODY_BYTES", default_value_t = 10 << 20, value_parser = accepted_bytes)]
    max_body_bytes: usize,
    /// Largest deploy upload in bytes (at most 1 GiB).
    #[arg(long, env = "FNHOST_MAX_UPLOAD_BYTES", default_value_t = 64 << 20, value_parser = accepted_bytes)]
    max_upload_bytes: usize,
    /// Invocations that may run at once, host-wide.
    #[arg(long, env = "FNHOST_MAX_CONCURRENCY", default_value_t = 64)]
    max_concurrency: usize,
    /// HTTP requests that may wait for a free instance (one function's at most half); more get 503 with Retry-After.
    #[arg(long, env = "FNHOST_MAX_PENDING_REQUESTS", default_value_t = 512)]
    max_pending_requests: usize,
    /// Connections open at once; more get 503 with Retry-After and are closed.
    #[arg(long, env = "FNHOST_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// How long a client may take to send a request's headers, e.g. 10s.
    #[arg(long, env = "FNHOST_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long a request body may stall (send nothing) before the request is refused, e.g. 30s.
    #[arg(long, env = "FNHOST_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,
    /// How long finished job records are kept, e.g. 24h.
    #[arg(long, env = "FNHOST_JOB_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    job_retention: Duration,
    /// Non-public addresses that job callbacks may reach (comma-separated:
    /// loopback, private, link-local); none by default.
    #[arg(long, env = "FNHOST_CALLBACK_ALLOW", value_delimiter = ',', value_enum)]
    callback_allow: Vec<crate::jobs::callback::Reach>,
    /// Buckets only trusted functions may reach, encrypted at rest
    /// (comma-separated; added to the host config's `[sensitive]`).
    #[arg(
        long,
        env = "FNHOST_SENSITIVE",
        value_delimiter = ',',
        value_name = "BUCKET"
    )]
    sensitive: Vec<String>,
    /// Queues whose messages are sealed for the trusted worker
    /// (comma-separated; added to the host config's `[sensitive] queues`).
    #[arg(
        long,
        env = "FNHOST_SENSITIVE_QUEUES",
        value_delimiter = ',',
        value_name = "QUEUE"
    )]
    sensitive_queues: Vec<String>,
    /// Where the trusted worker keeps the sensitive store and its keys
    /// (default: the host config's `[sensitive] dir`, else
    /// `<data-dir>.trusted`); outside the data dir.
    #[arg(long, env = "FNHOST_TRUSTED_DIR")]
    trusted_dir: Option<PathBuf>,
    /// Use on-demand instance allocation instead of the pooling allocator.
    #[arg(long, env = "FNHOST_NO_POOLING")]
    no_pooling: bool,
    /// This host's name in its invocation records (default: the machine's
    /// host name and the listen port, or the process id with port 0).
    #[arg(long, env = "FNHOST_HOST_ID")]
    host_id: Option<String>,
    /// How long invocation records and their logs are kept, e.g. 7d.
    #[arg(long, env = "FNHOST_INVOCATION_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    invocation_retention: Duration,
    /// The most invocation records kept; the oldest go first (0: none are
    /// taken).
    #[arg(long, env = "FNHOST_INVOCATION_RECORDS", default_value_t = crate::records::DEFAULT_MAX_RECORDS)]
    invocation_records: u64,
    /// For how many of the newest invocations their logs are kept.
    #[arg(long, env = "FNHOST_INVOCATION_LOGS", default_value_t = crate::records::DEFAULT_MAX_LOGS)]
    invocation_logs: u64,
}

/// A cap on what the host accepts from a client, in bytes: at most
/// [`crate::trusted::wire::MAX_ACCEPTED_BYTES`], the most the host holds in
/// memory for one request and its trusted worker's channel carries.
fn accepted_bytes(value: &str) -> Result<usize, String> {
    let max = crate::trusted::wire::MAX_ACCEPTED_BYTES;
    let n: usize = value
        .parse()
        .map_err(|e| format!("{value:?} is not a number of bytes: {e}"))?;
    if n == 0 || n > max {
        return Err(format!(
            "{n} bytes is outside 1..={max} (1 GiB): the host holds a request whole in memory, and its trusted worker's channel carries at most that; pass a smaller cap"
        ));
    }
    Ok(n)
}

/// What `serve` sets up before any thread starts.
pub(super) struct ServeSetup {
    data_dir: PathBuf,
    file: crate::host::config::HostFile,
    sensitive: crate::manifest::Sensitive,
    trusted: Option<crate::host::TrustedLaunch>,
}

/// Check every path and URL the flags and the host config name, before
/// anything on disk changes; then make the data dir (and the trusted dir)
/// private, and with sensitive data start the trusted worker's supervisor
/// and confine this process to its data dir.
pub(super) fn serve_setup(args: &ServeArgs) -> anyhow::Result<ServeSetup> {
    let data_field = match &args.data_dir {
        Some(_) => "--data-dir (FNHOST_DATA_DIR)".to_string(),
        None => "the default data dir".to_string(),
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let data_dir = own_dir(&data_dir, &data_field)?;
    let file = match &args.config {
        Some(path) => crate::host::config::HostFile::load(path)?,
        None => crate::host::config::HostFile::default(),
    };
    for (i, b) in args.sensitive.iter().enumerate() {
        crate::names::BucketName::parse(b)
            .map_err(|e| anyhow::anyhow!("--sensitive (FNHOST_SENSITIVE) [{i}]: {e}"))?;
    }
    for (i, q) in args.sensitive_queues.iter().enumerate() {
        crate::names::QueueName::parse_user(q).map_err(|e| {
            anyhow::anyhow!("--sensitive-queues (FNHOST_SENSITIVE_QUEUES) [{i}]: {e}")
        })?;
    }
    let sensitive = crate::manifest::Sensitive {
        buckets: file
            .sensitive
            .buckets
            .iter()
            .chain(&args.sensitive)
            .cloned()
            .collect(),
        queues: (file.sensitive.queues.iter())
            .chain(&args.sensitive_queues)
            .cloned()
            .collect(),
    };
    let trusted_dir = match sensitive.is_empty() {
        true => None,
        false => Some(trusted_dir(args, &data_dir, &file)?),
    };
    // Everything checked: now the disk.
    make_private(&data_dir, &data_field)?;
    let trusted = match trusted_dir {
        Some((dir, field)) => {
            make_private(&dir, &field)?;
            Some(launch_trusted(args, &data_dir, dir, &file, &sensitive)?)
        }
        None => None,
    };
    Ok(ServeSetup {
        data_dir,
        file,
        sensitive,
        trusted,
    })
}

/// Where the directory `dir` that `field` names is (resolved through what
/// exists, changing nothing), if fnhost may make it its own: it does not
/// exist yet, or it is this user's and not shared.
fn own_dir(dir: &Path, field: &str) -> anyhow::Result<PathBuf> {
    let resolved = crate::files::resolve(dir).map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
    crate::files::check_own_dir(&resolved).map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
    Ok(resolved)
}

/// Make the checked directory `dir` (named by `field`) private, saying so
/// when it was looser.
fn make_private(dir: &Path, field: &str) -> anyhow::Result<()> {
    let tightened = crate::files::private_dir(dir)
        .map_err(|e| anyhow::anyhow!("{field}: cannot make {dir:?} private: {e}"))?;
    if let Some(mode) = tightened {
        tracing::info!(dir = ?dir, "{field} was mode {mode:04o}; made it 0700, private to fnhost's user");
    }
    Ok(())
}

/// The trusted dir (from `--trusted-dir`, else the host config's
/// `[sensitive] dir`, else beside the data dir) and the field that named
/// it, checked: fnhost's own to make, and out of the public process's reach.
fn trusted_dir(
    args: &ServeArgs,
    data_dir: &Path,
    file: &crate::host::config::HostFile,
) -> anyhow::Result<(PathBuf, String)> {
    let (dir, field) = match (&args.trusted_dir, &file.sensitive.dir, &args.config) {
        (Some(dir), _, _) => (
            dir.clone(),
            "--trusted-dir (FNHOST_TRUSTED_DIR)".to_string(),
        ),
        (None, Some(dir), Some(config)) => (dir.clone(), format!("[sensitive] dir in {config:?}")),
        _ => (
            crate::trusted::default_dir(data_dir),
            "the default trusted dir (<data-dir>.trusted; set another with --trusted-dir)".into(),
        ),
    };
    let dir = own_dir(&dir, &field)?;
    if let Some(kept) = crate::confine::reachable_by_public(&dir, data_dir) {
        anyhow::bail!(
            "{field}: the trusted dir {dir:?} lies within (or holds) {kept:?}, which the public process keeps access to \
             (its data dir {data_dir:?}, the system's directories, /dev, the AWS files); \
             put it elsewhere with --trusted-dir or [sensitive] dir, e.g. beside the data dir"
        );
    }
    Ok((dir, field))
}

/// Start the trusted worker's supervisor on the checked, private trusted
/// dir `dir`, then confine this process.
fn launch_trusted(
    args: &ServeArgs,
    data_dir: &std::path::Path,
    dir: PathBuf,
    file: &crate::host::config::HostFile,
    sensitive: &crate::manifest::Sensitive,
) -> anyhow::Result<crate::host::TrustedLaunch> {
    // Keys from before the trusted worker existed move to its dir.
    let (old, new) = (data_dir.join("keys"), dir.join("keys"));
    if old.exists() && !new.exists() {
        std::fs::rename(&old, &new).with_context(|| {
            format!("cannot move the encryption keys from {old:?} to {new:?}; move them by hand")
        })?;
        tracing::warn!(from = ?old, to = ?new, "moved the encryption keys into the trusted dir");
    } else if old.exists() {
        tracing::warn!(keys = ?old, trusted = ?new, "encryption keys are still in the data dir, where the public process can read them: remove that copy (the trusted dir's is the one in use)");
    }
    let worker = crate::trusted::worker::WorkerArgs {
        trusted_dir: dir.clone(),
        peer_pid: std::process::id(),
        buckets: sensitive.buckets.iter().cloned().collect(),
        queues: sensitive.queues.iter().cloned().collect(),
        max_concurrency: args.max_concurrency,
        no_pooling: args.no_pooling,
        accept_without_landlock: file.sensitive.accept_without_landlock,
        // Buckets on S3: the worker keeps the sensitive ones there, sealed.
        config: (file.blobs.backend == crate::host::config::BlobsKind::S3)
            .then(|| args.config.clone())
            .flatten()
            .map(|c| c.canonicalize().unwrap_or(c)),
    };
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find the fnhost executable")?;
    let mut supervisor = std::process::Command::new(exe)
        .arg("trusted-supervisor")
        .args(crate::trusted::supervisor::worker_command(&worker))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        // Its own process group: a Ctrl-C or a group's SIGTERM reaches this
        // process, which drains, and only then stops the worker.
        .process_group(0)
        .spawn()
        .context("cannot start the trusted worker's supervisor")?;
    let confinement = match crate::confine::public_process(data_dir) {
        Ok(c) => c,
        Err(e) => {
            let _ = supervisor.kill();
            return Err(anyhow::anyhow!(e));
        }
    };
    if confinement != crate::confine::Confinement::Full && !file.sensitive.accept_without_landlock {
        let _ = supervisor.kill();
        anyhow::bail!(
            "Landlock is {confinement}, so this process could still reach the trusted dir; \
             refusing to serve sensitive data. Set [sensitive] accept_without_landlock = true in the host config to run in the weaker mode"
        );
    }
    tracing::info!(data_dir = ?data_dir, trusted_dir = ?dir, "public process confined to its data dir by Landlock: {confinement}; it cannot open the trusted dir");
    Ok(crate::host::TrustedLaunch { dir, supervisor })
}

pub(super) async fn serve(args: ServeArgs, setup: ServeSetup) -> anyhow::Result<()> {
    let ServeSetup {
        data_dir,
        file,
        sensitive,
        trusted,
    } = setup;
    let (token, created) =
        crate::server::load_or_create_token(&data_dir, std::env::var("FNHOST_TOKEN").ok())
            .with_context(|| format!("failed to read or create the admin token in {data_dir:?}"))?;
    if created {
        println!(
            "admin token (saved in {:?}; the CLI finds it there): {token}",
            crate::server::token_path(&data_dir)
        );
    }
    let config = crate::host::HostConfig {
        data_dir: data_dir.clone(),
        max_concurrency: args.max_concurrency,
        pooling: !args.no_pooling,
        job_retention: args.job_retention,
        callbacks: crate::jobs::callback::CallbackPolicy {
            allow: args.callback_allow,
        },
        server: crate::server::ServerConfig {
            token,
            max_body_bytes: args.max_body_bytes,
            max_upload_bytes: args.max_upload_bytes,
            stopping_wait_time: args.stopping_wait_time,
            max_connections: args.max_connections,
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_pending_requests: args.max_pending_requests,
            http_triggers: true,
        },
        role: args.role,
        sensitive: Arc::new(sensitive),
        host_id: args.host_id.unwrap_or_else(|| match args.listen.port() {
            0 => format!("{}:pid{}", crate::host::hostname(), std::process::id()),
            port => format!("{}:{port}", crate::host::hostname()),
        }),
        records: crate::records::RecordsConfig {
            max_age: args.invocation_retention,
            max_records: args.invocation_records,
            max_logs: args.invocation_logs,
        },
    };
    if args.role == crate::host::Role::Api && !file.shares_queues() {
        anyhow::bail!(
            "--role api runs no queue workers, so its async jobs and queue messages need workers on the same queues; \
             give a host config with [queues] backend = \"sqs\" (--config), or use --role both"
        );
    }
    let backends = file
        .backends(&data_dir, Arc::new(crate::clock::SystemClock))
        .await?;
    let mut builder = crate::host::Host::builder(config).backends(backends);
    if let Some(launch) = trusted {
        builder = builder.trusted(launch);
    }
    let host = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "failed to listen on {}; is another host running there? pass --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = ?data_dir, pooling = host.pooling(), "fnhost started");
    println!("fnhost listening on http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    host.serve(listener, shutdown).await
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for shutdown signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
