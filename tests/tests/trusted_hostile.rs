//! Hostile clients and neighbours of the trusted tier: a public function
//! bound to a trusted function's queue cannot steer its resume state, a
//! body or a component of any size the host accepts crosses to the worker
//! (and the channel stays in step), and a process of the host's user that
//! takes the worker's socket while the worker is down is refused.

use fnhost_tests::{Host, guests};
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

fn start(dir: &Path, trusted: &Path, extra: &[&str]) -> Host {
    let mut args = vec![
        "--sensitive",
        "secrets",
        "--trusted-dir",
        trusted.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Host::start_in(dir, &args)
}

/// A trusted function on route `/<route>/{mode}`, with more manifest text.
fn trusted(name: &str, route: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nisolation = \"trusted\"\n[[triggers.http]]\npath = \"/{route}/{{mode}}\"\n{extra}"
    )
}

fn send(host: &Host, queue: &str, body: &str) {
    let r = host.admin(
        "POST",
        &format!("/v1/queues/{queue}/messages"),
        json!({ "body": body }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

/// A function bound to `shared` that reports each message it gets (the
/// adversary's queue probe), as `role`.
fn prober(name: &str, role: &str, isolation: &str) -> String {
    format!(
        "name = \"{name}\"\nisolation = \"{isolation}\"\n[[triggers.queue]]\nqueue = \"shared\"\nmax_attempts = 50\nbackoff_initial = \"200ms\"\nbackoff_max = \"400ms\"\n[config]\nqueue_probe = \"1\"\nrole = \"{role}\"\n"
    )
}

#[test]
fn a_public_function_on_a_trusted_functions_queue_cannot_steer_its_resume_state() {
    let (dir, trusted_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted_dir.path(), &[]);
    let adversary = &guests().adversary;
    // The public side takes the first attempts: it saves a made-up resume
    // state (or bytes that look sealed) and fails each time.
    host.deploy_ok(&prober("outsider", "public", "public"), adversary);
    send(&host, "shared", "steer");
    send(&host, "shared", "steer-sealed");
    // Its own next attempt gets its own checkpoint back.
    host.wait_for(60, "the public side's second attempts", |h| {
        let log = h.log();
        (log.contains(
            r#"probe outsider attempt 2 checkpoint {"step": 999, "approved": true} body steer"#,
        ) && log.contains("probe outsider attempt 2 checkpoint FNHQ1"))
        .then_some(())
    });
    // Then the trusted side takes over the same messages, and a producer
    // sends it a plain body that happens to start like a sealed one.
    assert_eq!(
        host.admin("DELETE", "/v1/functions/outsider", "").status,
        204
    );
    host.deploy_ok(&prober("vault", "trusted", "trusted"), adversary);
    send(
        &host,
        "shared",
        "FNHQ1 is how this producer's records start",
    );
    let seen = host.wait_for(60, "the trusted side to take all three", |h| {
        let log = h.log();
        // Each probe's own words, without the log's fields around them.
        let lines: Vec<String> = log
            .lines()
            .filter_map(|l| l.split_once("probe vault attempt"))
            .map(|(_, rest)| rest.split(" stream=").next().unwrap().to_string())
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    for line in &seen {
        assert!(
            line.contains("checkpoint none body"),
            "the trusted function saw another function's checkpoint: {line}"
        );
    }
    assert!(seen.iter().any(|l| l.ends_with("body steer")));
    assert!(seen.iter().any(|l| l.ends_with("body steer-sealed")));
    assert!(
        seen.iter()
            .any(|l| l.contains(" 1 checkpoint none body FNHQ1 is how this producer")),
        "{seen:#?}"
    );
    // Nothing was dead-lettered, and every message was processed.
    let dead = host
        .admin("GET", "/v1/queues/shared/dead-letters", "")
        .json();
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 0, "{dead}");
    host.wait_for(30, "the queue to drain", |h| {
        let stats = h.admin("GET", "/v1/queues/shared", "").json();
        (stats["ready"] == 0 && stats["in_flight"] == 0 && stats["delayed"] == 0).then_some(())
    });
}

#[test]
fn a_body_larger_than_the_old_frame_crosses_to_the_worker_and_the_channel_stays_in_step() {
    let (dir, trusted_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(
        dir.path(),
        trusted_dir.path(),
        &["--max-body-bytes", &(100u64 << 20).to_string()],
    );
    host.deploy_ok(
        &trusted("vault", "t", "[limits]\nmemory_mb = 512\n"),
        &guests().adversary,
    );
    // 90 MiB: past the 80 MiB that one frame once carried.
    let body = vec![b'b'; 90 << 20];
    let r = host.request("POST", "/t/len", body, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("body of {} bytes", 90 << 20));
    // The next calls are answered as usual.
    for _ in 0..3 {
        let r = host.get("/t/ok");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A body over the host's cap is refused at the edge, as for any route.
    let r = host.request("POST", "/t/len", vec![0; (100 << 20) + 1], None);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(host.get("/t/ok").status, 200);
}

/// `wasm` with a custom section of `size` bytes appended: a valid
/// component that large.
fn padded(wasm: &[u8], size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut payload = Vec::with_capacity(size + 16);
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.resize(payload.len() + size, 0x5a);
    let mut out = wasm.to_vec();
    out.push(0); // a custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

#[test]
fn a_trusted_component_larger_than_the_old_frame_runs_and_its_neighbours_answer() {
    let (dir, trusted_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(
        dir.path(),
        trusted_dir.path(),
        &["--max-upload-bytes", &(200u64 << 20).to_string()],
    );
    let big = dir.path().join("big.wasm");
    let wasm = std::fs::read(&guests().adversary).unwrap();
    std::fs::write(&big, padded(&wasm, 85 << 20)).unwrap();
    host.deploy_ok(&trusted("vault", "t", ""), &big);
    host.deploy_ok(&trusted("other", "o", ""), &guests().adversary);
    let r = host.get("/t/ok");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    let r = host.get("/o/ok");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn a_process_that_takes_the_workers_socket_is_not_taken_for_the_worker() {
    let (dir, trusted_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted_dir.path(), &[]);
    host.deploy_ok(
        &trusted(
            "vault",
            "t",
            "[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\n",
        ),
        &guests().adversary,
    );
    assert_eq!(host.get("/t/ok").status, 200);
    let health = host.get("/healthz").json();
    let worker = health["trusted_worker"]["pid"].as_u64().unwrap() as u32;
    let supervisor = parent_of(worker);
    // The supervisor held still, the worker gone: another process of the
    // same user binds the worker's socket in its place.
    signal(supervisor, "-STOP");
    signal(worker, "-KILL");
    host.wait_for(30, "the host to lose the worker", |h| {
        (h.get("/healthz").json()["status"] == "degraded").then_some(())
    });
    // Alive, but not ready for work: a load balancer takes it out.
    let ready = host.get("/readyz");
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (503, Some("degraded"))
    );
    let socket = trusted_dir.path().join("run/worker.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    // It accepts the host's connections for a few seconds, says hello as
    // a worker would, and keeps whatever the host sends it.
    let impostor = std::thread::spawn(move || {
        let mut hello = Vec::new();
        let msg = fnhost::trusted::wire::FromWorker::Hello {
            version: fnhost::trusted::wire::VERSION,
            pid: std::process::id(),
            queue_key: vec![9; 32],
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(fnhost::trusted::wire::write(&mut hello, &msg))
            .unwrap();
        let (mut connections, mut received) = (0, Vec::new());
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            connections += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let _ = stream.write_all(&hello);
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
        }
        (connections, received)
    });
    // A call of the trusted function meanwhile: the host has no worker.
    std::thread::sleep(Duration::from_millis(500));
    let r = host.get("/t/put");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "trusted_worker_unavailable");
    let (connections, received) = impostor.join().unwrap();
    assert!(connections > 0, "the host never tried the socket");
    assert!(
        received.is_empty(),
        "the host sent the impostor {} bytes",
        received.len()
    );
    assert!(
        host.log()
            .contains("is not the trusted worker this host started"),
        "{}",
        host.log()
    );
    // The supervisor goes on: a worker of its own is taken again.
    signal(supervisor, "-CONT");
    host.wait_for(60, "the real worker to be back", |h| {
        (h.get("/t/ok").status == 200).then_some(())
    });
    assert_eq!(host.get("/t/put").status, 200);
}
