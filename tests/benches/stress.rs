//! The fleet under stress (a bench binary, never a timed test): 10,000
//! orders through three worker hosts on SQS (the moto server the tests
//! use), one of them killed with SIGKILL and restarted twice while they
//! drain. Each order's run sends a confirmation to a FIFO queue with the
//! order's dedup id, as `functions/order-processor` does, so an order run
//! twice (its host killed after the run, before the delete) confirms once.
//! It counts the orders confirmed, the runs past one per order (absorbed by
//! the dedup), and the orders lost (must be 0).
//!
//! moto scans a whole queue on every request, so one queue of 10,000
//! would take it hours: the orders are spread over ten queues of 1,000,
//! all bound to the one function. moto, a Python emulator on the same two
//! cores, bounds the pace; the figures say what survives, not how fast a
//! fleet on AWS runs.
//!
//! Run with `cargo bench -p fnhost-tests --bench stress` (`-- --quick`
//! for 2,000 orders). It builds the release host itself.

use fnhost_tests::{Host, guests, moto};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Queues the orders are spread over.
const SHARDS: usize = 10;
/// One line per run, so the runs can be counted.
const LOG: &str = "warn,fnhost::dispatcher=debug";

/// Function `stress-<k>` takes the orders of queue `orders-<k>` and
/// confirms them on FIFO queue `outbox-<k>`: moto scans a FIFO queue on
/// every send (for its dedup ids), so one outbox of 10,000 would slow it
/// down as it fills.
fn manifest(k: usize) -> String {
    format!(
        "name = \"stress-{k}\"\n[grants]\nqueues = [\"outbox-{k}\"]\n[config]\nwho = \"stress\"\noutbox = \"outbox-{k}\"\n\
         [[triggers.queue]]\nqueue = \"orders-{k}\"\nvisibility_timeout = \"10s\"\nmax_concurrency = 8\nbackoff_initial = \"1s\"\n"
    )
}

fn start(dir: &Path, prefix: &str) -> Host {
    let moto = moto();
    let mut env = vec![("FNHOST_LOG".to_string(), LOG.to_string())];
    env.extend(moto.env());
    let fifo: Vec<String> = (0..SHARDS).map(|k| format!("\"outbox-{k}\"")).collect();
    // One fleet: deployments shared through the state bucket.
    let more = format!(
        "fifo = [{}]\n[state]\nbackend = \"s3\"\nbucket = \"{prefix}state\"\ncreate = true\n",
        fifo.join(", ")
    );
    let config = moto.host_config(dir, prefix, &more);
    Host::start_env(
        dir,
        &["--config", config.to_str().unwrap(), "--role", "worker"],
        &env,
    )
}

/// Runs of the function that succeeded, in `host`'s log (kept across its
/// restarts).
fn runs(host: &Host) -> usize {
    host.log()
        .lines()
        .filter(|l| l.contains("invocation succeeded") && l.contains("function=stress-"))
        .count()
}

fn main() {
    fnhost_tests::use_release_host();
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 2_000 } else { 10_000 };
    let prefix = format!("stress{}-", std::process::id());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts: Vec<Host> = dirs.iter().map(|d| start(d.path(), &prefix)).collect();
    println!("fnhost stress bench: {n} orders over {SHARDS} SQS queues (moto), 3 worker hosts");
    // Sent before the function is deployed: with 3 hosts long-polling ten
    // queues, moto (one Python process) takes minutes per 1,000 sends.
    let sending = Instant::now();
    for k in 0..SHARDS {
        let orders: Vec<usize> = (0..n).filter(|i| i % SHARDS == k).collect();
        for chunk in orders.chunks(250) {
            let messages: Vec<_> = chunk
                .iter()
                .map(|i| json!({ "body": format!("dedup-order-{i}") }))
                .collect();
            let r = hosts[0].admin(
                "POST",
                &format!("/v1/queues/orders-{k}/messages"),
                json!({ "messages": messages }).to_string(),
            );
            assert_eq!(r.status, 201, "{}", r.text());
        }
    }
    println!("sent in {:.1} s", sending.elapsed().as_secs_f64());
    let t0 = Instant::now();
    // To one host: the others take them from the fleet's state bucket.
    for k in 0..SHARDS {
        hosts[0].deploy_ok(&manifest(k), &guests().adversary);
    }
    for (i, h) in hosts.iter().enumerate() {
        h.wait_for(60, &format!("every function on host {i}"), |h| {
            let fs = h.admin("GET", "/v1/functions", "").json();
            let n = fs["functions"].as_array().map_or(0, Vec::len);
            (n == SHARDS).then_some(())
        });
    }
    let sdk = tokio::runtime::Runtime::new().unwrap();
    let sqs = aws_sdk_sqs::Client::new(
        &sdk.block_on(fnhost::backends::aws::sdk_config(
            fnhost::backends::aws::Target {
                region: Some("us-east-1".into()),
                endpoint: Some(moto().endpoint.clone()),
                keys: Some(("testing".into(), "testing".into())),
            },
            "bench",
        ))
        .unwrap(),
    );
    // Confirmations on one outbox (a queue not made yet holds none).
    let confirmed_on = |k: usize| -> usize {
        let Ok(url) = sdk.block_on(
            sqs.get_queue_url()
                .queue_name(format!("{prefix}outbox-{k}.fifo"))
                .send(),
        ) else {
            return 0;
        };
        let out = sdk
            .block_on(
                sqs.get_queue_attributes()
                    .queue_url(url.queue_url().unwrap())
                    .attribute_names(
                        aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                    )
                    .send(),
            )
            .unwrap();
        out.attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let confirmed = || -> usize { (0..SHARDS).map(confirmed_on).sum() };
    // Kill host 1 when a fifth and again when three fifths are confirmed;
    // restart it a few seconds later each time.
    let mut kills = vec![n * 3 / 5, n / 5];
    let deadline = Instant::now() + Duration::from_secs(90 * 60);
    let mut last = (0, Instant::now());
    loop {
        let done = confirmed();
        if done >= n || Instant::now() > deadline {
            break;
        }
        if kills.last().is_some_and(|&at| done >= at) {
            kills.pop();
            hosts[1].kill9();
            println!(
                "{:.1} s: {done} confirmed; host 1 killed (SIGKILL)",
                t0.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_secs(3));
            hosts[1] = start(dirs[1].path(), &prefix);
            println!("{:.1} s: host 1 restarted", t0.elapsed().as_secs_f64());
        }
        if done / 500 != last.0 / 500 {
            println!("{:.1} s: {done} confirmed", t0.elapsed().as_secs_f64());
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            println!("no progress for 2 minutes at {done}; stopping");
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let wall = t0.elapsed().as_secs_f64();
    // Let runs in flight end before counting.
    std::thread::sleep(Duration::from_secs(15));
    let done = confirmed();
    let per_host: Vec<usize> = hosts.iter().map(runs).collect();
    let total: usize = per_host.iter().sum();
    let dead: usize = (0..SHARDS)
        .map(|k| {
            hosts[0]
                .admin("GET", &format!("/v1/queues/orders-{k}"), "")
                .json()["dead_letters"]
                .as_u64()
                .unwrap_or(0) as usize
        })
        .sum();
    println!(
        "\n| orders | confirmed (distinct) | runs | runs past one per order (absorbed by dedup) | dead letters | lost | wall |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {n} | {done} | {total} (per host {per_host:?}) | {} | {dead} | {} | {wall:.0} s |",
        total.saturating_sub(done),
        n.saturating_sub(done)
    );
    for h in hosts {
        h.stop();
    }
}
