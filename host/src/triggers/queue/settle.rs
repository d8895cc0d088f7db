//! One delivery of a queue binding, in the order it happens: **receive**
//! (the message as the event its source stands for; the job record marked
//! running) → **invoke** (through the dispatcher, renewing the lease at half
//! the visibility timeout) → **settle** (ack, retry with backoff, or dead
//! letter, by the outcome and the attempt count) → **reply** (to
//! `reply_to`, in the settlement's durable step, with a job's end) →
//! **callback** (a finished job's record POSTed to its URL).
//!
//! The binding's instance ([`Slot`]) is given back as soon as the guest
//! returns, once the settlement is handed to the store. A delivery says how
//! it ended ([`Ended`]): the next message of its group runs only after it
//! is gone from the queue (see [`super::groups`], which keeps group order).

use super::{backoff, random_unit};
use crate::dispatcher::{Attempt, Delivered, Deployed, Functions};
use crate::exec::{
    BlobChange, ChangeKind, Event, Failure, Outcome, Output, QueueMessage, Reporter, SeamError,
    TimerTick,
};
use crate::jobs::{JobOutput, JobState, JobStore, JobUpdate};
use crate::manifest::{QueuePolicy, Source};
use crate::queue::{Delivery, Message, NewMessage, QueueDelivery, QueueError, Receipt, Settlement};
use crate::services::{BindingStats, Services};
use crate::task::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Notify;

/// A job's store and id, when the binding is the function's job queue.
type Job = Option<(Arc<dyn JobStore>, String)>;

/// A settlement handed to the store (its answer to come), and what to
/// settle with (and record, for a job) if its reply is refused.
type Settling<'a> = (
    BoxFuture<'a, Result<bool, QueueError>>,
    Option<(Settlement, JobUpdate)>,
);

/// The event a message stands for, by where it came from.
fn event(source: &Source, m: &Message) -> Result<Event, String> {
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
            let t: crate::triggers::timer::Tick =
                serde_json::from_slice(&m.body).map_err(|e| format!("not a timer tick: {e}"))?;
            Event::Timer(TimerTick {
                schedule: t.schedule,
                scheduled_at_ms: t.scheduled_at_ms,
                past_due: t.past_due,
            })
        }
    })
}

/// One of a binding's instances, taken from the lease until the guest
/// returns (a message waiting for its group's turn holds one too). It is
/// given back (dropped) as soon as the guest returns, before the message is
/// settled: waiting for the settlement's commit is the store's work, and an
/// instance held through it would idle while other messages wait.
pub(super) struct Slot {
    pub(super) stats: Arc<BindingStats>,
    /// The running count of the worker's lane that leased it.
    pub(super) lane: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) done: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        self.lane.fetch_sub(1, Ordering::Relaxed);
        self.done.notify_one();
    }
}

/// How a delivery ended, for the messages of its group behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Acknowledged or dead-lettered: gone from the queue, so the next
    /// message of its group may run.
    Gone,
    /// Still on the queue (retried, its lease lost, or its settlement
    /// failed): it will be delivered again, and nothing behind it in its
    /// group may run first.
    Again,
}

impl Ended {
    /// Gone when a settlement took effect.
    fn gone_if(settled: bool) -> Ended {
        if settled { Ended::Gone } else { Ended::Again }
    }
}

/// What one delivery is settled with: the binding as the worker found it.
#[derive(Clone)]
pub(super) struct Settle {
    pub(super) functions: Arc<dyn Functions>,
    pub(super) services: Arc<Services>,
    pub(super) deployed: Arc<Deployed>,
    pub(super) policy: QueuePolicy,
}

/// Progress and checkpoints of one delivery: checkpoints go on the message
/// (the next delivery carries them, to this function only), progress on
/// the job record for jobs.
struct DeliveryReporter {
    backend: Arc<dyn QueueDelivery>,
    receipt: crate::queue::Receipt,
    job: Option<(Arc<dyn JobStore>, String)>,
    /// The function that runs: its checkpoints are its own.
    function: String,
}

impl Reporter for DeliveryReporter {
    fn progress(&self, percent: u8, message: String) -> BoxFuture<'_, Result<(), SeamError>> {
        Box::pin(async move {
            if let Some((jobs, id)) = &self.job {
                (jobs.update(id.clone(), JobUpdate::Progress { percent, message }))
                    .await
                    .map_err(|e| SeamError::caused_by("cannot record the job's progress", e))?;
            }
            Ok(())
        })
    }

    fn checkpoint(&self, state: Vec<u8>) -> BoxFuture<'_, Result<(), SeamError>> {
        Box::pin(async move {
            let stored = super::checkpoints::frame(&self.function, &state);
            match self.backend.checkpoint(self.receipt.clone(), stored).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(SeamError::LeaseLost),
                Err(e) => Err(SeamError::caused_by("cannot save the checkpoint", e)),
            }
        })
    }
}

impl Settle {
    /// Process one delivery, step by step (see the module docs), and say
    /// how it ended.
    pub(super) async fn process(&self, d: Delivery, slot: Slot) -> Ended {
        let job: Job = matches!(self.policy.source, Source::Jobs).then(|| {
            (
                self.services.jobs().clone(),
                crate::jobs::job_id(&d.message),
            )
        });
        let event = match self.receive(&d, &job).await {
            Ok(event) => event,
            Err(ended) => return ended,
        };
        let outcome = self.invoke(&d, event, &job).await;
        let ends = match &outcome.result {
            Ok(_) => true,
            Err(failure) => self.gives_up(&d.message, failure),
        };
        let settling = self.settle(&d, &job, outcome);
        drop(slot);
        if !self.settled(&d, &job, settling).await {
            return Ended::Again;
        }
        if let Some((jobs, id)) = &job {
            self.callback(jobs.as_ref(), id).await;
        }
        if !ends {
            return Ended::Again;
        }
        if matches!(self.policy.source, Source::Timer(_)) {
            self.tick_over(&d.message).await;
        }
        Ended::Gone
    }

    /// Is a failed delivery given up on (not retried)?
    fn gives_up(&self, m: &Message, failure: &Failure) -> bool {
        !failure.is_retryable() || m.dequeue_count >= self.policy.max_attempts
    }

    /// A timer tick is over for good: on a fleet, the next may run.
    async fn tick_over(&self, m: &Message) {
        let Some(fleet) = self.services.fleet() else {
            return;
        };
        let (Some(function), Ok(tick)) = (
            crate::names::timer_function(&m.queue),
            serde_json::from_slice::<crate::triggers::timer::Tick>(&m.body),
        ) else {
            return;
        };
        let due = tick.scheduled_at_ms;
        if let Err(e) = crate::triggers::timer::fleet::release(fleet.as_ref(), function, due).await
        {
            tracing::error!(function = %function, error = %e, "cannot release the timer's claim; it holds the timer until it is stale");
        }
    }

    /// Receive: the event the message stands for, and the job marked
    /// running. A message the host cannot read (only the host writes these
    /// queues: a bug, or a store from another version) is dead-lettered
    /// for a look. `Err` says how a delivery that ends here ended: such a
    /// message, or a job whose end is already recorded (acknowledged).
    async fn receive(&self, d: &Delivery, job: &Job) -> Result<Event, Ended> {
        let m = &d.message;
        let event = match event(&self.policy.source, m) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(message = %m.id, queue = %m.queue, %error, "dead-lettering a message the host cannot read");
                let who = self.deployed.profile.who();
                let dead = self
                    .services
                    .delivery()
                    .dead_letter(d.receipt.clone(), error, Some(who))
                    .await;
                match &dead {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(message = %m.id, queue = %m.queue, "the unreadable message's lease ran out before it was dead-lettered; it comes back and is dead-lettered then");
                    }
                    Err(e) => {
                        tracing::error!(message = %m.id, queue = %m.queue, error = %e, "cannot dead-letter the unreadable message; it comes back after its visibility timeout and is tried again");
                    }
                }
                return Err(Ended::gone_if(matches!(dead, Ok(true))));
            }
        };
        if let Some((jobs, id)) = job {
            // A redelivery of a job whose end is already recorded (a host
            // died between recording it and settling the message, where
            // the two are not one step): acknowledge it, do not run it again.
            if m.dequeue_count > 1
                && let Ok(Some(record)) = jobs.get(id.clone()).await
                && record.state.is_final()
            {
                tracing::info!(job = %id, "the job already ended; acknowledging its redelivered message");
                let acked = self.services.delivery().ack(d.receipt.clone()).await;
                return Err(Ended::gone_if(matches!(acked, Ok(true))));
            }
            let started = JobUpdate::Started {
                attempt: m.dequeue_count,
            };
            if let Err(e) = jobs.update(id.clone(), started).await {
                tracing::warn!(job = %id, error = %e, "cannot mark the job running; it runs, and its record catches up when it ends");
            }
        }
        Ok(event)
    }

    /// Invoke: run the event on the binding's version, renewing the lease
    /// at half the visibility timeout while it runs (in this task, so a
    /// short job costs no extra task or timer).
    async fn invoke(&self, d: &Delivery, event: Event, job: &Job) -> Outcome {
        let m = &d.message;
        let function = self.deployed.record.name.clone();
        // Only a checkpoint this function saved: another function bound
        // to the queue may have run an earlier attempt.
        let checkpoint = (m.checkpoint.as_deref())
            .and_then(|stored| super::checkpoints::open(stored, &function));
        let reporter = DeliveryReporter {
            backend: self.services.delivery().clone(),
            receipt: d.receipt.clone(),
            job: job.clone(),
            function,
        };
        let attempt = Attempt {
            number: m.dequeue_count,
            job_id: job.as_ref().map(|(_, id)| id.clone()),
            checkpoint,
            reporter: Some(Arc::new(reporter)),
            delivered: Some(Delivered {
                message_id: m.id.clone(),
                correlation_id: m.correlation_id.clone(),
                enqueued_at_ms: m.enqueued_at_ms,
            }),
        };
        let vis = self.policy.visibility_timeout;
        // Boxed: the invocation's future is large, and keeping it inline made
        // every spawn of this task copy it.
        let mut invocation = self.functions.invoke(self.deployed.clone(), event, attempt);
        let mut renewing = true;
        loop {
            tokio::select! {
                (_, outcome) = &mut invocation => return outcome,
                () = tokio::time::sleep(vis / 2), if renewing => {
                    match self.services.delivery().renew(d.receipt.clone(), vis).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(message = %m.id, "the lease was lost; another worker may process this message too");
                            renewing = false;
                        }
                        Err(e) => tracing::warn!(message = %m.id, error = %e, "cannot renew a lease"),
                    }
                }
            }
        }
    }

    /// Settle, by the outcome: success acks, a permanent failure or the
    /// last attempt dead-letters, anything else retries after backoff. The
    /// reply (if `reply_to`) and a job's end go with the ack or dead letter
    /// in one durable step. The settlement is handed to the store now,
    /// before the instance is given back, so the binding's next receive is
    /// applied after it (the next message of a group is receivable only
    /// once this one is settled).
    fn settle<'a>(&'a self, d: &Delivery, job: &'a Job, outcome: Outcome) -> Settling<'a> {
        let m = &d.message;
        let receipt = d.receipt.clone();
        match outcome.result {
            Ok(output) => {
                let done = self.finished(JobState::Succeeded, Some(&output), None);
                let reply = self.reply(m, "succeeded", output.body);
                let fallback = (!reply.is_empty()).then(|| (Settlement::Ack, done.clone()));
                (
                    self.end(job, receipt, Settlement::Ack, reply, done),
                    fallback,
                )
            }
            Err(failure) if self.gives_up(m, &failure) => {
                let (state, error) = self.given_up(m, &failure);
                tracing::warn!(message = %m.id, queue = %m.queue, error = %crate::text::LogSafe(&error), "dead-lettered");
                let reply = self.reply(m, "failed", error.clone().into_bytes());
                let done = self.finished(state, None, Some(error.clone()));
                let how = Settlement::DeadLetter {
                    error,
                    function: Some(self.deployed.profile.who()),
                };
                let fallback = (!reply.is_empty()).then(|| (how.clone(), done.clone()));
                (self.end(job, receipt, how, reply, done), fallback)
            }
            Err(failure) => {
                let delay = backoff(&self.policy, m.dequeue_count, random_unit());
                let error = crate::text::capped(failure.to_string(), crate::queue::MAX_ERROR_BYTES);
                let retrying = job.as_ref().map(|(jobs, id)| {
                    let update = JobUpdate::Retrying {
                        error: error.clone(),
                    };
                    jobs.update(id.clone(), update)
                });
                let retry = self.services.delivery().retry(receipt, delay, error);
                let message = m.id.clone();
                let pending: BoxFuture<'_, _> = Box::pin(async move {
                    if let Some(update) = retrying
                        && let Err(e) = update.await
                    {
                        tracing::warn!(message = %message, error = %e, "cannot mark the job retrying; its record catches up on the next attempt");
                    }
                    retry.await
                });
                (pending, None)
            }
        }
    }

    /// A job's end, for its record.
    fn finished(
        &self,
        state: JobState,
        output: Option<&Output>,
        error: Option<String>,
    ) -> JobUpdate {
        JobUpdate::Finished {
            state,
            output: output.map(|o| JobOutput {
                status: o.status,
                headers: o.headers.clone(),
                body: o.body.clone(),
            }),
            error,
            retention_ms: self.services.job_settings().retention.as_millis() as u64,
        }
    }

    /// Why a message is dead-lettered, and the job's end state.
    fn given_up(&self, m: &Message, failure: &Failure) -> (JobState, String) {
        let (state, error) = if failure.is_retryable() {
            let error = format!(
                "gave up after {} attempts; last error: {failure}",
                m.dequeue_count
            );
            (JobState::Dead, error)
        } else {
            (JobState::Failed, failure.to_string())
        };
        (
            state,
            crate::text::capped(error, crate::queue::MAX_ERROR_BYTES),
        )
    }

    /// Ack or dead-letter with the replies; for a job, record its end
    /// (`done`) in the same durable step. Handed to the store now; the
    /// future is its answer.
    fn end<'a>(
        &'a self,
        job: &'a Job,
        receipt: Receipt,
        how: Settlement,
        reply: Vec<(String, NewMessage)>,
        done: JobUpdate,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        match job {
            Some((jobs, id)) => jobs.settle_job(receipt, how, reply, id.clone(), done),
            None => self.services.delivery().settle(receipt, how, reply),
        }
    }

    /// Wait for the settlement; true when it took effect. A reply the store
    /// refuses (a message stored by an older version, say) must not keep
    /// the message forever: it is settled again without the reply (nothing
    /// was applied, see `QueueDelivery::settle`).
    async fn settled(&self, d: &Delivery, job: &Job, settling: Settling<'_>) -> bool {
        let m = &d.message;
        let (pending, fallback) = settling;
        let settled = match (pending.await, fallback) {
            (Err(QueueError::Invalid(e)), Some((how, done))) => {
                tracing::error!(message = %m.id, error = %e, "cannot send the reply; settling without it");
                self.end(job, d.receipt.clone(), how, Vec::new(), done)
                    .await
            }
            (settled, _) => settled,
        };
        match settled {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(message = %m.id, "the lease had expired before the message was settled; it will be delivered again");
                false
            }
            Err(e) => {
                tracing::error!(message = %m.id, error = %e, "cannot settle a message; it will be delivered again");
                false
            }
        }
    }

    /// Callback: a finished job's record POSTed to its URL, if it has one.
    async fn callback(&self, jobs: &dyn JobStore, id: &str) {
        self.services.job_settings().callbacks.send(jobs, id).await;
    }

    /// The message to `reply_to`, if the message named one, telling how it
    /// ended; it is sent with the settlement, in the same durable step.
    fn reply(&self, m: &Message, status: &str, body: Vec<u8>) -> Vec<(String, NewMessage)> {
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
