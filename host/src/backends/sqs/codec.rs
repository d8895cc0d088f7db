//! fnhost messages as SQS messages and back. SQS bodies are text and a
//! message has at most 10 attributes, so the body travels as text when it
//! is valid UTF-8 of the characters SQS accepts, base64 otherwise, and
//! everything fnhost knows about a message that SQS does not (its
//! attributes, correlation id, reply queue, dedup id, a due time past the
//! 15 minutes SQS can delay, a dead letter's reason) travels as JSON in
//! one message attribute, [`META`].

use crate::queue::{DeadLetter, Message, NewMessage};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The one SQS message attribute fnhost uses.
pub(super) const META: &str = "fnhost";

/// What fnhost keeps about a message beside its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    /// The message's attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
    /// Its correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Its reply queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Its dedup id (as the sender gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// When it was first sent, ms since the epoch (kept across holds).
    pub sent_at_ms: u64,
    /// Not to be delivered before this (a delay longer than SQS's 15
    /// minutes: the message is held, see `SqsQueues::hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// The body is base64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
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

/// Can SQS carry this text as a body? (XML 1.0 characters only.)
fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    })
}

/// The body as SQS text, and whether it is base64.
pub(super) fn encode_body(body: &[u8]) -> (String, bool) {
    match std::str::from_utf8(body) {
        Ok(text) if sqs_text(text) => (text.to_string(), false),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), true),
    }
}

/// The body back from SQS text.
pub(super) fn decode_body(text: &str, base64: bool) -> Result<Vec<u8>, String> {
    if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("a base64 body that does not decode: {e}"))
    } else {
        Ok(text.as_bytes().to_vec())
    }
}

/// The metadata of a message about to be sent at `now`.
pub(super) fn meta_of(msg: &NewMessage, now: u64, due_ms: Option<u64>, base64: bool) -> Meta {
    Meta {
        attributes: msg.attributes.clone(),
        correlation_id: msg.correlation_id.clone(),
        reply_to: msg.reply_to.clone(),
        dedup_id: msg.dedup_id.clone(),
        sent_at_ms: now,
        due_ms,
        base64,
        ..Meta::default()
    }
}

/// What an SQS message was, as fnhost's message.
pub(super) struct Received {
    pub message: Message,
    pub meta: Meta,
    /// A checkpoint of this message is stored (read at this delivery or
    /// saved during it), to remove when the message is done with.
    pub checkpointed: bool,
}

/// Build fnhost's message from an SQS one received from `queue`.
pub(super) fn decode(
    queue: &str,
    m: &aws_sdk_sqs::types::Message,
    visible_at_ms: u64,
) -> Result<Received, String> {
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let meta: Meta = match m
        .message_attributes()
        .and_then(|a| a.get(META))
        .and_then(|v| v.string_value())
    {
        Some(json) => {
            serde_json::from_str(json).map_err(|e| format!("unreadable metadata: {e}"))?
        }
        // Sent by something other than fnhost: a plain text message.
        None => Meta::default(),
    };
    let system = |name: A| m.attributes().and_then(|a| a.get(&name)).cloned();
    let body = decode_body(m.body().unwrap_or(""), meta.base64)?;
    let sent_at = system(A::SentTimestamp)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let message = Message {
        id: m.message_id().unwrap_or_default().to_string(),
        queue: queue.to_string(),
        body,
        attributes: meta.attributes.clone(),
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
        group: system(A::MessageGroupId),
        priority: 0,
        correlation_id: meta.correlation_id.clone(),
        reply_to: meta.reply_to.clone(),
        last_error: meta.error.clone(),
        checkpoint: None,
    };
    Ok(Received {
        message,
        meta,
        checkpointed: false,
    })
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

/// A received message as a new one to send again (a redrive, a hold).
pub(super) fn resend(r: &Received) -> NewMessage {
    NewMessage {
        body: r.message.body.clone(),
        attributes: r.meta.attributes.clone(),
        correlation_id: r.meta.correlation_id.clone(),
        reply_to: r.meta.reply_to.clone(),
        group: r.message.group.clone(),
        ..NewMessage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_travel_as_text_when_sqs_takes_them_and_base64_otherwise() {
        assert_eq!(encode_body(b"hello"), ("hello".to_string(), false));
        let (text, b64) = encode_body(&[0, 159, 146, 150]);
        assert!(b64);
        assert_eq!(decode_body(&text, true).unwrap(), vec![0, 159, 146, 150]);
        let (text, b64) = encode_body("a\u{1}b".as_bytes());
        assert!(b64, "a control character is not XML text");
        assert_eq!(decode_body(&text, b64).unwrap(), b"a\x01b");
    }
}
