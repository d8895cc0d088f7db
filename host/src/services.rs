//! What delivery and the API work with, built once by the composition root
//! ([`crate::host`]) and handed to the triggers, the server and the
//! dispatcher: the queues, the job store and how jobs are kept, the
//! buckets and their change feeds, the registry (components, versions,
//! timer state), the fleet's shared state, the sensitive sets, and the live
//! figures of each queue binding.
//!
//! It holds stores, not deployments: which version of a function is
//! active, and running an event on it, are the dispatcher's
//! ([`crate::dispatcher::Functions`]).

use crate::backends::Backends;
use crate::backends::s3blobs::S3Events;
use crate::blobs::BlobBackend;
use crate::jobs::{JobSettings, JobStore};
use crate::manifest::Sensitive;
use crate::queue::{QueueBackend, QueueDelivery};
use crate::registry::Registry;
use crate::state::StateStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// The host's stores and settings, shared by every trigger and handler.
pub struct Services {
    queues: Arc<dyn QueueBackend>,
    delivery: Arc<dyn QueueDelivery>,
    jobs: Arc<dyn JobStore>,
    job_settings: JobSettings,
    blobs: Arc<dyn BlobBackend>,
    blob_events: Option<Arc<S3Events>>,
    fleet: Option<Arc<dyn StateStore>>,
    registry: Arc<Registry>,
    sensitive: Arc<Sensitive>,
    bindings: std::sync::Mutex<HashMap<(String, String), Arc<BindingStats>>>,
}

/// Live figures of one trigger binding (function × queue), for the API.
#[derive(Debug, Default)]
pub struct BindingStats {
    /// Instances taken now: invocations running, and messages leased
    /// waiting for the one before them in their group.
    pub running: AtomicUsize,
    /// Instances the scaler wants.
    pub desired: AtomicUsize,
}

impl Services {
    /// The services of a host on `backends`, its `registry`, keeping jobs
    /// by `job_settings`, with `sensitive` buckets and queues.
    pub fn new(
        backends: Backends,
        registry: Arc<Registry>,
        job_settings: JobSettings,
        sensitive: Arc<Sensitive>,
    ) -> Services {
        Services {
            delivery: backends.queues.clone(),
            queues: backends.queues,
            jobs: backends.jobs,
            job_settings,
            blobs: backends.blobs,
            blob_events: backends.blob_events,
            fleet: backends.fleet,
            registry,
            sensitive,
            bindings: Default::default(),
        }
    }

    /// The queues, both halves: delivery's and the admin API's.
    pub fn queues(&self) -> &Arc<dyn QueueBackend> {
        &self.queues
    }

    /// The queues as delivery uses them (send, receive, settle, renew,
    /// release, checkpoint): what the triggers are given.
    pub fn delivery(&self) -> &Arc<dyn QueueDelivery> {
        &self.delivery
    }

    /// The job store.
    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.jobs
    }

    /// How finished job records are kept and callbacks sent.
    pub fn job_settings(&self) -> &JobSettings {
        &self.job_settings
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobBackend> {
        &self.blobs
    }

    /// Where S3 buckets' event notifications arrive, if buckets are on S3.
    pub fn blob_events(&self) -> Option<&Arc<S3Events>> {
        self.blob_events.as_ref()
    }

    /// Where the fleet shares its state; `None` on a host alone.
    pub fn fleet(&self) -> Option<&Arc<dyn StateStore>> {
        self.fleet.as_ref()
    }

    /// The registry: components, versions and timer state.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The host's sensitive buckets and queues: only trusted functions
    /// reach them.
    pub fn sensitive(&self) -> &Sensitive {
        &self.sensitive
    }

    /// The live figures of `function`'s binding of `queue` (created on first use).
    pub fn binding_stats(&self, function: &str, queue: &str) -> Arc<BindingStats> {
        let mut map = self.bindings.lock().unwrap();
        map.entry((function.to_string(), queue.to_string()))
            .or_default()
            .clone()
    }
}
