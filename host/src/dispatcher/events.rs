//! The invocation event stream: one [`InvocationEvent`] when an invocation
//! starts and one when it ends, emitted from the one place every
//! invocation passes ([`super::Dispatcher::invoke`] and
//! [`super::Dispatcher::invoke_or_busy`]) for every trigger and both tiers
//! (a trusted function's outcome comes back from its worker like any
//! other). What is done with them is a subscriber's business: today's log
//! lines are the first ([`LogLine`]); records, metrics and traces hang on
//! the same stream.
//!
//! Subscribers are called inline, inside the invocation's tracing span, with
//! borrowed facts: they must be quick (count, copy, hand off), never wait.

use crate::exec::{Event, Failure, Outcome};
use std::sync::Arc;
use std::time::Duration;

/// What set an invocation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// An HTTP request to one of the function's routes.
    Http,
    /// A message on one of the function's queue bindings.
    Queue,
    /// One of its async jobs.
    Job,
    /// A change to a bucket it watches.
    Blob,
    /// A tick of its schedule.
    Timer,
    /// A direct invocation (the admin API's invoke).
    Invoke,
}

impl TriggerKind {
    /// The kind of trigger behind `event` (an invoke event of a job is the job's).
    pub fn of(event: &Event, job: bool) -> TriggerKind {
        match event {
            Event::Http(_) => TriggerKind::Http,
            Event::Queue(_) => TriggerKind::Queue,
            Event::Blob(_) => TriggerKind::Blob,
            Event::Timer(_) => TriggerKind::Timer,
            Event::Invoke(_) if job => TriggerKind::Job,
            Event::Invoke(_) => TriggerKind::Invoke,
        }
    }

    /// Its name, as logs and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Http => "http",
            TriggerKind::Queue => "queue",
            TriggerKind::Job => "job",
            TriggerKind::Blob => "blob",
            TriggerKind::Timer => "timer",
            TriggerKind::Invoke => "invoke",
        }
    }
}

/// The message a queue-delivered invocation came from (its queue binding,
/// async job, blob change or timer tick all arrive as one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The message's id.
    pub message_id: String,
    /// Its correlation id, if it has one.
    pub correlation_id: Option<String>,
    /// When it was sent, ms since the epoch.
    pub enqueued_at_ms: u64,
}

/// The facts of one invocation that both its events carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationInfo {
    /// The invocation's id (one per attempt).
    pub id: String,
    /// The function.
    pub function: String,
    /// The version that runs.
    pub version: u32,
    /// What set it off.
    pub trigger: TriggerKind,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The async job it belongs to.
    pub job_id: Option<String>,
    /// The message it came from.
    pub delivered: Option<Delivered>,
    /// How long it waited before it was handed to run: since its message
    /// was sent (or, for a timer, since its tick was due).
    pub queued: Option<Duration>,
    /// Is it a trusted function's (run by the trusted worker)?
    pub trusted: bool,
}

/// How an invocation ended, in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The guest returned its output.
    Succeeded,
    /// The guest asked to be retried.
    Retry,
    /// The guest failed for good.
    Failed,
    /// The guest broke a limit on what it hands the host.
    Limit,
    /// The sandbox stopped the guest (fuel, memory, time, a trap).
    Trapped,
}

impl OutcomeKind {
    /// The kind of `outcome`.
    pub fn of(outcome: &Outcome) -> OutcomeKind {
        match &outcome.result {
            Ok(_) => OutcomeKind::Succeeded,
            Err(Failure::Retry(_)) => OutcomeKind::Retry,
            Err(Failure::Fail(_)) => OutcomeKind::Failed,
            Err(Failure::Limit(_)) => OutcomeKind::Limit,
            Err(Failure::Trap(_)) => OutcomeKind::Trapped,
        }
    }

    /// Its name, as logs and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Retry => "retry",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Limit => "limit",
            OutcomeKind::Trapped => "trapped",
        }
    }
}

/// One event of the stream.
#[derive(Debug, Clone, Copy)]
pub enum InvocationEvent<'a> {
    /// Handed to the executor (it may still wait for a free instance).
    Started(&'a InvocationInfo),
    /// Over: the outcome carries the result or failure and its reason, the
    /// duration, fuel used, peak memory and the log bytes kept and dropped.
    Ended(&'a InvocationInfo, &'a Outcome),
}

impl InvocationEvent<'_> {
    /// The invocation the event is about.
    pub fn info(&self) -> &InvocationInfo {
        match self {
            InvocationEvent::Started(info) | InvocationEvent::Ended(info, _) => info,
        }
    }
}

/// Takes every invocation event of a host.
pub trait InvocationSubscriber: Send + Sync {
    /// Called inline for each event: quick, never waiting.
    fn on_event(&self, event: &InvocationEvent<'_>);
}

/// The subscribers of a host's stream.
pub(super) struct Stream {
    subscribers: std::sync::RwLock<Vec<Arc<dyn InvocationSubscriber>>>,
}

impl Stream {
    /// A stream whose first subscriber writes the log lines.
    pub(super) fn new() -> Stream {
        Stream {
            subscribers: std::sync::RwLock::new(vec![Arc::new(LogLine)]),
        }
    }

    pub(super) fn subscribe(&self, subscriber: Arc<dyn InvocationSubscriber>) {
        self.subscribers.write().unwrap().push(subscriber);
    }

    pub(super) fn emit(&self, event: InvocationEvent<'_>) {
        for s in self.subscribers.read().unwrap().iter() {
            s.on_event(&event);
        }
    }
}

/// The host log's lines for an invocation: its captured output, then a
/// DEBUG line when it succeeded or a WARN line with the reason when it did
/// not (in the invocation's span, which names function, version, id and
/// attempt).
pub struct LogLine;

impl InvocationSubscriber for LogLine {
    fn on_event(&self, event: &InvocationEvent<'_>) {
        let InvocationEvent::Ended(info, outcome) = event else {
            return;
        };
        outcome.logs.emit();
        let trigger = info.trigger.as_str();
        let elapsed_us = outcome.elapsed.as_micros() as u64;
        let queued_ms = info.queued.map(|q| q.as_millis() as u64);
        match &outcome.result {
            Ok(out) => tracing::debug!(
                trigger,
                status = out.status,
                fuel = outcome.fuel_used,
                memory = outcome.peak_memory_bytes,
                elapsed_us,
                queued_ms,
                "invocation succeeded"
            ),
            Err(failure) => tracing::warn!(
                trigger,
                fuel = outcome.fuel_used,
                memory = outcome.peak_memory_bytes,
                elapsed_us,
                queued_ms,
                outcome = OutcomeKind::of(outcome).as_str(),
                reason = %crate::text::LogSafe(&failure.to_string()),
                "invocation failed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Backends;
    use crate::dispatcher::{Attempt, Authority, Dispatcher};
    use crate::exec::{
        Busy, Execution, Executor, LoadError, Logs, Output, QueueMessage, Reporter, TimerTick, Wait,
    };
    use crate::services::Services;
    use crate::task::BoxFuture;
    use std::sync::Mutex;

    /// Runs nothing: answers each execution with the outcome its event's
    /// payload names, with fixed figures.
    struct Figures;

    impl Executor for Figures {
        fn prepare(&self, wasm: Vec<u8>) -> BoxFuture<'_, Result<String, LoadError>> {
            Box::pin(async move { Ok(crate::files::sha256_hex(&wasm)) })
        }

        fn execute(
            &self,
            execution: Execution,
            _reporter: Option<Arc<dyn Reporter>>,
            _wait: Wait,
        ) -> BoxFuture<'_, Result<Outcome, Busy>> {
            let fails = matches!(&execution.event, Event::Invoke(p) if p == b"fail");
            Box::pin(async move {
                Ok(Outcome {
                    result: if fails {
                        Err(Failure::Fail("no such order".into()))
                    } else {
                        Ok(Output {
                            status: 200,
                            headers: Vec::new(),
                            body: Vec::new(),
                        })
                    },
                    fuel_used: 1234,
                    elapsed: Duration::from_millis(7),
                    peak_memory_bytes: 1 << 20,
                    progress: None,
                    logs: Logs {
                        stdout: "hello\n".into(),
                        stdout_dropped: 10,
                        ..Logs::default()
                    },
                })
            })
        }

        fn in_flight(&self) -> usize {
            0
        }
    }

    /// At an end: the outcome's kind, fuel, peak memory, stdout bytes dropped.
    type Figures4 = (OutcomeKind, u64, u64, u64);

    /// Keeps what it is told, as a record store would.
    #[derive(Default)]
    struct Kept(Mutex<Vec<(InvocationInfo, Option<Figures4>)>>);

    impl InvocationSubscriber for Kept {
        fn on_event(&self, event: &InvocationEvent<'_>) {
            let ended = match event {
                InvocationEvent::Started(_) => None,
                InvocationEvent::Ended(_, o) => Some((
                    OutcomeKind::of(o),
                    o.fuel_used,
                    o.peak_memory_bytes,
                    o.logs.stdout_dropped,
                )),
            };
            self.0.lock().unwrap().push((event.info().clone(), ended));
        }
    }

    #[tokio::test]
    async fn every_invocation_starts_and_ends_on_the_stream_with_its_facts() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::SystemClock);
        let backends = Backends::embedded(dir.path(), clock).unwrap();
        let registry = Arc::new(crate::registry::Registry::open(dir.path()).unwrap());
        let settings = crate::jobs::JobSettings::new(Duration::from_secs(60));
        let services = Arc::new(Services::new(backends, registry, settings, Arc::default()));
        let dispatcher = Dispatcher::start(Arc::new(Figures), services)
            .await
            .unwrap();
        let kept = Arc::new(Kept::default());
        dispatcher.subscribe_invocations(kept.clone());
        let manifest = "name = \"orders\"\n".to_string();
        let deployed = (dispatcher.deploy(manifest, b"wasm".to_vec(), Authority::Admin))
            .await
            .unwrap();

        let now = crate::clock::now_ms();
        let message = QueueMessage {
            id: "m-1".into(),
            queue: "work".into(),
            body: Vec::new(),
            attributes: Vec::new(),
            dequeue_count: 2,
            enqueued_at_ms: now - 5_000,
            group: None,
            correlation_id: Some("c-1".into()),
        };
        let delivered = Delivered {
            message_id: "m-1".into(),
            correlation_id: Some("c-1".into()),
            enqueued_at_ms: now - 5_000,
        };
        let queue_attempt = Attempt {
            number: 2,
            delivered: Some(delivered.clone()),
            ..Attempt::default()
        };
        let job_attempt = Attempt {
            job_id: Some("j-1".into()),
            ..Attempt::default()
        };
        let tick = TimerTick {
            schedule: "0 * * * * *".into(),
            scheduled_at_ms: now - 2_000,
            past_due: false,
        };
        let (queue_id, _) =
            (dispatcher.invoke(deployed.clone(), Event::Queue(message), queue_attempt)).await;
        (dispatcher.invoke(
            deployed.clone(),
            Event::Invoke(b"fail".to_vec()),
            job_attempt,
        ))
        .await;
        (dispatcher.invoke(deployed.clone(), Event::Timer(tick), Attempt::default())).await;

        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 6, "a start and an end each");
        for pair in kept.chunks(2) {
            assert_eq!(pair[0].0, pair[1].0, "both events carry the same facts");
            assert!(
                pair[0].1.is_none() && pair[1].1.is_some(),
                "start, then end"
            );
        }
        let (queue, job, timer) = (&kept[1], &kept[3], &kept[5]);
        assert_eq!(queue.0.id, queue_id);
        assert_eq!((queue.0.function.as_str(), queue.0.version), ("orders", 1));
        assert_eq!((queue.0.trigger, queue.0.attempt), (TriggerKind::Queue, 2));
        assert_eq!(queue.0.delivered.as_ref(), Some(&delivered));
        let queued = queue.0.queued.unwrap();
        assert!(
            queued >= Duration::from_secs(5) && queued < Duration::from_secs(60),
            "{queued:?}"
        );
        assert_eq!(queue.1, Some((OutcomeKind::Succeeded, 1234, 1 << 20, 10)));
        assert_eq!(
            (job.0.trigger, job.0.job_id.as_deref()),
            (TriggerKind::Job, Some("j-1"))
        );
        assert_eq!(job.1.unwrap().0, OutcomeKind::Failed);
        assert_eq!(job.0.queued, None, "not delivered by a queue here");
        assert_eq!(timer.0.trigger, TriggerKind::Timer);
        assert!(
            timer.0.queued.unwrap() >= Duration::from_secs(2),
            "since the tick was due"
        );
    }
}
