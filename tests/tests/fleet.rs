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

const ADVERSARY: &str = "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{mode}\"\n";

/// `[state]` on the moto server's S3, in a bucket of this test's own.
fn shared_state(bucket: &str) -> String {
    format!("[state]\nbackend = \"s3\"\nbucket = \"{bucket}\"\ncreate = true\n")
}

#[test]
fn an_api_host_enqueues_jobs_that_workers_run_and_any_host_reports() {
    let g = guests();
    let moto = moto();
    let prefix = format!("roles{}-", std::process::id());
    let bucket = format!("roles-{}", std::process::id());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |d: &tempfile::TempDir, role: &str| {
        let config = moto.host_config(d.path(), &prefix, &shared_state(&bucket));
        Host::start_env(
            d.path(),
            &["--config", config.to_str().unwrap(), "--role", role],
            &moto.env(),
        )
    };
    let api = start(&dirs[0], "api");
    let workers = [start(&dirs[1], "worker"), start(&dirs[2], "worker")];
    for h in [&api, &workers[0], &workers[1]] {
        h.deploy_ok(ADVERSARY, &g.adversary);
    }

    // The api host answers HTTP triggers; a worker refuses them by name.
    let r = api.post("/adv/ok", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = workers[0].post("/adv/ok", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "worker_role", "{}", r.text());

    // Jobs submitted on the api host run on the workers, and every host
    // reports the same record.
    let mut ids = Vec::new();
    for input in ["progress", "progress", "progress", "fail"] {
        let r = api.admin(
            "POST",
            "/v1/functions/adv/jobs",
            json!({ "input": input }).to_string(),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let done = workers[1].wait_for(60, "the job to finish", |h| {
            let v = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
            matches!(v["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(v)
        });
        if i < 3 {
            assert_eq!(done["state"], "succeeded", "{done}");
            assert_eq!(done["progress"], 100);
            assert_eq!(done["result"]["body"], "done");
        } else {
            assert_eq!(done["state"], "failed", "{done}");
            assert_eq!(done["error"], "the job failed: this input can never work");
        }
        for h in [&api, &workers[0]] {
            let v = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
            assert_eq!(v, done, "every host reports the same record");
        }
    }
    // The api host ran the HTTP request and no job; the workers ran them.
    let started = |h: &Host| h.log().matches("invocation started").count();
    assert_eq!(started(&api), 1, "{}", api.log());
    assert_eq!(started(&workers[0]) + started(&workers[1]), 4);
}

#[test]
fn an_api_host_without_shared_queues_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--role",
            "api",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--role api") && err.contains("backend = \"sqs\""),
        "{err}"
    );
}
