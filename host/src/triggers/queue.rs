//! The queue trigger: one [`BindingLoop`] per (function, queue) binding leases
//! messages, invokes the function for each, and settles each message by its
//! outcome: success → ack (and a reply to `reply_to`), `fail` → dead letter,
//! anything else → retry with exponential backoff and jitter until
//! `max_attempts`, then dead letter. Leases are renewed at half the
//! visibility timeout while an invocation runs, so a long job is not handed
//! to a second worker; after a crash the lease expires and the message
//! comes back.
//!
//! A function's async jobs arrive the same way, on its job queue
//! (`fnhost-jobs-<function>`): the invocation gets the payload as an invoke
//! event, and the job record follows every attempt (running, progress,
//! retrying, then succeeded / failed / dead), with a callback POST when the
//! job names one. Checkpoints saved during an attempt ride on the message,
//! so the next attempt resumes from them.
//!
//! How many invocations run at once follows the backlog ([`Scaler`]), and a
//! worker never leases more messages than it has free instances, so other
//! hosts sharing the queue can take the rest. (An instance is free again
//! when its guest returns; the message's settlement, already handed to the
//! store, may still be committing.) On a backend that hands out few
//! messages per receive (SQS: 10), a binding runs several receive loops
//! (lanes), each for its share of the desired instances, so more than one
//! receive is in flight when more than 10 instances are wanted.
//!
//! Group order is kept in two places: the store hands out a group's next
//! message only once none before it is leased (the embedded store one per
//! group at a time; SQS FIFO several, in order, in one receive), and the
//! worker runs the messages of a group that one receive hands over one
//! after another, holding the group through a retry ([`groups`]).

mod checkpoints;
mod groups;
mod settle;

use crate::dispatcher::{Deployed, Functions};
use crate::manifest::QueuePolicy;
use crate::queue::Delivery;
use crate::services::Services;
use settle::{Settle, Slot};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
// Tokio's clock, so that tests on a paused runtime move it by hand.
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a partly free binding waits for more instances to free up
/// before leasing for the ones that are.
const REFILL_WAIT: Duration = Duration::from_millis(2);
/// How soon after a full batch the backlog may be measured again.
const STATS_SOON: Duration = Duration::from_millis(50);
/// How often the backlog is measured for scaling.
const STATS_EVERY: Duration = Duration::from_millis(500);
/// The most receive loops a binding runs at once.
const MAX_LANES: usize = 4;
/// Lanes are added until they cover this many instances, at the
/// backend's largest receive each (1 lane for the embedded store, 4 for
/// SQS's 10 messages a receive).
const MAX_LANE_INSTANCES: usize = 40;

/// Desired instances from the backlog: `clamp(ceil(backlog / target), min,
/// max)`, up at once, down only after the backlog has stayed lower for the
/// cooldown, zero when idle (with `min = 0`).
#[derive(Debug, Clone)]
pub struct Scaler {
    desired: u32,
    lower_since: Option<Instant>,
    cooldown: Duration,
}

impl Scaler {
    /// A scaler that starts at `min`.
    pub fn new(min: u32, cooldown: Duration) -> Self {
        Scaler {
            desired: min,
            lower_since: None,
            cooldown,
        }
    }

    /// Take a backlog reading at `now`; returns the desired instances.
    pub fn observe(&mut self, backlog: u64, policy: &QueuePolicy, now: Instant) -> u32 {
        let target = u64::from(policy.target_backlog.max(1));
        let wanted = backlog.div_ceil(target).clamp(
            u64::from(policy.min_concurrency),
            u64::from(policy.max_concurrency),
        );
        let wanted = wanted as u32;
        if wanted >= self.desired {
            self.desired = wanted;
            self.lower_since = None;
        } else {
            let since = *self.lower_since.get_or_insert(now);
            if now.duration_since(since) >= self.cooldown {
                self.desired = wanted;
                self.lower_since = None;
            }
        }
        self.desired
    }

    /// The current desired instances.
    pub fn desired(&self) -> u32 {
        self.desired
    }
}

/// The retry delay after `attempt` (1-based): `initial × 2^(attempt-1)`,
/// capped at `max`, then jittered into its upper half by `jitter` in [0, 1).
pub fn backoff(policy: &QueuePolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = policy
        .backoff_initial
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(policy.backoff_max);
    exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A uniform draw from [0, 1) for jitter. Without the OS's randomness
/// (logged), the middle of the range: retries are then spread by their
/// attempt times alone.
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if let Err(e) = getrandom::fill(&mut b) {
        tracing::warn!(error = %e, "no randomness for retry jitter; using the middle of the range");
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// One (function, queue) binding's loop.
#[derive(Clone)]
pub struct BindingLoop {
    functions: Arc<dyn Functions>,
    services: Arc<Services>,
    function: String,
    queue: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl BindingLoop {
    /// A worker for `function`'s binding of `queue`.
    pub fn new(
        functions: Arc<dyn Functions>,
        services: Arc<Services>,
        function: String,
        queue: String,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        BindingLoop {
            functions,
            services,
            function,
            queue,
            shutdown,
            tracker,
        }
    }

    /// The function's active version and this binding's policy in it, while
    /// both exist.
    fn binding(&self) -> Option<(Arc<Deployed>, QueuePolicy)> {
        let deployed = self.functions.get(&self.function)?;
        let policy = deployed
            .manifest
            .queue_policies()
            .into_iter()
            .find(|p| p.queue == self.queue)?;
        Some((deployed, policy))
    }

    /// Lease, invoke and settle until the binding goes away or the host stops.
    ///
    /// A backend that hands out only a few messages per receive (SQS: 10)
    /// gets several lanes, each a receive loop of its own for the next
    /// `max_receive` of the desired instances, so that a binding that wants
    /// 16 instances keeps two receives in flight rather than waiting a
    /// round trip per 10 messages. Lane 0 measures the backlog; lanes past
    /// the desired instances idle.
    pub async fn run(self) {
        let per_receive = self
            .services
            .queues()
            .features(&self.queue)
            .max_receive
            .max(1);
        let lanes = MAX_LANES
            .min(MAX_LANE_INSTANCES.div_ceil(per_receive))
            .max(1);
        tracing::info!(function = %self.function, queue = %self.queue, lanes, "queue binding started");
        let mut others = tokio::task::JoinSet::new();
        for lane in 1..lanes {
            others.spawn(self.clone().lane(lane, lanes));
        }
        self.clone().lane(0, lanes).await;
        while others.join_next().await.is_some() {}
        tracing::info!(function = %self.function, queue = %self.queue, "queue binding stopped");
    }

    /// One lane's loop: it leases for its share of the desired instances
    /// (lane `i` of `n`: instances `i × max_receive` up to the next lane's,
    /// the last lane taking the rest).
    async fn lane(self, index: usize, lanes: usize) {
        let backend = self.services.delivery().clone();
        let done = Arc::new(Notify::new());
        let stats = self.services.binding_stats(&self.function, &self.queue);
        // This lane's instances running now (stats.running counts all lanes').
        let mine = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut scaler: Option<Scaler> = None;
        let mut measured: Option<Instant> = None;
        let mut refill_now = false;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let Some((_, policy)) = self.binding() else {
                break;
            };
            let scaler = scaler.get_or_insert_with(|| {
                Scaler::new(policy.min_concurrency, policy.scale_down_cooldown)
            });
            if index == 0 && measured.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
                // Past max × target the scaler wants max whatever the backlog.
                let cap =
                    u64::from(policy.max_concurrency) * u64::from(policy.target_backlog.max(1));
                if let Ok(backlog) = backend.backlog(&self.queue, cap).await {
                    scaler.observe(backlog, &policy, Instant::now());
                    stats
                        .desired
                        .store(scaler.desired() as usize, Ordering::Relaxed);
                }
                measured = Some(Instant::now());
            }
            // At least one instance may always pick up a message that arrives,
            // so an idle binding (zero desired) still notices new work.
            let desired = if index == 0 {
                scaler.desired()
            } else {
                stats.desired.load(Ordering::Relaxed) as u32
            };
            let features = backend.features(&self.queue);
            let limit = lane_limit(desired.max(1) as usize, index, lanes, features.max_receive);
            let running = mine.load(Ordering::Relaxed);
            let free = limit.saturating_sub(running);
            let want = free
                .min(policy.batch_size as usize)
                .min(features.max_receive);
            // Every receive is a durable step (its leases are committed), so
            // while work is running, lease in batches: wait until half a batch
            // of instances is free (or a moment has passed) rather than
            // receiving one message per completion.
            let refill = (limit.min(policy.batch_size as usize) / 2).max(1);
            if limit == 0 {
                // Past the desired instances: idle until the scaler asks
                // for more (lane 0 measures every STATS_EVERY).
                tokio::select! {
                    () = tokio::time::sleep(STATS_EVERY) => {}
                    () = self.shutdown.cancelled() => break,
                }
                continue;
            }
            if want == 0 || (running > 0 && want < refill) {
                tokio::select! {
                    () = done.notified() => {}
                    () = tokio::time::sleep(if want == 0 { STATS_EVERY } else { REFILL_WAIT }) => {
                        if want > 0 {
                            // Waited long enough: take what is free.
                            refill_now = true;
                        }
                    }
                    () = self.shutdown.cancelled() => break,
                }
                if !refill_now {
                    continue;
                }
            }
            refill_now = false;
            // Long polling: a message sent while this waits is leased to it
            // in the durable step that stores it.
            let visibility = policy.visibility_timeout;
            let receive =
                backend.receive_waiting(&self.queue, want, visibility, features.long_poll);
            tokio::pin!(receive);
            let received = tokio::select! {
                r = &mut receive => r,
                () = self.shutdown.cancelled() => {
                    // A long poll (SQS) may have leased messages that a
                    // dropped request would hide for their visibility
                    // timeout: let it answer, and give them back.
                    if !features.long_poll.is_zero()
                        && let Ok(Ok(got)) = tokio::time::timeout(features.long_poll, receive).await
                        && !got.is_empty()
                    {
                        let receipts = got.into_iter().map(|d| d.receipt).collect();
                        if let Err(e) = backend.release(receipts).await {
                            tracing::warn!(queue = %self.queue, error = %e, "cannot give back messages received while stopping; they come back after their visibility timeout");
                        }
                    }
                    break;
                }
            };
            let leased_at = tokio::time::Instant::now();
            let deliveries = match received {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(queue = %self.queue, error = %e, "cannot receive from the queue; retrying in 1s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            // The receive may have waited through a deploy, rollback or
            // remove: run the messages on the binding as it is now, or, if it
            // is gone, give them back untouched.
            let Some((deployed, policy)) = self.binding() else {
                let receipts = deliveries.into_iter().map(|d| d.receipt).collect();
                if let Err(e) = backend.release(receipts).await {
                    tracing::warn!(queue = %self.queue, error = %e, "cannot give back messages received as the binding went away; they come back after their visibility timeout");
                }
                break;
            };
            if deliveries.len() == want && measured.is_some_and(|t| t.elapsed() >= STATS_SOON) {
                measured = None; // a full batch: there may be more backlog; measure again soon
            }
            let settle = Settle {
                functions: self.functions.clone(),
                services: self.services.clone(),
                deployed,
                policy,
            };
            let slot = || {
                stats.running.fetch_add(1, Ordering::Relaxed);
                mine.fetch_add(1, Ordering::Relaxed);
                Slot {
                    stats: stats.clone(),
                    lane: mine.clone(),
                    done: done.clone(),
                }
            };
            self.start(deliveries, &settle, slot, leased_at, visibility);
        }
    }

    /// Start the deliveries of one receive, leased at `leased_at` for
    /// `visibility`: each holds an instance (`slot`) from now, and the
    /// messages of a group run one after another ([`groups`]).
    fn start(
        &self,
        deliveries: Vec<Delivery>,
        settle: &Settle,
        slot: impl Fn() -> Slot,
        leased_at: tokio::time::Instant,
        visibility: Duration,
    ) {
        for chain in groups::chains(deliveries, |d| d.message.group.as_deref()) {
            let members: Vec<_> = chain.into_iter().map(|d| (d, slot())).collect();
            let settle = settle.clone();
            match <[_; 1]>::try_from(members) {
                Ok([(delivery, slot)]) => {
                    self.tracker.spawn(async move {
                        settle.process(delivery, slot).await;
                    });
                }
                Err(members) => {
                    let chain = groups::Chain {
                        members,
                        leased_at,
                        visibility,
                    };
                    let shutdown = self.shutdown.clone();
                    self.tracker.spawn(async move {
                        let backend = settle.services.delivery().clone();
                        let process = |d, slot| settle.process(d, slot);
                        groups::run(backend.as_ref(), chain, shutdown, process).await;
                    });
                }
            }
        }
    }
}

/// The instances lane `index` of `lanes` leases for when `limit` are
/// wanted and a receive takes at most `per_receive`.
fn lane_limit(limit: usize, index: usize, lanes: usize, per_receive: usize) -> usize {
    let before = index.saturating_mul(per_receive);
    let rest = limit.saturating_sub(before);
    if index + 1 == lanes {
        rest
    } else {
        rest.min(per_receive)
    }
}

#[cfg(test)]
mod tests;
