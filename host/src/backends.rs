//! Where the host keeps things: implementations of the backend traits
//! ([`crate::queue::QueueBackend`], [`crate::jobs::JobStore`],
//! [`crate::blobs::BlobBackend`]) and the [`Backends`] value the host is
//! put together with. The embedded default ([`embedded`]) keeps everything
//! in the data dir: SQLite plus a folder of blob files.
//!
//! Backends know nothing of wasm, functions, triggers or HTTP.

pub mod embedded;

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
        })
    }
}
