//! Blob triggers on buckets in S3, whose events arrive as S3 event
//! notifications on an SQS queue that every host of a fleet reads (on the
//! test process's moto server): what S3 sends reaches its trigger, on
//! whichever host receives it, however soon after the deploy; what S3 did
//! not send (forged deletes, oversized notifications) runs nothing.

#[path = "support/fleet.rs"]
mod support;

use fnhost::blobs::BlobBackend as _;
use fnhost_tests::{Host, guests};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{Fleet, first_dead_letter, moto_target};

#[test]
fn an_image_put_into_s3_gets_its_thumbnail_written_back_to_s3() {
    let g = guests();
    let mut fleet = Fleet::with_s3_buckets("thumbs");
    let hosts: Vec<Host> = (0..2).map(|_| fleet.start(&[])).collect();
    let manifest =
        std::fs::read_to_string(fnhost_tests::repo_root().join("functions/thumbnail/fnhost.toml"))
            .unwrap();
    // The deploy sets up the bucket's notifications before it answers.
    hosts[0].deploy_ok(&manifest, &g.thumbnail);
    let s3 = fleet.s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let png = std::fs::read(fnhost_tests::repo_root().join("tests/fixtures/landscape-300x200.png"))
        .unwrap();

    // One upload straight to S3, as any S3 client would; one through a
    // host's blob API (which puts it in S3 too). Both get thumbnails, in S3.
    rt.block_on(s3.put(
        "uploads",
        "cats/straight.png",
        png.clone(),
        Some("image/png".into()),
    ))
    .unwrap();
    let r = hosts[1].admin("PUT", "/v1/buckets/uploads/objects/cats/via api.png", png);
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    for key in ["cats/straight.png", "cats/via api.png"] {
        let thumb = hosts[0].wait_for(60, "the thumbnail in S3", |_| {
            rt.block_on(s3.get("thumbnails", key))
                .unwrap()
                .map(|(_, body)| body)
        });
        assert_eq!(fnhost_tests::png_size(&thumb), (128, 85), "{key}");
    }

    // A delete in S3 removes the thumbnail; something that is not an
    // image goes to the trigger's dead letters with the reason.
    assert!(
        rt.block_on(s3.delete("uploads", "cats/straight.png"))
            .unwrap()
    );
    hosts[0].wait_for(60, "the thumbnail to be deleted", |_| {
        rt.block_on(s3.get("thumbnails", "cats/straight.png"))
            .unwrap()
            .is_none()
            .then_some(())
    });
    rt.block_on(s3.put("uploads", "notes.txt", b"not an image".to_vec(), None))
        .unwrap();
    let dead = first_dead_letter(&hosts[0], "fnhost-blob-thumbnail.uploads");
    assert!(
        dead["error"].as_str().unwrap_or_default().contains("image"),
        "{dead:?}"
    );

    // A message on the event queue that S3 did not send is dead-lettered
    // by name, and the feed goes on.
    let r = hosts[1].admin(
        "POST",
        "/v1/queues/s3-events/messages",
        json!({ "body": "hello" }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let dead = first_dead_letter(&hosts[1], "s3-events");
    assert!(
        dead["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not an S3 event notification"),
        "{dead:?}"
    );
    rt.block_on(
        s3.put(
            "uploads",
            "after.png",
            std::fs::read(fnhost_tests::repo_root().join("tests/fixtures/landscape-300x200.png"))
                .unwrap(),
            None,
        ),
    )
    .unwrap();
    hosts[0].wait_for(60, "a thumbnail after the bad message", |_| {
        rt.block_on(s3.get("thumbnails", "after.png"))
            .unwrap()
            .map(drop)
    });
}

/// The adversary recording each blob event of bucket `uploads` it takes
/// (`events`, when given) in bucket `events`.
fn recorder(events: &str) -> String {
    format!(
        "name = \"recorder\"\n[[triggers.blob]]\nbucket = \"uploads\"\n{events}\n[[grants.storage]]\nbucket = \"events\"\naccess = \"write\"\n"
    )
}

/// The keys the recorder ran for, once per run (it records each run
/// under `blob/<key>/<invocation>`).
fn runs(host: &Host) -> Vec<String> {
    let v = host
        .admin("GET", "/v1/buckets/events/objects?prefix=blob/", "")
        .json();
    v["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .filter_map(|o| {
                    let key = o["key"].as_str()?.strip_prefix("blob/")?;
                    Some(key.rsplit_once('/')?.0.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `queue` holds nothing: every message handled.
fn drained(host: &Host, queue: &str) {
    host.wait_for(60, &format!("{queue} to drain"), |h| {
        let s: Value = h.admin("GET", &format!("/v1/queues/{queue}"), "").json();
        (s["ready"] == 0 && s["in_flight"] == 0 && s["delayed"] == 0).then_some(())
    });
}

#[test]
fn uploads_right_after_a_deploy_each_run_the_trigger_whichever_host_gets_the_event() {
    let mut fleet = Fleet::with_s3_buckets("prompt");
    let hosts: Vec<Host> = (0..3).map(|_| fleet.start(&[])).collect();
    let s3 = fleet.s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The bucket is there before the function, as an operator's would be.
    rt.block_on(s3.create_bucket("uploads")).unwrap();

    // Deployed on one host; the uploads follow at once, straight to S3,
    // and their events go to whichever host receives them first (the
    // others learn of the deploy only at their next look).
    hosts[0].deploy_ok(&recorder(""), &guests().adversary);
    let want: BTreeSet<String> = (0..20).map(|i| format!("n-{i}.txt")).collect();
    for key in &want {
        rt.block_on(s3.put("uploads", key, key.as_bytes().to_vec(), None))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ran: BTreeSet<String> = runs(&hosts[0]).into_iter().collect();
        let missing: Vec<&String> = want.difference(&ran).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no run within 90 s for {} of the {} uploads: {missing:?}",
            missing.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An S3 notification naming `keys` of the fleet's bucket `uploads`, each
/// record the event `event`, as S3 would write it.
fn notification(fleet: &Fleet, event: &str, keys: impl Iterator<Item = String>) -> String {
    let records: Vec<Value> = keys
        .map(|key| {
            json!({
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": event,
                "s3": {
                    "bucket": {"name": format!("{}-uploads", fleet.name)},
                    "object": {"key": key, "sequencer": "0A"}
                }
            })
        })
        .collect();
    json!({ "Records": records }).to_string()
}

/// Send `body` to the fleet's notification queue as any SQS client can.
fn send_to_events_queue(rt: &tokio::runtime::Runtime, fleet: &Fleet, body: String) {
    rt.block_on(async {
        let (sqs, url) = fleet.sqs("s3-events").await;
        sqs.send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn forged_delete_events_run_nothing_and_a_real_delete_runs_its_trigger_once() {
    let mut fleet = Fleet::with_s3_buckets("forged");
    let hosts: Vec<Host> = (0..2).map(|_| fleet.start(&[])).collect();
    let s3 = fleet.s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(s3.create_bucket("uploads")).unwrap();
    // It takes deletes only: the created event of an object still leaves
    // it a receipt, which its delete needs.
    hosts[0].deploy_ok(&recorder("events = [\"deleted\"]"), &guests().adversary);

    // Deletes of keys that never existed, as anyone who can send to the
    // queue can write them: 300 in one message (over the cap of records
    // a message), and 300 more in three messages within the cap.
    let ghosts = |from: usize, n: usize| (from..from + n).map(|i| format!("ghost-{i}.txt"));
    let removed = "ObjectRemoved:Delete";
    send_to_events_queue(&rt, &fleet, notification(&fleet, removed, ghosts(0, 300)));
    for from in [0, 100, 200] {
        send_to_events_queue(
            &rt,
            &fleet,
            notification(&fleet, removed, ghosts(from, 100)),
        );
    }
    drained(&hosts[0], "s3-events");
    let trigger: Value = hosts[0]
        .admin("GET", "/v1/queues/fnhost-blob-recorder.uploads", "")
        .json();
    assert_eq!(
        (&trigger["ready"], &trigger["in_flight"]),
        (&json!(0), &json!(0)),
        "nothing was handed to the trigger: {trigger}"
    );
    assert_eq!(runs(&hosts[0]), Vec::<String>::new());
    let dead = first_dead_letter(&hosts[0], "s3-events");
    assert!(
        dead["error"]
            .as_str()
            .unwrap_or_default()
            .contains("300 object records, over the cap of 100"),
        "{dead:?}"
    );

    // The neighbour: a real object. Its created event leaves its receipt.
    rt.block_on(s3.put("uploads", "real.txt", b"real".to_vec(), None))
        .unwrap();
    let state = rt
        .block_on(fnhost::backends::s3blobs::S3Blobs::connect(
            moto_target(),
            String::new(),
            Default::default(),
        ))
        .unwrap();
    let receipt = format!(
        "blob-receipts/recorder/uploads/{}",
        fnhost::files::sha256_hex(b"real.txt")
    );
    hosts[0].wait_for(60, "the real object's receipt", |_| {
        rt.block_on(state.head(&fleet.name, &receipt)).unwrap()
    });
    // A forged delete while it is there runs nothing; its real delete
    // runs the trigger, once; a forged repeat afterwards runs nothing.
    let real = || ["real.txt".to_string()].into_iter();
    send_to_events_queue(&rt, &fleet, notification(&fleet, removed, real()));
    assert!(rt.block_on(s3.delete("uploads", "real.txt")).unwrap());
    hosts[0].wait_for(60, "the run for the real delete", |h| {
        runs(h).contains(&"real.txt".to_string()).then_some(())
    });
    send_to_events_queue(&rt, &fleet, notification(&fleet, removed, real()));
    drained(&hosts[0], "s3-events");
    drained(&hosts[0], "fnhost-blob-recorder.uploads");
    assert_eq!(runs(&hosts[0]), vec!["real.txt".to_string()]);
    assert!(
        rt.block_on(state.head(&fleet.name, &receipt))
            .unwrap()
            .is_none(),
        "the receipt went with the delete"
    );
}
