//! Triggers that run in the background: each turns outside events into
//! invocations through the dispatcher, and outcomes back into acks, retries
//! or dead letters. (The HTTP trigger lives with the server.)
//!
//! Everything is delivered through queues: a function's own queue bindings,
//! its async jobs, and host-owned queues that the blob feed ([`blob`]) and
//! the timer schedulers ([`timer`]) fill, so retries, dead letters and
//! scaling work the same for every trigger. [`Background`] follows the
//! dispatcher's active set and keeps one queue binding loop per binding and one
//! scheduler per timer, plus the one blob feed. Triggers know nothing of wasm.

pub mod blob;
pub mod queue;
pub mod timer;

use crate::dispatcher::Functions;
use crate::services::Services;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts and stops trigger workers as functions come and go.
pub struct Background {
    functions: Arc<dyn Functions>,
    services: Arc<Services>,
    shutdown: CancellationToken,
    /// In-flight invocations started by background triggers, drained on shutdown.
    tracker: TaskTracker,
    workers: HashMap<(String, String), JoinHandle<()>>,
}

impl Background {
    /// Run until `shutdown`: reconcile workers on every change of the active set.
    pub fn spawn(
        functions: Arc<dyn Functions>,
        services: Arc<Services>,
        shutdown: CancellationToken,
    ) -> TaskTracker {
        let tracker = TaskTracker::new();
        let mut sup = Background {
            functions,
            services,
            shutdown,
            tracker: tracker.clone(),
            workers: HashMap::new(),
        };
        let feed = tokio::spawn(blob::run(
            sup.functions.clone(),
            sup.services.clone(),
            sup.shutdown.clone(),
        ));
        // Buckets on S3: their changes arrive as event notifications.
        let s3_events = sup.services.blob_events().cloned().map(|events| {
            tokio::spawn(blob::s3::run(
                sup.functions.clone(),
                sup.services.clone(),
                events,
                sup.shutdown.clone(),
            ))
        });
        // Callbacks a crash cut off: tracked, so a shutdown waits for them
        // like any other in-flight work.
        tracker.spawn(crate::jobs::callback::resume(
            sup.services.jobs().clone(),
            sup.services.job_settings().callbacks.clone(),
        ));
        tokio::spawn(async move {
            let mut changes = sup.functions.subscribe();
            loop {
                sup.reconcile();
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = sup.shutdown.cancelled() => break,
                }
            }
            for ((function, what), worker) in sup.workers.drain() {
                if let Err(e) = worker.await {
                    tracing::error!(function = %function, trigger = %what, error = %e, "a trigger's loop ended abnormally");
                }
            }
            for (what, task) in [
                ("blob feed", Some(feed)),
                ("S3 event notifications", s3_events),
            ] {
                if let Some(task) = task
                    && let Err(e) = task.await
                {
                    tracing::error!(trigger = what, error = %e, "a trigger's loop ended abnormally");
                }
            }
            sup.tracker.close();
        });
        tracker
    }

    fn reconcile(&mut self) {
        self.workers.retain(|_, w| !w.is_finished());
        for deployed in self.functions.active() {
            for policy in deployed.manifest.queue_policies() {
                let key = (deployed.record.name.clone(), policy.queue);
                if self.workers.contains_key(&key) {
                    continue;
                }
                let worker = queue::BindingLoop::new(
                    self.functions.clone(),
                    self.services.clone(),
                    key.0.clone(),
                    key.1.clone(),
                    self.shutdown.clone(),
                    self.tracker.clone(),
                );
                self.workers.insert(key, tokio::spawn(worker.run()));
            }
            if let Some(t) = &deployed.manifest.triggers.timer {
                let key = (deployed.record.name.clone(), format!("timer {t:?}"));
                if self.workers.contains_key(&key) {
                    continue;
                }
                let scheduler = timer::Scheduler::new(
                    self.functions.clone(),
                    self.services.clone(),
                    key.0.clone(),
                    t.clone(),
                    Arc::new(crate::clock::SystemClock),
                    self.shutdown.clone(),
                );
                self.workers.insert(key, tokio::spawn(scheduler.run()));
            }
        }
    }
}
