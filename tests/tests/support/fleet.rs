//! A fleet of hosts on the test process's moto server, shared by the
//! test files that start one (`fleet.rs`, `s3_events.rs`); each uses part
//! of it.
#![allow(dead_code)]

use fnhost_tests::{Host, moto};
use serde_json::Value;

/// Where the moto server is, for an AWS client of the test's own.
pub fn moto_target() -> fnhost::backends::aws::Target {
    fnhost::backends::aws::Target {
        region: Some("us-east-1".into()),
        endpoint: Some(moto().endpoint.clone()),
        keys: Some(("testing".into(), "testing".into())),
    }
}

/// A fleet of hosts on the moto server: queues named with a prefix and a
/// state bucket of the test's own (`name`), each host in a data dir kept
/// by the fleet.
pub struct Fleet {
    /// Names its queues (`<name>-…`), buckets and state bucket.
    pub name: String,
    dirs: Vec<tempfile::TempDir>,
    /// More of the host config (a `[blobs]` section, say).
    pub extra: String,
    /// More lines under `[queues]` (`fifo = [...]`, say).
    pub queues: String,
}

impl Fleet {
    pub fn new(name: &str) -> Fleet {
        Fleet {
            name: format!("{name}-{}", std::process::id()),
            dirs: Vec::new(),
            extra: String::new(),
            queues: String::new(),
        }
    }

    /// A fleet whose buckets are on S3 (`<name>-<bucket>`), their events on
    /// the queue `s3-events`, both created as needed.
    pub fn with_s3_buckets(name: &str) -> Fleet {
        let mut fleet = Fleet::new(name);
        fleet.extra = format!(
            "[blobs]\nbackend = \"s3\"\nprefix = \"{}-\"\nnotifications = \"s3-events\"\ncreate = true\n",
            fleet.name
        );
        fleet
    }

    /// The fleet's buckets, as another S3 client sees them.
    pub fn s3(&self) -> fnhost::backends::s3blobs::S3Blobs {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(fnhost::backends::s3blobs::S3Blobs::connect(
            moto_target(),
            format!("{}-", self.name),
            Default::default(),
        ))
        .unwrap()
    }

    /// An SQS client of the test's own, as any producer has, and the URL of
    /// the fleet's SQS queue `<name>-<queue>` (`work.fifo`, say).
    pub async fn sqs(&self, queue: &str) -> (aws_sdk_sqs::Client, String) {
        let sdk = fnhost::backends::aws::sdk_config(moto_target(), "queues")
            .await
            .unwrap();
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let url = sqs
            .get_queue_url()
            .queue_name(format!("{}-{queue}", self.name))
            .send()
            .await
            .unwrap();
        let url = url.queue_url().unwrap().to_string();
        (sqs, url)
    }

    /// Start one more host, with extra `serve` arguments.
    pub fn start(&mut self, args: &[&str]) -> Host {
        self.dirs.push(tempfile::tempdir().unwrap());
        self.restart(self.dirs.len() - 1, args)
    }

    /// Start the `i`th host again, on its data dir.
    pub fn restart(&self, i: usize, args: &[&str]) -> Host {
        let moto = moto();
        let dir = self.dirs[i].path();
        let state = format!(
            "{}\n[state]\nbackend = \"s3\"\nbucket = \"{}\"\ncreate = true\n{}",
            self.queues, self.name, self.extra
        );
        let config = moto.host_config(dir, &format!("{}-", self.name), &state);
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        Host::start_env(dir, &all, &moto.env())
    }
}

/// The first dead letter of `queue`, once there is one.
pub fn first_dead_letter(host: &Host, queue: &str) -> Value {
    host.wait_for(60, &format!("a dead letter on {queue}"), |h| {
        let v = h
            .admin("GET", &format!("/v1/queues/{queue}/dead-letters"), "")
            .json();
        v["dead_letters"].get(0).cloned()
    })
}
