//! The SQL of async job records (`jobs`): submit (the record and its
//! message, in the caller's transaction), updates, reads and the
//! callbacks still owed. Knows nothing of batching or threads.

use super::messages::{db, exec, sql_ms};
use crate::jobs::{JobRecord, JobState, JobUpdate, NewJob};
use crate::queue::{MAX_ERROR_BYTES, QueueError};
use rusqlite::{OptionalExtension, Transaction, params};

pub(super) fn submit(
    tx: &Transaction<'_>,
    now: u64,
    job: &NewJob,
) -> Result<JobRecord, QueueError> {
    let id = uuid::Uuid::now_v7().to_string();
    let queue = crate::names::job_queue(&job.function);
    let visible_at = crate::queue::visible_at(job.delay_ms, job.not_before_ms, now);
    exec(tx,
        "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, correlation_id, reply_to)
         VALUES (?1, ?2, ?3, '[]', ?4, ?5, ?6, ?7)",
        params![id, queue, job.payload, now, sql_ms(visible_at), job.correlation_id, job.reply_to],
    )
    .map_err(db)?;
    let not_before = (visible_at > now).then_some(visible_at);
    exec(tx,
        "INSERT INTO jobs (id, function, state, created_at_ms, callback_url, reply_to, correlation_id, not_before_ms)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
        params![id, job.function, now, job.callback_url, job.reply_to, job.correlation_id, not_before.map(sql_ms)],
    )
    .map_err(db)?;
    get(tx, now, &id)?.ok_or_else(|| QueueError::backend("the new job vanished"))
}

pub(super) fn update(
    tx: &Transaction<'_>,
    now: u64,
    id: &str,
    update: &JobUpdate,
) -> Result<bool, QueueError> {
    let n = match update {
        JobUpdate::Started { attempt } => exec(
            tx,
            "UPDATE jobs SET state = 'running', attempts = ?2, started_at_ms = COALESCE(started_at_ms, ?3) WHERE id = ?1",
            params![id, attempt, now],
        ),
        JobUpdate::Progress { percent, message } => exec(
            tx,
            "UPDATE jobs SET progress = ?2, progress_message = ?3 WHERE id = ?1",
            params![id, percent, message],
        ),
        JobUpdate::Retrying { error } => exec(
            tx,
            "UPDATE jobs SET state = 'queued', error = ?2 WHERE id = ?1",
            params![id, crate::text::cut(error, MAX_ERROR_BYTES)],
        ),
        JobUpdate::Finished {
            state,
            output,
            error,
            retention_ms,
        } => {
            let (status, headers, body) = match output {
                Some(o) => (
                    Some(o.status),
                    Some(serde_json::to_string(&o.headers).unwrap_or_default()),
                    Some(o.body.as_slice()),
                ),
                None => (None, None, None),
            };
            let error = error
                .as_deref()
                .map(|e| crate::text::cut(e, MAX_ERROR_BYTES));
            // A callback owed is recorded with the end, in the same step, so
            // one cut off by a crash is sent after the restart.
            exec(tx,
                "UPDATE jobs SET state = ?2, result_status = ?3, result_headers = ?4, result = ?5, error = ?6,
                 finished_at_ms = ?7, expires_at_ms = ?8,
                 progress = CASE WHEN ?2 = 'succeeded' THEN 100 ELSE progress END,
                 callback_pending = (callback_url IS NOT NULL) WHERE id = ?1",
                params![id, state.as_str(), status, headers, body, error, now, now.saturating_add(*retention_ms)],
            )
        }
        JobUpdate::CallbackDone => exec(
            tx,
            "UPDATE jobs SET callback_pending = 0 WHERE id = ?1",
            params![id],
        ),
    };
    n.map(|n| n == 1).map_err(db)
}

const JOB_COLUMNS: &str = "id, function, state, attempts, progress, progress_message, result_status, result_headers, result, error,
     created_at_ms, started_at_ms, finished_at_ms, expires_at_ms, callback_url, reply_to, correlation_id, not_before_ms";

pub(super) fn get(
    tx: &Transaction<'_>,
    now: u64,
    id: &str,
) -> Result<Option<JobRecord>, QueueError> {
    tx.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)"),
        params![id, now],
        row_to_job,
    )
    .optional()
    .map_err(db)
}

/// Finished jobs whose completion callback is still owed, oldest first.
pub(super) fn pending_callbacks(
    tx: &Transaction<'_>,
    now: u64,
    max: usize,
) -> Result<Vec<JobRecord>, QueueError> {
    let mut stmt = tx
        .prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE callback_pending = 1 AND (expires_at_ms IS NULL OR expires_at_ms > ?1)
             ORDER BY finished_at_ms LIMIT ?2"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![now, max as i64], row_to_job)
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    {
        let state: String = r.get(2)?;
        let headers: Option<String> = r.get(7)?;
        Ok(JobRecord {
            id: r.get(0)?,
            function: r.get(1)?,
            state: JobState::parse(&state),
            attempts: r.get(3)?,
            progress: r.get(4)?,
            progress_message: r.get(5)?,
            result_status: r.get(6)?,
            result_headers: headers
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            result: r.get(8)?,
            error: r.get(9)?,
            created_at_ms: r.get(10)?,
            started_at_ms: r.get(11)?,
            finished_at_ms: r.get(12)?,
            expires_at_ms: r.get(13)?,
            callback_url: r.get(14)?,
            reply_to: r.get(15)?,
            correlation_id: r.get(16)?,
            not_before_ms: r.get(17)?,
        })
    }
}
