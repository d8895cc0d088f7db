//! The manifest's checks, one section at a time: everything serde cannot
//! check (names, routes, ranges, overlaps). Each answers the field at fault
//! and the reason, which the caller turns into a `ManifestError`.

use super::triggers::check_delivery;
use super::{BlobTrigger, HttpTrigger, LimitsSpec, QueueTrigger, TimerTrigger};
use crate::capabilities::Grants;
use crate::names::{BucketName, QueueName};
use std::time::Duration;

/// The field at fault and what is wrong with it.
pub(super) type Bad = (String, String);

/// A [`Bad`] for `field`.
pub(super) fn bad(field: impl Into<String>, reason: String) -> Bad {
    (field.into(), reason)
}

/// The longest wall-clock limit.
const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The methods a route may name.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Routes hold only visible characters and each parameter name once,
/// start with a fixed segment, shadow none of the host's paths, are valid
/// `matchit` routes and name known methods.
pub(super) fn routes(http: &[HttpTrigger]) -> Result<(), Bad> {
    let mut router = matchit::Router::new();
    for (i, route) in http.iter().enumerate() {
        let field = format!("triggers.http[{i}].path");
        let path = &route.path;
        if !path.starts_with('/') {
            return Err(bad(
                &field,
                format!("{} must start with '/'", crate::text::quote(path)),
            ));
        }
        super::routes::check(path).map_err(|why| bad(&field, why.to_string()))?;
        if let Some(reserved) = super::RESERVED_PREFIXES.iter().find(|p| {
            path == *p || path.starts_with(&format!("{p}/")) || path.starts_with(&format!("{p}{{"))
        }) {
            return Err(bad(
                &field,
                format!(
                    "{} would shadow the host's own {reserved} paths; choose another path",
                    crate::text::quote(path)
                ),
            ));
        }
        if path.starts_with("/{") {
            return Err(bad(
                &field,
                format!(
                    "{} starts with a parameter and would capture the host's own paths; start with a fixed segment",
                    crate::text::quote(path)
                ),
            ));
        }
        if let Err(e) = router.insert(path.clone(), ()) {
            return Err(bad(
                &field,
                format!("{} is not a valid route: {e}", crate::text::quote(path)),
            ));
        }
        for (j, m) in route.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                return Err(bad(
                    format!("triggers.http[{i}].methods[{j}]"),
                    format!(
                        "{} is not a method fnhost routes; use one of {}",
                        crate::text::quote(m),
                        METHODS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Queue bindings name a user queue once each, with settings in range.
pub(super) fn queue_bindings(queue: &[QueueTrigger]) -> Result<(), Bad> {
    let mut bound = std::collections::BTreeSet::new();
    for (i, q) in queue.iter().enumerate() {
        let at = |f: &str| format!("triggers.queue[{i}].{f}");
        QueueName::parse_user(&q.queue).map_err(|e| bad(at("queue"), e.to_string()))?;
        if !bound.insert(q.queue.as_str()) {
            return Err(bad(
                at("queue"),
                format!(
                    "{} is bound twice; bind each queue once",
                    crate::text::quote(&q.queue)
                ),
            ));
        }
        q.validate_settings()
            .map_err(|(f, reason)| bad(at(f), reason))?;
    }
    Ok(())
}

/// Blob triggers watch a valid bucket once each, for some kinds of
/// change, and cannot be fed by the function's own writes unless allowed.
pub(super) fn blob_triggers(blob: &[BlobTrigger], grants: &Grants) -> Result<(), Bad> {
    for (i, b) in blob.iter().enumerate() {
        let at = |f: &str| format!("triggers.blob[{i}].{f}");
        BucketName::parse(&b.bucket).map_err(|e| bad(at("bucket"), e.to_string()))?;
        if blob[..i].iter().any(|o| o.bucket == b.bucket) {
            return Err(bad(
                at("bucket"),
                format!(
                    "{} is watched twice; use one trigger per bucket (a shorter prefix covers both)",
                    crate::text::quote(&b.bucket)
                ),
            ));
        }
        if b.events.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad(
                at("events"),
                "is empty; list at least one of \"created\", \"updated\", \"deleted\" (or leave it out)".into(),
            ));
        }
        if let Some(d) = &b.delivery {
            check_delivery(d).map_err(|(f, reason)| bad(at(&format!("delivery.{f}")), reason))?;
        }
        if !b.allow_self_trigger
            && let Some(g) = grants.storage.iter().find(|g| {
                g.bucket == b.bucket
                    && g.access.writes()
                    && overlaps(g.prefix.as_deref(), b.prefix.as_deref())
            })
        {
            return Err(bad(
                at("bucket"),
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
    Ok(())
}

/// A timer has a 6-field schedule, a real zone and delivery in range.
pub(super) fn timer(timer: Option<&TimerTrigger>) -> Result<(), Bad> {
    if let Some(t) = timer {
        t.parse()
            .map_err(|(f, reason)| bad(format!("triggers.timer.{f}"), reason))?;
        if let Some(d) = &t.delivery {
            check_delivery(d)
                .map_err(|(f, reason)| bad(format!("triggers.timer.delivery.{f}"), reason))?;
        }
    }
    Ok(())
}

/// `[jobs]` names no queue (the host does) and has delivery in range.
pub(super) fn jobs(jobs: Option<&QueueTrigger>, function: &str) -> Result<(), Bad> {
    if let Some(jobs) = jobs {
        if !jobs.queue.is_empty() {
            return Err(bad(
                "jobs.queue",
                format!(
                    "a function's job queue is always {:?}; remove `queue` from [jobs]",
                    crate::names::job_queue(function)
                ),
            ));
        }
        check_delivery(jobs).map_err(|(f, reason)| bad(format!("jobs.{f}"), reason))?;
    }
    Ok(())
}

/// Limits within their ranges.
pub(super) fn limits(limits: &LimitsSpec) -> Result<(), Bad> {
    if let Some(fuel) = limits.fuel
        && !(1..=crate::exec::MAX_FUEL).contains(&fuel)
    {
        return Err(bad(
            "limits.fuel",
            format!("{fuel} is out of range; use 1 to {}", crate::exec::MAX_FUEL),
        ));
    }
    if let Some(bytes) = limits.log_bytes
        && bytes > crate::exec::MAX_LOG_BYTES
    {
        return Err(bad(
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
            return Err(bad(
                "limits.memory_mb",
                format!("{mb} is out of range; use 1 to {max}"),
            ));
        }
    }
    if let Some(t) = &limits.timeout {
        match humantime::parse_duration(t) {
            Ok(d) if d.is_zero() || d > MAX_TIMEOUT => {
                return Err(bad(
                    "limits.timeout",
                    format!(
                        "{} is out of range; use more than 0 and at most 15m",
                        crate::text::quote(t)
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(bad(
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
    Ok(())
}

/// Grants name valid buckets, folders and user queues.
pub(super) fn grants(grants: &Grants, blob: &[BlobTrigger]) -> Result<(), Bad> {
    for (i, g) in grants.storage.iter().enumerate() {
        if g.access == crate::capabilities::Access::ReadEvent
            && !blob.iter().any(|b| b.bucket == g.bucket)
        {
            return Err(bad(
                format!("grants.storage[{i}].access"),
                format!(
                    "\"read-event\" reads the object whose change triggered the function, and no blob trigger of this function watches {}; add a [[triggers.blob]] on it, or grant \"read\"",
                    crate::text::quote(&g.bucket)
                ),
            ));
        }
        // A prefix is a folder: "user1" would grant "user10/" too.
        if let Some(p) = &g.prefix
            && !p.is_empty()
            && (!p.ends_with('/') || p.len() > crate::blobs::MAX_KEY_BYTES)
        {
            return Err(bad(
                format!("grants.storage[{i}].prefix"),
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
            .map_err(|e| bad(format!("grants.storage[{i}].bucket"), e.to_string()))?;
    }
    for (i, q) in grants.queues.iter().enumerate() {
        QueueName::parse_user(q).map_err(|e| bad(format!("grants.queues[{i}]"), e.to_string()))?;
    }
    Ok(())
}

/// Do two key prefixes (none = every key) share any key?
fn overlaps(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.starts_with(b) || b.starts_with(a),
        _ => true,
    }
}
