//! Delivery's unit tests. The scaler and backoff arithmetic first; then a
//! queue binding end to end against the embedded queue and a scripted
//! [`Functions`] (no sandbox), on a paused runtime whose clock the queue
//! shares: time moves only when a test or a script waits, so leases,
//! backoff and scaling are checked to the millisecond without sleeping.

use super::settle::{Ended, Settle, Slot};
use super::*;
use crate::backends::Backends;
use crate::clock::Clock;
use crate::dispatcher::{Attempt, DeployError, Functions};
use crate::exec::{Event, Failure, Logs, Outcome, Output, Reporter};
use crate::jobs::callback::{CallbackPolicy, Callbacks, Reach};
use crate::jobs::{JobSettings, JobState, NewJob};
use crate::manifest::Manifest;
use crate::queue::{Delivery, NewMessage, QueueStats};
use crate::registry::{Registry, VersionRecord};
use crate::services::Services;
use crate::task::BoxFuture;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use tokio::sync::watch;

#[test]
fn lanes_split_the_desired_instances_by_receive_size() {
    let split = |limit| {
        (0..4)
            .map(|i| lane_limit(limit, i, 4, 10))
            .collect::<Vec<_>>()
    };
    // SQS (10 a receive, 4 lanes): 16 wanted is one full receive and
    // one of 6 in flight at once; past 40 the last lane takes the rest.
    assert_eq!(split(16), [10, 6, 0, 0]);
    assert_eq!(split(1), [1, 0, 0, 0]);
    assert_eq!(split(64), [10, 10, 10, 34]);
    // The embedded store: one lane takes everything.
    assert_eq!(lane_limit(500, 0, 1, 1000), 500);
}

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

#[tokio::test(start_paused = true)]
async fn scaling_follows_the_backlog_up_at_once_and_down_after_the_cooldown() {
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

// ---- A binding against the embedded queue and a scripted function ----

/// The function the tests deliver to: a queue binding with a 10 s lease,
/// three attempts and a 1 s first backoff; one that scales (with a lease
/// longer than its test, so that a store slowed by a busy machine never
/// loses one); its async jobs; and a blob trigger (whose host-owned queue
/// carries blob changes).
const MANIFEST: &str = r#"
name = "job"
[[triggers.queue]]
queue = "work"
visibility_timeout = "10s"
max_attempts = 3
backoff_initial = "1s"
backoff_max = "30s"
min_concurrency = 0
max_concurrency = 4
target_backlog = 10
scale_down_cooldown = "5s"
[[triggers.queue]]
queue = "scaled"
visibility_timeout = "60s"
min_concurrency = 0
max_concurrency = 4
target_backlog = 10
scale_down_cooldown = "5s"
[[triggers.blob]]
bucket = "uploads"
"#;

const LEASE: Duration = Duration::from_secs(10);

/// The queue's clock: the paused runtime's time (read through its handle,
/// as the store's own threads read it too), plus jumps a test makes without
/// firing any timer (a lease that runs out under a worker that was not
/// scheduled in time).
struct PausedClock {
    runtime: tokio::runtime::Handle,
    start: Instant,
    jumped_ms: AtomicU64,
}

impl PausedClock {
    fn jump(&self, by: Duration) {
        self.jumped_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for PausedClock {
    fn now_ms(&self) -> u64 {
        let _runtime = self.runtime.enter();
        1_700_000_000_000
            + self.start.elapsed().as_millis() as u64
            + self.jumped_ms.load(Ordering::SeqCst)
    }
}

/// One invocation, as the scripted function got it.
#[derive(Debug, Clone)]
struct Call {
    event: Event,
    attempt: u32,
    checkpoint: Option<Vec<u8>>,
}

impl Call {
    fn body(&self) -> &[u8] {
        match &self.event {
            Event::Queue(m) => &m.body,
            Event::Invoke(payload) => payload,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

type Run = BoxFuture<'static, Result<Output, Failure>>;
type Script = Box<dyn Fn(Call, Option<Arc<dyn Reporter>>) -> Run + Send + Sync>;

/// [`Functions`] with one active version, whose invocations a test scripts.
struct Scripted {
    deployed: Arc<Deployed>,
    changes: watch::Sender<u64>,
    calls: Mutex<Vec<Call>>,
    script: Script,
}

impl Functions for Scripted {
    fn get(&self, function: &str) -> Option<Arc<Deployed>> {
        (function == self.deployed.record.name).then(|| self.deployed.clone())
    }

    fn active(&self) -> Vec<Arc<Deployed>> {
        vec![self.deployed.clone()]
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn invoke(
        &self,
        _deployed: Arc<Deployed>,
        event: Event,
        attempt: Attempt,
    ) -> BoxFuture<'_, (String, Outcome)> {
        let call = Call {
            event,
            attempt: attempt.number,
            checkpoint: attempt.checkpoint,
        };
        self.calls.lock().unwrap().push(call.clone());
        let run = (self.script)(call, attempt.reporter);
        Box::pin(async move {
            let started = Instant::now();
            let result = run.await;
            let outcome = Outcome {
                result,
                fuel_used: 0,
                peak_memory_bytes: 0,
                elapsed: started.elapsed(),
                progress: None,
                logs: Logs::default(),
            };
            (uuid::Uuid::now_v7().to_string(), outcome)
        })
    }

    fn caught_up(&self, _at_ms: u64) -> BoxFuture<'_, Result<(), DeployError>> {
        Box::pin(async { Ok(()) })
    }
}

fn ok(body: &str) -> Result<Output, Failure> {
    Ok(Output {
        status: 200,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

/// A host's delivery without the host: the embedded stores on the paused
/// clock, the services over them, and the scripted function.
struct Harness {
    _dir: tempfile::TempDir,
    clock: Arc<PausedClock>,
    services: Arc<Services>,
    functions: Arc<Scripted>,
}

impl Harness {
    /// `script` gets the services and clock, to act on the queue from
    /// inside an invocation as another worker would.
    fn new(script: impl FnOnce(Arc<Services>, Arc<PausedClock>) -> Script) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(PausedClock {
            runtime: tokio::runtime::Handle::current(),
            start: Instant::now(),
            jumped_ms: AtomicU64::new(0),
        });
        let backends = Backends::embedded(dir.path(), clock.clone()).unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let callbacks = CallbackPolicy {
            allow: vec![Reach::Loopback],
        };
        let settings = JobSettings {
            retention: Duration::from_secs(3600),
            callbacks: Arc::new(Callbacks::new(callbacks)),
        };
        let services = Arc::new(Services::new(backends, registry, settings, Arc::default()));
        let manifest = Manifest::parse("fnhost.toml", MANIFEST).unwrap();
        let deployed = Arc::new(Deployed {
            profile: Arc::new(manifest.profile(1, "digest")),
            manifest,
            record: VersionRecord {
                name: "job".into(),
                version: 1,
                digest: "digest".into(),
                manifest: MANIFEST.into(),
                size: 0,
                created_at_ms: 0,
            },
        });
        let functions = Arc::new(Scripted {
            deployed,
            changes: watch::Sender::new(0),
            calls: Mutex::default(),
            script: script(services.clone(), clock.clone()),
        });
        Harness {
            _dir: dir,
            clock,
            services,
            functions,
        }
    }

    fn queues(&self) -> &Arc<dyn crate::queue::QueueBackend> {
        self.services.queues()
    }

    fn policy(&self, queue: &str) -> QueuePolicy {
        (self.functions.deployed.manifest.queue_policies())
            .into_iter()
            .find(|p| p.queue == queue)
            .unwrap()
    }

    /// The host-owned queue of the blob trigger.
    fn blob_queue(&self) -> String {
        (self.functions.deployed.manifest.queue_policies())
            .into_iter()
            .find(|p| matches!(p.source, crate::manifest::Source::Blob(_)))
            .unwrap()
            .queue
    }

    async fn send(&self, queue: &str, msg: NewMessage) -> String {
        self.queues().send(queue, msg).await.unwrap().id
    }

    async fn send_body(&self, queue: &str, body: &str) -> String {
        let msg = NewMessage {
            body: body.as_bytes().to_vec(),
            ..NewMessage::default()
        };
        self.send(queue, msg).await
    }

    /// Lease what is receivable now, as a worker of the binding would.
    async fn lease(&self, queue: &str, max: usize) -> Vec<Delivery> {
        self.queues().receive(queue, max, LEASE).await.unwrap()
    }

    async fn lease_one(&self, queue: &str) -> Delivery {
        let mut got = self.lease(queue, 1).await;
        assert_eq!(got.len(), 1, "one message should be receivable on {queue}");
        got.remove(0)
    }

    /// Process one delivery as the binding's worker does.
    async fn process(&self, queue: &str, d: Delivery) -> Ended {
        let settle = Settle {
            functions: self.functions.clone(),
            services: self.services.clone(),
            deployed: self.functions.deployed.clone(),
            policy: self.policy(queue),
        };
        let stats = self.services.binding_stats("job", queue);
        stats.running.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            stats,
            lane: Arc::new(AtomicUsize::new(1)),
            done: Arc::new(Notify::new()),
        };
        settle.process(d, slot).await
    }

    async fn deliver_next(&self, queue: &str) -> Ended {
        let d = self.lease_one(queue).await;
        self.process(queue, d).await
    }

    async fn stats(&self, queue: &str) -> QueueStats {
        self.queues().stats(queue).await.unwrap()
    }

    fn calls(&self) -> Vec<Call> {
        self.functions.calls.lock().unwrap().clone()
    }
}

fn empty(s: &QueueStats) -> bool {
    s.ready + s.delayed + s.in_flight == 0
}

#[tokio::test(start_paused = true)]
async fn a_success_is_acknowledged_and_the_message_is_gone() {
    let h = Harness::new(|_, _| Box::new(|_, _| Box::pin(async { ok("done") })));
    h.send_body("work", "hello").await;
    assert_eq!(h.deliver_next("work").await, Ended::Gone);
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].attempt, calls[0].body()), (1, &b"hello"[..]));
    assert!(
        matches!(&calls[0].event, Event::Queue(m) if m.queue == "work" && m.dequeue_count == 1)
    );
    let stats = h.stats("work").await;
    assert!(
        empty(&stats) && stats.dead_letters == 0,
        "acknowledged: {stats:?}"
    );
    let running = h
        .services
        .binding_stats("job", "work")
        .running
        .load(Ordering::Relaxed);
    assert_eq!(running, 0, "the instance is given back");
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_a_jittered_backoff_in_the_upper_half_of_its_delay() {
    // First attempts ask to be retried; the policy's first delay is 1 s,
    // so each message comes back between 500 ms and 1 s later.
    let h = Harness::new(|_, _| {
        Box::new(|call, _| {
            Box::pin(async move {
                if call.attempt == 1 {
                    Err(Failure::Retry("busy".into()))
                } else {
                    ok("done")
                }
            })
        })
    });
    let n = 20;
    for i in 0..n {
        h.send_body("work", &format!("m{i}")).await;
    }
    let leased = h.lease("work", n).await;
    assert_eq!(leased.len(), n);
    let start = Instant::now();
    for d in leased {
        assert_eq!(h.process("work", d).await, Ended::Again);
    }
    assert_eq!(Instant::now(), start, "no time passed while settling");
    let stats = h.stats("work").await;
    assert_eq!(
        (stats.delayed, stats.ready, stats.in_flight),
        (n as u64, 0, 0)
    );
    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(
        h.lease("work", n).await.is_empty(),
        "nothing comes back before half the delay"
    );
    tokio::time::advance(Duration::from_millis(251)).await; // 750 ms
    let early = h.lease("work", n).await;
    tokio::time::advance(Duration::from_millis(250)).await; // 1 s
    let late = h.lease("work", n).await;
    assert_eq!(early.len() + late.len(), n, "all back by the full delay");
    assert!(
        !early.is_empty() && !late.is_empty(),
        "jitter spreads the retries ({} by 750 ms, {} after)",
        early.len(),
        late.len()
    );
    for d in early.into_iter().chain(late) {
        assert_eq!(d.message.dequeue_count, 2);
        assert!(
            d.message
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("busy")),
            "{:?}",
            d.message.last_error
        );
        assert_eq!(h.process("work", d).await, Ended::Gone);
    }
    assert!(empty(&h.stats("work").await));
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_or_a_permanent_failure_dead_letters_the_message() {
    let h = Harness::new(|_, _| {
        Box::new(|call, _| {
            Box::pin(async move {
                match call.body() {
                    b"bad" => Err(Failure::Fail("bad input".into())),
                    _ => Err(Failure::Retry("still busy".into())),
                }
            })
        })
    });
    let flaky = h.send_body("work", "flaky").await;
    for attempt in 1..=3 {
        let d = h.lease_one("work").await;
        assert_eq!(
            (d.message.id.as_str(), d.message.dequeue_count),
            (flaky.as_str(), attempt)
        );
        let ended = h.process("work", d).await;
        let expected = if attempt < 3 {
            Ended::Again
        } else {
            Ended::Gone
        };
        assert_eq!(ended, expected, "attempt {attempt}");
        tokio::time::advance(Duration::from_secs(30)).await; // past any backoff
    }
    let bad = h.send_body("work", "bad").await;
    assert_eq!(
        h.deliver_next("work").await,
        Ended::Gone,
        "no retry of a permanent failure"
    );
    let dead = h.queues().dead_letters("work", 10).await.unwrap();
    let of = |id: &str| dead.iter().find(|d| d.message.id == id).unwrap();
    let (flaky, bad) = (of(&flaky), of(&bad));
    assert_eq!(flaky.attempts, 3);
    assert!(
        flaky.error.contains("gave up after 3 attempts") && flaky.error.contains("still busy"),
        "{}",
        flaky.error
    );
    assert_eq!(flaky.function.as_deref(), Some("job@v1"));
    assert_eq!(bad.attempts, 1);
    assert!(bad.error.contains("bad input"), "{}", bad.error);
    assert_eq!(h.calls().len(), 4);
    let stats = h.stats("work").await;
    assert!(empty(&stats) && stats.dead_letters == 2, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_while_a_long_invocation_runs() {
    // A run of 3.5 leases: halfway through, another worker finds nothing
    // to take; at the end the message is acknowledged, delivered once.
    let h = Harness::new(|services, _| {
        Box::new(move |_, _| {
            let services = services.clone();
            Box::pin(async move {
                step_sleep(LEASE * 2).await;
                let other = services.queues().receive("work", 10, LEASE).await.unwrap();
                assert!(
                    other.is_empty(),
                    "the lease ran out under a running invocation"
                );
                step_sleep(LEASE * 3 / 2).await;
                ok("done")
            })
        })
    });
    h.send_body("work", "long").await;
    let start = Instant::now();
    assert_eq!(h.deliver_next("work").await, Ended::Gone);
    let took = start.elapsed();
    assert!(took >= LEASE * 7 / 2, "ran through 3.5 leases: {took:?}");
    assert_eq!(h.calls().len(), 1);
    assert!(empty(&h.stats("work").await));
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_mid_run_leaves_the_message_to_the_worker_that_has_it() {
    // The invocation stalls past its lease (the clock jumps), another
    // worker takes the message; the first one's renewal and settlement are
    // refused, and the message stays with the other.
    let taken: Arc<Mutex<Option<Delivery>>> = Arc::default();
    let stash = taken.clone();
    let h = Harness::new(move |services, clock| {
        Box::new(move |_, _| {
            let (services, clock, stash) = (services.clone(), clock.clone(), stash.clone());
            Box::pin(async move {
                clock.jump(LEASE + Duration::from_secs(1));
                let mut other = services
                    .queues()
                    .receive("work", 1, LEASE * 6)
                    .await
                    .unwrap();
                assert_eq!(other.len(), 1, "the lease ran out: another worker takes it");
                *stash.lock().unwrap() = other.pop();
                tokio::time::sleep(LEASE).await; // a renewal comes and is refused
                ok("done")
            })
        })
    });
    let id = h.send_body("work", "stalled").await;
    assert_eq!(h.deliver_next("work").await, Ended::Again);
    let stats = h.stats("work").await;
    assert_eq!(
        (stats.in_flight, stats.ready, stats.dead_letters),
        (1, 0, 0),
        "{stats:?}"
    );
    let other = taken.lock().unwrap().take().unwrap();
    assert_eq!(
        (other.message.id.as_str(), other.message.dequeue_count),
        (id.as_str(), 2)
    );
    assert!(
        h.queues().ack(other.receipt).await.unwrap(),
        "the other worker's lease holds"
    );
    assert!(empty(&h.stats("work").await));
}

#[tokio::test(start_paused = true)]
async fn the_reply_goes_to_reply_to_with_the_settlement() {
    let h = Harness::new(|_, _| {
        Box::new(|call, _| {
            Box::pin(async move {
                match call.body() {
                    b"bad" => Err(Failure::Fail("no such order".into())),
                    _ => ok("confirmed"),
                }
            })
        })
    });
    let mut asked = Vec::new();
    for (body, correlation) in [("order", Some("c-1")), ("bad", None)] {
        let msg = NewMessage {
            body: body.as_bytes().to_vec(),
            reply_to: Some("replies".into()),
            correlation_id: correlation.map(Into::into),
            ..NewMessage::default()
        };
        asked.push(h.send("work", msg).await);
        assert_eq!(h.deliver_next("work").await, Ended::Gone);
    }
    let replies = h.lease("replies", 10).await;
    assert_eq!(replies.len(), 2);
    let attr = |m: &crate::queue::Message, k: &str| {
        m.attributes
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let (ok_reply, failed) = (&replies[0].message, &replies[1].message);
    assert_eq!(ok_reply.body, b"confirmed");
    assert_eq!(
        attr(ok_reply, "fnhost-status").as_deref(),
        Some("succeeded")
    );
    assert_eq!(attr(ok_reply, "fnhost-message-id"), Some(asked[0].clone()));
    assert_eq!(attr(ok_reply, "fnhost-function").as_deref(), Some("job"));
    assert_eq!(ok_reply.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(attr(failed, "fnhost-status").as_deref(), Some("failed"));
    assert!(String::from_utf8_lossy(&failed.body).contains("no such order"));
    // Without a correlation id of its own, the reply carries the message's id.
    assert_eq!(failed.correlation_id, Some(asked[1].clone()));
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_saved_by_one_attempt_is_handed_to_the_next() {
    let h = Harness::new(|_, _| {
        Box::new(|call, reporter| {
            Box::pin(async move {
                if call.attempt == 1 {
                    let reporter = reporter.expect("a queue delivery has a reporter");
                    reporter.checkpoint(b"step-3".to_vec()).await.unwrap();
                    return Err(Failure::Retry("interrupted".into()));
                }
                ok("done")
            })
        })
    });
    h.send_body("work", "resumable").await;
    assert_eq!(h.deliver_next("work").await, Ended::Again);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(h.deliver_next("work").await, Ended::Gone);
    let calls = h.calls();
    assert_eq!(calls[0].checkpoint, None);
    assert_eq!(calls[1].checkpoint.as_deref(), Some(&b"step-3"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_that_fails_is_not_dropped_the_message_comes_back_and_goes_then() {
    // An unreadable blob change is dead-lettered at once; here its lease has
    // run out by then (another worker has it), so that dead letter is
    // refused. The message is neither lost nor dead-lettered twice: the
    // worker that holds it dead-letters it.
    let h = Harness::new(|_, _| Box::new(|_, _| Box::pin(async { ok("never runs") })));
    let queue = h.blob_queue();
    h.send_body(&queue, "not a blob change").await;
    let first = h.lease_one(&queue).await;
    h.clock.jump(LEASE + Duration::from_secs(1));
    let second = h.lease_one(&queue).await;
    assert_eq!(h.process(&queue, first).await, Ended::Again);
    let stats = h.stats(&queue).await;
    assert_eq!((stats.in_flight, stats.dead_letters), (1, 0), "{stats:?}");
    assert_eq!(h.process(&queue, second).await, Ended::Gone);
    let dead = h.queues().dead_letters(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error.contains("not a blob change"),
        "{}",
        dead[0].error
    );
    assert!(
        h.calls().is_empty(),
        "an unreadable message never reaches the function"
    );
}

#[tokio::test(start_paused = true)]
async fn the_binding_scales_with_the_backlog_up_at_once_and_down_after_the_cooldown() {
    // Invocations hold until the test opens the gate, so the instances the
    // worker runs at once can be counted.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let h = Harness::new(move |_, _| {
        Box::new(move |_, _| {
            let held = held.clone();
            Box::pin(async move {
                held.acquire().await.unwrap().forget();
                ok("done")
            })
        })
    });
    let stats = h.services.binding_stats("job", "scaled");
    let figures = || {
        (
            stats.desired.load(Ordering::Relaxed),
            stats.running.load(Ordering::Relaxed),
        )
    };
    for i in 0..30 {
        h.send_body("scaled", &format!("m{i}")).await;
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let binding = BindingLoop::new(
        h.functions.clone(),
        h.services.clone(),
        "job".into(),
        "scaled".into(),
        shutdown.clone(),
        tracker.clone(),
    );
    let running = tokio::spawn(binding.run());
    // 30 waiting at a target of 10 each: 3 instances.
    wait_for(|| figures() == (3, 3), "3 desired and running").await;
    pass(Duration::from_secs(2)).await;
    assert_eq!(figures(), (3, 3), "no more than desired");
    assert_eq!(h.calls().len(), 3);
    // 127 waiting: the binding's maximum, 4.
    for i in 0..100 {
        h.send_body("scaled", &format!("n{i}")).await;
    }
    wait_for(|| figures() == (4, 4), "4 desired and running").await;
    pass(Duration::from_secs(2)).await;
    assert_eq!(figures(), (4, 4), "capped at max_concurrency");
    // Let everything run: the backlog drains, and once it has stayed low
    // for the cooldown the binding goes back to zero.
    gate.add_permits(1_000);
    let h = &h;
    wait_for_async(
        || async { empty(&h.stats("scaled").await) },
        "the queue drained",
    )
    .await;
    let drained = Instant::now();
    wait_for(|| figures() == (0, 0), "back to zero").await;
    assert!(
        drained.elapsed() >= Duration::from_secs(5),
        "not down before the 5 s cooldown ({:?})",
        drained.elapsed()
    );
    let calls = h.calls();
    assert_eq!(calls.len(), 130, "each message once");
    assert!(calls.iter().all(|c| c.attempt == 1));
    shutdown.cancel();
    running.await.unwrap();
    tracker.close();
    tracker.wait().await;
}

/// Let `d` pass on the paused clock from inside an invocation, by hand,
/// in steps of 100 ms (the runtime may also jump to the code's own next
/// timer, a renewal, between steps: never past it).
async fn step_sleep(d: Duration) {
    let step = Duration::from_millis(100);
    let end = Instant::now() + d;
    while Instant::now() < end {
        tokio::time::advance(step.min(end - Instant::now())).await;
    }
}

/// Move the paused clock by hand, 10 ms at a time, until `ready`: between
/// steps the store's threads get a real moment to answer, so no lease or
/// backoff runs out while a renewal is on its way (the clock never races
/// ahead of them, as the runtime's auto-advance would). Bounded by real
/// time, so a binding that never gets there fails the test.
async fn wait_for(ready: impl Fn() -> bool, what: &str) {
    wait_for_async(|| std::future::ready(ready()), what).await
}

async fn wait_for_async<F: std::future::Future<Output = bool>>(ready: impl Fn() -> F, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(std::time::Instant::now() < deadline, "never got to: {what}");
        step().await;
    }
}

/// Let `d` pass on the paused clock, by hand as [`wait_for`] does.
async fn pass(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        step().await;
    }
}

async fn step() {
    std::thread::sleep(Duration::from_millis(1));
    tokio::time::advance(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_finished_job_is_recorded_replied_and_called_back() {
    // A real loopback server takes the callback (this test runs on the
    // real clock: the callback is a real HTTP request).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(1);
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let tx = tx.clone();
            async move {
                tx.send(body.0).await.unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let h = Harness::new(|_, _| Box::new(|_, _| Box::pin(async { ok("shipped") })));
    let job = NewJob {
        function: "job".into(),
        payload: b"order-7".to_vec(),
        callback_url: Some(url),
        reply_to: Some("replies".into()),
        correlation_id: Some("c-7".into()),
        not_before_ms: None,
        delay_ms: None,
    };
    let record = h.services.jobs().submit(job).await.unwrap();
    let queue = crate::names::job_queue("job");
    assert_eq!(h.deliver_next(&queue).await, Ended::Gone);
    assert_eq!(h.calls()[0].body(), b"order-7");
    let done = h
        .services
        .jobs()
        .get(record.id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result.as_deref(), Some(&b"shipped"[..]));
    let reply = h.lease_one("replies").await.message;
    assert_eq!(reply.body, b"shipped");
    assert_eq!(reply.correlation_id.as_deref(), Some("c-7"));
    let posted = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the callback arrives")
        .unwrap();
    assert_eq!(posted["id"], record.id.as_str());
    assert_eq!(posted["state"], "succeeded", "{posted}");
}
