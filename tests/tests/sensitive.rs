//! Sensitive buckets, as the host config declares them: only functions
//! deployed with `isolation = "trusted"` (by an admin token) reach them,
//! the admin API answers 403 for them whatever the token, their objects are
//! ciphertext on disk, and every access is in the audit log.

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};

const TRUSTED: &str = "name = \"vault\"\nisolation = \"trusted\"\n[[triggers.http]]\npath = \"/vault/{mode}\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read-write\"\n";

fn walk(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(std::fs::read(&path).unwrap());
        }
    }
}

/// A host whose bucket `secrets` is sensitive, its trusted worker in
/// `trusted`.
fn start(dir: &std::path::Path, trusted: &std::path::Path) -> Host {
    let config = dir.join("host.toml");
    std::fs::write(&config, "[sensitive]\nbuckets = [\"secrets\"]\n").unwrap();
    Host::start_in(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--trusted-dir",
            trusted.to_str().unwrap(),
        ],
    )
}

#[test]
fn only_trusted_functions_reach_a_sensitive_bucket_and_the_api_never_does() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted.path());
    let adversary = &guests().adversary;

    // A public function may neither be granted nor triggered by it.
    for manifest in [
        "name = \"nosy\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read\"\n",
        "name = \"nosy\"\n[[triggers.blob]]\nbucket = \"secrets\"\n",
    ] {
        let out = host.deploy(manifest, adversary);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is a sensitive bucket") && err.contains("trusted"),
            "{err}"
        );
    }

    // A trusted one needs an admin token to deploy.
    let r = host.admin(
        "POST",
        "/v1/tokens",
        json!({ "scope": "deploy" }).to_string(),
    );
    let deployer = r.json()["token"].as_str().unwrap().to_string();
    let manifest_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        manifest_dir.path().join("fnhost.toml"),
        format!(
            "component = {:?}\n{TRUSTED}",
            adversary.display().to_string()
        ),
    )
    .unwrap();
    let out = host.cli(&[
        "deploy",
        manifest_dir.path().to_str().unwrap(),
        "--token",
        &deployer,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("admin token"), "{err}");
    host.deploy_ok(TRUSTED, adversary);

    // The trusted function stores and reads its data.
    let r = host.get("/vault/put");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "stored 5 bytes, read back \"value\", 1 listed");

    // It is kept by the trusted worker, as ciphertext: no blob file holds
    // the content, and the sealed one carries the format's mark; the public
    // data dir holds nothing of it.
    let mut files = Vec::new();
    walk(&trusted.path().join("blobs"), &mut files);
    let sealed: Vec<&Vec<u8>> = files.iter().filter(|f| f.starts_with(b"FNHS1")).collect();
    assert_eq!(
        sealed.len(),
        1,
        "one sealed object: {:?}",
        files
            .iter()
            .map(|f| String::from_utf8_lossy(&f[..f.len().min(12)]).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(!files.iter().any(|f| f.windows(5).any(|w| w == b"value")));
    assert!(trusted.path().join("keys/current").exists());
    let mut public = Vec::new();
    walk(&dir.path().join("blobs"), &mut public);
    assert!(!public.iter().any(|f| f.starts_with(b"FNHS1")));

    // No token reaches it through the API, not even the admin's.
    for (method, path) in [
        ("GET", "/v1/buckets/secrets/objects/notes/key"),
        ("HEAD", "/v1/buckets/secrets/objects/notes/key"),
        ("PUT", "/v1/buckets/secrets/objects/planted"),
        ("DELETE", "/v1/buckets/secrets/objects/notes/key"),
        ("GET", "/v1/buckets/secrets/objects"),
        ("GET", "/v1/buckets/secrets/changes"),
        // Percent-encoded, the route's parameter is still `secrets`.
        ("GET", "/v1/buckets/secr%65ts/objects/notes/key"),
        ("GET", "/v1/buckets/%73ecrets/objects"),
    ] {
        let r = host.request(method, path, b"x".to_vec(), Some(&host.token));
        assert_eq!(r.status, 403, "{method} {path}");
        if method != "HEAD" {
            assert_eq!(r.json()["error"]["code"], "sensitive", "{method} {path}");
        }
    }
    // Other buckets are as before.
    let r = host.admin("PUT", "/v1/buckets/public/objects/a", "x");
    assert_eq!(r.status, 201);

    // The audit log has each access of the function, and the refusals'
    // log each refusal.
    let log = audit_file(dir.path(), "audit.log");
    let accesses: Vec<&str> = log
        .iter()
        .filter(|e| e["event"] == "sensitive.access")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(accesses.len(), 3, "put, get and list: {log:#?}");
    assert!(
        accesses[0].starts_with("vault@v1 invocation ")
            && accesses[0].ends_with("storage write secrets/notes/key")
    );
    let refused = audit_file(dir.path(), "audit-denied.log")
        .iter()
        .filter(|e| e["event"] == "admin.denied" && e["detail"] == "sensitive bucket")
        .count();
    assert_eq!(refused, 8);
}

/// The lines of one of a host's audit files in `dir`.
fn audit_file(dir: &std::path::Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_access_under_a_key_of_control_characters_is_audited_with_the_key_cut() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted.path());
    host.deploy_ok(TRUSTED, &guests().adversary);
    // 1,000 control characters: each takes six bytes in a JSON line.
    let r = host.get("/vault/ctlkey-1000");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "stored and read back 5 bytes under a key of 1006 bytes"
    );
    let accesses: Vec<Value> = audit_file(dir.path(), "audit.log")
        .into_iter()
        .filter(|e| e["event"] == "sensitive.access")
        .collect();
    assert_eq!(accesses.len(), 2, "the put and the get: {accesses:#?}");
    for (access, call) in accesses.iter().zip(["write", "read"]) {
        let target = access["target"].as_str().unwrap();
        assert!(
            target.contains(&format!("storage {call} secrets/notes/\u{1}\u{1}")),
            "{target:?}"
        );
        assert!(
            target.ends_with("bytes in all)"),
            "cut, with a note: {target:?}"
        );
    }
    assert!(!host.log().contains("refused an audit line"));
}

#[test]
fn an_access_whose_audit_line_cannot_be_written_is_not_made() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = start(dir.path(), trusted.path());
    host.deploy_ok(TRUSTED, &guests().adversary);
    host.deploy_ok(
        "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{mode}\"\n",
        &guests().adversary,
    );
    assert!(host.stop());
    // The log of changes cannot be written: a directory stands where it
    // would be.
    let log = dir.path().join("audit.log");
    std::fs::rename(&log, dir.path().join("audit.log.saved")).unwrap();
    std::fs::create_dir(&log).unwrap();
    let host = start(dir.path(), trusted.path());
    let r = host.get("/vault/put");
    assert_eq!(r.status, 500, "{}", r.text());
    let err = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        err.contains("was not made, because the audit log cannot record it"),
        "{err}"
    );
    // Nothing reached the sensitive store.
    let mut files = Vec::new();
    if trusted.path().join("blobs").exists() {
        walk(&trusted.path().join("blobs"), &mut files);
    }
    assert!(files.is_empty(), "{} objects stored", files.len());
    // No change through the API is made unrecorded either.
    let r = host.admin("DELETE", "/v1/functions/adv", "");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "audit_unavailable");
    // What needs no audit line goes on: a public function answers.
    assert_eq!(host.get("/adv/ok").text(), "ok");
    // With the log back, the access is made and recorded.
    assert!(host.stop());
    std::fs::remove_dir(&log).unwrap();
    let host = start(dir.path(), trusted.path());
    let r = host.get("/vault/put");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        audit_file(dir.path(), "audit.log")
            .iter()
            .any(|e| e["event"] == "sensitive.access")
    );
}

#[test]
fn a_host_config_naming_a_bad_bucket_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, "[sensitive]\nbuckets = [\"Not A Bucket\"]\n").unwrap();
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sensitive.buckets[0]"), "{err}");
}

#[test]
fn a_public_function_granted_a_bucket_that_became_sensitive_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    host.deploy_ok(
        "name = \"nosy\"\n[[triggers.http]]\npath = \"/nosy/{mode}\"\n[[grants.storage]]\nbucket = \"secrets\"\naccess = \"read\"\n",
        &guests().adversary,
    );
    assert!(host.stop());
    let trusted = tempfile::tempdir().unwrap();
    let host = start(dir.path(), trusted.path());
    assert_eq!(host.admin("GET", "/v1/functions/nosy", "").status, 404);
    assert_eq!(host.get("/nosy/storage").status, 404);
    let log = host.log();
    assert!(
        log.contains("cannot load a deployed function") && log.contains("is a sensitive bucket"),
        "{log}"
    );
}
