//! The SQL of each message operation (send, lease, settle, retry, stats,
//! dead letters, ...), applied inside the caller's transaction (the
//! writer's batch, or the reader's snapshot). Every time a caller gave is
//! stored saturated to SQLite's integer range, every error text cut to
//! [`MAX_ERROR_BYTES`]. Knows nothing of batching, threads or job records.

use super::ops::Woken;
use crate::queue::{
    DEDUP_WINDOW, DeadLetter, Delivery, MAX_ERROR_BYTES, Message, NewMessage, QueueError,
    QueueStats, Receipt, Sent, Settlement,
};
use rusqlite::{OptionalExtension, Transaction, params};
use std::time::Duration;

pub(super) const MESSAGE_COLUMNS: &str = "id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, last_error";

pub(super) fn db(e: rusqlite::Error) -> QueueError {
    QueueError::caused_by(e)
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
pub(super) fn wake_row(tx: &Transaction<'_>, seq: i64, woken: &mut Woken) -> rusqlite::Result<()> {
    let queue: String = tx
        .prepare_cached("SELECT queue FROM queue_messages WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))?;
    woken.add(&queue);
    Ok(())
}

/// Run a statement through the connection's statement cache: the hot
/// statements (ack, lease, retry, renew) are parsed once, not per message.
pub(super) fn exec<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Store a message straight in `queue`'s dead letters, with `error` as the
/// reason (a change the blob feed cannot deliver, say).
pub(super) fn bury(
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
pub(super) fn sql_ms(ms: u64) -> i64 {
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

/// The random part of this process's lease tokens (see [`lease_token`]).
static LEASE_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Draw this process's lease prefix, once; a store opens only with one.
/// Without the OS's randomness the prefix would be guessable (zeros), and
/// a lease token must not be: refused, with the reason.
pub(super) fn draw_lease_prefix() -> Result<(), QueueError> {
    if LEASE_PREFIX.get().is_some() {
        return Ok(());
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| {
        QueueError::backend(format!(
            "cannot draw the random part of lease tokens from the operating system ({e}); the queue store does not open without it"
        ))
    })?;
    // Two stores opening at once: either draw serves.
    let _ = LEASE_PREFIX.set(crate::files::hex(&b));
    Ok(())
}

/// A fresh lease token for the row `seq`: the row number first, so a
/// receipt finds its row by primary key (no index on message ids to keep up
/// on every send and ack), then a token unguessable across restarts (a random
/// prefix drawn when the store opened) and unique within the process (a
/// counter), made without a syscall per message.
fn lease_token(seq: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = LEASE_PREFIX
        .get()
        .expect("the lease prefix is drawn when the store opens");
    format!(
        "{seq}.{prefix}{:016x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The row a receipt names (see [`lease_token`]); a receipt that names none
/// matches no row.
pub(super) fn seq_of(rc: &Receipt) -> i64 {
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
pub(super) fn settle(
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

pub(super) fn stats(tx: &Transaction<'_>, now: u64, queue: &str) -> Result<QueueStats, QueueError> {
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

pub(super) fn queues(tx: &Transaction<'_>) -> Result<Vec<String>, QueueError> {
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

pub(super) fn peek(
    tx: &Transaction<'_>,
    queue: &str,
    max: usize,
) -> Result<Vec<Message>, QueueError> {
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

pub(super) fn dead_letters(
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

pub(super) fn redrive(
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

pub(super) fn purge_dead(
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
