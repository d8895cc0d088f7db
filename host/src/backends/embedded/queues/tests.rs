//! Delivery rules of the embedded store, on a manual clock (no sleeps).

use super::*;
use crate::clock::ManualClock;
use crate::jobs::JobState;
use crate::queue::DEDUP_WINDOW;

const VIS: Duration = Duration::from_secs(30);

fn open() -> (tempfile::TempDir, EmbeddedQueues, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_000_000);
    let q = EmbeddedQueues::open(dir.path(), clock.clone()).unwrap();
    (dir, q, clock)
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

#[tokio::test]
async fn a_lease_hides_a_message_until_it_expires_then_it_comes_back() {
    let (_d, q, clock) = open();
    let sent = q.send("orders", msg("a")).await.unwrap();
    let first = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(bodies(&first), ["a"]);
    assert_eq!(first[0].message.id, sent.id);
    assert_eq!(first[0].message.dequeue_count, 1);
    assert!(
        q.receive("orders", 10, VIS).await.unwrap().is_empty(),
        "leased messages are hidden"
    );

    clock.advance(VIS + Duration::from_millis(1));
    let second = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(second[0].message.dequeue_count, 2);
    // The first lease is stale now: its ack is refused, the current one works.
    assert!(!q.ack(first[0].receipt.clone()).await.unwrap());
    assert!(q.ack(second[0].receipt.clone()).await.unwrap());
    clock.advance(VIS * 2);
    assert!(
        q.receive("orders", 10, VIS).await.unwrap().is_empty(),
        "acked messages are gone"
    );
}

#[tokio::test]
async fn renewing_a_lease_keeps_the_message_hidden() {
    let (_d, q, clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    clock.advance(VIS / 2);
    assert!(q.renew(d.receipt.clone(), VIS).await.unwrap());
    clock.advance(VIS * 3 / 4);
    assert!(q.receive("orders", 1, VIS).await.unwrap().is_empty());
    assert!(q.ack(d.receipt).await.unwrap());
}

#[tokio::test]
async fn retries_wait_for_their_delay_and_keep_the_error() {
    let (_d, q, clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    assert!(
        q.retry(d.receipt, Duration::from_secs(4), "busy".into())
            .await
            .unwrap()
    );
    let stats = q.stats("orders").await.unwrap();
    assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 1, 0));
    clock.advance(Duration::from_secs(3));
    assert!(q.receive("orders", 1, VIS).await.unwrap().is_empty());
    clock.advance(Duration::from_secs(1));
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    assert_eq!(d.message.dequeue_count, 2);
    assert_eq!(d.message.last_error.as_deref(), Some("busy"));
}

#[tokio::test]
async fn dead_letters_are_listed_redriven_and_purged() {
    let (_d, q, _clock) = open();
    for b in ["a", "b", "c"] {
        q.send("orders", msg(b)).await.unwrap();
    }
    for d in q.receive("orders", 3, VIS).await.unwrap() {
        let fnv = Some("processor@3".to_string());
        assert!(
            q.dead_letter(d.receipt, "bad input".into(), fnv)
                .await
                .unwrap()
        );
    }
    let dead = q.dead_letters("orders", 10).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert_eq!((dead[0].attempts, dead[0].error.as_str()), (1, "bad input"));
    assert_eq!(dead[0].function.as_deref(), Some("processor@3"));
    assert_eq!(q.stats("orders").await.unwrap().dead_letters, 3);

    // Redrive one by id, purge one by id, redrive the rest.
    assert_eq!(
        q.redrive("orders", Some(vec![dead[0].message.id.clone()]))
            .await
            .unwrap(),
        1
    );
    let purge = Some(vec![dead[1].message.id.clone()]);
    assert_eq!(q.purge_dead_letters("orders", purge).await.unwrap(), 1);
    assert_eq!(q.redrive("orders", None).await.unwrap(), 1);
    assert!(q.dead_letters("orders", 10).await.unwrap().is_empty());
    let again = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(bodies(&again), ["a", "c"]);
    assert!(
        again.iter().all(|d| d.message.dequeue_count == 1),
        "a redrive starts the count over"
    );
    assert_eq!(q.purge("orders").await.unwrap(), 2);
}

#[tokio::test]
async fn a_dedup_id_within_the_window_adds_nothing() {
    let (_d, q, clock) = open();
    let with = |body: &str| NewMessage {
        dedup_id: Some("order-7".into()),
        ..msg(body)
    };
    let first = q.send("orders", with("a")).await.unwrap();
    let again = q.send("orders", with("b")).await.unwrap();
    assert_eq!(
        again,
        Sent {
            id: first.id.clone(),
            duplicate: true
        }
    );
    assert_eq!(q.stats("orders").await.unwrap().ready, 1);
    // Another queue has its own ids.
    assert!(!q.send("other", with("a")).await.unwrap().duplicate);
    clock.advance(DEDUP_WINDOW);
    let later = q.send("orders", with("c")).await.unwrap();
    assert!(!later.duplicate);
    assert_ne!(later.id, first.id);
}

#[tokio::test]
async fn groups_run_one_at_a_time_in_order_and_different_groups_in_parallel() {
    let (_d, q, _clock) = open();
    let grouped = |body: &str, g: &str| NewMessage {
        group: Some(g.into()),
        ..msg(body)
    };
    for (b, g) in [
        ("g1-1", "g1"),
        ("g2-1", "g2"),
        ("g1-2", "g1"),
        ("g2-2", "g2"),
        ("free", ""),
    ] {
        let m = if g.is_empty() { msg(b) } else { grouped(b, g) };
        q.send("orders", m).await.unwrap();
    }
    let batch = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(bodies(&batch), ["g1-1", "g2-1", "free"]);
    // Failing g1's head keeps the rest of g1 waiting behind it.
    let g1 = batch[0].receipt.clone();
    assert!(q.retry(g1, Duration::ZERO, "again".into()).await.unwrap());
    assert!(q.ack(batch[1].receipt.clone()).await.unwrap());
    let batch = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(bodies(&batch), ["g1-1", "g2-2"]);
    assert!(q.ack(batch[0].receipt.clone()).await.unwrap());
    assert_eq!(
        bodies(&q.receive("orders", 10, VIS).await.unwrap()),
        ["g1-2"]
    );
}

#[tokio::test]
async fn higher_priorities_and_due_delays_come_first() {
    let (_d, q, clock) = open();
    q.send("orders", msg("low")).await.unwrap();
    q.send(
        "orders",
        NewMessage {
            priority: 9,
            ..msg("high")
        },
    )
    .await
    .unwrap();
    let at = clock.now_ms() + 5_000;
    let later = NewMessage {
        not_before_ms: Some(at),
        priority: 9,
        ..msg("later")
    };
    q.send("orders", later).await.unwrap();
    assert_eq!(
        bodies(&q.receive("orders", 10, VIS).await.unwrap()),
        ["high", "low"]
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        bodies(&q.receive("orders", 10, VIS).await.unwrap()),
        ["later"]
    );
}

#[tokio::test]
async fn acknowledged_sends_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_000);
    {
        let q = EmbeddedQueues::open(dir.path(), clock.clone()).unwrap();
        let batch = (0..100).map(|i| msg(&i.to_string())).collect();
        assert_eq!(q.send_batch("orders", batch).await.unwrap().len(), 100);
        let leased = q.receive("orders", 10, VIS).await.unwrap();
        assert!(q.ack(leased[0].receipt.clone()).await.unwrap());
    }
    let q = EmbeddedQueues::open(dir.path(), clock.clone()).unwrap();
    let stats = q.stats("orders").await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight),
        (90, 9),
        "leases survive too"
    );
    clock.advance(VIS);
    assert_eq!(q.receive("orders", 1000, VIS).await.unwrap().len(), 99);
    assert_eq!(q.queues().await.unwrap(), ["orders"]);
}

#[tokio::test]
async fn bad_messages_are_refused_before_anything_is_stored() {
    let (_d, q, _clock) = open();
    let too_big = NewMessage {
        body: vec![0; crate::queue::MAX_BODY_BYTES + 1],
        ..Default::default()
    };
    assert!(matches!(
        q.send_batch("orders", vec![msg("ok"), too_big]).await,
        Err(QueueError::Invalid(_))
    ));
    assert!(q.send("Bad Name", msg("x")).await.is_err());
    assert_eq!(q.stats("orders").await.unwrap().ready, 0);
}

#[tokio::test]
async fn a_checkpoint_rides_on_the_message_to_the_next_delivery() {
    let (_d, q, clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    assert_eq!(d.message.checkpoint, None);
    assert!(
        q.checkpoint(d.receipt.clone(), b"step-1".to_vec())
            .await
            .unwrap()
    );
    assert!(
        q.retry(d.receipt.clone(), Duration::ZERO, "crash".into())
            .await
            .unwrap()
    );
    let d2 = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    assert_eq!(d2.message.checkpoint.as_deref(), Some(&b"step-1"[..]));
    // A stale lease cannot overwrite it.
    assert!(!q.checkpoint(d.receipt, b"old".to_vec()).await.unwrap());
    clock.advance(VIS * 2);
    let d3 = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    assert_eq!(
        d3.message.checkpoint.as_deref(),
        Some(&b"step-1"[..]),
        "an expired lease keeps it too"
    );
}

#[tokio::test]
async fn the_scaling_backlog_counts_ready_and_leased_up_to_the_cap() {
    let (_d, q, clock) = open();
    for i in 0..5 {
        q.send("work", msg(&i.to_string())).await.unwrap();
    }
    let delayed = NewMessage {
        delay_ms: Some(60_000),
        ..msg("later")
    };
    q.send("work", delayed).await.unwrap();
    let leased = q.receive("work", 2, VIS).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(
        q.backlog("work", 100).await.unwrap(),
        5,
        "3 ready + 2 leased, not the delayed one"
    );
    assert_eq!(q.backlog("work", 3).await.unwrap(), 3, "capped");
    let s = q.stats("work").await.unwrap();
    assert_eq!(
        q.backlog("work", 100).await.unwrap(),
        s.ready + s.in_flight,
        "agrees with the full count"
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        q.backlog("work", 100).await.unwrap(),
        6,
        "the delay is over"
    );
}

#[tokio::test]
async fn a_reply_is_sent_with_its_settlement_and_not_for_a_stale_lease() {
    let (_d, q, clock) = open();
    q.send("work", msg("job")).await.unwrap();
    let first = q.receive("work", 1, VIS).await.unwrap();
    clock.advance(VIS + Duration::from_secs(1));
    let second = q.receive("work", 1, VIS).await.unwrap();
    let reply = || vec![("done".to_string(), msg("ok"))];
    assert!(
        !q.settle(first[0].receipt.clone(), Settlement::Ack, reply())
            .await
            .unwrap(),
        "the first lease expired"
    );
    assert_eq!(q.stats("done").await.unwrap().ready, 0, "so no reply");
    assert!(
        q.settle(second[0].receipt.clone(), Settlement::Ack, reply())
            .await
            .unwrap()
    );
    assert_eq!(bodies(&q.receive("done", 10, VIS).await.unwrap()), ["ok"]);
    assert_eq!(q.stats("work").await.unwrap().ready, 0);
    let bad = vec![("Not A Queue".to_string(), msg("x"))];
    q.send("work", msg("again")).await.unwrap();
    let d = q.receive("work", 1, VIS).await.unwrap();
    assert!(matches!(
        q.settle(d[0].receipt.clone(), Settlement::Ack, bad).await,
        Err(QueueError::Invalid(_))
    ));
    assert!(
        q.ack(d[0].receipt.clone()).await.unwrap(),
        "a refused reply settled nothing"
    );
}

#[tokio::test]
async fn a_store_from_before_row_receipts_keeps_its_messages_and_numbering() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The first release's table: a unique index on message ids.
        let conn = Connection::open(dir.path().join("queues.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE queue_messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
                body BLOB NOT NULL, attributes TEXT NOT NULL, enqueued_at_ms INTEGER NOT NULL,
                visible_at_ms INTEGER NOT NULL, dequeue_count INTEGER NOT NULL DEFAULT 0,
                dedup_id TEXT, group_key TEXT, priority INTEGER NOT NULL DEFAULT 0,
                correlation_id TEXT, reply_to TEXT, lease TEXT, last_error TEXT);
             CREATE INDEX queue_messages_order ON queue_messages (queue, priority DESC, seq);
             INSERT INTO queue_messages (seq, id, queue, body, attributes, enqueued_at_ms, visible_at_ms)
                 VALUES (7, 'old-7', 'work', x'6f6c64', '[]', 1, 1);
             INSERT INTO queue_messages (seq, id, queue, body, attributes, enqueued_at_ms, visible_at_ms)
                 VALUES (9, 'gone-9', 'work', x'00', '[]', 1, 1);
             DELETE FROM queue_messages WHERE seq = 9;",
        )
        .unwrap();
    }
    let clock = ManualClock::at(1_000_000);
    let q = EmbeddedQueues::open(dir.path(), clock).unwrap();
    q.send("work", msg("new")).await.unwrap();
    let got = q.receive("work", 10, VIS).await.unwrap();
    assert_eq!(bodies(&got), ["old", "new"], "kept, in order");
    assert_eq!(got[0].message.id, "old-7");
    assert!(
        got[1].receipt.lease.starts_with("10."),
        "numbering continues past the deleted row 9: {}",
        got[1].receipt.lease
    );
    for d in got {
        assert!(q.ack(d.receipt).await.unwrap());
    }
    drop(q);
    let conn = Connection::open(dir.path().join("queues.db")).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue_messages' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["queue_messages_group", "queue_messages_order"]);
}

#[tokio::test]
async fn operations_reach_the_store_in_the_order_they_are_made_not_awaited() {
    // A worker hands over a grouped message's ack, frees its instance, and
    // its next receive must see the group's head gone.
    let (_d, q, _clock) = open();
    for body in ["first", "second"] {
        let m = NewMessage {
            group: Some("g".into()),
            ..msg(body)
        };
        q.send("work", m).await.unwrap();
    }
    let head = q.receive("work", 10, VIS).await.unwrap();
    assert_eq!(bodies(&head), ["first"]);
    let ack = q.ack(head[0].receipt.clone()); // made, not yet awaited
    let next = q.receive("work", 10, VIS).await.unwrap();
    assert_eq!(bodies(&next), ["second"]);
    assert!(ack.await.unwrap());
}

/// The longest wait: a waiting receive answered with messages was answered
/// by their arrival (its wait running out answers with none).
const LONG: Duration = crate::queue::MAX_WAIT;

/// Await a waiting receive's answer; a minute without one is a failure
/// (a hang), not a slow machine.
async fn answered<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the waiting receive was never answered")
}

#[tokio::test]
async fn a_waiting_receive_is_leased_what_arrives_in_the_step_that_stores_it() {
    let (_d, q, _clock) = open();
    let other = q.receive_waiting("other", 10, VIS, LONG);
    let waiting = q.receive_waiting("orders", 2, VIS, LONG);
    q.send_batch("orders", vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    // The send is acknowledged once its commit is on disk: the leases are in it.
    let s = q.stats("orders").await.unwrap();
    assert_eq!(
        (s.ready, s.in_flight),
        (1, 2),
        "two leased, up to the wait's max"
    );
    let got = answered(waiting).await.unwrap();
    assert_eq!(bodies(&got), ["a", "b"]);
    assert_eq!(got[0].message.dequeue_count, 1);
    assert!(q.ack(got[0].receipt.clone()).await.unwrap());
    // A wait on another queue is not handed these; it gets its own.
    q.send("other", msg("x")).await.unwrap();
    assert_eq!(bodies(&answered(other).await.unwrap()), ["x"]);
}

#[tokio::test]
async fn a_wait_ends_empty_and_a_given_up_wait_leases_nothing() {
    let (_d, q, _clock) = open();
    let short = q.receive_waiting("orders", 10, VIS, Duration::from_millis(20));
    assert!(answered(short).await.unwrap().is_empty());
    drop(q.receive_waiting("orders", 10, VIS, LONG));
    q.send("orders", msg("a")).await.unwrap();
    let s = q.stats("orders").await.unwrap();
    assert_eq!((s.ready, s.in_flight), (1, 0), "nobody is waiting any more");
    assert_eq!(bodies(&q.receive("orders", 10, VIS).await.unwrap()), ["a"]);
}

#[tokio::test]
async fn a_wait_is_handed_a_groups_next_message_when_the_one_before_settles() {
    let (_d, q, _clock) = open();
    let grouped = |body: &str| NewMessage {
        group: Some("g".into()),
        ..msg(body)
    };
    q.send_batch("orders", vec![grouped("g-1"), grouped("g-2")])
        .await
        .unwrap();
    let first = q.receive("orders", 10, VIS).await.unwrap();
    assert_eq!(bodies(&first), ["g-1"]);
    let waiting = q.receive_waiting("orders", 10, VIS, LONG);
    // A message not yet due wakes the wait without being handed over.
    let later = NewMessage {
        delay_ms: Some(60_000),
        ..msg("later")
    };
    q.send("orders", later).await.unwrap();
    assert!(q.ack(first[0].receipt.clone()).await.unwrap());
    assert_eq!(bodies(&answered(waiting).await.unwrap()), ["g-2"]);
}

#[tokio::test]
async fn pending_counts_every_message_in_step_with_settlements_handed_over() {
    let (_d, q, _clock) = open();
    let later = NewMessage {
        delay_ms: Some(60_000),
        ..msg("later")
    };
    q.send_batch("ticks", vec![msg("now"), later])
        .await
        .unwrap();
    assert_eq!(
        q.pending("ticks", 10).await.unwrap(),
        2,
        "delayed ones count"
    );
    assert_eq!(q.pending("ticks", 1).await.unwrap(), 1, "up to the cap");
    let d = q.receive("ticks", 10, VIS).await.unwrap().remove(0);
    assert_eq!(
        q.pending("ticks", 10).await.unwrap(),
        2,
        "leased ones count"
    );
    // Handed over, not yet awaited: the count already leaves it out.
    let ack = q.ack(d.receipt.clone());
    assert_eq!(q.pending("ticks", 10).await.unwrap(), 1);
    assert!(ack.await.unwrap());
    assert_eq!(q.pending("other", 10).await.unwrap(), 0);
}

#[tokio::test]
async fn a_retry_without_delay_is_handed_to_a_waiting_receive() {
    let (_d, q, _clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    let waiting = q.receive_waiting("orders", 10, VIS, LONG);
    assert!(
        q.retry(d.receipt, Duration::ZERO, "again".into())
            .await
            .unwrap()
    );
    let got = answered(waiting).await.unwrap();
    assert_eq!(bodies(&got), ["a"]);
    assert_eq!(got[0].message.dequeue_count, 2);
}

#[tokio::test]
async fn leases_of_a_receive_dropped_unanswered_are_given_back_at_once() {
    let (_d, q, _clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    // Dropped before or after its answer arrived: either way the lease is
    // given back (by the writer, or by the dropped receive), not left to
    // run out its visibility timeout.
    drop(q.receive("orders", 10, VIS));
    let again = answered(q.receive_waiting("orders", 10, VIS, LONG))
        .await
        .unwrap();
    assert_eq!(bodies(&again), ["a"]);
    assert_eq!(
        again[0].message.dequeue_count, 1,
        "a delivery nobody got is not counted"
    );
}

#[tokio::test]
async fn released_leases_are_receivable_at_once_as_if_never_delivered() {
    let (_d, q, _clock) = open();
    q.send("orders", msg("a")).await.unwrap();
    let d = q.receive("orders", 1, VIS).await.unwrap().remove(0);
    let stale = d.receipt.clone();
    q.release(vec![d.receipt]).await.unwrap();
    let again = q.receive("orders", 1, VIS).await.unwrap();
    assert_eq!(bodies(&again), ["a"]);
    assert_eq!(again[0].message.dequeue_count, 1);
    // A stale receipt gives back nothing: the current lease holds.
    q.release(vec![stale]).await.unwrap();
    assert!(q.receive("orders", 1, VIS).await.unwrap().is_empty());
    assert!(q.ack(again[0].receipt.clone()).await.unwrap());
}

/// Run `reqs` through the writer as one batch, as if they had arrived
/// together, and collect their answers.
fn one_batch(dir: &std::path::Path, reqs: Vec<ops::Req>) -> Vec<Result<ops::Answer, QueueError>> {
    let conn = Connection::open(dir.join("queues.db")).unwrap();
    let mut writer = writer::Writer::new(conn, ManualClock::at(1_000_000));
    let (ops, answers): (Vec<_>, Vec<_>) = reqs
        .into_iter()
        .map(|req| {
            let (reply, rx) = oneshot::channel();
            (ops::Op { req, reply }, rx)
        })
        .unzip();
    writer.apply_for_test(ops);
    answers
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("every operation is answered"))
        .collect()
}

#[tokio::test]
async fn one_failing_operation_does_not_fail_the_others_in_its_batch() {
    let (dir, q, _clock) = open();
    q.send("work", msg("before")).await.unwrap();
    drop(q);
    // More ids than SQLite takes in one statement (250,000 in the bundled
    // build): the redrive fails in the store itself, between two sends
    // applied in the same transaction.
    let too_many: Vec<String> = (0..250_001).map(|i| format!("id-{i}")).collect();
    let answers = one_batch(
        dir.path(),
        vec![
            ops::Req::Send("work".into(), vec![msg("a")]),
            ops::Req::Redrive("work".into(), Some(too_many)),
            ops::Req::Send("work".into(), vec![msg("b")]),
            ops::Req::Receive {
                queue: "work".into(),
                max: 10,
                visibility: VIS,
                wait: Duration::ZERO,
            },
        ],
    );
    assert!(
        matches!(answers[0], Ok(ops::Answer::Sent(_))),
        "the send before"
    );
    assert!(
        matches!(&answers[1], Err(QueueError::Backend { .. })),
        "the redrive alone fails: {:?}",
        answers[1].as_ref().err()
    );
    assert!(
        matches!(answers[2], Ok(ops::Answer::Sent(_))),
        "the send after"
    );
    let Ok(ops::Answer::Deliveries(got)) = &answers[3] else {
        panic!("the receive is answered")
    };
    assert_eq!(bodies(got), ["before", "a", "b"], "all stored, in order");
}

#[tokio::test]
async fn dedup_ids_are_scoped_by_sender() {
    let (_d, q, _clock) = open();
    let from = |scope: Option<&str>, body: &str| NewMessage {
        dedup_id: Some("order-1".into()),
        dedup_scope: scope.map(str::to_string),
        ..msg(body)
    };
    let a = q.send("outbox", from(Some("billing"), "a")).await.unwrap();
    let b = q.send("outbox", from(Some("mallory"), "b")).await.unwrap();
    assert!(!b.duplicate, "another function's id does not suppress it");
    let again = q.send("outbox", from(Some("billing"), "a2")).await.unwrap();
    assert!(
        again.duplicate && again.id == a.id,
        "the same sender's does"
    );
    let api = q.send("outbox", from(None, "c")).await.unwrap();
    assert!(!api.duplicate, "the admin API has a scope of its own");
    let got = q.receive("outbox", 10, VIS).await.unwrap();
    assert_eq!(bodies(&got), ["a", "b", "c"]);
}

#[tokio::test]
async fn huge_delays_are_refused_with_the_limit_and_nothing_is_stored() {
    let (_d, q, _clock) = open();
    for delay in [1u64 << 63, u64::MAX] {
        let m = NewMessage {
            delay_ms: Some(delay),
            ..msg("late")
        };
        let e = q.send("work", m).await.unwrap_err();
        assert!(
            matches!(&e, QueueError::Invalid(m) if m.contains("9999-12-31T23:59:59.999Z")),
            "{e}"
        );
    }
    assert_eq!(q.stats("work").await.unwrap().delayed, 0);
    assert_eq!(q.stats("work").await.unwrap().ready, 0);
}

#[tokio::test]
async fn a_buried_message_is_a_dead_letter_with_its_reason() {
    let (_d, q, _clock) = open();
    let id = q
        .bury(
            "fnhost-blob-f.uploads",
            msg("change"),
            "cannot be handed over".into(),
        )
        .await
        .unwrap();
    let dead = q.dead_letters("fnhost-blob-f.uploads", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].error, "cannot be handed over");
    assert_eq!(q.redrive("fnhost-blob-f.uploads", None).await.unwrap(), 1);
    let got = q.receive("fnhost-blob-f.uploads", 10, VIS).await.unwrap();
    assert_eq!(bodies(&got), ["change"]);
}

#[tokio::test]
async fn a_jobs_end_is_recorded_in_the_step_that_settles_it_and_its_callback_is_owed_until_sent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_000_000);
    let q = EmbeddedQueues::open(dir.path(), clock.clone()).unwrap();
    let job = q
        .submit(NewJob {
            function: "f".into(),
            payload: b"in".to_vec(),
            callback_url: Some("https://example.com/done".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let finished = |body: &str| JobUpdate::Finished {
        state: JobState::Succeeded,
        output: Some(crate::jobs::JobOutput {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }),
        error: None,
        retention_ms: 60_000,
    };
    let d = q.receive("fnhost-jobs-f", 1, VIS).await.unwrap().remove(0);
    // A stale lease settles nothing and records nothing.
    clock.advance(VIS + Duration::from_millis(1));
    let d2 = q.receive("fnhost-jobs-f", 1, VIS).await.unwrap().remove(0);
    let stale = q
        .settle_job(
            d.receipt,
            Settlement::Ack,
            Vec::new(),
            job.id.clone(),
            finished("stale"),
        )
        .await
        .unwrap();
    assert!(!stale);
    assert_eq!(
        q.get(job.id.clone()).await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert!(q.pending_callbacks(10).await.unwrap().is_empty());
    // The live lease settles and records together; the callback is owed,
    // also after a restart, until it is done.
    assert!(
        q.settle_job(
            d2.receipt,
            Settlement::Ack,
            Vec::new(),
            job.id.clone(),
            finished("ok")
        )
        .await
        .unwrap()
    );
    let record = q.get(job.id.clone()).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.result.as_deref()),
        (JobState::Succeeded, Some(&b"ok"[..]))
    );
    assert_eq!(q.pending("fnhost-jobs-f", 10).await.unwrap(), 0);
    drop(q);
    let q = EmbeddedQueues::open(dir.path(), clock.clone()).unwrap();
    let owed = q.pending_callbacks(10).await.unwrap();
    assert_eq!(
        owed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [job.id.as_str()]
    );
    assert!(
        q.update(job.id.clone(), JobUpdate::CallbackDone)
            .await
            .unwrap()
    );
    assert!(q.pending_callbacks(10).await.unwrap().is_empty());
}
