//! The triggers a manifest declares (HTTP routes, queue bindings, blob
//! and timer triggers, and `[jobs]` delivery), their defaults
//! ([`QueuePolicy`]) and the checks of their settings.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest lease a binding may ask for (as SQS's 12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// The longest retry delay a binding may ask for.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest scale-down cooldown a binding may ask for.
const MAX_COOLDOWN: Duration = Duration::from_secs(60 * 60);

/// A blob trigger: every matching change to the bucket is delivered at
/// least once, through the host-owned queue `fnhost-blob-<function>.<bucket>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobTrigger {
    /// The bucket to watch.
    pub bucket: String,
    /// Only keys starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only keys ending with this, e.g. `".png"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Which changes: `created`, `updated`, `deleted`. Default created and updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<crate::blobs::ChangeKind>>,
    /// Allow a write grant that overlaps this trigger (the function could
    /// trigger itself); the function must then skip its own writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_self_trigger: bool,
    /// Delivery settings, as in `[jobs]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<QueueTrigger>,
}

impl BlobTrigger {
    /// The host-owned queue that carries this trigger's changes. The `.`
    /// cannot occur in names, so no two (function, bucket) pairs share one.
    pub fn queue(&self, function: &str) -> String {
        crate::names::blob_queue(function, &self.bucket)
    }

    /// The change kinds delivered.
    pub fn kinds(&self) -> &[crate::blobs::ChangeKind] {
        use crate::blobs::ChangeKind;
        self.events
            .as_deref()
            .unwrap_or(&[ChangeKind::Created, ChangeKind::Updated])
    }

    /// Does the trigger want this change?
    pub fn matches(&self, change: &crate::blobs::Change) -> bool {
        self.in_scope(change) && self.kinds().contains(&change.kind)
    }

    /// Is the change to an object the trigger watches (whatever its kind)?
    pub fn in_scope(&self, change: &crate::blobs::Change) -> bool {
        change.bucket == self.bucket
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| change.key.starts_with(p))
            && self
                .suffix
                .as_deref()
                .is_none_or(|x| change.key.ends_with(x))
    }

    /// The filter as text: a consumer whose filter changes is reconciled afresh.
    pub fn spec(&self) -> String {
        let kinds: Vec<&str> = self.kinds().iter().map(|k| k.as_str()).collect();
        format!(
            "bucket={} prefix={} suffix={} events={}",
            self.bucket,
            self.prefix.as_deref().unwrap_or(""),
            self.suffix.as_deref().unwrap_or(""),
            kinds.join(",")
        )
    }
}

/// A timer trigger: the function runs on a cron schedule, one run at a
/// time, through the host-owned queue `fnhost-timer-<function>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerTrigger {
    /// Six fields with seconds: `sec min hour day-of-month month day-of-week`,
    /// e.g. `"0 0 3 * * *"` for 03:00 every day.
    pub schedule: String,
    /// An IANA time zone the schedule is read in, e.g. `"Europe/Paris"`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Also run once whenever the host starts, and when this timer is first
    /// deployed or changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_on_startup: bool,
    /// Delivery settings, as in `[jobs]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<QueueTrigger>,
}

impl TimerTrigger {
    /// The host-owned queue that carries the function's ticks.
    pub fn queue(function: &str) -> String {
        crate::names::timer_queue(function)
    }

    /// The parsed schedule and time zone, or why they are not acceptable.
    pub fn parse(&self) -> Result<(cron::Schedule, chrono_tz::Tz), (&'static str, String)> {
        let fields = self.schedule.split_whitespace().count();
        if fields != 6 {
            return Err((
                "schedule",
                format!(
                    "{} has {fields} fields; use 6, with seconds first: \"sec min hour day-of-month month day-of-week\", e.g. \"0 0 3 * * *\"",
                    crate::text::quote(&self.schedule)
                ),
            ));
        }
        let schedule: cron::Schedule = self.schedule.parse().map_err(|e| {
            (
                "schedule",
                format!(
                    "{} is not a cron schedule: {e}",
                    crate::text::quote(&self.schedule)
                ),
            )
        })?;
        let tz = match &self.timezone {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                (
                    "timezone",
                    format!(
                        "{} is not an IANA time zone; write e.g. \"Europe/Paris\" or \"UTC\"",
                        crate::text::quote(name)
                    ),
                )
            })?,
        };
        Ok((schedule, tz))
    }
}

/// Where a queue-delivered binding's messages come from, which decides the
/// event the function sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A user queue: queue message events.
    Queue,
    /// The function's async jobs: invoke events.
    Jobs,
    /// Changes to a bucket: blob events.
    Blob(BlobTrigger),
    /// Schedule ticks: timer events.
    Timer(TimerTrigger),
}

/// A queue binding: every message is processed at least once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueTrigger {
    /// The queue's name (required in `[[triggers.queue]]`, absent in `[jobs]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    /// Messages leased per receive, at most the free instances. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// How long a message stays hidden while it is processed; the lease is
    /// renewed at half this while the invocation runs. Default "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout: Option<String>,
    /// Attempts before a message goes to the dead-letter queue. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// First retry delay; doubles per attempt, with jitter. Default "1s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_initial: Option<String>,
    /// Longest retry delay. Default "5m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<String>,
    /// Instances kept even when the queue is empty. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_concurrency: Option<u32>,
    /// Most invocations at once for this binding. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Backlog each instance is expected to handle. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_backlog: Option<u32>,
    /// How long the backlog must stay lower before instances are released. Default "10s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_cooldown: Option<String>,
}

/// A queue binding with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    /// The queue's name.
    pub queue: String,
    /// What the messages are.
    pub source: Source,
    /// Messages leased per receive.
    pub batch_size: u32,
    /// Lease length.
    pub visibility_timeout: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Instances kept when idle.
    pub min_concurrency: u32,
    /// Most invocations at once.
    pub max_concurrency: u32,
    /// Backlog per instance.
    pub target_backlog: u32,
    /// Wait before scaling down.
    pub scale_down_cooldown: Duration,
}

impl QueueTrigger {
    /// The binding with defaults filled in. Call on a validated manifest.
    pub fn policy(&self) -> QueuePolicy {
        let d = |t: &Option<String>, default: u64| {
            t.as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(Duration::from_secs(default))
        };
        QueuePolicy {
            queue: self.queue.clone(),
            source: Source::Queue,
            batch_size: self.batch_size.unwrap_or(16),
            visibility_timeout: d(&self.visibility_timeout, 30),
            max_attempts: self.max_attempts.unwrap_or(5),
            backoff_initial: d(&self.backoff_initial, 1),
            backoff_max: d(&self.backoff_max, 300),
            min_concurrency: self.min_concurrency.unwrap_or(0),
            max_concurrency: self.max_concurrency.unwrap_or(8),
            target_backlog: self.target_backlog.unwrap_or(10),
            scale_down_cooldown: d(&self.scale_down_cooldown, 10),
        }
    }

    /// Check everything but the queue name; errors are (field, reason).
    pub(super) fn validate_settings(&self) -> Result<(), (&'static str, String)> {
        for (field, value, max, max_text) in [
            (
                "visibility_timeout",
                &self.visibility_timeout,
                MAX_VISIBILITY,
                "12h",
            ),
            ("backoff_initial", &self.backoff_initial, MAX_BACKOFF, "24h"),
            ("backoff_max", &self.backoff_max, MAX_BACKOFF, "24h"),
            (
                "scale_down_cooldown",
                &self.scale_down_cooldown,
                MAX_COOLDOWN,
                "1h",
            ),
        ] {
            if let Some(t) = value {
                match humantime::parse_duration(t) {
                    Ok(d) if field == "visibility_timeout" && d < Duration::from_secs(1) => {
                        return Err((
                            field,
                            format!("{} is too short; use at least 1s", crate::text::quote(t)),
                        ));
                    }
                    Ok(d) if d > max => {
                        return Err((
                            field,
                            format!(
                                "{} is too long; use at most {max_text}",
                                crate::text::quote(t)
                            ),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err((
                            field,
                            format!(
                                "{} is not a duration ({}); write e.g. \"30s\"",
                                crate::text::quote(t),
                                crate::text::capped(e.to_string(), 128)
                            ),
                        ));
                    }
                }
            }
        }
        let p = self.policy();
        for (field, value, lo, hi) in [
            ("batch_size", p.batch_size, 1, 1000),
            ("max_attempts", p.max_attempts, 1, 1000),
            ("max_concurrency", p.max_concurrency, 1, 1024),
            ("target_backlog", p.target_backlog, 1, 1_000_000),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err((field, format!("{value} is out of range; use {lo} to {hi}")));
            }
        }
        if p.min_concurrency > p.max_concurrency {
            return Err((
                "min_concurrency",
                format!(
                    "{} is more than max_concurrency ({})",
                    p.min_concurrency, p.max_concurrency
                ),
            ));
        }
        if p.backoff_initial > p.backoff_max {
            return Err(("backoff_initial", "is longer than backoff_max".into()));
        }
        Ok(())
    }
}

/// One HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// The path, e.g. `/hello` or `/hello/{name}` or `/files/{*rest}`.
    pub path: String,
    /// Methods it answers; every method when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Who may call it: anyone (`"none"`, the default), or only a bearer
    /// of an admin token whose scope allows invoking (`"token"`).
    #[serde(default, skip_serializing_if = "RouteAuth::is_none")]
    pub auth: RouteAuth,
}

/// Who may call an HTTP route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    /// Anyone.
    #[default]
    None,
    /// A bearer of a token with the `invoke` or `admin` scope; the token
    /// is taken off the request before the function sees it.
    Token,
}

impl RouteAuth {
    fn is_none(&self) -> bool {
        *self == RouteAuth::None
    }
}

/// Delivery settings of a host-owned queue: everything but the queue name,
/// which the host chooses.
pub(super) fn check_delivery(d: &QueueTrigger) -> Result<(), (&'static str, String)> {
    if !d.queue.is_empty() {
        return Err((
            "queue",
            "the host names this queue; remove `queue`".to_string(),
        ));
    }
    d.validate_settings()
}
