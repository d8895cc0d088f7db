//! The blob trigger's feed: reads the blob store's change feed and hands
//! every change a blob trigger matches to that trigger's host-owned queue
//! (`fnhost-blob-<function>.<bucket>`), where its queue binding loop delivers it
//! with the usual leases, retries and dead letters. Changes to one object
//! share a queue group, so they run one at a time, in the order they
//! happened (a delete never overtakes the upload before it).
//!
//! Each (function, bucket) trigger is a consumer with a cursor in the feed.
//! A consumer without a cursor (a newly deployed trigger, one whose filter
//! changed, or one that was away) is first reconciled with what is stored:
//! every matching object without a receipt for its etag is delivered as
//! `created`. Receipts make each version of an object go to a consumer once
//! per change, not once per restart; they also hold the feed position of the
//! version they are for, so the changes a scan already reflects are not
//! replayed from the feed after it. Enqueue and then advance: a crash in
//! between enqueues the same changes again, under the same dedup ids, so
//! the queue's dedup window absorbs the repeat (at least once, never lost).

pub mod s3;

use crate::blobs::{BlobError, Change, ChangeFeed, ChangeKind, Cursor};
use crate::dispatcher::Functions;
use crate::manifest::BlobTrigger;
use crate::queue::QueueDelivery;
use crate::queue::{NewMessage, QueueError};
use crate::services::Services;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Changes (or objects, when reconciling) read per step.
const PAGE: usize = 512;
/// How often the feed looks without being woken (a backend that cannot wake it).
const POLL: Duration = Duration::from_secs(1);
/// How often consumers that went away are forgotten and old changes dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// One blob trigger of one active function.
pub(crate) struct Consumer {
    id: String,
    function: String,
    trigger: BlobTrigger,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error(transparent)]
    Blobs(#[from] BlobError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The feed's loop, until `shutdown`.
pub async fn run(
    functions: Arc<dyn Functions>,
    services: Arc<Services>,
    shutdown: CancellationToken,
) {
    let Some(blobs) = services.blobs().feed() else {
        return; // changes arrive another way (S3 notifications)
    };
    let wake = blobs.notifier().unwrap_or_else(|| Arc::new(Notify::new()));
    let mut changes = functions.subscribe();
    let queues = services.delivery().as_ref();
    // Not at once: a function that failed to load at start would lose its
    // cursor before it is fixed.
    let mut pruned = Instant::now();
    loop {
        let consumers = consumers(functions.as_ref());
        let mut more = false;
        let mut failed = false;
        for c in &consumers {
            match pump(queues, blobs.as_ref(), c).await {
                Ok(m) => more |= m,
                Err(e) => {
                    tracing::error!(function = %c.function, bucket = %c.trigger.bucket, error = %e, "cannot feed blob changes to a trigger; retrying");
                    failed = true;
                }
            }
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            let keep = consumers.iter().map(|c| c.id.clone()).collect();
            if let Err(e) = blobs.prune(keep).await {
                tracing::warn!(error = %e, "cannot prune the blob change feed");
            }
            pruned = Instant::now();
        }
        if more && !failed && !shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

pub(crate) fn consumers(functions: &dyn Functions) -> Vec<Consumer> {
    let mut out = Vec::new();
    for d in functions.active() {
        for t in &d.manifest.triggers.blob {
            out.push(Consumer {
                id: format!("{}/{}", d.record.name, t.bucket),
                function: d.record.name.clone(),
                trigger: t.clone(),
            });
        }
    }
    out
}

/// Move one consumer forward by a page; true when there may be more.
async fn pump(
    queues: &dyn QueueDelivery,
    blobs: &dyn ChangeFeed,
    c: &Consumer,
) -> Result<bool, FeedError> {
    let spec = c.trigger.spec();
    match blobs.cursor(&c.id).await? {
        Some(cursor) if cursor.spec == spec => {
            let page = blobs.changes(None, cursor.seq, PAGE).await?;
            let Some(last) = page.last().map(|ch| ch.seq) else {
                return Ok(false);
            };
            let full = page.len() == PAGE;
            // Every change to a watched object keeps the receipts right (a
            // delete forgets the key's receipt even when deletes are not
            // delivered, so a re-upload of the same content is new again);
            // only the wanted kinds are delivered.
            let scoped: Vec<Change> = page
                .into_iter()
                .filter(|ch| c.trigger.in_scope(ch))
                .collect();
            let fresh = blobs.undelivered(&c.id, scoped).await?;
            let kinds = c.trigger.kinds();
            let (wanted, other): (Vec<Change>, Vec<Change>) =
                fresh.into_iter().partition(|ch| kinds.contains(&ch.kind));
            deliver(queues, c, &wanted).await?;
            let mut settled = wanted;
            settled.extend(
                other
                    .into_iter()
                    .filter(|ch| ch.kind == ChangeKind::Deleted),
            );
            settled.sort_by_key(|ch| ch.seq);
            blobs
                .advance(&c.id, Cursor { seq: last, spec }, settled)
                .await?;
            Ok(full)
        }
        cursor => {
            // An interrupted reconciliation resumes from the feed position
            // it noted, so changes since then are still read from the feed.
            let resume = cursor
                .filter(|k| k.spec == reconciling(&spec))
                .map(|k| k.seq);
            reconcile(queues, blobs, c, spec, resume).await?;
            Ok(true)
        }
    }
}

/// Deliver every stored object the consumer matches and has no receipt
/// for, then start it at the feed's current end.
async fn reconcile(
    queues: &dyn QueueDelivery,
    blobs: &dyn ChangeFeed,
    c: &Consumer,
    spec: String,
    resume: Option<u64>,
) -> Result<(), FeedError> {
    // Everything after `latest` is read from the feed afterwards; an object
    // both scanned and in the feed has one etag, so one receipt covers both.
    let latest = match resume {
        Some(seq) => seq,
        None => blobs.latest_change().await?,
    };
    let mut delivered = 0usize;
    if c.trigger.kinds().contains(&ChangeKind::Created) {
        let bucket = &c.trigger.bucket;
        let prefix = c.trigger.prefix.clone().unwrap_or_default();
        let mut after: Option<String> = None;
        loop {
            let (page, as_of) = blobs.list_at(bucket, &prefix, after.clone(), PAGE).await?;
            after = page.last().map(|m| m.key.clone());
            let full = page.len() == PAGE;
            let found: Vec<Change> = page
                .into_iter()
                .map(|m| Change::found(bucket, m, as_of))
                .filter(|ch| c.trigger.matches(ch))
                .collect();
            let fresh = blobs.undelivered(&c.id, found).await?;
            deliver(queues, c, &fresh).await?;
            delivered += fresh.len();
            // Receipts as we go; the cursor is not valid until the scan ends.
            let scanning = Cursor {
                seq: latest,
                spec: reconciling(&spec),
            };
            blobs.advance(&c.id, scanning, fresh).await?;
            if !full {
                break;
            }
        }
    }
    blobs
        .advance(&c.id, Cursor { seq: latest, spec }, Vec::new())
        .await?;
    tracing::info!(function = %c.function, bucket = %c.trigger.bucket, delivered, "blob trigger reconciled with the stored objects");
    Ok(())
}

/// The cursor spec of a consumer in the middle of reconciling.
fn reconciling(spec: &str) -> String {
    format!("{spec} (reconciling)")
}

/// Enqueue changes on the consumer's queue, durably. A change no message
/// can carry (a content type stored before content types were capped, say)
/// goes straight to the queue's dead letters with the reason, so it never
/// holds up the changes behind it.
pub(crate) async fn deliver(
    queues: &dyn QueueDelivery,
    c: &Consumer,
    changes: &[Change],
) -> Result<(), FeedError> {
    if changes.is_empty() {
        return Ok(());
    }
    let queue = c.trigger.queue(&c.function);
    let now = crate::clock::now_ms();
    let features = queues.features(&queue);
    let mut messages = Vec::with_capacity(changes.len());
    for ch in changes {
        let mut msg = message(c, ch);
        // Order per object and dedup where the queue has them (an SQS
        // standard queue has neither: see `s3`).
        if !features.groups {
            msg.group = None;
        }
        if !features.dedup {
            msg.dedup_id = None;
        }
        match crate::queue::validate(&queue, &msg, now) {
            Ok(()) => messages.push(msg),
            Err(why) => {
                let error = format!(
                    "the change to {} cannot be handed to the trigger: {why}",
                    crate::text::quote(&ch.key)
                );
                tracing::warn!(function = %c.function, bucket = %c.trigger.bucket, error = %crate::text::LogSafe(&error), "a blob change goes to the trigger's dead letters");
                let kept = Change {
                    content_type: ch
                        .content_type
                        .clone()
                        .map(|t| crate::text::capped(t, crate::blobs::MAX_CONTENT_TYPE_BYTES)),
                    ..ch.clone()
                };
                queues.bury(&queue, message(c, &kept), error).await?;
            }
        }
    }
    if !messages.is_empty() {
        queues.send_batch(&queue, messages).await?;
    }
    tracing::debug!(function = %c.function, bucket = %c.trigger.bucket, n = changes.len(), "blob changes enqueued");
    Ok(())
}

/// The message that hands `ch` to the consumer's queue.
fn message(c: &Consumer, ch: &Change) -> NewMessage {
    NewMessage {
        body: serde_json::to_vec(ch).expect("a change serializes"),
        dedup_id: Some(dedup_id(&c.id, ch)),
        // One object's changes run one at a time, in order.
        group: Some(crate::files::sha256_hex(
            format!("{}/{}", ch.bucket, ch.key).as_bytes(),
        )),
        attributes: vec![
            ("fnhost-bucket".into(), ch.bucket.clone()),
            ("fnhost-key".into(), ch.key.clone()),
        ],
        ..NewMessage::default()
    }
}

/// The same change to the same consumer always gets the same dedup id: a
/// feed change by its number, a scanned object by its version.
fn dedup_id(consumer: &str, ch: &Change) -> String {
    let what = if ch.seq > 0 {
        format!("{consumer}|seq|{}", ch.seq)
    } else {
        format!(
            "{consumer}|{}|{}|{}",
            ch.bucket,
            ch.key,
            ch.etag.as_deref().unwrap_or("")
        )
    };
    crate::files::sha256_hex(what.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, key: &str, etag: &str) -> Change {
        Change {
            seq,
            bucket: "uploads".into(),
            key: key.into(),
            kind: ChangeKind::Created,
            etag: Some(etag.into()),
            size: Some(1),
            content_type: None,
            at_ms: 0,
            as_of: None,
        }
    }

    #[test]
    fn dedup_ids_follow_the_change_not_the_attempt() {
        let a = dedup_id("f/uploads", &change(7, "a.png", "e1"));
        assert_eq!(a, dedup_id("f/uploads", &change(7, "a.png", "e1")));
        assert_ne!(a, dedup_id("f/uploads", &change(8, "a.png", "e1")));
        assert_ne!(a, dedup_id("g/uploads", &change(7, "a.png", "e1")));
        let scanned = dedup_id("f/uploads", &change(0, "a.png", "e1"));
        assert_eq!(scanned, dedup_id("f/uploads", &change(0, "a.png", "e1")));
        assert_ne!(scanned, dedup_id("f/uploads", &change(0, "a.png", "e2")));
        assert!(scanned.len() <= 128, "fits a dedup id");
    }
}
