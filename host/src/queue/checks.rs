//! The caps on what a message may carry and the checks that hold every
//! send to them, for every backend: at the edge (the admin API and the
//! guest's import) with the sender's names, and again in the store.

use super::{NewMessage, QueueError};
use std::time::Duration;

/// The largest message body, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a dedup id is remembered (as SQS FIFO's five minutes).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The longest a receive waits for messages (as SQS's `WaitTimeSeconds`).
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The latest time a message (or a job) may be scheduled for, in ms since
/// the epoch: 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can
/// write. Every delay and not-before time is checked against it, so no
/// time the host computes from a caller's can overflow.
pub const LATEST_MS: u64 = 253_402_300_799_999;

/// The most attributes on one message.
pub const MAX_ATTRIBUTES: usize = 16;
/// The longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 128;
/// The longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;
/// The longest dedup id, group or correlation id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest error kept with a message (its `last_error`, a dead
/// letter's reason); longer ones are cut, with a note of their length.
pub const MAX_ERROR_BYTES: usize = 4096;

/// Attribute names starting with this are the host's (`fnhost-status` on
/// replies, `fnhost-key` on blob changes): senders other than the host
/// cannot set them.
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "fnhost-";

/// Refuse a user's send to one of the host's own queues: only the host
/// enqueues jobs, blob changes and timer ticks.
pub fn check_user_queue(queue: &str) -> Result<(), QueueError> {
    crate::names::QueueName::parse_user(queue)
        .map(drop)
        .map_err(|e| QueueError::Invalid(e.to_string()))
}

/// Check a message before it is stored, at `now_ms`: its queue's name, its
/// size, its attributes, ids and times. Every field a sender sets has a
/// cap, and a message past one is refused whole, naming the field and the
/// limit; nothing of it is stored.
pub fn validate(queue: &str, msg: &NewMessage, now_ms: u64) -> Result<(), QueueError> {
    let invalid = |m: String| Err(QueueError::Invalid(m));
    if let Err(e) = crate::names::QueueName::parse(queue) {
        return invalid(e.to_string());
    }
    if msg.body.len() > MAX_BODY_BYTES {
        return invalid(format!(
            "the message body is {} bytes, over the limit of {MAX_BODY_BYTES}",
            msg.body.len()
        ));
    }
    check_attributes(&msg.attributes)?;
    for (field, value) in [
        ("dedup_id", &msg.dedup_id),
        ("group", &msg.group),
        ("correlation_id", &msg.correlation_id),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > MAX_ID_BYTES)
        {
            return invalid(format!(
                "{field} is {} bytes; it must be 1 to {MAX_ID_BYTES} bytes",
                v.len()
            ));
        }
    }
    if let Some(reply_to) = &msg.reply_to
        && let Err(e) = crate::names::QueueName::parse_user(reply_to)
    {
        return invalid(format!("reply_to: {e}"));
    }
    check_schedule(msg.delay_ms, msg.not_before_ms, now_ms)
}

/// Check a message's attributes: at most [`MAX_ATTRIBUTES`], names of 1 to
/// [`MAX_ATTRIBUTE_NAME_BYTES`] letters, digits, `-`, `_` and `.`, values
/// of at most [`MAX_ATTRIBUTE_VALUE_BYTES`].
fn check_attributes(attributes: &[(String, String)]) -> Result<(), QueueError> {
    let invalid = |m: String| Err(QueueError::Invalid(m));
    if attributes.len() > MAX_ATTRIBUTES {
        return invalid(format!(
            "the message has {} attributes, over the limit of {MAX_ATTRIBUTES}",
            attributes.len()
        ));
    }
    for (name, value) in attributes {
        let well_formed = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES || !well_formed {
            return invalid(format!(
                "attribute name {} is not acceptable; use 1 to {MAX_ATTRIBUTE_NAME_BYTES} letters, digits, '-', '_' or '.'",
                crate::text::quote(name)
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return invalid(format!(
                "attribute {name:?} is {} bytes, over the limit of {MAX_ATTRIBUTE_VALUE_BYTES}",
                value.len()
            ));
        }
    }
    Ok(())
}

/// Check a delay and a not-before time given at `now_ms`: neither may put
/// the message after [`LATEST_MS`].
pub fn check_schedule(
    delay_ms: Option<u64>,
    not_before_ms: Option<u64>,
    now_ms: u64,
) -> Result<(), QueueError> {
    if let Some(d) = delay_ms
        && now_ms.saturating_add(d) > LATEST_MS
    {
        return Err(QueueError::Invalid(format!(
            "the delay of {d} ms is over the limit of {} ms from now: nothing can be scheduled after 9999-12-31T23:59:59.999Z",
            LATEST_MS.saturating_sub(now_ms)
        )));
    }
    if let Some(at) = not_before_ms
        && at > LATEST_MS
    {
        return Err(QueueError::Invalid(format!(
            "not_before_ms {at} is over the limit of {LATEST_MS} (9999-12-31T23:59:59.999Z), the latest time a message or job can be scheduled for"
        )));
    }
    Ok(())
}

/// When a message sent at `now_ms` becomes receivable. Callers validated
/// the times with [`check_schedule`]; this never overflows regardless.
pub fn visible_at(delay_ms: Option<u64>, not_before_ms: Option<u64>, now_ms: u64) -> u64 {
    not_before_ms
        .unwrap_or(now_ms)
        .max(now_ms.saturating_add(delay_ms.unwrap_or(0)))
}

/// The stricter check for a message from a user (a function's `send`, the
/// queue API): besides [`validate`], it may not go to one of the host's own
/// queues, and may not carry the host's own attributes.
pub fn validate_user(queue: &str, msg: &NewMessage, now_ms: u64) -> Result<(), QueueError> {
    check_user_queue(queue)?;
    if let Some((name, _)) = msg
        .attributes
        .iter()
        .find(|(name, _)| name.starts_with(RESERVED_ATTRIBUTE_PREFIX))
    {
        return Err(QueueError::Invalid(format!(
            "attribute {} is reserved: names starting with {RESERVED_ATTRIBUTE_PREFIX:?} are set by the host only; rename it",
            crate::text::quote(name)
        )));
    }
    validate(queue, msg, now_ms)
}
