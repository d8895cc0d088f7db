//! One suite of queue checks, run against every `QueueBackend` stack a
//! host composes: the embedded store; the routed stack over it (users'
//! queues on one store, the host's own on another); the sealed stack over
//! it (sensitive queues sealed to the trusted worker; the suite's queues
//! are not sensitive, so every call goes through the decorator to the
//! store and back); SQS against a local moto server; and the routed stack
//! over SQS (the host's own queues embedded, users' on SQS, as a host with
//! `[queues] backend = "sqs"` runs). A new backend or decorator is proven
//! by passing it. Where a backend lacks a feature (it says so in
//! `features`), the check asserts the refusal and its message instead.
//! Real time, short: leases of 1-2 s.

use fnhost::backends::aws::Target;
use fnhost::backends::embedded::EmbeddedQueues;
use fnhost::backends::routed::RoutedQueues;
use fnhost::backends::s3state::S3State;
use fnhost::backends::sealed_queues::{Opener, SealedQueues, Sealer};
use fnhost::backends::sqs::{SqsQueues, SqsSettings};
use fnhost::clock::SystemClock;
use fnhost::queue::{Delivery, NewMessage, QueueBackend, QueueDelivery, QueueError, Settlement};
use fnhost::state::StateStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend under test, and a queue name no other test uses.
struct Under {
    backend: Arc<dyn QueueBackend>,
    queue: String,
    /// Where the backend keeps checkpoints outside its queues, if it does.
    checkpoints: Option<Arc<dyn StateStore>>,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded(name: &str) -> Under {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueues::open(dir.path(), Arc::new(SystemClock)).unwrap();
    Under {
        backend: Arc::new(q),
        queue: name.to_string(),
        checkpoints: None,
        _dir: Some(dir),
    }
}

async fn sqs(name: &str) -> Under {
    // Started with blocking calls: off the async threads.
    let moto = tokio::task::spawn_blocking(fnhost_tests::moto)
        .await
        .unwrap();
    // Each test its own prefix: queues never meet across tests.
    let prefix = format!("t{}-", &uuid_like()[..12]);
    let settings = SqsSettings {
        prefix,
        fifo: vec!["ordered".into()],
        create: true,
    };
    // Checkpoints in the fleet's state bucket, as a fleet host keeps them.
    let state = S3State::connect(
        target(moto),
        "fnhost-queue-tests".into(),
        settings.prefix.clone(),
    )
    .await
    .unwrap();
    state.create_bucket().await.unwrap();
    let state: Arc<dyn StateStore> = Arc::new(state);
    let q = SqsQueues::connect(target(moto), settings, Arc::new(SystemClock))
        .await
        .unwrap()
        .with_checkpoints(state.clone());
    Under {
        backend: Arc::new(q),
        queue: name.to_string(),
        checkpoints: Some(state),
        _dir: None,
    }
}

/// Users' queues on one embedded store, the host's own on another.
async fn routed_embedded(name: &str) -> Under {
    let dir = tempfile::tempdir().unwrap();
    let open = |sub: &str| -> Arc<dyn QueueBackend> {
        let path = dir.path().join(sub);
        std::fs::create_dir(&path).unwrap();
        Arc::new(EmbeddedQueues::open(&path, Arc::new(SystemClock)).unwrap())
    };
    let backend = RoutedQueues {
        host: open("host"),
        user: open("user"),
        fleet: false,
        blob_queues: false,
    };
    Under {
        backend: Arc::new(backend),
        queue: name.to_string(),
        checkpoints: None,
        _dir: Some(dir),
    }
}

/// The embedded store behind the sealing decorator of a host with a
/// sensitive queue (not the suite's).
async fn sealed_embedded(name: &str) -> Under {
    let mut u = embedded(name).await;
    let keys = u._dir.as_ref().unwrap().path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let opener = Opener::open_or_create(&keys).unwrap();
    let sealer = Sealer::new(opener.public_key()).unwrap();
    let sensitive = Arc::new(BTreeSet::from(["vault".to_string()]));
    u.backend = Arc::new(SealedQueues::new(u.backend, sensitive, sealer));
    u
}

/// The host's own queues embedded, users' on SQS (moto).
async fn routed_sqs(name: &str) -> Under {
    let mut u = sqs(name).await;
    let dir = tempfile::tempdir().unwrap();
    let host = EmbeddedQueues::open(dir.path(), Arc::new(SystemClock)).unwrap();
    u.backend = Arc::new(RoutedQueues {
        host: Arc::new(host),
        user: u.backend,
        fleet: false,
        blob_queues: false,
    });
    u._dir = Some(dir);
    u
}

fn target(moto: &fnhost_tests::Moto) -> Target {
    Target {
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint.clone()),
        keys: Some(("testing".into(), "testing".into())),
    }
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}{:016x}", h.finish(), h.finish().rotate_left(17))
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

/// Receive until `n` messages came or `secs` passed.
async fn receive_n(u: &Under, n: usize, vis: Duration, secs: u64) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let want = (n - got.len()).min(u.backend.features(&u.queue).max_receive);
        let mut more = u
            .backend
            .receive_waiting(&u.queue, want, vis, Duration::from_secs(1))
            .await
            .unwrap();
        got.append(&mut more);
    }
    got
}

const VIS: Duration = Duration::from_secs(30);

async fn a_message_round_trips_with_everything_it_carries(u: Under) {
    let m = NewMessage {
        body: vec![0, 1, 2, 255, b'x'],
        attributes: vec![("trace".into(), "t-1".into())],
        correlation_id: Some("c-1".into()),
        reply_to: Some("replies".into()),
        ..Default::default()
    };
    let sent = u.backend.send(&u.queue, m).await.unwrap();
    let got = receive_n(&u, 1, VIS, 10).await;
    assert_eq!(got.len(), 1);
    let d = &got[0].message;
    assert_eq!(d.id, sent.id);
    assert_eq!(d.body, vec![0, 1, 2, 255, b'x'], "binary bodies survive");
    assert_eq!(d.attributes, vec![("trace".to_string(), "t-1".to_string())]);
    assert_eq!(d.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(d.reply_to.as_deref(), Some("replies"));
    assert_eq!(d.dequeue_count, 1);
    assert!(u.backend.ack(got[0].receipt.clone()).await.unwrap());
    assert!(receive_n(&u, 1, VIS, 2).await.is_empty(), "acked is gone");
}

async fn a_lease_hides_a_message_until_it_runs_out(u: Under) {
    u.backend.send(&u.queue, msg("a")).await.unwrap();
    let first = receive_n(&u, 1, Duration::from_secs(2), 10).await;
    assert_eq!(bodies(&first), ["a"]);
    let hidden = u
        .backend
        .receive(&u.queue, 10, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(hidden.is_empty(), "leased messages are hidden");
    let again = receive_n(&u, 1, VIS, 10).await;
    assert_eq!(bodies(&again), ["a"], "back after the lease ran out");
    assert_eq!(again[0].message.dequeue_count, 2, "the attempt counts up");
    assert!(u.backend.ack(again[0].receipt.clone()).await.unwrap());
}

async fn renewing_keeps_a_message_hidden(u: Under) {
    u.backend.send(&u.queue, msg("a")).await.unwrap();
    let d = receive_n(&u, 1, Duration::from_secs(2), 10).await.remove(0);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            u.backend
                .renew(d.receipt.clone(), Duration::from_secs(2))
                .await
                .unwrap()
        );
    }
    let hidden = u.backend.receive(&u.queue, 10, VIS).await.unwrap();
    assert!(hidden.is_empty(), "still leased after 3 s of 2 s leases");
    assert!(u.backend.ack(d.receipt).await.unwrap());
}

async fn a_retry_waits_for_its_delay_and_a_release_does_not(u: Under) {
    u.backend.send(&u.queue, msg("r")).await.unwrap();
    u.backend.send(&u.queue, msg("g")).await.unwrap();
    let got = receive_n(&u, 2, VIS, 10).await;
    let (r, g): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.message.body == b"r");
    assert!(
        u.backend
            .retry(
                r[0].receipt.clone(),
                Duration::from_secs(3),
                "try later".into()
            )
            .await
            .unwrap()
    );
    u.backend.release(vec![g[0].receipt.clone()]).await.unwrap();
    let now = receive_n(&u, 1, VIS, 2).await;
    assert_eq!(
        bodies(&now),
        ["g"],
        "released: receivable at once; retried: not yet"
    );
    u.backend.ack(now[0].receipt.clone()).await.unwrap();
    let later = receive_n(&u, 1, VIS, 10).await;
    assert_eq!(bodies(&later), ["r"], "the retry comes after its delay");
    u.backend.ack(later[0].receipt.clone()).await.unwrap();
}

async fn settling_some_of_a_batch_leaves_the_others_alone(u: Under) {
    let sent = u
        .backend
        .send_batch(&u.queue, (0..3).map(|i| msg(&format!("m{i}"))).collect())
        .await
        .unwrap();
    assert_eq!(sent.len(), 3);
    let got = receive_n(&u, 3, Duration::from_secs(3), 10).await;
    assert_eq!(got.len(), 3);
    for d in got.iter().filter(|d| d.message.body != b"m1") {
        assert!(u.backend.ack(d.receipt.clone()).await.unwrap());
    }
    let back = receive_n(&u, 1, VIS, 10).await;
    assert_eq!(bodies(&back), ["m1"], "only the unsettled one comes back");
    u.backend.ack(back[0].receipt.clone()).await.unwrap();
    assert!(receive_n(&u, 1, VIS, 4).await.is_empty());
}

async fn dead_letters_keep_their_reason_and_can_be_redriven(u: Under) {
    u.backend.send(&u.queue, msg("poison")).await.unwrap();
    let d = receive_n(&u, 1, VIS, 10).await.remove(0);
    let how = Settlement::DeadLetter {
        error: "cannot parse".into(),
        function: Some("f@v1".into()),
    };
    assert!(u.backend.settle(d.receipt, how, Vec::new()).await.unwrap());
    let dead = u.backend.dead_letters(&u.queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].error, "cannot parse");
    assert_eq!(dead[0].function.as_deref(), Some("f@v1"));
    assert_eq!(dead[0].message.body, b"poison");
    assert_eq!(u.backend.redrive(&u.queue, None).await.unwrap(), 1);
    let back = receive_n(&u, 1, VIS, 10).await;
    assert_eq!(bodies(&back), ["poison"]);
    u.backend.ack(back[0].receipt.clone()).await.unwrap();
    u.backend
        .bury(&u.queue, msg("buried"), "undeliverable".into())
        .await
        .unwrap();
    assert_eq!(
        u.backend.purge_dead_letters(&u.queue, None).await.unwrap(),
        1
    );
}

/// Settlements that arrive together (SQS: one `DeleteMessageBatch` for
/// those that wait on another in flight) each delete their own message.
async fn settlements_at_once_each_delete_their_message(u: Under) {
    let all: Vec<NewMessage> = (0..10).map(|i| msg(&format!("m{i}"))).collect();
    u.backend.send_batch(&u.queue, all).await.unwrap();
    let lease = Duration::from_secs(2);
    let got = receive_n(&u, 10, lease, 10).await;
    assert_eq!(got.len(), 10);
    let acks: Vec<_> = got
        .into_iter()
        .map(|d| {
            let backend = u.backend.clone();
            tokio::spawn(async move { backend.ack(d.receipt).await })
        })
        .collect();
    for a in acks {
        assert!(a.await.unwrap().unwrap());
    }
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    let back = receive_n(&u, 1, VIS, 2).await;
    assert!(back.is_empty(), "{:?}", bodies(&back));
}

async fn a_checkpoint_comes_back_with_the_next_delivery(u: Under) {
    assert!(u.backend.features(&u.queue).checkpoints);
    u.backend.send(&u.queue, msg("long job")).await.unwrap();
    let first = receive_n(&u, 1, VIS, 10).await.remove(0);
    assert_eq!(first.message.checkpoint, None);
    assert!(
        u.backend
            .checkpoint(first.receipt.clone(), b"step 3".to_vec())
            .await
            .unwrap()
    );
    assert!(
        u.backend
            .retry(first.receipt, Duration::ZERO, "cut off".into())
            .await
            .unwrap()
    );
    let second = receive_n(&u, 1, VIS, 10).await.remove(0);
    assert_eq!(second.message.body, b"long job");
    assert_eq!(second.message.dequeue_count, 2);
    assert_eq!(second.message.checkpoint.as_deref(), Some(&b"step 3"[..]));
    u.backend.ack(second.receipt).await.unwrap();
    // Done with: nothing of it is left where checkpoints are kept.
    if let Some(state) = &u.checkpoints {
        let left = state.list("checkpoints/", None, 10).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}

async fn a_settlement_sends_its_reply(u: Under) {
    let replies = format!("{}-replies", u.queue);
    u.backend.send(&u.queue, msg("ask")).await.unwrap();
    let d = receive_n(&u, 1, VIS, 10).await.remove(0);
    let reply = NewMessage {
        correlation_id: Some(d.message.id.clone()),
        ..msg("answer")
    };
    assert!(
        u.backend
            .settle(d.receipt, Settlement::Ack, vec![(replies.clone(), reply)])
            .await
            .unwrap()
    );
    let r = Under {
        backend: u.backend.clone(),
        queue: replies,
        checkpoints: None,
        _dir: None,
    };
    let got = receive_n(&r, 1, VIS, 10).await;
    assert_eq!(bodies(&got), ["answer"]);
    assert_eq!(
        got[0].message.correlation_id.as_deref(),
        Some(d.message.id.as_str())
    );
}

async fn a_delayed_message_waits(u: Under) {
    let m = NewMessage {
        delay_ms: Some(2_000),
        ..msg("later")
    };
    let t = Instant::now();
    u.backend.send(&u.queue, m).await.unwrap();
    let got = receive_n(&u, 1, VIS, 15).await;
    assert_eq!(bodies(&got), ["later"]);
    assert!(
        t.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
    u.backend.ack(got[0].receipt.clone()).await.unwrap();
}

async fn a_waiting_receive_gets_what_arrives(u: Under) {
    let backend = u.backend.clone();
    let queue = u.queue.clone();
    let waiting = tokio::spawn(async move {
        backend
            .receive_waiting(&queue, 1, VIS, Duration::from_secs(10))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    u.backend.send(&u.queue, msg("arrived")).await.unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(bodies(&got), ["arrived"]);
    u.backend.ack(got[0].receipt.clone()).await.unwrap();
}

async fn counts_follow_the_messages(u: Under) {
    u.backend
        .send_batch(&u.queue, (0..25).map(|i| msg(&format!("{i}"))).collect())
        .await
        .unwrap();
    let s = u.backend.stats(&u.queue).await.unwrap();
    assert_eq!(s.ready, 25, "{s:?}");
    assert_eq!(u.backend.backlog(&u.queue, 10).await.unwrap(), 10, "capped");
    assert!(u.backend.queues().await.unwrap().contains(&u.queue));
    let max = u.backend.features(&u.queue).max_receive;
    let got = u.backend.receive(&u.queue, 25, VIS).await.unwrap();
    assert!(got.len() <= max, "never more than one receive hands over");
    assert_eq!(
        u.backend.stats(&u.queue).await.unwrap().in_flight,
        got.len() as u64
    );
    assert_eq!(u.backend.purge(&u.queue).await.unwrap(), 25);
}

/// On the queue `ordered` (a FIFO queue on SQS): one message of a group
/// at a time, in the order sent, and a resend with the same dedup id adds
/// nothing.
async fn a_fifo_queue_keeps_group_order_and_drops_duplicates(u: Under) {
    let q = "ordered";
    assert!(u.backend.features(q).groups && u.backend.features(q).dedup);
    let in_group = |body: &str| NewMessage {
        group: Some("g".into()),
        dedup_id: Some(format!("d-{body}")),
        ..msg(body)
    };
    for body in ["a", "b", "c", "a"] {
        u.backend.send(q, in_group(body)).await.unwrap();
    }
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        let got = u.backend.receive(q, 1, VIS).await.unwrap();
        let Some(d) = got.into_iter().next() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // While it is in flight, nothing else of its group is handed out.
        assert!(u.backend.receive(q, 10, VIS).await.unwrap().is_empty());
        seen.push(String::from_utf8_lossy(&d.message.body).into_owned());
        assert!(u.backend.ack(d.receipt).await.unwrap());
    }
    assert_eq!(seen, ["a", "b", "c"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        u.backend.receive(q, 10, VIS).await.unwrap().is_empty(),
        "the duplicate was dropped"
    );
}

async fn what_a_backend_lacks_is_refused_by_name(u: Under) {
    let f = u.backend.features(&u.queue);
    let prioritized = NewMessage {
        priority: 5,
        ..msg("p")
    };
    match (f.priorities, u.backend.send(&u.queue, prioritized).await) {
        (true, r) => assert!(r.is_ok()),
        (false, Err(QueueError::Invalid(m))) => assert!(m.contains("no message priorities"), "{m}"),
        (false, other) => panic!("{other:?}"),
    }
    let grouped = NewMessage {
        group: Some("g".into()),
        ..msg("g")
    };
    match (f.groups, u.backend.send(&u.queue, grouped).await) {
        (true, r) => assert!(r.is_ok()),
        (false, Err(QueueError::Invalid(m))) => assert!(m.contains("groups"), "{m}"),
        (false, other) => panic!("{other:?}"),
    }
    match (f.peek, u.backend.peek(&u.queue, 10).await) {
        (true, r) => assert!(r.is_ok()),
        (false, Err(QueueError::Unsupported(m))) => assert!(m.contains("cannot show"), "{m}"),
        (false, other) => panic!("{other:?}"),
    }
    let huge = msg(&"x".repeat(f.max_body_bytes + 1));
    let e = u
        .backend
        .send(&u.queue, huge)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("over the limit of") || e.contains("over SQS's limit"),
        "{e}"
    );
}

/// One module of tests per backend, from one list of checks.
macro_rules! suites {
    ($($backend:ident),*: $checks:tt) => {
        $( suites!(@one $backend $checks); )*
    };
    (@one $backend:ident [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let queue: String = stringify!($check).replace('_', "-").chars().take(40).collect();
                    super::$check(super::$backend(queue.trim_end_matches('-')).await).await;
                }
            )*
        }
    };
}

suites!(embedded, routed_embedded, sealed_embedded, sqs, routed_sqs: [
    a_message_round_trips_with_everything_it_carries,
    a_lease_hides_a_message_until_it_runs_out,
    renewing_keeps_a_message_hidden,
    a_retry_waits_for_its_delay_and_a_release_does_not,
    settling_some_of_a_batch_leaves_the_others_alone,
    dead_letters_keep_their_reason_and_can_be_redriven,
    settlements_at_once_each_delete_their_message,
    a_checkpoint_comes_back_with_the_next_delivery,
    a_settlement_sends_its_reply,
    a_delayed_message_waits,
    a_waiting_receive_gets_what_arrives,
    counts_follow_the_messages,
    a_fifo_queue_keeps_group_order_and_drops_duplicates,
    what_a_backend_lacks_is_refused_by_name,
]);

/// A queue with its own redrive policy: fnhost sends its dead letters to
/// the policy's target (not to a `__dlq` of its own), SQS moves a message
/// received too often there by itself, and both are listed and redriven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_queues_own_redrive_policy_is_honoured() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let moto = tokio::task::spawn_blocking(fnhost_tests::moto)
        .await
        .unwrap();
    let prefix = format!("t{}-", &uuid_like()[..12]);
    let sdk = fnhost::backends::aws::sdk_config(target(moto), "queues")
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let graveyard = sqs
        .create_queue()
        .queue_name(format!("{prefix}graveyard"))
        .send()
        .await
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(graveyard.queue_url().unwrap())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": 2});
    sqs.create_queue()
        .queue_name(format!("{prefix}work"))
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .unwrap();
    let settings = SqsSettings {
        prefix: prefix.clone(),
        fifo: Vec::new(),
        create: false,
    };
    let backend = SqsQueues::connect(target(moto), settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let u = Under {
        backend: Arc::new(backend),
        queue: "work".into(),
        checkpoints: None,
        _dir: None,
    };

    // fnhost gives up on one: it goes to the policy's target, with its reason.
    u.backend.send(&u.queue, msg("poison")).await.unwrap();
    let d = receive_n(&u, 1, VIS, 10).await.remove(0);
    let how = Settlement::DeadLetter {
        error: "cannot parse".into(),
        function: Some("f@v1".into()),
    };
    assert!(u.backend.settle(d.receipt, how, Vec::new()).await.unwrap());

    // SQS gives up on one: received more often than the policy allows
    // (here: a host that died twice holding it), it moves there by itself.
    u.backend.send(&u.queue, msg("kills hosts")).await.unwrap();
    for _ in 0..2 {
        let d = receive_n(&u, 1, VIS, 10).await.remove(0);
        u.backend.release(vec![d.receipt]).await.unwrap();
    }
    assert!(receive_n(&u, 1, VIS, 3).await.is_empty(), "moved by SQS");

    let mut dead = u.backend.dead_letters(&u.queue, 10).await.unwrap();
    dead.sort_by(|a, b| a.message.body.cmp(&b.message.body));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].message.body, b"kills hosts");
    assert!(
        dead[0].error.contains("redrive policy"),
        "{}",
        dead[0].error
    );
    assert_eq!(dead[1].message.body, b"poison");
    assert_eq!(dead[1].error, "cannot parse");
    let stats = u.backend.stats(&u.queue).await.unwrap();
    assert_eq!(stats.dead_letters, 2, "{stats:?}");
    // No dead-letter queue of fnhost's own was made beside the policy's.
    let queues = sqs
        .list_queues()
        .queue_name_prefix(&prefix)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = queues
        .queue_urls()
        .iter()
        .filter_map(|u| u.rsplit('/').next())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with("__dlq")), "{names:?}");

    assert_eq!(u.backend.redrive(&u.queue, None).await.unwrap(), 2);
    let mut back = bodies(&receive_n(&u, 2, VIS, 10).await);
    back.sort();
    assert_eq!(back, ["kills hosts", "poison"]);
}

/// With `create = false`, a missing queue is named as SQS must have it,
/// and so is its dead-letter queue (`<name>__dlq.fifo` for a FIFO queue),
/// never a dead-letter queue's own (`…__dlq__dlq`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_and_its_dead_letter_queue_are_named_as_sqs_needs_them() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let moto = tokio::task::spawn_blocking(fnhost_tests::moto)
        .await
        .unwrap();
    let prefix = format!("t{}-", &uuid_like()[..12]);
    let settings = SqsSettings {
        prefix: prefix.clone(),
        fifo: vec!["ordered".into()],
        create: false,
    };
    let backend = SqsQueues::connect(target(moto), settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let grouped = || NewMessage {
        group: Some("g".into()),
        ..msg("x")
    };
    let err = backend.send("ordered", grouped()).await.unwrap_err();
    let err = err.to_string();
    assert!(err.contains(&format!("\"{prefix}ordered.fifo\"")), "{err}");
    assert!(
        err.contains(&format!(
            "\"{prefix}ordered__dlq.fifo\" for its dead letters"
        )),
        "{err}"
    );

    let sdk = fnhost::backends::aws::sdk_config(target(moto), "queues")
        .await
        .unwrap();
    aws_sdk_sqs::Client::new(&sdk)
        .create_queue()
        .queue_name(format!("{prefix}ordered.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap();
    let err = backend
        .bury("ordered", grouped(), "undeliverable".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("\"{prefix}ordered__dlq.fifo\"")),
        "{err}"
    );
    assert!(err.contains("the dead-letter queue of"), "{err}");
    assert!(!err.contains("__dlq__dlq"), "{err}");
}
