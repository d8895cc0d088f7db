//! The embedded blob store: writes, reads, races, the change feed,
//! receipts, crash leftovers and refusals.

use super::*;
use crate::blobs::Cursor;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_puts_and_deletes_leave_the_file_the_index_and_the_feed_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(EmbeddedBlobs::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let blobs = blobs.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                if t == 0 && i % 5 == 4 {
                    blobs.delete("race", "k").await.unwrap();
                } else {
                    let body = format!("writer {t}, put {i}").into_bytes();
                    blobs.put("race", "k", body, None).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A last round of racing puts, so the object exists at the end.
    let finals: Vec<_> = (0..8)
        .map(|t| {
            let body = format!("writer {t}, final").into_bytes();
            let blobs = blobs.clone();
            tokio::spawn(async move { blobs.put("race", "k", body, None).await.unwrap() })
        })
        .collect();
    for f in finals {
        f.await.unwrap();
    }
    let (meta, body) = blobs.get("race", "k").await.unwrap().unwrap();
    assert_eq!(meta.etag, crate::files::sha256_hex(&body), "index vs file");
    let last = blobs
        .changes(Some("race".into()), 0, 10_000)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        last.etag.as_deref(),
        Some(meta.etag.as_str()),
        "feed vs index"
    );
}

#[tokio::test]
async fn objects_are_written_read_listed_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    let stored = blobs
        .put(
            "uploads",
            "img/cat.png",
            b"meow".to_vec(),
            Some("image/png".into()),
        )
        .await
        .unwrap();
    assert!(!stored.replaced, "a new object");
    let meta = stored.meta;
    assert_eq!(
        (meta.size, meta.content_type.as_deref()),
        (4, Some("image/png"))
    );
    assert_eq!(meta.etag, crate::files::sha256_hex(b"meow"));
    blobs
        .put("uploads", "img/dog.png", b"woof".to_vec(), None)
        .await
        .unwrap();
    blobs
        .put("uploads", "doc/a.txt", b"a".to_vec(), None)
        .await
        .unwrap();
    // A key and a "folder" of the same name can both exist.
    blobs
        .put("uploads", "img", b"x".to_vec(), None)
        .await
        .unwrap();

    let (m, body) = blobs.get("uploads", "img/cat.png").await.unwrap().unwrap();
    assert_eq!((body.as_slice(), &m), (&b"meow"[..], &meta));
    let keys: Vec<String> = blobs
        .list("uploads", "img/", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["img/cat.png", "img/dog.png"]);
    assert_eq!(blobs.list("uploads", "", None, 100).await.unwrap().len(), 4);

    let replaced = blobs
        .put("uploads", "img/cat.png", b"purr".to_vec(), None)
        .await
        .unwrap();
    assert!(replaced.replaced);
    assert_ne!(replaced.meta.etag, meta.etag);
    assert_eq!(
        blobs
            .get("uploads", "img/cat.png")
            .await
            .unwrap()
            .unwrap()
            .1,
        b"purr"
    );

    assert!(blobs.delete("uploads", "img/cat.png").await.unwrap());
    assert!(!blobs.delete("uploads", "img/cat.png").await.unwrap());
    assert!(blobs.get("uploads", "img/cat.png").await.unwrap().is_none());
    assert!(
        blobs
            .head("uploads", "img/dog.png")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        blobs.get("other", "img/dog.png").await.unwrap().is_none(),
        "buckets are separate"
    );
}

#[tokio::test]
async fn every_write_is_in_the_feed_and_receipts_hand_each_version_once() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    blobs
        .put("uploads", "a", b"1".to_vec(), None)
        .await
        .unwrap();
    blobs
        .put("uploads", "a", b"2".to_vec(), None)
        .await
        .unwrap();
    blobs.put("other", "b", b"3".to_vec(), None).await.unwrap();
    assert!(blobs.delete("uploads", "a").await.unwrap());
    assert!(
        !blobs.delete("uploads", "a").await.unwrap(),
        "no change for nothing"
    );
    let all = blobs.changes(None, 0, 100).await.unwrap();
    let kinds: Vec<(&str, ChangeKind)> = all.iter().map(|c| (c.key.as_str(), c.kind)).collect();
    use ChangeKind::*;
    assert_eq!(
        kinds,
        [
            ("a", Created),
            ("a", Updated),
            ("b", Created),
            ("a", Deleted)
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(blobs.latest_change().await.unwrap(), all[3].seq);
    let uploads = blobs
        .changes(Some("uploads".into()), all[0].seq, 100)
        .await
        .unwrap();
    assert_eq!(uploads.len(), 2, "after the first, this bucket only");

    // A consumer handed version 1 is not handed it again, but is handed
    // version 2 and the delete; after the delete, version 1 is new again.
    let c = "fn/uploads";
    assert!(blobs.cursor(c).await.unwrap().is_none());
    let v1 = all[0].clone();
    blobs
        .advance(
            c,
            Cursor {
                seq: v1.seq,
                spec: "s".into(),
            },
            vec![v1.clone()],
        )
        .await
        .unwrap();
    assert_eq!(blobs.cursor(c).await.unwrap().unwrap().seq, v1.seq);
    let rest = blobs.undelivered(c, all.clone()).await.unwrap();
    assert_eq!(rest.len(), 3, "all but version 1");
    assert!(
        blobs
            .undelivered("other/uploads", all.clone())
            .await
            .unwrap()
            .len()
            == 4
    );
    blobs
        .advance(
            c,
            Cursor {
                seq: all[3].seq,
                spec: "s".into(),
            },
            vec![all[3].clone()],
        )
        .await
        .unwrap();
    assert_eq!(
        blobs.undelivered(c, vec![v1.clone()]).await.unwrap().len(),
        1
    );

    // Within one batch: a delete and a re-upload of the same content are
    // both delivered; the same version twice is delivered once.
    let again = Change {
        seq: 99,
        ..v1.clone()
    };
    let batch = vec![all[3].clone(), again.clone(), again];
    let fresh = blobs.undelivered("batch/uploads", batch).await.unwrap();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    blobs
        .advance(
            "batch/uploads",
            Cursor {
                seq: 1,
                spec: "s".into(),
            },
            vec![v1.clone()],
        )
        .await
        .unwrap();
    let batch = vec![
        all[3].clone(),
        Change {
            seq: 99,
            ..v1.clone()
        },
    ];
    assert_eq!(
        blobs
            .undelivered("batch/uploads", batch)
            .await
            .unwrap()
            .len(),
        2,
        "a receipt does not hide a re-upload that follows a delete"
    );

    // Pruning forgets consumers that went away, keeps recent changes.
    blobs.prune(vec![]).await.unwrap();
    assert!(blobs.cursor(c).await.unwrap().is_none());
    assert_eq!(blobs.changes(None, 0, 100).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_scan_is_not_followed_by_the_older_changes_it_already_reflects() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    let c = "fn/uploads";
    // A consumer starts reconciling at `start`; while it does, one object
    // is written twice and another is deleted and written again.
    let start = blobs.latest_change().await.unwrap();
    blobs
        .put("uploads", "a", b"1".to_vec(), None)
        .await
        .unwrap();
    let a2 = blobs
        .put("uploads", "a", b"2".to_vec(), None)
        .await
        .unwrap();
    blobs
        .put("uploads", "b", b"x".to_vec(), None)
        .await
        .unwrap();
    assert!(blobs.delete("uploads", "b").await.unwrap());
    blobs
        .put("uploads", "b", b"x".to_vec(), None)
        .await
        .unwrap();
    let (page, as_of) = blobs.list_at("uploads", "", None, 10).await.unwrap();
    assert_eq!(as_of, blobs.latest_change().await.unwrap());
    let found: Vec<Change> = page
        .into_iter()
        .map(|m| Change::found("uploads", m, as_of))
        .collect();
    let fresh = blobs.undelivered(c, found).await.unwrap();
    assert_eq!(fresh.len(), 2);
    assert_eq!(fresh[0].etag.as_deref(), Some(a2.meta.etag.as_str()));
    let scanning = Cursor {
        seq: start,
        spec: "s (reconciling)".into(),
    };
    blobs.advance(c, scanning, fresh).await.unwrap();
    // The feed from `start` holds all five changes; the scan already
    // handed over where they led, so none is delivered (not a stale
    // `created` of version 1, not a delete of an object that exists).
    let feed = blobs.changes(None, start, 100).await.unwrap();
    assert_eq!(feed.len(), 5);
    let again = blobs.undelivered(c, feed).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Changes after the scan are delivered as usual.
    blobs
        .put("uploads", "a", b"3".to_vec(), None)
        .await
        .unwrap();
    assert!(blobs.delete("uploads", "b").await.unwrap());
    let later = blobs.changes(None, as_of, 100).await.unwrap();
    assert_eq!(blobs.undelivered(c, later).await.unwrap().len(), 2);
}

#[tokio::test]
async fn traversal_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    for key in ["../../etc/passwd", "/abs", "a/../../b"] {
        let err = blobs
            .put("uploads", key, b"x".to_vec(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::InvalidKey(_)), "{key}: {err}");
    }
    assert!(
        std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .next()
            .is_none()
    );
    let big = vec![0u8; crate::blobs::MAX_OBJECT_BYTES + 1];
    assert!(matches!(
        blobs.put("uploads", "big", big, None).await,
        Err(BlobError::TooLarge(_))
    ));
}

#[tokio::test]
async fn a_put_cut_off_before_its_index_commits_leaves_the_old_object_whole() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    let v1 = blobs
        .put("docs", "a.txt", b"version one".to_vec(), None)
        .await
        .unwrap();
    // Another process holds the index's write lock: the put writes its
    // file, then cannot commit (as if the host died between the two).
    let other = Connection::open(dir.path().join("blobs.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let cut_off = blobs
        .put("docs", "a.txt", b"version two".to_vec(), None)
        .await;
    assert!(
        matches!(cut_off, Err(BlobError::Backend { .. })),
        "{cut_off:?}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    let (meta, body) = blobs.get("docs", "a.txt").await.unwrap().unwrap();
    assert_eq!(body, b"version one", "the old bytes, not the new");
    assert_eq!(meta.etag, v1.meta.etag);
    assert_eq!(meta.etag, crate::files::sha256_hex(&body));
    let feed = blobs.changes(Some("docs".into()), 0, 10).await.unwrap();
    assert_eq!(feed.len(), 1, "no change recorded for the cut-off put");
    drop(blobs);
    // The next open removes what the cut-off put left.
    let files = || {
        std::fs::read_dir(dir.path().join("blobs/docs"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 2);
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    assert_eq!(files(), 1);
    let (_, body) = blobs.get("docs", "a.txt").await.unwrap().unwrap();
    assert_eq!(body, b"version one");
}

#[tokio::test]
async fn objects_written_before_versioned_files_are_still_read_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
        blobs
            .put("docs", "old.txt", b"legacy".to_vec(), None)
            .await
            .unwrap();
    }
    // As the earlier layout left it: the file named by the key alone.
    let conn = Connection::open(dir.path().join("blobs.db")).unwrap();
    let file: String = conn
        .query_row("SELECT file FROM blob_objects", [], |r| r.get(0))
        .unwrap();
    let folder = dir.path().join("blobs/docs");
    std::fs::rename(folder.join(&file), folder.join(legacy_file("old.txt"))).unwrap();
    conn.execute("UPDATE blob_objects SET file = NULL", [])
        .unwrap();
    drop(conn);
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    let (_, body) = blobs.get("docs", "old.txt").await.unwrap().unwrap();
    assert_eq!(body, b"legacy", "kept by the sweep and read");
    blobs
        .put("docs", "old.txt", b"new".to_vec(), None)
        .await
        .unwrap();
    let (_, body) = blobs.get("docs", "old.txt").await.unwrap().unwrap();
    assert_eq!(body, b"new");
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().count(),
        1,
        "the legacy file is gone"
    );
}

#[tokio::test]
async fn an_oversized_content_type_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
    let huge = "image/png;".to_string() + &"x".repeat(2 << 20);
    let err = blobs
        .put("uploads", "a.png", b"png".to_vec(), Some(huge))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlobError::TooLarge(m) if m.contains("content type")),
        "{err}"
    );
    assert!(blobs.head("uploads", "a.png").await.unwrap().is_none());
    assert!(blobs.changes(None, 0, 10).await.unwrap().is_empty());
}
