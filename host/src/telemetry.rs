//! Metrics in Prometheus' text format, for `GET /metrics`: what the
//! invocation event stream says (invocations by function, version,
//! trigger and outcome; duration, queue-time, fuel and peak-memory
//! histograms; invocations running), what the stores say when Prometheus
//! asks (each queue's depth, delayed, in flight, dead letters and the age
//! of its oldest message; each binding's desired and running instances),
//! and what the server counts as it answers (deploys, HTTP responses by
//! status), with the counts other parts keep themselves (trusted worker
//! restarts, records dropped) read at the same time.
//!
//! Labels are bounded: function, version, trigger, outcome, queue,
//! action, kind and status — never an id, a key or a message. Every
//! series lives in the host's own registry.

use crate::dispatcher::Functions;
use crate::dispatcher::events::{
    InvocationEvent, InvocationInfo, InvocationSubscriber, OutcomeKind,
};
use crate::exec::Outcome;
use crate::records::Records;
use crate::services::Services;
use crate::trusted::RemoteWorker;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Seconds buckets for durations and queue times: 1 ms to 15 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];
/// Fuel buckets: 10^4 to 10^13, by decades.
const FUEL: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13];
/// Memory buckets: 64 KiB to 1 GiB, by powers of four.
const BYTES: &[f64] = &[
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// The series of one (function, trigger), looked up once.
struct PerTrigger {
    running: IntGauge,
    duration: Histogram,
    queued: Histogram,
    fuel: Histogram,
    memory: Histogram,
}

/// A function's series, looked up by name without making a key.
#[derive(Default)]
struct PerFunction {
    triggers: HashMap<&'static str, PerTrigger>,
    /// `fnhost_invocations_total` by version, trigger and outcome.
    counters: HashMap<(u32, &'static str, &'static str), IntCounter>,
}

/// What else the page reads when scraped: counts kept where they happen.
#[derive(Default)]
pub struct Sources {
    /// The invocation records (their dropped count).
    pub records: Option<Arc<Records>>,
    /// The trusted worker (how often it was lost).
    pub trusted_worker: Option<Arc<RemoteWorker>>,
}

/// A host's metrics: the event stream's subscriber, the server's counts,
/// and the page Prometheus scrapes.
pub struct Telemetry {
    registry: Registry,
    services: Arc<Services>,
    functions: Arc<dyn Functions>,
    sources: Sources,
    invocations: IntCounterVec,
    running: IntGaugeVec,
    duration: HistogramVec,
    queued: HistogramVec,
    fuel: HistogramVec,
    memory: HistogramVec,
    queue_ready: IntGaugeVec,
    queue_delayed: IntGaugeVec,
    queue_in_flight: IntGaugeVec,
    queue_dead: IntGaugeVec,
    queue_age: GaugeVec,
    desired: IntGaugeVec,
    instances: IntGaugeVec,
    active: IntGauge,
    deploys: IntCounterVec,
    http: IntCounterVec,
    worker_restarts: IntCounter,
    records_dropped: IntCounter,
    by_function: RwLock<HashMap<String, PerFunction>>,
}

/// Make a metric and register it.
fn made<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once, under its own name");
    metric
}

impl Telemetry {
    /// The metrics of a host with these stores, functions and sources.
    pub fn new(
        services: Arc<Services>,
        functions: Arc<dyn Functions>,
        sources: Sources,
    ) -> Arc<Telemetry> {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            made(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            made(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            made(&r, HistogramVec::new(opts, labels).expect("valid"))
        };
        let one = |name: &str, help: &str| made(&r, IntCounter::new(name, help).expect("valid"));
        Arc::new(Telemetry {
            invocations: counter(
                "fnhost_invocations_total",
                "Invocations that ended, by function, version, trigger and outcome.",
                &["function", "version", "trigger", "outcome"],
            ),
            running: gauge(
                "fnhost_invocations_running",
                "Invocations handed to the executor and not yet ended, by function.",
                &["function"],
            ),
            duration: histogram(
                "fnhost_invocation_duration_seconds",
                "Time in the sandbox, by function and trigger.",
                SECONDS,
                &["function", "trigger"],
            ),
            queued: histogram(
                "fnhost_invocation_queue_seconds",
                "Time from a message's send (or a tick's due time) to its invocation, by function and trigger.",
                SECONDS,
                &["function", "trigger"],
            ),
            fuel: histogram(
                "fnhost_invocation_fuel",
                "Fuel an invocation used, by function.",
                FUEL,
                &["function"],
            ),
            memory: histogram(
                "fnhost_invocation_peak_memory_bytes",
                "The most linear memory an invocation held, by function.",
                BYTES,
                &["function"],
            ),
            queue_ready: gauge(
                "fnhost_queue_ready_messages",
                "Messages receivable now, by queue.",
                &["queue"],
            ),
            queue_delayed: gauge(
                "fnhost_queue_delayed_messages",
                "Messages waiting for a delay or a retry backoff, by queue.",
                &["queue"],
            ),
            queue_in_flight: gauge(
                "fnhost_queue_in_flight_messages",
                "Messages leased to a consumer, by queue.",
                &["queue"],
            ),
            queue_dead: gauge(
                "fnhost_queue_dead_letters",
                "Messages in the dead letters, by queue.",
                &["queue"],
            ),
            queue_age: made(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "fnhost_queue_oldest_message_age_seconds",
                        "Age of the oldest receivable message, by queue (0 when none).",
                    ),
                    &["queue"],
                )
                .expect("valid"),
            ),
            desired: gauge(
                "fnhost_binding_instances_desired",
                "Instances the scaler wants, by function and queue.",
                &["function", "queue"],
            ),
            instances: gauge(
                "fnhost_binding_instances_running",
                "Instances taken now, by function and queue.",
                &["function", "queue"],
            ),
            active: made(
                &r,
                IntGauge::new("fnhost_functions", "Functions with an active version.")
                    .expect("valid"),
            ),
            deploys: counter(
                "fnhost_deploys_total",
                "Deploys, rollbacks and removals asked of this host, by action and outcome.",
                &["action", "outcome"],
            ),
            http: counter(
                "fnhost_http_requests_total",
                "HTTP responses, by kind (api, trigger, health) and status.",
                &["kind", "status"],
            ),
            worker_restarts: one(
                "fnhost_trusted_worker_restarts_total",
                "Times the connection to the trusted worker was lost (its supervisor restarts it).",
            ),
            records_dropped: one(
                "fnhost_invocation_records_dropped_total",
                "Invocation records dropped because their writer fell behind.",
            ),
            registry: r,
            services,
            functions,
            sources,
            by_function: RwLock::default(),
        })
    }

    /// Count a deploy, rollback or removal (`action`), and whether it was made.
    pub fn deployed(&self, action: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.deploys.with_label_values(&[action, outcome]).inc();
    }

    /// Count an HTTP response of `kind` (api, trigger, health).
    pub fn answered(&self, kind: &'static str, status: u16) {
        self.http
            .with_label_values(&[kind, status_label(status)])
            .inc();
    }

    /// Run `f` on the series of `info`'s function and trigger and, with an
    /// `outcome`, its invocation counter: found under a read lock without
    /// allocating; made (once) under the write lock.
    fn with_series(
        &self,
        info: &InvocationInfo,
        outcome: Option<&'static str>,
        f: impl Fn(&PerTrigger, Option<&IntCounter>),
    ) {
        let trigger = info.trigger.as_str();
        {
            let all = self.by_function.read().unwrap_or_else(|e| e.into_inner());
            if let Some(series) = all.get(info.function.as_str())
                && let Some(t) = series.triggers.get(trigger)
            {
                match outcome {
                    None => return f(t, None),
                    Some(o) => {
                        if let Some(c) = series.counters.get(&(info.version, trigger, o)) {
                            return f(t, Some(c));
                        }
                    }
                }
            }
        }
        let mut all = self.by_function.write().unwrap_or_else(|e| e.into_inner());
        let PerFunction { triggers, counters } = all.entry(info.function.clone()).or_default();
        let name = info.function.as_str();
        let t = triggers.entry(trigger).or_insert_with(|| PerTrigger {
            running: self.running.with_label_values(&[name]),
            duration: self.duration.with_label_values(&[name, trigger]),
            queued: self.queued.with_label_values(&[name, trigger]),
            fuel: self.fuel.with_label_values(&[name]),
            memory: self.memory.with_label_values(&[name]),
        });
        let c = outcome.map(|o| {
            &*counters
                .entry((info.version, trigger, o))
                .or_insert_with(|| {
                    let version = info.version.to_string();
                    (self.invocations).with_label_values(&[name, &version, trigger, o])
                })
        });
        f(t, c)
    }

    fn ended(&self, info: &InvocationInfo, outcome: &Outcome) {
        let kind = OutcomeKind::of(outcome).as_str();
        self.with_series(info, Some(kind), |h, counter| {
            h.running.dec();
            h.duration.observe(outcome.elapsed.as_secs_f64());
            if let Some(queued) = info.queued {
                h.queued.observe(queued.as_secs_f64());
            }
            h.fuel.observe(outcome.fuel_used as f64);
            h.memory.observe(outcome.peak_memory_bytes as f64);
            if let Some(c) = counter {
                c.inc();
            }
        });
    }

    /// The page Prometheus scrapes: the stores' figures read now, then
    /// every series in the text format (0.0.4). A queue whose figures
    /// cannot be read now is left out of this page (and logged).
    pub async fn render(&self) -> String {
        let active = self.functions.active();
        self.active.set(active.len() as i64);
        // Queues and bindings as they are now: none that is gone stays.
        for vec in [
            &self.queue_ready,
            &self.queue_delayed,
            &self.queue_in_flight,
        ] {
            vec.reset();
        }
        self.queue_dead.reset();
        self.queue_age.reset();
        self.desired.reset();
        self.instances.reset();
        let mut queues = match self.services.queues().queues().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "the queues could not be listed for /metrics");
                Vec::new()
            }
        };
        for d in &active {
            for policy in d.manifest.queue_policies() {
                let live = self.services.binding_stats(&d.record.name, &policy.queue);
                let labels = [d.record.name.as_str(), policy.queue.as_str()];
                (self.desired.with_label_values(&labels))
                    .set(live.desired.load(Ordering::Relaxed) as i64);
                (self.instances.with_label_values(&labels))
                    .set(live.running.load(Ordering::Relaxed) as i64);
                queues.push(policy.queue);
            }
        }
        queues.sort();
        queues.dedup();
        for queue in queues {
            let stats = match self.services.queues().stats(&queue).await {
                Ok(stats) => stats,
                Err(e) => {
                    tracing::warn!(queue = %crate::text::LogSafe(&queue), error = %e, "a queue's figures could not be read for /metrics");
                    continue;
                }
            };
            let q = [queue.as_str()];
            let count = |n: u64| n.min(i64::MAX as u64) as i64;
            self.queue_ready
                .with_label_values(&q)
                .set(count(stats.ready));
            self.queue_delayed
                .with_label_values(&q)
                .set(count(stats.delayed));
            (self.queue_in_flight.with_label_values(&q)).set(count(stats.in_flight));
            self.queue_dead
                .with_label_values(&q)
                .set(count(stats.dead_letters));
            let age = Duration::from_millis(stats.oldest_ready_age_ms.unwrap_or(0));
            self.queue_age.with_label_values(&q).set(age.as_secs_f64());
        }
        // Counts kept elsewhere, brought up to date.
        let catch_up = |counter: &IntCounter, now: u64| {
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        if let Some(records) = &self.sources.records {
            catch_up(&self.records_dropped, records.dropped());
        }
        if let Some(worker) = &self.sources.trusted_worker {
            catch_up(&self.worker_restarts, u64::from(worker.lost()));
        }
        let mut page = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut page) {
            tracing::warn!(error = %e, "the metrics page could not be written");
        }
        String::from_utf8(page).unwrap_or_default()
    }
}

/// A status as a label: its number for the ones a host answers, else
/// its class (`2xx`, …), so that the label's values stay few.
fn status_label(status: u16) -> &'static str {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (206, "206"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match KNOWN.iter().find(|(code, _)| *code == status) {
        Some((_, label)) => label,
        None => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
    }
}

impl InvocationSubscriber for Telemetry {
    fn on_event(&self, event: &InvocationEvent<'_>) {
        match event {
            InvocationEvent::Started(info) => self.with_series(info, None, |h, _| h.running.inc()),
            InvocationEvent::Ended(info, outcome) => self.ended(info, outcome),
        }
    }
}

#[cfg(test)]
mod tests;
