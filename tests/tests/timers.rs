//! Timer triggers and one-off scheduled jobs on the real binary: ticks come
//! on schedule, a slow run is never overlapped (the tick is skipped and
//! counted), downtime over many ticks gives one past-due run, a job
//! scheduled `--in` a delay runs after it even across a restart, and the
//! `cleanup` example deletes what is past its retention.
//!
//! Timer runs are observed through the adversary guest, which records each
//! run (due time, past-due flag, start and end) in bucket `events`.

use fnhost_tests::{Host, guests};
use serde_json::Value;
use std::time::Duration;

fn ticker(schedule: &str, busy_ms: u64) -> String {
    format!(
        r#"
name = "ticker"
[triggers.timer]
schedule = "{schedule}"
[[grants.storage]]
bucket = "events"
access = "read-write"
[config]
busy_ms = "{busy_ms}"
"#
    )
}

/// Every recorded timer run, by due time.
fn runs(host: &Host) -> Vec<Value> {
    let list = host
        .admin("GET", "/v1/buckets/events/objects?prefix=timer/", "")
        .json();
    let mut out: Vec<Value> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let key = o["key"].as_str().unwrap();
            host.admin("GET", &format!("/v1/buckets/events/objects/{key}"), "")
                .json()
        })
        .collect();
    out.sort_by_key(|r| r["start_ms"].as_u64());
    out
}

#[test]
fn ticks_come_on_schedule_and_a_slow_run_is_never_overlapped() {
    let host = Host::start();
    // Every second, but each run takes 2.5 s.
    host.deploy_ok(&ticker("* * * * * *", 2500), &guests().adversary);
    let runs = host.wait_for(60, "three timer runs", |h| {
        let r = runs(h);
        (r.len() >= 3).then_some(r)
    });
    for r in &runs {
        assert_eq!(
            r["scheduled_at_ms"].as_u64().unwrap() % 1000,
            0,
            "on the second: {r}"
        );
        assert_eq!(r["past_due"], false, "{r}");
        assert_eq!(r["attempt"], 1);
    }
    fnhost_tests::assert_never_overlapping(&runs);
    let timer = host.admin("GET", "/v1/functions/ticker", "").json()["timer"].clone();
    assert!(
        timer["skipped"].as_u64().unwrap() >= 2,
        "ticks due during a run are skipped and counted: {timer}"
    );
    assert!(timer["next_run_ms"].as_u64().is_some(), "{timer}");

    // A version without the timer forgets its state, so adding the timer
    // back later starts afresh rather than running once "past due".
    let plain =
        ticker("* * * * * *", 0).replace("[triggers.timer]\nschedule = \"* * * * * *\"\n", "");
    assert!(!plain.contains("triggers"), "{plain}");
    host.deploy_ok(&plain, &guests().adversary);
    let f = host.admin("GET", "/v1/functions/ticker", "").json();
    assert!(f.get("timer").is_none_or(|t| t.is_null()), "{f}");
}

#[test]
fn downtime_over_many_ticks_gives_one_past_due_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    host.deploy_ok(&ticker("*/2 * * * * *", 0), &guests().adversary);
    host.wait_for(30, "a first run", |h| (!runs(h).is_empty()).then_some(()));
    assert!(host.stop());
    // Three ticks are missed.
    std::thread::sleep(Duration::from_secs(6));
    let host = Host::start_in(dir.path(), &[]);
    let after = host.wait_for(30, "a past-due run and an on-time run after it", |h| {
        let r = runs(h);
        let late = r.iter().position(|r| r["past_due"] == true)?;
        (r.len() > late + 1).then_some(r)
    });
    let late: Vec<&Value> = after.iter().filter(|r| r["past_due"] == true).collect();
    assert_eq!(late.len(), 1, "one run for all the missed ticks: {after:?}");
}

#[test]
fn run_on_startup_runs_at_deploy_and_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    let manifest = ticker("0 0 3 * * *", 0).replace(
        "[triggers.timer]\n",
        "[triggers.timer]\nrun_on_startup = true\n",
    );
    host.deploy_ok(&manifest, &guests().adversary);
    host.wait_for(30, "the run at deploy", |h| {
        (runs(h).len() == 1).then_some(())
    });
    assert!(host.stop());
    let host = Host::start_in(dir.path(), &[]);
    let all = host.wait_for(30, "the run at start", |h| {
        let r = runs(h);
        (r.len() == 2).then_some(r)
    });
    assert!(all.iter().all(|r| r["past_due"] == false), "{all:?}");
}

#[test]
fn a_job_scheduled_in_a_delay_runs_after_it_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    host.deploy_ok("name = \"adv\"\n", &guests().adversary);
    let id = host.cli_ok(&["invoke", "adv", "--data", "ok", "--in", "2s"]);
    let id = id.trim().to_string();
    let job = host.admin("GET", &format!("/v1/jobs/{id}"), "").json();
    assert_eq!(job["state"], "queued");
    let created = job["created_at_ms"].as_u64().unwrap();
    assert_eq!(job["not_before_ms"].as_u64(), Some(created + 2000));
    assert!(host.stop());

    let host = Host::start_in(dir.path(), &[]);
    let out = host.cli_ok(&["jobs", &id, "--wait"]);
    assert!(out.contains("ok"), "{out}");
    let job = host.admin("GET", &format!("/v1/jobs/{id}"), "").json();
    assert_eq!(job["state"], "succeeded");
    assert!(
        job["started_at_ms"].as_u64().unwrap() >= created + 2000,
        "{job}"
    );

    // A time, over HTTP; and bad times are refused with the expected form.
    let r = host.admin(
        "POST",
        "/v1/functions/adv/jobs",
        r#"{"input": "ok", "not_before": "2999-01-01T00:00:00+02:00"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["not_before_ms"].as_u64(), Some(32_472_136_800_000));
    let out = host.cli(&["invoke", "adv", "--at", "tomorrow"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn cleanup_deletes_what_is_past_its_retention() {
    let host = Host::start();
    host.deploy_ok(
        r#"
name = "cleanup"
[triggers.timer]
schedule = "0 30 3 * * *"
[[grants.storage]]
bucket = "scratch"
access = "read-write"
[config]
bucket = "scratch"
retention = "2s"
"#,
        &guests().cleanup,
    );
    for key in ["old/a.txt", "old/b.txt"] {
        assert_eq!(
            host.admin("PUT", &format!("/v1/buckets/scratch/objects/{key}"), "x")
                .status,
            201
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    host.admin("PUT", "/v1/buckets/scratch/objects/new.txt", "y");
    let out = host.cli_ok(&["invoke", "cleanup"]);
    assert!(out.contains("deleted 2 of 3"), "{out}");
    let left = host.admin("GET", "/v1/buckets/scratch/objects", "").json();
    let keys: Vec<&str> = left["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["new.txt"]);
}
