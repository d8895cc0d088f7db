//! The host's life: graceful shutdown drains in-flight work; `fnhost new`
//! and `fnhost build` make a deployable job from nothing.

use fnhost_tests::{Host, fnhost_bin, guests, repo_root};
use std::time::Duration;

#[test]
fn sigterm_drains_in_flight_invocations_then_exits() {
    let g = guests();
    let host = std::sync::Arc::new(Host::start_with(&["--stopping-wait-time", "20s"]));
    host.deploy_ok(
        "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{mode}\"\n",
        &g.adversary,
    );
    let busy = {
        let host = host.clone();
        std::thread::spawn(move || host.get("/adv/busy-1500"))
    };
    // Wait until the invocation is running, then ask the host to stop.
    let start = std::time::Instant::now();
    while !host.log().contains("invocation started") {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    host.term();
    let r = busy.join().unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "busy for 1500 ms ()"),
        "the in-flight invocation finished"
    );
    let mut host = std::sync::Arc::into_inner(host).unwrap();
    assert!(host.wait(), "the host exits 0 after draining");
    let log = host.log();
    assert!(
        log.contains("SIGTERM received") && log.contains("drained; stopped"),
        "{log}"
    );
}

/// Run the CLI with extra environment; insist that it succeeds.
fn fnhost_ok(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = std::process::Command::new(fnhost_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fnhost {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn new_and_build_make_a_deployable_job() {
    guests(); // the wasm target and a warm dependency cache
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("greeter");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    fnhost_ok(
        &[os("new"), os("greeter"), os("--dir"), job.as_os_str()],
        &[],
    );
    for f in ["Cargo.toml", "src/lib.rs", "fnhost.toml"] {
        assert!(job.join(f).is_file(), "{f} missing");
    }
    // Reuse the test guests' build cache so this does not rebuild the SDK from scratch.
    let target = repo_root().join("tests/guests/target");
    let cargo_target = ("CARGO_TARGET_DIR", target.as_os_str());
    let built = fnhost_ok(&[os("build"), job.as_os_str()], &[cargo_target]);
    assert!(built.contains("an fnhost:job@0.1.0 component"), "{built}");

    let host = Host::start();
    let env = [
        cargo_target,
        ("FNHOST_HOST", std::ffi::OsStr::new(&host.url)),
        ("FNHOST_DATA_DIR", host.data_dir.as_os_str()),
    ];
    fnhost_ok(&[os("deploy"), job.as_os_str()], &env);
    assert_eq!(
        host.get("/greeter?name=Ada").json()["message"],
        "Hello, Ada!"
    );

    // `new` refuses to overwrite.
    let again = std::process::Command::new(fnhost_bin())
        .args(["new", "greeter", "--dir"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
