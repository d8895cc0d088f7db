//! Group order within a received batch. One receive can hand over several
//! messages of a group (an SQS FIFO receive returns up to 10, in order);
//! they still run one at a time, in that order, and a message that comes
//! back (a retry) holds its group: nothing behind it runs before it. The
//! worker splits each batch into chains ([`chains`]): a group's messages in
//! the order received, each ungrouped message a chain of its own. Chains
//! run side by side; a chain's messages one after another ([`run`]), each
//! once the one before it is gone from the queue (acknowledged or
//! dead-lettered).
//!
//! A waiting message stays leased, and holds its instance: its lease is
//! renewed alongside the running message, and once more before it runs,
//! and it runs only while this host is sure to hold it. When a message
//! does not end gone (a retry, a lost lease, a failed settlement) or the
//! host stops, the rest of the chain is given back unrun
//! (`QueueDelivery::release`). On SQS FIFO they stay behind it: no message
//! of a group is handed out while one of it is in flight. The embedded
//! store hands out one message per group at a time, so its chains are
//! single messages.
//!
//! Knows nothing of what a delivery does ([`super::settle`] does it).

use super::settle::{Ended, Slot};
use crate::queue::{Delivery, QueueDelivery};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Split `items` into chains: those sharing a group, in their order, and
/// each without one alone; chains in the order their first item came.
pub(super) fn chains<T>(items: Vec<T>, group: impl Fn(&T) -> Option<&str>) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::with_capacity(items.len());
    let mut by_group: HashMap<String, usize> = HashMap::new();
    for item in items {
        let at = match group(&item) {
            Some(g) => match by_group.get(g) {
                Some(&at) => Some(at),
                None => {
                    by_group.insert(g.to_string(), out.len());
                    None
                }
            },
            None => None,
        };
        match at {
            Some(at) => out[at].push(item),
            None => out.push(vec![item]),
        }
    }
    out
}

/// A message waiting for its turn in a chain.
struct Waiting {
    delivery: Delivery,
    /// The instance it holds while it waits.
    slot: Slot,
    /// Until when its lease is known to hold (earlier once it was lost).
    held_until: Instant,
}

/// One chain's leases, all taken at `leased_at` for `visibility`.
pub(super) struct Chain {
    pub(super) members: Vec<(Delivery, Slot)>,
    pub(super) leased_at: Instant,
    pub(super) visibility: Duration,
}

/// Run one chain with `process` (a delivery, to how it ended): each
/// message once the one before it is gone from the queue; the rest given
/// back when one comes back or `shutdown` is cancelled.
pub(super) async fn run<F, Run>(
    backend: &dyn QueueDelivery,
    chain: Chain,
    shutdown: CancellationToken,
    mut process: F,
) where
    F: FnMut(Delivery, Slot) -> Run,
    Run: Future<Output = Ended>,
{
    let vis = chain.visibility;
    let mut waiting: VecDeque<Waiting> = chain
        .members
        .into_iter()
        .map(|(delivery, slot)| Waiting {
            delivery,
            slot,
            held_until: chain.leased_at + vis,
        })
        .collect();
    // The waiting leases are renewed on one schedule for the whole chain,
    // however short each run is.
    let mut renew_at = chain.leased_at + vis / 2;
    let mut first = true;
    while let Some(mut next) = waiting.pop_front() {
        if shutdown.is_cancelled() {
            waiting.push_front(next);
            break;
        }
        // Its turn may come long after it was leased: it runs only on a
        // lease this host is sure to hold, renewed now.
        if !first && let Err(why) = confirm(backend, &mut next, vis).await {
            let m = &next.delivery.message;
            tracing::warn!(message = %m.id, queue = %m.queue, %why, "a message waiting for its group's turn is not run; the ones behind it are given back (it too, where its lease still holds)");
            waiting.push_front(next);
            break;
        }
        first = false;
        let running = process(next.delivery, next.slot);
        let ended = tokio::select! {
            ended = running => ended,
            never = keep_leased(backend, &mut waiting, &mut renew_at, vis) => match never {},
        };
        if ended == Ended::Again {
            break;
        }
    }
    give_back(backend, waiting).await;
}

/// Renew a waiting message's lease before it runs, so this host holds it
/// for a whole visibility timeout from now; else why not. A lease that may
/// have run out is not renewed: SQS may accept a stale receipt.
async fn confirm(
    backend: &dyn QueueDelivery,
    w: &mut Waiting,
    vis: Duration,
) -> Result<(), String> {
    let asked = Instant::now();
    if asked >= w.held_until {
        return Err("its lease may have run out".into());
    }
    match backend.renew(w.delivery.receipt.clone(), vis).await {
        Ok(true) => {
            w.held_until = asked + vis;
            Ok(())
        }
        Ok(false) => {
            w.held_until = asked;
            Err("its lease was lost".into())
        }
        Err(e) => Err(format!("cannot renew its lease: {e}")),
    }
}

/// Renew the waiting messages' leases at `renew_at`, then every half
/// visibility timeout, for as long as the message before them runs (never
/// returns).
async fn keep_leased(
    backend: &dyn QueueDelivery,
    waiting: &mut VecDeque<Waiting>,
    renew_at: &mut Instant,
    vis: Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep_until(*renew_at).await;
        for w in waiting.iter_mut() {
            let asked = Instant::now();
            match backend.renew(w.delivery.receipt.clone(), vis).await {
                // Only a lease still held when asked is extended (SQS may
                // accept a stale receipt).
                Ok(true) if w.held_until > asked => w.held_until = asked + vis,
                Ok(true) => {}
                Ok(false) => w.held_until = asked,
                Err(e) => {
                    tracing::warn!(message = %w.delivery.message.id, error = %e, "cannot renew the lease of a message waiting for its group's turn")
                }
            }
        }
        *renew_at = Instant::now() + vis / 2;
    }
}

/// Give back the messages of a chain that will not run now, unrun; each
/// gives back its instance. Leases that may have run out are left alone.
async fn give_back(backend: &dyn QueueDelivery, rest: VecDeque<Waiting>) {
    let now = Instant::now();
    let receipts: Vec<_> = rest
        .into_iter()
        .filter(|w| w.held_until > now)
        .map(|w| w.delivery.receipt)
        .collect();
    if receipts.is_empty() {
        return;
    }
    if let Err(e) = backend.release(receipts).await {
        tracing::warn!(error = %e, "cannot give back the messages behind one that comes back; they come back after their visibility timeout");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedQueues;
    use crate::clock::ManualClock;
    use crate::queue::NewMessage;
    use crate::services::BindingStats;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    const VIS: Duration = Duration::from_secs(30);

    fn split(batch: &[(&'static str, Option<&'static str>)]) -> Vec<Vec<&'static str>> {
        chains(batch.to_vec(), |(_, g)| *g)
            .into_iter()
            .map(|c| c.into_iter().map(|(id, _)| id).collect())
            .collect()
    }

    #[test]
    fn a_batch_splits_into_chains_by_group_in_the_order_received() {
        // An SQS FIFO receive: groups interleaved, each in its order.
        let batch = [
            ("a1", Some("a")),
            ("b1", Some("b")),
            ("a2", Some("a")),
            ("x", None),
            ("a3", Some("a")),
            ("b2", Some("b")),
            ("y", None),
        ];
        assert_eq!(
            split(&batch),
            [
                vec!["a1", "a2", "a3"],
                vec!["b1", "b2"],
                vec!["x"],
                vec!["y"]
            ]
        );
        // The embedded store: one message per group, nothing chained.
        let batch = [("a1", Some("a")), ("x", None), ("b1", Some("b"))];
        assert_eq!(split(&batch), [vec!["a1"], vec!["x"], vec!["b1"]]);
        assert!(split(&[]).is_empty());
    }

    /// A store on a manual clock holding `bodies` as one chain, leased
    /// with `left` of their visibility timeout still to run, each holding
    /// an instance of `lane`.
    async fn leased(
        bodies: &[&str],
        left: Duration,
    ) -> (
        tempfile::TempDir,
        Arc<EmbeddedQueues>,
        Arc<ManualClock>,
        Chain,
        Arc<AtomicUsize>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_000_000);
        let q = Arc::new(EmbeddedQueues::open(dir.path(), clock.clone()).unwrap());
        for b in bodies {
            let m = NewMessage {
                body: b.as_bytes().to_vec(),
                ..NewMessage::default()
            };
            q.send("orders", m).await.unwrap();
        }
        let got = q.receive("orders", 10, VIS).await.unwrap();
        clock.advance(VIS - left);
        let (stats, lane) = (
            Arc::new(BindingStats::default()),
            Arc::new(AtomicUsize::new(0)),
        );
        let members = got
            .into_iter()
            .map(|d| {
                stats.running.fetch_add(1, Ordering::Relaxed);
                lane.fetch_add(1, Ordering::Relaxed);
                let slot = Slot {
                    stats: stats.clone(),
                    lane: lane.clone(),
                    done: Arc::new(Notify::new()),
                };
                (d, slot)
            })
            .collect();
        let chain = Chain {
            members,
            leased_at: Instant::now() - (VIS - left),
            visibility: VIS,
        };
        (dir, q, clock, chain, lane)
    }

    fn body(d: &Delivery) -> String {
        String::from_utf8_lossy(&d.message.body).into_owned()
    }

    #[tokio::test]
    async fn a_chain_runs_in_order_and_a_retry_gives_the_rest_back_unrun() {
        let (_dir, q, _clock, chain, lane) = leased(&["a", "b", "c", "d"], VIS).await;
        let ran = Mutex::new(Vec::new());
        run(q.as_ref(), chain, CancellationToken::new(), |d, slot| {
            let q = q.clone();
            ran.lock().unwrap().push(body(&d));
            async move {
                drop(slot);
                if body(&d) == "b" {
                    q.retry(d.receipt, Duration::from_secs(60), "try again".into())
                        .await
                        .unwrap();
                    return Ended::Again;
                }
                assert!(q.ack(d.receipt).await.unwrap());
                Ended::Gone
            }
        })
        .await;
        assert_eq!(
            *ran.lock().unwrap(),
            ["a", "b"],
            "nothing ran after the retry"
        );
        assert_eq!(lane.load(Ordering::Relaxed), 0, "every instance is back");
        // What was behind it is receivable at once, as if never delivered.
        let again = q.receive("orders", 10, VIS).await.unwrap();
        let seen: Vec<_> = again
            .iter()
            .map(|d| (body(d), d.message.dequeue_count))
            .collect();
        assert_eq!(seen, [("c".to_string(), 1), ("d".to_string(), 1)]);
    }

    #[tokio::test]
    async fn waiting_messages_keep_their_leases_however_long_the_chain_runs() {
        // Leased a second before the leases run out, each run 400 ms (on
        // the store's clock too): the last one's turn comes after its first
        // lease ran out, and it still runs on a lease this worker holds.
        let left = Duration::from_secs(1);
        let (_dir, q, clock, chain, lane) = leased(&["a", "b", "c", "d"], left).await;
        let ran = Mutex::new(Vec::new());
        let step = Duration::from_millis(400);
        run(q.as_ref(), chain, CancellationToken::new(), |d, slot| {
            let (q, clock) = (q.clone(), clock.clone());
            ran.lock().unwrap().push(body(&d));
            async move {
                clock.advance(step);
                tokio::time::sleep(step).await;
                // Another worker finds nothing to take meanwhile.
                assert!(q.receive("orders", 10, VIS).await.unwrap().is_empty());
                drop(slot);
                let name = body(&d);
                assert!(q.ack(d.receipt).await.unwrap(), "{name}'s lease held");
                Ended::Gone
            }
        })
        .await;
        assert_eq!(*ran.lock().unwrap(), ["a", "b", "c", "d"]);
        assert_eq!(lane.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_host_that_stops_gives_back_what_has_not_started() {
        let (_dir, q, _clock, chain, lane) = leased(&["a", "b", "c"], VIS).await;
        let stop = CancellationToken::new();
        let ran = Mutex::new(Vec::new());
        run(q.as_ref(), chain, stop.clone(), |d, slot| {
            let q = q.clone();
            ran.lock().unwrap().push(body(&d));
            // The host is told to stop while the first one runs.
            stop.cancel();
            async move {
                drop(slot);
                assert!(q.ack(d.receipt).await.unwrap());
                Ended::Gone
            }
        })
        .await;
        assert_eq!(*ran.lock().unwrap(), ["a"]);
        assert_eq!(lane.load(Ordering::Relaxed), 0);
        let again = q.receive("orders", 10, VIS).await.unwrap();
        let seen: Vec<_> = again.iter().map(body).collect();
        assert_eq!(seen, ["b", "c"]);
    }
}
