//! The dispatcher: deployments. Which version of each function is active,
//! which HTTP routes lead to it, and handing its events to the
//! [`Executor`] (which runs them, under the host-wide concurrency cap).
//!
//! Deploys, rollbacks and removals go through here so that the registry (on
//! disk) and the active set (in memory) change together; activation swaps an
//! `Arc`, so in-flight invocations finish on the version they started with.
//! Each says who asks ([`Authority`]): what only an admin may change is
//! refused to anyone else under the same lock ([`authority`]).
//! Triggers ask it to [`Dispatcher::invoke`]; it knows nothing of HTTP or
//! of wasm (that is the executor's).

mod authority;
pub mod events;
mod fleet;
mod routes;

pub use authority::Authority;
pub use fleet::{CLOCK_SKEW, FOLLOW_INTERVAL};
pub use routes::RouteTarget;

use authority::{TrustedChange, is_trusted, vet_trusted};
use routes::{build_routes, build_routes_with};

use crate::clock::now_ms;
use crate::exec::{
    Busy, Event, Execution, Executor, Invocation, LoadError, Outcome, Profile, Wait,
};
use crate::manifest::{Isolation, Manifest};
use crate::registry::{RegistryError, VersionRecord};
use crate::services::Services;
use crate::task::BoxFuture;
use crate::task::blocking;
pub use events::{Delivered, InvocationEvent, InvocationInfo, InvocationSubscriber, TriggerKind};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tracing::Instrument;

/// A deployed function version, ready to run.
pub struct Deployed {
    /// The version's registry record.
    pub record: VersionRecord,
    /// Its parsed manifest.
    pub manifest: Manifest,
    /// What the executor runs it with.
    pub profile: Arc<Profile>,
}

/// Why a deploy, rollback or removal was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The component is not an fnhost job.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A route is taken by another function.
    #[error("{0}")]
    Conflict(String),
    /// The change needs an admin (see [`Authority`]).
    #[error("{0}")]
    Forbidden(String),
    /// No such function or version.
    #[error("{0}")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The fleet's shared state refused or failed.
    #[error("the fleet's shared state: {0}")]
    Shared(#[from] crate::state::StateError),
    /// A watched S3 bucket's event notifications could not be set up.
    #[error("{0}")]
    Notifications(String),
}

/// Active functions, routes and the concurrency cap.
pub struct Dispatcher {
    executor: Arc<dyn Executor>,
    active: RwLock<HashMap<String, Arc<Deployed>>>,
    routes: RwLock<Arc<matchit::Router<RouteTarget>>>,
    /// Deploys, rollbacks and removals run one at a time.
    admin: Mutex<()>,
    /// The stores deploys reach: the fleet's state, blob feeds and
    /// notifications, the sensitive sets.
    services: Arc<Services>,
    /// Bumped whenever the active set changes, so triggers can follow.
    changes: watch::Sender<u64>,
    /// Every invocation's start and end, to its subscribers.
    events: events::Stream,
    /// The version of each fleet record this host last applied.
    seen: std::sync::Mutex<HashMap<String, String>>,
    /// When the last follow of the fleet's deployments that applied them
    /// all started, ms since the epoch.
    followed_ms: std::sync::atomic::AtomicU64,
}

/// Which attempt an invocation is, what it resumes from, and where its
/// progress and checkpoints go.
#[derive(Clone)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The async job it belongs to.
    pub job_id: Option<String>,
    /// The last checkpoint of an earlier attempt.
    pub checkpoint: Option<Vec<u8>>,
    /// Receives progress and checkpoints.
    pub reporter: Option<Arc<dyn crate::exec::Reporter>>,
    /// The message it came from, when a queue delivered it.
    pub delivered: Option<Delivered>,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            number: 1,
            job_id: None,
            checkpoint: None,
            reporter: None,
            delivered: None,
        }
    }
}

/// The seam between delivery and deployments: what the triggers need of
/// the active functions (which version of each is active, word when that
/// changes, and running an event on one), and nothing else. The
/// [`Dispatcher`] is the one implementation a host runs; delivery's unit
/// tests script their own.
pub trait Functions: Send + Sync + 'static {
    /// The active version of `function`.
    fn get(&self, function: &str) -> Option<Arc<Deployed>>;

    /// Every active function version.
    fn active(&self) -> Vec<Arc<Deployed>>;

    /// Changes whenever a function is deployed, rolled back or removed.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Run `event` on `deployed` as `attempt`, waiting for a free slot
    /// under the host-wide concurrency cap; the invocation's id and how it
    /// ended.
    fn invoke(
        &self,
        deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
    ) -> BoxFuture<'_, (String, Outcome)>;

    /// Wait until this host knows the deployments as of `at_ms` (on a
    /// fleet: it has followed the shared state past then).
    fn caught_up(&self, at_ms: u64) -> BoxFuture<'_, Result<(), DeployError>>;
}

impl Functions for Dispatcher {
    fn get(&self, function: &str) -> Option<Arc<Deployed>> {
        Dispatcher::get(self, function)
    }

    fn active(&self) -> Vec<Arc<Deployed>> {
        Dispatcher::active(self)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        Dispatcher::subscribe(self)
    }

    fn invoke(
        &self,
        deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
    ) -> BoxFuture<'_, (String, Outcome)> {
        Box::pin(Dispatcher::invoke(self, deployed, event, attempt))
    }

    fn caught_up(&self, at_ms: u64) -> BoxFuture<'_, Result<(), DeployError>> {
        Box::pin(self.know_deployments_as_of(at_ms))
    }
}

impl Dispatcher {
    /// Load every active version from the registry, with `executor` to
    /// run them, deploying through `services`.
    pub async fn start(
        executor: Arc<dyn Executor>,
        services: Arc<Services>,
    ) -> anyhow::Result<Arc<Dispatcher>> {
        let registry = services.registry().clone();
        let dispatcher = Arc::new(Dispatcher {
            executor,
            active: RwLock::default(),
            routes: RwLock::new(Arc::new(matchit::Router::new())),
            admin: Mutex::new(()),
            services,
            seen: Default::default(),
            followed_ms: Default::default(),
            changes: watch::Sender::new(0),
            events: events::Stream::new(),
        });
        let records = blocking(move || registry.active_versions()).await?;
        for record in records {
            let name = record.name.clone();
            let version = record.version;
            match dispatcher.load(record).await {
                Ok(deployed) => {
                    dispatcher
                        .active
                        .write()
                        .unwrap()
                        .insert(name, Arc::new(deployed));
                }
                Err(err) => {
                    tracing::error!(function = %name, version, error = %err, "cannot load a deployed function; it stays unavailable")
                }
            }
        }
        let routes = build_routes(&dispatcher.active.read().unwrap())
            .map_err(|e| anyhow::anyhow!("deployed routes conflict: {e}"))?;
        *dispatcher.routes.write().unwrap() = Arc::new(routes);
        Ok(dispatcher)
    }

    /// A stored version, its component prepared by the executor.
    async fn load(&self, record: VersionRecord) -> Result<Deployed, DeployError> {
        let file = format!("{} v{}", record.name, record.version);
        let manifest = Manifest::parse(&file, &record.manifest)?;
        manifest.check_isolation(&file, self.services.sensitive())?;
        let registry = self.services.registry().clone();
        let digest = record.digest.clone();
        let wasm = blocking(move || registry.component(&digest)).await?;
        self.executor.prepare(wasm).await?;
        Ok(Deployed {
            profile: Arc::new(manifest.profile(record.version, &record.digest)),
            manifest,
            record,
        })
    }

    /// Validate and activate a new version. Nothing is stored unless the
    /// manifest is valid, the component is an fnhost job, its routes are
    /// free and `authority` may make the change (see [`Authority`]).
    pub async fn deploy(
        &self,
        manifest_text: String,
        wasm: Vec<u8>,
        authority: Authority,
    ) -> Result<Arc<Deployed>, DeployError> {
        let manifest = Manifest::parse(crate::manifest::FILE_NAME, &manifest_text)?;
        manifest.check_isolation(crate::manifest::FILE_NAME, self.services.sensitive())?;
        let name = manifest.name.clone();
        let trusted = manifest.isolation == Isolation::Trusted;
        vet_trusted(authority, &name, TrustedChange::Deploy, trusted)?;
        self.executor.prepare(wasm.clone()).await?;
        let _admin = self.admin.lock().await;
        // On a fleet, what the other hosts deployed first.
        self.sync_fleet_locked().await?;
        let (active, versions) = self.stored(&name).await?;
        let replaced = versions
            .iter()
            .any(|v| Some(v.version) == active && is_trusted(v));
        vet_trusted(authority, &name, TrustedChange::Replace, replaced)?;
        // Check the routes against every other active function first.
        let probe = self.routes_with(authority, &name, &manifest.triggers.http)?;
        // Before anything is stored: no upload after the deploy answered
        // goes without its event.
        self.set_up_blob_events(&manifest).await?;
        let record = match self.services.fleet().cloned() {
            Some(fleet) => {
                self.deploy_shared(fleet.as_ref(), &name, manifest_text, wasm, authority)
                    .await?
            }
            None => {
                let registry = self.services.registry().clone();
                let size = wasm.len() as u64;
                let (n, text) = (name.clone(), manifest_text);
                blocking(move || -> Result<VersionRecord, RegistryError> {
                    let digest = registry.store_component(&wasm)?;
                    registry.add_version(&n, &digest, &text, size)
                })
                .await?
            }
        };
        let deployed = Arc::new(Deployed {
            profile: Arc::new(manifest.profile(record.version, &record.digest)),
            manifest,
            record,
        });
        self.swap(&name, Some(deployed.clone()), Some(probe));
        self.forget_timer_unless_scheduled(&deployed).await?;
        if deployed.manifest.triggers.timer.is_none() {
            self.forget_shared_timer(&name).await?;
        }
        Ok(deployed)
    }

    /// Activate an earlier version: `to`, or the one before the active
    /// one, if `authority` may make the change (see [`Authority`]).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
        authority: Authority,
    ) -> Result<Arc<Deployed>, DeployError> {
        let _admin = self.admin.lock().await;
        if let Some(fleet) = self.services.fleet().cloned() {
            self.sync_fleet_locked().await?;
            let record = self
                .rollback_shared(fleet.as_ref(), name, to, authority)
                .await?;
            let deployed = self.activate(record, authority).await?;
            if deployed.manifest.triggers.timer.is_none() {
                self.forget_shared_timer(name).await?;
            }
            return Ok(deployed);
        }
        let current = self.get(name).ok_or_else(|| {
            DeployError::NotFound(format!(
                "no function named {} is deployed",
                crate::text::quote(name)
            ))
        })?;
        let target = match to {
            Some(v) => v,
            None => {
                let registry = self.services.registry().clone();
                let n = name.to_string();
                let fns = blocking(move || registry.functions()).await?;
                let versions = fns
                    .into_iter()
                    .find(|f| f.name == n)
                    .map(|f| f.versions)
                    .unwrap_or_default();
                versions
                    .into_iter()
                    .filter(|v| *v < current.record.version)
                    .max()
                    .ok_or_else(|| {
                        DeployError::NotFound(format!(
                            "{name:?} has no version before v{}; nothing to roll back to",
                            current.record.version
                        ))
                    })?
            }
        };
        let registry = self.services.registry().clone();
        let n = name.to_string();
        let record = blocking(move || registry.version(&n, target))
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("{name:?} has no version {target}")))?;
        let trusted = current.manifest.isolation == Isolation::Trusted || is_trusted(&record);
        vet_trusted(authority, name, TrustedChange::Rollback, trusted)?;
        self.activate(record, authority).await
    }

    /// Load a stored version and make it the active one here, if its
    /// routes may be activated by `authority`.
    async fn activate(
        &self,
        record: VersionRecord,
        authority: Authority,
    ) -> Result<Arc<Deployed>, DeployError> {
        let name = record.name.clone();
        let target = record.version;
        let deployed = Arc::new(self.load(record).await?);
        let routes = self.routes_with(authority, &name, &deployed.manifest.triggers.http)?;
        let registry = self.services.registry().clone();
        let n = name.clone();
        blocking(move || registry.activate(&n, target)).await?;
        self.swap(&name, Some(deployed.clone()), Some(routes));
        self.forget_timer_unless_scheduled(&deployed).await?;
        Ok(deployed)
    }

    /// A version without a timer drops the function's timer state.
    async fn forget_timer_unless_scheduled(&self, deployed: &Deployed) -> Result<(), DeployError> {
        if deployed.manifest.triggers.timer.is_some() {
            return Ok(());
        }
        let registry = self.services.registry().clone();
        let name = deployed.record.name.clone();
        blocking(move || registry.forget_timer(&name)).await?;
        Ok(())
    }

    /// Remove a function and all its versions, if `authority` may (see
    /// [`Authority`]).
    pub async fn remove(&self, name: &str, authority: Authority) -> Result<(), DeployError> {
        let _admin = self.admin.lock().await;
        let (_, versions) = self.stored(name).await?;
        let trusted = versions.iter().any(is_trusted);
        vet_trusted(authority, name, TrustedChange::Remove, trusted)?;
        let shared = match self.services.fleet().cloned() {
            Some(fleet) => self.remove_shared(fleet.as_ref(), name, authority).await?,
            None => false,
        };
        if !self.remove_here(name).await? && !shared {
            return Err(DeployError::NotFound(format!(
                "no function named {} is deployed",
                crate::text::quote(name)
            )));
        }
        Ok(())
    }

    /// Remove a function and all its versions from this host; false when
    /// it has none.
    async fn remove_here(&self, name: &str) -> Result<bool, DeployError> {
        let registry = self.services.registry().clone();
        let n = name.to_string();
        if !blocking(move || registry.remove(&n)).await? {
            return Ok(false);
        }
        self.swap(name, None, None);
        // Its blob triggers' progress goes with it (the function is gone;
        // one deployed later under this name starts from the objects there).
        if let Some(feed) = self.services.blobs().feed()
            && let Err(e) = feed.forget_function(name).await
        {
            tracing::warn!(function = %name, error = %e, "removed, but cannot forget its blob trigger receipts");
        }
        Ok(true)
    }

    fn swap(
        &self,
        name: &str,
        deployed: Option<Arc<Deployed>>,
        routes: Option<matchit::Router<RouteTarget>>,
    ) {
        let mut active = self.active.write().unwrap();
        match deployed {
            Some(d) => active.insert(name.to_string(), d),
            None => active.remove(name),
        };
        let routes = match routes {
            Some(r) => r,
            // Removing a function cannot create a conflict.
            None => build_routes(&active).unwrap_or_default(),
        };
        *self.routes.write().unwrap() = Arc::new(routes);
        drop(active);
        self.changes.send_modify(|g| *g += 1);
    }

    /// Every active function version.
    pub fn active(&self) -> Vec<Arc<Deployed>> {
        self.active.read().unwrap().values().cloned().collect()
    }

    /// Changes whenever a function is deployed, rolled back or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The active version of a function.
    pub fn get(&self, name: &str) -> Option<Arc<Deployed>> {
        self.active.read().unwrap().get(name).cloned()
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<matchit::Router<RouteTarget>> {
        self.routes.read().unwrap().clone()
    }

    /// Add a subscriber to the invocation event stream: it sees every
    /// invocation's start and end from now on (see [`events`]).
    pub fn subscribe_invocations(&self, subscriber: Arc<dyn InvocationSubscriber>) {
        self.events.subscribe(subscriber);
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> usize {
        self.executor.in_flight()
    }

    /// Run one invocation of `deployed`, waiting for a free slot under the
    /// host-wide concurrency cap.
    pub async fn invoke(
        &self,
        deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
    ) -> (String, Outcome) {
        match self.run(deployed, event, attempt, Wait::Always).await {
            Ok(done) => done,
            Err(_) => unreachable!("an executor never answers busy to a caller that waits"),
        }
    }

    /// [`Dispatcher::invoke`] for a caller that would rather hear "busy"
    /// than wait in a long line: when no slot is free and `max_waiting`
    /// such callers already wait for one, or half of them for this
    /// function, answers [`Busy`] at once.
    pub async fn invoke_or_busy(
        &self,
        deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
        max_waiting: usize,
    ) -> Result<(String, Outcome), Busy> {
        self.run(deployed, event, attempt, Wait::AtMost(max_waiting))
            .await
    }

    async fn run(
        &self,
        deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
        wait: Wait,
    ) -> Result<(String, Outcome), Busy> {
        let id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "invocation",
            function = %deployed.record.name,
            version = deployed.record.version,
            invocation = %id,
            attempt = attempt.number,
        );
        let profile = deployed.profile.clone();
        let now = now_ms();
        let queued_since = match (&event, &attempt.delivered) {
            (Event::Timer(tick), _) => Some(tick.scheduled_at_ms),
            (_, Some(d)) => Some(d.enqueued_at_ms),
            (Event::Queue(m), None) => Some(m.enqueued_at_ms),
            _ => None,
        };
        let info = InvocationInfo {
            id: id.clone(),
            function: profile.function.clone(),
            version: profile.version,
            trigger: TriggerKind::of(&event, attempt.job_id.is_some()),
            attempt: attempt.number,
            job_id: attempt.job_id.clone(),
            delivered: attempt.delivered,
            queued: queued_since.map(|at| Duration::from_millis(now.saturating_sub(at))),
            trusted: profile.trusted,
        };
        let execution = Execution {
            invocation: Invocation {
                id: id.clone(),
                function: profile.function.clone(),
                version: profile.version,
                attempt: attempt.number,
                job_id: attempt.job_id,
                checkpoint: attempt.checkpoint,
                deadline_ms: now + profile.limits.timeout.as_millis() as u64,
            },
            profile,
            event,
        };
        let outcome = async {
            self.events.emit(InvocationEvent::Started(&info));
            let outcome = self
                .executor
                .execute(execution, attempt.reporter, wait)
                .await?;
            self.events.emit(InvocationEvent::Ended(&info, &outcome));
            Ok(outcome)
        }
        .instrument(span)
        .await?;
        Ok((id, outcome))
    }
}

pub use crate::exec::Failure;
