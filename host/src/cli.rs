//! The `fnhost` command line: `serve` runs the host (`cli::serve`); the
//! other commands talk to a host's admin API (`deploy`, `list`, `invoke`,
//! `rollback`, `remove`, `tokens`, …), read a local host's audit log
//! (`audit`), rotate its keys, or work on job crates locally (`new`,
//! `build`); two hidden ones are the trusted tier's processes.

mod client;
mod project;
mod serve;

use serve::{ServeArgs, ServeSetup, serve, serve_setup};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

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
        listing: client::Listing,
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
        listing: client::Listing,
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
    /// What ran on the host, newest first: trigger, attempt, outcome and
    /// reason, queue time, duration, fuel, peak memory.
    Invocations(client::InvocationsArgs),
    /// What a function's invocations wrote, oldest first; --follow keeps printing.
    Logs(client::LogsArgs),
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
    /// Print a local host's audit log: deploys, token and data changes,
    /// sensitive accesses; with --denied, the refusals.
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
        /// The refusals (`audit-denied.log`) instead of the changes and
        /// sensitive accesses (`audit.log`).
        #[arg(long)]
        denied: bool,
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
    /// Print a completion script for a shell, e.g.
    /// `source <(fnhost completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
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
            Command::List { conn, listing } => client::list(&conn, listing).await,
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
            Command::Status { conn, listing } => client::status(&conn, listing).await,
            Command::Invocations(args) => client::invocations(args).await,
            Command::Logs(args) => client::logs(args).await,
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
                denied,
            } => {
                tokio::task::spawn_blocking(move || client::audit(data_dir, lines, follow, denied))
                    .await
                    .context("the audit reader stopped")?
            }
            Command::New { name, dir } => project::new(&name, dir),
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                let mut command = Cli::command();
                clap_complete::generate(shell, &mut command, "fnhost", &mut std::io::stdout());
                Ok(())
            }
            Command::Build { dir } => project::build(&dir).map(|_| ()),
        }
    }

    /// True for the commands that make the host's files: `serve`, the
    /// trusted tier's processes, `keys rotate` (which run with a umask
    /// that keeps them private); the client commands make files of the
    /// user's (a scaffold, a download), which keep the user's umask.
    pub fn keeps_host_data(&self) -> bool {
        self.is_serve() || matches!(self.command, Command::Keys { .. })
    }

    /// True for `serve` (and the trusted tier's processes), which log at INFO; the client commands log only warnings.
    pub fn is_serve(&self) -> bool {
        matches!(
            self.command,
            Command::Serve(_) | Command::TrustedSupervisor(_) | Command::TrustedWorker(_)
        )
    }
}
