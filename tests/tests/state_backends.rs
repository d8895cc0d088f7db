//! One suite of checks for every `StateStore`: the embedded one, and S3 on
//! a local moto server. Conditional writes are what a fleet relies on: of
//! two writers racing on one version, exactly one wins.

use fnhost::backends::embedded::EmbeddedState;
use fnhost::backends::s3state::S3State;
use fnhost::state::{Listed, StateError, StateStore, Write};
use std::sync::Arc;

struct Under {
    store: Arc<dyn StateStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded() -> Under {
    let dir = tempfile::tempdir().unwrap();
    Under {
        store: Arc::new(EmbeddedState::open(dir.path()).unwrap()),
        _dir: Some(dir),
    }
}

async fn s3() -> Under {
    let moto = tokio::task::spawn_blocking(fnhost_tests::moto)
        .await
        .unwrap();
    let store = S3State::connect(
        fnhost::backends::aws::Target {
            region: Some("us-east-1".into()),
            endpoint: Some(moto.endpoint.clone()),
            keys: Some(("testing".into(), "testing".into())),
        },
        "fnhost-state-tests".into(),
        format!("run-{}/", uuid::Uuid::now_v7()),
    )
    .await
    .unwrap();
    store.create_bucket().await.unwrap();
    store.check().await.unwrap();
    Under {
        store: Arc::new(store),
        _dir: None,
    }
}

async fn documents_are_written_read_listed_and_deleted(u: Under) {
    let s = &u.store;
    assert!(s.get("jobs/a.json").await.unwrap().is_none());
    let v1 = s
        .put("jobs/a.json", b"one".to_vec(), Write::Create)
        .await
        .unwrap();
    let got = s.get("jobs/a.json").await.unwrap().unwrap();
    assert_eq!(
        (got.bytes.as_slice(), got.version.as_str()),
        (&b"one"[..], v1.as_str())
    );
    s.put("jobs/b.json", b"two".to_vec(), Write::Overwrite)
        .await
        .unwrap();
    s.put("other/c.json", b"3".to_vec(), Write::Overwrite)
        .await
        .unwrap();
    let keys = |l: Vec<Listed>| l.into_iter().map(|l| l.key).collect::<Vec<_>>();
    let listed = s.list("jobs/", None, 10).await.unwrap();
    assert_eq!(keys(listed.clone()), ["jobs/a.json", "jobs/b.json"]);
    assert_eq!(
        keys(
            s.list("jobs/", Some("jobs/a.json".into()), 10)
                .await
                .unwrap()
        ),
        ["jobs/b.json"]
    );
    // A listing tells what changed since the last one.
    s.put("jobs/b.json", b"two, again".to_vec(), Write::Overwrite)
        .await
        .unwrap();
    let again = s.list("jobs/", None, 10).await.unwrap();
    assert_eq!(again[0], listed[0]);
    assert_ne!(again[1].version, listed[1].version);
    assert!(s.delete("jobs/a.json").await.unwrap());
    assert!(s.get("jobs/a.json").await.unwrap().is_none());
}

async fn a_write_on_a_stale_version_or_an_existing_key_conflicts(u: Under) {
    let s = &u.store;
    let v1 = s.put("k.json", b"1".to_vec(), Write::Create).await.unwrap();
    assert!(matches!(
        s.put("k.json", b"again".to_vec(), Write::Create).await,
        Err(StateError::Conflict(_))
    ));
    let v2 = s
        .put("k.json", b"2".to_vec(), Write::Replace(v1.clone()))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        s.put("k.json", b"lost".to_vec(), Write::Replace(v1)).await,
        Err(StateError::Conflict(_))
    ));
    assert_eq!(s.get("k.json").await.unwrap().unwrap().bytes, b"2");
}

/// Each writer writes different bytes: on S3 a version is the ETag, the
/// MD5 of the content, so a writer that wrote back the very bytes it read
/// would leave the version as it was (and a second writer would match it).
async fn of_racing_writers_on_one_version_exactly_one_wins(u: Under) {
    let s = u.store.clone();
    let v = s
        .put("race.json", b"0".to_vec(), Write::Create)
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (s, v) = (s.clone(), v.clone());
            tokio::spawn(async move {
                s.put(
                    "race.json",
                    format!("writer {i}").into_bytes(),
                    Write::Replace(v),
                )
                .await
            })
        })
        .collect();
    let mut won = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(_) => won += 1,
            Err(StateError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
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
                    super::$check(super::$backend().await).await;
                }
            )*
        }
    };
}

suites!(embedded, s3: [
    documents_are_written_read_listed_and_deleted,
    a_write_on_a_stale_version_or_an_existing_key_conflicts,
    of_racing_writers_on_one_version_exactly_one_wins,
]);
