//! Blob triggers on S3: the buckets' event notifications arrive on an SQS
//! queue, which every host of the fleet reads as competing consumers. Each
//! object event becomes a blob change for every trigger that matches it,
//! on that trigger's queue (on SQS too), where the usual worker delivers it
//! with leases, retries and dead letters; the notification is deleted once
//! all of them are enqueued (a host dying before that lets it come back:
//! at least once).
//!
//! - **Never ahead of the deployments.** Before a batch of notifications
//!   is handed to the triggers, the host makes sure it knows the fleet's
//!   deployments as of the newest event in it
//!   ([`Functions::caught_up`]); when it cannot, the batch
//!   comes back later, so an event that arrives before its trigger is
//!   known here waits instead of being dropped.
//! - **Stale events** are dropped by asking S3 now: a created event whose
//!   object is gone or has another ETag (a newer version, whose own event
//!   follows), and a removed event whose key exists again.
//! - **Receipts** in the fleet's state store ([`receipt`]) are kept for
//!   every trigger whose bucket, prefix and suffix an object is in,
//!   whatever kinds it takes: a created event runs a trigger once per
//!   version, and a removed event runs it only for an object its receipt
//!   shows existed, once (the receipt goes with it), whichever host and
//!   however many notifications carry it. A removed event for a key no
//!   receipt names (it never existed, or its delete was handed over
//!   already) runs nothing: anyone who can send to the queue cannot forge
//!   deletes beyond the objects there were. Buckets on S3 need `[state]`
//!   on S3 (the host config refuses them otherwise), so the receipts are
//!   always there.
//! - **Not like the embedded feed**: S3 cannot tell created from updated
//!   (every write is `created`), events carry no content type (read from S3
//!   with the ETag check), order per object is not kept (a standard SQS
//!   queue has no groups), and objects already in a bucket when a trigger
//!   is deployed are not handed over (S3 has no history to scan), nor
//!   are their deletes.
//! - A message that is not an S3 notification, or carries more than
//!   [`MAX_RECORDS`] object records, goes to the queue's dead letters with
//!   the reason; a failure to reach S3 or the state store retries it.

mod receipt;

use super::{Consumer, FeedError, consumers, deliver};
use crate::backends::s3blobs::{S3Event, S3Events, parse_notification};
use crate::blobs::{Change, ChangeKind};
use crate::dispatcher::Functions;
use crate::queue::QueueDelivery;
use crate::queue::{Delivery, Settlement};
use crate::services::Services;
use crate::state::{StateError, StateStore};
use receipt::Turn;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a notification stays hidden while it is handled.
const VISIBILITY: Duration = Duration::from_secs(60);
/// How long a notification that could not be handled waits to come back.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The most object records one notification may carry. S3 sends one
/// record a message; a message with more was not sent by S3, and each
/// record costs a request to S3 and to the state store.
pub const MAX_RECORDS: usize = 100;

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
pub async fn run(
    functions: Arc<dyn Functions>,
    services: Arc<Services>,
    events: Arc<S3Events>,
    shutdown: CancellationToken,
) {
    let Some(receipts) = services.fleet().cloned() else {
        // The host config refuses [blobs] on S3 without [state] on S3.
        tracing::error!(queue = %events.queue, "buckets on S3 keep their receipts in the fleet's state, and this host has none; not following their event notifications");
        return;
    };
    let queues = services.delivery().clone();
    let features = queues.features(&events.queue);
    let mut set_up: HashSet<String> = HashSet::new();
    tracing::info!(queue = %events.queue, "following S3 event notifications");
    loop {
        if events.create {
            for c in consumers(functions.as_ref()) {
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
                    && let Err(e) = queues.release(got.into_iter().map(|d| d.receipt).collect()).await
                {
                    tracing::warn!(queue = %events.queue, error = %e, "cannot give back notifications received while stopping; they come back after their visibility timeout");
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
        handle_batch(
            functions.as_ref(),
            &services,
            &events,
            receipts.as_ref(),
            deliveries,
        )
        .await;
    }
    tracing::info!(queue = %events.queue, "stopped following S3 event notifications");
}

/// Hand a batch of notifications to the triggers, once this host knows
/// the fleet's deployments as of the newest event in it, and settle each.
async fn handle_batch(
    functions: &dyn Functions,
    services: &Services,
    events: &S3Events,
    receipts: &dyn StateStore,
    deliveries: Vec<Delivery>,
) {
    let read: Vec<(Delivery, Result<Vec<S3Event>, String>)> = deliveries
        .into_iter()
        .map(|d| {
            let records = read(&d.message.body);
            (d, records)
        })
        .collect();
    let newest = read
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flatten()
        .map(|e| e.at_ms.unwrap_or_else(crate::clock::now_ms))
        .max();
    let known = match newest {
        Some(at_ms) => functions.caught_up(at_ms).await,
        None => Ok(()),
    };
    let queues = services.delivery();
    for (d, records) in read {
        let handled = match (records, &known) {
            (Err(e), _) => Err(Failure::Unreadable(e)),
            (Ok(records), Err(e)) if !records.is_empty() => Err(Failure::Retry(format!(
                "this host may not know the triggers of the event yet: {e}"
            ))),
            (Ok(records), _) => {
                handle(
                    functions,
                    services,
                    events,
                    receipts,
                    &d.message.id,
                    &records,
                )
                .await
            }
        };
        let settled = match handled {
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

/// The object events of one notification, at most [`MAX_RECORDS`].
fn read(body: &[u8]) -> Result<Vec<S3Event>, String> {
    let records = parse_notification(body).map_err(|e| e.to_string())?;
    if records.len() > MAX_RECORDS {
        return Err(format!(
            "the notification carries {} object records, over the cap of {MAX_RECORDS} a message (S3 sends one a message): none of them was handed to a trigger",
            records.len()
        ));
    }
    Ok(records)
}

/// Hand every object event of notification `message` to the triggers it
/// concerns.
async fn handle(
    functions: &dyn Functions,
    services: &Services,
    events: &S3Events,
    receipts: &dyn StateStore,
    message: &str,
    records: &[S3Event],
) -> Result<(), Failure> {
    let consumers = consumers(functions);
    for event in records {
        let Some(change) = current(services, events, event).await? else {
            continue;
        };
        for c in consumers.iter().filter(|c| c.trigger.in_scope(&change)) {
            hand_over(services.delivery().as_ref(), receipts, message, c, &change).await?;
        }
    }
    Ok(())
}

/// The change an event stands for, if it is one of this host's buckets and
/// still what S3 holds.
async fn current(
    services: &Services,
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
    let now = services
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

/// Hand `change`, carried by notification `message`, to `c` as its
/// receipt allows ([`receipt`]), and keep the receipt right: a version is
/// recorded (and delivered if `c` takes creations) once; a delete is
/// delivered (if `c` takes deletes) only when the receipt shows the object
/// existed, once, and the receipt goes with it.
async fn hand_over(
    queues: &dyn QueueDelivery,
    receipts: &dyn StateStore,
    message: &str,
    c: &Consumer,
    change: &Change,
) -> Result<(), Failure> {
    let key = format!(
        "blob-receipts/{}/{}/{}",
        c.function,
        change.bucket,
        crate::files::sha256_hex(change.key.as_bytes())
    );
    let etag = change.etag.as_deref();
    let version = match receipt::claim(receipts, &key, message, etag).await? {
        Turn::Mine(version) => version,
        Turn::Skip(why) => {
            tracing::debug!(function = %c.function, key = %crate::text::LogSafe(&change.key), kind = change.kind.as_str(), "{why}; skipped");
            return Ok(());
        }
        Turn::Later(why) => return Err(Failure::Retry(why)),
    };
    if c.trigger.matches(change) {
        deliver(queues, c, std::slice::from_ref(change)).await?;
    }
    receipt::settle(receipts, &key, version, etag).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(records: usize) -> Vec<u8> {
        let record = serde_json::json!({
            "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}
        });
        serde_json::to_vec(&serde_json::json!({ "Records": vec![record; records] })).unwrap()
    }

    #[test]
    fn a_notification_carries_at_most_the_cap_of_records() {
        assert_eq!(read(&notification(MAX_RECORDS)).unwrap().len(), MAX_RECORDS);
        let e = read(&notification(MAX_RECORDS + 1)).unwrap_err();
        assert!(
            e.starts_with("the notification carries 101 object records, over the cap of 100"),
            "{e}"
        );
    }
}
