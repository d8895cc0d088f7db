//! The composition root: the one place where a host is put together from
//! its config and its [`Backends`] — the sandbox and the executor, the
//! registry, the [`Services`] (stores as delivery and the API use them),
//! the dispatcher, the triggers and the HTTP server. `fnhost
//! serve`, the benches and any embedding of fnhost build a [`Host`] here;
//! nothing else wires stores to the dispatcher by hand.
//!
//! Without backends given, the host runs on the embedded default (SQLite
//! and files in the data dir).

pub mod config;

use crate::audit::Audit;
use crate::backends::Backends;
use crate::backends::sealed_queues::SealedQueues;
use crate::clock::SystemClock;
use crate::dispatcher::Dispatcher;
use crate::exec::Executor;
use crate::jobs::JobSettings;
use crate::jobs::callback::{CallbackPolicy, Callbacks};
use crate::records::{Records, RecordsConfig};
use crate::registry::Registry;
use crate::sandbox::{LocalExecutor, Sandbox, SandboxConfig, Stores};
use crate::server::{Guard, ServerConfig};
use crate::services::Services;
use crate::telemetry::Telemetry;
use crate::tokens::Tokens;
use crate::trusted::remote::HostStores;
use crate::trusted::{RemoteWorker, Tiered};
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a host is set up; every field has the default `fnhost serve` uses.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the registry, components, compiled cache (and the embedded
    /// stores) live.
    pub data_dir: PathBuf,
    /// Invocations that may run at once, host-wide.
    pub max_concurrency: usize,
    /// Use the pooling allocator (falls back to on-demand when refused).
    pub pooling: bool,
    /// How long finished job records are kept.
    pub job_retention: Duration,
    /// What completion callbacks may reach.
    pub callbacks: CallbackPolicy,
    /// The HTTP server's settings.
    pub server: ServerConfig,
    /// What this host does: serve HTTP, run background work, or both.
    pub role: Role,
    /// Buckets only trusted functions may reach and queues sealed for
    /// them (the host config's `[sensitive]`): the admin API answers 403
    /// for them, and a trusted worker holds them.
    pub sensitive: Arc<crate::manifest::Sensitive>,
    /// This host's name in its invocation records (on a fleet, which host
    /// ran what).
    pub host_id: String,
    /// How much invocation history the host keeps.
    pub records: RecordsConfig,
}

/// The trusted worker of a host with sensitive data, as `fnhost serve`
/// started it before confining itself: its trusted dir and its
/// supervisor, whose stdin this process holds (closing it stops both).
#[derive(Debug)]
pub struct TrustedLaunch {
    /// The trusted dir.
    pub dir: PathBuf,
    /// `fnhost trusted-supervisor`.
    pub supervisor: std::process::Child,
}

/// What a host of a fleet does, so that the web-facing and the background
/// halves scale apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// HTTP triggers and the admin API; async jobs are enqueued for
    /// workers. No queue workers, blob triggers or timers run here.
    Api,
    /// Queue workers, blob triggers and timers, and the admin API (deploy,
    /// status, health); HTTP triggers are not served.
    Worker,
    /// Everything (the default).
    #[default]
    Both,
}

impl Role {
    /// Does this host serve HTTP triggers?
    pub fn serves_http(self) -> bool {
        self != Role::Worker
    }

    /// Does this host run queue workers, blob triggers and timers?
    pub fn runs_background(self) -> bool {
        self != Role::Api
    }
}

impl HostConfig {
    /// The defaults, for a host whose data lives in `data_dir`, whose admin
    /// API takes `token`.
    pub fn new(data_dir: PathBuf, token: String) -> HostConfig {
        HostConfig {
            data_dir,
            max_concurrency: 64,
            pooling: true,
            job_retention: Duration::from_secs(24 * 60 * 60),
            callbacks: CallbackPolicy::default(),
            server: ServerConfig::new(token),
            role: Role::Both,
            sensitive: Arc::default(),
            host_id: hostname(),
            records: RecordsConfig::default(),
        }
    }
}

/// This machine's host name (`localhost` when the system has none to give).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(name)) if !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

/// A host, put together and ready to serve.
pub struct Host {
    config: HostConfig,
    dispatcher: Arc<Dispatcher>,
    services: Arc<Services>,
    records: Arc<Records>,
    telemetry: Arc<Telemetry>,
    pooling: bool,
    guard: Guard,
    trusted: Option<TrustedLaunch>,
}

/// Puts a [`Host`] together: [`Host::builder`], then [`HostBuilder::build`].
pub struct HostBuilder {
    config: HostConfig,
    backends: Option<Backends>,
    trusted: Option<TrustedLaunch>,
}

/// How long a starting host waits for its trusted worker's hello.
const WORKER_READY: Duration = Duration::from_secs(60);

impl HostBuilder {
    /// Run trusted functions in this worker (required when the config has
    /// sensitive buckets or queues).
    pub fn trusted(mut self, launch: TrustedLaunch) -> HostBuilder {
        self.trusted = Some(launch);
        self
    }

    /// Run on these backends instead of the embedded default.
    pub fn backends(mut self, backends: Backends) -> HostBuilder {
        self.backends = Some(backends);
        self
    }

    /// Open the stores, build the sandbox and executor, and load every
    /// active version.
    pub async fn build(self) -> anyhow::Result<Host> {
        let config = self.config;
        let data_dir = &config.data_dir;
        // Private to this user; `fnhost serve` checked and made it already.
        crate::files::private_dir(data_dir).with_context(|| {
            format!("failed to make the data dir {data_dir:?} private; pass --data-dir with a directory of fnhost's own")
        })?;
        let mut backends = match self.backends {
            Some(b) => b,
            None => Backends::embedded(data_dir, Arc::new(SystemClock))?,
        };
        // Sensitive data is the trusted worker's: this process only seals
        // sensitive queues' messages to it, with its public key.
        let trusted = match (config.sensitive.is_empty(), self.trusted) {
            (true, launch) => launch,
            (false, None) => anyhow::bail!(
                "sensitive buckets and queues need the trusted worker, which `fnhost serve` starts"
            ),
            (false, Some(launch)) => Some(launch),
        };
        let unsealed_queues = backends.queues.clone();
        let worker = match &trusted {
            None => None,
            Some(launch) => {
                let worker = RemoteWorker::start(
                    crate::trusted::socket_path(&launch.dir),
                    Some(launch.supervisor.id()),
                );
                let sealer = worker.ready(WORKER_READY).await?;
                if !config.sensitive.queues.is_empty() {
                    backends.queues = Arc::new(SealedQueues::new(
                        backends.queues,
                        Arc::new(config.sensitive.queues.clone()),
                        sealer,
                    ));
                }
                tracing::info!(pid = ?worker.pid(), buckets = ?config.sensitive.buckets, queues = ?config.sensitive.queues, "trusted functions run in the trusted worker, which alone holds the sensitive data");
                Some(worker)
            }
        };
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            pooling: config.pooling,
            max_instances: (config.max_concurrency as u32).max(1) * 2,
            ..SandboxConfig::new(data_dir.join("cache"))
        })?);
        let pooling = sandbox.pooling();
        let registry = Arc::new(
            Registry::open(data_dir)
                .with_context(|| format!("failed to open the registry in {data_dir:?}"))?,
        );
        let audit = Arc::new(Audit::open(data_dir));
        // Counts of refusals are written when their window closes.
        let flushing = Arc::downgrade(&audit);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(audit) = flushing.upgrade() else {
                    break;
                };
                audit.flush();
            }
        });
        let buckets = Arc::new(config.sensitive.buckets.clone());
        let stores = Stores {
            queues: Some(Arc::new(crate::queue::SendTo(backends.queues.clone()))),
            blobs: Some(backends.blobs.clone()),
            audit: Some(audit.clone()),
            sensitive: buckets.clone(),
        };
        let local: Arc<dyn Executor> = Arc::new(LocalExecutor::new(
            sandbox,
            registry.clone(),
            stores,
            config.max_concurrency,
        ));
        let trusted_worker = worker.clone();
        let executor: Arc<dyn Executor> = match worker {
            None => local,
            Some(worker) => {
                worker.set_stores(HostStores {
                    components: registry.clone(),
                    queues: backends.queues.clone(),
                    unsealed_queues,
                    blobs: backends.blobs.clone(),
                    audit: audit.clone(),
                    sensitive: buckets,
                });
                Arc::new(Tiered {
                    public: local,
                    trusted: worker,
                })
            }
        };
        let jobs = JobSettings {
            retention: config.job_retention,
            callbacks: Arc::new(Callbacks::new(config.callbacks.clone())),
        };
        // Tokens live where the fleet's state does, so a token made on one
        // host works on all; a host alone keeps them in its state.db.
        let token_state: Arc<dyn crate::state::StateStore> = match &backends.fleet {
            Some(state) => state.clone(),
            None => Arc::new(
                crate::backends::embedded::EmbeddedState::open(data_dir)
                    .with_context(|| format!("failed to open the state store in {data_dir:?}"))?,
            ),
        };
        let guard = Guard {
            tokens: Arc::new(Tokens::new(token_state, config.server.token.clone())),
            audit,
            trusted_worker,
        };
        let services = Arc::new(Services::new(
            backends,
            registry,
            jobs,
            config.sensitive.clone(),
        ));
        let dispatcher = Dispatcher::start(executor, services.clone()).await?;
        let records = Records::open(data_dir, config.host_id.clone(), config.records).context(
            "failed to open the invocation records; check the data dir's disk and permissions",
        )?;
        // None to keep: no records taken, at no cost.
        if config.records.max_records > 0 {
            dispatcher.subscribe_invocations(records.clone());
        }
        let sources = crate::telemetry::Sources {
            records: Some(records.clone()),
            trusted_worker: guard.trusted_worker.clone(),
        };
        let telemetry = Telemetry::new(services.clone(), dispatcher.clone(), sources);
        dispatcher.subscribe_invocations(telemetry.clone());
        // A fleet host takes the fleet's deployments before it serves.
        if let Err(e) = dispatcher.sync_fleet().await {
            tracing::error!(error = %e, "cannot read the fleet's deployments now; serving what this host has, and trying again");
        }
        Ok(Host {
            config,
            dispatcher,
            services,
            records,
            telemetry,
            pooling,
            guard,
            trusted,
        })
    }
}

impl Host {
    /// A builder for a host set up by `config`.
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder {
            config,
            backends: None,
            trusted: None,
        }
    }

    /// The dispatcher: deployments, routes, invocations.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The stores and settings triggers and the API work with.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// True when the sandbox uses the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Start the background triggers (queue binding loops, the blob feed, timers)
    /// until `shutdown`; the tracker holds their in-flight invocations.
    /// A host in the api role starts none: the tracker is empty.
    pub fn start_triggers(&self, shutdown: CancellationToken) -> TaskTracker {
        if !self.config.role.runs_background() {
            let none = TaskTracker::new();
            none.close();
            return none;
        }
        crate::triggers::Background::spawn(self.dispatcher.clone(), self.services.clone(), shutdown)
    }

    /// Serve on `listener` (triggers and the HTTP server) until `shutdown`,
    /// then drain within the stopping wait time.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let background = self.start_triggers(shutdown.clone());
        tokio::spawn(self.dispatcher.clone().follow_fleet(shutdown.clone()));
        let mut server = self.config.server;
        server.http_triggers = self.config.role.serves_http();
        let audit = self.guard.audit.clone();
        let records = self.records.clone();
        let served = crate::server::serve(
            listener,
            crate::server::Served {
                dispatcher: self.dispatcher,
                services: self.services,
                guard: self.guard,
                records: self.records,
                telemetry: self.telemetry,
                stopping: shutdown.clone(),
            },
            server,
            shutdown,
            background,
        )
        .await;
        audit.flush_all();
        records.flush().await;
        // Drained: now the worker may go (closing the supervisor's stdin
        // stops it, and it stops the worker).
        if let Some(mut launch) = self.trusted {
            drop(launch.supervisor.stdin.take());
            let waited = crate::task::blocking(move || launch.supervisor.wait()).await;
            tracing::info!(supervisor = ?waited.map(|s| s.to_string()), "the trusted worker stopped");
        }
        served
    }
}
