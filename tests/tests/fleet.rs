//! Several hosts against one SQS queue (a local moto server): the work
//! spreads across them, every message is processed at least once, and the
//! messages a killed host held come back after their visibility timeout
//! and are processed by the others.

use fnhost_tests::{Host, guests, moto};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WORKER: &str = "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nvisibility_timeout = \"3s\"\nmin_concurrency = 1\nmax_concurrency = 2\n";

/// The notes (`processed <note>` lines) in a host's log.
fn notes(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("processed ").nth(1))
        .filter_map(|n| n.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn send_notes(host: &Host, names: impl Iterator<Item = String>) {
    let messages: Vec<_> = names.map(|n| json!({ "body": n })).collect();
    let r = host.admin(
        "POST",
        "/v1/queues/work/messages",
        json!({ "messages": messages }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Wait until every note in `want` is in some host's log.
fn all_processed(logs: &dyn Fn() -> Vec<String>, want: &BTreeSet<String>, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen: BTreeSet<String> = logs().iter().flat_map(|l| notes(l)).collect();
        let missing: Vec<_> = want.difference(&seen).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not processed within {secs} s: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_hosts_compete_for_one_sqs_queue_and_one_killed_loses_nothing() {
    let g = guests();
    let moto = moto();
    let prefix = format!("fleet{}-", std::process::id());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts: Vec<Host> = dirs
        .iter()
        .map(|d| {
            let config = moto.host_config(d.path(), &prefix, "");
            Host::start_env(
                d.path(),
                &["--config", config.to_str().unwrap()],
                &moto.env(),
            )
        })
        .collect();
    for h in &hosts {
        h.deploy_ok(WORKER, &g.adversary);
    }

    // 60 quick messages, sent through one host: every one processed, and
    // more than one host took part.
    let quick: BTreeSet<String> = (0..60).map(|i| format!("note-{i}")).collect();
    send_notes(&hosts[0], quick.iter().cloned());
    let logs = || hosts.iter().map(Host::log).collect::<Vec<_>>();
    all_processed(&logs, &quick, 120);
    let by_host: Vec<usize> = logs().iter().map(|l| notes(l).len()).collect();
    assert!(
        by_host.iter().filter(|n| **n > 0).count() >= 2,
        "the work spreads over the hosts: {by_host:?}"
    );

    // 12 slow messages; one host is killed while it works on them. What it
    // held comes back after the 3 s visibility timeout and the others
    // process it: every message is processed at least once.
    let slow: BTreeSet<String> = (0..12).map(|i| format!("slow-note-{i}")).collect();
    send_notes(&hosts[0], slow.iter().cloned());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hosts[1].log().contains("processed slow-note") {
        assert!(
            Instant::now() < deadline,
            "host 1 never took a slow message"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    hosts[1].kill9();
    let killed_log = hosts[1].log();
    let survivors = || {
        let mut l = vec![hosts[0].log(), hosts[2].log()];
        l.push(killed_log.clone());
        l
    };
    all_processed(&survivors, &slow, 120);
    let stats = hosts[0].admin("GET", "/v1/queues/work", "").json();
    assert_eq!(stats["ready"], 0, "{stats}");
}
