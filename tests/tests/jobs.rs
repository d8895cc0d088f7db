//! Async jobs through the real binary: submit, follow, results, progress,
//! checkpoints that carry over to the next attempt (also across a kill -9),
//! replies and completion callbacks.

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};

const ADVERSARY: &str = "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{mode}\"\n";

fn submit(host: &Host, function: &str, body: Value) -> Value {
    let r = host.admin(
        "POST",
        &format!("/v1/functions/{function}/jobs"),
        body.to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(r.header("location").as_deref(), v["status_url"].as_str());
    assert_eq!(v["state"], "queued");
    v
}

fn finished(host: &Host, id: &str) -> Value {
    host.wait_for(60, "the job to finish", |h| {
        let v = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
        matches!(v["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(v)
    })
}

#[test]
fn jobs_report_state_progress_and_results() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(ADVERSARY, &g.adversary);
    let job = submit(&host, "adv", json!({ "input": "progress" }));
    let id = job["id"].as_str().unwrap();
    let done = finished(&host, id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["progress"], 100);
    assert_eq!(done["progress_message"], "halfway");
    assert_eq!(done["result"]["body"], "done");
    assert_eq!(done["result"]["status"], 200);
    assert!(done["started_at_ms"].as_u64() >= done["created_at_ms"].as_u64());
    assert!(done["expires_at_ms"].as_u64() > done["finished_at_ms"].as_u64());

    // The CLI submits and follows to the end, printing the result.
    let id = host.cli_ok(&["invoke", "adv", "--async", "--data", "progress"]);
    let out = host.cli_ok(&["jobs", id.trim(), "--wait"]);
    assert_eq!(out.trim(), "done");

    // A permanent failure ends the job as failed, and the CLI says so.
    let failed = submit(&host, "adv", json!({ "input": "fail" }));
    let done = finished(&host, failed["id"].as_str().unwrap());
    assert_eq!(done["state"], "failed");
    assert_eq!(done["error"], "the job failed: this input can never work");
    let out = host.cli(&["jobs", failed["id"].as_str().unwrap(), "--wait"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed: the job failed"));
}

#[test]
fn a_checkpoint_carries_over_to_the_next_attempt() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(ADVERSARY, &g.adversary);
    let job = submit(
        &host,
        "adv",
        json!({ "input": "resume", "reply_to": "results", "correlation_id": "c-9" }),
    );
    let done = finished(&host, job["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(
        done["result"]["body"],
        "resumed from \"step-1\" on attempt 2"
    );
    // The completion went to the reply queue with the correlation id.
    let replies = host.admin("GET", "/v1/queues/results/messages", "").json();
    let reply = &replies["messages"][0];
    assert_eq!(reply["correlation_id"], "c-9");
    assert_eq!(reply["body"], "resumed from \"step-1\" on attempt 2");
}

#[test]
fn a_checkpoint_survives_a_kill_9() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start_in(dir.path(), &[]);
    let manifest =
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"long\"\nvisibility_timeout = \"2s\"\n";
    host.deploy_ok(manifest, &g.adversary);
    let r = host.admin(
        "POST",
        "/v1/queues/long/messages",
        json!({ "body": "resume-slow", "reply_to": "out" }).to_string(),
    );
    assert_eq!(r.status, 201);
    // Wait until the first attempt has saved its checkpoint, then kill the host mid-attempt.
    host.wait_for(60, "the checkpoint", |h| {
        let v = h.admin("GET", "/v1/queues/long/messages", "").json();
        v["messages"][0]["checkpoint_size"].as_u64().map(|_| ())
    });
    host.kill9();
    let after = Host::start_in(dir.path(), &[]);
    let reply = after.wait_for(60, "the resumed attempt's reply", |h| {
        let v = h.admin("GET", "/v1/queues/out/messages", "").json();
        v["messages"].as_array().and_then(|m| m.first().cloned())
    });
    assert_eq!(reply["body"], "resumed from \"step-1\" on attempt 2");
}

#[test]
fn completion_callbacks_are_posted() {
    let g = guests();
    // The callback server is on loopback, which callbacks reach only when
    // the host is told they may.
    let host = Host::start_with(&["--callback-allow", "loopback"]);
    host.deploy_ok(ADVERSARY, &g.adversary);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    let received = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        let mut line = String::new();
        let request_line = {
            reader.read_line(&mut line).unwrap();
            line.clone()
        };
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        (
            request_line,
            serde_json::from_slice::<Value>(&body).unwrap(),
        )
    });
    let job = submit(&host, "adv", json!({ "input": "ok", "callback_url": url }));
    let (request_line, record) = received.join().unwrap();
    assert!(request_line.starts_with("POST /done "), "{request_line}");
    assert_eq!(record["id"], job["id"]);
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["result"]["body"], "ok");
}

#[test]
fn bad_submissions_are_refused() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(ADVERSARY, &g.adversary);
    let r = host.admin("POST", "/v1/functions/nope/jobs", "");
    assert_eq!(r.status, 404);
    let r = host.admin(
        "POST",
        "/v1/functions/adv/jobs",
        json!({ "callback_url": "ftp://x" }).to_string(),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_job"))
    );
    let r = host.admin(
        "POST",
        "/v1/functions/adv/jobs",
        json!({ "colour": "red" }).to_string(),
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field")
    );
    // Nor may a completion be sent into one of them.
    let r = host.admin(
        "POST",
        "/v1/functions/adv/jobs",
        json!({ "reply_to": "fnhost-jobs-adv" }).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = host.admin("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", "");
    assert_eq!(r.status, 404);
    // The host's job queues are not for sending to directly.
    let r = host.admin(
        "POST",
        "/v1/queues/fnhost-jobs-adv/messages",
        json!({ "body": "x" }).to_string(),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved")
    );
}
