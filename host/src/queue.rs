//! Queues: the durable message store behind queue triggers, guest sends and
//! the queue API, with the delivery semantics users know from SQS and Azure
//! queues (see `docs/architecture.md`, "Queues").
//!
//! [`QueueBackend`] is the seam, in two halves: [`QueueDelivery`] (send,
//! receive, settle, renew, release, checkpoint, and the counts that
//! scaling and timers follow), which is all the triggers are given, and
//! [`QueueAdmin`] (stats, peek, dead letters, redrive, purge) for the admin
//! API. The embedded SQLite store (`backends::embedded::EmbeddedQueues`) is
//! the default, Amazon SQS (`backends::sqs`) implements the same traits,
//! and a caller asks [`QueueDelivery::features`] what a backend has.
//! Decorators (`backends::routed`, `backends::sealed_queues`) implement
//! both halves under `#[deny(clippy::missing_trait_methods)]`, so a method
//! they do not forward fails the lint (CI runs it) instead of silently
//! falling back to a default. Backends store and lease messages; they know
//! nothing of wasm, functions or HTTP. Retry policy (backoff, attempt limits)
//! is the caller's; the backend only does what it is told.

pub use crate::clock::Clock;
use crate::task::{BoxFuture, ErrorSource};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

mod checks;
pub use checks::*;

/// A message to enqueue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The payload.
    pub body: Vec<u8>,
    /// Name/value attributes.
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
    /// Not receivable before this time (ms since the epoch).
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    /// Not receivable until this long after it is stored.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Sends with the same dedup id within the dedup window enqueue once.
    #[serde(default)]
    pub dedup_id: Option<String>,
    /// Messages sharing a group are delivered one at a time, in order.
    #[serde(default)]
    pub group: Option<String>,
    /// Higher is received first; 0 by default.
    #[serde(default)]
    pub priority: u8,
    /// Carried through to replies.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Where completion should be reported.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Whose dedup ids this message's shares a window with: the sending
    /// function's name, or none for the admin API and the host. One
    /// function's dedup ids never suppress another's messages.
    #[serde(skip)]
    pub dedup_scope: Option<String>,
}

/// What a guest's queue sends need of a queue store: one send. The trusted
/// worker's sends travel to the host process, which owns the queues; in
/// the host process any [`QueueBackend`] is one ([`SendTo`]).
pub trait QueueSender: Send + Sync {
    /// Enqueue one message.
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>>;
}

/// A queue store as a [`QueueSender`].
pub struct SendTo(pub Arc<dyn QueueBackend>);

impl QueueSender for SendTo {
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        self.0.send(queue, msg)
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Unique id (a UUIDv7, so ids sort by enqueue time).
    pub id: String,
    /// The queue's name.
    pub queue: String,
    /// The payload.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Name/value attributes.
    pub attributes: Vec<(String, String)>,
    /// When it was enqueued.
    pub enqueued_at_ms: u64,
    /// When it may next be received.
    pub visible_at_ms: u64,
    /// How many times it has been handed out.
    pub dequeue_count: u32,
    /// Its dedup id, if any.
    pub dedup_id: Option<String>,
    /// Its group, if any.
    pub group: Option<String>,
    /// Its priority.
    pub priority: u8,
    /// Its correlation id, if any.
    pub correlation_id: Option<String>,
    /// Its reply queue, if any.
    pub reply_to: Option<String>,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// The last checkpoint an attempt saved, if any.
    #[serde(skip)]
    pub checkpoint: Option<Vec<u8>>,
}

/// A leased message: process it, then ack, retry or dead-letter it with the receipt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message (its `dequeue_count` includes this delivery).
    pub message: Message,
    /// Proof of the lease; stale once the lease expires and the message is handed out again.
    pub receipt: Receipt,
}

/// A lease on one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The message id.
    pub id: String,
    /// The lease token.
    pub lease: String,
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: delete the message.
    Ack,
    /// Given up on: move it to the dead letters with the last error and the
    /// function (`name@vN`) that gave up.
    DeadLetter {
        /// Why.
        error: String,
        /// Which function version gave up, if a function did.
        function: Option<String>,
    },
}

/// What a send did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The message id (the first message's, for a duplicate).
    pub id: String,
    /// True when the dedup id matched a message sent within the window: nothing was added.
    pub duplicate: bool,
}

/// A message that will not be delivered again unless redriven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The message as it was last delivered.
    pub message: Message,
    /// Why it was dead-lettered.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The function (and version) that last failed it, if any.
    pub function: Option<String>,
    /// When it was dead-lettered.
    pub dead_at_ms: u64,
}

/// A queue's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Receivable now.
    pub ready: u64,
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    /// Leased to a worker.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead_letters: u64,
    /// Age of the oldest receivable message, in ms.
    pub oldest_ready_age_ms: Option<u64>,
}

/// A queue backend failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The request is not acceptable; the same request will fail again.
    #[error("{0}")]
    Invalid(String),
    /// The backend cannot do this at all (peeking into SQS, say); the
    /// message names what it lacks.
    #[error("{0}")]
    Unsupported(String),
    /// The backend asks the caller to slow down (SQS throttling, say): the
    /// operation did not happen, and a retry after a while can succeed.
    #[error("the queue store is busy: {message}; retry later")]
    Throttled {
        /// What the backend said.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The backend failed; the operation may not have happened, and a
    /// retry may succeed.
    #[error("the queue store failed: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<ErrorSource>,
    },
}

impl QueueError {
    /// A backend failure described by `message`.
    pub fn backend(message: impl Into<String>) -> QueueError {
        QueueError::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure caused by `source` (its text is the message).
    pub fn caused_by(source: impl std::error::Error + Send + Sync + 'static) -> QueueError {
        QueueError::Backend {
            message: source.to_string(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// True when trying the same operation again may succeed (the store
    /// failed or was busy), false when it will not (it was refused).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, QueueError::Invalid(_) | QueueError::Unsupported(_))
    }
}

/// What a backend can do for one queue: callers ask instead of assuming
/// (the embedded store does everything; SQS has no priorities, no peeking,
/// groups and dedup ids only on FIFO queues, and approximate counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFeatures {
    /// Messages may have a priority.
    pub priorities: bool,
    /// Messages may have a group (run one at a time, in order).
    pub groups: bool,
    /// Messages may have a dedup id.
    pub dedup: bool,
    /// Messages can be looked at without leasing them.
    pub peek: bool,
    /// Checkpoints can be saved on a leased message.
    pub checkpoints: bool,
    /// The largest body, in bytes.
    pub max_body_bytes: usize,
    /// The most messages one receive hands over.
    pub max_receive: usize,
    /// How long a receive waits for messages before the worker looks at
    /// its policy again (long polling).
    pub long_poll: Duration,
}

impl QueueFeatures {
    /// Everything (the embedded store).
    pub const ALL: QueueFeatures = QueueFeatures {
        priorities: true,
        groups: true,
        dedup: true,
        peek: true,
        checkpoints: true,
        max_body_bytes: MAX_BODY_BYTES,
        max_receive: 1000,
        long_poll: Duration::from_millis(250),
    };

    /// Refuse a message this queue cannot carry, naming what it lacks.
    pub fn check(&self, queue: &str, msg: &NewMessage, backend: &str) -> Result<(), QueueError> {
        let no = |what: &str| {
            Err(QueueError::Invalid(format!(
                "queue {} is on {backend}, which has no {what}; send without it",
                crate::text::quote(queue)
            )))
        };
        if msg.priority != 0 && !self.priorities {
            return no("message priorities");
        }
        if msg.group.is_some() && !self.groups {
            return no("message groups on this queue (only FIFO queues have them)");
        }
        if msg.dedup_id.is_some() && !self.dedup {
            return no("dedup ids on this queue (only FIFO queues have them)");
        }
        if msg.body.len() > self.max_body_bytes {
            return Err(QueueError::Invalid(format!(
                "the message body is {} bytes, over the limit of {} for queue {} on {backend}",
                msg.body.len(),
                self.max_body_bytes,
                crate::text::quote(queue)
            )));
        }
        Ok(())
    }
}

/// A durable queue store: what delivery uses ([`QueueDelivery`]) and what
/// the admin API uses ([`QueueAdmin`]), implemented by every backend and
/// forwarded by every decorator. Every method's effect is durable when it
/// returns `Ok`.
pub trait QueueBackend: QueueDelivery + QueueAdmin {}

impl<T: QueueDelivery + QueueAdmin + ?Sized> QueueBackend for T {}

/// The half of a queue store that delivery uses: send, receive, settle,
/// renew, release, checkpoint, and the counts scaling and timers follow.
pub trait QueueDelivery: Send + Sync {
    /// What this backend can do for `queue`.
    fn features(&self, queue: &str) -> QueueFeatures {
        let _ = queue;
        QueueFeatures::ALL
    }
    /// Enqueue one message.
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>>;
    /// Enqueue several messages in one durable step.
    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>>;
    /// Lease up to `max` receivable messages for `visibility`, at once
    /// (none if none is receivable).
    fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        self.receive_waiting(queue, max, visibility, Duration::ZERO)
    }
    /// Lease up to `max` receivable messages for `visibility`; when none is
    /// receivable, wait up to `wait` (at most [`MAX_WAIT`]) for some to
    /// arrive (SQS's long polling) and answer with what arrived, or with
    /// none once `wait` is over. Messages that become receivable by time
    /// alone (a delay or a lease running out) are seen when the wait ends.
    /// Dropping the future gives up the wait; leases made for it meanwhile
    /// are given back.
    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>>;
    /// End a delivery ([`Settlement::Ack`] deletes the message,
    /// [`Settlement::DeadLetter`] moves it to the dead letters) and send
    /// `then` (its reply, say) in the same durable step: the sends happen
    /// exactly when the settlement does. False, with nothing sent, when the
    /// receipt is stale (the lease was lost and the message will come again).
    /// `QueueError::Invalid` means nothing was applied (a `then` message
    /// was refused), so settling again without it is safe.
    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Delete a processed message. False when the receipt is stale.
    fn ack(&self, receipt: Receipt) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.settle(receipt, Settlement::Ack, Vec::new())
    }
    /// Store a message straight in `queue`'s dead letters with `error` as
    /// the reason, for one that cannot be delivered (the blob feed's change
    /// that no message can carry): it is kept for a look and a redrive,
    /// and does not hold up the ones behind it. Returns its id.
    fn bury(
        &self,
        queue: &str,
        msg: NewMessage,
        error: String,
    ) -> BoxFuture<'_, Result<String, QueueError>>;
    /// Make a leased message receivable again after `delay`, recording the error.
    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Give leases back unprocessed: the messages are receivable again at
    /// once, their dequeue count as before (SQS: a visibility timeout of 0).
    /// Stale receipts are skipped.
    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Save a checkpoint on a leased message; the next delivery carries it.
    fn checkpoint(
        &self,
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Extend a lease to `visibility` from now. False when the receipt is stale.
    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Move a leased message to its queue's dead letters.
    fn dead_letter(
        &self,
        receipt: Receipt,
        error: String,
        function: Option<String>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.settle(
            receipt,
            Settlement::DeadLetter { error, function },
            Vec::new(),
        )
    }
    /// The backlog that scaling follows (messages receivable now or leased),
    /// counted up to `cap`: a scaler never needs more than enough to reach
    /// its maximum, and counting further would cost a visit per message.
    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>>;
    /// Every message of the queue (receivable, delayed or leased), counted
    /// up to `cap`, in step with the operations handed to the store before
    /// this call: a settlement already handed over is counted as done, even
    /// if its commit is still to come (`stats` may answer from a snapshot
    /// taken before it).
    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>>;
}

/// The half of a queue store that the admin API uses: counts, a look at
/// messages and dead letters, redrive and purge.
pub trait QueueAdmin: Send + Sync {
    /// Counts for one queue.
    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>>;
    /// Names of queues that hold messages or dead letters.
    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;
    /// Look at up to `max` messages without leasing them, in delivery order.
    fn peek(&self, queue: &str, max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>>;
    /// A queue's dead letters, oldest first.
    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>>;
    /// Put dead letters back on their queue (all, or the given ids) with a fresh attempt count.
    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>>;
    /// Delete a queue's dead letters (all, or the given ids).
    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>>;
    /// Delete every message of a queue (not its dead letters).
    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_validated() {
        let ok = NewMessage {
            body: b"x".to_vec(),
            ..Default::default()
        };
        assert!(validate("orders", &ok, 0).is_ok());
        assert!(validate("Orders", &ok, 0).is_err());
        let big = NewMessage {
            body: vec![0; MAX_BODY_BYTES + 1],
            ..Default::default()
        };
        assert!(
            validate("orders", &big, 0)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        let empty_group = NewMessage {
            group: Some(String::new()),
            ..Default::default()
        };
        assert!(validate("orders", &empty_group, 0).is_err());
    }

    #[test]
    fn times_are_capped_so_no_sum_can_overflow() {
        let at = |delay_ms, not_before_ms| NewMessage {
            delay_ms,
            not_before_ms,
            ..Default::default()
        };
        let now = 1_000;
        assert!(validate("q", &at(Some(LATEST_MS - now), None), now).is_ok());
        assert!(validate("q", &at(None, Some(LATEST_MS)), now).is_ok());
        for huge in [LATEST_MS - now + 1, 1 << 63, u64::MAX] {
            let e = validate("q", &at(Some(huge), None), now).unwrap_err();
            assert!(
                e.to_string()
                    .contains("over the limit of 253402300798999 ms from now"),
                "{e}"
            );
        }
        for huge in [LATEST_MS + 1, 1 << 63, u64::MAX] {
            let e = validate("q", &at(None, Some(huge)), now).unwrap_err();
            assert!(
                e.to_string().contains("over the limit of 253402300799999"),
                "{e}"
            );
        }
        assert_eq!(visible_at(Some(u64::MAX), None, 5), u64::MAX);
        assert_eq!(visible_at(Some(10), Some(3), 5), 15);
        assert_eq!(visible_at(None, Some(30), 5), 30);
    }

    #[test]
    fn attributes_are_capped_and_the_hosts_are_reserved() {
        let with = |attributes: Vec<(String, String)>| NewMessage {
            attributes,
            ..Default::default()
        };
        let ok = with(vec![("trace-id".into(), "abc".into())]);
        assert!(validate_user("q", &ok, 0).is_ok());
        let many = with(
            (0..=MAX_ATTRIBUTES)
                .map(|i| (format!("a{i}"), String::new()))
                .collect(),
        );
        assert!(
            validate("q", &many, 0)
                .unwrap_err()
                .to_string()
                .contains("17 attributes")
        );
        let long = with(vec![(
            "a".into(),
            "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1),
        )]);
        assert!(validate("q", &long, 0).is_err());
        let name = with(vec![("n".repeat(1 << 20), String::new())]);
        let e = validate("q", &name, 0).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("1048576 bytes"), "{e}");
        let odd = with(vec![("a b\n".into(), String::new())]);
        assert!(validate("q", &odd, 0).is_err());
        let host = with(vec![("fnhost-status".into(), "succeeded".into())]);
        assert!(validate("q", &host, 0).is_ok(), "the host may set them");
        let e = validate_user("q", &host, 0).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
        assert!(validate_user("fnhost-jobs-a", &ok, 0).is_err());
    }
}
