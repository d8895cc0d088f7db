//! Deletes on SQS in batches, without waiting to fill one: a delete that
//! finds none in flight for its queue goes at once; those that arrive
//! while it is in flight go together when it returns, up to 10 per
//! `DeleteMessageBatch`. At low load every delete is one call with no added
//! wait; under load, one call acknowledges up to 10 messages. Each delete
//! gets its own answer: a failed entry fails only its own settlement.

use super::sqs_error;
use crate::queue::QueueError;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most entries SQS takes in one `DeleteMessageBatch`.
const MAX_BATCH: usize = 10;

type Answer = oneshot::Sender<Result<bool, QueueError>>;
/// Deletes waiting, by queue URL.
type Waiting = HashMap<String, Vec<(String, Answer)>>;

/// Deletes waiting for each queue (by URL); a queue with an entry has a
/// task sending them.
#[derive(Clone)]
pub(super) struct Deletes {
    client: aws_sdk_sqs::Client,
    waiting: Arc<Mutex<Waiting>>,
}

impl Deletes {
    pub(super) fn new(client: aws_sdk_sqs::Client) -> Deletes {
        Deletes {
            client,
            waiting: Default::default(),
        }
    }

    /// Delete the message `handle` names from the queue at `url`: false
    /// when SQS says the handle is no longer valid.
    pub(super) async fn delete(&self, url: &str, handle: &str) -> Result<bool, QueueError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            match waiting.get_mut(url) {
                Some(queue) => {
                    queue.push((handle.to_string(), tx));
                    None
                }
                None => {
                    waiting.insert(url.to_string(), Vec::new());
                    Some(vec![(handle.to_string(), tx)])
                }
            }
        };
        if let Some(first) = start {
            // A task of its own: a settlement dropped half-way cannot leave
            // the queue's deletes without a sender.
            let this = self.clone();
            let url = url.to_string();
            tokio::spawn(async move { this.run(url, first).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(QueueError::backend("the delete was dropped")))
    }

    /// Send `batch`, then whatever arrived meanwhile, until none is left.
    async fn run(&self, url: String, mut batch: Vec<(String, Answer)>) {
        loop {
            self.send(&url, batch).await;
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let queue = waiting.entry(url.clone()).or_default();
            if queue.is_empty() {
                waiting.remove(&url);
                return;
            }
            let n = queue.len().min(MAX_BATCH);
            batch = queue.drain(..n).collect();
        }
    }

    async fn send(&self, url: &str, batch: Vec<(String, Answer)>) {
        if let [(handle, _)] = batch.as_slice() {
            let answer = self.one(url, handle).await;
            if let Some((_, tx)) = batch.into_iter().next() {
                let _ = tx.send(answer);
            }
            return;
        }
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, (handle, _))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .map_err(|e| QueueError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>();
        let out = match entries {
            Ok(entries) => self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sqs_error("cannot delete messages", e)),
            Err(e) => Err(e),
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut answers: Vec<Option<Result<bool, QueueError>>> = vec![None; batch.len()];
        for ok in out.successful() {
            if let Some(a) = ok
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| answers.get_mut(i))
            {
                *a = Some(Ok(true));
            }
        }
        for failed in out.failed() {
            let answer = if failed.code() == "ReceiptHandleIsInvalid" {
                Ok(false)
            } else {
                Err(QueueError::backend(format!(
                    "cannot delete a message: SQS answered {}: {}",
                    failed.code(),
                    crate::text::cut(failed.message().unwrap_or(""), 512)
                )))
            };
            if let Some(a) = failed
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| answers.get_mut(i))
            {
                *a = Some(answer);
            }
        }
        for ((_, tx), answer) in batch.into_iter().zip(answers) {
            let _ = tx.send(answer.unwrap_or_else(|| {
                Err(QueueError::backend(
                    "SQS did not answer for one message of a delete batch",
                ))
            }));
        }
    }

    async fn one(&self, url: &str, handle: &str) -> Result<bool, QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(handle)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sqs_error("cannot delete a message", e)),
        }
    }
}
