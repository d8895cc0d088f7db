//! Where the host keeps things: implementations of the backend traits
//! ([`crate::queue::QueueBackend`], [`crate::jobs::JobStore`],
//! [`crate::blobs::BlobBackend`]) and the [`Backends`] value the host is
//! put together with. The embedded default ([`embedded`]) keeps everything
//! in the data dir: SQLite plus a folder of blob files. [`sqs`] puts the
//! users' queues on Amazon SQS, [`routed`] combines it with the embedded
//! store for the host's own queues; [`sealed`] encrypts the objects of
//! sensitive buckets on whichever blob store is below it.
//!
//! Backends know nothing of wasm, functions, triggers or HTTP.

pub mod aws;
pub mod embedded;
pub mod routed;
pub mod s3blobs;
pub mod s3state;
pub mod sealed;
pub mod sealed_queues;
pub mod sqs;

use crate::blobs::BlobBackend;
use crate::clock::Clock;
use crate::jobs::JobStore;
use crate::queue::QueueBackend;
use std::path::Path;
use std::sync::Arc;

/// The stores a host runs on.
#[derive(Clone)]
pub struct Backends {
    /// Queues: user queues and the host's own (jobs, blob changes, ticks).
    pub queues: Arc<dyn QueueBackend>,
    /// Async job records.
    pub jobs: Arc<dyn JobStore>,
    /// Buckets of objects and their change feed.
    pub blobs: Arc<dyn BlobBackend>,
    /// What a fleet shares (deployments, with their components): `None`
    /// for a host on its own.
    pub fleet: Option<Arc<dyn crate::state::StateStore>>,
    /// Where the buckets' event notifications arrive, for buckets on S3
    /// (which keep no change feed).
    pub blob_events: Option<Arc<s3blobs::S3Events>>,
}

impl Backends {
    /// The embedded stores in `data_dir`: `queues.db` (queues and job
    /// records, one store so a job and its message are one transaction),
    /// `blobs.db` and `blobs/`.
    pub fn embedded(data_dir: &Path, clock: Arc<dyn Clock>) -> anyhow::Result<Backends> {
        use anyhow::Context as _;
        let queues = embedded::EmbeddedQueues::open(data_dir, clock)
            .with_context(|| format!("failed to open the queue store in {data_dir:?}"))?;
        let blobs = embedded::EmbeddedBlobs::open(data_dir)
            .with_context(|| format!("failed to open the blob store in {data_dir:?}"))?;
        Ok(Backends {
            queues: Arc::new(queues.clone()),
            jobs: Arc::new(queues),
            blobs: Arc::new(blobs),
            fleet: None,
            blob_events: None,
        })
    }

    /// The embedded stores in `data_dir`, with the users' queues on SQS:
    /// the host's own queues (jobs, blob changes, timer ticks) and the job
    /// records stay embedded.
    pub fn embedded_with_sqs(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        sqs: Arc<sqs::SqsQueues>,
    ) -> anyhow::Result<Backends> {
        let embedded = Backends::embedded(data_dir, clock)?;
        let queues: Arc<dyn QueueBackend> = Arc::new(routed::RoutedQueues {
            host: embedded.queues,
            user: sqs,
            fleet: false,
            blob_queues: false,
        });
        Ok(Backends {
            jobs: Arc::new(routed::RoutedJobs {
                store: embedded.jobs,
                queues: queues.clone(),
            }),
            queues,
            blobs: embedded.blobs,
            fleet: None,
            blob_events: None,
        })
    }

    /// A fleet host: users' queues and the job and timer queues on SQS,
    /// job records, deployments and timer state in `state` (S3), so any
    /// host can take a job, any host answers for its record, a deploy to
    /// one host reaches all, and a timer tick is claimed by one host.
    /// Buckets are on S3 when `s3` is given (their blob triggers' queues on
    /// SQS too), else in this host's embedded store.
    pub fn fleet(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        sqs: Arc<sqs::SqsQueues>,
        state: Arc<dyn crate::state::StateStore>,
        s3: Option<Arc<s3blobs::S3Events>>,
    ) -> anyhow::Result<Backends> {
        let embedded = Backends::embedded(data_dir, clock.clone())?;
        let queues: Arc<dyn QueueBackend> = Arc::new(routed::RoutedQueues {
            host: embedded.queues,
            user: sqs,
            fleet: true,
            blob_queues: s3.is_some(),
        });
        let blobs: Arc<dyn BlobBackend> = match &s3 {
            Some(events) => events.blobs.clone(),
            None => embedded.blobs,
        };
        Ok(Backends {
            jobs: Arc::new(crate::jobs::shared::SharedJobs {
                state: state.clone(),
                queues: queues.clone(),
                clock,
            }),
            queues,
            blobs,
            fleet: Some(state),
            blob_events: s3,
        })
    }
}
