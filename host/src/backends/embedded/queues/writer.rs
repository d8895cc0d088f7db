//! The embedded queue store's writer thread: requests in, group commits
//! out; waiting receives parked and served in the batch that makes messages
//! receivable; and the reader thread for whole-queue reads.
//!
//! A batch is one transaction. If any of its operations fails (a bad value
//! the edge missed, a storage error), the batch is rolled back and applied
//! again in two halves, each in its own transaction, down to the one
//! operation at fault: it alone hears its error, and every other caller of
//! the batch gets its answer as if nothing had happened. A commit that fails
//! fails every operation of its batch (nothing of it is on disk).

use super::ops::{Answer, Op, Req, Woken};
use super::{apply, messages};
use crate::clock::Clock;
use crate::queue::{Delivery, MAX_WAIT, QueueError, Receipt};
use rusqlite::{Connection, Transaction};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most operations applied in one transaction.
pub const MAX_BATCH: usize = 2048;

/// The writer thread's state.
pub(super) struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    /// Receives waiting for messages, in the order they began waiting.
    parked: Vec<Parked>,
    /// Leases committed for receivers that had gone, to give back.
    orphans: Vec<Receipt>,
    batches: u64,
}

/// A receive that found nothing and waits, until `until`, for messages.
struct Parked {
    op: Op,
    until: Instant,
}

impl Parked {
    fn queue(&self) -> &str {
        match &self.op.req {
            Req::Receive { queue, .. } => queue,
            _ => "",
        }
    }
}

/// Which waiting receive a batch served: one parked before it, or one of
/// its own operations that found nothing at first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Parked(usize),
    New(usize),
}

/// What a committed batch answers: per operation its result, or `None` for
/// a receive to park; and the leases it gave to waiting receives.
struct Applied {
    answers: Vec<Option<Result<Answer, QueueError>>>,
    served: Vec<(Waiter, Vec<Delivery>)>,
}

/// Why a batch was not committed.
enum Undone {
    /// An operation failed (or SQLite rolled the transaction back after
    /// it): the others may succeed without it.
    Op(QueueError),
    /// The transaction could not begin or commit: nothing can.
    Store(QueueError),
}

impl Writer {
    pub(super) fn new(conn: Connection, clock: Arc<dyn Clock>) -> Writer {
        Writer {
            conn,
            clock,
            parked: Vec::new(),
            orphans: Vec::new(),
            batches: 0,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            // Wait for an operation, or until the first parked receive is due.
            let first = match self.parked.iter().map(|p| p.until).min() {
                None => match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                },
                Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut ops: Vec<Op> = first.into_iter().collect();
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.expire();
            if !ops.is_empty() {
                self.apply(ops);
            }
            // Leases whose receiver had gone by the time they were committed
            // (a worker stopping): give the messages back now rather than
            // after their visibility timeout.
            if !self.orphans.is_empty() {
                let receipts = std::mem::take(&mut self.orphans);
                self.apply(vec![Op::unanswered(Req::Release(receipts))]);
            }
        }
    }

    /// Answer the parked receives whose wait is over with nothing (their
    /// callers look again, and see delayed messages that have come due),
    /// and forget those whose callers have gone.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut kept = Vec::with_capacity(self.parked.len());
        for p in self.parked.drain(..) {
            if p.op.reply.is_closed() {
                continue;
            }
            if p.until <= now {
                p.op.answer(Ok(Answer::Deliveries(Vec::new())));
            } else {
                kept.push(p);
            }
        }
        self.parked = kept;
    }

    /// [`Writer::apply`], for tests that need several operations in one batch.
    #[cfg(test)]
    pub(super) fn apply_for_test(&mut self, ops: Vec<Op>) {
        self.apply(ops);
    }

    /// Apply `ops` in one transaction; if one of them fails, in halves.
    fn apply(&mut self, ops: Vec<Op>) {
        let now = self.clock.now_ms();
        self.batches += 1;
        let tidy = self.batches.is_multiple_of(1000);
        match attempt(&mut self.conn, now, &ops, &self.parked, tidy) {
            Ok(applied) => self.answer(ops, applied),
            Err(Undone::Op(e)) if ops.len() == 1 => {
                for op in ops {
                    op.answer(Err(e.clone()));
                }
            }
            Err(Undone::Op(_)) => {
                let mut first = ops;
                let second = first.split_off(first.len() / 2);
                self.apply(first);
                self.apply(second);
            }
            Err(Undone::Store(e)) => {
                let e = QueueError::Backend {
                    message: format!(
                        "a batch of queue operations could not be committed ({e}); retry"
                    ),
                    source: Some(std::sync::Arc::new(e)),
                };
                for op in ops {
                    op.answer(Err(e.clone()));
                }
            }
        }
    }

    /// Send a committed batch's answers, park its receives that found
    /// nothing, and hand waiting receives what the batch leased to them.
    fn answer(&mut self, ops: Vec<Op>, applied: Applied) {
        let Applied { answers, served } = applied;
        let mut served_new: Vec<Option<Vec<Delivery>>> = (0..ops.len()).map(|_| None).collect();
        let mut served_old: Vec<Option<Vec<Delivery>>> =
            (0..self.parked.len()).map(|_| None).collect();
        for (waiter, deliveries) in served {
            match waiter {
                Waiter::Parked(i) => served_old[i] = Some(deliveries),
                Waiter::New(i) => served_new[i] = Some(deliveries),
            }
        }
        let parked = std::mem::take(&mut self.parked);
        for (p, deliveries) in parked.into_iter().zip(served_old) {
            match deliveries {
                Some(d) => self.deliver(p.op, d),
                None => self.parked.push(p),
            }
        }
        for ((op, answer), deliveries) in ops.into_iter().zip(answers).zip(served_new) {
            match (answer, deliveries) {
                (_, Some(d)) => self.deliver(op, d),
                (Some(result), None) => {
                    if let Some(Answer::Deliveries(d)) = op.answer(result) {
                        self.orphans.extend(d.into_iter().map(|d| d.receipt));
                    }
                }
                (None, None) => {
                    let wait = match &op.req {
                        Req::Receive { wait, .. } => *wait,
                        _ => Duration::ZERO,
                    };
                    let until = Instant::now() + wait.min(MAX_WAIT);
                    self.parked.push(Parked { op, until });
                }
            }
        }
    }

    /// Answer a receive with its leases; leases nobody takes are given back.
    fn deliver(&mut self, op: Op, deliveries: Vec<Delivery>) {
        if let Some(Answer::Deliveries(d)) = op.answer(Ok(Answer::Deliveries(deliveries))) {
            self.orphans.extend(d.into_iter().map(|d| d.receipt));
        }
    }
}

/// Apply `ops` in one transaction at `now` and commit. Receives that find
/// nothing and may wait are left to park (`None`); after the operations,
/// the receives waiting on queues the batch made receivable (the `parked`
/// ones first, in the order they began waiting, then this batch's) are
/// leased what is there, in the same transaction.
fn attempt(
    conn: &mut Connection,
    now: u64,
    ops: &[Op],
    parked: &[Parked],
    tidy: bool,
) -> Result<Applied, Undone> {
    let tx = conn
        .transaction()
        .map_err(|e| Undone::Store(messages::db(e)))?;
    let mut woken = Woken::default();
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        let answer = match &op.req {
            Req::Receive {
                queue,
                max,
                visibility,
                wait,
            } => match messages::receive(&tx, now, queue, *max, *visibility) {
                Ok(found) if found.is_empty() && !wait.is_zero() => None,
                found => Some(found.map(Answer::Deliveries)),
            },
            req => Some(apply::run(&tx, now, req, &mut woken)),
        };
        if let Some(Err(e)) = &answer {
            return Err(Undone::Op(e.clone()));
        }
        if tx.is_autocommit() {
            return Err(Undone::Op(QueueError::backend(
                "the store rolled the transaction back",
            )));
        }
        answers.push(answer);
    }
    let mut served = Vec::new();
    if !woken.0.is_empty() {
        let waiting = parked
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.op.reply.is_closed() && woken.has(p.queue()))
            .map(|(i, p)| (Waiter::Parked(i), &p.op.req));
        let new = ops
            .iter()
            .enumerate()
            .filter(|(i, op)| answers[*i].is_none() && !op.reply.is_closed())
            .map(|(i, op)| (Waiter::New(i), &op.req));
        for (waiter, req) in waiting.chain(new) {
            let Req::Receive {
                queue,
                max,
                visibility,
                ..
            } = req
            else {
                continue;
            };
            if !woken.has(queue) {
                continue;
            }
            let found =
                messages::receive(&tx, now, queue, *max, *visibility).map_err(Undone::Op)?;
            if !found.is_empty() {
                served.push((waiter, found));
            }
        }
    }
    if tidy {
        messages::tidy(&tx, now);
    }
    if tx.is_autocommit() {
        return Err(Undone::Op(QueueError::backend(
            "the store rolled the transaction back",
        )));
    }
    tx.commit().map_err(|e| Undone::Store(messages::db(e)))?;
    Ok(Applied { answers, served })
}

/// The reader thread: one read at a time, each in its own read transaction
/// (so a stats call's two counts agree), answered at once.
pub(super) fn read_loop(mut conn: Connection, clock: Arc<dyn Clock>, rx: mpsc::Receiver<Op>) {
    while let Ok(op) = rx.recv() {
        let answer = match conn.transaction() {
            Ok(tx) => {
                let answer = read(&tx, clock.now_ms(), &op.req);
                drop(tx);
                answer
            }
            Err(e) => Err(messages::db(e)),
        };
        op.answer(answer);
    }
}

fn read(tx: &Transaction<'_>, now: u64, req: &Req) -> Result<Answer, QueueError> {
    apply::run(tx, now, req, &mut Woken::default())
}
