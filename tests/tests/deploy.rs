//! Deploying, redeploying, rolling back, removing; what is refused and why;
//! what survives a restart.

use fnhost_tests::{Host, guests};

const HELLO: &str = r#"
name = "hello"
[[triggers.http]]
path = "/hello"
methods = ["GET", "POST"]
[config]
greeting = "Hello"
"#;

#[test]
fn deploy_invoke_redeploy_rollback_and_remove() {
    let g = guests();
    let host = Host::start();
    let out = host.deploy_ok(HELLO, &g.hello);
    assert!(out.contains("deployed hello v1"), "{out}");

    let r = host.get("/hello?name=Ada");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"], "Hello, Ada!");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.header("fnhost-invocation-id").is_some());

    // POST echoes JSON; direct invoke through the CLI.
    let r = host.post("/hello", r#"{"n": [1, 2]}"#);
    assert_eq!(r.json()["echo"]["n"][1], 2);
    let out = host.cli_ok(&["invoke", "hello", "--data", r#"{"name": "Cy"}"#]);
    assert!(out.contains("Hello, Cy!"), "{out}");

    // A changed version answers without a restart.
    let out = host.deploy_ok(&HELLO.replace("\"Hello\"", "\"Howdy\""), &g.hello);
    assert!(out.contains("deployed hello v2"), "{out}");
    assert_eq!(host.get("/hello?name=Ada").json()["message"], "Howdy, Ada!");
    let list = host.cli_ok(&["list"]);
    assert!(list.contains("hello") && list.contains("v2"), "{list}");
    // The same listing for a script: the API's JSON.
    let json: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["list", "--output", "json"])).unwrap();
    assert_eq!(json["functions"][0]["name"], "hello");
    assert_eq!(json["functions"][0]["active_version"], 2);

    // Rollback goes to v1, and --to picks a version.
    let out = host.cli_ok(&["rollback", "hello"]);
    assert!(out.contains("v1"), "{out}");
    assert_eq!(host.get("/hello?name=Ada").json()["message"], "Hello, Ada!");
    host.cli_ok(&["rollback", "hello", "--to", "2"]);
    assert_eq!(host.get("/hello?name=Ada").json()["message"], "Howdy, Ada!");
    let out = host.cli(&["rollback", "hello", "--to", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 9"));

    // Remove: the route and the listing are gone.
    host.cli_ok(&["remove", "hello"]);
    let r = host.get("/hello");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no_route");
    assert!(host.cli_ok(&["list"]).contains("no functions deployed"));
    let r = host.admin("DELETE", "/v1/functions/hello", "");
    assert_eq!(r.status, 404);
}

#[test]
fn functions_and_compiled_code_survive_a_restart() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    host.deploy_ok(HELLO, &g.hello);
    host.deploy_ok(&HELLO.replace("\"Hello\"", "\"Hi\""), &g.hello);
    let token = host.token.clone();
    assert!(host.stop(), "the host did not exit cleanly on SIGTERM");
    let cached = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
    assert_eq!(
        cached, 1,
        "one compiled artifact for one distinct component"
    );

    let host = Host::start_in(dir.path(), &[]);
    assert_eq!(host.token, token, "the token is kept");
    assert_eq!(host.get("/hello?name=Ada").json()["message"], "Hi, Ada!");
    let list = host.admin("GET", "/v1/functions", "").json();
    assert_eq!(list["functions"][0]["active_version"], 2);
    assert_eq!(list["functions"][0]["versions"], serde_json::json!([1, 2]));
    // The restart reused the compiled artifact instead of compiling again.
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
        cached
    );
}

#[test]
fn the_admin_api_requires_the_token() {
    let host = Host::start();
    let r = host.get("/v1/functions");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_token");
    let r = host.request("GET", "/v1/functions", Vec::new(), Some("wrong"));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "bad_token");
    let r = host.admin("GET", "/v1/functions", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["functions"], serde_json::json!([]));
    let r = host.get("/healthz");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = host.get("/readyz");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );

    // The CLI with a wrong token says so.
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["list", "--host", &host.url, "--token", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_manifest_is_refused_with_file_field_and_reason_and_nothing_is_stored() {
    let g = guests();
    let host = Host::start();
    let out = host.deploy("name = \"hello\"\n[limits]\nmemory_mb = 99999\n", &g.hello);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fnhost.toml")
            && err.contains("limits.memory_mb")
            && err.contains("1 to 1024"),
        "{err}"
    );

    let out = host.deploy("name = \"hello\"\ncolour = \"blue\"\n", &g.hello);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `colour`"), "{err}");

    // The host checks too, whatever the client did.
    let form_body = multipart("name = \"Bad Name\"", &std::fs::read(&g.hello).unwrap());
    let r = host.request_multipart(&form_body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_manifest");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("name")
    );

    assert_nothing_stored(&host);
}

#[test]
fn wasm_that_is_not_an_fnhost_job_is_refused() {
    let g = guests();
    let host = Host::start();
    let out = host.deploy("name = \"cmd\"", &g.not_a_job);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("400") && err.contains("does not implement the fnhost:job@0.1.0 world"),
        "{err}"
    );

    let core = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(core.path(), b"\0asm\x01\0\0\0").unwrap();
    let out = host.deploy("name = \"core\"", core.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core WebAssembly module"), "{err}");

    assert_nothing_stored(&host);
}

#[test]
fn routes_may_not_collide_or_shadow_the_host() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(HELLO, &g.hello);
    let out = host.deploy(
        "name = \"other\"\n[[triggers.http]]\npath = \"/hello\"\n",
        &g.hello,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("409") && err.contains("\"hello\""), "{err}");

    let out = host.deploy(
        "name = \"sneaky\"\n[[triggers.http]]\npath = \"/v1/functions\"\n",
        &g.hello,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("triggers.http[0].path") && err.contains("shadow"),
        "{err}"
    );
    // The original still answers.
    assert_eq!(host.get("/hello").status, 200);
}

/// No function is listed and no component file was kept.
fn assert_nothing_stored(host: &Host) {
    let r = host.admin("GET", "/v1/functions", "");
    assert_eq!(r.json()["functions"], serde_json::json!([]));
    let files = std::fs::read_dir(host.data_dir.join("components"))
        .unwrap()
        .count();
    assert_eq!(files, 0, "a refused deploy left component files behind");
}

/// A multipart deploy body built by hand, so the host's own checks are
/// exercised without the CLI's.
fn multipart(manifest: &str, component: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, data) in [("manifest", manifest.as_bytes()), ("component", component)] {
        body.extend_from_slice(
            format!("--XBOUNDARY\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XBOUNDARY--\r\n");
    body
}

trait Multipart {
    fn request_multipart(&self, body: &[u8]) -> fnhost_tests::Resp;
}

impl Multipart for Host {
    fn request_multipart(&self, body: &[u8]) -> fnhost_tests::Resp {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/v1/functions", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "multipart/form-data; boundary=XBOUNDARY")
            .body(body.to_vec())
            .send()
            .unwrap();
        fnhost_tests::Resp {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().unwrap().to_vec(),
        }
    }
}

#[test]
fn in_flight_invocations_finish_on_the_version_they_started_on() {
    let g = guests();
    let host = std::sync::Arc::new(Host::start());
    let manifest = |word: &str| {
        format!(
            "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{{mode}}\"\n[config]\nsecret-word = \"{word}\"\n"
        )
    };
    host.deploy_ok(&manifest("one"), &g.adversary);
    let slow = {
        let host = host.clone();
        std::thread::spawn(move || host.get("/adv/busy-3000"))
    };
    while !host.log().contains("invocation started") {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    host.deploy_ok(&manifest("two"), &g.adversary);
    // New requests see v2 at once, while the running one finishes on v1.
    assert_eq!(host.get("/adv/config").text(), "two");
    assert!(
        !slow.is_finished(),
        "the slow invocation should still be running"
    );
    assert_eq!(slow.join().unwrap().text(), "busy for 3000 ms (one)");
}

#[test]
fn bash_loads_the_cli_completions_and_they_know_every_command() {
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    for command in ["deploy", "invocations", "logs", "queue", "tokens"] {
        assert!(
            script.contains(command),
            "{command} missing from the script"
        );
    }
    // Bash itself takes the script and registers it for `fnhost`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fnhost.bash");
    std::fs::write(&file, &script).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {:?} && complete -p fnhost", file))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && said.contains("fnhost"),
        "{said} {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    // An unknown shell is refused with the ones there are.
    let out = std::process::Command::new(fnhost_tests::fnhost_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}
