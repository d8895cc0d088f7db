//! Message groups on an SQS FIFO queue (a local moto server) with three
//! hosts competing for it: the messages of a group run one at a time, in
//! the order they were sent, whichever host takes them (one stops
//! mid-group); a message that asks for a retry holds its group until it
//! succeeds.

#[path = "support/fleet.rs"]
mod support;

use fnhost_tests::{Host, guests};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::Fleet;

/// Each host leases up to three messages at a time, so one receive hands a
/// host several messages of a group; a retry waits a second.
const WORKER: &str = "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nvisibility_timeout = \"20s\"\nmin_concurrency = 3\nmax_concurrency = 3\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\"\n";

/// Messages per group.
const LENGTH: usize = 5;

/// One attempt of a message, as the guest printed it.
#[derive(Debug, Clone)]
struct Run {
    /// The message's place in its group, in send order.
    index: usize,
    /// It succeeded (`processed`) rather than asked for a retry.
    processed: bool,
    attempt: u64,
    start_ms: u64,
    end_ms: u64,
    host: usize,
}

/// The body of message `index` of `group`: the flaky one fails the first
/// time it runs.
fn body(group: &str, index: usize, flaky: Option<usize>) -> String {
    let kind = if flaky == Some(index) {
        "flaky"
    } else {
        "ordered"
    };
    format!("{kind}-note-{group}-{index}")
}

/// Every attempt in the hosts' logs, by group.
fn runs(hosts: &[Host]) -> BTreeMap<String, Vec<Run>> {
    let mut out: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for (host, h) in hosts.iter().enumerate() {
        for line in h.log().lines() {
            let (processed, rest) =
                match (line.split_once("processed "), line.split_once("retrying ")) {
                    (Some((_, rest)), _) => (true, rest),
                    (None, Some((_, rest))) => (false, rest),
                    _ => continue,
                };
            // `<kind>-note-<group>-<index> attempt <n> from <ms> to <ms>`
            let words: Vec<&str> = rest.split_whitespace().collect();
            let [mode, "attempt", attempt, "from", start, "to", end, ..] = words[..] else {
                continue;
            };
            let Some((group, index)) = mode
                .split_once("-note-")
                .and_then(|(_, tail)| tail.rsplit_once('-'))
            else {
                continue;
            };
            out.entry(group.to_string()).or_default().push(Run {
                index: index.parse().unwrap(),
                processed,
                attempt: attempt.parse().unwrap(),
                start_ms: start.parse().unwrap(),
                end_ms: end.trim_end_matches('"').parse().unwrap(),
                host,
            });
        }
    }
    for runs in out.values_mut() {
        runs.sort_by_key(|r| (r.start_ms, r.end_ms));
    }
    out
}

/// Send `groups` through the admin API, each message with its group, all
/// in one request (sent in order).
fn send_with_the_api(host: &Host, groups: &[(&str, Option<usize>)]) {
    let messages: Vec<_> = groups
        .iter()
        .flat_map(|(g, flaky)| {
            (0..LENGTH).map(move |i| json!({ "body": body(g, i, *flaky), "group": g }))
        })
        .collect();
    let r = host.admin(
        "POST",
        "/v1/queues/work/messages",
        json!({ "messages": messages }).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Send `groups` as any SQS producer would (the AWS SDK, a group id and a
/// dedup id of its own), their messages interleaved, one at a time.
fn send_with_the_sdk(fleet: &Fleet, groups: &[(&str, Option<usize>)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (sqs, url) = fleet.sqs("work.fifo").await;
        for i in 0..LENGTH {
            for (g, flaky) in groups {
                let body = body(g, i, *flaky);
                sqs.send_message()
                    .queue_url(&url)
                    .message_group_id(*g)
                    .message_deduplication_id(&body)
                    .message_body(&body)
                    .send()
                    .await
                    .unwrap();
            }
        }
    });
}

#[test]
fn a_groups_messages_run_one_at_a_time_in_order_across_hosts_and_retries() {
    let g = guests();
    let mut fleet = Fleet::new("fifo");
    fleet.queues = "fifo = [\"work\"]\n".into();
    let hosts: Vec<Host> = (0..3).map(|_| fleet.start(&[])).collect();

    // Six groups of five, sent before any host takes from the queue: moto
    // hands a group to a second consumer whose long poll began before the
    // group's messages arrived (it takes the groups in flight when a wait
    // starts), which SQS does not. Two groups go through the API, one whose
    // first message fails once (the head of a receive) and one whose
    // second does (behind one that succeeded); two without a failure; two
    // sent by another SQS client, interleaved, one with its first message
    // flaky.
    let api = [("ga", Some(0)), ("gb", Some(1)), ("gc", None), ("gd", None)];
    send_with_the_api(&hosts[0], &api);
    let sdk = [("ge", Some(0)), ("gf", None)];
    send_with_the_sdk(&fleet, &sdk);
    let flaky: BTreeMap<String, Option<usize>> = api
        .iter()
        .chain(&sdk)
        .map(|(g, f)| (g.to_string(), *f))
        .collect();

    // Deployed on one host, the others follow within seconds and compete.
    // Once host 0 has run part of a group (at most three of its five; it
    // may finish the one running), it stops: the rest of that group runs
    // on the others, after what it ran.
    hosts[0].deploy_ok(WORKER, &g.adversary);
    let moved = hosts[0].wait_for(60, "host 0 to run part of a group", |_| {
        let all = runs(&hosts);
        let ran = |runs: &Vec<Run>| runs.iter().filter(|r| r.processed && r.host == 0).count();
        if all.values().map(ran).sum::<usize>() < 4 {
            return None;
        }
        let (group, _) = all.iter().find(|(_, runs)| (1..=3).contains(&ran(runs)))?;
        Some(group.clone())
    });
    hosts[0].term();

    let deadline = Instant::now() + Duration::from_secs(150);
    let all = loop {
        let all = runs(&hosts);
        let done = |g: &String| {
            all.get(g)
                .map_or(0, |runs| runs.iter().filter(|r| r.processed).count())
        };
        if flaky.keys().all(|g| done(g) >= LENGTH) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was processed within 150 s: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    for (group, runs) in &all {
        // By start time across the three hosts (one clock: one machine),
        // each attempt began after the one before it had ended...
        for pair in runs.windows(2) {
            assert!(
                pair[1].start_ms >= pair[0].end_ms,
                "two messages of group {group} ran at once: {:?} and {:?} (all: {runs:?})",
                pair[0],
                pair[1]
            );
        }
        // ...in send order, each message processed once, the flaky one
        // retried before anything behind it ran.
        let order: Vec<(usize, bool)> = runs.iter().map(|r| (r.index, r.processed)).collect();
        let mut want: Vec<(usize, bool)> = (0..LENGTH).map(|i| (i, true)).collect();
        if let Some(f) = flaky[group] {
            want.insert(f, (f, false));
        }
        assert_eq!(order, want, "group {group} ran out of order: {runs:?}");
        if let Some(f) = flaky[group] {
            let failed = &runs[f];
            let succeeded = &runs[f + 1];
            assert!(succeeded.attempt > failed.attempt, "{runs:?}");
            // The retry held the group: the message behind it ran only
            // after it succeeded.
            assert!(
                runs[f + 2].start_ms >= succeeded.end_ms,
                "group {group} did not wait for its retry: {runs:?}"
            );
        }
    }
    let hosts_used: std::collections::BTreeSet<usize> =
        all[&moved].iter().map(|r| r.host).collect();
    assert!(
        hosts_used.len() >= 2,
        "group {moved} moved on from host 0: {:?}",
        all[&moved]
    );
}
