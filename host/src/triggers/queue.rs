//! The queue trigger: one [`Worker`] per (function, queue) binding leases
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
//! store, may still be committing.)

use crate::dispatcher::{Attempt, Deployed, Dispatcher};
use crate::exec::Reporter;
use crate::exec::{BlobChange, ChangeKind, Event, QueueMessage, TimerTick};
use crate::jobs::{JobOutput, JobState, JobStore, JobUpdate};
use crate::manifest::{QueuePolicy, Source};
use crate::queue::{Delivery, NewMessage, QueueBackend, QueueError, Receipt, Settlement};
use crate::task::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a receive waits for messages to arrive before the worker looks
/// again (at its policy, its backlog, and delayed messages come due). A
/// message that arrives meanwhile is handed over at once.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long a partly free binding waits for more instances to free up
/// before leasing for the ones that are.
const REFILL_WAIT: Duration = Duration::from_millis(2);
/// How soon after a full batch the backlog may be measured again.
const STATS_SOON: Duration = Duration::from_millis(50);
/// How often the backlog is measured for scaling.
const STATS_EVERY: Duration = Duration::from_millis(500);

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

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// One (function, queue) binding's loop.
pub struct Worker {
    dispatcher: Arc<Dispatcher>,
    function: String,
    queue: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Worker {
    /// A worker for `function`'s binding of `queue`.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        function: String,
        queue: String,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Worker {
            dispatcher,
            function,
            queue,
            shutdown,
            tracker,
        }
    }

    /// The function's active version and this binding's policy in it, while
    /// both exist.
    fn binding(&self) -> Option<(Arc<Deployed>, QueuePolicy)> {
        let deployed = self.dispatcher.get(&self.function)?;
        let policy = deployed
            .manifest
            .queue_policies()
            .into_iter()
            .find(|p| p.queue == self.queue)?;
        Some((deployed, policy))
    }

    /// Lease, invoke and settle until the binding goes away or the host stops.
    pub async fn run(self) {
        let backend = self.dispatcher.queues().clone();
        let done = Arc::new(Notify::new());
        let stats = self.dispatcher.worker_stats(&self.function, &self.queue);
        let mut scaler: Option<Scaler> = None;
        let mut measured: Option<Instant> = None;
        let mut refill_now = false;
        tracing::info!(function = %self.function, queue = %self.queue, "queue worker started");
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
            if measured.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
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
            let limit = scaler.desired().max(1) as usize;
            let running = stats.running.load(Ordering::Relaxed);
            let free = limit.saturating_sub(running);
            let want = free.min(policy.batch_size as usize);
            // Every receive is a durable step (its leases are committed), so
            // while work is running, lease in batches: wait until half a batch
            // of instances is free (or a moment has passed) rather than
            // receiving one message per completion.
            let refill = (limit.min(policy.batch_size as usize) / 2).max(1);
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
            let received = tokio::select! {
                r = backend.receive_waiting(&self.queue, want, policy.visibility_timeout, IDLE_POLL) => r,
                () = self.shutdown.cancelled() => break,
            };
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
            for delivery in deliveries {
                stats.running.fetch_add(1, Ordering::Relaxed);
                let settle = Settle {
                    dispatcher: self.dispatcher.clone(),
                    backend: backend.clone(),
                    deployed: deployed.clone(),
                    policy: policy.clone(),
                };
                let slot = Slot {
                    stats: stats.clone(),
                    done: done.clone(),
                };
                self.tracker.spawn(settle.process(delivery, slot));
            }
        }
        tracing::info!(function = %self.function, queue = %self.queue, "queue worker stopped");
    }
}

/// The event a message stands for, by where it came from.
fn event(source: &Source, m: &crate::queue::Message) -> Result<Event, String> {
    Ok(match source {
        Source::Jobs => Event::Invoke(m.body.clone()),
        Source::Queue => Event::Queue(QueueMessage {
            id: m.id.clone(),
            queue: m.queue.clone(),
            body: m.body.clone(),
            attributes: m.attributes.clone(),
            dequeue_count: m.dequeue_count,
            enqueued_at_ms: m.enqueued_at_ms,
            group: m.group.clone(),
            correlation_id: m.correlation_id.clone(),
        }),
        Source::Blob(_) => {
            let c: crate::blobs::Change =
                serde_json::from_slice(&m.body).map_err(|e| format!("not a blob change: {e}"))?;
            Event::Blob(BlobChange {
                bucket: c.bucket,
                key: c.key,
                kind: match c.kind {
                    crate::blobs::ChangeKind::Created => ChangeKind::Created,
                    crate::blobs::ChangeKind::Updated => ChangeKind::Updated,
                    crate::blobs::ChangeKind::Deleted => ChangeKind::Deleted,
                },
                etag: c.etag,
                size: c.size,
                content_type: c.content_type,
            })
        }
        Source::Timer(_) => {
            let t: super::timer::Tick =
                serde_json::from_slice(&m.body).map_err(|e| format!("not a timer tick: {e}"))?;
            Event::Timer(TimerTick {
                schedule: t.schedule,
                scheduled_at_ms: t.scheduled_at_ms,
                past_due: t.past_due,
            })
        }
    })
}

/// A settlement handed to the store (its result to come), and what to
/// settle with (and record, for a job) if its reply is refused.
type Settling<'a> = (
    BoxFuture<'a, Result<bool, QueueError>>,
    Option<(Settlement, JobUpdate)>,
);

/// One of a binding's instances, taken while an invocation runs. It is
/// given back (dropped) as soon as the guest returns, before the message is
/// settled: waiting for the settlement's commit is the store's work, and an
/// instance held through it would idle while other messages wait.
struct Slot {
    stats: Arc<crate::dispatcher::BindingStats>,
    done: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        self.done.notify_one();
    }
}

struct Settle {
    dispatcher: Arc<Dispatcher>,
    backend: Arc<dyn QueueBackend>,
    deployed: Arc<Deployed>,
    policy: QueuePolicy,
}

/// Progress and checkpoints of one delivery: checkpoints go on the message
/// (the next delivery carries them), progress on the job record for jobs.
struct DeliveryReporter {
    backend: Arc<dyn QueueBackend>,
    receipt: crate::queue::Receipt,
    job: Option<(Arc<dyn JobStore>, String)>,
}

impl Reporter for DeliveryReporter {
    fn progress(&self, percent: u8, message: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if let Some((jobs, id)) = &self.job {
                jobs.update(id.clone(), JobUpdate::Progress { percent, message })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn checkpoint(&self, state: Vec<u8>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.backend.checkpoint(self.receipt.clone(), state).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    Err("the message's lease was lost; the checkpoint was not saved".into())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Settle {
    async fn process(self, d: Delivery, slot: Slot) {
        let m = &d.message;
        let job = matches!(self.policy.source, Source::Jobs)
            .then(|| (self.dispatcher.jobs().clone(), m.id.clone()));
        let event = match event(&self.policy.source, m) {
            Ok(event) => event,
            Err(error) => {
                // Only the host writes these queues, so this is a bug or a
                // store from another version: keep the message for a look.
                tracing::error!(message = %m.id, queue = %m.queue, %error, "dead-lettering a message the host cannot read");
                let who = format!(
                    "{}@v{}",
                    self.deployed.record.name, self.deployed.record.version
                );
                let _ = self.backend.dead_letter(d.receipt, error, Some(who)).await;
                return;
            }
        };
        if let Some((jobs, id)) = &job {
            let _ = jobs
                .update(
                    id.clone(),
                    JobUpdate::Started {
                        attempt: m.dequeue_count,
                    },
                )
                .await;
        }
        let reporter = DeliveryReporter {
            backend: self.backend.clone(),
            receipt: d.receipt.clone(),
            job: job.clone(),
        };
        let attempt = Attempt {
            number: m.dequeue_count,
            job_id: job.as_ref().map(|(_, id)| id.clone()),
            checkpoint: m.checkpoint.clone(),
            reporter: Some(Arc::new(reporter)),
        };
        // Renew the lease at half the visibility timeout while the invocation
        // runs; in this task, so a short job costs no extra task or timer wheel churn.
        let vis = self.policy.visibility_timeout;
        // Boxed: the invocation's future is large, and keeping it inline made
        // every spawn of this task copy it.
        let mut invocation = Box::pin(self.dispatcher.invoke(
            self.deployed.clone(),
            event,
            attempt,
        ));
        let mut renewing = true;
        let outcome = loop {
            tokio::select! {
                (_, outcome) = &mut invocation => break outcome,
                () = tokio::time::sleep(vis / 2), if renewing => {
                    match self.backend.renew(d.receipt.clone(), vis).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(message = %m.id, "the lease was lost; another worker may process this message too");
                            renewing = false;
                        }
                        Err(e) => tracing::warn!(message = %m.id, error = %e, "cannot renew a lease"),
                    }
                }
            }
        };
        let who = format!(
            "{}@v{}",
            self.deployed.record.name, self.deployed.record.version
        );
        let receipt = d.receipt.clone();
        let retention_ms = self.dispatcher.job_settings().retention.as_millis() as u64;
        // The settlement is handed to the store before the instance is given
        // back, so the binding's next receive is applied after it (the next
        // message of a group is receivable only once this one is settled).
        // A job's end is recorded in the same durable step as its settlement.
        let (pending, fallback): Settling<'_> = match outcome.result {
            Ok(output) => {
                let done = JobUpdate::Finished {
                    state: JobState::Succeeded,
                    output: Some(JobOutput {
                        status: output.status,
                        headers: output.headers.clone(),
                        body: output.body.clone(),
                    }),
                    error: None,
                    retention_ms,
                };
                let reply = self.reply(m, "succeeded", output.body);
                let fallback = (!reply.is_empty()).then(|| (Settlement::Ack, done.clone()));
                (
                    self.settle(&job, receipt, Settlement::Ack, reply, done),
                    fallback,
                )
            }
            Err(failure) => {
                let permanent = !failure.is_retryable();
                if permanent || m.dequeue_count >= self.policy.max_attempts {
                    let error = if permanent {
                        failure.to_string()
                    } else {
                        format!(
                            "gave up after {} attempts; last error: {failure}",
                            m.dequeue_count
                        )
                    };
                    let error = crate::text::capped(error, crate::queue::MAX_ERROR_BYTES);
                    tracing::warn!(message = %m.id, queue = %m.queue, error = %crate::text::LogSafe(&error), "dead-lettered");
                    let reply = self.reply(m, "failed", error.clone().into_bytes());
                    let state = if permanent {
                        JobState::Failed
                    } else {
                        JobState::Dead
                    };
                    let done = JobUpdate::Finished {
                        state,
                        output: None,
                        error: Some(error.clone()),
                        retention_ms,
                    };
                    let how = Settlement::DeadLetter {
                        error,
                        function: Some(who),
                    };
                    let fallback = (!reply.is_empty()).then(|| (how.clone(), done.clone()));
                    (self.settle(&job, receipt, how, reply, done), fallback)
                } else {
                    let delay = backoff(&self.policy, m.dequeue_count, random_unit());
                    let error =
                        crate::text::capped(failure.to_string(), crate::queue::MAX_ERROR_BYTES);
                    let retrying = job.as_ref().map(|(jobs, id)| {
                        jobs.update(
                            id.clone(),
                            JobUpdate::Retrying {
                                error: error.clone(),
                            },
                        )
                    });
                    let retry = self.backend.retry(receipt, delay, error);
                    let pending: BoxFuture<'_, _> = Box::pin(async move {
                        if let Some(update) = retrying {
                            let _ = update.await;
                        }
                        retry.await
                    });
                    (pending, None)
                }
            }
        };
        drop(slot);
        let settled = match (pending.await, fallback) {
            // A reply the store refuses (a message stored by an older
            // version, say) must not keep the message forever: settle
            // without it (nothing was applied, see `QueueBackend::settle`).
            (Err(QueueError::Invalid(e)), Some((how, done))) => {
                tracing::error!(message = %m.id, error = %e, "cannot send the reply; settling without it");
                self.settle(&job, d.receipt.clone(), how, Vec::new(), done)
                    .await
            }
            (settled, _) => settled,
        };
        match &settled {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(message = %m.id, "the lease had expired before the message was settled; it will be delivered again")
            }
            Err(e) => {
                tracing::error!(message = %m.id, error = %e, "cannot settle a message; it will be delivered again")
            }
        }
        if let (Some((jobs, id)), Ok(true)) = (&job, &settled) {
            self.dispatcher
                .job_settings()
                .callbacks
                .send(jobs.as_ref(), id)
                .await;
        }
    }

    /// Settle the delivery with its replies; for a job, record its end
    /// (`done`) in the same durable step. The operation is handed to the
    /// store now; the future is its answer.
    fn settle<'a>(
        &'a self,
        job: &'a Option<(Arc<dyn JobStore>, String)>,
        receipt: Receipt,
        how: Settlement,
        reply: Vec<(String, NewMessage)>,
        done: JobUpdate,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        match job {
            Some((jobs, id)) => jobs.settle_job(receipt, how, reply, id.clone(), done),
            None => self.backend.settle(receipt, how, reply),
        }
    }

    /// The message to `reply_to`, if the message named one, telling how it
    /// ended; it is sent with the settlement, in the same durable step.
    fn reply(
        &self,
        m: &crate::queue::Message,
        status: &str,
        body: Vec<u8>,
    ) -> Vec<(String, NewMessage)> {
        let Some(reply_to) = &m.reply_to else {
            return Vec::new();
        };
        let mut attributes = vec![
            ("fnhost-status".into(), status.into()),
            ("fnhost-message-id".into(), m.id.clone()),
            ("fnhost-function".into(), self.deployed.record.name.clone()),
        ];
        // A reply that cannot be stored must not hold up the settlement (the
        // message would come back forever): say what happened instead.
        let body = if body.len() > crate::queue::MAX_BODY_BYTES {
            attributes.push((
                "fnhost-body-dropped".into(),
                format!(
                    "the result is {} bytes, over the message limit of {}; an async job's record keeps it",
                    body.len(),
                    crate::queue::MAX_BODY_BYTES
                ),
            ));
            Vec::new()
        } else {
            body
        };
        let reply = NewMessage {
            body,
            attributes,
            correlation_id: Some(m.correlation_id.clone().unwrap_or_else(|| m.id.clone())),
            ..NewMessage::default()
        };
        vec![(reply_to.clone(), reply)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> QueuePolicy {
        crate::manifest::QueueTrigger {
            queue: "q".into(),
            batch_size: None,
            visibility_timeout: None,
            max_attempts: None,
            backoff_initial: Some("1s".into()),
            backoff_max: Some("30s".into()),
            min_concurrency: Some(0),
            max_concurrency: Some(4),
            target_backlog: Some(10),
            scale_down_cooldown: None,
        }
        .policy()
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_into_the_upper_half() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, 200, 0.0), Duration::from_secs(15));
        let r = backoff(&p, 2, random_unit());
        assert!(
            r >= Duration::from_secs(1) && r <= Duration::from_secs(2),
            "{r:?}"
        );
    }

    #[test]
    fn scaling_follows_the_backlog_up_at_once_and_down_after_the_cooldown() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = Scaler::new(0, Duration::from_secs(10));
        assert_eq!(s.observe(0, &p, t0), 0, "zero when idle");
        assert_eq!(s.observe(25, &p, t0), 3, "ceil(25 / 10)");
        assert_eq!(s.observe(1000, &p, t0), 4, "capped at max");
        assert_eq!(
            s.observe(5, &p, t0 + Duration::from_secs(1)),
            4,
            "not down before the cooldown"
        );
        assert_eq!(s.observe(5, &p, t0 + Duration::from_secs(9)), 4);
        assert_eq!(
            s.observe(5, &p, t0 + Duration::from_secs(11)),
            1,
            "down after it"
        );
        assert_eq!(s.observe(0, &p, t0 + Duration::from_secs(12)), 1);
        assert_eq!(
            s.observe(0, &p, t0 + Duration::from_secs(22)),
            0,
            "back to zero"
        );
        assert_eq!(
            s.observe(40, &p, t0 + Duration::from_secs(23)),
            4,
            "up again at once"
        );
    }
}
