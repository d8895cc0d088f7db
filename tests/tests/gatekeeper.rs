//! The gatekeeper example end to end, as `scripts/quickstart` runs it: a
//! public `gatekeeper` validates and sanitizes customer records and hands
//! them through a queue to the trusted `vault`, which keeps them in a
//! sensitive bucket (encrypted, unreadable through the API) and writes a
//! redacted view the caller fetches with the id it was given.

use fnhost_tests::{Host, files_holding, guests, repo_root};
use serde_json::{Value, json};

fn manifest(name: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!("functions/{name}/fnhost.toml"))).unwrap()
}

#[test]
fn a_record_goes_through_the_gatekeeper_to_the_vault_and_only_a_redacted_view_comes_back() {
    let (dir, trusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = Host::start_in(
        dir.path(),
        &[
            "--sensitive",
            "customers",
            "--sensitive-queues",
            "vault-in",
            "--trusted-dir",
            trusted.path().to_str().unwrap(),
        ],
    );
    host.deploy_ok(&manifest("vault"), &guests().vault);
    host.deploy_ok(&manifest("gatekeeper"), &guests().gatekeeper);

    // Malformed and oversized records are refused with the reason.
    let cases = [
        (json!({ "name": "Ada", "email": "ada", "card": "4111111111111111" }).to_string(), "email"),
        (json!({ "name": "Ada", "email": "ada@example.com", "card": "41x1" }).to_string(), "card"),
        (json!({ "name": "", "email": "ada@example.com", "card": "4111111111111111" }).to_string(), "name"),
        ("{not json".to_string(), "not a customer record"),
        (json!({ "name": "Ada", "email": "a@b.c", "card": "4111111111111111", "note": "n".repeat(20_000) }).to_string(), "at most 16384"),
    ];
    for (body, why) in cases {
        let r = host.post("/customers", body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{}",
            r.text()
        );
    }

    // A good record, with a field the gatekeeper drops.
    let r = host.post(
        "/customers",
        json!({ "name": "Ada Lovelace", "email": "ada@example.com", "card": "4111111111111111", "admin": true })
            .to_string(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let view: Value = host.wait_for(30, "the redacted view", |h| {
        let r = h.get(&format!("/customers/{id}"));
        (r.status == 200).then(|| r.json())
    });
    assert_eq!(
        view,
        json!({ "name": "A.", "email": "a***@example.com", "card": "**** 1111" })
    );
    assert_eq!(host.get("/customers/0123-abcd").status, 404);

    // The record itself: not through the API, not in plain text on disk.
    let r = host.admin(
        "GET",
        &format!("/v1/buckets/customers/objects/{id}.json"),
        "",
    );
    assert_eq!(r.status, 403);
    // Neither in the trusted worker's store nor anywhere in the public data
    // dir: the queue store (its database and write-ahead log) held the
    // record only sealed on its way to the vault.
    let plain = files_holding(&[dir.path(), trusted.path()], b"4111111111111111");
    assert!(
        plain.is_empty(),
        "the card number is on disk in plain text: {plain:?}"
    );
    assert!(dir.path().join("queues.db").exists());

    // The gatekeeper cannot be made to read the sensitive bucket: a public
    // function granted it is refused at deploy.
    let out = host.deploy(
        "name = \"gatekeeper\"\n[[grants.storage]]\nbucket = \"customers\"\naccess = \"read\"\n",
        &guests().gatekeeper,
    );
    assert!(!out.status.success());
}
