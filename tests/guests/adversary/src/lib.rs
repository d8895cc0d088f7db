//! A job that misbehaves on request, to prove the sandbox's limits.
//!
//! The mode comes from the route parameter `{mode}` (else the query's
//! `mode`) or the invoke payload:
//! `ok`, `authorization` (the Authorization header it saw, and its own name
//! in the `adversary-function` header), `loop`, `memory`, `recursion`, `panic`, `stdout`, `retry`, `fail`,
//! `config`, `storage`, `put`, `get`, `queue`, `checkpoint`, `progress`, `resume` (checkpoint,
//! then panic; the next attempt answers with the checkpoint), `resume-slow`
//! (checkpoint, then spin for ten minutes), `busy-<ms>` (then answers with
//! the `secret-word` config value), `grow-<mb>`, `big-<kib>` (answers with
//! that many KiB), `pages-<limit>` (lists `secrets/notes/` in pages).
//!
//!
//! Hostile modes, each answering with what the host said (so a test can
//! assert the exact error): `reply-steal` (send to `pyq` with `reply_to =
//! "billing"`), `delay-<ms|max|2^63>` (send to `work` with that delay),
//! `ctype-<bytes>` (put to `uploads` with a content type that long),
//! `longkey-<bytes>`, `longbucket-<bytes>`, `attrs-<n>`, `attr-host`
//! (an `fnhost-` attribute), `dedup-<id>` (send to `outbox`, or the queue
//! config `outbox` names, with that dedup id), `forge-log` (stdout and a `fail` message that try to start log
//! lines of their own), `bigfail-<kib>` (a `retry` message that long),
//! `resources` (hold WASI pollables until the host refuses more),
//! `headers-<n>` (an output with that many headers). `note-<i>`,
//! `slow-note-<i>` (a second's work first) and `wait-note-<i>` (three
//! seconds' wait first) print `processed <mode>`, so a test can see which
//! host processed which message. `ordered-note-<i>` and `flaky-note-<i>`
//! (a message of a queue group) spin for 200 ms and print `processed
//! <mode> attempt <n> from <start ms> to <end ms>`; a `flaky-note-` asks
//! for a retry the first time it runs (it leaves a checkpoint to tell),
//! printing `retrying` instead.
//!
//! Blob and timer events are recorded instead, as JSON objects in bucket
//! `events` (keys `timer/<due>-<attempt>` and `blob/<key>/<invocation>`)
//! with the run's start and end times, after spinning for the `busy_ms`
//! config value; with config `on_event = "retry"` they fail transiently.

use fnhost_sdk::queue::SendOptions;
use fnhost_sdk::{Error, Event, Invocation, Output, Result, job};
use std::hint::black_box;

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    // Not a tail call: every level keeps a frame.
    black_box(recurse(black_box(n + 1))) + 1
}

fn busy(ms: u64) {
    let start = std::time::Instant::now();
    while start.elapsed().as_millis() < ms as u128 {
        black_box(0);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Record a blob or timer event in bucket `events`.
fn record(inv: &Invocation, event: &Event) -> Result<Output> {
    let start = now_ms();
    if fnhost_sdk::config("on_event").as_deref() == Some("retry") {
        return Err(Error::retry("asked to retry every event"));
    }
    if let Some(ms) = fnhost_sdk::config("busy_ms").and_then(|v| v.parse().ok()) {
        busy(ms);
    }
    let (key, detail) = match event {
        Event::Timer(t) => (
            format!("timer/{}-{}", t.scheduled_at_ms, inv.attempt),
            format!(
                "\"scheduled_at_ms\": {}, \"past_due\": {}",
                t.scheduled_at_ms, t.past_due
            ),
        ),
        Event::Blob(c) => (
            format!("blob/{}/{}", c.key, inv.id),
            format!(
                "\"bucket\": {:?}, \"key\": {:?}, \"kind\": \"{:?}\", \"etag\": {:?}{}",
                c.bucket,
                c.key,
                c.kind,
                c.etag.clone().unwrap_or_default(),
                probe(&c.bucket, &c.key)
            ),
        ),
        _ => unreachable!("only blob and timer events are recorded"),
    };
    let body = format!(
        "{{{detail}, \"start_ms\": {start}, \"end_ms\": {}, \"attempt\": {}}}",
        now_ms(),
        inv.attempt
    );
    fnhost_sdk::storage::put("events", &key, body.as_bytes(), Some("application/json"))?;
    Ok(Output::text(body))
}

/// With config `neighbour` set: what reading the triggering object, that
/// neighbour, and a listing of the bucket gave (the event-scoped grant
/// tests read it).
fn probe(bucket: &str, key: &str) -> String {
    let Some(neighbour) = fnhost_sdk::config("neighbour") else {
        return String::new();
    };
    let read = |k: &str| match fnhost_sdk::storage::get(bucket, k) {
        Ok(Some(body)) => format!("read {} bytes", body.len()),
        Ok(None) => "missing".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let listed = match fnhost_sdk::storage::objects(bucket, "").next() {
        Some(Err(e)) => format!("error: {e}"),
        _ => "listed".to_string(),
    };
    format!(
        ", \"own\": {:?}, \"neighbour\": {:?}, \"list\": {:?}",
        read(key),
        read(&neighbour),
        listed
    )
}

fn options() -> SendOptions {
    SendOptions {
        delay_ms: None,
        dedup_id: None,
        group: None,
        priority: None,
        correlation_id: None,
        reply_to: None,
        attributes: Vec::new(),
    }
}

/// A send's outcome as text: the message id, or the error the host gave.
fn send_outcome(queue: &str, body: &[u8], opts: SendOptions) -> String {
    match fnhost_sdk::queue::send(queue, body, &opts) {
        Ok(id) => format!("sent {id}"),
        Err(e) => format!("queue error: {e}"),
    }
}

/// A put's outcome as text.
fn put_outcome(bucket: &str, key: &str, content_type: Option<&str>) -> String {
    match fnhost_sdk::storage::put(bucket, key, b"\x89PNG", content_type) {
        Ok(meta) => format!("stored {} bytes", meta.size),
        Err(e) => format!("storage error: {e}"),
    }
}

/// With config `queue_probe` set, a queue message is reported on stdout
/// (`probe <function> attempt <n> checkpoint <state or none> body
/// <body>`); then, with config `role = "public"`, the function saves a
/// checkpoint that tries to steer whoever runs the next attempt (for body
/// `steer`, a made-up resume state; for `steer-sealed`, bytes that look
/// sealed) and asks to be retried; otherwise it succeeds.
fn probe_queue(inv: &Invocation, body: &[u8]) -> Result<Output> {
    let seen = inv
        .checkpoint
        .as_ref()
        .map_or("none".to_string(), |c| String::from_utf8_lossy(c).into_owned());
    let body = String::from_utf8_lossy(body);
    println!(
        "probe {} attempt {} checkpoint {seen} body {body}",
        inv.function, inv.attempt
    );
    if fnhost_sdk::config("role").as_deref() != Some("public") {
        return Ok(Output::text("probed"));
    }
    let state: Vec<u8> = match &*body {
        "steer-sealed" => [&b"FNHQ1"[..], &[7u8; 80]].concat(),
        _ => br#"{"step": 999, "approved": true}"#.to_vec(),
    };
    // Raw bytes, past the SDK's JSON encoding.
    fnhost_sdk::bindings::fnhost::job::context::checkpoint(&state)
        .map_err(|e| Error::fail(format!("{e:?}")))?;
    Err(Error::retry("the public side always fails"))
}

#[job]
fn adversary(inv: Invocation, event: Event) -> Result<Output> {
    if matches!(event, Event::Blob(_) | Event::Timer(_)) {
        return record(&inv, &event);
    }
    if let Event::Queue(m) = &event
        && fnhost_sdk::config("queue_probe").is_some()
    {
        return probe_queue(&inv, &m.body);
    }
    let mode = match &event {
        Event::Http(req) => (req.param("mode").map(str::to_string))
            .or_else(|| req.query_param("mode"))
            .unwrap_or_else(|| "ok".into()),
        other => String::from_utf8_lossy(other.payload()).trim().to_string(),
    };
    // `attrs-show` (and `attrs-show-fail`, which then fails): print the
    // queue message's attributes, sorted, as `attributes a=1;b=2`.
    if let Event::Queue(m) = &event
        && mode.starts_with("attrs-show")
    {
        let mut attributes: Vec<String> = m
            .attributes
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        attributes.sort();
        println!("attributes {}", attributes.join(";"));
        if mode.ends_with("-fail") {
            return Err(Error::fail("asked to fail after showing the attributes"));
        }
        return Ok(Output::text("shown"));
    }
    match mode.as_str() {
        "ok" => Ok(Output::text("ok")),
        "authorization" => {
            // What the caller's Authorization header looks like from here.
            let seen = match &event {
                Event::Http(req) => req.header("authorization").unwrap_or("none"),
                _ => "not http",
            };
            Ok(Output::text(format!("authorization: {seen}"))
                .with_header("adversary-function", &inv.function))
        }
        "loop" => {
            let mut i: u64 = 0;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1 << 20]));
            }
        }
        "recursion" => Ok(Output::text(recurse(0).to_string())),
        "panic" => panic!("boom: the adversary panicked on purpose"),
        "stdout" => {
            let line = "x".repeat(1023);
            for _ in 0..(16 * 1024) {
                println!("{line}");
            }
            Ok(Output::text("printed 16 MiB"))
        }
        "retry" => Err(Error::retry("the backend is busy")),
        "progress" => {
            fnhost_sdk::progress(50, "halfway")?;
            busy(300);
            Ok(Output::text("done"))
        }
        "resume" | "resume-slow" => match inv.checkpoint {
            Some(state) => Ok(Output::text(format!(
                "resumed from {} on attempt {}",
                String::from_utf8_lossy(&state),
                inv.attempt
            ))),
            None => {
                fnhost_sdk::checkpoint("step-1")?;
                if mode == "resume" {
                    panic!("crashed after the checkpoint");
                }
                busy(600_000);
                Ok(Output::text("finished without resuming"))
            }
        },
        "fail" => Err(Error::fail("this input can never work")),
        "config" => Ok(Output::text(
            fnhost_sdk::config("secret-word").unwrap_or_default(),
        )),
        "put" => {
            let meta =
                fnhost_sdk::storage::put("secrets", "notes/key", b"value", Some("text/plain"))?;
            let back = fnhost_sdk::storage::get("secrets", "notes/key")?.unwrap_or_default();
            let listed = fnhost_sdk::storage::list_objects("secrets", "notes/")?.len();
            Ok(Output::text(format!(
                "stored {} bytes, read back {:?}, {listed} listed",
                meta.size,
                String::from_utf8_lossy(&back)
            )))
        }
        m if m.starts_with("deny-") => {
            // Many calls the grants deny (the audit log records a few).
            let n: u32 = m[5..].parse().map_err(|_| Error::fail("deny-<n>"))?;
            let denied = (0..n)
                .filter(|i| fnhost_sdk::storage::get("secrets", &format!("k{i}")).is_err())
                .count();
            Ok(Output::text(format!("{denied} denied")))
        }
        m if m.starts_with("ctlkey-") => {
            // A key of that many control characters in `secrets`, written
            // and read back (its audit lines must still be written).
            let n: usize = m[7..].parse().map_err(|_| Error::fail("ctlkey-<n>"))?;
            let key = format!("notes/{}", "\u{1}".repeat(n));
            fnhost_sdk::storage::put("secrets", &key, b"value", None)?;
            let back = fnhost_sdk::storage::get("secrets", &key)?.unwrap_or_default();
            Ok(Output::text(format!(
                "stored and read back {} bytes under a key of {} bytes",
                back.len(),
                key.len()
            )))
        }
        "len" => {
            // How much of the request body arrived.
            let n = match &event {
                Event::Http(req) => req.body.len(),
                other => other.payload().len(),
            };
            Ok(Output::text(format!("body of {n} bytes")))
        }
        "get" => {
            // Read back what `put` stored.
            let back = fnhost_sdk::storage::get("secrets", "notes/key")?.unwrap_or_default();
            Ok(Output::text(String::from_utf8_lossy(&back).into_owned()))
        }
        "storage" => match fnhost_sdk::storage::get("secrets", "key") {
            Ok(_) => Ok(Output::text("storage allowed")),
            Err(e) => Ok(Output::text(format!("storage error: {e}"))),
        },
        "queue" => Ok(Output::text(send_outcome("elsewhere", b"hi", options()))),
        "checkpoint" => match fnhost_sdk::checkpoint(&1) {
            Ok(()) => Ok(Output::text("checkpoint saved")),
            Err(e) => Ok(Output::text(format!("checkpoint error: {e}"))),
        },
        m if m.starts_with("busy-") => {
            let ms: u64 = m[5..].parse().map_err(|_| Error::fail("busy-<ms>"))?;
            busy(ms);
            let word = fnhost_sdk::config("secret-word").unwrap_or_default();
            Ok(Output::text(format!("busy for {ms} ms ({word})")))
        }
        m if m.starts_with("sleep-") => {
            // Waits without spending CPU (a job that calls a slow service):
            // the fleet bench's scaler part runs many of these at once.
            let ms: u64 = m[6..].parse().map_err(|_| Error::fail("sleep-<ms>"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(Output::text(format!("slept {ms} ms")))
        }
        m if m.starts_with("pages-") => {
            // Walk `secrets` under `notes/` in pages of the given size; answer
            // with the keys seen, in order, and the number of pages.
            let limit: u32 = m[6..].parse().map_err(|_| Error::fail("pages-<limit>"))?;
            let (mut keys, mut pages, mut after) = (Vec::new(), 0, None::<String>);
            loop {
                let page =
                    fnhost_sdk::storage::list_page("secrets", "notes/", after.as_deref(), limit)?;
                pages += 1;
                keys.extend(page.objects.into_iter().map(|o| o.key));
                match page.next_start_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let all: Vec<String> = fnhost_sdk::storage::objects("secrets", "notes/")
                .map(|o| o.map(|o| o.key))
                .collect::<std::result::Result<_, _>>()?;
            if all != keys {
                return Err(Error::fail("objects() and list-page disagree"));
            }
            Ok(Output::text(format!("{pages} pages: {}", keys.join(","))))
        }
        "reply-steal" => Ok(Output::text(send_outcome(
            "pyq",
            b"ok",
            SendOptions {
                reply_to: Some("billing".into()),
                ..options()
            },
        ))),
        m if m.starts_with("delay-") => {
            let delay = match &m[6..] {
                "max" => u64::MAX,
                "2^63" => 1 << 63,
                ms => ms.parse().map_err(|_| Error::fail("delay-<ms>"))?,
            };
            let opts = SendOptions {
                delay_ms: Some(delay),
                ..options()
            };
            Ok(Output::text(send_outcome("work", b"later", opts)))
        }
        m if m.starts_with("ctype-") => {
            let n: usize = m[6..].parse().map_err(|_| Error::fail("ctype-<bytes>"))?;
            let ct = format!("image/png;{}", "x".repeat(n.saturating_sub(10)));
            Ok(Output::text(put_outcome("uploads", "evil.png", Some(&ct))))
        }
        m if m.starts_with("longkey-") => {
            let n: usize = m[8..].parse().map_err(|_| Error::fail("longkey-<bytes>"))?;
            Ok(Output::text(put_outcome("secrets", &"k".repeat(n), None)))
        }
        m if m.starts_with("longbucket-") => {
            let n: usize = m[11..]
                .parse()
                .map_err(|_| Error::fail("longbucket-<bytes>"))?;
            Ok(Output::text(put_outcome(&"b".repeat(n), "key", None)))
        }
        m if m.starts_with("attrs-") => {
            let n: usize = m[6..].parse().map_err(|_| Error::fail("attrs-<n>"))?;
            let opts = SendOptions {
                attributes: (0..n).map(|i| (format!("a{i}"), "v".into())).collect(),
                ..options()
            };
            Ok(Output::text(send_outcome("work", b"x", opts)))
        }
        "attr-host" => {
            let opts = SendOptions {
                attributes: vec![("fnhost-status".into(), "succeeded".into())],
                ..options()
            };
            Ok(Output::text(send_outcome("work", b"forged reply", opts)))
        }
        m if m.starts_with("dedup-") => {
            let opts = SendOptions {
                dedup_id: Some(m[6..].to_string()),
                ..options()
            };
            let who = fnhost_sdk::config("who").unwrap_or_default();
            let outbox = fnhost_sdk::config("outbox").unwrap_or_else(|| "outbox".into());
            Ok(Output::text(send_outcome(&outbox, who.as_bytes(), opts)))
        }
        "forge-log" => {
            println!("ok\r2026-12-02T00:00:00.000000Z  INFO fnhost: forged by stdout");
            Err(Error::fail(
                "no\n2026-12-02T00:00:00.000000Z  INFO fnhost: forged by a fail message",
            ))
        }
        m if m.starts_with("bigfail-") => {
            let kib: usize = m[8..].parse().map_err(|_| Error::fail("bigfail-<kib>"))?;
            Err(Error::retry("e".repeat(kib << 10)))
        }
        "resources" => {
            // Never dropped: each stays in the host's resource table.
            for _ in 0..1_000_000u32 {
                std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(1));
            }
            Ok(Output::text("held a million pollables"))
        }
        m if m.starts_with("headers-") => {
            let n: usize = m[8..].parse().map_err(|_| Error::fail("headers-<n>"))?;
            let mut out = Output::text("with headers");
            for i in 0..n {
                out = out.with_header(&format!("x-h{i}"), "v");
            }
            Ok(out)
        }
        m if m.starts_with("ordered-note-") || m.starts_with("flaky-note-") => {
            // When each attempt ran, so a test can see a group's order.
            let start = now_ms();
            busy(200);
            // Its first run, whatever the attempt count (a message given
            // back unrun counts a receive on SQS): no checkpoint yet.
            let failing = m.starts_with("flaky-") && inv.checkpoint.is_none();
            let said = if failing { "retrying" } else { "processed" };
            println!(
                "{said} {m} attempt {} from {start} to {}",
                inv.attempt,
                now_ms()
            );
            if failing {
                fnhost_sdk::checkpoint(&"failed once")?;
                return Err(Error::retry("a flaky note fails its first run"));
            }
            Ok(Output::text(m.to_string()))
        }
        m if m.starts_with("note-")
            || m.starts_with("slow-note-")
            || m.starts_with("wait-note-") =>
        {
            // Say which message this host processed (the fleet tests read it).
            if m.starts_with("slow-") {
                busy(1000);
            }
            if m.starts_with("wait-") {
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
            println!("processed {m}");
            Ok(Output::text(m.to_string()))
        }
        m if m.starts_with("big-") => {
            let kib: usize = m[4..].parse().map_err(|_| Error::fail("big-<kib>"))?;
            Ok(Output::text("x".repeat(kib << 10)))
        }
        m if m.starts_with("grow-") => {
            let mb: usize = m[5..].parse().map_err(|_| Error::fail("grow-<mb>"))?;
            let v = black_box(vec![7u8; mb << 20]);
            Ok(Output::text(format!("held {} MiB", v.len() >> 20)))
        }
        other => Err(Error::fail(format!("unknown mode {other:?}"))),
    }
}
