//! Async jobs for a fleet: each record is a document in a [`StateStore`]
//! (`jobs/<id>.json`, on S3 every host sees the same), each job a message
//! on the function's job queue of a [`QueueBackend`] (on SQS whichever
//! host is free takes it), naming its job in the `fnhost-job` attribute.
//!
//! No transaction spans the two, so the order carries the guarantees:
//! - submit writes the record, then sends the message (a failed send
//!   deletes the record again: the caller hears the error);
//! - a job's end is written to its record first, then its message is
//!   settled; a host dying in between leaves a finished record and a
//!   message that comes back, which the worker acknowledges without
//!   running the job again (see `triggers::queue::settle`);
//! - a callback owed is marked (`callbacks/<id>`) with the end, and the
//!   mark is removed once the callback is delivered or given up on.
//!
//! Updates are read-modify-write with the store's compare-and-swap, so two
//! hosts updating one record (a late renewal, a progress report) never
//! lose each other's change. Expired records read as gone; the documents
//! themselves are left to the bucket's lifecycle rule (see the README).

use super::{JobRecord, JobState, JobStore, JobUpdate, NewJob};
use crate::clock::Clock;
use crate::queue::{NewMessage, QueueBackend, QueueError, Receipt, Settlement};
use crate::state::{StateError, StateStore, Write};
use crate::task::BoxFuture;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Job records in a state store, job messages on a queue backend.
pub struct SharedJobs {
    /// Where records live.
    pub state: Arc<dyn StateStore>,
    /// Where job messages (and replies) go.
    pub queues: Arc<dyn QueueBackend>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// A record as stored: the record, its result body, and whether a
/// callback is owed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doc {
    #[serde(flatten)]
    record: JobRecord,
    /// The result body, base64.
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    callback_pending: bool,
}

fn record_key(id: &str) -> String {
    format!("jobs/{id}.json")
}

fn callback_key(id: &str) -> String {
    format!("callbacks/{id}")
}

fn state_error(e: StateError) -> QueueError {
    match e {
        StateError::Invalid(m) => QueueError::Invalid(m),
        e => QueueError::Backend {
            message: e.to_string(),
            source: Some(Arc::new(e)),
        },
    }
}

impl Doc {
    fn to_record(&self) -> JobRecord {
        let mut r = self.record.clone();
        r.result = self
            .body
            .as_ref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        r
    }

    /// Apply `update` at `now`, as the embedded store's SQL does.
    fn apply(&mut self, update: &JobUpdate, now: u64) {
        let r = &mut self.record;
        match update {
            JobUpdate::Started { attempt } => {
                r.state = JobState::Running;
                r.attempts = *attempt;
                r.started_at_ms.get_or_insert(now);
            }
            JobUpdate::Progress { percent, message } => {
                r.progress = Some(*percent);
                r.progress_message = Some(message.clone());
            }
            JobUpdate::Retrying { error } => {
                r.state = JobState::Queued;
                r.error = Some(crate::text::cut(error, crate::queue::MAX_ERROR_BYTES).to_string());
            }
            JobUpdate::Finished {
                state,
                output,
                error,
                retention_ms,
            } => {
                r.state = *state;
                r.result_status = output.as_ref().map(|o| o.status);
                r.result_headers = output
                    .as_ref()
                    .map(|o| o.headers.clone())
                    .unwrap_or_default();
                self.body = output
                    .as_ref()
                    .map(|o| base64::engine::general_purpose::STANDARD.encode(&o.body));
                r.error = error
                    .as_deref()
                    .map(|e| crate::text::cut(e, crate::queue::MAX_ERROR_BYTES).to_string());
                r.finished_at_ms = Some(now);
                r.expires_at_ms = Some(now.saturating_add(*retention_ms));
                if *state == JobState::Succeeded {
                    r.progress = Some(100);
                }
                self.callback_pending = r.callback_url.is_some();
            }
            JobUpdate::CallbackDone => self.callback_pending = false,
        }
    }
}

impl SharedJobs {
    async fn load(&self, id: &str) -> Result<Option<(Doc, String)>, QueueError> {
        let Some(v) = self.state.get(&record_key(id)).await.map_err(state_error)? else {
            return Ok(None);
        };
        let doc: Doc = serde_json::from_slice(&v.bytes).map_err(|e| {
            QueueError::backend(format!("the record of job {id} is unreadable: {e}"))
        })?;
        Ok(Some((doc, v.version)))
    }

    /// Read, update and write back the record of `id`, again on a
    /// conflict; false when there is no record.
    async fn change(&self, id: &str, update: &JobUpdate) -> Result<bool, QueueError> {
        for _ in 0..16 {
            let Some((mut doc, version)) = self.load(id).await? else {
                return Ok(false);
            };
            let was_pending = doc.callback_pending;
            doc.apply(update, self.clock.now_ms());
            let bytes = serde_json::to_vec(&doc).map_err(|e| QueueError::backend(e.to_string()))?;
            match self
                .state
                .put(&record_key(id), bytes, Write::Replace(version))
                .await
            {
                Ok(_) => {
                    if doc.callback_pending && !was_pending {
                        self.state
                            .put(&callback_key(id), Vec::new(), Write::Overwrite)
                            .await
                            .map_err(state_error)?;
                    } else if !doc.callback_pending && was_pending {
                        self.state
                            .delete(&callback_key(id))
                            .await
                            .map_err(state_error)?;
                    }
                    return Ok(true);
                }
                Err(StateError::Conflict(_)) => continue,
                Err(e) => return Err(state_error(e)),
            }
        }
        Err(QueueError::Throttled {
            message: format!("the record of job {id} kept changing under 16 updates"),
            source: None,
        })
    }
}

impl JobStore for SharedJobs {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<JobRecord, QueueError>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            crate::queue::check_schedule(job.delay_ms, job.not_before_ms, now)?;
            let id = uuid::Uuid::now_v7().to_string();
            let visible_at = crate::queue::visible_at(job.delay_ms, job.not_before_ms, now);
            let record = JobRecord {
                id: id.clone(),
                function: job.function.clone(),
                state: JobState::Queued,
                attempts: 0,
                progress: None,
                progress_message: None,
                result_status: None,
                result_headers: Vec::new(),
                result: None,
                error: None,
                created_at_ms: now,
                started_at_ms: None,
                finished_at_ms: None,
                expires_at_ms: None,
                callback_url: job.callback_url.clone(),
                reply_to: job.reply_to.clone(),
                correlation_id: job.correlation_id.clone(),
                not_before_ms: (visible_at > now).then_some(visible_at),
            };
            let doc = Doc {
                record: record.clone(),
                body: None,
                callback_pending: false,
            };
            let bytes = serde_json::to_vec(&doc).map_err(|e| QueueError::backend(e.to_string()))?;
            self.state
                .put(&record_key(&id), bytes, Write::Create)
                .await
                .map_err(state_error)?;
            let message = NewMessage {
                body: job.payload,
                attributes: vec![(super::JOB_ATTRIBUTE.into(), id.clone())],
                delay_ms: job.delay_ms,
                not_before_ms: job.not_before_ms,
                correlation_id: job.correlation_id,
                reply_to: job.reply_to,
                ..NewMessage::default()
            };
            let queue = crate::names::job_queue(&job.function);
            if let Err(e) = self.queues.send(&queue, message).await {
                // The record without its message would say "queued" forever.
                if let Err(forget) = self.state.delete(&record_key(&id)).await {
                    tracing::error!(job = %id, error = %forget, "the job's message was not sent and its record cannot be removed; it stays queued until it expires");
                }
                return Err(e);
            }
            Ok(record)
        })
    }

    fn update(&self, id: String, update: JobUpdate) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move { self.change(&id, &update).await })
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>, QueueError>> {
        Box::pin(async move {
            if crate::state::validate_key(&record_key(&id)).is_err() {
                return Ok(None);
            }
            let now = self.clock.now_ms();
            Ok(self
                .load(&id)
                .await?
                .map(|(doc, _)| doc.to_record())
                .filter(|r| r.expires_at_ms.is_none_or(|t| t > now)))
        })
    }

    fn settle_job(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
        id: String,
        update: JobUpdate,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            // The end first: a message that comes back finds it.
            self.change(&id, &update).await?;
            self.queues.settle(receipt, how, then).await
        })
    }

    fn pending_callbacks(&self, max: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, QueueError>> {
        Box::pin(async move {
            let keys = self
                .state
                .list("callbacks/", None, max)
                .await
                .map_err(state_error)?;
            let mut out = Vec::new();
            for listed in keys {
                let id = listed.key.trim_start_matches("callbacks/");
                if let Some((doc, _)) = self.load(id).await? {
                    out.push(doc.to_record());
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedQueues;
    use crate::backends::embedded::state::EmbeddedState;
    use crate::clock::ManualClock;
    use crate::jobs::JobOutput;
    use std::time::Duration;

    fn jobs(dir: &std::path::Path) -> SharedJobs {
        let clock = ManualClock::at(1_000_000);
        SharedJobs {
            state: Arc::new(EmbeddedState::open(dir).unwrap()),
            queues: Arc::new(EmbeddedQueues::open(dir, clock.clone()).unwrap()),
            clock,
        }
    }

    fn new_job(callback_url: Option<&str>) -> NewJob {
        NewJob {
            function: "f".into(),
            payload: b"in".to_vec(),
            callback_url: callback_url.map(str::to_string),
            reply_to: None,
            correlation_id: None,
            not_before_ms: None,
            delay_ms: None,
        }
    }

    #[tokio::test]
    async fn a_job_record_follows_its_message_and_owes_its_callback_once() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = jobs(dir.path());
        let record = jobs
            .submit(new_job(Some("http://127.0.0.1:9/done")))
            .await
            .unwrap();
        assert_eq!(record.state, JobState::Queued);
        assert_eq!(
            jobs.get(record.id.clone()).await.unwrap(),
            Some(record.clone())
        );

        // The message names its job, so any host that takes it finds the record.
        let queue = crate::names::job_queue("f");
        let got = jobs
            .queues
            .receive(&queue, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(crate::jobs::job_id(&got[0].message), record.id);

        let id = record.id.clone();
        assert!(
            jobs.update(id.clone(), JobUpdate::Started { attempt: 1 })
                .await
                .unwrap()
        );
        let update = JobUpdate::Finished {
            state: JobState::Succeeded,
            output: Some(JobOutput {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"out".to_vec(),
            }),
            error: None,
            retention_ms: 60_000,
        };
        let settled = jobs
            .settle_job(
                got[0].receipt.clone(),
                Settlement::Ack,
                Vec::new(),
                id.clone(),
                update,
            )
            .await
            .unwrap();
        assert!(settled);
        let done = jobs.get(id.clone()).await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.result.as_deref(), Some(&b"out"[..]));
        assert_eq!(done.progress, Some(100));
        assert_eq!(done.attempts, 1);
        assert!(
            jobs.queues
                .receive(&queue, 10, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty()
        );

        // The callback is owed until it is delivered, then no more.
        let owed = jobs.pending_callbacks(10).await.unwrap();
        assert_eq!(
            owed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [id.as_str()]
        );
        assert!(
            jobs.update(id.clone(), JobUpdate::CallbackDone)
                .await
                .unwrap()
        );
        assert!(jobs.pending_callbacks(10).await.unwrap().is_empty());

        // Unknown and malformed ids are simply not found.
        assert_eq!(jobs.get("../etc".into()).await.unwrap(), None);
        assert!(
            !jobs
                .update("nope".into(), JobUpdate::CallbackDone)
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_updates_to_one_record_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Arc::new(jobs(dir.path()));
        let record = jobs.submit(new_job(None)).await.unwrap();
        let id = record.id;
        let a = {
            let (jobs, id) = (jobs.clone(), id.clone());
            tokio::spawn(async move { jobs.update(id, JobUpdate::Started { attempt: 2 }).await })
        };
        let b = {
            let (jobs, id) = (jobs.clone(), id.clone());
            tokio::spawn(async move {
                let p = JobUpdate::Progress {
                    percent: 40,
                    message: "reading".into(),
                };
                jobs.update(id, p).await
            })
        };
        assert!(a.await.unwrap().unwrap() && b.await.unwrap().unwrap());
        let r = jobs.get(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.progress),
            (JobState::Running, 2, Some(40))
        );
    }
}
