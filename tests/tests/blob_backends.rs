//! One suite of checks for every `BlobBackend`: the embedded store, and S3
//! on a local moto server. What a guest's `storage` calls and the blob API
//! rely on, whichever backend holds the buckets.

use fnhost::backends::embedded::EmbeddedBlobs;
use fnhost::backends::s3blobs::S3Blobs;
use fnhost::blobs::{BlobBackend, BlobError, MAX_OBJECT_BYTES};
use std::sync::Arc;

struct Under {
    blobs: Arc<dyn BlobBackend>,
    bucket: String,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded(bucket: &str) -> Under {
    let dir = tempfile::tempdir().unwrap();
    Under {
        blobs: Arc::new(EmbeddedBlobs::open(dir.path()).unwrap()),
        bucket: bucket.to_string(),
        _dir: Some(dir),
    }
}

async fn s3(bucket: &str) -> Under {
    let moto = tokio::task::spawn_blocking(fnhost_tests::moto)
        .await
        .unwrap();
    let prefix = format!("b{}-", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let blobs = S3Blobs::connect(
        fnhost::backends::aws::Target {
            region: Some("us-east-1".into()),
            endpoint: Some(moto.endpoint.clone()),
            keys: Some(("testing".into(), "testing".into())),
        },
        prefix,
        Default::default(),
    )
    .await
    .unwrap();
    blobs.create_bucket(bucket).await.unwrap();
    Under {
        blobs: Arc::new(blobs),
        bucket: bucket.to_string(),
        _dir: None,
    }
}

async fn an_object_round_trips_with_its_metadata(u: Under) {
    let (b, blobs) = (&u.bucket, &u.blobs);
    let stored = blobs
        .put(
            b,
            "in/cat.png",
            b"\x89PNG one".to_vec(),
            Some("image/png".into()),
        )
        .await
        .unwrap();
    assert!(!stored.replaced);
    assert_eq!(
        (stored.meta.key.as_str(), stored.meta.size),
        ("in/cat.png", 8)
    );
    let (meta, body) = blobs.get(b, "in/cat.png").await.unwrap().unwrap();
    assert_eq!(body, b"\x89PNG one");
    assert_eq!(meta.content_type.as_deref(), Some("image/png"));
    assert_eq!(meta.etag, stored.meta.etag);
    assert!(meta.modified_ms > 0);
    assert_eq!(
        blobs.head(b, "in/cat.png").await.unwrap().unwrap().etag,
        meta.etag
    );

    // A second put replaces it, with a new etag.
    let again = blobs
        .put(b, "in/cat.png", b"\x89PNG two!".to_vec(), None)
        .await
        .unwrap();
    assert!(again.replaced);
    assert_ne!(again.meta.etag, stored.meta.etag);
    assert_eq!(
        blobs.get(b, "in/cat.png").await.unwrap().unwrap().1,
        b"\x89PNG two!"
    );
}

async fn listings_page_in_key_order_under_a_prefix(u: Under) {
    let (b, blobs) = (&u.bucket, &u.blobs);
    for key in ["a/3", "a/1", "b/1", "a/2"] {
        blobs
            .put(b, key, key.as_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    let keys = |l: Vec<fnhost::blobs::ObjectMeta>| l.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(blobs.list(b, "a/", None, 10).await.unwrap()),
        ["a/1", "a/2", "a/3"]
    );
    assert_eq!(
        keys(blobs.list(b, "a/", None, 2).await.unwrap()),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(blobs.list(b, "a/", Some("a/2".into()), 10).await.unwrap()),
        ["a/3"]
    );
    assert_eq!(keys(blobs.list(b, "", None, 10).await.unwrap()).len(), 4);
}

async fn a_delete_says_whether_there_was_an_object(u: Under) {
    let (b, blobs) = (&u.bucket, &u.blobs);
    blobs.put(b, "gone", b"x".to_vec(), None).await.unwrap();
    assert!(blobs.delete(b, "gone").await.unwrap());
    assert!(!blobs.delete(b, "gone").await.unwrap());
    assert!(blobs.get(b, "gone").await.unwrap().is_none());
    assert!(blobs.head(b, "gone").await.unwrap().is_none());
    // A bucket with nothing in it yet reads as empty.
    assert!(blobs.get("never-used", "k").await.unwrap().is_none());
    assert!(
        blobs
            .list("never-used", "", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn what_no_backend_takes_is_refused_before_it_is_sent(u: Under) {
    let (b, blobs) = (&u.bucket, &u.blobs);
    let e = blobs
        .put(b, "../escape", b"x".to_vec(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::InvalidKey(_)), "{e}");
    let e = blobs
        .put("Not_A_Bucket", "k", b"x".to_vec(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::InvalidBucket(_)), "{e}");
    let e = blobs
        .put(b, "big", vec![0; MAX_OBJECT_BYTES + 1], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    let e = blobs
        .put(b, "k", b"x".to_vec(), Some("x".repeat(300)))
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::TooLarge(_)), "{e}");
    assert!(
        blobs.list(b, "", None, 10).await.unwrap().is_empty(),
        "nothing was stored"
    );
}

async fn a_conditional_replace_swaps_only_an_unchanged_object(u: Under) {
    let (b, blobs) = (&u.bucket, &u.blobs);
    let first = blobs.put(b, "k", b"one".to_vec(), None).await.unwrap();
    let swapped = blobs
        .replace_if(b, "k", b"two".to_vec(), None, first.meta.etag.clone())
        .await
        .unwrap()
        .expect("unchanged since it was read: replaced");
    assert_eq!(blobs.get(b, "k").await.unwrap().unwrap().1, b"two");
    // The first etag is stale now: nothing is written.
    let stale = blobs
        .replace_if(b, "k", b"three".to_vec(), None, first.meta.etag)
        .await
        .unwrap();
    assert!(stale.is_none());
    assert_eq!(blobs.get(b, "k").await.unwrap().unwrap().1, b"two");
    // Gone: nothing is written either.
    assert!(blobs.delete(b, "k").await.unwrap());
    let gone = blobs
        .replace_if(b, "k", b"four".to_vec(), None, swapped.meta.etag)
        .await
        .unwrap();
    assert!(gone.is_none());
    assert!(blobs.get(b, "k").await.unwrap().is_none());
}

macro_rules! suites {
    ($($backend:ident),*: $checks:tt) => {
        $( suites!(@one $backend $checks); )*
    };
    (@one $backend:ident [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::$backend("photos").await).await;
                }
            )*
        }
    };
}

suites!(embedded, s3: [
    an_object_round_trips_with_its_metadata,
    listings_page_in_key_order_under_a_prefix,
    a_delete_says_whether_there_was_an_object,
    what_no_backend_takes_is_refused_before_it_is_sent,
    a_conditional_replace_swaps_only_an_unchanged_object,
]);
