//! `cleanup`: a timer job that deletes objects older than a retention
//! period from a bucket (the guidance's "data retention cleanup").
//!
//! Config: `bucket`, `retention` (e.g. `"7d"`, `"90s"`) and an optional key
//! `prefix`. "Now" is the tick's due time, so a late or retried run deletes
//! exactly what the on-time run would have; an `invoke` uses the clock.
//! Deleting is idempotent, so a retry after a partial run finishes the job.

use fnhost_sdk::{Error, Event, Output, Result, ResultExt, job, storage};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms(event: &Event) -> u64 {
    match event {
        Event::Timer(tick) => tick.scheduled_at_ms,
        _ => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64,
    }
}

#[job]
fn handle(event: Event) -> Result<Output> {
    let bucket = fnhost_sdk::config("bucket")
        .ok_or_else(|| Error::fail("set `bucket` under [config] in fnhost.toml"))?;
    let retention_text = fnhost_sdk::config("retention").unwrap_or_else(|| "7d".into());
    let retention = humantime::parse_duration(&retention_text).or_fail(&format!(
        "config `retention` = {retention_text:?} is not a duration like \"7d\""
    ))?;
    let prefix = fnhost_sdk::config("prefix").unwrap_or_default();
    let now = now_ms(&event);
    let cutoff = now.saturating_sub(retention.as_millis() as u64);
    if let Event::Timer(tick) = &event
        && tick.past_due
    {
        println!("running late (past due): the host was down at the scheduled time");
    }

    // Walk the bucket a page at a time (any size), keeping only the keys to delete.
    let mut seen = 0usize;
    let mut old = Vec::new();
    for object in storage::objects(&bucket, &prefix) {
        let object = object.or_retry("cannot list the bucket")?;
        seen += 1;
        if object.modified_ms < cutoff {
            old.push(object.key);
        }
    }
    let mut deleted = 0usize;
    for (i, key) in old.iter().enumerate() {
        if storage::delete(&bucket, key).or_retry("cannot delete an object")? {
            deleted += 1;
        }
        fnhost_sdk::progress(((i + 1) * 100 / old.len()) as u8, &format!("deleted {key}"))?;
    }
    Ok(Output::text(format!(
        "deleted {deleted} of {seen} objects in {bucket:?} older than {retention_text}; kept {}",
        seen - old.len()
    )))
}
