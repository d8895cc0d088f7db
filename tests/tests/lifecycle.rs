//! The host's life: graceful shutdown drains in-flight work; `fnhost new`
//! and `fnhost build` make a deployable job from nothing; what the host
//! keeps is private to its user, and a host config is checked before
//! anything on disk is made.

use fnhost_tests::{Host, chmod, fnhost_bin, guests, mode, repo_root, serve_refused};
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
    // The SDK comes with the crate, from the binary: nothing points back
    // into this checkout, so a copied binary scaffolds crates that build.
    let manifest = std::fs::read_to_string(job.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("path = \"fnhost-sdk/sdk\""), "{manifest}");
    let root = repo_root().canonicalize().unwrap();
    for f in [
        "Cargo.toml",
        "fnhost-sdk/sdk/Cargo.toml",
        "fnhost-sdk/macro/Cargo.toml",
    ] {
        let text = std::fs::read_to_string(job.join(f)).unwrap();
        assert!(
            !text.contains(root.to_str().unwrap()),
            "{f} names the checkout: {text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(job.join("fnhost-sdk/wit/job.wit")).unwrap(),
        std::fs::read_to_string(root.join("wit/job.wit")).unwrap(),
        "the WIT the host speaks"
    );
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

#[test]
fn what_the_host_keeps_is_private_to_its_user() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o755);
    let host = Host::start_in(&data, &[]);
    host.deploy_ok(
        "name = \"hello\"\n[[triggers.http]]\npath = \"/hello\"\n",
        &guests().hello,
    );
    assert_eq!(host.get("/hello").status, 200);
    let r = host.admin("PUT", "/v1/buckets/notes/objects/a/b.txt", "private");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = host.admin("POST", "/v1/queues/q/messages", r#"{"body": "m"}"#);
    assert_eq!(r.status, 201, "{}", r.text());

    // The operator's own data dir, looser: made 0700, and the log says so.
    assert_eq!(mode(&data), 0o700);
    let log = host.log();
    assert!(log.contains("was mode 0755; made it 0700"), "{log}");
    // Everything under it is its user's alone (the harness's log aside).
    let (mut seen, mut open) = (Vec::new(), Vec::new());
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == "host.log" {
                continue;
            }
            if mode(&path) & 0o077 != 0 {
                open.push(format!("{path:?} {:04o}", mode(&path)));
            }
            if path.is_dir() {
                stack.push(path.clone());
            }
            seen.push(path);
        }
    }
    assert!(open.is_empty(), "readable by others: {open:#?}");
    for kept in [
        "token",
        "fnhost.db",
        "queues.db",
        "blobs.db",
        "audit.log",
        "components",
    ] {
        assert!(
            seen.contains(&data.join(kept)),
            "{kept} missing from {seen:#?}"
        );
    }
    assert!(
        seen.iter().any(|p| p.starts_with(data.join("blobs/notes"))),
        "{seen:#?}"
    );
}

#[test]
fn a_host_config_with_a_bad_endpoint_is_refused_before_anything_is_made() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("host.toml");
    std::fs::write(
        &config,
        "[queues]\nbackend = \"sqs\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:9\"\n\
         [state]\nbackend = \"s3\"\nbucket = \"fnhost-state\"\nendpoint = \"gopher://x\"\n",
    )
    .unwrap();
    let data = temp.path().join("data");
    let env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = serve_refused(&data, &["--config", config.to_str().unwrap()], &env);
    assert!(
        err.contains(&format!(
            "{}: state.endpoint: \"gopher://x\" has the scheme \"gopher\"",
            config.display()
        )) && err.contains("http or https"),
        "{err}"
    );
    assert!(
        !data.exists(),
        "the data dir was made before the config was read"
    );
}
