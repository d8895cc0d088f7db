//! Several hosts against one SQS queue (a local moto server): the work
//! spreads across them, every message is processed at least once, and the
//! messages a killed host held come back after their visibility timeout
//! and are processed by the others.

#[path = "support/fleet.rs"]
mod support;

use fnhost::blobs::BlobBackend as _;
use fnhost_tests::{Host, guests, moto};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{Fleet, moto_target};

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

#[test]
fn an_api_host_enqueues_jobs_that_workers_run_and_any_host_reports() {
    let g = guests();
    let mut fleet = Fleet::new("roles");
    let api = fleet.start(&["--role", "api"]);
    let workers = [
        fleet.start(&["--role", "worker"]),
        fleet.start(&["--role", "worker"]),
    ];
    // Deployed once, on the api host; the workers follow.
    api.deploy_ok(ADVERSARY, &g.adversary);
    for w in &workers {
        w.wait_for(30, "the deployment to reach the worker", |h| {
            (h.admin("GET", "/v1/functions/adv", "").status == 200).then_some(())
        });
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

/// `adv` with a config word, so each version answers `/adv/config` apart.
fn adv_saying(word: &str) -> String {
    format!("{ADVERSARY}[config]\nsecret-word = \"{word}\"\n")
}

/// Wait until every host answers `path` with `want` (status, body).
fn all_answer(hosts: &[&Host], path: &str, want: (u16, &str), secs: u64) {
    for h in hosts {
        h.wait_for(
            secs,
            &format!("{} to answer {path} with {want:?}", h.url),
            |h| {
                let r = h.get(path);
                let body = if r.status == 200 {
                    r.text()
                } else {
                    r.json()["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                (r.status == want.0 && body == want.1).then_some(())
            },
        );
    }
}

#[test]
fn a_deploy_rollback_or_removal_on_one_host_reaches_the_whole_fleet() {
    let g = guests();
    let mut fleet = Fleet::new("deploys");
    let hosts: Vec<Host> = (0..3).map(|_| fleet.start(&[])).collect();
    let all: Vec<&Host> = hosts.iter().collect();

    // Deployed on host 0: every host serves it within seconds.
    let out = hosts[0].deploy_ok(&adv_saying("one"), &g.adversary);
    assert!(out.contains("adv v1 "), "{out}");
    all_answer(&all, "/adv/config", (200, "one"), 30);

    // A new version deployed on host 1 is numbered after the fleet's, not
    // host 1's own history, and replaces v1 everywhere.
    let out = hosts[1].deploy_ok(&adv_saying("two"), &g.adversary);
    assert!(out.contains("adv v2 "), "{out}");
    all_answer(&all, "/adv/config", (200, "two"), 30);

    // A host that joins takes the fleet's deployments before it serves.
    let late = fleet.start(&[]);
    let r = late.get("/adv/config");
    assert_eq!((r.status, r.text()), (200, "two".to_string()));

    // Rolled back on host 2: v1 everywhere, and every host lists both.
    let r = hosts[2].admin("POST", "/v1/functions/adv/rollback", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut everyone = all.clone();
    everyone.push(&late);
    all_answer(&everyone, "/adv/config", (200, "one"), 30);
    for h in &everyone {
        let f = h.admin("GET", "/v1/functions", "").json();
        assert_eq!(f["functions"][0]["active_version"], 1, "{f}");
        assert_eq!(f["functions"][0]["versions"], json!([1, 2]), "{f}");
    }

    // Removed on the late host: gone everywhere.
    let r = late.admin("DELETE", "/v1/functions/adv", "");
    assert_eq!(r.status, 204, "{}", r.text());
    all_answer(&everyone, "/adv/config", (404, "no_route"), 30);
    let r = hosts[0].admin("DELETE", "/v1/functions/adv", "");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn a_token_made_on_one_host_works_on_every_host_until_it_is_revoked() {
    let mut fleet = Fleet::new("tokens");
    let hosts: Vec<Host> = (0..2).map(|_| fleet.start(&[])).collect();
    let r = hosts[0].admin("POST", "/v1/tokens", json!({ "scope": "read" }).to_string());
    assert_eq!(r.status, 201, "{}", r.text());
    let (id, token) = (r.json()["id"].clone(), r.json()["token"].clone());
    let token = token.as_str().unwrap();
    let status = |h: &Host| {
        h.request("GET", "/v1/functions", Vec::new(), Some(token))
            .status
    };
    assert_eq!((status(&hosts[0]), status(&hosts[1])), (200, 200));
    // Its scope holds on the other host too.
    let r = hosts[1].request("DELETE", "/v1/functions/adv", Vec::new(), Some(token));
    assert_eq!(r.status, 403);
    // Revoked on host 1: refused there at once, and on host 0 once its
    // check cache (10 s) lets go.
    let r = hosts[1].admin(
        "DELETE",
        &format!("/v1/tokens/{}", id.as_str().unwrap()),
        "",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(status(&hosts[1]), 401);
    hosts[0].wait_for(30, "the revocation on host 0", |h| {
        (status(h) == 401).then_some(())
    });
}

#[test]
fn a_component_altered_in_the_fleets_bucket_is_refused_by_its_digest() {
    let g = guests();
    let mut fleet = Fleet::new("tamper");
    let first = fleet.start(&[]);
    first.deploy_ok(ADVERSARY, &g.adversary);
    let shown = first.admin("GET", "/v1/functions/adv", "").json();
    let digest = shown["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{shown}"))
        .to_string();

    // Someone with write access to the bucket swaps the component.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use fnhost::state::{StateStore, Write};
        let target = moto_target();
        let s3 =
            fnhost::backends::s3state::S3State::connect(target, fleet.name.clone(), String::new())
                .await
                .unwrap();
        let key = format!("components/{digest}.wasm");
        s3.put(
            &key,
            b"\0asm not what was deployed".to_vec(),
            Write::Overwrite,
        )
        .await
        .unwrap();
    });

    // A host that joins refuses it by name and serves nothing in its place.
    let late = fleet.start(&[]);
    let r = late.get("/adv/ok");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        late.log()
            .contains(&format!("the fleet's component {digest} has the SHA-256")),
        "{}",
        late.log()
    );
    // The host that deployed it still serves its own verified copy.
    assert_eq!(first.get("/adv/ok").status, 200);
}

fn ticker(schedule: &str, busy_ms: u64) -> String {
    format!(
        "name = \"ticker\"\n[triggers.timer]\nschedule = \"{schedule}\"\n[[grants.storage]]\nbucket = \"events\"\naccess = \"read-write\"\n[config]\nbusy_ms = \"{busy_ms}\"\n"
    )
}

/// Every timer run any host recorded (in its own `events` bucket), by start.
fn fleet_runs(hosts: &[Host]) -> Vec<Value> {
    let mut out = Vec::new();
    for h in hosts {
        let list = h
            .admin("GET", "/v1/buckets/events/objects?prefix=timer/", "")
            .json();
        for o in list["objects"].as_array().into_iter().flatten() {
            let key = o["key"].as_str().unwrap();
            out.push(
                h.admin("GET", &format!("/v1/buckets/events/objects/{key}"), "")
                    .json(),
            );
        }
    }
    out.sort_by_key(|r| r["start_ms"].as_u64());
    out
}

/// A timer deployed through an api host (which runs no timers) before any
/// worker has it: the worker that takes it later runs the tick that fell
/// due in between, once, past due; nothing a trigger owns is dropped
/// because the hosts that run it are behind.
#[test]
fn a_timer_deployed_before_any_worker_has_it_runs_the_tick_due_in_between() {
    let g = guests();
    let mut fleet = Fleet::new("late-timer");
    let api = fleet.start(&["--role", "api"]);
    api.deploy_ok(&ticker("*/10 * * * * *", 0), &g.adversary);
    let f = api.admin("GET", "/v1/functions/ticker", "").json();
    let deployed_at = f["deployed_at_ms"].as_u64().expect("deployed_at_ms");
    let first_due = (deployed_at / 10_000 + 1) * 10_000;
    // The worker starts only once that tick is due (and 3 s more).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(
        first_due + 3_000 - now.min(first_due),
    ));
    let worker = fleet.start(&["--role", "worker"]);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(started > first_due, "the worker started before the tick");
    let hosts = [worker];
    let runs = hosts[0].wait_for(60, "the missed tick's run", |_| {
        let r = fleet_runs(&hosts);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(runs[0]["scheduled_at_ms"], first_due, "{runs:?}");
    assert_eq!(runs[0]["attempt"], 1, "{runs:?}");
    let due: Vec<_> = runs.iter().map(|r| &r["scheduled_at_ms"]).collect();
    assert!(
        !due[1..].contains(&&runs[0]["scheduled_at_ms"]),
        "the missed tick ran twice: {runs:?}"
    );
    api.stop();
}

#[test]
fn a_timer_on_three_hosts_fires_once_per_tick_never_overlapping() {
    let g = guests();
    let mut fleet = Fleet::new("timers");
    let mut hosts: Vec<Host> = (0..3).map(|_| fleet.start(&[])).collect();
    // Every second, each run taking 2.5 s: most ticks find the last run
    // going on some host, and are skipped.
    hosts[0].deploy_ok(&ticker("* * * * * *", 2500), &g.adversary);
    let runs = hosts[0].wait_for(90, "four timer runs across the fleet", |_| {
        let r = fleet_runs(&hosts);
        (r.len() >= 4).then_some(r)
    });
    let mut due: Vec<u64> = runs
        .iter()
        .map(|r| r["scheduled_at_ms"].as_u64().unwrap())
        .collect();
    due.dedup();
    assert_eq!(due.len(), runs.len(), "a tick ran twice: {runs:?}");
    for r in &runs {
        assert_eq!(r["attempt"], 1, "{r}");
    }
    fnhost_tests::assert_never_overlapping(&runs);

    // The whole fleet goes down over several ticks; when it comes back,
    // the missed ticks run once, past due, on one host.
    hosts[0].deploy_ok(&ticker("*/2 * * * * *", 0), &g.adversary);
    for h in &hosts {
        h.wait_for(30, "the new schedule on every host", |h| {
            let f = h.admin("GET", "/v1/functions/ticker", "").json();
            (f["version"] == 2).then_some(())
        });
    }
    let all_on_v2 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    hosts[0].wait_for(60, "a run of the new schedule", |_| {
        fleet_runs(&hosts)
            .iter()
            .any(|r| r["start_ms"].as_u64() > Some(all_on_v2))
            .then_some(())
    });
    // All at once, as a fleet goes down.
    for h in &hosts {
        h.term();
    }
    for mut h in hosts.drain(..) {
        assert!(h.wait());
    }
    std::thread::sleep(Duration::from_secs(7));
    let hosts: Vec<Host> = (0..3).map(|i| fleet.restart(i, &[])).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let r = fleet_runs(&hosts);
        if let Some(late) = r.iter().position(|r| r["past_due"] == true)
            && r.len() > late + 1
        {
            break r;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = hosts.iter().map(Host::log).collect();
            panic!(
                "no past-due run and an on-time one after it: {r:?}\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let late: Vec<&Value> = after.iter().filter(|r| r["past_due"] == true).collect();
    assert_eq!(late.len(), 1, "one run for all the missed ticks: {after:?}");
}

#[test]
fn a_sensitive_bucket_on_s3_is_sealed_there_and_read_by_every_hosts_trusted_worker() {
    let mut fleet = Fleet::with_s3_buckets("sealed");
    fleet
        .extra
        .push_str("[sensitive]\nbuckets = [\"secrets\"]\n");
    let trusted = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first = fleet.start(&["--trusted-dir", trusted[0].path().to_str().unwrap()]);
    first.deploy_ok(
        "name = \"vault\"\nisolation = \"trusted\"\n[[triggers.http]]\npath = \"/t/{mode}\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\n",
        &guests().adversary,
    );
    let r = first.get("/t/put");
    assert_eq!(r.status, 200, "{}", r.text());

    // In S3 the object is ciphertext; the admin API will not read it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, stored) = rt
        .block_on(fleet.s3().get("secrets", "notes/key"))
        .unwrap()
        .expect("the object is in S3");
    assert!(stored.starts_with(b"FNHS1"));
    assert!(!stored.windows(5).any(|w| w == b"value"));
    assert_eq!(
        first
            .admin("GET", "/v1/buckets/secrets/objects/notes/key", "")
            .status,
        403
    );

    // Another host, given the same keys (copied, as the README says),
    // reads it through its own worker.
    let keys = trusted[1].path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for e in std::fs::read_dir(trusted[0].path().join("keys")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, keys.join(p.file_name().unwrap())).unwrap();
    }
    let second = fleet.start(&["--trusted-dir", trusted[1].path().to_str().unwrap()]);
    second.wait_for(30, "the deployment to reach the second host", |h| {
        (h.admin("GET", "/v1/functions/vault", "").status == 200).then_some(())
    });
    let r = second.get("/t/get");
    assert_eq!((r.status, r.text()), (200, "value".to_string()));

    // A rotation on the first host: at its restart its worker re-seals the
    // object in S3 under the new key (a compare and swap on its ETag).
    assert!(first.stop());
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["keys", "rotate", "--trusted-dir"])
        .arg(trusted[0].path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let current = std::fs::read_to_string(trusted[0].path().join("keys/current")).unwrap();
    let first = fleet.restart(0, &["--trusted-dir", trusted[0].path().to_str().unwrap()]);
    first.wait_for(60, "the re-seal", |h| {
        let log = h.log();
        (log.contains("re-sealing after a key rotation finished")
            && log.contains("resealed=1 failed=0"))
        .then_some(())
    });
    let (_, stored) = rt
        .block_on(fleet.s3().get("secrets", "notes/key"))
        .unwrap()
        .unwrap();
    assert_eq!(
        fnhost::files::hex(&stored[5..13]),
        current.trim(),
        "sealed under the new key"
    );
    let r = first.get("/t/get");
    assert_eq!((r.status, r.text()), (200, "value".to_string()));
}
