//! Two queue backends as one: the host's own queues (async jobs, blob
//! changes, timer ticks: `fnhost-…`) on one, the users' queues on the
//! other. A host whose user queues are on SQS keeps its own queues in its
//! embedded store, where a job and its record are one transaction.
//! Receipts say which backend leased them.

use crate::queue::{
    DeadLetter, Delivery, Message, NewMessage, QueueBackend, QueueError, QueueFeatures, QueueStats,
    Receipt, Sent, Settlement,
};
use crate::queue::{QueueAdmin, QueueDelivery};
use crate::task::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Host queues on `host`, user queues on `user` (and the job and timer
/// queues too, for a fleet).
pub struct RoutedQueues {
    /// The host's own queues.
    pub host: Arc<dyn QueueBackend>,
    /// Everything else.
    pub user: Arc<dyn QueueBackend>,
    /// Job queues (`fnhost-jobs-…`) and timer queues (`fnhost-timer-…`)
    /// go to `user` as well, so that any host of a fleet can take them.
    pub fleet: bool,
    /// Blob triggers' queues (`fnhost-blob-…`) go to `user` as well (the
    /// buckets are on S3, whose events any host may feed).
    pub blob_queues: bool,
}

const HOST: &str = "h:";
const USER: &str = "u:";

impl RoutedQueues {
    /// Does `queue` live on the host side?
    fn on_host(&self, queue: &str) -> bool {
        crate::names::is_host_queue(queue)
            && !(self.fleet
                && (crate::names::job_function(queue).is_some()
                    || crate::names::timer_function(queue).is_some()))
            && !(self.blob_queues && crate::names::blob_function(queue).is_some())
    }

    fn of(&self, queue: &str) -> (&dyn QueueBackend, &'static str) {
        if self.on_host(queue) {
            (self.host.as_ref(), HOST)
        } else {
            (self.user.as_ref(), USER)
        }
    }

    /// The backend a receipt came from, and the receipt as it gave it.
    fn unwrap(&self, receipt: Receipt) -> Result<(&dyn QueueBackend, Receipt), QueueError> {
        let (backend, lease) = if let Some(l) = receipt.lease.strip_prefix(HOST) {
            (self.host.as_ref(), l.to_string())
        } else if let Some(l) = receipt.lease.strip_prefix(USER) {
            (self.user.as_ref(), l.to_string())
        } else {
            return Err(QueueError::Invalid(
                "a receipt from no known backend".into(),
            ));
        };
        Ok((
            backend,
            Receipt {
                id: receipt.id,
                lease,
            },
        ))
    }
}

fn err<'a, T: Send + 'a>(e: QueueError) -> BoxFuture<'a, Result<T, QueueError>> {
    Box::pin(async move { Err(e) })
}

/// A receive's deliveries, their receipts tagged with the backend they came from.
fn tagged<'a>(
    tag: &'static str,
    receiving: BoxFuture<'a, Result<Vec<Delivery>, QueueError>>,
) -> BoxFuture<'a, Result<Vec<Delivery>, QueueError>> {
    Box::pin(async move {
        let mut got = receiving.await?;
        for d in &mut got {
            d.receipt.lease = format!("{tag}{}", d.receipt.lease);
        }
        Ok(got)
    })
}

#[deny(clippy::missing_trait_methods)]
impl QueueDelivery for RoutedQueues {
    fn features(&self, queue: &str) -> QueueFeatures {
        self.of(queue).0.features(queue)
    }

    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        self.of(queue).0.send(queue, msg)
    }

    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>> {
        self.of(queue).0.send_batch(queue, msgs)
    }

    fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        let (backend, tag) = self.of(queue);
        tagged(tag, backend.receive(queue, max, visibility))
    }

    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        let (backend, tag) = self.of(queue);
        tagged(tag, backend.receive_waiting(queue, max, visibility, wait))
    }

    fn ack(&self, receipt: Receipt) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            Ok((b, r)) => b.ack(r),
            Err(e) => err(e),
        }
    }

    fn dead_letter(
        &self,
        receipt: Receipt,
        error: String,
        function: Option<String>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            Ok((b, r)) => b.dead_letter(r, error, function),
            Err(e) => err(e),
        }
    }

    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            // Replies go to the backend of their own queue, then the settlement.
            Ok((backend, receipt))
                if then
                    .iter()
                    .all(|(q, _)| self.of(q).1 == self.of_tag(backend)) =>
            {
                backend.settle(receipt, how, then)
            }
            Ok((backend, receipt)) => {
                let sends: Vec<_> = then
                    .into_iter()
                    .map(|(q, m)| self.of(&q).0.send(&q, m))
                    .collect();
                let settling = async move {
                    for s in sends {
                        s.await?;
                    }
                    backend.settle(receipt, how, Vec::new()).await
                };
                Box::pin(settling)
            }
            Err(e) => err(e),
        }
    }

    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            Ok((b, r)) => b.retry(r, delay, error),
            Err(e) => err(e),
        }
    }

    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>> {
        let mut host = Vec::new();
        let mut user = Vec::new();
        for r in receipts {
            match self.unwrap(r) {
                Ok((b, r)) if std::ptr::addr_eq(b, self.host.as_ref()) => host.push(r),
                Ok((_, r)) => user.push(r),
                Err(e) => return err(e),
            }
        }
        let (h, u) = (self.host.release(host), self.user.release(user));
        Box::pin(async move {
            h.await?;
            u.await
        })
    }

    fn checkpoint(
        &self,
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            Ok((b, r)) => b.checkpoint(r, state),
            Err(e) => err(e),
        }
    }

    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.unwrap(receipt) {
            Ok((b, r)) => b.renew(r, visibility),
            Err(e) => err(e),
        }
    }

    fn bury(
        &self,
        queue: &str,
        msg: NewMessage,
        error: String,
    ) -> BoxFuture<'_, Result<String, QueueError>> {
        self.of(queue).0.bury(queue, msg, error)
    }

    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.of(queue).0.backlog(queue, cap)
    }

    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.of(queue).0.pending(queue, cap)
    }
}

#[deny(clippy::missing_trait_methods)]
impl QueueAdmin for RoutedQueues {
    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.of(queue).0.stats(queue)
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        let (h, u) = (self.host.queues(), self.user.queues());
        Box::pin(async move {
            let mut names: Vec<String> = h
                .await?
                .into_iter()
                .filter(|q| crate::names::is_host_queue(q))
                .collect();
            names.extend(
                u.await?
                    .into_iter()
                    .filter(|q| !crate::names::is_host_queue(q)),
            );
            names.sort();
            Ok(names)
        })
    }

    fn peek(&self, queue: &str, max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>> {
        self.of(queue).0.peek(queue, max)
    }

    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        self.of(queue).0.dead_letters(queue, max)
    }

    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.of(queue).0.redrive(queue, ids)
    }

    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.of(queue).0.purge_dead_letters(queue, ids)
    }

    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.of(queue).0.purge(queue)
    }
}

impl RoutedQueues {
    /// The lease tag of a backend of this router.
    fn of_tag(&self, backend: &dyn QueueBackend) -> &'static str {
        if std::ptr::addr_eq(backend, self.host.as_ref()) {
            HOST
        } else {
            USER
        }
    }
}

/// Job records in a store that keeps the host's own queues, whose replies
/// may go to user queues elsewhere (on SQS): those replies are sent first,
/// then the job's settlement and record, in the job store's one step.
pub struct RoutedJobs {
    /// The job records (and the job queues).
    pub store: Arc<dyn crate::jobs::JobStore>,
    /// Every queue, for the replies.
    pub queues: Arc<dyn QueueBackend>,
}

impl crate::jobs::JobStore for RoutedJobs {
    fn submit(
        &self,
        job: crate::jobs::NewJob,
    ) -> BoxFuture<'_, Result<crate::jobs::JobRecord, QueueError>> {
        self.store.submit(job)
    }

    fn update(
        &self,
        id: String,
        update: crate::jobs::JobUpdate,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.store.update(id, update)
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<crate::jobs::JobRecord>, QueueError>> {
        self.store.get(id)
    }

    fn settle_job(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
        id: String,
        update: crate::jobs::JobUpdate,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        if then.iter().all(|(q, _)| crate::names::is_host_queue(q)) {
            return self.store.settle_job(receipt, how, then, id, update);
        }
        let sends: Vec<_> = then
            .into_iter()
            .map(|(q, m)| self.queues.send(&q, m))
            .collect();
        Box::pin(async move {
            for s in sends {
                s.await?;
            }
            self.store
                .settle_job(receipt, how, Vec::new(), id, update)
                .await
        })
    }

    fn pending_callbacks(
        &self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<crate::jobs::JobRecord>, QueueError>> {
        self.store.pending_callbacks(max)
    }
}
