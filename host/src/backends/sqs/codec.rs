//! fnhost messages as SQS messages and back, in a form any SQS consumer
//! reads (a Lambda, boto3, the console), and any producer's message read
//! in full:
//!
//! - **The body is the sender's bytes**, as text when they are text SQS
//!   takes (XML 1.0 characters); otherwise base64, with the attribute
//!   `fnhost-encoding` = `base64` saying so.
//! - **A sender's attributes are SQS message attributes** of type
//!   `String`, by the same names. Received, a producer's attributes of any
//!   type reach the function: `String` and `Number` (and their custom
//!   types, `Number.int`) as their text, `Binary` as base64. A producer's
//!   attribute whose name fnhost reserves (`fnhost-…`) is delivered as
//!   `producer.<name>`, never taken for the host's.
//! - **fnhost's own bookkeeping** travels as JSON in one attribute,
//!   `fnhost-meta` ([`Meta`]: when it was first sent, correlation id, reply
//!   queue, the sender's dedup id and group, a due time past the 15
//!   minutes SQS can delay, the host's own `fnhost-…` attributes, and on a
//!   dead letter its reason, function, attempts and first id).
//! - SQS carries at most 10 attributes a message and 256 KiB in all
//!   (body, names, types, values): fnhost's take at most two of the ten,
//!   so a sender may set at most [`MAX_USER_ATTRIBUTES`].
//!
//! Messages sent by earlier releases (everything in one JSON attribute,
//! `fnhost`) are still read. Knows nothing of receipts or leases.

use crate::queue::{DeadLetter, Message, NewMessage, QueueError};
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The attribute that holds fnhost's bookkeeping of a message, as JSON.
pub(super) const META: &str = "fnhost-meta";
/// The attribute that says how the body is encoded when it is not the
/// sender's bytes as text (`base64`).
pub(super) const ENCODING: &str = "fnhost-encoding";
/// The one attribute of earlier releases (read only).
const LEGACY_META: &str = "fnhost";
/// The prefix a producer's attribute gets when fnhost reserves its name.
pub const PRODUCER_PREFIX: &str = "producer.";
/// The most message attributes SQS carries on one message.
pub(super) const MAX_SQS_ATTRIBUTES: usize = 10;
/// The most attributes a sender may set on a message of an SQS queue:
/// SQS's ten, less fnhost's own two.
pub const MAX_USER_ATTRIBUTES: usize = MAX_SQS_ATTRIBUTES - 2;

/// A message's attributes as SQS keeps them.
pub(super) type Attributes = HashMap<String, MessageAttributeValue>;

/// What fnhost keeps about a message beside its body and its sender's
/// attributes (the `fnhost-meta` attribute).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    /// When it was first sent, ms since the epoch (kept across holds and
    /// dead letters).
    pub sent_at_ms: u64,
    /// Its correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Its reply queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Its dedup id, as the sender gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// Its group, as the sender gave it, when SQS carries it hashed (a
    /// group SQS does not take as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Not to be delivered before this (a delay longer than SQS's 15
    /// minutes: the message is held, see `SqsQueues::hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// The host's own attributes (`fnhost-status` on a reply, …): kept
    /// here, so that no producer's attribute is taken for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_attributes: Vec<(String, String)>,
    /// For a dead letter: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a dead letter: which function gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// For a dead letter: the attempts made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// For a dead letter: its id on the queue it died on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
}

/// The one attribute of earlier releases: the sender's attributes and the
/// body's encoding were in it too.
#[derive(Deserialize)]
struct LegacyMeta {
    #[serde(default)]
    attributes: Vec<(String, String)>,
    #[serde(default)]
    base64: bool,
    #[serde(flatten)]
    meta: Meta,
}

/// Can SQS carry this text as a body? (XML 1.0 characters only.)
fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    })
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// The body as SQS text, and whether it is base64.
pub(super) fn encode_body(body: &[u8]) -> (String, bool) {
    match std::str::from_utf8(body) {
        Ok(text) if sqs_text(text) => (text.to_string(), false),
        _ => (b64().encode(body), true),
    }
}

/// A `String` message attribute.
pub(super) fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("a data type is set")
}

/// The size SQS counts a message at: its body and, for each attribute,
/// its name, data type and value.
pub(super) fn sqs_size(body: &str, attributes: &Attributes) -> usize {
    body.len()
        + (attributes.iter())
            .map(|(name, v)| {
                name.len()
                    + v.data_type().len()
                    + v.string_value().map_or(0, str::len)
                    + v.binary_value().map_or(0, |b| b.as_ref().len())
            })
            .sum::<usize>()
}

/// May SQS carry `id` as a FIFO group or dedup id as it is? (1 to 128
/// alphanumeric or punctuation characters.)
pub(super) fn sqs_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Refuse what SQS cannot carry of a sender's attributes: more than
/// [`MAX_USER_ATTRIBUTES`], a name SQS refuses, an empty value.
pub(super) fn check_attributes(queue: &str, msg: &NewMessage) -> Result<(), QueueError> {
    let invalid = |m: String| Err(QueueError::Invalid(m));
    let user = (msg.attributes.iter())
        .filter(|(n, _)| !n.starts_with(crate::queue::RESERVED_ATTRIBUTE_PREFIX))
        .count();
    if user > MAX_USER_ATTRIBUTES {
        return invalid(format!(
            "the message has {user} attributes; queue {} is on SQS, which carries {MAX_SQS_ATTRIBUTES} a message, two of them fnhost's: send at most {MAX_USER_ATTRIBUTES}",
            crate::text::quote(queue)
        ));
    }
    for (name, value) in &msg.attributes {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("aws.")
            || lower.starts_with("amazon.")
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains("..")
        {
            return invalid(format!(
                "attribute name {} is one SQS refuses (it may not start with \"AWS.\" or \"Amazon.\", start or end with '.', or hold \"..\"); rename it",
                crate::text::quote(name)
            ));
        }
        if value.is_empty() {
            return invalid(format!(
                "attribute {} is empty, and SQS carries no empty attribute value; send a value or leave it out",
                crate::text::quote(name)
            ));
        }
    }
    Ok(())
}

/// An SQS message as fnhost sends it: the body and the attributes.
pub(super) struct Outgoing {
    pub body: String,
    pub attributes: Attributes,
}

/// `msg` as an SQS message, with `meta` beside it (the host's own
/// attributes of `msg` go into it).
pub(super) fn outgoing(msg: &NewMessage, mut meta: Meta) -> Outgoing {
    let (body, base64) = encode_body(&msg.body);
    let mut attributes = Attributes::new();
    for (name, value) in &msg.attributes {
        if name.starts_with(crate::queue::RESERVED_ATTRIBUTE_PREFIX) {
            meta.host_attributes.push((name.clone(), value.clone()));
        } else {
            attributes.insert(name.clone(), string(value));
        }
    }
    if base64 {
        attributes.insert(ENCODING.into(), string("base64"));
    }
    attributes.insert(META.into(), meta_attribute(&meta));
    Outgoing { body, attributes }
}

/// `meta` as the `fnhost-meta` attribute.
pub(super) fn meta_attribute(meta: &Meta) -> MessageAttributeValue {
    string(&serde_json::to_string(meta).expect("metadata serializes"))
}

/// The metadata of `msg`, about to be sent at `now`.
pub(super) fn meta_of(msg: &NewMessage, now: u64, due_ms: Option<u64>) -> Meta {
    Meta {
        correlation_id: msg.correlation_id.clone(),
        reply_to: msg.reply_to.clone(),
        dedup_id: msg.dedup_id.clone(),
        sent_at_ms: now,
        due_ms,
        ..Meta::default()
    }
}

/// What an SQS message was, as fnhost's message.
#[derive(Clone)]
pub(super) struct Received {
    pub message: Message,
    pub meta: Meta,
    /// The body as SQS carried it.
    pub body: String,
    /// The attributes as SQS carried them, but for `fnhost-meta`: sent on
    /// as they are (to the dead letters, back from them).
    pub attributes: Attributes,
    /// Its `fnhost-meta` attribute as SQS carried it.
    pub raw_meta: Option<MessageAttributeValue>,
    /// Its FIFO group as SQS carried it.
    pub sqs_group: Option<String>,
    /// A checkpoint of this message is stored (read at this delivery or
    /// saved during it), to remove when the message is done with.
    pub checkpointed: bool,
}

/// An attribute's value as a function gets it: text as it is, binary as
/// base64.
fn attribute_text(v: &MessageAttributeValue) -> String {
    match (v.string_value(), v.binary_value()) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => b64().encode(b.as_ref()),
        (None, None) => String::new(),
    }
}

/// Build fnhost's message from an SQS one received from `queue`. Nothing
/// a producer can put in a message makes it unreadable: metadata that does
/// not read, or an encoding that does not decode, is a producer's
/// attribute, delivered under [`PRODUCER_PREFIX`] (and logged).
pub(super) fn decode(queue: &str, m: &aws_sdk_sqs::types::Message, visible_at_ms: u64) -> Received {
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let mut attributes: Attributes = m.message_attributes().cloned().unwrap_or_default();
    let id = m.message_id().unwrap_or_default();
    let text = m.body().unwrap_or("").to_string();
    let mut producers: Vec<(String, String)> = Vec::new();
    let mut meta = Meta::default();
    let mut base64 = false;
    let mut raw_meta = None;
    // fnhost's own, if it reads as such.
    if let Some(v) = attributes.remove(META) {
        match v.string_value().map(serde_json::from_str::<Meta>) {
            Some(Ok(m)) => {
                meta = m;
                raw_meta = Some(v);
            }
            _ => {
                tracing::warn!(queue = %queue, message = %id, "the message's fnhost-meta attribute is not fnhost's; delivered as a producer's attribute");
                attributes.insert(META.into(), v);
            }
        }
    } else if let Some(legacy) = (attributes.get(LEGACY_META))
        .and_then(|v| v.string_value())
        .and_then(|json| serde_json::from_str::<LegacyMeta>(json).ok())
    {
        attributes.remove(LEGACY_META);
        meta = legacy.meta;
        base64 = legacy.base64;
        producers = legacy.attributes;
    }
    if let Some(v) = attributes.get(ENCODING)
        && v.string_value() == Some("base64")
    {
        base64 = true;
    }
    let body = match base64 {
        true => match b64().decode(&text) {
            Ok(bytes) => {
                attributes.remove(ENCODING);
                bytes
            }
            Err(e) => {
                tracing::warn!(queue = %queue, message = %id, error = %e, "the message says its body is base64, but it does not decode; delivered as it came");
                text.as_bytes().to_vec()
            }
        },
        false => text.as_bytes().to_vec(),
    };
    // The sender's attributes, then the host's own (from the metadata).
    let mut names: Vec<&String> = attributes.keys().collect();
    names.sort();
    for name in names {
        let value = attribute_text(&attributes[name]);
        let name = if name.starts_with(crate::queue::RESERVED_ATTRIBUTE_PREFIX) {
            format!("{PRODUCER_PREFIX}{name}")
        } else {
            name.clone()
        };
        producers.push((name, value));
    }
    producers.extend(meta.host_attributes.iter().cloned());
    let system = |name: A| m.attributes().and_then(|a| a.get(&name)).cloned();
    let sent_at = system(A::SentTimestamp)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let message = Message {
        id: id.to_string(),
        queue: queue.to_string(),
        body,
        attributes: producers,
        enqueued_at_ms: if meta.sent_at_ms > 0 {
            meta.sent_at_ms
        } else {
            sent_at
        },
        visible_at_ms,
        dequeue_count: system(A::ApproximateReceiveCount)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        dedup_id: meta.dedup_id.clone(),
        group: meta.group.clone().or_else(|| system(A::MessageGroupId)),
        priority: 0,
        correlation_id: meta.correlation_id.clone(),
        reply_to: meta.reply_to.clone(),
        last_error: meta.error.clone(),
        checkpoint: None,
    };
    Received {
        message,
        meta,
        body: text,
        attributes,
        raw_meta,
        sqs_group: system(A::MessageGroupId),
        checkpointed: false,
    }
}

/// A dead letter as the API shows it.
pub(super) fn dead_letter(r: Received) -> DeadLetter {
    let Received {
        mut message, meta, ..
    } = r;
    if let Some(id) = &meta.original_id {
        message.id = id.clone();
    }
    DeadLetter {
        error: meta.error.clone().unwrap_or_else(|| {
            "no reason recorded: moved here by SQS (the queue's redrive policy), or sent here by something other than fnhost".into()
        }),
        attempts: meta.attempts.unwrap_or(message.dequeue_count),
        function: meta.function.clone(),
        dead_at_ms: message.enqueued_at_ms,
        message,
    }
}

/// A received message, to send on as it came (to the dead letters, back
/// from them, held for later) with `meta` as its metadata.
pub(super) fn forward(r: &Received, meta: &Meta) -> Outgoing {
    let mut attributes = r.attributes.clone();
    attributes.insert(META.into(), meta_attribute(meta));
    Outgoing {
        body: r.body.clone(),
        attributes,
    }
}

/// The received message exactly as it came, byte for byte (so SQS takes
/// it again): a dead letter whose reason SQS cannot carry beside it.
pub(super) fn as_it_came(r: &Received) -> Outgoing {
    let mut attributes = r.attributes.clone();
    if let Some(meta) = &r.raw_meta {
        attributes.insert(META.into(), meta.clone());
    }
    Outgoing {
        body: r.body.clone(),
        attributes,
    }
}

/// A binary attribute (tests).
#[cfg(test)]
pub(super) fn binary(bytes: &[u8]) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(aws_sdk_sqs::primitives::Blob::new(bytes))
        .build()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(body: &str, attributes: Attributes) -> Received {
        let m = aws_sdk_sqs::types::Message::builder()
            .message_id("m1")
            .body(body)
            .set_message_attributes(Some(attributes))
            .build();
        decode("q", &m, 0)
    }

    #[test]
    fn bodies_travel_as_text_when_sqs_takes_them_and_base64_otherwise() {
        assert_eq!(encode_body(b"hello"), ("hello".to_string(), false));
        let (_, b64) = encode_body("a\u{1}b".as_bytes());
        assert!(b64, "a control character is not XML text");
        // Sent and received back: the bytes, with the encoding said in an
        // attribute any consumer reads.
        let msg = NewMessage {
            body: vec![0, 159, 146, 150],
            ..NewMessage::default()
        };
        let out = outgoing(&msg, Meta::default());
        assert_eq!(out.attributes[ENCODING].string_value(), Some("base64"));
        let r = received(&out.body, out.attributes);
        assert_eq!(r.message.body, vec![0, 159, 146, 150]);
        assert!(
            r.message.attributes.is_empty(),
            "{:?}",
            r.message.attributes
        );
    }

    #[test]
    fn a_senders_attributes_are_sqs_attributes_and_the_hosts_ride_in_the_metadata() {
        let msg = NewMessage {
            body: b"order".to_vec(),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("fnhost-status".into(), "succeeded".into()),
            ],
            correlation_id: Some("c-1".into()),
            ..NewMessage::default()
        };
        let out = outgoing(&msg, meta_of(&msg, 5, None));
        assert_eq!(out.body, "order");
        assert_eq!(out.attributes["tenant"].string_value(), Some("acme"));
        assert!(!out.attributes.contains_key("fnhost-status"));
        assert_eq!(out.attributes.len(), 2, "tenant and fnhost-meta");
        let r = received(&out.body, out.attributes);
        assert_eq!(
            r.message.attributes,
            [
                ("tenant".to_string(), "acme".to_string()),
                ("fnhost-status".to_string(), "succeeded".to_string())
            ]
        );
        assert_eq!(r.message.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(r.message.enqueued_at_ms, 5);
    }

    #[test]
    fn a_producers_attributes_of_every_type_arrive_and_reserved_names_are_namespaced() {
        let mut attributes = Attributes::new();
        attributes.insert("plain".into(), string("text"));
        let number = MessageAttributeValue::builder()
            .data_type("Number.int")
            .string_value("42")
            .build()
            .unwrap();
        attributes.insert("count".into(), number);
        attributes.insert("blob".into(), binary(&[0, 1, 255]));
        // Names fnhost reserves, and metadata that is not fnhost's.
        attributes.insert("fnhost-status".into(), string("forged"));
        attributes.insert(META.into(), string("{not json"));
        attributes.insert(LEGACY_META.into(), string("a producer's own"));
        let r = received("hello", attributes.clone());
        let got: HashMap<String, String> = r.message.attributes.iter().cloned().collect();
        assert_eq!(got["plain"], "text");
        assert_eq!(got["count"], "42");
        assert_eq!(got["blob"], "AAH/");
        assert_eq!(got["producer.fnhost-status"], "forged");
        assert_eq!(got["producer.fnhost-meta"], "{not json");
        assert_eq!(got["fnhost"], "a producer's own");
        assert!(!got.contains_key("fnhost-status"));
        assert_eq!(r.message.body, b"hello");
        // Sent on (to the dead letters) as it came, types and all.
        let on = forward(&r, &Meta::default());
        assert_eq!(
            on.attributes["blob"].binary_value(),
            attributes["blob"].binary_value()
        );
        assert_eq!(on.attributes["count"].data_type(), "Number.int");
        assert_eq!(on.body, "hello");
    }

    #[test]
    fn messages_of_earlier_releases_are_still_read() {
        let legacy = serde_json::json!({
            "attributes": [["tenant", "acme"]],
            "sent_at_ms": 7,
            "base64": true,
            "error": "boom",
        });
        let mut attributes = Attributes::new();
        attributes.insert(LEGACY_META.into(), string(&legacy.to_string()));
        let r = received("AAH/", attributes);
        assert_eq!(r.message.body, vec![0, 1, 255]);
        assert_eq!(
            r.message.attributes,
            [("tenant".to_string(), "acme".to_string())]
        );
        assert_eq!(r.message.last_error.as_deref(), Some("boom"));
        assert_eq!(r.message.enqueued_at_ms, 7);
    }

    #[test]
    fn what_sqs_cannot_carry_is_refused_naming_the_limit() {
        let with = |attributes: Vec<(&str, &str)>| NewMessage {
            attributes: attributes
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..NewMessage::default()
        };
        let eight: Vec<(String, String)> = (0..8).map(|i| (format!("a{i}"), "v".into())).collect();
        let ok = NewMessage {
            attributes: eight.clone(),
            ..NewMessage::default()
        };
        assert!(check_attributes("q", &ok).is_ok());
        let mut nine = ok.clone();
        nine.attributes.push(("a8".into(), "v".into()));
        let e = check_attributes("q", &nine).unwrap_err().to_string();
        assert!(e.contains("send at most 8"), "{e}");
        for bad in ["AWS.x", "amazon.y", ".a", "a.", "a..b"] {
            let e = check_attributes("q", &with(vec![(bad, "v")])).unwrap_err();
            assert!(e.to_string().contains("SQS refuses"), "{bad}: {e}");
        }
        assert!(check_attributes("q", &with(vec![("a", "")])).is_err());
        assert!(sqs_id("order-7/a:b") && !sqs_id("with space") && !sqs_id("") && !sqs_id("é"));
        // What SQS counts: body, names, types, values.
        let out = outgoing(&with(vec![("tenant", "acme")]), Meta::default());
        let meta_len = out.attributes[META].string_value().unwrap().len();
        assert_eq!(
            sqs_size(&out.body, &out.attributes),
            "tenant".len() + "String".len() + 4 + META.len() + "String".len() + meta_len
        );
    }
}
