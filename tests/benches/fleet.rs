//! The fleet benchmark (a bench binary, never a timed test): real release
//! `fnhost serve` processes on the embedded default and on SQS/S3, the
//! latter against the local moto server the test suite uses. moto is a
//! Python emulator, far slower than SQS and S3: its figures say what the
//! *host* spends (CPU per message, read from `/proc`), how work spreads
//! and how the scaler moves, not what a fleet on AWS would sustain.
//!
//! 1. Host CPU per queue message, embedded beside SQS, in pairs (A B A B).
//! 2. Host CPU per blob event (an object put through the admin API → its
//!    trigger run): the embedded change feed beside S3 notifications on SQS.
//! 3. How the work spreads over 1, 2 and 3 hosts against one SQS queue.
//! 4. What the scaler asks for while a backlog drains (the binding's
//!    `desired` and `running` from `GET /v1/queues/{queue}`): 10,000 on the
//!    embedded queue, 1,000 on SQS (moto scans its whole queue on every
//!    request, so 10,000 would take it hours). Each job waits 20 ms without
//!    spending CPU (a call to a slow service), so concurrency is what
//!    drains the queue and `running` shows it.
//!
//! Run with `cargo bench -p fnhost-tests --bench fleet` (`-- --quick` for
//! smaller counts; `BENCH_ONLY=2,4` for some parts). It builds the release
//! host itself.

use fnhost_tests::{Host, guests, moto};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The guest: the cheapest job (`tests/guests/empty`).
const WORKER: &str = "name = \"sink\"\n[[triggers.queue]]\nqueue = \"work\"\nmin_concurrency = 0\nmax_concurrency = 16\ntarget_backlog = 10\nscale_down_cooldown = \"2s\"\n";
const BLOB_SINK: &str = "name = \"blobsink\"\n[[triggers.blob]]\nbucket = \"drop\"\n";
/// One line per invocation, so each host's share can be counted.
const LOG: &str = "warn,fnhost::dispatcher=debug,fnhost::triggers::blob=info";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    fnhost_tests::use_release_host();
    // moto's work per request grows with the queue's depth (it scans
    // every message), so a run costs it about the square of its count:
    // the SQS counts stay where a run takes a minute or two.
    let (n_msgs, n_events, n_spread, backlog, sqs_backlog) = if quick {
        (300, 60, 600, 2_000, 500)
    } else {
        (1_000, 200, 1_500, 10_000, 1_000)
    };
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |i: &str| only.is_empty() || only.split(',').any(|p| p.trim() == i);
    println!("fnhost fleet bench; moto is an emulator, not a performance reference");
    println!("(host CPU is user + system time of the fnhost process, from /proc)\n");

    if part("1") {
        println!("## 1. host CPU per queue message ({n_msgs} messages, empty guest)");
        pairs(n_msgs, ("embedded", "SQS", "msg"), queue_cpu);
    }
    if part("2") {
        println!(
            "## 2. host CPU per blob event ({n_events} puts through the admin API, each → one run)"
        );
        pairs(
            n_events,
            ("embedded feed", "S3 events on SQS", "event"),
            blob_cpu,
        );
    }
    if part("3") {
        println!("## 3. {n_spread} messages on one SQS queue, over 1, 2 and 3 hosts");
        for hosts in 1..=3 {
            spread(hosts, n_spread);
        }
    }
    if part("4") {
        println!(
            "\n## 4. the scaler while a backlog drains (20 ms jobs; max_concurrency 16, target_backlog 10)"
        );
        scaler(true, sqs_backlog);
        scaler(false, backlog);
    }
}

/// Two pairs of `run(on_aws, n, pair)`, embedded first, each line with the
/// host CPU per item and the ratio; `names` are the two sides' and the
/// item's.
fn pairs(
    n: usize,
    (embedded, aws, item): (&str, &str, &str),
    run: fn(bool, usize, usize) -> (Duration, f64),
) {
    let mut ratios = Vec::new();
    for pair in 1..=2 {
        let (e_cpu, e_wall) = run(false, n, pair);
        let (s_cpu, s_wall) = run(true, n, pair);
        let (e, s) = (per(e_cpu, n), per(s_cpu, n));
        println!(
            "pair {pair}: {embedded} {e:.0} µs/{item} ({e_wall:.1} s), {aws} {s:.0} µs/{item} ({s_wall:.1} s), ratio {:.2}",
            s / e
        );
        ratios.push(s / e);
    }
    println!("ratios: {ratios:.2?}\n");
}

fn per(cpu: Duration, n: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / n as f64
}

/// A host on SQS (queues only, or with `extra` config) or embedded.
fn start(dir: &Path, sqs: bool, prefix: &str, extra: &str) -> Host {
    let mut env = vec![("FNHOST_LOG".to_string(), LOG.to_string())];
    if !sqs {
        return Host::start_env(dir, &[], &env);
    }
    let moto = moto();
    env.extend(moto.env());
    let config = moto.host_config(dir, prefix, extra);
    Host::start_env(dir, &["--config", config.to_str().unwrap()], &env)
}

fn prefix(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("b{what}{}x{nanos}-", std::process::id())
}

fn runs(host: &Host) -> usize {
    host.log().matches("invocation succeeded").count()
}

/// Send `n` messages with the given body.
fn send(host: &Host, n: usize, body: &str) {
    for start in (0..n).step_by(1_000) {
        let end = (start + 1_000).min(n);
        let messages: Vec<_> = (start..end).map(|_| json!({ "body": body })).collect();
        let r = host.admin(
            "POST",
            "/v1/queues/work/messages",
            json!({ "messages": messages }).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

/// Wait until `hosts` together ran `n` invocations (at most 10 minutes).
fn wait_runs(hosts: &[Host], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while hosts.iter().map(runs).sum::<usize>() < n {
        assert!(
            Instant::now() < deadline,
            "the runs did not finish in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Host CPU and wall time for `n` messages sent and processed.
fn queue_cpu(sqs: bool, n: usize, pair: usize) -> (Duration, f64) {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), sqs, &prefix(&format!("q{pair}")), "");
    host.deploy_ok(WORKER, &guests().empty);
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, t0) = (host.cpu(), Instant::now());
    send(&host, n, "m");
    wait_runs(std::slice::from_ref(&host), n);
    let out = (host.cpu() - cpu0, t0.elapsed().as_secs_f64());
    host.stop();
    out
}

/// Host CPU and wall time for `n` objects put and their trigger run.
fn blob_cpu(s3: bool, n: usize, pair: usize) -> (Duration, f64) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix(&format!("e{pair}"));
    let extra = format!(
        "[state]\nbackend = \"s3\"\nbucket = \"{}state\"\ncreate = true\n[blobs]\nbackend = \"s3\"\nprefix = \"{p}\"\nnotifications = \"s3-events\"\ncreate = true\n",
        p
    );
    let host = start(dir.path(), s3, &p, &extra);
    host.deploy_ok(BLOB_SINK, &guests().empty);
    if s3 {
        host.wait_for(60, "the bucket's notifications", |h| {
            h.log()
                .contains("bucket notifications set up")
                .then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, t0) = (host.cpu(), Instant::now());
    for i in 0..n {
        let r = host.admin(
            "PUT",
            &format!("/v1/buckets/drop/objects/in/{i}.txt"),
            format!("object {i}"),
        );
        assert!(r.status < 300, "{} {}", r.status, r.text());
    }
    wait_runs(std::slice::from_ref(&host), n);
    let out = (host.cpu() - cpu0, t0.elapsed().as_secs_f64());
    host.stop();
    out
}

/// `n` messages over `k` hosts competing for one SQS queue.
fn spread(k: usize, n: usize) {
    let p = prefix(&format!("s{k}"));
    let dirs: Vec<_> = (0..k).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts: Vec<Host> = dirs.iter().map(|d| start(d.path(), true, &p, "")).collect();
    for h in &hosts {
        h.deploy_ok(WORKER, &guests().empty);
    }
    std::thread::sleep(Duration::from_secs(1));
    let cpu0: Vec<Duration> = hosts.iter().map(Host::cpu).collect();
    let t0 = Instant::now();
    send(&hosts[0], n, "m");
    wait_runs(&hosts, n);
    let wall = t0.elapsed().as_secs_f64();
    let shares: Vec<usize> = hosts.iter().map(runs).collect();
    let cpu: Duration = hosts.iter().zip(&cpu0).map(|(h, c)| h.cpu() - *c).sum();
    println!(
        "{k} host(s): {:.0} msg/s, runs per host {shares:?}, fleet CPU {:.0} µs/msg",
        n as f64 / wall,
        per(cpu, n)
    );
    for h in hosts {
        h.stop();
    }
}

/// Send `n` 20 ms jobs, then deploy the worker, and follow the binding's
/// scaling figures until the queue is empty.
fn scaler(sqs: bool, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), sqs, &prefix("c"), "");
    send(&host, n, "sleep-20");
    let t0 = Instant::now();
    host.deploy_ok(WORKER, &guests().adversary);
    let every = if sqs {
        Duration::from_millis(1_000)
    } else {
        Duration::from_millis(20)
    };
    println!(
        "{}: t (s), backlog (ready + in flight), desired, running",
        if sqs { "SQS" } else { "embedded" }
    );
    let mut line = Vec::new();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = host.admin("GET", "/v1/queues/work", "").json();
        let backlog = v["ready"].as_u64().unwrap_or(0) + v["in_flight"].as_u64().unwrap_or(0);
        let f = &v["functions"][0];
        let desired = f["desired"].as_u64().unwrap_or(0);
        peak = peak.max(desired);
        line.push(format!(
            "{:.1}: {backlog}, {desired}, {}",
            t0.elapsed().as_secs_f64(),
            f["running"].as_u64().unwrap_or(0)
        ));
        if runs(&host) >= n || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(every);
    }
    let wall = t0.elapsed().as_secs_f64();
    // A few seconds more: the scale-down after the cooldown.
    std::thread::sleep(Duration::from_secs(4));
    let v = host.admin("GET", "/v1/queues/work", "").json();
    line.push(format!(
        "{:.1}: idle, {}, {}",
        t0.elapsed().as_secs_f64(),
        v["functions"][0]["desired"],
        v["functions"][0]["running"]
    ));
    let step = line.len().div_ceil(12).max(1);
    let shown: Vec<&String> = line
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == line.len())
        .map(|(_, l)| l)
        .collect();
    for l in shown {
        println!("  {l}");
    }
    println!(
        "  drained {n} in {wall:.1} s; peak desired {peak}; processed {}",
        runs(&host)
    );
    host.stop();
}
