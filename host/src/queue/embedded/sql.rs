//! The SQL of each embedded queue operation, applied inside the caller's
//! transaction (the writer's batch, or the reader's snapshot). Every time a
//! caller gave is stored saturated to SQLite's integer range, every error
//! text cut to [`MAX_ERROR_BYTES`]. Knows nothing of batching or threads.

use super::writer::{Answer, Req, Woken};
use crate::jobs::{JobRecord, JobState, JobUpdate, NewJob};
use crate::queue::{
    DEDUP_WINDOW, DeadLetter, Delivery, MAX_ERROR_BYTES, Message, NewMessage, QueueError,
    QueueStats, Receipt, Sent, Settlement,
};
use rusqlite::{OptionalExtension, Transaction, params};
use std::time::Duration;

pub(super) const MESSAGE_COLUMNS: &str = "id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, last_error";

pub(super) fn db(e: rusqlite::Error) -> QueueError {
    QueueError::Backend(e.to_string())
}

/// Apply one request inside `tx` at `now`. Queues in which it may have made
/// messages receivable are added to `woken`. (A receive that may wait is
/// the writer's to park; here it answers with what it finds.)
pub(super) fn run(
    tx: &Transaction<'_>,
    now: u64,
    req: &Req,
    woken: &mut Woken,
) -> Result<Answer, QueueError> {
    Ok(match req {
        Req::Send(queue, msgs) => {
            woken.add(queue);
            Answer::Sent(
                msgs.iter()
                    .map(|m| send(tx, now, queue, m))
                    .collect::<Result<_, _>>()?,
            )
        }
        Req::Receive {
            queue,
            max,
            visibility,
            ..
        } => Answer::Deliveries(receive(tx, now, queue, *max, *visibility)?),
        Req::Settle(rc, how, then, job) => {
            let settled = settle(tx, now, rc, how, then, woken)?;
            if settled && let Some((id, update)) = job {
                job_update(tx, now, id, update)?;
            }
            Answer::Done(settled)
        }
        Req::Retry(rc, delay, error) => {
            let n = exec(tx,
                "UPDATE queue_messages SET visible_at_ms = ?3, lease = NULL, last_error = ?4 WHERE seq = ?1 AND lease = ?2",
                params![seq_of(rc), rc.lease, sql_ms(now.saturating_add(delay.as_millis() as u64)), crate::text::cut(error, MAX_ERROR_BYTES)],
            )
            .map_err(db)?;
            // Receivable again at once: a waiting receive may take it.
            if n == 1 && delay.is_zero() {
                wake_row(tx, seq_of(rc), woken).map_err(db)?;
            }
            Answer::Done(n == 1)
        }
        Req::Renew(rc, vis) => Answer::Done(
            exec(
                tx,
                "UPDATE queue_messages SET visible_at_ms = ?3 WHERE seq = ?1 AND lease = ?2",
                params![
                    seq_of(rc),
                    rc.lease,
                    sql_ms(now.saturating_add(vis.as_millis() as u64))
                ],
            )
            .map_err(db)?
                == 1,
        ),
        Req::Release(receipts) => {
            for rc in receipts {
                let n = exec(
                    tx,
                    "UPDATE queue_messages SET lease = NULL, visible_at_ms = ?3,
                     dequeue_count = MAX(dequeue_count - 1, 0) WHERE seq = ?1 AND lease = ?2",
                    params![seq_of(rc), rc.lease, now],
                )
                .map_err(db)?;
                // Receivable again at once: a waiting receive may take it.
                if n == 1 {
                    wake_row(tx, seq_of(rc), woken).map_err(db)?;
                }
            }
            Answer::Nothing
        }
        Req::Checkpoint(rc, state) => Answer::Done(
            exec(
                tx,
                "UPDATE queue_messages SET checkpoint = ?3 WHERE seq = ?1 AND lease = ?2",
                params![seq_of(rc), rc.lease, state],
            )
            .map_err(db)?
                == 1,
        ),
        Req::Bury(queue, m, error) => Answer::Id(bury(tx, now, queue, m, error)?),
        Req::Submit(job) => {
            woken.add(&crate::jobs::job_queue(&job.function));
            Answer::Job(submit(tx, now, job)?)
        }
        Req::JobUpdate(id, update) => Answer::Done(job_update(tx, now, id, update)?),
        Req::JobGet(id) => Answer::MaybeJob(job_get(tx, now, id)?),
        Req::PendingCallbacks(max) => Answer::Jobs(pending_callbacks(tx, now, *max)?),
        Req::Stats(queue) => Answer::Stats(stats(tx, now, queue)?),
        // Visits at most `cap` rows, where a full count visits the whole queue.
        Req::Backlog(queue, cap) => Answer::Count(
            tx.prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM queue_messages
                 WHERE queue = ?1 AND (visible_at_ms <= ?2 OR lease IS NOT NULL) LIMIT ?3 + 0)",
            )
            .and_then(|mut s| s.query_row(params![queue, now, sql_ms(*cap)], |r| r.get(0)))
            .map_err(db)?,
        ),
        Req::Pending(queue, cap) => Answer::Count(
            tx.prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM queue_messages WHERE queue = ?1 LIMIT ?2 + 0)",
            )
            .and_then(|mut s| s.query_row(params![queue, sql_ms(*cap)], |r| r.get(0)))
            .map_err(db)?,
        ),
        Req::Queues => Answer::Names(queues(tx)?),
        Req::Peek(queue, max) => Answer::Messages(peek(tx, queue, *max)?),
        Req::DeadLetters(queue, max) => Answer::DeadLetters(dead_letters(tx, queue, *max)?),
        Req::Redrive(queue, ids) => {
            woken.add(queue);
            Answer::Count(redrive(tx, now, queue, ids.as_deref())?)
        }
        Req::PurgeDead(queue, ids) => Answer::Count(purge_dead(tx, queue, ids.as_deref())?),
        Req::Purge(queue) => Answer::Count(
            exec(tx, "DELETE FROM queue_messages WHERE queue = ?1", [queue]).map_err(db)? as u64,
        ),
    })
}

/// Forget expired dedup ids and job records (every thousandth batch).
pub(super) fn tidy(tx: &Transaction<'_>, now: u64) {
    let _ = exec(
        tx,
        "DELETE FROM queue_dedup WHERE expires_at_ms <= ?1",
        [now],
    );
    let _ = exec(tx, "DELETE FROM jobs WHERE expires_at_ms <= ?1", [now]);
}

/// Mark the queue of row `seq` as woken: its message is receivable now.
fn wake_row(tx: &Transaction<'_>, seq: i64, woken: &mut Woken) -> rusqlite::Result<()> {
    let queue: String = tx
        .prepare_cached("SELECT queue FROM queue_messages WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))?;
    woken.add(&queue);
    Ok(())
}

/// Run a statement through the connection's statement cache: the hot
/// statements (ack, lease, retry, renew) are parsed once, not per message.
fn exec<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Store a message straight in `queue`'s dead letters, with `error` as the
/// reason (a change the blob feed cannot deliver, say).
fn bury(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    m: &NewMessage,
    error: &str,
) -> Result<String, QueueError> {
    let id = uuid::Uuid::now_v7().to_string();
    let attributes =
        serde_json::to_string(&m.attributes).map_err(|e| QueueError::Invalid(e.to_string()))?;
    exec(tx,
        "INSERT INTO queue_dead_letters (id, queue, body, attributes, enqueued_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, error, function, dead_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?5)",
        params![id, queue, m.body, attributes, now, m.dedup_id, m.group, m.priority, m.correlation_id, m.reply_to, crate::text::cut(error, MAX_ERROR_BYTES)],
    )
    .map_err(db)?;
    Ok(id)
}

/// Store one message (or, for a dedup id seen in its scope within the
/// window, answer with the first message's id).
pub(super) fn send(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    m: &NewMessage,
) -> Result<Sent, QueueError> {
    let dedup = m.dedup_id.as_ref().map(|id| dedup_key(m, id));
    if let Some(dedup) = &dedup {
        let existing: Option<String> = tx
            .prepare_cached(
                "SELECT message_id FROM queue_dedup WHERE queue = ?1 AND dedup_id = ?2 AND expires_at_ms > ?3",
            )
            .and_then(|mut s| s.query_row(params![queue, dedup, now], |r| r.get(0)).optional())
            .map_err(db)?;
        if let Some(id) = existing {
            return Ok(Sent {
                id,
                duplicate: true,
            });
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let attributes =
        serde_json::to_string(&m.attributes).map_err(|e| QueueError::Invalid(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dedup_id, group_key, priority, correlation_id, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            queue,
            m.body,
            attributes,
            now,
            sql_ms(crate::queue::visible_at(m.delay_ms, m.not_before_ms, now)),
            m.dedup_id,
            m.group,
            m.priority,
            m.correlation_id,
            m.reply_to
        ])
    })
    .map_err(db)?;
    if let Some(dedup) = &dedup {
        exec(tx,
            "INSERT OR REPLACE INTO queue_dedup (queue, dedup_id, message_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![queue, dedup, id, now + DEDUP_WINDOW.as_millis() as u64],
        )
        .map_err(db)?;
    }
    Ok(Sent {
        id,
        duplicate: false,
    })
}

/// A dedup id as stored: in its sender's scope (`<function>/<id>`, or
/// `/<id>` for the admin API and the host), so one function's ids never
/// match another's. Function names cannot hold a `/`.
fn dedup_key(m: &NewMessage, id: &str) -> String {
    format!("{}/{id}", m.dedup_scope.as_deref().unwrap_or(""))
}

/// A time for SQLite's signed 64-bit integers. Times are validated at the
/// edge (at most a year ahead); this only keeps an overflow from failing a
/// statement if one slipped through.
fn sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let attributes: String = r.get(3)?;
    Ok(Message {
        id: r.get(0)?,
        queue: r.get(1)?,
        body: r.get(2)?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        enqueued_at_ms: r.get(4)?,
        visible_at_ms: r.get(5)?,
        dequeue_count: r.get(6)?,
        dedup_id: r.get(7)?,
        group: r.get(8)?,
        priority: r.get(9)?,
        correlation_id: r.get(10)?,
        reply_to: r.get(11)?,
        last_error: r.get(12)?,
        checkpoint: None,
    })
}

/// Receivable messages in delivery order: by priority, then enqueue order;
/// a grouped message only when no earlier message of its group remains.
const READY: &str = "FROM queue_messages m WHERE m.queue = ?1 AND m.visible_at_ms <= ?2
     AND (m.group_key IS NULL OR NOT EXISTS (
         SELECT 1 FROM queue_messages o WHERE o.queue = m.queue AND o.group_key = m.group_key AND o.seq < m.seq))
     ORDER BY m.priority DESC, m.seq LIMIT ?3 + 0";
// (`LIMIT ?3 + 0`, not `LIMIT ?3`: SQLite plans with a bare LIMIT
// parameter's value and so re-prepares the statement whenever it is bound
// to a new value, which cost a re-parse on every receive.)

/// The receive query, built once.
static RECEIVE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {MESSAGE_COLUMNS}, checkpoint, seq {READY}"));

/// A fresh lease token for the row `seq`: the row number first, so a
/// receipt finds its row by primary key (no index on message ids to keep up
/// on every send and ack), then a token unguessable across restarts (a random
/// prefix drawn once) and unique within the process (a counter), made
/// without a syscall per message.
fn lease_token(seq: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        crate::files::hex(&b)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{seq}.{}{:016x}",
        *PREFIX,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The row a receipt names (see [`lease_token`]); a receipt that names none
/// matches no row.
fn seq_of(rc: &Receipt) -> i64 {
    rc.lease
        .split_once('.')
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or(-1)
}

pub(super) fn receive(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    max: usize,
    vis: Duration,
) -> Result<Vec<Delivery>, QueueError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut messages: Vec<(i64, Message)> = {
        let mut stmt = tx.prepare_cached(&RECEIVE).map_err(db)?;
        stmt.query_map(params![queue, now, max as i64], |r| {
            Ok((
                r.get(14)?,
                Message {
                    checkpoint: r.get(13)?,
                    ..row_to_message(r)?
                },
            ))
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?
    };
    let visible_at = now.saturating_add(vis.as_millis() as u64);
    let mut update = tx
        .prepare_cached(
            "UPDATE queue_messages SET visible_at_ms = ?2, dequeue_count = dequeue_count + 1, lease = ?3 WHERE seq = ?1",
        )
        .map_err(db)?;
    let mut out = Vec::with_capacity(messages.len());
    for (seq, mut m) in messages.drain(..) {
        let lease = lease_token(seq);
        update
            .execute(params![seq, visible_at, lease])
            .map_err(db)?;
        m.visible_at_ms = visible_at;
        m.dequeue_count += 1;
        out.push(Delivery {
            receipt: Receipt {
                id: m.id.clone(),
                lease,
            },
            message: m,
        });
    }
    Ok(out)
}

/// Ack or dead-letter a leased message and, only if that happened, send
/// `then`, in the batch's transaction. The sends were validated before they
/// reached the writer, so what can still fail here is the storage itself;
/// such a failure rolls back the whole batch (see `Writer::apply`), so no
/// savepoint is needed (one would cost a statement journal per settlement).
/// The queues of `then`, and the message's own queue when it was grouped (its
/// group's next message is receivable now), are added to `woken`.
fn settle(
    tx: &Transaction<'_>,
    now: u64,
    rc: &Receipt,
    how: &Settlement,
    then: &[(String, NewMessage)],
    woken: &mut Woken,
) -> Result<bool, QueueError> {
    if let Settlement::DeadLetter { error, function } = how {
        let error = crate::text::cut(error, MAX_ERROR_BYTES);
        let moved = exec(
            tx,
            "INSERT INTO queue_dead_letters (id, queue, body, attributes, enqueued_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, error, function, dead_at_ms)
             SELECT id, queue, body, attributes, enqueued_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, ?3, ?4, ?5
             FROM queue_messages WHERE seq = ?1 AND lease = ?2",
            params![seq_of(rc), rc.lease, error, function, now],
        )
        .map_err(db)?;
        if moved == 0 {
            return Ok(false);
        }
    }
    // Looked up, then deleted by row number (both by primary key): a
    // `DELETE ... RETURNING` would build a temporary table per settlement.
    let held: Option<(String, bool)> = tx
        .prepare_cached(
            "SELECT queue, group_key IS NOT NULL FROM queue_messages WHERE seq = ?1 AND lease = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![seq_of(rc), rc.lease], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(db)?;
    let Some((queue, grouped)) = held else {
        return Ok(false);
    };
    exec(
        tx,
        "DELETE FROM queue_messages WHERE seq = ?1",
        [seq_of(rc)],
    )
    .map_err(db)?;
    if grouped {
        woken.add(&queue);
    }
    for (queue, m) in then {
        woken.add(queue);
        send(tx, now, queue, m)?;
    }
    Ok(true)
}

fn stats(tx: &Transaction<'_>, now: u64, queue: &str) -> Result<QueueStats, QueueError> {
    let (ready, delayed, in_flight, oldest): (u64, u64, u64, Option<u64>) = tx
        .prepare_cached(
            "SELECT
                COALESCE(SUM(visible_at_ms <= ?2), 0),
                COALESCE(SUM(visible_at_ms > ?2 AND lease IS NULL), 0),
                COALESCE(SUM(visible_at_ms > ?2 AND lease IS NOT NULL), 0),
                MIN(CASE WHEN visible_at_ms <= ?2 THEN enqueued_at_ms END)
             FROM queue_messages WHERE queue = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![queue, now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
        })
        .map_err(db)?;
    let dead_letters: u64 = tx
        .query_row(
            "SELECT COUNT(*) FROM queue_dead_letters WHERE queue = ?1",
            [queue],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(QueueStats {
        queue: queue.to_string(),
        ready,
        delayed,
        in_flight,
        dead_letters,
        oldest_ready_age_ms: oldest.map(|t| now.saturating_sub(t)),
    })
}

fn queues(tx: &Transaction<'_>) -> Result<Vec<String>, QueueError> {
    let mut stmt = tx
        .prepare("SELECT queue FROM queue_messages UNION SELECT queue FROM queue_dead_letters ORDER BY 1")
        .map_err(db)?;
    let names = stmt
        .query_map([], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    Ok(names)
}

fn peek(tx: &Transaction<'_>, queue: &str, max: usize) -> Result<Vec<Message>, QueueError> {
    let mut stmt = tx
        .prepare(&format!(
            "SELECT {MESSAGE_COLUMNS}, checkpoint FROM queue_messages WHERE queue = ?1 ORDER BY priority DESC, seq LIMIT ?2"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![queue, max as i64], |r| {
            Ok(Message {
                checkpoint: r.get(13)?,
                ..row_to_message(r)?
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn dead_letters(
    tx: &Transaction<'_>,
    queue: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut stmt = tx
        .prepare(
            "SELECT id, queue, body, attributes, enqueued_at_ms, dead_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, error, function
             FROM queue_dead_letters WHERE queue = ?1 ORDER BY dead_at_ms, id LIMIT ?2",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![queue, max as i64], |r| {
            let error: String = r.get(12)?;
            Ok(DeadLetter {
                message: Message {
                    last_error: Some(error.clone()),
                    ..row_to_message(r)?
                },
                attempts: r.get(6)?,
                error,
                function: r.get(13)?,
                dead_at_ms: r.get(5)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// `AND id IN (...)` for an optional id list, with its parameters after `first`.
fn id_filter(ids: Option<&[String]>, first: usize) -> String {
    match ids {
        None => String::new(),
        Some(ids) => {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("?{}", first + i)).collect();
            format!(" AND id IN ({})", marks.join(", "))
        }
    }
}

fn redrive(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    ids: Option<&[String]>,
) -> Result<u64, QueueError> {
    let filter = id_filter(ids, 3);
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&queue, &now];
    for id in ids.unwrap_or_default() {
        values.push(id);
    }
    let moved = tx
        .execute(
            &format!(
                "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dedup_id, group_key, priority, correlation_id, reply_to, last_error)
                 SELECT id, queue, body, attributes, enqueued_at_ms, ?2, dedup_id, group_key, priority, correlation_id, reply_to, error
                 FROM queue_dead_letters WHERE queue = ?1{filter} ORDER BY dead_at_ms, id"
            ),
            values.as_slice(),
        )
        .map_err(db)?;
    values.remove(1);
    exec(
        tx,
        &format!(
            "DELETE FROM queue_dead_letters WHERE queue = ?1{}",
            id_filter(ids, 2)
        ),
        values.as_slice(),
    )
    .map_err(db)?;
    Ok(moved as u64)
}

fn purge_dead(
    tx: &Transaction<'_>,
    queue: &str,
    ids: Option<&[String]>,
) -> Result<u64, QueueError> {
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&queue];
    for id in ids.unwrap_or_default() {
        values.push(id);
    }
    let n = tx
        .execute(
            &format!(
                "DELETE FROM queue_dead_letters WHERE queue = ?1{}",
                id_filter(ids, 2)
            ),
            values.as_slice(),
        )
        .map_err(db)?;
    Ok(n as u64)
}

fn submit(tx: &Transaction<'_>, now: u64, job: &NewJob) -> Result<JobRecord, QueueError> {
    let id = uuid::Uuid::now_v7().to_string();
    let queue = crate::jobs::job_queue(&job.function);
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
    job_get(tx, now, &id)?.ok_or_else(|| QueueError::Backend("the new job vanished".into()))
}

fn job_update(
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

fn job_get(tx: &Transaction<'_>, now: u64, id: &str) -> Result<Option<JobRecord>, QueueError> {
    tx.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)"),
        params![id, now],
        row_to_job,
    )
    .optional()
    .map_err(db)
}

/// Finished jobs whose completion callback is still owed, oldest first.
fn pending_callbacks(
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
