//! `GET /metrics` as Prometheus meets it: a real Prometheus (Debian's,
//! installed by `scripts/ensure-prometheus`) scrapes a host under traffic
//! with a bearer token, and its own query API answers with the invocation
//! counter and a queue's depth; `promtool check metrics` passes the page.

use fnhost_tests::{Host, guests};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn page(host: &Host) -> String {
    let r = host.admin("GET", "/metrics", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("content-type")
    );
    r.text()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is missing: scripts/test installs it (scripts/ensure-prometheus)"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_string()
}

/// A Prometheus that scrapes `host` every second; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(host: &Host, token: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let target = host.url.trim_start_matches("http://");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: fnhost\n    metrics_path: /metrics\n    authorization:\n      credentials: {token}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant query's single series, once it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url,
            form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        );
        let v: Value = reqwest::blocking::get(url).ok()?.json().ok()?;
        let result = v["data"]["result"].as_array()?;
        let [series] = result.as_slice() else {
            return None;
        };
        series["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log =
            std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus never answered {want} for {query} (last: {last:?}); its log:\n{log}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_invocations_and_queue_depth_with_a_read_token() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        "name = \"worker\"\n[[triggers.queue]]\nqueue = \"work\"\nmax_attempts = 1\n[[triggers.http]]\npath = \"/worker/{mode}\"\n",
        &g.adversary,
    );
    let send = |queue: &str, bodies: &[&str]| {
        let messages: Vec<Value> = bodies.iter().map(|b| json!({ "body": b })).collect();
        let r = host.admin(
            "POST",
            &format!("/v1/queues/{queue}/messages"),
            json!({ "messages": messages }).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    };
    send("work", &["ok", "ok", "fail"]);
    send("parked", &["a", "b", "c"]);
    for _ in 0..4 {
        assert_eq!(host.get("/worker/ok").status, 200);
    }
    assert_eq!(host.get("/no-such-route").status, 404);

    // Anyone with a token may read the figures; nobody without one.
    assert_eq!(host.get("/metrics").status, 401);
    let created = host.admin(
        "POST",
        "/v1/tokens",
        json!({ "scope": "read", "name": "prometheus" }).to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let read = created.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        host.request("GET", "/metrics", Vec::new(), Some(&read))
            .status,
        200
    );

    let ok = "fnhost_invocations_total{function=\"worker\",outcome=\"succeeded\",trigger=\"queue\",version=\"1\"} 2";
    let text = host.wait_for(30, "the queue's invocations counted", |h| {
        let text = page(h);
        text.contains(ok).then_some(text)
    });
    for expected in [
        "fnhost_invocations_total{function=\"worker\",outcome=\"failed\",trigger=\"queue\",version=\"1\"} 1",
        "fnhost_invocations_total{function=\"worker\",outcome=\"succeeded\",trigger=\"http\",version=\"1\"} 4",
        "fnhost_queue_ready_messages{queue=\"parked\"} 3",
        "fnhost_queue_dead_letters{queue=\"work\"} 1",
        "fnhost_binding_instances_desired{function=\"worker\",queue=\"work\"}",
        "fnhost_deploys_total{action=\"deploy\",outcome=\"ok\"} 1",
        "fnhost_http_requests_total{kind=\"trigger\",status=\"404\"} 1",
        "fnhost_invocation_duration_seconds_bucket{function=\"worker\",trigger=\"http\",le=\"+Inf\"} 4",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    // promtool, Prometheus' own checker, finds nothing wrong with the page.
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it with the read token, and answers.
    let prometheus = Prometheus::scraping(&host, &read);
    prometheus.wait_for(
        "fnhost_invocations_total{function=\"worker\",trigger=\"queue\",outcome=\"failed\"}",
        1.0,
    );
    prometheus.wait_for("fnhost_queue_ready_messages{queue=\"parked\"}", 3.0);
    // Under traffic, the counter moves.
    for _ in 0..5 {
        assert_eq!(host.get("/worker/ok").status, 200);
    }
    prometheus.wait_for(
        "fnhost_invocations_total{function=\"worker\",trigger=\"http\",outcome=\"succeeded\"}",
        9.0,
    );
    prometheus.wait_for("up{job=\"fnhost\"}", 1.0);
}
