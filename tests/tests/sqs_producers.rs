//! The fleet's SQS queues as AWS users meet them, with a producer and a
//! consumer nobody here wrote (the AWS SDK, as boto3 or the CLI would be):
//! a producer's message at SQS's size limit is dead-lettered within its
//! attempts, a producer's attributes of every type reach the function and
//! stay on its dead letter (a name fnhost reserves namespaced, never
//! fatal), and what fnhost sends reads as plain SQS: the body the sender's
//! bytes, attributes as attributes, the group and dedup id as given.

#[path = "support/fleet.rs"]
mod support;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use fnhost_tests::guests;
use serde_json::{Value, json};
use std::collections::HashMap;
use support::{Fleet, moto_target};

/// SQS's largest message, body and attributes together.
const SQS_LIMIT: usize = 262_144;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// An SQS client of the test's own, on the moto server.
fn client(rt: &tokio::runtime::Runtime) -> aws_sdk_sqs::Client {
    let sdk = rt
        .block_on(fnhost::backends::aws::sdk_config(moto_target(), "test"))
        .unwrap();
    aws_sdk_sqs::Client::new(&sdk)
}

/// The URL of the fleet's queue `queue` (`<fleet>-<queue>`), made if it is
/// not there yet.
fn url(rt: &tokio::runtime::Runtime, sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    let out = rt
        .block_on(sqs.create_queue().queue_name(name).send())
        .unwrap();
    out.queue_url().unwrap().to_string()
}

fn string(value: &str) -> MessageAttributeValue {
    typed("String", value)
}

fn typed(data_type: &str, value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .unwrap()
}

/// Everything on a queue now, received with every attribute.
fn drain(
    rt: &tokio::runtime::Runtime,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    want: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got = Vec::new();
    for _ in 0..30 {
        let out = rt
            .block_on(
                sqs.receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send(),
            )
            .unwrap();
        got.extend(out.messages().iter().cloned());
        if got.len() >= want {
            break;
        }
    }
    got
}

fn dead_letters(host: &fnhost_tests::Host, queue: &str) -> Vec<Value> {
    let v = host
        .admin("GET", &format!("/v1/queues/{queue}/dead-letters"), "")
        .json();
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_producers_message_at_sqs_size_limit_is_dead_lettered_within_its_attempts() {
    let mut fleet = Fleet::new("sqs-limit");
    let host = fleet.start(&[]);
    host.deploy_ok(
        "name = \"poison\"\n[[triggers.queue]]\nqueue = \"orders\"\nmax_attempts = 2\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"\nvisibility_timeout = \"10s\"\n",
        &guests().adversary,
    );
    let rt = runtime();
    let sqs = client(&rt);
    let queue = url(&rt, &sqs, &format!("{}-orders", fleet.name));
    // Each asks to be retried, every time ("retry", then spaces).
    let padded = |len: usize| format!("retry{}", " ".repeat(len - 5));
    let send = |body: String, attributes: Vec<(String, MessageAttributeValue)>| {
        let mut send = sqs.send_message().queue_url(&queue).message_body(body);
        for (name, value) in attributes {
            send = send.message_attributes(name, value);
        }
        rt.block_on(send.send()).unwrap();
    };
    // At SQS's limit: no room at all for a reason beside it.
    send(padded(SQS_LIMIT), Vec::new());
    // At the limit less what fnhost adds to its own messages: room for
    // only part of a reason.
    send(padded(SQS_LIMIT - 200), Vec::new());
    // With SQS's ten attributes: no room for an eleventh.
    let ten: Vec<(String, MessageAttributeValue)> = (0..10)
        .map(|i| (format!("a{i}"), string(&format!("v{i}"))))
        .collect();
    send("retry".into(), ten);
    let dead = host.wait_for(120, "three dead letters", |h| {
        let dead = dead_letters(h, "orders");
        (dead.len() == 3).then_some(dead)
    });
    for d in &dead {
        let error = d["error"].as_str().unwrap();
        assert!(error.starts_with("gave up after 2 attempts"), "{d:#}");
        assert_eq!(d["attempts"], 2, "{d:#}");
    }
    let mut sizes: Vec<u64> = dead
        .iter()
        .map(|d| d["message"]["body"].as_str().unwrap().len() as u64)
        .collect();
    sizes.sort();
    assert_eq!(sizes, [5, (SQS_LIMIT - 200) as u64, SQS_LIMIT as u64]);
    // Nothing is left to come back, and none ran past its attempts.
    let stats = host.admin("GET", "/v1/queues/orders", "").json();
    assert_eq!(
        (stats["ready"].as_u64(), stats["delayed"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    let log = host.log();
    assert!(!log.contains("cannot settle a message"), "{log}");
    // An SQS consumer of the dead letters reads each as it was sent: the
    // whole body, the ten attributes.
    let dlq = url(&rt, &sqs, &format!("{}-orders__dlq", fleet.name));
    let got = drain(&rt, &sqs, &dlq, 3);
    assert_eq!(got.len(), 3);
    let tenth = got.iter().find(|m| m.body() == Some("retry")).unwrap();
    let attributes = tenth.message_attributes().unwrap();
    assert_eq!(attributes["a9"].string_value(), Some("v9"));
    assert!(got.iter().any(|m| m.body().unwrap().len() == SQS_LIMIT));
}

#[test]
fn a_producers_attributes_of_every_type_reach_the_function_and_stay_on_its_dead_letter() {
    let mut fleet = Fleet::new("sqs-attrs");
    let host = fleet.start(&[]);
    host.deploy_ok(
        "name = \"show\"\n[[triggers.queue]]\nqueue = \"inbox\"\nbackoff_initial = \"100ms\"\n",
        &guests().adversary,
    );
    let rt = runtime();
    let sqs = client(&rt);
    let queue = url(&rt, &sqs, &format!("{}-inbox", fleet.name));
    let send = |body: &str| {
        let send = sqs
            .send_message()
            .queue_url(&queue)
            .message_body(body)
            .message_attributes("tenant", string("acme"))
            .message_attributes("count", typed("Number.int", "42"))
            .message_attributes("kind", typed("String.note", "x"))
            .message_attributes(
                "blob",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(vec![0u8, 1, 255]))
                    .build()
                    .unwrap(),
            )
            // Names fnhost reserves or once used: never fatal.
            .message_attributes("fnhost-status", string("forged"))
            .message_attributes("fnhost", string("mine"));
        rt.block_on(send.send()).unwrap();
    };
    send("attrs-show");
    let want = "attributes blob=AAH/;count=42;fnhost=mine;kind=x;producer.fnhost-status=forged;tenant=acme";
    host.wait_for(60, "the function to show the attributes", |h| {
        h.log().contains(want).then_some(())
    });
    // A failure: its dead letter keeps them, types and all.
    send("attrs-show-fail");
    let dead = host.wait_for(60, "the dead letter", |h| {
        let dead = dead_letters(h, "inbox");
        (!dead.is_empty()).then_some(dead)
    });
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail after showing the attributes"),
        "{dead:#?}"
    );
    let dlq = url(&rt, &sqs, &format!("{}-inbox__dlq", fleet.name));
    let got = drain(&rt, &sqs, &dlq, 1);
    let attributes = got[0].message_attributes().unwrap();
    assert_eq!(attributes["count"].data_type(), "Number.int");
    assert_eq!(attributes["kind"].data_type(), "String.note");
    assert_eq!(
        attributes["blob"]
            .binary_value()
            .map(|b| b.as_ref().to_vec()),
        Some(vec![0u8, 1, 255])
    );
    assert_eq!(attributes["fnhost-status"].string_value(), Some("forged"));
    let meta: Value =
        serde_json::from_str(attributes["fnhost-meta"].string_value().unwrap()).unwrap();
    assert_eq!(meta["function"], "show@v1");
    assert!(meta["error"].as_str().unwrap().contains("asked to fail"));
    assert_eq!(got[0].body(), Some("attrs-show-fail"));
}

#[test]
fn what_fnhost_sends_reads_as_plain_sqs_to_any_consumer() {
    let mut fleet = Fleet::new("sqs-plain");
    fleet.queues = "fifo = [\"ordered\"]\n".into();
    let host = fleet.start(&[]);
    let rt = runtime();
    let sqs = client(&rt);
    let send = |queue: &str, body: Value| {
        let r = host.admin(
            "POST",
            &format!("/v1/queues/{queue}/messages"),
            body.to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    };
    send(
        "plain",
        json!({ "body": "hello", "attributes": { "tenant": "acme" }, "correlation_id": "c-9" }),
    );
    send("plain", json!({ "body": "a\u{1}b" }));
    send(
        "ordered",
        json!({ "body": "first", "group": "customer-7", "dedup_id": "order-7" }),
    );
    let plain = url(&rt, &sqs, &format!("{}-plain", fleet.name));
    let got = drain(&rt, &sqs, &plain, 2);
    assert_eq!(got.len(), 2);
    let by_body: HashMap<&str, &aws_sdk_sqs::types::Message> =
        got.iter().map(|m| (m.body().unwrap(), m)).collect();
    // Text as it was sent; attributes as attributes; fnhost's own in
    // fnhost-meta.
    let hello = by_body["hello"];
    let attributes = hello.message_attributes().unwrap();
    assert_eq!(attributes["tenant"].string_value(), Some("acme"));
    assert_eq!(attributes["tenant"].data_type(), "String");
    let meta: Value =
        serde_json::from_str(attributes["fnhost-meta"].string_value().unwrap()).unwrap();
    assert_eq!(meta["correlation_id"], "c-9");
    assert!(!attributes.contains_key("fnhost-encoding"));
    // Bytes SQS cannot carry as text: base64, and an attribute that says so.
    let binary = got.iter().find(|m| m.body() != Some("hello")).unwrap();
    assert_eq!(binary.body(), Some("YQFi"));
    assert_eq!(
        binary.message_attributes().unwrap()["fnhost-encoding"].string_value(),
        Some("base64")
    );
    // On a FIFO queue, the group and the dedup id the sender gave.
    let ordered = rt
        .block_on(
            sqs.get_queue_url()
                .queue_name(format!("{}-ordered.fifo", fleet.name))
                .send(),
        )
        .unwrap();
    let got = drain(&rt, &sqs, ordered.queue_url().unwrap(), 1);
    let system = got[0].attributes().unwrap();
    assert_eq!(
        system[&MessageSystemAttributeName::MessageGroupId],
        "customer-7"
    );
    assert_eq!(
        system[&MessageSystemAttributeName::MessageDeduplicationId],
        "order-7"
    );
    assert_eq!(got[0].body(), Some("first"));
    // A send SQS could not carry is refused whole, naming the limit.
    let attributes: serde_json::Map<String, Value> =
        (0..9).map(|i| (format!("a{i}"), json!("v"))).collect();
    let r = host.admin(
        "POST",
        "/v1/queues/plain/messages",
        json!({ "body": "x", "attributes": attributes }).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("send at most 8"), "{}", r.text());
}

#[test]
fn messages_sent_right_after_a_deploy_are_all_processed_whichever_host_is_behind() {
    let mut fleet = Fleet::new("sqs-race");
    let hosts: Vec<fnhost_tests::Host> = (0..3).map(|_| fleet.start(&[])).collect();
    let rt = runtime();
    let sqs = client(&rt);
    let queue = url(&rt, &sqs, &format!("{}-work", fleet.name));
    // A deploy on one host, and at once 20 messages from a producer:
    // the other hosts learn of the binding only later.
    hosts[0].deploy_ok(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\n",
        &guests().adversary,
    );
    for i in 0..20 {
        rt.block_on(
            sqs.send_message()
                .queue_url(&queue)
                .message_body(format!("note-{i}"))
                .send(),
        )
        .unwrap();
    }
    let processed = |h: &fnhost_tests::Host| -> Vec<String> {
        h.log()
            .lines()
            .filter_map(|l| l.split("processed ").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let all = hosts[0].wait_for(120, "every message processed", |_| {
        let mut all: Vec<String> = hosts.iter().flat_map(processed).collect();
        all.sort();
        all.dedup();
        (all.len() == 20).then_some(all)
    });
    assert_eq!(all.len(), 20);
    assert!(dead_letters(&hosts[0], "work").is_empty());
}
