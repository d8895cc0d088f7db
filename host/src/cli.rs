//! The `fnhost` command line: `serve` runs the host; the other commands talk
//! to a host's admin API (`deploy`, `list`, `invoke`, `rollback`, `remove`,
//! `tokens`, …), read a local host's audit log (`audit`), or work on job
//! crates locally (`new`, `build`).

mod client;
mod project;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A host for background jobs written in Rust and run as WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "fnhost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host on its embedded store.
    Serve(ServeArgs),
    /// Upload a function (a directory with fnhost.toml, or the manifest itself) and activate it.
    Deploy {
        /// The function's directory or its fnhost.toml.
        path: PathBuf,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// List deployed functions.
    List {
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Invoke a function directly and print its output.
    Invoke {
        /// The function's name.
        name: String,
        /// The payload: JSON text, or @FILE to read it from a file.
        #[arg(long, short)]
        data: Option<String>,
        /// Submit as an async job: print its id at once (follow it with `fnhost jobs`).
        #[arg(long = "async")]
        run_async: bool,
        /// URL that receives the job record when it finishes (implies --async).
        #[arg(long)]
        callback_url: Option<String>,
        /// Queue that receives the completion (implies --async).
        #[arg(long)]
        reply_to: Option<String>,
        /// Run as an async job at this time (RFC 3339, e.g. 2026-12-01T03:00:00Z); survives restarts.
        #[arg(long, value_name = "TIME", conflicts_with = "run_in")]
        at: Option<String>,
        /// Run as an async job after this delay (e.g. 90s, 2h); survives restarts.
        #[arg(long = "in", value_name = "DURATION")]
        run_in: Option<String>,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Backlog, desired and running instances of every queue binding (job queues included).
    Status {
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Show an async job's state; with --wait follow it to the end.
    Jobs {
        /// The job id.
        id: String,
        /// Follow the job with a progress bar until it finishes; print its result.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Activate an earlier version (the previous one unless --to is given).
    Rollback {
        /// The function's name.
        name: String,
        /// The version to activate.
        #[arg(long)]
        to: Option<u32>,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Remove a function and all its versions.
    Remove {
        /// The function's name.
        name: String,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Send messages to queues and inspect them.
    Queue {
        #[command(subcommand)]
        command: client::QueueCommand,
    },
    /// Put, get, list and remove objects in buckets.
    Blob {
        #[command(subcommand)]
        command: client::BlobCommand,
    },
    /// Make, list and revoke scoped admin tokens.
    Tokens {
        #[command(subcommand)]
        command: client::TokensCommand,
    },
    /// Print a local host's audit log (refusals, deploys, token changes).
    Audit {
        /// The host's data dir.
        #[arg(long, env = "FNHOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// How many of the last entries to print first.
        #[arg(long, default_value_t = 50)]
        lines: usize,
        /// Keep printing entries as they are written.
        #[arg(long)]
        follow: bool,
    },
    /// Manage the keys that encrypt sensitive buckets at rest.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create a new job crate with a manifest.
    New {
        /// The function's name (lower-case letters, digits, '-').
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a job crate for wasm32-wasip2 and check that it is an fnhost job.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Internal: keeps the trusted worker running (started by `serve`).
    #[command(hide = true)]
    TrustedSupervisor(crate::trusted::worker::WorkerArgs),
    /// Internal: the trusted worker (started by the supervisor).
    #[command(hide = true)]
    TrustedWorker(crate::trusted::worker::WorkerArgs),
}

/// `fnhost keys …`.
#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Make a new key the one new objects are sealed with; older keys stay
    /// and keep opening what they sealed. A running host takes it at its
    /// next start.
    Rotate {
        /// The host's data dir.
        #[arg(long, env = "FNHOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The host's trusted dir (default: the host config's
        /// `[sensitive] dir`, else `<data-dir>.trusted`).
        #[arg(long, env = "FNHOST_TRUSTED_DIR")]
        trusted_dir: Option<PathBuf>,
        /// The host config, for its `[sensitive] dir`.
        #[arg(long, env = "FNHOST_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Settings of `fnhost serve`; each has an `FNHOST_*` environment equivalent.
#[derive(Args, Debug)]
struct ServeArgs {
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
    /// Largest HTTP-trigger request body in bytes.
    #[arg(long, env = "FNHOST_MAX_BODY_BYTES", default_value_t = 10 << 20)]
    max_body_bytes: usize,
    /// Largest deploy upload in bytes.
    #[arg(long, env = "FNHOST_MAX_UPLOAD_BYTES", default_value_t = 64 << 20)]
    max_upload_bytes: usize,
    /// Invocations that may run at once, host-wide.
    #[arg(long, env = "FNHOST_MAX_CONCURRENCY", default_value_t = 64)]
    max_concurrency: usize,
    /// HTTP requests that may wait for a free instance; more get 503 with Retry-After.
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
}

/// The data dir when none is given: `$FNHOST_DATA_DIR`, else
/// `$XDG_DATA_HOME/fnhost`, else `~/.local/share/fnhost`, else `./.fnhost`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("fnhost");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/fnhost"),
        None => PathBuf::from(".fnhost"),
    }
}

/// What must happen before the async runtime starts any thread: the
/// trusted tier's processes and Landlock bind only the thread that asks
/// and the threads it creates afterwards.
enum Early {
    None,
    Serve(Box<ServeSetup>),
    Worker(
        crate::trusted::worker::Prepared,
        Option<Box<crate::host::config::HostFile>>,
    ),
}

impl Cli {
    /// Run the command: what must happen before any thread starts, then
    /// the rest on a multi-threaded async runtime.
    pub fn main(self) -> anyhow::Result<()> {
        let early = match &self.command {
            Command::Serve(args) => Early::Serve(Box::new(serve_setup(args)?)),
            Command::TrustedWorker(args) => {
                // The worker never outlives its supervisor.
                // SAFETY: prctl(2) with constant arguments, on this process.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                // The host config (buckets on S3) before the worker gives
                // up its path.
                let file = match &args.config {
                    Some(path) => Some(Box::new(crate::host::config::HostFile::load(path)?)),
                    None => None,
                };
                Early::Worker(crate::trusted::worker::prepare(args)?, file)
            }
            _ => Early::None,
        };
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(self.run(early))
    }

    /// Run the command.
    async fn run(self, early: Early) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => match early {
                Early::Serve(setup) => serve(args, *setup).await,
                _ => unreachable!("serve is set up early"),
            },
            Command::TrustedSupervisor(args) => crate::trusted::supervisor::run(args).await,
            Command::TrustedWorker(args) => match early {
                Early::Worker(prepared, file) => {
                    let shared = match file {
                        Some(file) => file.s3_blobs().await?,
                        None => None,
                    };
                    let shared = shared.map(|s| Arc::new(s) as Arc<dyn crate::blobs::BlobBackend>);
                    crate::trusted::worker::run(args, prepared, shared).await
                }
                _ => unreachable!("the worker is set up early"),
            },
            Command::Deploy { path, conn } => client::deploy(&conn, &path).await,
            Command::List { conn } => client::list(&conn).await,
            Command::Invoke {
                name,
                data,
                run_async: false,
                at: None,
                run_in: None,
                callback_url: None,
                reply_to: None,
                conn,
                ..
            } => client::invoke(&conn, &name, data.as_deref()).await,
            Command::Invoke {
                name,
                data,
                callback_url,
                reply_to,
                at,
                run_in,
                conn,
                ..
            } => {
                let job = client::JobRequest {
                    callback_url,
                    reply_to,
                    not_before: at,
                    delay: run_in,
                };
                client::submit(&conn, &name, data.as_deref(), job).await
            }
            Command::Jobs { id, wait, conn } => client::jobs(&conn, &id, wait).await,
            Command::Status { conn } => client::status(&conn).await,
            Command::Rollback { name, to, conn } => client::rollback(&conn, &name, to).await,
            Command::Remove { name, conn } => client::remove(&conn, &name).await,
            Command::Queue { command } => client::queue(command).await,
            Command::Blob { command } => client::blob(command).await,
            Command::Tokens { command } => client::tokens(command).await,
            Command::Keys {
                command:
                    KeysCommand::Rotate {
                        data_dir,
                        trusted_dir,
                        config,
                    },
            } => {
                let configured = match &config {
                    Some(path) => crate::host::config::HostFile::load(path)?.sensitive.dir,
                    None => None,
                };
                let dir = match trusted_dir.or(configured) {
                    Some(dir) => dir,
                    None => {
                        let data = data_dir.unwrap_or_else(default_data_dir);
                        let data = data.canonicalize().unwrap_or(data);
                        crate::trusted::default_dir(&data)
                    }
                };
                let id = crate::backends::sealed::Keyring::rotate(&dir)
                    .with_context(|| format!("cannot add a key in {dir:?}"))?;
                println!(
                    "new current key {id} in {:?}; restart the host to seal with it (its trusted worker then re-seals older objects in the background)",
                    dir.join("keys")
                );
                Ok(())
            }
            Command::Audit {
                data_dir,
                lines,
                follow,
            } => tokio::task::spawn_blocking(move || client::audit(data_dir, lines, follow))
                .await
                .context("the audit reader stopped")?,
            Command::New { name, dir } => project::new(&name, dir),
            Command::Build { dir } => project::build(&dir).map(|_| ()),
        }
    }

    /// True for `serve` (and the trusted tier's processes), which log at INFO; the client commands log only warnings.
    pub fn is_serve(&self) -> bool {
        matches!(
            self.command,
            Command::Serve(_) | Command::TrustedSupervisor(_) | Command::TrustedWorker(_)
        )
    }
}

/// What `serve` sets up before any thread starts.
struct ServeSetup {
    data_dir: PathBuf,
    file: crate::host::config::HostFile,
    sensitive: crate::manifest::Sensitive,
    trusted: Option<crate::host::TrustedLaunch>,
}

/// Read the host config; with sensitive data, start the trusted worker's
/// supervisor and confine this process to its data dir.
fn serve_setup(args: &ServeArgs) -> anyhow::Result<ServeSetup> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!("failed to create the data dir {data_dir:?}; pass --data-dir with a writable path")
    })?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
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
    let trusted = if sensitive.is_empty() {
        None
    } else {
        Some(launch_trusted(args, &data_dir, &file, &sensitive)?)
    };
    Ok(ServeSetup {
        data_dir,
        file,
        sensitive,
        trusted,
    })
}

/// Start the trusted worker's supervisor, then confine this process.
fn launch_trusted(
    args: &ServeArgs,
    data_dir: &std::path::Path,
    file: &crate::host::config::HostFile,
    sensitive: &crate::manifest::Sensitive,
) -> anyhow::Result<crate::host::TrustedLaunch> {
    let dir = (args.trusted_dir.clone())
        .or_else(|| file.sensitive.dir.clone())
        .unwrap_or_else(|| crate::trusted::default_dir(data_dir));
    crate::files::private_dir(&dir)
        .with_context(|| format!("failed to create the trusted dir {dir:?}"))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    if let Some(kept) = crate::confine::reachable_by_public(&dir, data_dir) {
        anyhow::bail!(
            "the trusted dir {dir:?} lies within (or holds) {kept:?}, which the public process keeps access to \
             (its data dir {data_dir:?}, the system's directories, /dev, the AWS files); \
             put it elsewhere with --trusted-dir or [sensitive] dir, e.g. beside the data dir"
        );
    }
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

async fn serve(args: ServeArgs, setup: ServeSetup) -> anyhow::Result<()> {
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
