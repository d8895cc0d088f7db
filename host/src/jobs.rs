//! Async jobs: any function can be submitted as a job, answered at once with
//! a job id; the job runs through the function's job queue
//! (`fnhost-jobs-<function>`) with the queue trigger's retries, and its
//! record (state, attempts, progress, result or error, timestamps) is kept
//! for the retention time, then cleaned up.
//!
//! [`JobStore`] is the seam; the embedded queue store implements it so a
//! job's record and its message are created in one transaction. Knows
//! nothing of wasm or HTTP.

pub mod callback;
pub mod shared;

use crate::queue::{NewMessage, QueueError, Receipt, Settlement};
use crate::task::BoxFuture;
use serde::Serialize;

/// The attribute that names a job on its message, when the message id is
/// not the job id (a job queue on SQS, whose ids SQS chooses).
pub const JOB_ATTRIBUTE: &str = "fnhost-job";

/// The job a message of a job queue is for.
pub fn job_id(m: &crate::queue::Message) -> String {
    m.attributes
        .iter()
        .find(|(k, _)| k == JOB_ATTRIBUTE)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| m.id.clone())
}

/// How the host keeps async jobs: how long finished records stay, and
/// what completion callbacks may reach.
#[derive(Clone)]
pub struct JobSettings {
    /// How long a finished job's record is kept.
    pub retention: std::time::Duration,
    /// Sends completion callbacks under the host's policy.
    pub callbacks: std::sync::Arc<callback::Callbacks>,
}

impl JobSettings {
    /// Records kept `retention`; callbacks to public addresses only.
    pub fn new(retention: std::time::Duration) -> JobSettings {
        JobSettings {
            retention,
            callbacks: std::sync::Arc::new(callback::Callbacks::new(Default::default())),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a free instance (or for its retry backoff).
    Queued,
    /// An attempt is running.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed permanently (the job returned `fail`).
    Failed,
    /// Gave up after the attempt limit.
    Dead,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "dead" => JobState::Dead,
            _ => JobState::Queued,
        }
    }

    /// True once the job will not run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Dead
        )
    }
}

/// A job to submit.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// The function to run.
    pub function: String,
    /// Its input (the `invoke` event's payload).
    pub payload: Vec<u8>,
    /// POSTed the job record when it finishes.
    pub callback_url: Option<String>,
    /// Queue that receives the completion.
    pub reply_to: Option<String>,
    /// Carried to the reply.
    pub correlation_id: Option<String>,
    /// Not started before this time (ms since the epoch).
    pub not_before_ms: Option<u64>,
    /// Not started until this long after submission.
    pub delay_ms: Option<u64>,
}

/// A job's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// The job id (also its message id).
    pub id: String,
    /// The function.
    pub function: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// Last reported progress percentage.
    pub progress: Option<u8>,
    /// Last reported progress message.
    pub progress_message: Option<String>,
    /// The output's status, once succeeded.
    pub result_status: Option<u16>,
    /// The output's headers, once succeeded.
    pub result_headers: Vec<(String, String)>,
    /// The output's body, once succeeded.
    #[serde(skip)]
    pub result: Option<Vec<u8>>,
    /// The last error.
    pub error: Option<String>,
    /// Submission time.
    pub created_at_ms: u64,
    /// First attempt's start.
    pub started_at_ms: Option<u64>,
    /// When it reached a final state.
    pub finished_at_ms: Option<u64>,
    /// When the record will be deleted.
    pub expires_at_ms: Option<u64>,
    /// Where the record is POSTed when the job finishes.
    pub callback_url: Option<String>,
    /// Queue that receives the completion.
    pub reply_to: Option<String>,
    /// Carried to the reply.
    pub correlation_id: Option<String>,
    /// Not started before this time (a delayed or scheduled job), ms since the epoch.
    pub not_before_ms: Option<u64>,
}

/// A successful job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// How an attempt ended, for the record.
#[derive(Debug, Clone)]
pub enum JobUpdate {
    /// An attempt started.
    Started {
        /// Its number.
        attempt: u32,
    },
    /// The guest reported progress.
    Progress {
        /// Percentage.
        percent: u8,
        /// Message.
        message: String,
    },
    /// The attempt failed and the job will be retried.
    Retrying {
        /// Why.
        error: String,
    },
    /// The job finished.
    Finished {
        /// `Succeeded`, `Failed` or `Dead`.
        state: JobState,
        /// The output when it succeeded.
        output: Option<JobOutput>,
        /// The error when it did not.
        error: Option<String>,
        /// How long to keep the record.
        retention_ms: u64,
    },
    /// The completion callback was delivered, or given up on.
    CallbackDone,
}

impl JobRecord {
    /// The record as the API and callbacks show it: the result body as text.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["status_url"] = serde_json::json!(format!("/v1/jobs/{}", self.id));
        v["result"] = match (&self.result, self.result_status) {
            (Some(body), Some(status)) => serde_json::json!({
                "status": status,
                "headers": self.result_headers,
                "body": String::from_utf8_lossy(body),
            }),
            _ => serde_json::Value::Null,
        };
        v
    }
}

/// Where job records live.
pub trait JobStore: Send + Sync {
    /// Create the record and enqueue the job's message, in one durable step.
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<JobRecord, QueueError>>;
    /// Apply an update. False when the job is unknown (expired).
    fn update(&self, id: String, update: JobUpdate) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// The record, if it exists and has not expired.
    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>, QueueError>>;
    /// Settle the job's delivery (as `QueueBackend::settle`, with its
    /// replies) and apply `update` (its end) to the record, in one durable
    /// step: a crash leaves both done or neither (the message then comes
    /// back and the job runs again). A `Finished` update on a job with a
    /// callback URL also records the callback as owed. False, with nothing
    /// changed, when the receipt is stale.
    fn settle_job(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
        id: String,
        update: JobUpdate,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Finished jobs whose completion callback is still owed (cut off by a
    /// crash, say), oldest first, at most `max`.
    fn pending_callbacks(&self, max: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, QueueError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_round_trip() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Dead,
        ] {
            assert_eq!(JobState::parse(s.as_str()), s);
        }
    }
}
