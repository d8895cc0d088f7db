//! Invocation history through the real binary: every invocation of every
//! trigger leaves a record with its figures, reason and logs; the API
//! filters and pages it, refuses what is past its caps, and the CLI's
//! `fnhost invocations` and `fnhost logs` show it — a guest's text as text.

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};

fn records(host: &Host, query: &str) -> Vec<Value> {
    let r = host.admin("GET", &format!("/v1/invocations?{query}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["invocations"].as_array().unwrap().clone()
}

#[test]
fn every_invocation_is_recorded_and_found_by_what_a_user_knows() {
    let g = guests();
    let data = tempfile::tempdir().unwrap();
    let host = Host::start_in(data.path(), &["--host-id", "host-a"]);
    host.deploy_ok(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nmax_attempts = 2\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n[[triggers.http]]\npath = \"/worker/{mode}\"\n",
        &g.adversary,
    );
    let messages: Vec<Value> = [
        ("ok", "c-ok"),
        ("fail", "c-fail"),
        ("retry", "c-retry"),
        ("forge-log", "c-log"),
    ]
    .iter()
    .map(|(body, cid)| json!({ "body": body, "correlation_id": cid }))
    .collect();
    let sent = host.admin(
        "POST",
        "/v1/queues/work/messages",
        json!({ "messages": messages }).to_string(),
    );
    assert_eq!(sent.status, 201, "{}", sent.text());
    let fail_id = sent.json()["messages"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(host.get("/worker/ok").status, 200);

    // ok, fail, forge-log once each; retry twice (max_attempts = 2); one
    // HTTP call.
    let all = host.wait_for(60, "six records", |h| {
        let all = records(h, "function=worker");
        (all.len() == 6).then_some(all)
    });
    assert!(
        all.iter()
            .all(|r| r["host"] == "host-a" && r["version"] == 1)
    );
    let http = all.iter().find(|r| r["trigger"] == "http").unwrap();
    assert_eq!(
        (http["outcome"].as_str(), http["status"].as_u64()),
        (Some("succeeded"), Some(200))
    );
    assert!(
        http["queued_ms"].is_null(),
        "an HTTP call waits in no queue"
    );

    // A user who knows the correlation id finds the failure and why.
    let failed = records(&host, "correlation=c-fail");
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(
        (f["trigger"].as_str(), f["outcome"].as_str()),
        (Some("queue"), Some("failed"))
    );
    assert_eq!(f["reason"], "the job failed: this input can never work");
    assert_eq!(f["message_id"].as_str(), Some(fail_id.as_str()));
    assert!(f["fuel"].as_u64().unwrap() > 0, "{f}");
    assert!(f["peak_memory_bytes"].as_u64().unwrap() >= 64 << 10, "{f}");
    assert!(f["duration_us"].as_u64().unwrap() > 0, "{f}");
    assert!(f["queued_ms"].is_u64(), "{f}");
    assert_eq!(records(&host, &format!("message={fail_id}")).len(), 1);

    // Retries are attempts of one message, each its own record.
    let retried = records(&host, "correlation=c-retry");
    let attempts: Vec<_> = retried
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [2, 1], "newest first");
    assert!(retried.iter().all(|r| r["outcome"] == "retry"));
    let unsuccessful = records(&host, "function=worker&outcome=unsuccessful");
    assert_eq!(unsuccessful.len(), 4, "fail, forge-log and two retries");
    assert_eq!(records(&host, "trigger=http").len(), 1);

    // Pages walk the history without repeating or missing a record.
    let first = host.admin("GET", "/v1/invocations?limit=4", "").json();
    let next = first["next"].as_u64().expect("a next page");
    let second = records(&host, &format!("limit=4&before={next}"));
    assert_eq!(
        first["invocations"].as_array().unwrap().len() + second.len(),
        6
    );

    // Past the caps: 400 with the cap named, never clamped quietly.
    for (query, says) in [
        ("limit=1001", "cap of 1000"),
        ("limit=51&logs=true", "cap of 50"),
        ("outcome=exploded", "outcome must be one of"),
        ("id=%27%20OR%201%3D1", ""),
    ] {
        let r = host.admin("GET", &format!("/v1/invocations?{query}"), "");
        if says.is_empty() {
            // Values are bound, never spliced into SQL: nothing matches.
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["invocations"], json!([]));
            continue;
        }
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{query}: {message}");
    }
    let long = "x".repeat(2000);
    assert_eq!(
        host.admin("GET", &format!("/v1/invocations?job={long}"), "")
            .status,
        400
    );

    // One invocation with its logs; a guest's forged line is its text.
    let forged = &records(&host, "correlation=c-log")[0];
    let id = forged["id"].as_str().unwrap().to_string();
    let one = host
        .admin("GET", &format!("/v1/invocations/{id}"), "")
        .json();
    let stdout = one["logs"]["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("ok\r2026-12-02"), "{stdout:?}");
    assert_eq!(
        host.admin("GET", "/v1/invocations/no-such-id", "").status,
        404
    );

    // The CLI: a table, JSON, and the logs with control characters escaped.
    let table = host.cli_ok(&["invocations", "--function", "worker", "--outcome", "failed"]);
    assert!(
        table.contains("worker@v1") && table.contains("this input can never work"),
        "{table}"
    );
    assert_eq!(
        table.lines().count(),
        3,
        "a header and two failures: {table}"
    );
    let json: Value = serde_json::from_str(&host.cli_ok(&[
        "invocations",
        "--correlation",
        "c-retry",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(json["invocations"].as_array().unwrap().len(), 2);
    let logs = host.cli_ok(&["logs", "worker", "--invocation", &id]);
    assert!(logs.contains(r"ok\r2026-12-02"), "{logs}");
    assert!(
        !logs.contains('\r'),
        "a carriage return from a guest reaches no terminal"
    );
    assert!(logs.contains(r"forged by a fail message"), "{logs}");
    assert!(!logs.lines().any(|l| l.starts_with("2026-12-02")), "{logs}");

    // Records outlive the host.
    assert!(host.stop());
    let host = Host::start_in(data.path(), &["--host-id", "host-a"]);
    assert_eq!(records(&host, "function=worker").len(), 6);
}

#[test]
fn retention_keeps_the_newest_records_and_fewer_logs() {
    let g = guests();
    let data = tempfile::tempdir().unwrap();
    let args = ["--invocation-records", "5", "--invocation-logs", "2"];
    let host = Host::start_in(data.path(), &args);
    host.deploy_ok(
        "name = \"talker\"\n[[triggers.http]]\npath = \"/talk/{mode}\"\n",
        &g.adversary,
    );
    for _ in 0..8 {
        // Prints a line, then fails: a record with logs each time.
        assert_eq!(host.get("/talk/forge-log").status, 500);
    }
    host.wait_for(30, "eight records", |h| {
        let v = h.admin("GET", "/v1/invocations", "").json();
        (v["invocations"].as_array().unwrap().len() == 8).then_some(())
    });
    // The writer prunes when it starts, and every 30 s after.
    assert!(host.stop());
    let host = Host::start_in(data.path(), &args);
    let all = host.wait_for(30, "five records", |h| {
        let v = h.admin("GET", "/v1/invocations?logs=true", "").json();
        let all = v["invocations"].as_array().unwrap().clone();
        (all.len() == 5).then_some(all)
    });
    let with_logs: Vec<bool> = all.iter().map(|r| r["logs"].is_object()).collect();
    assert_eq!(
        with_logs,
        [true, true, false, false, false],
        "the newest two keep their logs"
    );
}
