//! Blob-change triggers on the real binary: an upload becomes a thumbnail,
//! a delete removes it, a bad upload is dead-lettered, and changes made
//! before the function was deployed, while the host was stopped, or cut off
//! by a `kill -9`, are handed over after the fact — each version of an
//! upload once, not once per restart.

use fnhost_tests::{Host, guests, png_size, repo_root};
use serde_json::Value;

fn thumbnail_manifest() -> String {
    std::fs::read_to_string(repo_root().join("functions/thumbnail/fnhost.toml")).unwrap()
}

fn png() -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/landscape-300x200.png")).unwrap()
}

fn upload(host: &Host, key: &str, body: impl Into<Vec<u8>>) {
    let r = host.admin("PUT", &format!("/v1/buckets/uploads/objects/{key}"), body);
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
}

fn thumbnail(host: &Host, key: &str) -> Option<Vec<u8>> {
    let r = host.admin("GET", &format!("/v1/buckets/thumbnails/objects/{key}"), "");
    (r.status == 200).then_some(r.body)
}

/// Dead letters of a queue.
fn dead_letters(host: &Host, queue: &str) -> Vec<Value> {
    let v = host
        .admin("GET", &format!("/v1/queues/{queue}/dead-letters"), "")
        .json();
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

/// (key, kind) of every recorded change to `bucket`.
fn changes(host: &Host, bucket: &str) -> Vec<(String, String)> {
    let v = host
        .admin("GET", &format!("/v1/buckets/{bucket}/changes"), "")
        .json();
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_upload_gets_its_thumbnail_a_delete_removes_it_and_garbage_is_dead_lettered() {
    let host = Host::start();
    host.deploy_ok(&thumbnail_manifest(), &guests().thumbnail);

    upload(&host, "cats/landscape.png", png());
    let thumb = host.wait_for(60, "the thumbnail", |h| thumbnail(h, "cats/landscape.png"));
    assert_eq!(png_size(&thumb), (128, 85), "fits the 128×128 box");

    let r = host.admin(
        "DELETE",
        "/v1/buckets/uploads/objects/cats/landscape.png",
        "",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    host.wait_for(30, "the thumbnail to be deleted", |h| {
        thumbnail(h, "cats/landscape.png").is_none().then_some(())
    });

    // Not an image: the job says `fail`, so it is dead-lettered at once,
    // with the reason, and no thumbnail is written.
    upload(&host, "notes.png", "not an image at all");
    let dead = host.wait_for(30, "the bad upload in the dead letters", |h| {
        let d = dead_letters(h, "fnhost-blob-thumbnail.uploads");
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 1);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("not a PNG or JPEG"), "{error}");
    assert!(thumbnail(&host, "notes.png").is_none());
    let key = dead[0]["message"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[0] == "fnhost-key")
        .map(|a| a[1].clone());
    assert_eq!(
        key,
        Some(Value::from("notes.png")),
        "the dead letter names the object"
    );
}

#[test]
fn a_blob_job_that_keeps_failing_is_dead_lettered_after_max_attempts() {
    let host = Host::start();
    host.deploy_ok(
        r#"
name = "inbox"
[[triggers.blob]]
bucket = "inbox"
delivery = { max_attempts = 3, backoff_initial = "50ms", backoff_max = "100ms" }
[config]
on_event = "retry"
"#,
        &guests().adversary,
    );
    let r = host.admin("PUT", "/v1/buckets/inbox/objects/a.txt", "x");
    assert_eq!(r.status, 201);
    let dead = host.wait_for(30, "the dead letter", |h| {
        let d = dead_letters(h, "fnhost-blob-inbox.inbox");
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead[0]["attempts"], 3);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{}",
        dead[0]
    );
}

#[test]
fn a_re_upload_after_an_unwatched_delete_is_a_new_change() {
    let host = Host::start();
    // Default events: created and updated, not deleted.
    let manifest = r#"
name = "inbox"
[[triggers.blob]]
bucket = "inbox"
[[grants.storage]]
bucket = "events"
access = "read-write"
"#;
    host.deploy_ok(manifest, &guests().adversary);
    let runs = |h: &Host| {
        h.admin("GET", "/v1/buckets/events/objects?prefix=blob/a.txt/", "")
            .json()["objects"]
            .as_array()
            .unwrap()
            .len()
    };
    let put = |h: &Host| {
        let r = h.admin("PUT", "/v1/buckets/inbox/objects/a.txt", "same bytes");
        assert!(matches!(r.status, 200 | 201));
    };
    put(&host);
    host.wait_for(30, "the first run", |h| (runs(h) == 1).then_some(()));
    assert_eq!(
        host.admin("DELETE", "/v1/buckets/inbox/objects/a.txt", "")
            .status,
        204
    );
    put(&host);
    host.wait_for(30, "a run for the re-upload of the same bytes", |h| {
        (runs(h) == 2).then_some(())
    });

    // A function removed and deployed again under the same name is a new
    // consumer: it is handed the object already there.
    assert_eq!(host.admin("DELETE", "/v1/functions/inbox", "").status, 204);
    host.deploy_ok(manifest, &guests().adversary);
    host.wait_for(
        30,
        "a run for the existing object after remove + deploy",
        |h| (runs(h) == 3).then_some(()),
    );
}

#[test]
fn a_trigger_that_could_feed_itself_is_refused() {
    let host = Host::start();
    let out = host.deploy(
        r#"
name = "loop"
[[triggers.blob]]
bucket = "uploads"
[[grants.storage]]
bucket = "uploads"
access = "read-write"
"#,
        &guests().adversary,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("triggers.blob[0].bucket") && err.contains("allow_self_trigger"),
        "{err}"
    );
}

/// Write into a stopped host's blob store directly, as another process
/// sharing the data dir would (SQLite index, atomic file writes).
fn upload_while_stopped(data_dir: &std::path::Path, key: &str) {
    use fnhost::blobs::BlobBackend;
    let blobs = fnhost::backends::embedded::EmbeddedBlobs::open(data_dir).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(blobs.put("uploads", key, png(), Some("image/png".into())))
        .unwrap();
}

#[test]
fn uploads_before_deploy_while_stopped_and_across_a_kill_are_each_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_in(dir.path(), &[]);
    // Uploaded while no function watched the bucket.
    for i in 0..3 {
        upload(&host, &format!("before-{i}.png"), png());
    }
    host.deploy_ok(&thumbnail_manifest(), &guests().thumbnail);
    for i in 0..3 {
        host.wait_for(60, "a thumbnail of an earlier upload", |h| {
            thumbnail(h, &format!("before-{i}.png"))
        });
    }
    assert!(host.stop(), "a clean stop");

    // Uploads while the host is down are handled after the restart, and
    // nothing handed over before is handed over again.
    upload_while_stopped(dir.path(), "offline-0.png");
    upload_while_stopped(dir.path(), "offline-1.png");
    let mut host = Host::start_in(dir.path(), &[]);
    for key in ["offline-0.png", "offline-1.png"] {
        host.wait_for(60, "the thumbnail of an upload made while stopped", |h| {
            thumbnail(h, key)
        });
    }
    upload(&host, "after.png", png());
    host.wait_for(60, "the thumbnail of a new upload", |h| {
        thumbnail(h, "after.png")
    });

    // kill -9 straight after an upload: the change was recorded with the
    // write, so it is handled after the restart.
    upload(&host, "crash.png", png());
    host.kill9();
    let host = Host::start_in(dir.path(), &[]);
    let thumb = host.wait_for(60, "the thumbnail of the upload cut off by the kill", |h| {
        thumbnail(h, "crash.png")
    });
    assert_eq!(png_size(&thumb), (128, 85));

    // One thumbnail write per upload that no crash interrupted: the thumbnails
    // bucket's change feed shows each created once and never rewritten.
    let written = changes(&host, "thumbnails");
    for key in [
        "before-0.png",
        "before-1.png",
        "before-2.png",
        "offline-0.png",
        "offline-1.png",
        "after.png",
    ] {
        let n: Vec<_> = written.iter().filter(|(k, _)| k == key).collect();
        assert_eq!(n.len(), 1, "{key}: {written:?}");
        assert_eq!(n[0].1, "created");
    }
    let crash = written.iter().filter(|(k, _)| k == "crash.png").count();
    eprintln!("crash.png thumbnail writes (at least once across the kill): {crash}");
    assert!(crash >= 1);
    assert!(dead_letters(&host, "fnhost-blob-thumbnail.uploads").is_empty());
}

#[test]
fn an_event_scoped_grant_reads_the_triggering_object_and_nothing_else() {
    let host = Host::start();
    // The neighbour is there before the function, so only a.txt triggers it.
    let r = host.admin("PUT", "/v1/buckets/inbox/objects/b.txt", "neighbour");
    assert_eq!(r.status, 201);
    host.deploy_ok(
        r#"
name = "inbox"
[[triggers.blob]]
bucket = "inbox"
prefix = "a"
[[grants.storage]]
bucket = "inbox"
access = "read-event"
[[grants.storage]]
bucket = "events"
access = "write"
[config]
neighbour = "b.txt"
"#,
        &guests().adversary,
    );
    let r = host.admin("PUT", "/v1/buckets/inbox/objects/a.txt", "mine");
    assert_eq!(r.status, 201);
    let record = host.wait_for(30, "the event's record", |h| {
        let listing = h.admin("GET", "/v1/buckets/events/objects?prefix=blob/a.txt/", "");
        let key = listing.json()["objects"][0]["key"].as_str()?.to_string();
        Some(
            h.admin("GET", &format!("/v1/buckets/events/objects/{key}"), "")
                .json(),
        )
    });
    assert_eq!(record["own"], "read 4 bytes", "{record}");
    let neighbour = record["neighbour"].as_str().unwrap();
    assert!(
        neighbour.starts_with("error:") && neighbour.contains("b.txt"),
        "{record}"
    );
    assert!(
        record["list"].as_str().unwrap().starts_with("error:"),
        "{record}"
    );

    // A read-event grant on a bucket no trigger watches is refused at deploy.
    let out = host.deploy(
        "name = \"nosy\"\n[[grants.storage]]\nbucket = \"inbox\"\naccess = \"read-event\"\n",
        &guests().adversary,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grants.storage[0].access") && err.contains("read-event"),
        "{err}"
    );
}
