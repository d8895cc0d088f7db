//! Queue-triggered processing through the real binary: at-least-once
//! delivery, retries and dead letters, redrive, replies, and a `kill -9` in
//! the middle of a few thousand messages.

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};
use std::collections::HashSet;

/// The adversary bound to queue `work`; the message body picks its behaviour.
fn worker_manifest(extra: &str) -> String {
    format!(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nmax_attempts = 3\nbackoff_initial = \"10ms\"\nbackoff_max = \"50ms\"\n{extra}\n"
    )
}

fn send(host: &Host, queue: &str, messages: Vec<Value>) -> Vec<Value> {
    let r = host.admin(
        "POST",
        &format!("/v1/queues/{queue}/messages"),
        json!({ "messages": messages }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["messages"].as_array().unwrap().clone()
}

fn stats(host: &Host, queue: &str) -> Value {
    host.admin("GET", &format!("/v1/queues/{queue}"), "").json()
}

fn peek(host: &Host, queue: &str) -> Vec<Value> {
    let r = host.admin("GET", &format!("/v1/queues/{queue}/messages?max=10000"), "");
    r.json()["messages"].as_array().unwrap().clone()
}

fn attr(m: &Value, name: &str) -> String {
    m["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[0] == name)
        .map(|a| a[1].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn messages_are_processed_retried_dead_lettered_and_redriven() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&worker_manifest(""), &g.adversary);
    let msg =
        |body: &str, cid: &str| json!({ "body": body, "reply_to": "done", "correlation_id": cid });
    send(
        &host,
        "work",
        vec![
            msg("ok", "a"),
            msg("ok", "b"),
            msg("fail", "c"),
            msg("retry", "d"),
            msg("panic", "e"),
            msg("big-1100", "f"),
        ],
    );

    // Every message ends: three succeed, three are dead-lettered.
    let dead = host.wait_for(60, "three dead letters", |h| {
        let v = h.admin("GET", "/v1/queues/work/dead-letters", "").json();
        let dead = v["dead_letters"].as_array().unwrap().clone();
        (dead.len() == 3 && stats(h, "work")["ready"] == 0 && stats(h, "work")["in_flight"] == 0)
            .then_some(dead)
    });
    let by_body = |b: &str| {
        dead.iter()
            .find(|d| d["message"]["body"] == b)
            .unwrap()
            .clone()
    };
    let fail = by_body("fail");
    assert_eq!(fail["attempts"], 1, "`fail` is not retried");
    assert_eq!(fail["error"], "the job failed: this input can never work");
    assert_eq!(fail["function"], "worker@v1");
    let retry = by_body("retry");
    assert_eq!(retry["attempts"], 3, "retried up to max_attempts, exactly");
    assert!(
        retry["error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts; last error: the job asked to be retried")
    );
    let panic = by_body("panic");
    assert_eq!(panic["attempts"], 3, "a trap is retried too");
    assert!(
        panic["error"]
            .as_str()
            .unwrap()
            .contains("the guest panicked"),
        "{panic}"
    );

    // Replies carry the correlation id and the outcome.
    let replies = peek(&host, "done");
    assert_eq!(replies.len(), 6);
    let reply = |cid: &str| {
        replies
            .iter()
            .find(|m| m["correlation_id"] == cid)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            reply("a")["body"].as_str(),
            attr(&reply("a"), "fnhost-status").as_str()
        ),
        (Some("ok"), "succeeded")
    );
    assert_eq!(attr(&reply("c"), "fnhost-status"), "failed");
    // An output too big for a message still settles, with a reply saying so.
    let big = reply("f");
    assert_eq!(attr(&big, "fnhost-status"), "succeeded");
    assert_eq!(big["body"], "");
    assert!(
        attr(&big, "fnhost-body-dropped").contains("1126400 bytes, over the message limit"),
        "{big}"
    );

    // The guest saw each attempt's dequeue count in the invocation (attempt=N in the log).
    assert!(
        host.log().contains("attempt=3"),
        "third attempts are logged"
    );

    // Redrive puts them back; fixed or not, they run again (and fail again here).
    let out = host.cli_ok(&["queue", "redrive", "work"]);
    assert!(out.contains("redrove 3"), "{out}");
    host.wait_for(60, "the redriven messages to settle again", |h| {
        let v = h.admin("GET", "/v1/queues/work/dead-letters", "").json();
        (v["dead_letters"].as_array().unwrap().len() == 3).then_some(())
    });
    assert_eq!(
        peek(&host, "done").len(),
        9,
        "three more replies after the redrive"
    );
    let out = host.cli_ok(&["queue", "purge", "work", "--dead-letters"]);
    assert!(out.contains("purged 3"), "{out}");
    let out = host.cli_ok(&["queue", "stats"]);
    assert!(out.contains("work") && out.contains("worker ("), "{out}");
    let json: Value =
        serde_json::from_str(&host.cli_ok(&["queue", "stats", "work", "--output", "json"]))
            .unwrap();
    assert_eq!(
        (json["queue"].as_str(), json["dead_letters"].as_u64()),
        (Some("work"), Some(0))
    );
    let json: Value = serde_json::from_str(&host.cli_ok(&["status", "--output", "json"])).unwrap();
    assert!(
        json["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "work"),
        "{json}"
    );
}

#[test]
fn sends_from_the_cli_dedup_delay_and_bad_input() {
    let host = Host::start();
    let first = host.cli_ok(&[
        "queue",
        "send",
        "inbox",
        "--data",
        r#"{"order": 1}"#,
        "--dedup-id",
        "o-1",
    ]);
    let again = host.cli_ok(&[
        "queue",
        "send",
        "inbox",
        "--data",
        r#"{"order": 1}"#,
        "--dedup-id",
        "o-1",
    ]);
    assert!(again.contains("duplicate"), "{again}");
    assert_eq!(first.trim(), again.split_whitespace().next().unwrap());
    host.cli_ok(&["queue", "send", "inbox", "--data", "later", "--delay", "1h"]);
    let s = stats(&host, "inbox");
    assert_eq!(
        (s["ready"].as_u64(), s["delayed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(peek(&host, "inbox")[0]["body"], r#"{"order":1}"#);

    let bad = host.cli(&["queue", "send", "Bad Queue", "--data", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid queue name"));
    let r = host.admin(
        "POST",
        "/v1/queues/inbox/messages",
        r#"{"body": "x", "delay": "soon"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delay")
    );
    let r = host.request(
        "POST",
        "/v1/queues/inbox/messages",
        br#"{"body": "x"}"#.to_vec(),
        None,
    );
    assert_eq!(r.status, 401, "the queue API needs the token");
}

#[test]
fn every_message_is_processed_at_least_once_across_a_kill_9() {
    const N: usize = 2000;
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start_in(dir.path(), &[]);
    host.deploy_ok(
        &worker_manifest("visibility_timeout = \"2s\"\nmax_concurrency = 8\nbatch_size = 8"),
        &g.adversary,
    );
    let mut ids = HashSet::new();
    for chunk in 0..(N / 500) {
        let batch = (0..500).map(|i| json!({ "body": "ok", "reply_to": "done", "correlation_id": format!("m{}", chunk * 500 + i) })).collect();
        ids.extend(
            send(&host, "work", batch)
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(ids.len(), N);
    // Let some of the work happen, then pull the plug mid-processing.
    host.wait_for(120, "some processing", |h| {
        (stats(h, "done")["ready"].as_u64().unwrap() >= 200).then_some(())
    });
    host.kill9();
    let after = Host::start_in(dir.path(), &[]);
    let done = after.wait_for(300, "all messages to be processed after the restart", |h| {
        let w = stats(h, "work");
        let settled = w["ready"] == 0 && w["in_flight"] == 0 && w["delayed"] == 0;
        let replies = stats(h, "done")["ready"].as_u64().unwrap() as usize;
        (settled && replies >= N).then_some(replies)
    });
    let replies = peek(&after, "done");
    assert_eq!(replies.len(), done);
    let seen: HashSet<String> = replies
        .iter()
        .map(|m| m["correlation_id"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(
        seen, expected,
        "every message was processed at least once, none lost"
    );
    let dead = after
        .admin("GET", "/v1/queues/work/dead-letters", "")
        .json();
    assert_eq!(dead["dead_letters"], json!([]));
    println!(
        "kill -9 crash test: {N} messages, {} replies, {} duplicates",
        done,
        done - N
    );
}

#[test]
fn groups_keep_their_order_under_concurrency_and_instances_follow_the_backlog() {
    let g = guests();
    let host = Host::start();
    let extra =
        "max_concurrency = 4\ntarget_backlog = 5\nbatch_size = 4\nscale_down_cooldown = \"1s\"";
    host.deploy_ok(&worker_manifest(extra), &g.adversary);
    // 3 groups × 10 messages; each takes a little while so work overlaps.
    let mut batch = Vec::new();
    for i in 0..10 {
        for group in ["g1", "g2", "g3"] {
            batch.push(json!({ "body": "busy-20", "group": group, "reply_to": "done", "correlation_id": format!("{group}-{i:02}") }));
        }
    }
    // And an ungrouped backlog that lets the binding scale out.
    for i in 0..40 {
        batch.push(json!({ "body": "busy-50", "reply_to": "done", "correlation_id": format!("free-{i:02}") }));
    }
    send(&host, "work", batch);
    let peak = host.wait_for(120, "the binding to scale out", |h| {
        let s = stats(h, "work");
        let f = &s["functions"][0];
        (f["desired"].as_u64() == Some(4)).then(|| f.clone())
    });
    assert_eq!(peak["max_concurrency"], 4);
    host.wait_for(120, "all 70 replies", |h| {
        (stats(h, "done")["ready"].as_u64() == Some(70)).then_some(())
    });
    let order: Vec<String> = peek(&host, "done")
        .iter()
        .map(|m| m["correlation_id"].as_str().unwrap().to_string())
        .collect();
    for group in ["g1", "g2", "g3"] {
        let seen: Vec<&String> = order.iter().filter(|c| c.starts_with(group)).collect();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "group {group} ran out of order");
    }
    // Back to zero desired once idle (after the scale-down cooldown).
    host.wait_for(60, "the binding to scale back down", |h| {
        (stats(h, "work")["functions"][0]["desired"].as_u64() == Some(0)).then_some(())
    });
    assert_eq!(stats(&host, "work")["functions"][0]["running"], 0);
}

#[test]
fn the_order_processor_example_confirms_once_retries_and_dead_letters_poison() {
    let g = guests();
    let host = Host::start();
    let manifest = std::fs::read_to_string(
        fnhost_tests::repo_root().join("functions/order-processor/fnhost.toml"),
    )
    .unwrap();
    host.deploy_ok(&manifest, &g.order_processor);
    let order = |id: &str, extra: Value| {
        let mut o = json!({ "id": id, "customer": "ada", "items": [{ "sku": "tea", "quantity": 2, "price_cents": 450 }] });
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "body": o.to_string() })
    };
    send(
        &host,
        "orders",
        vec![
            order("o-1", json!({})),
            order("o-1", json!({})), // the same order again: confirmed once
            order("o-2", json!({ "fail_until_attempt": 2 })),
            order("o-3", json!({ "items": [] })),
            json!({ "body": "not json at all" }),
        ],
    );
    host.wait_for(60, "orders to settle", |h| {
        let s = stats(h, "orders");
        (s["ready"] == 0 && s["in_flight"] == 0 && s["delayed"] == 0 && s["dead_letters"] == 2)
            .then_some(())
    });
    let outbox = peek(&host, "outbox");
    let confirmed: Vec<&str> = outbox
        .iter()
        .map(|m| m["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(confirmed, ["o-1", "o-2"], "one confirmation per order");
    let body: Value = serde_json::from_str(outbox[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["total_cents"], 900);
    let dead = host
        .admin("GET", "/v1/queues/orders/dead-letters", "")
        .json();
    let errors: Vec<&str> = dead["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["error"].as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"o-3\" is invalid: it has no items")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not the JSON this job expects")),
        "{errors:?}"
    );
    assert!(
        dead["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attempts"] == 1),
        "poison is not retried"
    );
    assert!(
        host.log().contains("the payment service did not answer"),
        "o-2 was retried"
    );
}

#[test]
fn a_job_longer_than_its_lease_is_not_handed_out_twice() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &worker_manifest("visibility_timeout = \"1s\"\nmax_concurrency = 2"),
        &g.adversary,
    );
    send(
        &host,
        "work",
        vec![json!({ "body": "busy-3500", "reply_to": "done" })],
    );
    host.wait_for(60, "the reply", |h| {
        (stats(h, "done")["ready"] == 1).then_some(())
    });
    let reply = &peek(&host, "done")[0];
    assert_eq!(reply["body"], "busy for 3500 ms ()");
    assert!(
        !host.log().contains("attempt=2"),
        "the lease was renewed, so nobody else got the message"
    );
    assert_eq!(stats(&host, "work")["ready"], 0);
}
