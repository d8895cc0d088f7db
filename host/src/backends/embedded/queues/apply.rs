//! Apply one request to the store inside a transaction: the dispatch from
//! a [`Req`] to the SQL of messages ([`super::messages`]) and job records
//! ([`super::jobs`]). Knows nothing of batching or threads.

use super::jobs;
use super::messages::{self, db, exec, seq_of, sql_ms, wake_row};
use super::ops::{Answer, Req, Woken};
use crate::queue::{MAX_ERROR_BYTES, QueueError};
use rusqlite::{Transaction, params};

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
                    .map(|m| messages::send(tx, now, queue, m))
                    .collect::<Result<_, _>>()?,
            )
        }
        Req::Receive {
            queue,
            max,
            visibility,
            ..
        } => Answer::Deliveries(messages::receive(tx, now, queue, *max, *visibility)?),
        Req::Settle(rc, how, then, job) => {
            let settled = messages::settle(tx, now, rc, how, then, woken)?;
            if settled && let Some((id, update)) = job {
                jobs::update(tx, now, id, update)?;
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
        Req::Bury(queue, m, error) => Answer::Id(messages::bury(tx, now, queue, m, error)?),
        Req::Submit(job) => {
            woken.add(&crate::names::job_queue(&job.function));
            Answer::Job(jobs::submit(tx, now, job)?)
        }
        Req::JobUpdate(id, update) => Answer::Done(jobs::update(tx, now, id, update)?),
        Req::JobGet(id) => Answer::MaybeJob(jobs::get(tx, now, id)?),
        Req::PendingCallbacks(max) => Answer::Jobs(jobs::pending_callbacks(tx, now, *max)?),
        Req::Stats(queue) => Answer::Stats(messages::stats(tx, now, queue)?),
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
        Req::Queues => Answer::Names(messages::queues(tx)?),
        Req::Peek(queue, max) => Answer::Messages(messages::peek(tx, queue, *max)?),
        Req::DeadLetters(queue, max) => {
            Answer::DeadLetters(messages::dead_letters(tx, queue, *max)?)
        }
        Req::Redrive(queue, ids) => {
            woken.add(queue);
            Answer::Count(messages::redrive(tx, now, queue, ids.as_deref())?)
        }
        Req::PurgeDead(queue, ids) => {
            Answer::Count(messages::purge_dead(tx, queue, ids.as_deref())?)
        }
        Req::Purge(queue) => Answer::Count(
            exec(tx, "DELETE FROM queue_messages WHERE queue = ?1", [queue]).map_err(db)? as u64,
        ),
    })
}
