//! The trusted tier as the operating system enforces it: trusted functions
//! run in a separate worker process that alone holds the sensitive store
//! and its keys; the public process is confined by Landlock and cannot
//! open them; the worker, killed mid-request, is restarted, its queue
//! message retried and its synchronous caller told `503`; a key rotation
//! re-seals the store in the background while reads go on; a trusted dir
//! that is not fnhost's own to make private is refused, and left as it was.

use fnhost_tests::{Host, chmod, files_holding, guests, mode, serve_refused};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// A trusted function with a route and a binding to `tq`, keeping its
/// data in the sensitive bucket `secrets`.
const TRUSTED: &str = "name = \"vault\"\nisolation = \"trusted\"\n[[triggers.http]]\npath = \"/t/{mode}\"\n[[triggers.queue]]\nqueue = \"tq\"\nbackoff_initial = \"200ms\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\n[limits]\ntimeout = \"20s\"\n";

fn start(dir: &Path, trusted: &Path, env: &[(String, String)]) -> Host {
    Host::start_env(
        dir,
        &[
            "--sensitive",
            "secrets",
            "--trusted-dir",
            trusted.to_str().unwrap(),
        ],
        env,
    )
}

/// A host with the trusted function deployed and answering, and its dirs.
fn vault() -> ((tempfile::TempDir, tempfile::TempDir), Host) {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted.path(), &[]);
    host.deploy_ok(TRUSTED, &guests().adversary);
    assert_eq!(host.get("/t/ok").status, 200);
    ((dir, trusted), host)
}

/// `GET path` on another thread: its status and body when it ends.
fn call_in_background(host: &Host, path: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = format!("{}{path}", host.url);
    std::thread::spawn(move || {
        let r = reqwest::blocking::Client::new().get(url).send().unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    })
}

/// The pid of the trusted worker the host last connected to.
fn worker_pid(host: &Host) -> u32 {
    let log = host.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("connected to the trusted worker"))
        .unwrap_or_else(|| panic!("no worker connection in the log:\n{log}"));
    line.rsplit("pid=").next().unwrap().trim().parse().unwrap()
}

fn probe(host: &Host, path: &Path) -> serde_json::Value {
    let r = host.admin("POST", "/v1/debug/open", path.to_str().unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn the_public_process_cannot_open_the_trusted_dir_and_the_worker_runs_trusted_functions() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(
        dir.path(),
        trusted.path(),
        &[("FNHOST_DEBUG_PROBES".into(), "1".into())],
    );
    let log = host.log();
    assert!(
        log.contains("public process confined to its data dir by Landlock: fully enforced"),
        "{log}"
    );
    assert!(
        log.contains("trusted worker confined to its trusted dir by Landlock: fully enforced"),
        "{log}"
    );
    host.deploy_ok(TRUSTED, &guests().adversary);
    let r = host.get("/t/put");
    assert_eq!(r.status, 200, "{}", r.text());

    // The OS refuses the public process the key, the sealed objects and the
    // store's database, whatever the file's own permissions say; its own
    // data dir it opens.
    for secret in [
        trusted.path().join("keys/current"),
        trusted.path().join("keys/queue.x25519"),
        trusted.path().join("blobs.db"),
    ] {
        assert!(secret.exists(), "{secret:?}");
        let seen = probe(&host, &secret);
        assert_eq!(seen["opened"], false, "{secret:?}: {seen}");
        assert_eq!(seen["permission_denied"], true, "{secret:?}: {seen}");
    }
    assert_eq!(probe(&host, &dir.path().join("token"))["opened"], true);

    // Only the host process may talk to the worker: another process's
    // connection is closed without a word.
    let mut stranger =
        std::os::unix::net::UnixStream::connect(trusted.path().join("run/worker.sock")).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut stranger, &mut buf).unwrap(), 0);
    host.wait_for(10, "the refusal in the log", |h| {
        h.log()
            .contains("refused a connection from a process that is not the host")
            .then_some(())
    });

    // The worker is a separate process, and the host's shutdown stops it.
    let pid = worker_pid(&host);
    assert_ne!(pid, 0);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(host.stop());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_worker_killed_mid_request_is_restarted_its_message_retried_and_its_caller_told_503() {
    let (_dirs, host) = vault();
    let first = worker_pid(&host);
    let health = host.get("/healthz").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["trusted_worker"]["pid"], first);

    // A synchronous caller and a queue message, both in the worker.
    let caller = call_in_background(&host, "/t/sleep-8000");
    let r = host.admin(
        "POST",
        "/v1/queues/tq/messages",
        json!({ "body": "wait-note-1" }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    host.wait_for(20, "both in flight", |h| {
        let stats = h.admin("GET", "/v1/queues/tq", "").json();
        (stats["in_flight"] == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &first.to_string()])
            .status()
            .unwrap()
            .success()
    );

    // The caller hears 503 at once, not after its eight seconds.
    let (status, body) = caller.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("trusted_worker_unavailable"), "{body}");

    // The supervisor starts a new worker; the message is processed there.
    let second = host.wait_for(30, "a new worker", |h| {
        let pid = worker_pid(h);
        (pid != first).then_some(pid)
    });
    host.wait_for(30, "the message processed after the restart", |h| {
        h.log().contains("processed wait-note-1").then_some(())
    });
    let stats = host.admin("GET", "/v1/queues/tq", "").json();
    assert_eq!(stats["dead_letters"], 0, "{stats}");
    assert_eq!(host.get("/t/ok").status, 200);
    let health = host.get("/healthz").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["trusted_worker"]["pid"], second);
    assert_eq!(health["trusted_worker"]["lost"], 1);
    assert!(Path::new(&format!("/proc/{second}")).exists());
    let log = host.log();
    assert!(
        log.contains("the trusted worker exited; restarting it"),
        "{log}"
    );
    assert!(host.stop());
}

#[test]
fn a_rotated_key_reseals_the_store_in_the_background_while_reads_go_on() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted.path(), &[]);
    host.deploy_ok(TRUSTED, &guests().adversary);
    assert_eq!(host.get("/t/put").status, 200);
    let old = std::fs::read_to_string(trusted.path().join("keys/current")).unwrap();
    assert!(host.stop());

    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["keys", "rotate", "--trusted-dir"])
        .arg(trusted.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let new = std::fs::read_to_string(trusted.path().join("keys/current")).unwrap();
    assert_ne!(old, new);

    let host = start(dir.path(), trusted.path(), &[]);
    // Reads go on (the old key still opens what it sealed) ...
    let r = host.get("/t/get");
    assert_eq!((r.status, r.text()), (200, "value".to_string()));
    // ... and the worker re-seals under the new key.
    host.wait_for(30, "the re-seal", |h| {
        let log = h.log();
        (log.contains("re-sealing after a key rotation finished")
            && log.contains("resealed=1 failed=0"))
        .then_some(())
    });
    let mut sealed = Vec::new();
    let mut stack = vec![trusted.path().join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                sealed.push(std::fs::read(p).unwrap());
            }
        }
    }
    let id: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&new.trim()[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    assert!(!sealed.is_empty());
    assert!(
        sealed
            .iter()
            .all(|f| f.starts_with(b"FNHS1") && f[5..13] == id[..]),
        "every object sealed under the new key"
    );
    let r = host.get("/t/get");
    assert_eq!((r.status, r.text()), (200, "value".to_string()));
    assert!(host.stop());
}

#[test]
fn a_sigterm_lets_trusted_work_finish_before_the_worker_stops() {
    let (_dirs, host) = vault();
    let started = |h: &Host| h.log().matches("invocation started").count();
    let before = started(&host);
    let caller = call_in_background(&host, "/t/sleep-2000");
    host.wait_for(20, "the call running in the worker", |h| {
        (started(h) > before).then_some(())
    });
    let pid = worker_pid(&host);
    // The host drains (the call finishes in the worker), then stops it.
    assert!(host.stop());
    let (status, body) = caller.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "slept 2000 ms"));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn without_landlock_the_host_refuses_sensitive_data_unless_its_config_accepts_the_weaker_mode() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let no_landlock = ("FNHOST_DEBUG_NO_LANDLOCK".to_string(), "1".to_string());
    // Refused, saying why and what to do.
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sensitive",
            "secrets",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--trusted-dir")
        .arg(trusted.path())
        .env(&no_landlock.0, &no_landlock.1)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve sensitive data")
            && err.contains("accept_without_landlock = true"),
        "{err}"
    );

    // Accepted by the config: it serves, and says it is not confined.
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        "[sensitive]\nbuckets = [\"secrets\"]\naccept_without_landlock = true\n",
    )
    .unwrap();
    let host = Host::start_env(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--trusted-dir",
            trusted.path().to_str().unwrap(),
        ],
        &[no_landlock, ("FNHOST_DEBUG_PROBES".into(), "1".into())],
    );
    let log = host.log();
    assert!(
        log.contains("public process confined to its data dir by Landlock: not enforced"),
        "{log}"
    );
    host.deploy_ok(TRUSTED, &guests().adversary);
    assert_eq!(host.get("/t/put").status, 200);
    // The weaker mode is weaker: nothing but file modes keeps this process
    // out of the trusted dir.
    assert_eq!(
        probe(&host, &trusted.path().join("keys/current"))["opened"],
        true
    );
    assert!(host.stop());
}

#[test]
fn a_trusted_functions_job_input_is_sealed_in_the_queue_store() {
    let ((dir, trusted), host) = vault();
    // The input is the adversary's mode: it sleeps 1,234 ms and says so.
    let r = host.admin(
        "POST",
        "/v1/functions/vault/jobs",
        json!({ "input": "sleep-1234" }).to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = host.wait_for(30, "the job to finish", |h| {
        let job = h.admin("GET", &format!("/v1/jobs/{id}"), "").json();
        (job["state"] != "queued" && job["state"] != "running").then_some(job)
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["body"], "slept 1234 ms");
    // The worker opened it; the queue store (its WAL included) never held
    // it in plain text.
    let found = files_holding(&[dir.path(), trusted.path()], b"sleep-1234");
    assert!(found.is_empty(), "the input in plain text: {found:?}");
}

#[test]
fn a_trusted_functions_send_to_a_sensitive_queue_is_sealed_in_the_worker_and_opened_there() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = Host::start_in(
        dir.path(),
        &[
            "--sensitive",
            "secrets",
            "--sensitive-queues",
            "elsewhere",
            "--trusted-dir",
            trusted.path().to_str().unwrap(),
        ],
    );
    // The adversary's `queue` mode sends "hi" to `elsewhere`; bound there
    // too, it gets "hi" back as its mode, which it does not know.
    host.deploy_ok(
        &format!("{TRUSTED}[grants]\nqueues = [\"elsewhere\"]\n[[triggers.queue]]\nqueue = \"elsewhere\"\nmax_attempts = 1\n"),
        &guests().adversary,
    );
    let r = host.get("/t/queue");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("sent "), "{}", r.text());
    // Opened in the worker: the function saw the plain text, not a seal.
    host.wait_for(30, "the message run and failed", |h| {
        h.log().contains(r#"unknown mode "hi""#).then_some(())
    });
    // The public process never saw it: not readable through the API, and
    // stored sealed.
    assert_eq!(
        host.admin("GET", "/v1/queues/elsewhere/dead-letters", "")
            .status,
        403
    );
    assert!(files_holding(&[dir.path()], b"FNHQ1").iter().any(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("queues.db")
    }));
}

#[test]
fn with_an_allow_list_in_the_trusted_dir_the_worker_runs_only_the_components_it_names() {
    let ((_dir, trusted), host) = vault();
    let digest = host.admin("GET", "/v1/functions/vault", "").json()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let list = trusted.path().join("allowed-components");
    std::fs::write(&list, format!("# only this one\n{}\n", "0".repeat(64))).unwrap();
    let r = host.get("/t/ok");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "host_error");
    assert!(
        host.log().contains("is not in") && host.log().contains("allowed-components"),
        "the reason is in the host log"
    );
    // The operator allows it: the next call runs.
    std::fs::write(&list, format!("{digest}  # vault v1\n")).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&list)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(host.get("/t/ok").status, 200);
}

#[test]
fn a_shared_trusted_dir_is_refused_and_left_as_it_was() {
    let refused = |data: &Path, trusted: &Path| {
        let args = [
            "--sensitive",
            "secrets",
            "--trusted-dir",
            trusted.to_str().unwrap(),
        ];
        serve_refused(data, &args, &[])
    };
    // A dir like /tmp (1777) that holds the data dir.
    let shared = tempfile::tempdir().unwrap();
    chmod(shared.path(), 0o1777);
    let data = shared.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let err = refused(&data, shared.path());
    assert!(
        err.contains("--trusted-dir (FNHOST_TRUSTED_DIR): ")
            && err.contains("is shared (mode 1777, owner uid")
            && err.contains("give fnhost a directory of its own"),
        "{err}"
    );
    assert_eq!(mode(shared.path()), 0o1777);
    // One beside the data dir: refused too, and unchanged.
    let beside = tempfile::tempdir().unwrap();
    chmod(beside.path(), 0o1777);
    let data = tempfile::tempdir().unwrap();
    let err = refused(data.path(), beside.path());
    assert!(err.contains("is shared (mode 1777"), "{err}");
    assert_eq!(mode(beside.path()), 0o1777);
    // One that does not exist yet: made 0700, and the worker serves from it.
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("fnhost.trusted");
    let host = start(data.path(), &fresh, &[]);
    assert_eq!(mode(&fresh), 0o700);
    host.deploy_ok(TRUSTED, &guests().adversary);
    let r = host.get("/t/put");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(fresh.join("keys/current").exists());
}
