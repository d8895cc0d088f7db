use super::*;
use crate::dispatcher::events::Delivered;
use crate::exec::{Failure, Logs, Output};

fn info(n: u32, function: &str, trigger: TriggerKind) -> InvocationInfo {
    InvocationInfo {
        id: format!("inv-{n}"),
        function: function.into(),
        version: 1 + n % 2,
        trigger,
        attempt: 1,
        job_id: (trigger == TriggerKind::Job).then(|| format!("job-{n}")),
        delivered: (trigger == TriggerKind::Queue).then(|| Delivered {
            message_id: format!("m-{n}"),
            correlation_id: Some(format!("c-{n}")),
            enqueued_at_ms: 0,
        }),
        queued: Some(Duration::from_millis(u64::from(n))),
        trusted: false,
    }
}

fn outcome(failure: Option<Failure>, stdout: &str) -> Outcome {
    Outcome {
        result: match failure {
            None => Ok(Output {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            }),
            Some(f) => Err(f),
        },
        fuel_used: 1000,
        elapsed: Duration::from_micros(1500),
        peak_memory_bytes: 2 << 20,
        progress: None,
        logs: Logs {
            stdout: stdout.into(),
            stdout_dropped: 3,
            ..Logs::default()
        },
    }
}

fn open(dir: &Path) -> Arc<Records> {
    Records::open(dir, "host-a".into(), RecordsConfig::default()).unwrap()
}

fn newest(filter: Filter) -> Query {
    Query {
        filter,
        cursor: Cursor::Before(None),
        limit: 100,
        logs: false,
    }
}

#[tokio::test]
async fn records_keep_every_fact_of_an_ended_invocation_and_only_ended_ones() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    let queued = info(7, "orders", TriggerKind::Queue);
    records.on_event(&InvocationEvent::Started(&queued));
    records.on_event(&InvocationEvent::Ended(
        &queued,
        &outcome(
            Some(Failure::Fail("<b>no stock</b>".into())),
            "line 1\n<script>\n",
        ),
    ));
    records.flush().await;

    let mut query = newest(Filter::default());
    query.logs = true;
    let page = records.query(query).await.unwrap();
    assert_eq!(
        page.invocations.len(),
        1,
        "one record per invocation, at its end"
    );
    assert_eq!(page.next, None);
    let r = &page.invocations[0];
    assert_eq!(
        (r.id.as_str(), r.function.as_str(), r.version),
        ("inv-7", "orders", 2)
    );
    assert_eq!((r.trigger.as_str(), r.attempt), ("queue", 1));
    assert_eq!(r.message_id.as_deref(), Some("m-7"));
    assert_eq!(r.correlation_id.as_deref(), Some("c-7"));
    assert_eq!((r.host.as_str(), r.trusted), ("host-a", false));
    assert_eq!((r.queued_ms, r.duration_us, r.fuel), (Some(7), 1500, 1000));
    assert_eq!(r.peak_memory_bytes, 2 << 20);
    assert_eq!(r.outcome, "failed");
    assert!(r.reason.as_deref().unwrap().contains("<b>no stock</b>"));
    assert_eq!(r.status, None);
    assert_eq!((r.log_bytes, r.log_dropped_bytes), (16, 3));
    assert_eq!(r.logs.as_ref().unwrap().stdout, "line 1\n<script>\n");
    assert!(r.ended_at_ms >= crate::clock::now_ms() - 60_000);
}

#[tokio::test]
async fn filters_narrow_and_pages_walk_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    for n in 0..30 {
        let (function, trigger) = match n % 3 {
            0 => ("orders", TriggerKind::Queue),
            1 => ("hello", TriggerKind::Http),
            _ => ("report", TriggerKind::Job),
        };
        let failure = (n % 5 == 0).then(|| Failure::Retry("later".into()));
        records.on_event(&InvocationEvent::Ended(
            &info(n, function, trigger),
            &outcome(failure, ""),
        ));
    }
    records.flush().await;

    let ids = |page: &Page| {
        page.invocations
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>()
    };
    let of = |function: &str| Filter {
        function: Some(function.into()),
        ..Filter::default()
    };
    let orders = records.query(newest(of("orders"))).await.unwrap();
    assert_eq!(orders.invocations.len(), 10);
    assert_eq!(ids(&orders)[0], "inv-27", "newest first");
    assert!(orders.invocations.iter().all(|r| r.function == "orders"));

    let failed = Filter {
        outcome: OutcomeFilter::parse("unsuccessful"),
        ..Filter::default()
    };
    let failed = records.query(newest(failed)).await.unwrap();
    assert_eq!(
        ids(&failed),
        ["inv-25", "inv-20", "inv-15", "inv-10", "inv-5", "inv-0"]
    );
    let retried = Filter {
        outcome: OutcomeFilter::parse("retry"),
        function: Some("orders".into()),
        ..Filter::default()
    };
    assert_eq!(
        ids(&records.query(newest(retried)).await.unwrap()),
        ["inv-15", "inv-0"]
    );
    for (filter, want) in [
        (
            Filter {
                job_id: Some("job-14".into()),
                ..Filter::default()
            },
            "inv-14",
        ),
        (
            Filter {
                message_id: Some("m-12".into()),
                ..Filter::default()
            },
            "inv-12",
        ),
        (
            Filter {
                correlation_id: Some("c-9".into()),
                ..Filter::default()
            },
            "inv-9",
        ),
        (
            Filter {
                id: Some("inv-4".into()),
                ..Filter::default()
            },
            "inv-4",
        ),
    ] {
        assert_eq!(ids(&records.query(newest(filter)).await.unwrap()), [want]);
    }
    let http_v2 = Filter {
        trigger: Some(TriggerKind::Http),
        version: Some(2),
        ..Filter::default()
    };
    let http_v2 = records.query(newest(http_v2)).await.unwrap();
    assert_eq!(
        ids(&http_v2),
        ["inv-25", "inv-19", "inv-13", "inv-7", "inv-1"]
    );
    let future = Filter {
        since_ms: Some(crate::clock::now_ms() + 60_000),
        ..Filter::default()
    };
    assert!(
        records
            .query(newest(future))
            .await
            .unwrap()
            .invocations
            .is_empty()
    );
    let past = Filter {
        until_ms: Some(crate::clock::now_ms() - 60_000),
        ..Filter::default()
    };
    assert!(
        records
            .query(newest(past))
            .await
            .unwrap()
            .invocations
            .is_empty()
    );

    // Newest first, page by page, to the end: every record once.
    let mut seen = Vec::new();
    let mut cursor = Cursor::Before(None);
    loop {
        let page = records
            .query(Query {
                filter: Filter::default(),
                cursor,
                limit: 7,
                logs: false,
            })
            .await
            .unwrap();
        seen.extend(ids(&page));
        match page.next {
            Some(seq) => cursor = Cursor::Before(Some(seq)),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    assert_eq!(seen.first().unwrap(), "inv-29");
    assert_eq!(seen.last().unwrap(), "inv-0");
    // Oldest first after a point: what a follower sees.
    let all = records.query(newest(Filter::default())).await.unwrap();
    let tenth_newest = all.invocations[9].seq;
    let after = records
        .query(Query {
            filter: Filter::default(),
            cursor: Cursor::After(tenth_newest),
            limit: 100,
            logs: false,
        })
        .await
        .unwrap();
    assert_eq!(ids(&after).first().unwrap(), "inv-21");
    assert_eq!(ids(&after).len(), 9);
}

#[tokio::test]
async fn a_page_never_holds_more_than_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    for n in 0..(MAX_PAGE_WITH_LOGS as u32 + 5) {
        records.on_event(&InvocationEvent::Ended(
            &info(n, "hello", TriggerKind::Http),
            &outcome(None, "hi\n"),
        ));
    }
    records.flush().await;
    let page = records
        .query(Query {
            filter: Filter::default(),
            cursor: Cursor::Before(None),
            limit: usize::MAX,
            logs: true,
        })
        .await
        .unwrap();
    assert_eq!(page.invocations.len(), MAX_PAGE_WITH_LOGS);
    assert!(page.next.is_some());
    assert!(page.invocations.iter().all(|r| r.logs.is_some()));
}

#[tokio::test]
async fn a_trusted_functions_output_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    let mut vault = info(1, "vault", TriggerKind::Queue);
    vault.trusted = true;
    records.on_event(&InvocationEvent::Ended(
        &vault,
        &outcome(None, "ssn 123-45-6789\n"),
    ));
    records.flush().await;
    let mut query = newest(Filter::default());
    query.logs = true;
    let page = records.query(query).await.unwrap();
    let r = &page.invocations[0];
    assert!(r.trusted);
    assert_eq!(r.logs, None, "the figures are kept, the output is not");
    assert_eq!(r.log_bytes, 16);
    // Neither in the database nor in its write-ahead log.
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let stored = std::fs::read(file.unwrap().path()).unwrap();
        assert!(!stored.windows(11).any(|w| w == b"123-45-6789"));
    }
    // (The check can see it: the same output of a public function is there.)
    let mut public = info(2, "vault", TriggerKind::Queue);
    public.function = "open".into();
    records.on_event(&InvocationEvent::Ended(
        &public,
        &outcome(None, "ssn 123-45-6789\n"),
    ));
    records.flush().await;
    let found = std::fs::read_dir(dir.path()).unwrap().any(|file| {
        let stored = std::fs::read(file.unwrap().path()).unwrap();
        stored.windows(11).any(|w| w == b"123-45-6789")
    });
    assert!(found);
}

#[tokio::test]
async fn retention_bounds_records_and_logs_by_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    for n in 0..20 {
        records.on_event(&InvocationEvent::Ended(
            &info(n, "hello", TriggerKind::Http),
            &outcome(None, "out\n"),
        ));
    }
    records.flush().await;
    let path = dir.path().join("invocations.db");
    let (mut conn, _) = store::open_writer(&path, "host-a").unwrap();
    let config = RecordsConfig {
        max_age: Duration::from_secs(3600),
        max_records: 12,
        max_logs: 4,
    };
    store::prune(&mut conn, &config, 0).unwrap();
    let mut query = newest(Filter::default());
    query.logs = true;
    let page = records.query(query.clone()).await.unwrap();
    assert_eq!(page.invocations.len(), 12, "the newest 12 kept");
    assert_eq!(page.invocations[0].id, "inv-19");
    assert_eq!(page.invocations[11].id, "inv-8");
    let with_logs: Vec<_> = (page.invocations.iter())
        .filter(|r| r.logs.is_some())
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(with_logs, ["inv-19", "inv-18", "inv-17", "inv-16"]);

    // Everything ended before the cutoff goes, whatever the counts.
    store::prune(&mut conn, &config, crate::clock::now_ms() + 1).unwrap();
    assert!(records.query(query).await.unwrap().invocations.is_empty());
    let logs: i64 = conn
        .query_row("SELECT COUNT(*) FROM invocation_logs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logs, 0);
}

#[test]
fn outcome_filters_are_the_kinds_and_unsuccessful() {
    assert_eq!(
        OutcomeFilter::parse("trapped"),
        Some(OutcomeFilter::Is(OutcomeKind::Trapped))
    );
    assert_eq!(
        OutcomeFilter::parse("unsuccessful"),
        Some(OutcomeFilter::Unsuccessful)
    );
    assert_eq!(OutcomeFilter::parse("ok"), None);
}

#[tokio::test]
async fn time_bounds_find_their_records_though_time_is_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(dir.path());
    let path = dir.path().join("invocations.db");
    let (mut conn, host) = store::open_writer(&path, "host-a").unwrap();
    let one = |n: u64, ended_at_ms: u64| {
        let mut r = Record::of(
            &info(n as u32, "hello", TriggerKind::Http),
            &outcome(None, ""),
            "host-a",
        );
        r.ended_at_ms = ended_at_ms;
        r
    };
    // Written in the order they ended, but two that ended 3 ms apart
    // reached the writer the other way round.
    let mut batch: Vec<Record> = (0..1000).map(|n| one(n, 1_000_000 + n * 10)).collect();
    batch.swap(500, 501);
    store::insert(&mut conn, host, &batch).unwrap();

    let count = |filter: Filter| {
        let records = records.clone();
        async move {
            let mut seen = 0;
            let mut cursor = Cursor::Before(None);
            loop {
                let page = records
                    .query(Query {
                        filter: filter.clone(),
                        cursor,
                        limit: MAX_PAGE,
                        logs: false,
                    })
                    .await
                    .unwrap();
                seen += page.invocations.len();
                match page.next {
                    Some(seq) => cursor = Cursor::Before(Some(seq)),
                    None => return seen,
                }
            }
        }
    };
    let since = |ms| Filter {
        since_ms: Some(ms),
        ..Filter::default()
    };
    let until = |ms| Filter {
        until_ms: Some(ms),
        ..Filter::default()
    };
    assert_eq!(count(since(1_005_000)).await, 500);
    assert_eq!(
        count(since(1_005_010)).await,
        499,
        "the swapped pair is found"
    );
    assert_eq!(count(since(1_005_001)).await, 499);
    assert_eq!(count(until(1_005_010)).await, 501);
    assert_eq!(count(until(1_000_000)).await, 0);
    assert_eq!(count(since(0)).await, 1000);
    assert_eq!(count(since(2_000_000)).await, 0);
    let window = Filter {
        since_ms: Some(1_002_000),
        until_ms: Some(1_003_000),
        ..Filter::default()
    };
    assert_eq!(count(window).await, 100);

    // Pruning by age deletes what ended before the cutoff.
    let config = RecordsConfig::default();
    store::prune(&mut conn, &config, 1_009_000).unwrap();
    assert_eq!(count(Filter::default()).await, 100);
}
