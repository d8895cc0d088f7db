//! Scoped admin tokens and the audit log, as an operator uses them: the
//! bootstrap token makes tokens, each scope is let in where its table says
//! and refused (403, the scope named) everywhere else, an expired or
//! revoked token is refused (401), and every change is a line in
//! `audit.log`, every refusal one in `audit-denied.log` (those of
//! unauthenticated requests counted per source and window, so that a
//! flood of them neither fills the log nor pushes a deploy out of it).
//! No guest ever sees an fnhost token, on any route; a deploy token cannot
//! shadow another function's routes nor change a trusted function (only
//! an admin can).

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

const HELLO: &str = "name = \"hello\"\n[[triggers.http]]\npath = \"/hello\"\n";

fn create(host: &Host, scope: &str, extra: Value) -> String {
    let mut body = json!({ "scope": scope, "name": format!("{scope} token") });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = host.admin("POST", "/v1/tokens", body.to_string());
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// A deploy of `manifest` with `component` through the CLI, with `token`.
fn deploy_as(host: &Host, token: &str, manifest: &str, component: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "component = {:?}\n{manifest}",
        component.display().to_string()
    );
    std::fs::write(dir.path().join("fnhost.toml"), manifest).unwrap();
    host.cli(&["deploy", dir.path().to_str().unwrap(), "--token", token])
}

/// [`deploy_as`] that must succeed.
fn deploy_ok_as(host: &Host, token: &str, manifest: &str, component: &Path) {
    let out = deploy_as(host, token, manifest, component);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `method path`, with no body, as the bearer of `token`.
fn call_as(host: &Host, token: &str, method: &str, path: &str) -> fnhost_tests::Resp {
    host.request(method, path, Vec::new(), Some(token))
}

/// A deploy of `hello` through the CLI with `token`.
fn deploy_with(host: &Host, token: &str) -> Output {
    deploy_as(host, token, HELLO, &guests().hello)
}

/// An error response's message.
fn message(r: &fnhost_tests::Resp) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Assert `r` is a `403` whose message says `says`.
fn assert_forbidden(r: &fnhost_tests::Resp, says: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(message(r).contains(says), "{}", r.text());
}

/// The CLI's error output, when it failed.
fn refusal(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "it succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lines of one of the host's audit files.
fn audit_file(host: &Host, name: &str) -> Vec<Value> {
    std::fs::read_to_string(host.data_dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

/// Every line of the audit log: changes, then refusals.
fn audit(host: &Host) -> Vec<Value> {
    let mut all = audit_file(host, "audit.log");
    all.extend(audit_file(host, "audit-denied.log"));
    all
}

#[test]
fn every_scope_is_let_in_where_it_may_and_refused_elsewhere() {
    let host = Host::start();
    let deploy = create(&host, "deploy", json!({}));
    let invoke = create(&host, "invoke", json!({}));
    let read = create(&host, "read", json!({}));
    let admin = create(&host, "admin", json!({}));
    let call = |token: &str, method: &str, path: &str, body: &str| {
        host.request(method, path, body.as_bytes().to_vec(), Some(token))
            .status
    };

    // deploy: deploys, reads status; no data, no invocations, no tokens.
    let out = deploy_with(&host, &deploy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(&deploy, "GET", "/v1/functions/hello", ""), 200);
    assert!(call(&host.token, "PUT", "/v1/buckets/b/objects/k", "data") < 300);
    let refused = host.request("GET", "/v1/buckets/b/objects/k", Vec::new(), Some(&deploy));
    assert_eq!(refused.status, 403);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("`deploy`") && message.contains("read or admin"),
        "{message}"
    );
    assert_eq!(
        call(&deploy, "POST", "/v1/functions/hello/invoke", "{}"),
        403
    );
    assert_eq!(call(&deploy, "GET", "/v1/tokens", ""), 403);
    assert_eq!(call(&deploy, "GET", "/v1/invocations", ""), 403);

    // invoke: invokes, sends, submits jobs and reads them; no deploys, no data.
    let ada = r#"{"name":"Ada"}"#;
    assert_eq!(
        call(&invoke, "POST", "/v1/functions/hello/invoke", ada),
        200
    );
    let job = host.request(
        "POST",
        "/v1/functions/hello/jobs",
        b"{}".to_vec(),
        Some(&invoke),
    );
    assert_eq!(job.status, 202, "{}", job.text());
    let id = job.json()["id"].as_str().unwrap().to_string();
    assert_eq!(call(&invoke, "GET", &format!("/v1/jobs/{id}"), ""), 200);
    let send = json!({ "messages": [{ "body": "x" }] }).to_string();
    assert_eq!(call(&invoke, "POST", "/v1/queues/q/messages", &send), 201);
    assert_eq!(call(&invoke, "GET", "/v1/queues/q/messages", ""), 403);
    assert_eq!(call(&invoke, "DELETE", "/v1/functions/hello", ""), 403);
    assert_eq!(call(&invoke, "GET", "/v1/invocations", ""), 403);
    let out = deploy_with(&host, &invoke);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));

    // read: status and data; changes nothing.
    assert_eq!(call(&read, "GET", "/v1/buckets/b/objects/k", ""), 200);
    assert_eq!(call(&read, "GET", "/v1/queues/q/messages", ""), 200);
    assert_eq!(call(&read, "GET", &format!("/v1/jobs/{id}"), ""), 200);
    assert_eq!(
        call(&read, "GET", "/v1/invocations?function=hello", ""),
        200
    );
    assert_eq!(call(&read, "PUT", "/v1/buckets/b/objects/k", "x"), 403);
    assert_eq!(call(&read, "DELETE", "/v1/queues/q/messages", ""), 403);
    assert_eq!(call(&read, "POST", "/v1/functions/hello/rollback", ""), 403);

    // admin: everything, tokens included.
    assert_eq!(call(&admin, "GET", "/v1/tokens", ""), 200);
    assert!(call(&admin, "DELETE", "/v1/buckets/b/objects/k", "") < 300);
    assert_eq!(call(&admin, "DELETE", "/v1/functions/hello", ""), 204);

    // No token, a made-up one: 401.
    assert_eq!(host.get("/v1/functions").status, 401);
    assert_eq!(
        call("fnh_0123456789abcdef_00", "GET", "/v1/functions", ""),
        401
    );

    // The audit log holds every refusal (with the token's id where it was
    // one of ours) and every change (with who made it).
    let log = audit(&host);
    let denied: Vec<&Value> = log
        .iter()
        .filter(|e| e["event"] == "admin.denied")
        .collect();
    assert_eq!(denied.len(), 13, "{log:#?}");
    assert!(
        denied
            .iter()
            .any(|e| e["target"] == "GET /v1/buckets/b/objects/k"
                && e["outcome"] == "denied"
                && e["token"].is_string())
    );
    assert!(denied.iter().any(|e| e["detail"] == "no bearer token"));
    let deploy_id = host.admin("GET", "/v1/tokens", "").json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == "deploy")
        .unwrap()["id"]
        .clone();
    // A change is recorded as started before it is made, then with its
    // outcome.
    let deployed: Vec<&Value> = log.iter().filter(|e| e["event"] == "deploy").collect();
    assert_eq!(deployed.len(), 2, "{log:#?}");
    assert_eq!(deployed[0]["outcome"], "started");
    assert_eq!(deployed[1]["outcome"], "ok");
    let deployed = &deployed[1..];
    assert_eq!(deployed[0]["token"], deploy_id);
    assert!(
        deployed[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("hello version 1")
    );
    assert!(
        log.iter()
            .any(|e| e["event"] == "remove" && e["outcome"] == "ok")
    );
    assert_eq!(
        (log.iter())
            .filter(|e| e["event"] == "token.create" && e["outcome"] == "ok")
            .count(),
        4
    );
    // No refusal is in the log of changes, nor a change among refusals.
    assert!(
        audit_file(&host, "audit.log")
            .iter()
            .all(|e| e["outcome"] != "denied")
    );
    assert!(
        audit_file(&host, "audit-denied.log")
            .iter()
            .all(|e| e["outcome"] == "denied")
    );
    // `fnhost audit` prints the same lines.
    let printed = host.cli_ok(&["audit", "--lines", "1000"]);
    assert_eq!(
        printed.lines().count(),
        audit_file(&host, "audit.log").len()
    );
    let printed = host.cli_ok(&["audit", "--lines", "1000", "--denied"]);
    assert_eq!(
        printed.lines().count(),
        audit_file(&host, "audit-denied.log").len()
    );
}

#[test]
fn revoked_and_expired_tokens_are_refused_and_the_cli_manages_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    // Made by the CLI: the token alone on stdout.
    let token = host.cli_ok(&["tokens", "create", "--scope", "read", "--name", "on-call"]);
    let token = token.trim();
    assert!(token.starts_with("fnh_"), "{token}");
    assert_eq!(
        host.request("GET", "/v1/functions", Vec::new(), Some(token))
            .status,
        200
    );
    let listed = host.cli_ok(&["tokens", "list"]);
    let line = listed.lines().find(|l| l.contains("on-call")).unwrap();
    assert!(line.contains("read") && line.contains("never"), "{line}");
    assert!(
        !listed.contains(&token[21..]),
        "a listing never shows a secret"
    );
    let id = line.split_whitespace().next().unwrap();
    let json = host.cli_ok(&["tokens", "list", "--output", "json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    let listed = json["tokens"].as_array().unwrap();
    assert!(
        listed.iter().any(|t| t["id"] == id && t["scope"] == "read"),
        "{json}"
    );
    assert!(
        !json.to_string().contains(&token[21..]),
        "nor does its JSON"
    );
    host.cli_ok(&["tokens", "revoke", id]);
    let r = host.request("GET", "/v1/functions", Vec::new(), Some(token));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "bad_token");
    let out = host.cli(&["tokens", "revoke", id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token with id"));
    // The bootstrap token cannot be revoked.
    let r = host.admin("DELETE", "/v1/tokens/bootstrap", "");
    assert_eq!(r.status, 400, "{}", r.text());

    // An expired token: refused as expired.
    let short = create(&host, "read", json!({ "expires_in": "1s" }));
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let r = host.request("GET", "/v1/functions", Vec::new(), Some(&short));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "expired_token");

    // Absurd requests: a bad scope, a bad duration, a huge name.
    for body in [
        json!({ "scope": "root" }),
        json!({ "scope": "read", "expires_in": "soon" }),
        json!({ "scope": "read", "name": "n".repeat(10_000) }),
    ] {
        let r = host.admin("POST", "/v1/tokens", body.to_string());
        assert_eq!(r.status, 400, "{}", r.text());
    }

    // A token survives a restart (it is kept in the state store).
    let kept = create(&host, "deploy", json!({}));
    assert!(host.stop());
    let host = Host::start_in(dir.path(), &[]);
    assert_eq!(
        host.request("GET", "/v1/functions", Vec::new(), Some(&kept))
            .status,
        200
    );
}

#[test]
fn a_route_with_token_auth_needs_an_invoke_token_and_never_passes_it_on() {
    let host = Host::start();
    host.deploy_ok(
        "name = \"adv\"\n[[triggers.http]]\npath = \"/private/{mode}\"\nauth = \"token\"\n[[triggers.http]]\npath = \"/public/{mode}\"\n",
        &guests().adversary,
    );
    let invoke = create(&host, "invoke", json!({}));
    let read = create(&host, "read", json!({}));
    let r = host.get("/private/ok");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_token");
    let r = host.request("GET", "/private/ok", Vec::new(), Some(&read));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = host.request("GET", "/private/authorization", Vec::new(), Some(&invoke));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "authorization: none",
        "the function saw the token"
    );
    // A public route passes headers as they came.
    let r = host.request("GET", "/public/authorization", Vec::new(), Some("mine"));
    assert_eq!(r.text(), "authorization: Bearer mine");
    let log = audit(&host);
    let denied: Vec<&Value> = log.iter().filter(|e| e["event"] == "http.denied").collect();
    assert_eq!(denied.len(), 2, "{log:#?}");
    assert_eq!(denied[0]["target"], "GET /private/ok");
}

#[test]
fn a_guests_denied_calls_are_audited_up_to_a_cap_per_invocation() {
    let host = Host::start();
    host.deploy_ok(
        "name = \"adv\"\n[[triggers.http]]\npath = \"/adv/{mode}\"\n",
        &guests().adversary,
    );
    assert_eq!(host.get("/adv/deny-1000").text(), "1000 denied");
    let log = audit(&host);
    let denied: Vec<&Value> = log
        .iter()
        .filter(|e| e["event"] == "guest.denied")
        .collect();
    // Eight denials, then one line saying the rest are not recorded.
    assert_eq!(denied.len(), 9, "{log:#?}");
    let target = denied[0]["target"].as_str().unwrap();
    assert!(
        target.starts_with("adv@v1 invocation ") && target.ends_with("storage read secrets/k0"),
        "{target}"
    );
    assert!(
        denied[0]["detail"]
            .as_str()
            .unwrap()
            .contains("no storage grant")
    );
    assert!(
        denied[8]["detail"]
            .as_str()
            .unwrap()
            .contains("not recorded")
    );
}

#[test]
fn a_flood_of_bad_tokens_is_counted_and_cannot_push_a_deploy_out_of_the_audit_log() {
    let host = Host::start();
    host.deploy_ok(HELLO, &guests().hello);
    // 200,000 requests with a bad token, from eight threads (as the
    // attack that once rotated every deploy out of the log), on long
    // paths that make each refusal's line as long as it can be.
    const THREADS: usize = 8;
    const EACH: usize = 25_000;
    let path = format!("/v1/functions/{}", "x".repeat(600));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..EACH {
                    let r = host.request("GET", &path, Vec::new(), Some("not-a-token"));
                    assert_eq!(r.status, 401);
                }
            });
        }
    });
    // The deploy is still in the log of changes, which refusals never
    // touch.
    let changes = audit_file(&host, "audit.log");
    assert!(
        changes
            .iter()
            .any(|e| e["event"] == "deploy" && e["outcome"] == "ok"),
        "{changes:#?}"
    );
    assert!(changes.iter().all(|e| e["event"] != "admin.denied"));
    // Every refusal is accounted for, in a few lines: each window's first
    // in full, the rest counted once the window closes.
    let counted = |log: &[Value]| -> u64 {
        log.iter()
            .filter(|e| e["event"] == "admin.denied" && e["source"] == "127.0.0.1")
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum()
    };
    let total = (THREADS * EACH) as u64;
    let denied = host.wait_for(60, "the count of the last window", |h| {
        let log = audit_file(h, "audit-denied.log");
        (counted(&log) == total).then_some(log)
    });
    assert!(denied.len() < 100, "{} lines", denied.len());
    let size = std::fs::metadata(host.data_dir.join("audit-denied.log"))
        .unwrap()
        .len();
    assert!(size < 100_000, "{size} bytes");
    let line = denied.iter().find(|e| e["count"].is_u64()).unwrap();
    assert_eq!(line["detail"], "not a token of this host, or revoked");
    assert!(line["from_ms"].as_u64() <= line["to_ms"].as_u64());
    // An authenticated caller is still let in, and its change recorded.
    let r = host.admin("DELETE", "/v1/functions/hello", "");
    assert_eq!(r.status, 204);
    assert!(
        audit_file(&host, "audit.log")
            .iter()
            .any(|e| e["event"] == "remove" && e["outcome"] == "ok")
    );
}

#[test]
fn no_guest_sees_an_fnhost_token_on_any_route() {
    let host = Host::start();
    host.deploy_ok(
        "name = \"adv\"\n[[triggers.http]]\npath = \"/public/{mode}\"\n",
        &guests().adversary,
    );
    let deploy = create(&host, "deploy", json!({}));
    let seen = |token: &str| call_as(&host, token, "GET", "/public/authorization").text();
    // A scoped token, the host's bootstrap token, anything that looks like
    // a scoped token: taken off before the function runs.
    for token in [
        deploy.as_str(),
        host.token.as_str(),
        "fnh_0123456789abcdef_forged",
    ] {
        assert_eq!(seen(token), "authorization: none", "the guest saw {token}");
    }
    // The caller's own scheme, with no fnhost token in it, passes as it came.
    assert_eq!(
        seen("user-own-token"),
        "authorization: Bearer user-own-token"
    );
}

/// The victim: `auth = "token"` routes whose callers send fnhost tokens.
const ORDERS: &str = "name = \"orders\"\n[[triggers.http]]\npath = \"/orders/{id}\"\nauth = \"token\"\n[[triggers.http]]\npath = \"/orders/{id}/receipt\"\nauth = \"token\"\n";
/// Routes beside it that would take some of its requests.
const SHADOW: &str = "name = \"shadow\"\n[[triggers.http]]\npath = \"/orders/export\"\n[[triggers.http]]\npath = \"/orders/{id}/\"\n";

#[test]
fn a_deploy_token_cannot_put_routes_beside_another_functions() {
    let host = Host::start();
    let adversary = &guests().adversary;
    host.deploy_ok(ORDERS, adversary);
    let deploy = create(&host, "deploy", json!({}));
    let invoke = create(&host, "invoke", json!({}));
    let call = |path: &str, token: &str| {
        let r = host.request("GET", path, Vec::new(), Some(token));
        (r.status, r.header("adversary-function"), r.text())
    };

    // A more specific route and a trailing-slash variant: refused, naming
    // both routes and both functions; nothing is stored.
    let err = refusal(&deploy_as(&host, &deploy, SHADOW, adversary));
    assert!(
        err.contains("403")
            && err.contains(
                "\"/orders/export\" of \"shadow\" overlaps route \"/orders/{id}\" of \"orders\""
            )
            && err.contains("only an admin token"),
        "{err}"
    );
    assert_eq!(host.admin("GET", "/v1/functions/shadow", "").status, 404);
    // A catch-all beside a route under it: refused too.
    let route = |path: &str| format!("name = \"shadow\"\n[[triggers.http]]\npath = \"{path}\"\n");
    let err = refusal(&deploy_as(
        &host,
        &deploy,
        &route("/orders/{id}/{*rest}"),
        adversary,
    ));
    assert!(
        err.contains("403") && err.contains("overlaps route \"/orders/{id}/receipt\""),
        "{err}"
    );
    // The same shape with another parameter name, a catch-all in a
    // parameter's place: matchit's conflicts, as before.
    for path in ["/orders/{key}", "/orders/{*rest}"] {
        let err = refusal(&deploy_as(&host, &deploy, &route(path), adversary));
        assert!(
            err.contains("409") && err.contains("conflicts"),
            "{path}: {err}"
        );
    }
    // Requests carrying a token reach the function they were meant for,
    // or nothing.
    assert_eq!(
        call("/orders/export?mode=authorization", &invoke),
        (200, Some("orders".into()), "authorization: none".into())
    );
    assert_eq!(call("/orders/7/?mode=authorization", &invoke).0, 404);
    // Each refusal is in the audit log, with the token that asked.
    let refused: Vec<Value> = audit(&host)
        .into_iter()
        .filter(|e| e["event"] == "deploy" && e["outcome"] == "failed")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused[0]["detail"].as_str().unwrap().starts_with("403"));

    // A rollback to a version whose routes overlap: refused to the deploy
    // token too, and the function stays where it was.
    let promo = |path: &str| format!("name = \"promo\"\n[[triggers.http]]\npath = \"{path}\"\n");
    let admin = create(&host, "admin", json!({}));
    deploy_ok_as(&host, &admin, &promo("/orders/sale/"), adversary);
    deploy_ok_as(&host, &deploy, &promo("/promo"), adversary);
    let r = call_as(&host, &deploy, "POST", "/v1/functions/promo/rollback");
    assert_forbidden(&r, "\"/orders/sale/\" of \"promo\" overlaps");
    assert_eq!(
        host.admin("GET", "/v1/functions/promo", "").json()["version"],
        2
    );
    let r = call_as(&host, &admin, "POST", "/v1/functions/promo/rollback");
    assert_eq!(r.status, 200, "{}", r.text());

    // An admin may (the admin is trusted), and even then the function
    // never sees the caller's token; a caller's own scheme passes.
    deploy_ok_as(&host, &admin, SHADOW, adversary);
    for token in [invoke.as_str(), host.token.as_str()] {
        assert_eq!(
            call("/orders/export?mode=authorization", token),
            (200, Some("shadow".into()), "authorization: none".into())
        );
    }
    assert_eq!(
        call("/orders/export?mode=authorization", "mine").2,
        "authorization: Bearer mine"
    );

    // The neighbour: ordinary functions with routes of their own, deployed,
    // rolled back and removed with the deploy token as before.
    let invoices = |v: &str| {
        format!(
            "name = \"invoices\"\n[config]\nv = \"{v}\"\n[[triggers.http]]\npath = \"/invoices/{{id}}\"\n"
        )
    };
    for v in ["1", "2"] {
        deploy_ok_as(&host, &deploy, &invoices(v), adversary);
    }
    let r = call_as(&host, &deploy, "POST", "/v1/functions/invoices/rollback");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call_as(&host, &deploy, "DELETE", "/v1/functions/invoices");
    assert_eq!(r.status, 204, "{}", r.text());
}

#[test]
fn a_deploy_token_cannot_change_a_trusted_function() {
    let host = Host::start();
    let adversary = &guests().adversary;
    let vault = |isolation: &str| {
        format!(
            "name = \"vault\"\nisolation = \"{isolation}\"\n[[triggers.http]]\npath = \"/vault/{{mode}}\"\n"
        )
    };
    host.deploy_ok(&vault("trusted"), adversary);
    let deploy = create(&host, "deploy", json!({}));
    let admin = create(&host, "admin", json!({}));
    let version = || host.admin("GET", "/v1/functions/vault", "").json()["version"].clone();

    // Deploying one, deploying over one, removing one: 403, nothing changes.
    for manifest in [vault("trusted"), vault("public")] {
        let err = refusal(&deploy_as(&host, &deploy, &manifest, adversary));
        assert!(
            err.contains("403") && err.contains("needs an admin token"),
            "{err}"
        );
    }
    let r = call_as(&host, &deploy, "DELETE", "/v1/functions/vault");
    assert_forbidden(&r, "removing a function that has a trusted version");
    assert_eq!(version(), 1);
    assert_eq!(host.get("/vault/ok").text(), "ok");

    // An admin replaces it with a public version; the deploy token may not
    // roll back to the trusted one.
    deploy_ok_as(&host, &admin, &vault("public"), adversary);
    let r = call_as(&host, &deploy, "POST", "/v1/functions/vault/rollback");
    assert_forbidden(&r, "rolling a function back to or from a trusted version");
    assert_eq!(version(), 2);

    // An admin may do all of it.
    let r = call_as(&host, &admin, "POST", "/v1/functions/vault/rollback");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(version(), 1);
    let r = call_as(&host, &admin, "DELETE", "/v1/functions/vault");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(host.get("/vault/ok").status, 404);
}
