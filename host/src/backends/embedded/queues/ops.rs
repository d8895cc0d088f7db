//! What callers ask of the embedded queue store ([`Req`]), what it answers
//! ([`Answer`]), the two together as the [`Op`] the writer and the reader
//! threads take, and the queues a batch woke ([`Woken`]).

use crate::jobs::{JobRecord, JobUpdate, NewJob};
use crate::queue::{
    DeadLetter, Delivery, Message, NewMessage, QueueError, QueueStats, Receipt, Sent, Settlement,
};
use std::time::Duration;
use tokio::sync::oneshot;

/// What a caller asks of the store.
pub(super) enum Req {
    Send(String, Vec<NewMessage>),
    Receive {
        queue: String,
        max: usize,
        visibility: Duration,
        /// How long to wait for a message when none is receivable.
        wait: Duration,
    },
    /// Settle a delivery, send its replies and, for a job, record its end,
    /// all in one step.
    Settle(
        Receipt,
        Settlement,
        Vec<(String, NewMessage)>,
        Option<(String, JobUpdate)>,
    ),
    Retry(Receipt, Duration, String),
    Renew(Receipt, Duration),
    Checkpoint(Receipt, Vec<u8>),
    /// Leases nobody received: the messages are receivable again at once.
    Release(Vec<Receipt>),
    /// Store a message straight in its queue's dead letters.
    Bury(String, NewMessage, String),
    Submit(NewJob),
    JobUpdate(String, JobUpdate),
    JobGet(String),
    PendingCallbacks(usize),
    Stats(String),
    Backlog(String, u64),
    Pending(String, u64),
    Queues,
    Peek(String, usize),
    DeadLetters(String, usize),
    Redrive(String, Option<Vec<String>>),
    PurgeDead(String, Option<Vec<String>>),
    Purge(String),
}

impl Req {
    /// Reads that are answered by the reader thread: they change nothing and
    /// may visit a whole queue. (`Backlog` and `Pending` stay with the
    /// writer: they are capped, and their callers want them in step with the
    /// leases and settlements.)
    pub(super) fn is_read(&self) -> bool {
        matches!(
            self,
            Req::Stats(..)
                | Req::Peek(..)
                | Req::DeadLetters(..)
                | Req::Queues
                | Req::JobGet(..)
                | Req::PendingCallbacks(..)
        )
    }
}

/// What the store answers; the caller picks the kind it asked for.
pub(super) enum Answer {
    Sent(Vec<Sent>),
    Deliveries(Vec<Delivery>),
    Done(bool),
    Nothing,
    Id(String),
    Job(JobRecord),
    MaybeJob(Option<JobRecord>),
    Jobs(Vec<JobRecord>),
    Stats(QueueStats),
    Count(u64),
    Names(Vec<String>),
    Messages(Vec<Message>),
    DeadLetters(Vec<DeadLetter>),
}

/// A request and where its answer goes.
pub(super) struct Op {
    pub(super) req: Req,
    pub(super) reply: oneshot::Sender<Result<Answer, QueueError>>,
}

impl Op {
    /// A request nobody waits for (leases given back).
    pub(super) fn unanswered(req: Req) -> Op {
        Op {
            req,
            reply: oneshot::channel().0,
        }
    }

    /// Answer, handing back a committed answer nobody is left to take.
    pub(super) fn answer(self, result: Result<Answer, QueueError>) -> Option<Answer> {
        match self.reply.send(result) {
            Err(Ok(unheard)) => Some(unheard),
            _ => None,
        }
    }
}

/// Queues in which a batch may have made messages receivable: the parked
/// receives of these (and only these) look again before the commit.
#[derive(Default)]
pub(super) struct Woken(pub(super) Vec<String>);

impl Woken {
    pub(super) fn add(&mut self, queue: &str) {
        if !self.0.iter().any(|q| q == queue) {
            self.0.push(queue.to_string());
        }
    }

    pub(super) fn has(&self, queue: &str) -> bool {
        self.0.iter().any(|q| q == queue)
    }
}
