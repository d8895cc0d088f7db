//! Deployments shared by a fleet. Each function's history is one document
//! in the fleet's [`StateStore`], `deployments/<name>.json` (its versions,
//! numbered there, and the active one), each component an object
//! `components/<sha256>.wasm`. A deploy, rollback or removal on any host
//! changes the document with a conditional write (read, change, write at
//! the version read; again on a conflict), so two hosts deploying at once
//! get versions N and N+1, never two N's.
//!
//! Every host follows the documents: every [`FOLLOW_INTERVAL`] it lists
//! them (one request, which carries each document's version), reads only
//! those that changed, fetches a missing component (checking its SHA-256),
//! mirrors the history into its own registry and swaps the active version
//! in, as a local deploy does, so in-flight work finishes on the old one.
//! A function whose document is gone is removed here. The local registry
//! is then a cache of the fleet's: a host that starts (or comes back)
//! takes the fleet's state at its first look.
//!
//! An event from outside (an S3 notification) may reach a host before its
//! next look shows the deploy that made the event's trigger:
//! [`Dispatcher::know_deployments_as_of`] looks again first, so no event
//! is handed to an older view of the fleet than the event itself. A deploy
//! with blob triggers on S3 sets up the buckets' notifications before it
//! answers ([`Dispatcher::set_up_blob_events`]).

use super::authority::{Authority, TrustedChange, is_trusted, vet_trusted};
use super::{DeployError, Dispatcher, build_routes_with};
use crate::manifest::Manifest;
use crate::registry::VersionRecord;
use crate::state::{StateError, StateStore, Write};
use crate::task::blocking;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a fleet host looks for deployments made on other hosts.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// How far the clocks of the fleet's hosts and of AWS may disagree: an
/// event stamped less than this before a look at the deployments started
/// may still be newer than that look.
pub const CLOCK_SKEW: Duration = Duration::from_secs(2);

const DEPLOYMENTS: &str = "deployments/";

/// A function's history as the fleet shares it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedFunction {
    /// The version that serves invocations.
    active: u32,
    /// Every version kept, oldest first.
    versions: Vec<VersionRecord>,
}

impl SharedFunction {
    fn version(&self, v: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }
}

fn function_key(name: &str) -> String {
    format!("{DEPLOYMENTS}{name}.json")
}

fn component_key(digest: &str) -> String {
    format!("components/{digest}.wasm")
}

impl Dispatcher {
    /// Where the fleet shares its state; `None` on a host alone.
    fn fleet(&self) -> Option<&Arc<dyn StateStore>> {
        self.services.fleet()
    }

    /// Forget the fleet's state of `name`'s timer (its version has no
    /// timer, or it is removed), so a timer added back starts afresh.
    pub(super) async fn forget_shared_timer(&self, name: &str) -> Result<(), DeployError> {
        if let Some(fleet) = self.fleet() {
            fleet.delete(&crate::names::timer_state_key(name)).await?;
        }
        Ok(())
    }

    async fn read_shared(
        fleet: &dyn StateStore,
        name: &str,
    ) -> Result<Option<(SharedFunction, String)>, DeployError> {
        let Some(doc) = fleet.get(&function_key(name)).await? else {
            return Ok(None);
        };
        let shared = serde_json::from_slice(&doc.bytes).map_err(|e| {
            DeployError::Shared(StateError::Invalid(format!(
                "the fleet's record of {name:?} is unreadable: {e}"
            )))
        })?;
        Ok(Some((shared, doc.version)))
    }

    /// Read the fleet's record of `name`, change it with `change`, and
    /// write it back at the version read; again when another host wrote
    /// meanwhile.
    async fn change_shared(
        fleet: &dyn StateStore,
        name: &str,
        change: impl Fn(Option<SharedFunction>) -> Result<SharedFunction, DeployError>,
    ) -> Result<SharedFunction, DeployError> {
        for _ in 0..16 {
            let (current, condition) = match Self::read_shared(fleet, name).await? {
                Some((shared, version)) => (Some(shared), Write::Replace(version)),
                None => (None, Write::Create),
            };
            let next = change(current)?;
            let bytes = serde_json::to_vec(&next).map_err(|e| {
                DeployError::Shared(StateError::Invalid(format!("cannot encode a record: {e}")))
            })?;
            match fleet.put(&function_key(name), bytes, condition).await {
                Ok(_) => return Ok(next),
                Err(StateError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DeployError::Shared(StateError::Conflict(format!(
            "the fleet's record of {name:?} kept changing under 16 tries; try again"
        ))))
    }

    /// The component `digest` in this host's registry, fetched from the
    /// fleet if it is not there yet.
    async fn fetch_component(
        &self,
        fleet: &dyn StateStore,
        digest: &str,
    ) -> Result<(), DeployError> {
        if self.services.registry().has_component(digest) {
            return Ok(());
        }
        let Some(doc) = fleet.get(&component_key(digest)).await? else {
            return Err(DeployError::NotFound(format!(
                "the component {digest} is missing from the fleet's state"
            )));
        };
        let got = crate::files::sha256_hex(&doc.bytes);
        if got != digest {
            return Err(DeployError::Shared(StateError::Invalid(format!(
                "the fleet's component {digest} has the SHA-256 {got}; redeploy the function"
            ))));
        }
        let registry = self.services.registry().clone();
        blocking(move || registry.store_component(&doc.bytes)).await?;
        Ok(())
    }

    /// Deploy `wasm` as the fleet's next version of `name`: the component
    /// first (by digest, so a second upload of it is a no-op), then the
    /// record, unless the version it replaces is trusted and `authority`
    /// no admin; this host's registry mirrors the record.
    pub(super) async fn deploy_shared(
        &self,
        fleet: &dyn StateStore,
        name: &str,
        manifest: String,
        wasm: Vec<u8>,
        authority: Authority,
    ) -> Result<VersionRecord, DeployError> {
        if wasm.len() > crate::state::MAX_DOCUMENT_BYTES {
            return Err(DeployError::Shared(StateError::Invalid(format!(
                "the component is {} bytes; a fleet shares components of at most {} bytes",
                wasm.len(),
                crate::state::MAX_DOCUMENT_BYTES
            ))));
        }
        let registry = self.services.registry().clone();
        let size = wasm.len() as u64;
        let (digest, wasm) =
            blocking(move || registry.store_component(&wasm).map(|d| (d, wasm))).await?;
        match fleet
            .put(&component_key(&digest), wasm, Write::Create)
            .await
        {
            Ok(_) | Err(StateError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let created_at_ms = crate::clock::now_ms();
        let shared = Self::change_shared(fleet, name, |current| {
            let mut shared = current.unwrap_or(SharedFunction {
                active: 0,
                versions: Vec::new(),
            });
            let replaced = shared.version(shared.active).is_some_and(is_trusted);
            vet_trusted(authority, name, TrustedChange::Replace, replaced)?;
            let version = shared.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            shared.versions.push(VersionRecord {
                name: name.to_string(),
                version,
                digest: digest.clone(),
                manifest: manifest.clone(),
                size,
                created_at_ms,
            });
            shared.active = version;
            Ok(shared)
        })
        .await?;
        self.mirror(name, &shared).await?;
        Ok(shared
            .version(shared.active)
            .cloned()
            .expect("the version just added"))
    }

    /// Make `to` (or the version before the active one) the fleet's
    /// active version of `name`, if `authority` may (judged on the fleet's
    /// record, in its conditional write); the record of the version to
    /// activate.
    pub(super) async fn rollback_shared(
        &self,
        fleet: &dyn StateStore,
        name: &str,
        to: Option<u32>,
        authority: Authority,
    ) -> Result<VersionRecord, DeployError> {
        let shared = Self::change_shared(fleet, name, |current| {
            let mut shared = current.ok_or_else(|| {
                DeployError::NotFound(format!(
                    "no function named {} is deployed",
                    crate::text::quote(name)
                ))
            })?;
            let target = match to {
                Some(v) => {
                    shared
                        .version(v)
                        .ok_or_else(|| {
                            DeployError::NotFound(format!("{name:?} has no version {v}"))
                        })?
                        .version
                }
                None => shared
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .filter(|v| *v < shared.active)
                    .max()
                    .ok_or_else(|| {
                        DeployError::NotFound(format!(
                            "{name:?} has no version before v{}; nothing to roll back to",
                            shared.active
                        ))
                    })?,
            };
            let (from, to) = (shared.version(shared.active), shared.version(target));
            let trusted = from.is_some_and(is_trusted) || to.is_some_and(is_trusted);
            vet_trusted(authority, name, TrustedChange::Rollback, trusted)?;
            if let Some(to) = to {
                let file = format!("{name} v{}", to.version);
                let manifest = crate::manifest::Manifest::parse(&file, &to.manifest)?;
                self.routes_with(authority, name, &manifest.triggers.http)?;
            }
            shared.active = target;
            Ok(shared)
        })
        .await?;
        let record = shared
            .version(shared.active)
            .cloned()
            .expect("checked above");
        self.fetch_component(fleet, &record.digest).await?;
        self.mirror(name, &shared).await?;
        Ok(record)
    }

    /// Remove `name` from the fleet, if `authority` may (none of the
    /// record's versions is trusted, or it is an admin); false when the
    /// fleet has no record of it.
    pub(super) async fn remove_shared(
        &self,
        fleet: &dyn StateStore,
        name: &str,
        authority: Authority,
    ) -> Result<bool, DeployError> {
        if let Some((shared, _)) = Self::read_shared(fleet, name).await? {
            let trusted = shared.versions.iter().any(is_trusted);
            vet_trusted(authority, name, TrustedChange::Remove, trusted)?;
        }
        self.forget_shared_timer(name).await?;
        Ok(fleet.delete(&function_key(name)).await?)
    }

    async fn mirror(&self, name: &str, shared: &SharedFunction) -> Result<(), DeployError> {
        let registry = self.services.registry().clone();
        let (name, shared) = (name.to_string(), shared.clone());
        blocking(move || registry.mirror(&name, &shared.versions, shared.active)).await?;
        Ok(())
    }

    /// Follow the fleet's deployments until `shutdown`: look every
    /// [`FOLLOW_INTERVAL`], log what cannot be applied and look again.
    pub async fn follow_fleet(self: Arc<Self>, shutdown: CancellationToken) {
        if self.fleet().is_none() {
            return;
        }
        loop {
            if let Err(e) = self.sync_fleet().await {
                tracing::warn!(error = %e, "cannot read the fleet's deployments; trying again");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }

    /// Make sure this host knows every deployment the fleet had at
    /// `at_ms` (ms since the epoch, on the clock of whoever stamped it):
    /// unless a look that applied everything started more than
    /// [`CLOCK_SKEW`] after it, look now. `Err` (say why) when this host
    /// may still not know them: the fleet's state cannot be read, or a
    /// deployment cannot be applied here.
    pub async fn know_deployments_as_of(&self, at_ms: u64) -> Result<(), DeployError> {
        if self.fleet().is_none() {
            return Ok(());
        }
        let fresh = |followed: u64| followed > at_ms.saturating_add(CLOCK_SKEW.as_millis() as u64);
        if fresh(self.followed_ms.load(Ordering::SeqCst)) {
            return Ok(());
        }
        // A look that starts now sees whatever was deployed before the
        // event was even received, whatever the clocks say.
        let asked = crate::clock::now_ms();
        self.sync_fleet().await?;
        if self.followed_ms.load(Ordering::SeqCst) < asked {
            return Err(DeployError::Shared(StateError::Invalid("a deployment of the fleet cannot be applied on this host (see the error logged for it)".into())));
        }
        Ok(())
    }

    /// With `[blobs] create = true`, point each bucket `manifest`'s blob
    /// triggers watch at the event notification queue (idempotent).
    pub(super) async fn set_up_blob_events(&self, manifest: &Manifest) -> Result<(), DeployError> {
        let Some(events) = self.services.blob_events().filter(|e| e.create) else {
            return Ok(());
        };
        for (i, t) in manifest.triggers.blob.iter().enumerate() {
            events.set_up(&t.bucket).await.map_err(|e| {
                DeployError::Notifications(format!(
                    "triggers.blob[{i}]: cannot set up the S3 event notifications of bucket {} ({e}); nothing was deployed. Check that the host's AWS credentials allow s3:CreateBucket, s3:PutBucketNotification, sqs:GetQueueAttributes and sqs:SetQueueAttributes, or set [blobs] create = false in the host config and set them up yourself (README, \"Setting up the notifications\"); then deploy again",
                    crate::text::quote(&t.bucket)
                ))
            })?;
            tracing::info!(bucket = %t.bucket, "bucket notifications set up");
        }
        Ok(())
    }

    /// Bring this host's deployments in line with the fleet's, once.
    /// A function that cannot be applied (its routes conflict, its
    /// component is unreadable) is logged and tried again next time.
    pub async fn sync_fleet(&self) -> Result<(), DeployError> {
        // Listed under the lock: a listing taken before a deploy here
        // finished would read as the function's removal.
        let _admin = self.admin.lock().await;
        self.sync_fleet_locked().await
    }

    /// [`Dispatcher::sync_fleet`] for a caller that holds the deploy lock:
    /// a deploy or rollback, which judges its routes against the fleet's
    /// latest deployments. Nothing on a host alone.
    pub(super) async fn sync_fleet_locked(&self) -> Result<(), DeployError> {
        let Some(fleet) = self.fleet().cloned() else {
            return Ok(());
        };
        let started = crate::clock::now_ms();
        let mut applied_all = true;
        let mut listed = Vec::new();
        loop {
            let after = listed.last().map(|l: &crate::state::Listed| l.key.clone());
            let page = fleet.list(DEPLOYMENTS, after, 1000).await?;
            let full = page.len() == 1000;
            listed.extend(page);
            if !full {
                break;
            }
        }
        let shared: Vec<(String, String)> = listed
            .into_iter()
            .filter_map(|l| {
                let name = l.key.strip_prefix(DEPLOYMENTS)?.strip_suffix(".json")?;
                Some((name.to_string(), l.version))
            })
            .collect();
        let registry = self.services.registry().clone();
        let here = blocking(move || registry.functions()).await?;
        for gone in here
            .iter()
            .filter(|f| !shared.iter().any(|(n, _)| *n == f.name))
        {
            tracing::info!(function = %gone.name, "removed on another host of the fleet");
            self.remove_here(&gone.name).await?;
            self.seen.lock().unwrap().remove(&gone.name);
        }
        for (name, version) in shared {
            if self.seen.lock().unwrap().get(&name) == Some(&version) {
                continue;
            }
            match self.apply_shared(fleet.as_ref(), &name).await {
                Ok(()) => {
                    self.seen.lock().unwrap().insert(name, version);
                }
                Err(e) => {
                    applied_all = false;
                    tracing::error!(function = %name, error = %e, "cannot apply the fleet's deployment here; trying again")
                }
            }
        }
        if applied_all {
            self.followed_ms.fetch_max(started, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Make this host's `name` what the fleet's record says.
    async fn apply_shared(&self, fleet: &dyn StateStore, name: &str) -> Result<(), DeployError> {
        let Some((shared, _)) = Self::read_shared(fleet, name).await? else {
            return Ok(()); // removed meanwhile: the next look removes it here
        };
        let record = shared.version(shared.active).cloned().ok_or_else(|| {
            DeployError::NotFound(format!(
                "the fleet's record of {name:?} names v{} active, which it does not have",
                shared.active
            ))
        })?;
        if self.get(name).is_some_and(|d| d.record == record) {
            return self.mirror(name, &shared).await;
        }
        tracing::info!(function = %name, version = record.version, "deployed on another host of the fleet");
        self.fetch_component(fleet, &record.digest).await?;
        let deployed = Arc::new(self.load(record).await?);
        let mut candidate = self.active.read().unwrap().clone();
        candidate.remove(name);
        let routes = build_routes_with(&candidate, Some((name, &deployed.manifest.triggers.http)))
            .map_err(DeployError::Conflict)?;
        self.mirror(name, &shared).await?;
        self.swap(name, Some(deployed.clone()), Some(routes));
        self.forget_timer_unless_scheduled(&deployed).await
    }
}
