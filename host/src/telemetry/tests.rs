use super::*;
use crate::backends::Backends;
use crate::dispatcher::Dispatcher;
use crate::dispatcher::events::{Delivered, TriggerKind};
use crate::exec::{Busy, Execution, Executor, Failure, LoadError, Logs, Reporter, Wait};
use crate::queue::NewMessage;
use crate::task::BoxFuture;

/// Loads anything, runs nothing: the events are fed by hand.
struct Idle;

impl Executor for Idle {
    fn prepare(&self, wasm: Vec<u8>) -> BoxFuture<'_, Result<String, LoadError>> {
        Box::pin(async move { Ok(crate::files::sha256_hex(&wasm)) })
    }

    fn execute(
        &self,
        _execution: Execution,
        _reporter: Option<Arc<dyn Reporter>>,
        _wait: Wait,
    ) -> BoxFuture<'_, Result<Outcome, Busy>> {
        unreachable!("the test feeds the events")
    }

    fn in_flight(&self) -> usize {
        0
    }
}

fn line<'a>(page: &'a str, prefix: &str) -> Option<&'a str> {
    page.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test]
async fn invocations_and_queues_show_up_on_the_page_with_bounded_labels() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::SystemClock);
    let backends = Backends::embedded(dir.path(), clock).unwrap();
    let registry = Arc::new(crate::registry::Registry::open(dir.path()).unwrap());
    let settings = crate::jobs::JobSettings::new(Duration::from_secs(60));
    let services = Arc::new(Services::new(backends, registry, settings, Arc::default()));
    let dispatcher = Dispatcher::start(Arc::new(Idle), services.clone())
        .await
        .unwrap();
    let telemetry = Telemetry::new(services.clone(), dispatcher, Sources::default());
    for body in ["a", "b"] {
        let message = NewMessage {
            body: body.into(),
            ..NewMessage::default()
        };
        services.queues().send("probe-q", message).await.unwrap();
    }

    let info = InvocationInfo {
        id: "0193a0c4-0000-7000-8000-000000000001".into(),
        function: "probe-fn".into(),
        version: 3,
        trigger: TriggerKind::Queue,
        attempt: 1,
        job_id: None,
        delivered: Some(Delivered::default()),
        queued: Some(Duration::from_millis(1500)),
        trusted: false,
    };
    let outcome = Outcome {
        result: Err(Failure::Fail("no stock for order 42".into())),
        fuel_used: 2_000_000,
        elapsed: Duration::from_millis(3),
        peak_memory_bytes: 1 << 20,
        progress: None,
        logs: Logs::default(),
    };
    telemetry.on_event(&InvocationEvent::Started(&info));
    let page = telemetry.render().await;
    let running = "fnhost_invocations_running{function=\"probe-fn\"}";
    assert_eq!(
        line(&page, running),
        Some(&*format!("{running} 1")),
        "{page}"
    );
    telemetry.on_event(&InvocationEvent::Ended(&info, &outcome));
    telemetry.on_event(&InvocationEvent::Started(&info));
    telemetry.on_event(&InvocationEvent::Ended(&info, &outcome));

    let page = telemetry.render().await;
    let total = "fnhost_invocations_total{function=\"probe-fn\",outcome=\"failed\",trigger=\"queue\",version=\"3\"}";
    assert_eq!(line(&page, total), Some(&*format!("{total} 2")), "{page}");
    assert_eq!(line(&page, running), Some(&*format!("{running} 0")));
    // Histograms with buckets, in seconds: 3 ms is under 5 ms, over 2.5 ms.
    let bucket = |le: &str| {
        format!(
            "fnhost_invocation_duration_seconds_bucket{{function=\"probe-fn\",trigger=\"queue\",le=\"{le}\"}}"
        )
    };
    assert!(
        line(&page, &bucket("0.005")).unwrap().ends_with(" 2"),
        "{page}"
    );
    assert!(line(&page, &bucket("0.0025")).unwrap().ends_with(" 0"));
    let queued = "fnhost_invocation_queue_seconds_bucket{function=\"probe-fn\",trigger=\"queue\",le=\"2.5\"}";
    assert!(line(&page, queued).unwrap().ends_with(" 2"), "{page}");
    assert!(
        page.contains("fnhost_invocation_fuel_bucket{function=\"probe-fn\",le=\"10000000\"} 2"),
        "{page}"
    );
    assert!(page.contains("# TYPE fnhost_invocations_total counter"));
    assert!(page.contains("# HELP fnhost_invocations_total "));
    // The stores, read when asked.
    let ready = "fnhost_queue_ready_messages{queue=\"probe-q\"}";
    assert_eq!(line(&page, ready), Some(&*format!("{ready} 2")), "{page}");
    // No id, message or reason is ever a label.
    assert!(
        !page.contains("0193a0c4") && !page.contains("order 42"),
        "{page}"
    );
}
