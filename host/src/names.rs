//! Names a manifest, a guest or a client gives: functions, queues and
//! buckets ([`FunctionName`], [`QueueName`], [`BucketName`]), one rule and
//! one message for each; and the host's own queues (jobs, blob changes,
//! timer ticks), named after the function (and bucket) they carry work
//! for, under the reserved prefix [`RESERVED_PREFIX`].
//!
//! A leaf: it knows nothing of the rest of the host.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Queues (and message attributes) whose names start with this are the host's.
pub const RESERVED_PREFIX: &str = "fnhost-";

/// The longest function, queue or bucket name.
pub const MAX_NAME_BYTES: usize = 63;

/// The longest name of a host-owned queue (`fnhost-blob-<function>.<bucket>`).
const MAX_HOST_QUEUE_BYTES: usize = 200;

/// The name rule: `[a-z][a-z0-9-]{0,62}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_BYTES
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

/// A name that broke its rule, and the message that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

impl NameError {
    fn rule(what: &str, name: &str) -> NameError {
        NameError(format!(
            "{} is not a valid {what} name; use 1-63 lower-case letters, digits and '-', starting with a letter",
            crate::text::quote(name)
        ))
    }

    fn reserved(name: &str) -> NameError {
        NameError(format!(
            "{}: queue names starting with {RESERVED_PREFIX:?} are reserved for the host; use a queue of your own",
            crate::text::quote(name)
        ))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $name::parse(&s)
            }
        }
    };
}

name_type!(
    /// A function's name: `[a-z][a-z0-9-]{0,62}`.
    FunctionName,
    "function"
);
name_type!(
    /// A bucket's name: `[a-z][a-z0-9-]{0,62}`.
    BucketName,
    "bucket"
);
name_type!(
    /// A queue's name: a user's (`[a-z][a-z0-9-]{0,62}`) or one of the
    /// host's own (`fnhost-…`).
    QueueName,
    "queue"
);

impl FunctionName {
    /// Check `name` against the rule.
    pub fn parse(name: &str) -> Result<FunctionName, NameError> {
        if valid_name(name) {
            Ok(FunctionName(name.to_string()))
        } else {
            Err(NameError::rule("function", name))
        }
    }
}

impl BucketName {
    /// Check `name` against the rule.
    pub fn parse(name: &str) -> Result<BucketName, NameError> {
        if valid_name(name) {
            Ok(BucketName(name.to_string()))
        } else {
            Err(NameError::rule("bucket", name))
        }
    }
}

impl QueueName {
    /// A user's queue or one of the host's own.
    pub fn parse(name: &str) -> Result<QueueName, NameError> {
        if valid_name(name) || is_host_queue(name) {
            Ok(QueueName(name.to_string()))
        } else {
            Err(NameError::rule("queue", name))
        }
    }

    /// A queue a user may name (bind, grant, send to, reply to): not one of
    /// the host's own.
    pub fn parse_user(name: &str) -> Result<QueueName, NameError> {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(NameError::reserved(name));
        }
        if valid_name(name) {
            Ok(QueueName(name.to_string()))
        } else {
            Err(NameError::rule("queue", name))
        }
    }
}

/// Is this one of the host's own queues (jobs, blob and timer deliveries)?
pub fn is_host_queue(queue: &str) -> bool {
    queue.strip_prefix(RESERVED_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && queue.len() <= MAX_HOST_QUEUE_BYTES
            && rest
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '.'))
    })
}

/// The queue that carries `function`'s async jobs.
pub fn job_queue(function: &str) -> String {
    format!("{RESERVED_PREFIX}jobs-{function}")
}

/// The function whose job queue this is, if it is one.
pub fn job_function(queue: &str) -> Option<&str> {
    queue.strip_prefix(RESERVED_PREFIX)?.strip_prefix("jobs-")
}

/// The queue that carries `function`'s changes to `bucket`. The `.` cannot
/// occur in names, so no two (function, bucket) pairs share one.
pub fn blob_queue(function: &str, bucket: &str) -> String {
    format!("{RESERVED_PREFIX}blob-{function}.{bucket}")
}

/// The function whose blob trigger queue this is, if it is one.
pub fn blob_function(queue: &str) -> Option<&str> {
    queue
        .strip_prefix(RESERVED_PREFIX)?
        .strip_prefix("blob-")?
        .split_once('.')
        .map(|(f, _)| f)
}

/// The queue that carries `function`'s timer ticks.
pub fn timer_queue(function: &str) -> String {
    format!("{RESERVED_PREFIX}timer-{function}")
}

/// The function whose timer queue this is, if it is one.
pub fn timer_function(queue: &str) -> Option<&str> {
    queue.strip_prefix(RESERVED_PREFIX)?.strip_prefix("timer-")
}

/// Where a fleet keeps `function`'s timer state (a state store key).
pub fn timer_state_key(function: &str) -> String {
    format!("timers/{function}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule_with_one_message_each() {
        assert!(FunctionName::parse("hello-2").is_ok());
        for bad in ["", "Hello", "2x", "a_b", &"a".repeat(64)] {
            let e = FunctionName::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a valid function name; use 1-63 lower-case"),
                "{e}"
            );
        }
        assert!(BucketName::parse("uploads").is_ok());
        assert!(QueueName::parse("fnhost-jobs-a").is_ok(), "the host's own");
        let e = QueueName::parse_user("fnhost-jobs-a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved for the host"), "{e}");
        let e = QueueName::parse_user(&"Q".repeat(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "quoted by a prefix: {e}");
    }

    #[test]
    fn host_queues_are_named_after_their_function() {
        assert_eq!(job_queue("hello"), "fnhost-jobs-hello");
        assert_eq!(job_function("fnhost-jobs-hello"), Some("hello"));
        assert_eq!(job_function("orders"), None);
        assert_eq!(blob_queue("t", "uploads"), "fnhost-blob-t.uploads");
        assert_eq!(timer_queue("c"), "fnhost-timer-c");
        for q in [job_queue("a"), blob_queue("a", "b"), timer_queue("a")] {
            assert!(is_host_queue(&q), "{q}");
            assert!(QueueName::parse(&q).is_ok() && QueueName::parse_user(&q).is_err());
        }
        assert!(!is_host_queue("fnhost-") && !is_host_queue("orders"));
    }
}
