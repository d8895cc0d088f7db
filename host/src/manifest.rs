//! `fnhost.toml`: a function's manifest, parsed and validated.
//!
//! One manifest per function: its name, where its component is, its triggers,
//! limits, grants and config values. Parsing is strict (unknown fields are
//! errors) and every error names the file, the field and what is wrong, so
//! nothing half-valid is ever deployed.
//!
//! This module knows nothing of wasm or of how triggers are served.

use crate::capabilities::Grants;
use crate::exec::{Limits, Profile};
use crate::names::{BucketName, FunctionName, QueueName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The manifest file's conventional name.
pub const FILE_NAME: &str = "fnhost.toml";

/// Paths the host serves itself; function routes may not shadow them.
pub const RESERVED_PREFIXES: &[&str] = &["/v1", "/healthz"];

/// A function's manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name: lower-case letters, digits and `-`, starting with a letter.
    pub name: String,
    /// Path of the component, relative to the manifest. When absent, the CLI
    /// uses the crate's `wasm32-wasip2` release build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// What starts the function besides direct invocation.
    #[serde(default)]
    pub triggers: Triggers,
    /// Per-invocation limits; each has a default.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// What the function may reach; nothing when absent.
    #[serde(default)]
    pub grants: Grants,
    /// String values the job reads with `fnhost_sdk::config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// How the function's async jobs are delivered (same settings as a queue
    /// binding, without `queue`); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<QueueTrigger>,
}

/// The function's triggers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// HTTP routes that invoke the function synchronously.
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    /// Queues whose messages invoke the function.
    #[serde(default)]
    pub queue: Vec<QueueTrigger>,
    /// Buckets whose changes invoke the function.
    #[serde(default)]
    pub blob: Vec<BlobTrigger>,
    /// A schedule that invokes the function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerTrigger>,
}

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
    fn validate_settings(&self) -> Result<(), (&'static str, String)> {
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
}

/// Per-invocation limits as written; absent fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Fuel units (roughly wasm instructions) per invocation. Default 10 billion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory in MiB. Default 128, at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Wall-clock limit, e.g. `"30s"` or `"2m"`. Default 30 s, at most 15 min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Bytes of stdout and of stderr logged per invocation. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
}

/// A manifest that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ManifestError {
    /// The manifest's file name or path.
    pub file: String,
    /// The field at fault (dotted path), or `(syntax)` for a parse error.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The longest lease a binding may ask for (as SQS's 12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// The longest retry delay a binding may ask for.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest scale-down cooldown a binding may ask for.
const MAX_COOLDOWN: Duration = Duration::from_secs(60 * 60);
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Manifest {
    /// Parse and validate manifest text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let field = e
                .message()
                .split('`')
                .nth(1)
                .filter(|_| e.message().starts_with("unknown field"))
                .map(|f| format!("unknown field `{f}`"))
                .unwrap_or_else(|| "(syntax)".into());
            ManifestError {
                file: file.into(),
                field,
                // toml quotes the offending line: a long one is cut.
                reason: crate::text::capped(e.to_string().trim().replace('\n', " "), 1024),
            }
        })?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    /// Check everything serde cannot: names, routes, limits, grants.
    pub fn validate(&self, file: &str) -> Result<(), ManifestError> {
        let err = |field: &str, reason: String| ManifestError {
            file: file.into(),
            field: field.into(),
            reason,
        };
        FunctionName::parse(&self.name).map_err(|e| err("name", e.to_string()))?;
        let mut router = matchit::Router::new();
        for (i, route) in self.triggers.http.iter().enumerate() {
            let field = format!("triggers.http[{i}].path");
            let path = &route.path;
            if !path.starts_with('/') {
                return Err(err(
                    &field,
                    format!("{} must start with '/'", crate::text::quote(path)),
                ));
            }
            if let Some(reserved) = RESERVED_PREFIXES.iter().find(|p| {
                path == *p
                    || path.starts_with(&format!("{p}/"))
                    || path.starts_with(&format!("{p}{{"))
            }) {
                return Err(err(
                    &field,
                    format!(
                        "{} would shadow the host's own {reserved} paths; choose another path",
                        crate::text::quote(path)
                    ),
                ));
            }
            if path.starts_with("/{") {
                return Err(err(
                    &field,
                    format!(
                        "{} starts with a parameter and would capture the host's own paths; start with a fixed segment",
                        crate::text::quote(path)
                    ),
                ));
            }
            if let Err(e) = router.insert(path.clone(), ()) {
                return Err(err(
                    &field,
                    format!("{} is not a valid route: {e}", crate::text::quote(path)),
                ));
            }
            for (j, m) in route.methods.iter().enumerate() {
                if !METHODS.contains(&m.as_str()) {
                    return Err(err(
                        &format!("triggers.http[{i}].methods[{j}]"),
                        format!(
                            "{} is not a method fnhost routes; use one of {}",
                            crate::text::quote(m),
                            METHODS.join(", ")
                        ),
                    ));
                }
            }
        }
        let mut bound = std::collections::BTreeSet::new();
        for (i, q) in self.triggers.queue.iter().enumerate() {
            let at = |f: &str| format!("triggers.queue[{i}].{f}");
            QueueName::parse_user(&q.queue).map_err(|e| err(&at("queue"), e.to_string()))?;
            if !bound.insert(q.queue.as_str()) {
                return Err(err(
                    &at("queue"),
                    format!(
                        "{} is bound twice; bind each queue once",
                        crate::text::quote(&q.queue)
                    ),
                ));
            }
            q.validate_settings()
                .map_err(|(f, reason)| err(&at(f), reason))?;
        }
        for (i, b) in self.triggers.blob.iter().enumerate() {
            let at = |f: &str| format!("triggers.blob[{i}].{f}");
            BucketName::parse(&b.bucket).map_err(|e| err(&at("bucket"), e.to_string()))?;
            if self.triggers.blob[..i].iter().any(|o| o.bucket == b.bucket) {
                return Err(err(
                    &at("bucket"),
                    format!(
                        "{} is watched twice; use one trigger per bucket (a shorter prefix covers both)",
                        crate::text::quote(&b.bucket)
                    ),
                ));
            }
            if b.events.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(
                    &at("events"),
                    "is empty; list at least one of \"created\", \"updated\", \"deleted\" (or leave it out)".into(),
                ));
            }
            if let Some(d) = &b.delivery {
                check_delivery(d)
                    .map_err(|(f, reason)| err(&at(&format!("delivery.{f}")), reason))?;
            }
            if !b.allow_self_trigger
                && let Some(g) = self.grants.storage.iter().find(|g| {
                    g.bucket == b.bucket
                        && g.access != crate::capabilities::Access::Read
                        && overlaps(g.prefix.as_deref(), b.prefix.as_deref())
                })
            {
                return Err(err(
                    &at("bucket"),
                    format!(
                        "the function may write to {:?}{} and is triggered by changes there, so each of its writes could trigger it again, forever; write to another bucket or a prefix the trigger does not watch, or set allow_self_trigger = true if the function skips its own outputs",
                        g.bucket,
                        g.prefix
                            .as_deref()
                            .map(|p| format!(" (prefix {})", crate::text::quote(p)))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(t) = &self.triggers.timer {
            t.parse()
                .map_err(|(f, reason)| err(&format!("triggers.timer.{f}"), reason))?;
            if let Some(d) = &t.delivery {
                check_delivery(d)
                    .map_err(|(f, reason)| err(&format!("triggers.timer.delivery.{f}"), reason))?;
            }
        }
        if let Some(jobs) = &self.jobs {
            if !jobs.queue.is_empty() {
                return Err(err(
                    "jobs.queue",
                    format!(
                        "a function's job queue is always {:?}; remove `queue` from [jobs]",
                        crate::names::job_queue(&self.name)
                    ),
                ));
            }
            check_delivery(jobs).map_err(|(f, reason)| err(&format!("jobs.{f}"), reason))?;
        }
        let limits = &self.limits;
        if let Some(fuel) = limits.fuel
            && !(1..=crate::exec::MAX_FUEL).contains(&fuel)
        {
            return Err(err(
                "limits.fuel",
                format!("{fuel} is out of range; use 1 to {}", crate::exec::MAX_FUEL),
            ));
        }
        if let Some(bytes) = limits.log_bytes
            && bytes > crate::exec::MAX_LOG_BYTES
        {
            return Err(err(
                "limits.log_bytes",
                format!(
                    "{bytes} is out of range; use 0 to {}",
                    crate::exec::MAX_LOG_BYTES
                ),
            ));
        }
        if let Some(mb) = limits.memory_mb {
            let max = (crate::exec::MAX_MEMORY_BYTES >> 20) as u64;
            if mb == 0 || mb > max {
                return Err(err(
                    "limits.memory_mb",
                    format!("{mb} is out of range; use 1 to {max}"),
                ));
            }
        }
        if let Some(t) = &limits.timeout {
            match humantime::parse_duration(t) {
                Ok(d) if d.is_zero() || d > MAX_TIMEOUT => {
                    return Err(err(
                        "limits.timeout",
                        format!(
                            "{} is out of range; use more than 0 and at most 15m",
                            crate::text::quote(t)
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(err(
                        "limits.timeout",
                        format!(
                            "{} is not a duration ({}); write e.g. \"30s\" or \"2m\"",
                            crate::text::quote(t),
                            crate::text::capped(e.to_string(), 128)
                        ),
                    ));
                }
            }
        }
        for (i, g) in self.grants.storage.iter().enumerate() {
            // A prefix is a folder: "user1" would grant "user10/" too.
            if let Some(p) = &g.prefix
                && !p.is_empty()
                && (!p.ends_with('/') || p.len() > crate::blobs::MAX_KEY_BYTES)
            {
                return Err(err(
                    &format!("grants.storage[{i}].prefix"),
                    format!(
                        "{} must end with '/' (and be at most {} bytes): a grant is for a folder, and {} would also grant keys such as {}; write {}",
                        crate::text::quote(p),
                        crate::blobs::MAX_KEY_BYTES,
                        crate::text::quote(p),
                        crate::text::quote(&format!("{p}0/")),
                        crate::text::quote(&format!("{p}/"))
                    ),
                ));
            }
            BucketName::parse(&g.bucket)
                .map_err(|e| err(&format!("grants.storage[{i}].bucket"), e.to_string()))?;
        }
        for (i, q) in self.grants.queues.iter().enumerate() {
            QueueName::parse_user(q)
                .map_err(|e| err(&format!("grants.queues[{i}]"), e.to_string()))?;
        }
        Ok(())
    }

    /// The limits with defaults filled in. Call on a validated manifest.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        let l = &self.limits;
        Limits {
            fuel: l.fuel.unwrap_or(d.fuel),
            memory_bytes: l
                .memory_mb
                .map(|mb| (mb as usize) << 20)
                .unwrap_or(d.memory_bytes),
            timeout: l
                .timeout
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(d.timeout),
            log_bytes: l.log_bytes.unwrap_or(d.log_bytes),
        }
    }

    /// Every queue the function consumes, with its policy: its own
    /// `[[triggers.queue]]` bindings, its async-job queue, and the host-owned
    /// queues of its blob and timer triggers.
    pub fn queue_policies(&self) -> Vec<QueuePolicy> {
        let hosted = |queue: String, delivery: &Option<QueueTrigger>, source: Source| {
            let mut policy = QueueTrigger {
                queue,
                ..delivery.clone().unwrap_or_default()
            }
            .policy();
            policy.source = source;
            policy
        };
        let mut policies: Vec<QueuePolicy> = self
            .triggers
            .queue
            .iter()
            .map(QueueTrigger::policy)
            .collect();
        policies.push(hosted(
            crate::names::job_queue(&self.name),
            &self.jobs,
            Source::Jobs,
        ));
        for b in &self.triggers.blob {
            policies.push(hosted(
                b.queue(&self.name),
                &b.delivery,
                Source::Blob(b.clone()),
            ));
        }
        if let Some(t) = &self.triggers.timer {
            policies.push(hosted(
                TimerTrigger::queue(&self.name),
                &t.delivery,
                Source::Timer(t.clone()),
            ));
        }
        policies
    }

    /// What the executor runs version `version` (component `digest`) of
    /// this function with. Call on a validated manifest.
    pub fn profile(&self, version: u32, digest: &str) -> Profile {
        Profile {
            function: self.name.clone(),
            version,
            digest: digest.to_string(),
            limits: self.limits(),
            grants: self.grants.clone(),
            config: self.config.clone(),
        }
    }
}

/// Delivery settings of a host-owned queue: everything but the queue name,
/// which the host chooses.
fn check_delivery(d: &QueueTrigger) -> Result<(), (&'static str, String)> {
    if !d.queue.is_empty() {
        return Err((
            "queue",
            "the host names this queue; remove `queue`".to_string(),
        ));
    }
    d.validate_settings()
}

/// Do two key prefixes (none = every key) share any key?
fn overlaps(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.starts_with(b) || b.starts_with(a),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse("fnhost.toml", text)
    }

    #[test]
    fn a_full_manifest_parses_with_defaults_filled() {
        let m = parse(
            r#"
            name = "hello"
            component = "hello.wasm"
            [[triggers.http]]
            path = "/hello/{name}"
            methods = ["GET"]
            [limits]
            memory_mb = 32
            timeout = "2s"
            [grants]
            queues = ["outbox"]
            [[grants.storage]]
            bucket = "thumbnails"
            access = "write"
            prefix = "small/"
            [config]
            greeting = "Hi"
            "#,
        )
        .unwrap();
        assert_eq!(m.name, "hello");
        let limits = m.limits();
        assert_eq!(limits.memory_bytes, 32 << 20);
        assert_eq!(limits.timeout, Duration::from_secs(2));
        assert_eq!(limits.fuel, Limits::default().fuel);
        assert_eq!(m.profile(1, "d").config["greeting"], "Hi");
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_reason() {
        let e = parse("name = \"Hello\"").unwrap_err();
        assert_eq!((e.file.as_str(), e.field.as_str()), ("fnhost.toml", "name"));
        assert!(e.reason.contains("lower-case"), "{e}");

        let e = parse("name = \"a\"\nmemory = 3").unwrap_err();
        assert_eq!(e.field, "unknown field `memory`", "{e}");

        let e = parse("name = \"a\"\n[limits]\ntimeout = \"soon\"").unwrap_err();
        assert_eq!(e.field, "limits.timeout");

        for (limit, field) in [
            ("fuel = 0", "limits.fuel"),
            ("fuel = 18_446_744_073_709_551_615", "limits.fuel"),
            ("log_bytes = 1_073_741_824", "limits.log_bytes"),
        ] {
            let e = parse(&format!("name = \"a\"\n[limits]\n{limit}")).unwrap_err();
            assert_eq!(e.field, field, "{limit}: {e}");
            assert!(e.reason.contains("out of range; use"), "{e}");
        }
        assert!(
            parse("name = \"a\"\n[limits]\nfuel = 1_000_000_000_000\nlog_bytes = 1_048_576")
                .is_ok()
        );

        let e = parse("name = \"a\"\n[limits]\nmemory_mb = 4096").unwrap_err();
        assert_eq!(e.field, "limits.memory_mb");
        assert!(e.reason.contains("1 to 1024"), "{e}");

        let e = parse("name = \"a\"\n[[triggers.http]]\npath = \"/x\"\nmethods = [\"FETCH\"]")
            .unwrap_err();
        assert_eq!(e.field, "triggers.http[0].methods[0]");

        let e = parse("name = [").unwrap_err();
        assert_eq!(e.field, "(syntax)");
        assert!(e.to_string().starts_with("fnhost.toml: (syntax): "), "{e}");
    }

    #[test]
    fn queue_bindings_take_defaults_and_are_checked() {
        let m = parse("name = \"a\"\n[[triggers.queue]]\nqueue = \"orders\"\nmax_attempts = 3\n")
            .unwrap();
        let p = m.triggers.queue[0].policy();
        assert_eq!(
            (p.max_attempts, p.batch_size, p.max_concurrency),
            (3, 16, 8)
        );
        assert_eq!(p.visibility_timeout, Duration::from_secs(30));
        for (extra, field) in [
            ("max_attempts = 0", "triggers.queue[0].max_attempts"),
            (
                "visibility_timeout = \"10ms\"",
                "triggers.queue[0].visibility_timeout",
            ),
            ("min_concurrency = 9", "triggers.queue[0].min_concurrency"),
            (
                "visibility_timeout = \"13h\"",
                "triggers.queue[0].visibility_timeout",
            ),
            (
                "backoff_max = \"100000000y\"",
                "triggers.queue[0].backoff_max",
            ),
            (
                "scale_down_cooldown = \"2h\"",
                "triggers.queue[0].scale_down_cooldown",
            ),
            ("backoff_max = \"soon\"", "triggers.queue[0].backoff_max"),
        ] {
            let text = format!("name = \"a\"\n[[triggers.queue]]\nqueue = \"orders\"\n{extra}\n");
            assert_eq!(parse(&text).unwrap_err().field, field, "{extra}");
        }
        let jobs = parse("name = \"a\"\n[jobs]\nmax_attempts = 2\nscale_down_cooldown = \"1m\"\n")
            .unwrap();
        let p = jobs.queue_policies().pop().unwrap();
        assert_eq!((p.queue.as_str(), p.max_attempts), ("fnhost-jobs-a", 2));
        assert_eq!(p.scale_down_cooldown, Duration::from_secs(60));
        let e = parse("name = \"a\"\n[jobs]\nqueue = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "jobs.queue");
        let e = parse("name = \"a\"\n[jobs]\nmax_concurrency = 0\n").unwrap_err();
        assert_eq!(e.field, "jobs.max_concurrency");
        let e = parse("name = \"a\"\n[[triggers.queue]]\nbatch_size = 3\n").unwrap_err();
        assert_eq!(
            e.field, "triggers.queue[0].queue",
            "the queue name is required in a binding"
        );
        let twice =
            "name = \"a\"\n[[triggers.queue]]\nqueue = \"q\"\n[[triggers.queue]]\nqueue = \"q\"\n";
        assert!(parse(twice).unwrap_err().reason.contains("bound twice"));
    }

    #[test]
    fn blob_triggers_are_checked_and_may_not_feed_themselves() {
        let m = parse(
            "name = \"t\"\n[[triggers.blob]]\nbucket = \"uploads\"\nsuffix = \".png\"\ndelivery = { max_attempts = 2 }\n[[grants.storage]]\nbucket = \"uploads\"\naccess = \"read\"\n[[grants.storage]]\nbucket = \"thumbnails\"\naccess = \"write\"\n",
        )
        .unwrap();
        let p = m
            .queue_policies()
            .into_iter()
            .find(|p| matches!(p.source, Source::Blob(_)))
            .unwrap();
        assert_eq!(
            (p.queue.as_str(), p.max_attempts),
            ("fnhost-blob-t.uploads", 2)
        );
        let t = &m.triggers.blob[0];
        let change = |key: &str, kind| {
            crate::blobs::Change::written(
                "uploads",
                crate::blobs::ObjectMeta {
                    key: key.into(),
                    size: 1,
                    etag: "e".into(),
                    content_type: None,
                    modified_ms: 0,
                },
                kind,
            )
        };
        use crate::blobs::ChangeKind::*;
        assert!(t.matches(&change("a.png", Created)));
        assert!(t.matches(&change("a.png", Updated)));
        assert!(!t.matches(&change("a.png", Deleted)), "not by default");
        assert!(!t.matches(&change("a.jpg", Created)));

        let selfish = "name = \"t\"\n[[triggers.blob]]\nbucket = \"uploads\"\nprefix = \"in/\"\n[[grants.storage]]\nbucket = \"uploads\"\naccess = \"read-write\"\n";
        let e = parse(selfish).unwrap_err();
        assert_eq!(e.field, "triggers.blob[0].bucket");
        assert!(e.reason.contains("allow_self_trigger"), "{e}");
        assert!(
            parse(&selfish.replace(
                "prefix = \"in/\"",
                "prefix = \"in/\"\nallow_self_trigger = true"
            ))
            .is_ok()
        );
        let elsewhere = selfish.replace(
            "access = \"read-write\"",
            "access = \"write\"\nprefix = \"out/\"",
        );
        assert!(
            parse(&elsewhere).is_ok(),
            "writes under another prefix cannot trigger it"
        );

        let e = parse("name = \"t\"\n[[triggers.blob]]\nbucket = \"u\"\nevents = [\"moved\"]\n")
            .unwrap_err();
        assert!(e.reason.contains("moved"), "{e}");
        let e = parse(
            "name = \"t\"\n[[triggers.blob]]\nbucket = \"u\"\ndelivery = { queue = \"x\" }\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "triggers.blob[0].delivery.queue");
    }

    #[test]
    fn timer_triggers_need_six_fields_and_a_real_zone() {
        let m = parse("name = \"c\"\n[triggers.timer]\nschedule = \"*/5 * * * * *\"\ntimezone = \"Europe/Paris\"\n").unwrap();
        let p = m.queue_policies().pop().unwrap();
        assert_eq!(p.queue, "fnhost-timer-c");
        assert!(matches!(p.source, Source::Timer(_)));
        let e = parse("name = \"c\"\n[triggers.timer]\nschedule = \"0 3 * * *\"\n").unwrap_err();
        assert_eq!(e.field, "triggers.timer.schedule");
        assert!(e.reason.contains("use 6"), "{e}");
        let e = parse("name = \"c\"\n[triggers.timer]\nschedule = \"0 0 25 * * *\"\n").unwrap_err();
        assert_eq!(e.field, "triggers.timer.schedule", "{e}");
        let e = parse("name = \"c\"\n[triggers.timer]\nschedule = \"0 0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
        assert_eq!(e.field, "triggers.timer.timezone");
    }

    #[test]
    fn storage_grant_prefixes_are_folders() {
        let grant = |prefix: &str| {
            format!(
                "name = \"a\"\n[[grants.storage]]\nbucket = \"files\"\naccess = \"read\"\nprefix = \"{prefix}\"\n"
            )
        };
        let e = parse(&grant("user1")).unwrap_err();
        assert_eq!(e.field, "grants.storage[0].prefix");
        assert!(
            e.reason.contains("\"user10/\"") && e.reason.contains("write \"user1/\""),
            "{e}"
        );
        assert!(parse(&grant("user1/")).is_ok());
        assert!(
            parse(&grant("")).is_ok(),
            "an empty prefix is the whole bucket"
        );
        let m = parse(&grant("user1/")).unwrap();
        let g = m.grants;
        use crate::capabilities::Access;
        assert!(g.check_storage("files", "user1/a", Access::Read).is_ok());
        assert!(g.check_storage("files", "user10/a", Access::Read).is_err());
    }

    #[test]
    fn host_queues_cannot_be_bound_or_granted() {
        let e = parse("name = \"a\"\n[[triggers.queue]]\nqueue = \"fnhost-jobs-b\"\n").unwrap_err();
        assert_eq!(e.field, "triggers.queue[0].queue");
        let e = parse("name = \"a\"\n[grants]\nqueues = [\"fnhost-timer-b\"]\n").unwrap_err();
        assert_eq!(e.field, "grants.queues[0]");
    }

    #[test]
    fn routes_may_not_shadow_the_host() {
        for path in ["/v1/functions", "/v1", "/healthz", "/{any}", "hello"] {
            let text = format!("name = \"a\"\n[[triggers.http]]\npath = \"{path}\"");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field, "triggers.http[0].path", "{path}: {e}");
        }
        assert!(parse("name = \"a\"\n[[triggers.http]]\npath = \"/v1x\"").is_ok());
        let e = parse(
            "name = \"a\"\n[[triggers.http]]\npath = \"/a\"\n[[triggers.http]]\npath = \"/a\"",
        )
        .unwrap_err();
        assert!(e.reason.contains("not a valid route"), "{e}");
    }
}
