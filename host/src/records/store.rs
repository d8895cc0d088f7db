//! The records' SQL: the schema, the batch insert, pruning, and a page's
//! query built from a [`Filter`] (every value bound, never spliced).
//!
//! A row is kept small and cheap to insert, since every invocation writes
//! one: the id as its 16 bytes, the host as a number (`hosts`), and only
//! the indexes a lookup needs (function, id, the job, message and
//! correlation ids where there are some, and the unsuccessful outcomes).
//! Time is not indexed: records are written in the order they end, so
//! `seq` follows `ended_at_ms`, and a time bound becomes a `seq` bound
//! by a binary search over the primary key.

use super::{
    Cursor, Filter, OutcomeFilter, OutcomeKind, Page, Query, Record, RecordLogs, RecordsConfig,
};
use super::{MAX_PAGE, MAX_PAGE_WITH_LOGS};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    job_id TEXT,
    message_id TEXT,
    correlation_id TEXT,
    host INTEGER NOT NULL,
    trusted INTEGER NOT NULL,
    ended_at_ms INTEGER NOT NULL,
    queued_ms INTEGER,
    duration_us INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    status INTEGER,
    log_bytes INTEGER NOT NULL,
    log_dropped_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_function ON invocations (function, seq);
CREATE INDEX IF NOT EXISTS invocations_unsuccessful ON invocations (outcome, seq) WHERE outcome != 'succeeded';
CREATE INDEX IF NOT EXISTS invocations_id ON invocations (id);
CREATE INDEX IF NOT EXISTS invocations_job ON invocations (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS invocations_message ON invocations (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS invocations_correlation ON invocations (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS invocation_logs (
    seq INTEGER PRIMARY KEY,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL
);
";

/// Rows deleted per statement while pruning, so that a reader never waits
/// long for the writer.
const PRUNE_CHUNK: i64 = 10_000;

/// The writer's connection, and the number that stands for `host` in rows.
pub(super) fn open_writer(path: &Path, host: &str) -> rusqlite::Result<(Connection, i64)> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Records are history, not delivery: a crash may lose the last
    // batches, never the database.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT OR IGNORE INTO hosts (name) VALUES (?1)",
        params![host],
    )?;
    let id = conn.query_row("SELECT id FROM hosts WHERE name = ?1", params![host], |r| {
        r.get(0)
    })?;
    Ok((conn, id))
}

/// An invocation id as stored: its 16 bytes when it is a UUID (as every
/// id the dispatcher gives is), else its text.
fn id_bytes(id: &str) -> Vec<u8> {
    match uuid::Uuid::try_parse(id) {
        Ok(uuid) => uuid.as_bytes().to_vec(),
        Err(_) => id.as_bytes().to_vec(),
    }
}

fn id_text(bytes: Vec<u8>) -> String {
    match uuid::Uuid::from_slice(&bytes) {
        Ok(uuid) => uuid.to_string(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Insert `batch`, each record taking the next `seq` (theirs is ignored).
pub(super) fn insert(conn: &mut Connection, host: i64, batch: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut row = tx.prepare_cached(
            "INSERT INTO invocations (id, function, version, trigger, attempt, job_id, message_id,
                correlation_id, host, trusted, ended_at_ms, queued_ms, duration_us, fuel,
                peak_memory_bytes, outcome, reason, status, log_bytes, log_dropped_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )?;
        let mut logs = tx.prepare_cached(
            "INSERT INTO invocation_logs (seq, stdout, stderr) VALUES (?1, ?2, ?3)",
        )?;
        for r in batch {
            let seq = row.insert(params![
                id_bytes(&r.id),
                r.function,
                r.version,
                r.trigger,
                r.attempt,
                r.job_id,
                r.message_id,
                r.correlation_id,
                host,
                r.trusted,
                r.ended_at_ms as i64,
                r.queued_ms.map(|q| q as i64),
                r.duration_us as i64,
                r.fuel as i64,
                r.peak_memory_bytes as i64,
                r.outcome,
                r.reason,
                r.status,
                r.log_bytes as i64,
                r.log_dropped_bytes as i64,
            ])?;
            if let Some(l) = &r.logs {
                logs.execute(params![seq, l.stdout, l.stderr])?;
            }
        }
    }
    tx.commit()
}

/// Delete, chunk by chunk, the rows of `table` that `condition` (on `seq`,
/// with one parameter) names.
fn delete_chunked(
    conn: &Connection,
    table: &str,
    condition: &str,
    bound: i64,
) -> rusqlite::Result<()> {
    let sql = format!(
        "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE {condition} ORDER BY seq LIMIT {PRUNE_CHUNK})"
    );
    while conn.execute(&sql, params![bound])? > 0 {}
    Ok(())
}

/// Delete records past their age or count, and logs past theirs.
pub(super) fn prune(
    conn: &mut Connection,
    config: &RecordsConfig,
    cutoff_ms: u64,
) -> rusqlite::Result<()> {
    let Some(newest): Option<i64> =
        conn.query_row("SELECT MAX(seq) FROM invocations", [], |r| r.get(0))?
    else {
        return Ok(());
    };
    let keep = |n: u64| newest.saturating_sub(n.min(i64::MAX as u64) as i64);
    // Everything before the first record that is young enough goes.
    let aged = first_ending_at(conn, cutoff_ms)? - 1;
    let records_upto = aged.max(keep(config.max_records));
    delete_chunked(conn, "invocations", "seq <= ?1", records_upto)?;
    let logs_upto = records_upto.max(keep(config.max_logs));
    delete_chunked(conn, "invocation_logs", "seq <= ?1", logs_upto)
}

/// How far a record's end may precede one written before it: two
/// invocations that end at once reach the writer in either order.
const SLACK_MS: u64 = 1000;

/// The first `seq` of a record that ended at or after `ms` (one past the
/// newest when none did), by a binary search over `seq`: records are
/// written in the order they end, give or take [`SLACK_MS`].
fn first_ending_at(conn: &Connection, ms: u64) -> rusqlite::Result<i64> {
    let (first, newest): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(seq), MAX(seq) FROM invocations", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(newest)) = (first, newest) else {
        return Ok(1);
    };
    let mut hi = newest + 1;
    let mut at = conn.prepare_cached(
        "SELECT seq, ended_at_ms FROM invocations WHERE seq >= ?1 ORDER BY seq LIMIT 1",
    )?;
    let ms = ms.min(i64::MAX as u64) as i64;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (seq, ended): (i64, i64) = at
            .query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((hi, i64::MAX));
        if ended >= ms {
            hi = mid.min(seq);
        } else {
            lo = seq + 1;
        }
    }
    Ok(lo)
}

fn record(row: &Row<'_>, logs: bool) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: row.get::<_, i64>("seq")? as u64,
        id: id_text(row.get("id")?),
        function: row.get("function")?,
        version: row.get("version")?,
        trigger: row.get("trigger")?,
        attempt: row.get("attempt")?,
        job_id: row.get("job_id")?,
        message_id: row.get("message_id")?,
        correlation_id: row.get("correlation_id")?,
        host: row.get("host_name")?,
        trusted: row.get("trusted")?,
        ended_at_ms: row.get::<_, i64>("ended_at_ms")? as u64,
        queued_ms: row.get::<_, Option<i64>>("queued_ms")?.map(|q| q as u64),
        duration_us: row.get::<_, i64>("duration_us")? as u64,
        fuel: row.get::<_, i64>("fuel")? as u64,
        peak_memory_bytes: row.get::<_, i64>("peak_memory_bytes")? as u64,
        outcome: row.get("outcome")?,
        reason: row.get("reason")?,
        status: row.get("status")?,
        log_bytes: row.get::<_, i64>("log_bytes")? as u64,
        log_dropped_bytes: row.get::<_, i64>("log_dropped_bytes")? as u64,
        logs: match logs {
            false => None,
            true => match row.get::<_, Option<String>>("stdout")? {
                Some(stdout) => Some(RecordLogs {
                    stdout,
                    stderr: row.get::<_, Option<String>>("stderr")?.unwrap_or_default(),
                }),
                None => None,
            },
        },
    })
}

/// The `WHERE` conditions of `filter`, with their values in order.
fn conditions(
    conn: &Connection,
    filter: &Filter,
    out: &mut Vec<String>,
    values: &mut Vec<Value>,
) -> rusqlite::Result<()> {
    let mut text = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            out.push(format!("i.{column} = ?"));
            values.push(Value::Text(v.clone()));
        }
    };
    text("function", &filter.function);
    text("job_id", &filter.job_id);
    text("message_id", &filter.message_id);
    text("correlation_id", &filter.correlation_id);
    if let Some(id) = &filter.id {
        out.push("i.id = ?".into());
        values.push(Value::Blob(id_bytes(id)));
    }
    if let Some(trigger) = filter.trigger {
        out.push("i.trigger = ?".into());
        values.push(Value::Text(trigger.as_str().into()));
    }
    // Spelled as the partial index is, so that it is used.
    let unsuccessful = "i.outcome != 'succeeded'";
    match filter.outcome {
        Some(OutcomeFilter::Is(kind)) => {
            out.push("i.outcome = ?".into());
            values.push(Value::Text(kind.as_str().into()));
            if kind != OutcomeKind::Succeeded {
                out.push(unsuccessful.into());
            }
        }
        Some(OutcomeFilter::Unsuccessful) => out.push(unsuccessful.into()),
        None => {}
    }
    if let Some(version) = filter.version {
        out.push("i.version = ?".into());
        values.push(Value::Integer(version.into()));
    }
    let ms = |t: u64| Value::Integer(t.min(i64::MAX as u64) as i64);
    if let Some(since) = filter.since_ms {
        out.push("i.seq >= ?".into());
        values.push(Value::Integer(first_ending_at(
            conn,
            since.saturating_sub(SLACK_MS),
        )?));
        out.push("i.ended_at_ms >= ?".into());
        values.push(ms(since));
    }
    if let Some(until) = filter.until_ms {
        out.push("i.seq < ?".into());
        values.push(Value::Integer(first_ending_at(
            conn,
            until.saturating_add(SLACK_MS),
        )?));
        out.push("i.ended_at_ms < ?".into());
        values.push(ms(until));
    }
    Ok(())
}

pub(super) fn query(conn: &Connection, query: &Query) -> rusqlite::Result<Page> {
    let cap = match query.logs {
        true => MAX_PAGE_WITH_LOGS,
        false => MAX_PAGE,
    };
    let limit = query.limit.clamp(1, cap);
    let mut wheres = Vec::new();
    let mut values = Vec::new();
    conditions(conn, &query.filter, &mut wheres, &mut values)?;
    let order = match query.cursor {
        Cursor::Before(Some(seq)) => {
            wheres.push("i.seq < ?".into());
            values.push(Value::Integer(seq.min(i64::MAX as u64) as i64));
            "DESC"
        }
        Cursor::Before(None) => "DESC",
        Cursor::After(seq) => {
            wheres.push("i.seq > ?".into());
            values.push(Value::Integer(seq.min(i64::MAX as u64) as i64));
            "ASC"
        }
    };
    let (columns, join) = match query.logs {
        true => (
            "i.*, h.name AS host_name, l.stdout, l.stderr",
            "JOIN hosts h ON h.id = i.host LEFT JOIN invocation_logs l ON l.seq = i.seq",
        ),
        false => ("i.*, h.name AS host_name", "JOIN hosts h ON h.id = i.host"),
    };
    let wheres = match wheres.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", wheres.join(" AND ")),
    };
    // One more than asked says whether there is a next page.
    let sql = format!(
        "SELECT {columns} FROM invocations i {join} {wheres} ORDER BY i.seq {order} LIMIT {}",
        limit + 1
    );
    let mut statement = conn.prepare(&sql)?;
    let mut invocations = statement
        .query_map(params_from_iter(values), |row| record(row, query.logs))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = match invocations.len() > limit {
        true => {
            invocations.truncate(limit);
            invocations.last().map(|r| r.seq)
        }
        false => None,
    };
    Ok(Page { invocations, next })
}
