//! Hostile guests and clients, each beside a well-behaved neighbour: every
//! test asserts the exact error the guest or client sees, and that the
//! neighbour's work is unaffected (its messages processed, its thumbnails
//! written, its requests answered). See SECURITY.md for the threat model.

use fnhost_tests::{Host, guests, png_size, repo_root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The adversary under `name`, on `/<name>/{mode}`, with `extra` manifest text.
fn adversary(name: &str, extra: &str) -> String {
    format!("name = \"{name}\"\n[[triggers.http]]\npath = \"/{name}/{{mode}}\"\n{extra}\n")
}

/// The text a mode answered with (the adversary answers 200 with what the
/// host told it).
fn said(host: &Host, path: &str) -> String {
    let r = host.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.text()
}

fn queue_stats(host: &Host, queue: &str) -> Value {
    host.admin("GET", &format!("/v1/queues/{queue}"), "").json()
}

fn send(host: &Host, queue: &str, message: Value) -> Value {
    let r = host.admin(
        "POST",
        &format!("/v1/queues/{queue}/messages"),
        message.to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn peek(host: &Host, queue: &str) -> Vec<Value> {
    let v = host
        .admin("GET", &format!("/v1/queues/{queue}/messages?max=100"), "")
        .json();
    v["messages"].as_array().cloned().unwrap_or_default()
}

fn dead_letters(host: &Host, queue: &str) -> Vec<Value> {
    let v = host
        .admin("GET", &format!("/v1/queues/{queue}/dead-letters"), "")
        .json();
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

/// Wait until `queue` holds nothing: every message processed.
fn drained(host: &Host, queue: &str) {
    host.wait_for(60, &format!("{queue} to drain"), |h| {
        let s = queue_stats(h, queue);
        (s["ready"] == 0 && s["in_flight"] == 0 && s["delayed"] == 0).then_some(())
    });
}

fn error_of(r: &fnhost_tests::Resp) -> (u16, String, String) {
    let v = r.json();
    (
        r.status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn a_reply_cannot_reach_a_queue_the_sender_was_not_granted() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &adversary("sender", "[grants]\nqueues = [\"pyq\"]"),
        &g.adversary,
    );
    // The neighbour: bound to `pyq`, it answers every message.
    host.deploy_ok(
        "name = \"pyworker\"\n[[triggers.queue]]\nqueue = \"pyq\"\n",
        &g.adversary,
    );
    let text = said(&host, "/sender/reply-steal");
    assert!(
        text.starts_with("queue error: ")
            && text.contains(
                "reply_to: no grant allows sending to queue \\\"billing\\\"; add it to grants.queues in fnhost.toml"
            ),
        "{text}"
    );
    // A well-behaved sender's reply (through the API, which may send
    // anywhere) is processed and answered.
    send(&host, "pyq", json!({"body": "ok", "reply_to": "replies"}));
    let reply = host.wait_for(60, "the neighbour's reply", |h| peek(h, "replies").pop());
    assert_eq!(reply["body"], "ok");
    drained(&host, "pyq");
    assert!(peek(&host, "billing").is_empty(), "nothing reached billing");
    assert_eq!(queue_stats(&host, "billing")["dead_letters"], 0);
}

#[test]
fn huge_delays_are_refused_at_the_edge_and_the_queue_serves_everyone_else() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &adversary("spammer", "[grants]\nqueues = [\"work\"]"),
        &g.adversary,
    );
    host.deploy_ok(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\n",
        &g.adversary,
    );
    let hostile = std::thread::scope(|s| {
        let spam = s.spawn(|| {
            (0..20)
                .map(|i| {
                    let mode = if i % 2 == 0 {
                        "delay-2^63"
                    } else {
                        "delay-max"
                    };
                    said(&host, &format!("/spammer/{mode}"))
                })
                .collect::<Vec<_>>()
        });
        for i in 0..50 {
            send(
                &host,
                "work",
                json!({"body": "ok", "correlation_id": format!("n{i}")}),
            );
        }
        spam.join().unwrap()
    });
    for text in hostile {
        assert!(
            text.starts_with("queue error: ")
                && text.contains(
                    "ms from now: nothing can be scheduled after 9999-12-31T23:59:59.999Z"
                ),
            "{text}"
        );
    }
    drained(&host, "work");
    assert_eq!(
        queue_stats(&host, "work")["dead_letters"],
        0,
        "all 50 processed"
    );
    // The API refuses the same, naming the limit.
    for message in [
        json!({"body": "x", "delay": "9000y"}),
        json!({"body": "x", "not_before_ms": 9_223_372_036_854_775_808u64}),
    ] {
        let r = host.admin("POST", "/v1/queues/work/messages", message.to_string());
        let (status, code, text) = error_of(&r);
        assert_eq!((status, code.as_str()), (400, "invalid_message"), "{text}");
        assert!(text.contains("9999-12-31T23:59:59.999Z"), "{text}");
    }
    // A job scheduled past the limit is refused too.
    let r = host.admin(
        "POST",
        "/v1/functions/worker/jobs",
        json!({"input": "ok", "delay": "9000y"}).to_string(),
    );
    let (status, code, text) = error_of(&r);
    assert_eq!((status, code.as_str()), (400, "invalid_job"), "{text}");
    assert!(
        text.contains("nothing can be scheduled after 9999-12-31T23:59:59.999Z"),
        "{text}"
    );
}

fn thumbnail_manifest() -> String {
    std::fs::read_to_string(repo_root().join("functions/thumbnail/fnhost.toml")).unwrap()
}

fn png() -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/landscape-300x200.png")).unwrap()
}

fn thumbnail(host: &Host, key: &str) -> Option<Vec<u8>> {
    let r = host.admin("GET", &format!("/v1/buckets/thumbnails/objects/{key}"), "");
    (r.status == 200).then_some(r.body)
}

#[test]
fn an_upload_with_an_absurd_content_type_is_refused_and_thumbnails_keep_coming() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&thumbnail_manifest(), &g.thumbnail);
    host.deploy_ok(
        &adversary(
            "uploader",
            "[[grants.storage]]\nbucket = \"uploads\"\naccess = \"write\"",
        ),
        &g.adversary,
    );
    let text = said(&host, "/uploader/ctype-2097152");
    assert_eq!(
        text,
        "storage error: StorageError::TooLarge(\"the content type is 2097152 bytes, over the limit of 256\")"
    );
    // Over the API, the same.
    let r = host.request(
        "PUT",
        "/v1/buckets/uploads/objects/evil.png",
        png(),
        Some(&host.token),
    );
    assert!(matches!(r.status, 200 | 201));
    let long = format!("image/png;{}", "x".repeat(300));
    let client = reqwest::blocking::Client::new();
    let r = client
        .put(format!("{}/v1/buckets/uploads/objects/evil2.png", host.url))
        .bearer_auth(&host.token)
        .header("content-type", long)
        .body(png())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Normal uploads after it get their thumbnails.
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/after.png", png());
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    let thumb = host.wait_for(60, "the thumbnail", |h| thumbnail(h, "after.png"));
    assert_eq!(png_size(&thumb), (128, 85));
}

#[test]
fn a_change_no_message_can_carry_goes_to_the_dead_letters_and_later_uploads_get_thumbnails() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    host.deploy_ok(&thumbnail_manifest(), &g.thumbnail);
    host.wait_for(30, "the trigger to start", |h| {
        h.log().contains("blob trigger reconciled").then_some(())
    });
    assert!(host.stop());
    // What an earlier version of fnhost let a guest store: an upload whose
    // content type is 2 MiB, in the index and the change feed.
    {
        let conn = rusqlite::Connection::open(dir.path().join("blobs.db")).unwrap();
        let ct = format!("image/png;{}", "x".repeat(2 << 20));
        conn.execute(
            "INSERT INTO blob_changes (bucket, key, kind, etag, size, content_type, at_ms) VALUES ('uploads', 'old/huge.png', 'created', 'e0', 4, ?1, 1)",
            [&ct],
        )
        .unwrap();
    }
    let host = Host::start_in(dir.path(), &[]);
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/fresh.png", png());
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    let thumb = host.wait_for(60, "the thumbnail behind the bad change", |h| {
        thumbnail(h, "fresh.png")
    });
    assert_eq!(png_size(&thumb), (128, 85));
    let dead = dead_letters(&host, "fnhost-blob-thumbnail.uploads");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("the change to \"old/huge.png\" cannot be handed to the trigger: ")
            && error.contains("over the limit of 1048576"),
        "{error}"
    );
    assert!(
        !host.log().contains("cannot feed blob changes to a trigger"),
        "the feed was never stuck"
    );
}

#[test]
fn errors_quote_a_short_prefix_of_what_was_sent() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &adversary(
            "adv",
            "[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\nprefix = \"notes/\"",
        ),
        &g.adversary,
    );
    let text = said(&host, "/adv/longkey-1200000");
    assert!(
        text.len() < 400,
        "{} bytes: {}",
        text.len(),
        &text[..400.min(text.len())]
    );
    assert!(
        text.starts_with(
            "storage error: StorageError::Denied(\"no storage grant allows write of key \\\"kkkk"
        ) && text.contains("… (1200000 bytes)"),
        "{text}"
    );
    let text = said(&host, "/adv/longbucket-1200000");
    assert!(
        text.len() < 400 && text.contains("(1200000 bytes)"),
        "{text}"
    );
    // The neighbour's put under its grant works.
    assert_eq!(
        said(&host, "/adv/put"),
        "stored 5 bytes, read back \"value\", 1 listed"
    );
    let log = host.log();
    assert!(
        log.lines().all(|l| l.len() < 10_000),
        "no log line carries the megabyte"
    );
}

#[test]
fn a_large_output_is_the_functions_error_naming_the_limit() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &adversary("big", "[limits]\nmemory_mb = 1024"),
        &g.adversary,
    );
    host.deploy_ok(
        "name = \"hello\"\n[[triggers.http]]\npath = \"/hello\"\n",
        &g.hello,
    );
    for (path, expected) in [
        (
            "/big/big-204800",
            "the job broke a limit: it handed the host more than 67174400 bytes in one call",
        ),
        (
            "/big/big-8192",
            "the job broke a limit: its output is 8388608 bytes, over the limit of 6291456",
        ),
        (
            // 64 of its own, and the content type.
            "/big/headers-64",
            "the job broke a limit: its output has 65 headers, over the limit of 64",
        ),
    ] {
        let (status, code, message) = error_of(&host.get(path));
        assert_eq!(
            (status, code.as_str()),
            (500, "function_error"),
            "{path}: {message}"
        );
        assert!(message.starts_with(expected), "{path}: {message}");
        assert!(
            host.get("/hello").status == 200 && host.get("/big/ok").text() == "ok",
            "the neighbour and the function itself answer after {path}"
        );
    }
    assert_eq!(
        host.get("/big/big-6144").body.len(),
        6 << 20,
        "at the limit is fine"
    );
    // As a job, the same is a permanent failure: not retried.
    let r = host.admin(
        "POST",
        "/v1/functions/big/jobs",
        json!({"input": "big-8192"}).to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = host.wait_for(60, "the job to end", |h| {
        let v = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
        (v["state"] != "queued" && v["state"] != "running").then_some(v)
    });
    assert_eq!(
        (done["state"].as_str(), done["attempts"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 6291456"),
        "{done}"
    );
    assert!(
        host.log().contains("its output is 8388608 bytes"),
        "and the log says so"
    );
}

#[test]
fn attributes_errors_and_limits_have_caps() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &adversary("adv", "[grants]\nqueues = [\"work\"]"),
        &g.adversary,
    );
    host.deploy_ok(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nmax_attempts = 1\n",
        &g.adversary,
    );
    let text = said(&host, "/adv/attrs-17");
    assert!(
        text.contains("the message has 17 attributes, over the limit of 16"),
        "{text}"
    );
    let text = said(&host, "/adv/attr-host");
    assert!(
        text.contains("attribute \\\"fnhost-status\\\" is reserved"),
        "{text}"
    );
    assert!(said(&host, "/adv/attrs-16").starts_with("sent "));
    for message in [
        json!({"body": "x", "attributes": {"fnhost-status": "succeeded"}}),
        json!({"body": "x", "attributes": {"v": "x".repeat(4097)}}),
    ] {
        let r = host.admin("POST", "/v1/queues/work/messages", message.to_string());
        assert_eq!(error_of(&r).0, 400, "{}", r.text());
    }
    // A retry message of 100 KiB is kept as 4 KiB at most.
    send(&host, "work", json!({"body": "bigfail-100"}));
    let dead = host.wait_for(60, "the dead letter", |h| {
        dead_letters(h, "work")
            .into_iter()
            .find(|d| d["message"]["body"] == "bigfail-100")
    });
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.len() <= 4096 && error.ends_with("bytes in all)"),
        "{}",
        error.len()
    );
    drained(&host, "work");
    // Manifest limits past their maxima are refused with the range.
    for (limits, field) in [
        ("fuel = 9_000_000_000_000_000_000", "limits.fuel"),
        ("log_bytes = 1_000_000_000", "limits.log_bytes"),
    ] {
        let out = host.deploy(
            &adversary("greedy", &format!("[limits]\n{limits}")),
            &g.adversary,
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(field) && err.contains("out of range; use"),
            "{err}"
        );
    }
    let out = host.deploy(
        &adversary(
            "prefixed",
            "[[grants.storage]]\nbucket = \"files\"\naccess = \"read\"\nprefix = \"user1\"",
        ),
        &g.adversary,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("grants.storage[0].prefix")
            && err.contains("must end with '/'"),
        "{err}"
    );
}

#[test]
fn guest_text_cannot_forge_host_log_lines() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    let (status, code, message) = error_of(&host.get("/adv/forge-log"));
    assert_eq!((status, code.as_str()), (500, "function_error"));
    assert!(message.contains("forged by a fail message"), "{message}");
    assert_eq!(host.get("/adv/ok").text(), "ok");
    let log = host.log();
    assert!(
        log.contains("\\n2026-12-02T00:00:00.000000Z  INFO fnhost: forged by a fail message"),
        "escaped in the log: {log}"
    );
    assert!(log.contains("ok\\r2026-12-02T00:00:00.000000Z"), "{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-02T00:00:00.000000Z") && !line.contains('\r'),
            "a forged line: {line:?}"
        );
    }
}

#[test]
fn a_guest_holding_host_resources_is_stopped_at_the_cap() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    let (status, code, message) = error_of(&host.get("/adv/resources"));
    assert_eq!(
        (status, code.as_str()),
        (500, "function_trapped"),
        "{message}"
    );
    assert_eq!(
        message,
        "too many resources: the guest held more than 1024 host resources (streams, pollables) at once"
    );
    assert_eq!(host.get("/adv/ok").text(), "ok");
}

#[test]
fn dedup_ids_are_scoped_by_the_sending_function() {
    let g = guests();
    let host = Host::start();
    for who in ["alice", "mallory"] {
        host.deploy_ok(
            &adversary(
                who,
                &format!("[grants]\nqueues = [\"outbox\"]\n[config]\nwho = \"{who}\""),
            ),
            &g.adversary,
        );
    }
    let m = said(&host, "/mallory/dedup-order-1");
    let a = said(&host, "/alice/dedup-order-1");
    assert!(
        m.starts_with("sent ") && a.starts_with("sent ") && m != a,
        "{m} / {a}"
    );
    assert_eq!(
        said(&host, "/alice/dedup-order-1"),
        a,
        "alice's own repeat is absorbed"
    );
    let mut bodies: Vec<String> = peek(&host, "outbox")
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["alice", "mallory"]);
}

/// Read from a raw connection until it closes or `secs` pass; what came.
fn read_until_closed(stream: &mut TcpStream, secs: u64) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

fn addr(host: &Host) -> String {
    host.url.trim_start_matches("http://").to_string()
}

#[test]
fn slow_clients_are_cut_off_and_a_full_line_gets_503() {
    let g = guests();
    let host = Host::start_with(&[
        "--header-read-timeout",
        "1s",
        "--body-read-timeout",
        "1s",
        "--max-concurrency",
        "1",
        "--max-pending-requests",
        "0",
    ]);
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    // Headers that never end: the connection is closed.
    let mut slow = TcpStream::connect(addr(&host)).unwrap();
    slow.write_all(b"GET /adv/ok HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, 10);
    assert!(
        closed,
        "a client that never finishes its headers is cut off"
    );
    // A body that stalls: 408.
    let mut stalled = TcpStream::connect(addr(&host)).unwrap();
    stalled
        .write_all(b"POST /adv/ok HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten..")
        .unwrap();
    let (answer, _) = read_until_closed(&mut stalled, 10);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    // The one instance busy and no room to wait: the next request is told
    // to come back, at once, and the busy one is answered.
    let started = |h: &Host| h.log().matches("invocation started").count();
    let before = started(&host);
    std::thread::scope(|s| {
        let busy = s.spawn(|| host.get("/adv/busy-3000"));
        host.wait_for(30, "the busy request to run", |h| {
            (started(h) > before).then_some(())
        });
        let r = host.get("/adv/ok");
        assert_eq!(
            (r.status, r.header("retry-after").as_deref()),
            (503, Some("1")),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["error"]["code"], "busy");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry in a moment")
        );
        assert_eq!(busy.join().unwrap().text(), "busy for 3000 ms ()");
    });
    assert_eq!(host.get("/adv/ok").text(), "ok");
}

#[test]
fn connections_past_the_cap_get_503_and_the_host_recovers() {
    let g = guests();
    let host = Host::start_with(&["--max-connections", "2"]);
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    // Wait for the CLI's deploy connection to close.
    std::thread::sleep(Duration::from_millis(300));
    let hogs: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr(&host)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(addr(&host)).unwrap();
    third
        .write_all(b"GET /adv/ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut third, 10);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("retry-after: 1") && answer.contains("too_many_connections"),
        "{answer}"
    );
    assert!(closed);
    drop(hogs);
    let ok = host.wait_for(30, "a free connection", |h| {
        let r = reqwest::blocking::get(format!("{}/adv/ok", h.url)).ok()?;
        (r.status() == 200).then(|| r.text().unwrap())
    });
    assert_eq!(ok, "ok");
}

const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";

/// Read one request from `stream` and answer it with `response`; the
/// request line and body.
fn answer(stream: TcpStream, response: &str) -> (String, Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut header = String::new();
    let mut length = 0usize;
    while reader.read_line(&mut header).is_ok() && header != "\r\n" {
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        header.clear();
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
    (line, body)
}

/// A one-shot HTTP server on loopback: answers the first request with
/// `response` and reports its request line, or `None` if none came within
/// `secs`.
fn one_request(
    response: &'static str,
    secs: u64,
) -> (String, std::thread::JoinHandle<Option<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let (line, _) = answer(stream, response);
                    return Some(line);
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return None,
            }
        }
    });
    (url, handle)
}

fn submit(host: &Host, body: Value) -> fnhost_tests::Resp {
    host.admin("POST", "/v1/functions/adv/jobs", body.to_string())
}

#[test]
fn callbacks_cannot_reach_loopback_or_metadata_addresses_unless_allowed() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    for (url, says) in [
        ("http://127.0.0.1:9/done", "is a loopback address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "is a link-local address",
        ),
        ("http://[::1]:9/", "is a loopback address"),
        ("http://10.0.0.1/", "is a private-network address"),
    ] {
        let (status, code, message) =
            error_of(&submit(&host, json!({"input": "ok", "callback_url": url})));
        assert_eq!((status, code.as_str()), (400, "invalid_job"), "{url}");
        assert!(
            message.contains(says) && message.contains("--callback-allow"),
            "{message}"
        );
    }
    // A name that resolves to loopback is refused when it is resolved: the
    // job runs, its record is kept, and no request reaches the server.
    let (server, got) = one_request(NO_CONTENT, 8);
    let url = server.replace("127.0.0.1", "localhost") + "/done";
    let r = submit(&host, json!({"input": "ok", "callback_url": url}));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = host.wait_for(60, "the job", |h| {
        let v = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
        (v["state"] == "succeeded").then_some(v)
    });
    assert_eq!(done["result"]["body"], "ok");
    assert_eq!(
        got.join().unwrap(),
        None,
        "the callback never reached loopback"
    );
    assert!(
        host.log().contains("callback host \"localhost\" refused"),
        "{}",
        host.log()
    );
}

#[test]
fn allowed_callbacks_do_not_follow_redirects() {
    let g = guests();
    let host = Host::start_with(&["--callback-allow", "loopback"]);
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    let (elsewhere, reached) = one_request(NO_CONTENT, 8);
    let redirect: &'static str = Box::leak(
        format!("HTTP/1.1 302 Found\r\nlocation: {elsewhere}/stolen\r\ncontent-length: 0\r\n\r\n")
            .into_boxed_str(),
    );
    let (callback, first) = one_request(redirect, 30);
    let r = submit(
        &host,
        json!({"input": "ok", "callback_url": format!("{callback}/done")}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let line = first.join().unwrap().expect("the callback arrives");
    assert!(line.starts_with("POST /done "), "{line}");
    assert_eq!(
        reached.join().unwrap(),
        None,
        "the redirect is not followed"
    );
}

#[test]
fn a_callback_cut_off_by_a_crash_is_sent_after_the_restart() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start_in(dir.path(), &["--callback-allow", "loopback"]);
    host.deploy_ok(&adversary("adv", ""), &g.adversary);
    // Nothing listens there yet: the callback fails and is retried.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = submit(
        &host,
        json!({"input": "ok", "callback_url": format!("http://127.0.0.1:{port}/done")}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    host.wait_for(30, "the first failed callback", |h| {
        h.log().contains("the job callback failed").then_some(())
    });
    host.kill9();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let received = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let (_, body) = answer(stream, NO_CONTENT);
        serde_json::from_slice::<Value>(&body).unwrap()
    });
    let host = Host::start_in(dir.path(), &["--callback-allow", "loopback"]);
    let record = received.join().unwrap();
    assert_eq!(
        (record["id"].as_str(), record["state"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );
    drop(host);
}
