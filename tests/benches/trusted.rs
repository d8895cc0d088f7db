//! The cost of the trusted hop (a bench binary, never a timed test): one
//! release `fnhost serve` with a sensitive bucket, so trusted functions run
//! in its trusted worker; the same component (`tests/guests/empty`, the
//! cheapest job) deployed twice, once public and once trusted, each behind
//! an HTTP route. In the same run, interleaved:
//!
//! - `route`: a path no function is bound to (`404`): the HTTP path
//!   without a sandbox;
//! - `public`: the public function: the HTTP path and one fresh sandbox;
//! - `trusted`: the trusted function: the same, plus the hop to the worker
//!   and back over its Unix socket.
//!
//! So the sandbox costs `public − route`, the hop costs `trusted − public`,
//! and the target is a hop below one fresh sandbox. Then the same three
//! under 4 concurrent clients, as throughput.
//!
//! Run with `cargo bench -p fnhost-tests --bench trusted` (`-- --quick`
//! for fewer requests). It builds the release host itself.

use fnhost_tests::{Host, guests};
use std::time::{Duration, Instant};

const PUBLIC: &str = "name = \"public\"\n[[triggers.http]]\npath = \"/public\"\n";
const TRUSTED: &str = "name = \"vault\"\nisolation = \"trusted\"\n[[triggers.http]]\npath = \"/trusted\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read\"\n";
const TARGETS: [(&str, &str); 3] = [
    ("route", "/nothing"),
    ("public", "/public"),
    ("trusted", "/trusted"),
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    fnhost_tests::use_release_host();
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round, concurrent) = if quick {
        (10, 100, 1_000)
    } else {
        (30, 200, 4_000)
    };
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = Host::start_env(
        dir.path(),
        &[
            "--sensitive",
            "secrets",
            "--trusted-dir",
            trusted.path().to_str().unwrap(),
        ],
        &[("FNHOST_LOG".into(), "warn".into())],
    );
    let empty = &guests().empty;
    host.deploy_ok(PUBLIC, empty);
    host.deploy_ok(TRUSTED, empty);
    let client = reqwest::blocking::Client::new();
    let call = |path: &str| {
        let r = client.get(format!("{}{path}", host.url)).send().unwrap();
        let status = r.status().as_u16();
        r.bytes().unwrap();
        status
    };
    // Warm up: the worker compiles its copy on first use; connections open.
    for _ in 0..200 {
        assert_eq!(call("/public"), 200);
        assert_eq!(call("/trusted"), 200);
        assert_eq!(call("/nothing"), 404);
    }

    println!(
        "fnhost trusted-hop bench: {rounds} rounds of {per_round} sequential requests each, order rotated per round"
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); TARGETS.len()];
    let mut round_medians: Vec<Vec<f64>> = vec![Vec::new(); TARGETS.len()];
    for round in 0..rounds {
        for k in 0..TARGETS.len() {
            let i = (round + k) % TARGETS.len();
            let mut these = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                let t = Instant::now();
                call(TARGETS[i].1);
                these.push(t.elapsed().as_secs_f64() * 1e6);
            }
            round_medians[i].push(median(&mut these.clone()));
            samples[i].extend(these);
        }
    }
    let med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    for (i, (name, path)) in TARGETS.iter().enumerate() {
        let mut s = samples[i].clone();
        s.sort_by(f64::total_cmp);
        println!(
            "  {name:<8} GET {path:<9} median {:>7.1} µs   p90 {:>7.1} µs   p99 {:>7.1} µs",
            med[i],
            s[s.len() * 9 / 10],
            s[s.len() * 99 / 100]
        );
    }
    let sandbox = med[1] - med[0];
    let hop = med[2] - med[1];
    println!("  a fresh sandbox (public − route): {sandbox:.1} µs");
    println!("  the trusted hop (trusted − public): {hop:.1} µs");
    println!("  hop / sandbox: {:.2} (target: below 1)", hop / sandbox);
    let per_round: Vec<String> = (0..rounds)
        .map(|r| {
            let s = round_medians[1][r] - round_medians[0][r];
            let h = round_medians[2][r] - round_medians[1][r];
            format!("{:.2}", h / s)
        })
        .collect();
    println!("  hop / sandbox per round: {}", per_round.join(" "));

    println!("\n4 clients, {concurrent} requests each target, in turn:");
    for (name, path) in TARGETS {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .unwrap();
                    for _ in 0..concurrent / 4 {
                        let r = client.get(format!("{}{path}", host.url)).send().unwrap();
                        r.bytes().unwrap();
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!("  {name:<8} {:>8.0} requests/s", concurrent as f64 / secs);
    }
    let log = host.log();
    assert!(
        !log.contains("ERROR"),
        "the host logged errors during the bench:\n{log}"
    );
    assert!(host.stop());
}
