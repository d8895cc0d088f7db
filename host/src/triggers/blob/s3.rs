//! Blob triggers on S3: the buckets' event notifications arrive on an SQS
//! queue, which every host of the fleet reads as competing consumers. Each
//! object event becomes a blob change for every trigger that matches it,
//! on that trigger's queue (on SQS too), where the usual worker delivers it
//! with leases, retries and dead letters; the notification is deleted once
//! all of them are enqueued (a host dying before that lets it come back:
//! at least once).
//!
//! - **Stale events** are dropped by asking S3 now: a created event whose
//!   object is gone or has another ETag (a newer version, whose own event
//!   follows), and a removed event whose key exists again.
//! - **Receipts** in the fleet's state store (`blob-receipts/<fn>/<bucket>/
//!   <sha256 of the key>` holding the ETag delivered) keep a notification
//!   that SQS delivers twice from running a trigger twice for one version.
//! - **Not like the embedded feed**: S3 cannot tell created from updated
//!   (every write is `created`), events carry no content type (read from S3
//!   with the ETag check), order per object is not kept (a standard SQS
//!   queue has no groups), and objects already in a bucket when a trigger
//!   is deployed are not handed over (S3 has no history to scan).
//! - A message that is not an S3 notification goes to the queue's dead
//!   letters with the reason; a failure to reach S3 or the state store
//!   retries it.

use super::{Consumer, FeedError, consumers, deliver};
use crate::backends::s3blobs::{S3Event, S3Events, parse_notification};
use crate::blobs::{Change, ChangeKind};
use crate::dispatcher::Dispatcher;
use crate::queue::{Message, Settlement};
use crate::state::{StateError, Write};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a notification stays hidden while it is handled.
const VISIBILITY: Duration = Duration::from_secs(60);
/// How long a notification that could not be handled waits to come back.
const RETRY_AFTER: Duration = Duration::from_secs(5);

enum Failure {
    /// S3, SQS or the state store failed: try again later.
    Retry(String),
    /// Not something this feed can read: dead-letter it.
    Unreadable(String),
}

impl From<FeedError> for Failure {
    fn from(e: FeedError) -> Self {
        Failure::Retry(e.to_string())
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::Retry(e.to_string())
    }
}

/// Read the notification queue until `shutdown`.
pub async fn run(dispatcher: Arc<Dispatcher>, events: Arc<S3Events>, shutdown: CancellationToken) {
    let queues = dispatcher.queues().clone();
    let features = queues.features(&events.queue);
    let mut set_up: HashSet<String> = HashSet::new();
    tracing::info!(queue = %events.queue, "following S3 event notifications");
    loop {
        if events.create {
            for c in consumers(&dispatcher) {
                let bucket = c.trigger.bucket.clone();
                if set_up.contains(&bucket) {
                    continue;
                }
                match events.set_up(&bucket).await {
                    Ok(()) => {
                        tracing::info!(bucket = %bucket, "bucket notifications set up");
                        set_up.insert(bucket);
                    }
                    Err(e) => {
                        tracing::error!(bucket = %bucket, error = %e, "cannot set up the bucket's notifications; trying again")
                    }
                }
            }
        }
        let receive = queues.receive_waiting(
            &events.queue,
            features.max_receive.min(10),
            VISIBILITY,
            features.long_poll,
        );
        tokio::pin!(receive);
        let received = tokio::select! {
            r = &mut receive => r,
            () = shutdown.cancelled() => {
                // Let a long poll answer, and give back what it brought.
                if let Ok(Ok(got)) = tokio::time::timeout(features.long_poll, receive).await
                    && !got.is_empty()
                {
                    let _ = queues.release(got.into_iter().map(|d| d.receipt).collect()).await;
                }
                break;
            }
        };
        let deliveries = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue = %events.queue, error = %e, "cannot receive S3 event notifications; retrying in 1s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        for d in deliveries {
            let settled = match handle(&dispatcher, &events, &d.message).await {
                Ok(()) => queues.ack(d.receipt).await.map(drop),
                Err(Failure::Retry(e)) => {
                    tracing::warn!(queue = %events.queue, error = %e, "cannot hand an S3 event to its triggers; it comes back");
                    queues.retry(d.receipt, RETRY_AFTER, e).await.map(drop)
                }
                Err(Failure::Unreadable(e)) => {
                    tracing::warn!(queue = %events.queue, error = %e, "an unreadable message on the S3 event queue goes to its dead letters");
                    let how = Settlement::DeadLetter {
                        error: e,
                        function: None,
                    };
                    queues.settle(d.receipt, how, Vec::new()).await.map(drop)
                }
            };
            if let Err(e) = settled {
                tracing::error!(queue = %events.queue, error = %e, "cannot settle an S3 event notification; it comes back");
            }
        }
    }
    tracing::info!(queue = %events.queue, "stopped following S3 event notifications");
}

/// Hand every object event of one notification to the triggers it matches.
async fn handle(dispatcher: &Dispatcher, events: &S3Events, m: &Message) -> Result<(), Failure> {
    let records = parse_notification(&m.body).map_err(Failure::Unreadable)?;
    let consumers = consumers(dispatcher);
    for event in records {
        let Some(change) = current(dispatcher, events, &event).await? else {
            continue;
        };
        for c in consumers.iter().filter(|c| c.trigger.matches(&change)) {
            hand_over(dispatcher, c, &change).await?;
        }
    }
    Ok(())
}

/// The change an event stands for, if it is one of this host's buckets and
/// still what S3 holds.
async fn current(
    dispatcher: &Dispatcher,
    events: &S3Events,
    event: &S3Event,
) -> Result<Option<Change>, Failure> {
    let (Some(bucket), Some(kind)) = (events.blobs.bucket_of(&event.s3_bucket), event.kind) else {
        return Ok(None);
    };
    if let Err(e) = crate::blobs::validate(&bucket, &event.key) {
        tracing::warn!(bucket = %bucket, error = %e, "an S3 object whose key fnhost does not take is skipped");
        return Ok(None);
    }
    let now = dispatcher
        .blobs()
        .head(&bucket, &event.key)
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let at_ms = event.at_ms.unwrap_or_else(crate::clock::now_ms);
    let change = match (kind, now) {
        (ChangeKind::Deleted, None) => Change {
            seq: 0,
            bucket,
            key: event.key.clone(),
            kind,
            etag: None,
            size: None,
            content_type: None,
            at_ms,
            as_of: None,
        },
        (ChangeKind::Deleted, Some(_)) => return Ok(None), // written again since
        (_, Some(meta)) if event.etag.as_ref().is_none_or(|e| *e == meta.etag) => Change {
            at_ms,
            ..Change::written(&bucket, meta, ChangeKind::Created)
        },
        _ => return Ok(None), // deleted or replaced since: its own event follows
    };
    Ok(Some(change))
}

/// Enqueue `change` for `c` unless its receipt says it was, then record it.
async fn hand_over(dispatcher: &Dispatcher, c: &Consumer, change: &Change) -> Result<(), Failure> {
    let receipt = dispatcher.fleet().map(|f| {
        let key = crate::files::sha256_hex(change.key.as_bytes());
        (
            f.clone(),
            format!("blob-receipts/{}/{}/{key}", c.function, change.bucket),
        )
    });
    if let (Some((fleet, key)), Some(etag)) = (&receipt, &change.etag)
        && fleet
            .get(key)
            .await?
            .is_some_and(|r| r.bytes == etag.as_bytes())
    {
        tracing::debug!(function = %c.function, key = %crate::text::LogSafe(&change.key), "this version was handed over already");
        return Ok(());
    }
    deliver(dispatcher, c, std::slice::from_ref(change)).await?;
    if let Some((fleet, key)) = receipt {
        match &change.etag {
            Some(etag) => {
                fleet
                    .put(&key, etag.as_bytes().to_vec(), Write::Overwrite)
                    .await?;
            }
            None => {
                fleet.delete(&key).await?;
            }
        }
    }
    Ok(())
}
