//! Adversarial guests: each is stopped at its limit with a precise reason,
//! the host keeps answering, and a normal invocation right after succeeds.

use fnhost_tests::{Host, Resp, guests};

fn manifest(name: &str, limits: &str) -> String {
    format!(
        "name = \"{name}\"\n[[triggers.http]]\npath = \"/{name}/{{mode}}\"\n[limits]\n{limits}\n[config]\nsecret-word = \"swordfish\"\n"
    )
}

fn assert_trapped(r: &Resp, reason: &str) {
    assert_eq!(r.status, 500, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], "function_trapped", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "expected {reason:?} in {message:?}"
    );
    // No host internals: no source paths of the host, no backtraces.
    assert!(
        !message.contains("host/src") && !message.contains("backtrace"),
        "{message}"
    );
}

#[test]
fn runaway_guests_are_stopped_at_their_limits_and_the_host_keeps_answering() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&manifest("adv", "timeout = \"10s\""), &g.adversary);
    host.deploy_ok(
        &manifest("fuel", "fuel = 50_000_000\ntimeout = \"5m\""),
        &g.adversary,
    );
    host.deploy_ok(
        &manifest("slow", "timeout = \"1s\"\nfuel = 1_000_000_000_000"),
        &g.adversary,
    );
    host.deploy_ok(&manifest("small", "memory_mb = 16"), &g.adversary);

    let cases: [(&str, &str); 5] = [
        (
            "/fuel/loop",
            "fuel exhausted: the invocation used all 50000000 units",
        ),
        (
            "/slow/loop",
            "timed out: the invocation ran longer than its limit of 1s",
        ),
        ("/small/memory", "memory limit exceeded"),
        ("/adv/recursion", "stack overflow"),
        (
            "/adv/panic",
            "the guest panicked: boom: the adversary panicked on purpose",
        ),
    ];
    for (path, reason) in cases {
        assert_trapped(&host.get(path), reason);
        // The same function answers normally right after.
        let fname = path.split('/').nth(1).unwrap();
        let ok = host.get(&format!("/{fname}/ok"));
        assert_eq!((ok.status, ok.text().as_str()), (200, "ok"), "after {path}");
    }
    // A memory limit that fits what the guest asks for is fine.
    let r = host.get("/small/grow-4");
    assert_eq!((r.status, r.text().as_str()), (200, "held 4 MiB"));
}

#[test]
fn an_infinite_loop_does_not_block_other_invocations() {
    let g = guests();
    let host = std::sync::Arc::new(Host::start());
    host.deploy_ok(
        &manifest("slow", "timeout = \"3s\"\nfuel = 1_000_000_000_000"),
        &g.adversary,
    );
    host.deploy_ok(&manifest("adv", ""), &g.adversary);
    let looping = {
        let host = host.clone();
        std::thread::spawn(move || host.get("/slow/loop"))
    };
    // While the loop runs, other invocations are answered.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..20 {
        let r = host.get("/adv/ok");
        assert_eq!(r.status, 200);
    }
    assert!(
        !looping.is_finished(),
        "the loop should still be running when the others are answered"
    );
    assert_trapped(&looping.join().unwrap(), "timed out");
}

#[test]
fn huge_stdout_is_capped_and_logged() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&manifest("adv", "log_bytes = 4096"), &g.adversary);
    let r = host.get("/adv/stdout");
    assert_eq!((r.status, r.text().as_str()), (200, "printed 16 MiB"));
    let log = host.log();
    assert!(
        log.contains("guest stdout over the log cap was dropped"),
        "{log}"
    );
    assert!(
        log.contains("dropped=16773120"),
        "4096 of 16 MiB kept: {log}"
    );
    // Stdout lines are logged at INFO with the invocation's function.
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("function=adv") && l.contains("xxxxxxxx"))
    );
    // A panic's stderr is logged at ERROR.
    host.get("/adv/panic");
    let log = host.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("boom")),
        "{log}"
    );
    assert_eq!(host.get("/adv/ok").status, 200);
}

#[test]
fn job_errors_keep_their_kind_and_message() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&manifest("adv", ""), &g.adversary);
    let r = host.get("/adv/retry");
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], "function_error");
    assert_eq!(
        r.json()["error"]["message"],
        "the job asked to be retried: the backend is busy"
    );
    let r = host.get("/adv/fail");
    assert_eq!(
        r.json()["error"]["message"],
        "the job failed: this input can never work"
    );
    let out = host.cli(&["invoke", "adv", "--data", "fail"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("this input can never work"));
}

#[test]
fn capabilities_are_denied_unless_granted_and_config_is_delivered() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(&manifest("adv", ""), &g.adversary);
    let r = host.get("/adv/storage");
    assert!(
        r.text().contains("Denied") && r.text().contains("secrets"),
        "{}",
        r.text()
    );
    let r = host.get("/adv/queue");
    assert!(
        r.text().contains("Denied") && r.text().contains("elsewhere"),
        "{}",
        r.text()
    );
    assert_eq!(host.get("/adv/config").text(), "swordfish");
    assert!(
        host.get("/adv/checkpoint")
            .text()
            .contains("checkpoint error")
    );

    // With a grant, the call passes the check (and meets the missing backend).
    let granted = manifest("granted", "")
        + "[grants]\nqueues = [\"elsewhere\"]\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read\"\n";
    host.deploy_ok(&granted, &g.adversary);
    let r = host.get("/granted/storage");
    assert_eq!(r.text(), "storage allowed");
    // A read grant does not allow writes.
    let r = host.get("/granted/put");
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("no storage grant allows write"),
        "{}",
        r.text()
    );
    let rw = manifest("writer", "")
        + "[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\nprefix = \"notes/\"\n";
    host.deploy_ok(&rw, &g.adversary);
    assert_eq!(
        host.get("/writer/put").text(),
        "stored 5 bytes, read back \"value\", 1 listed"
    );
    // A guest walks a listing of any size in pages, in key order.
    for i in 0..24 {
        let r = host.admin(
            "PUT",
            &format!("/v1/buckets/secrets/objects/notes/k{i:02}"),
            "x",
        );
        assert!(r.status < 300, "{}", r.text());
    }
    let mut keys: Vec<String> = (0..24).map(|i| format!("notes/k{i:02}")).collect();
    keys.push("notes/key".into());
    assert_eq!(
        host.get("/writer/pages-10").text(),
        format!("3 pages: {}", keys.join(","))
    );
    let r = host.get("/granted/queue");
    assert!(r.text().starts_with("sent "), "{}", r.text());
    let queued = host
        .admin("GET", "/v1/queues/elsewhere/messages", "")
        .json();
    assert_eq!(queued["messages"][0]["body"], "hi");
}
