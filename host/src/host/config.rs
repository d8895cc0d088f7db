//! The host config file (`fnhost serve --config host.toml`): where this
//! host keeps what the manifests name. The manifests do not change; only
//! this file does (as Spin's runtime config: the app names a store, the
//! host config says where it lives). Without a file, everything is
//! embedded in the data dir.
//!
//! ```toml
//! [state]                              # job records shared by a fleet
//! backend = "s3"                       # "embedded" (the default) or "s3"
//! bucket = "my-fnhost-state"           # region defaults to [queues]'s
//! prefix = "prod/"
//!
//! [blobs]                              # buckets on S3 (needs [state] on S3)
//! backend = "s3"                       # "embedded" (the default) or "s3"
//! prefix = "prod-"                     # bucket `uploads` is the S3 bucket `prod-uploads`
//! notifications = "s3-events"          # the queue (on SQS) the buckets' events arrive on
//! create = false                       # create watched buckets and their notifications
//! [blobs.buckets]                      # or name S3 buckets one by one
//! uploads = "acme-uploads"
//!
//! [queues]
//! backend = "sqs"                      # "embedded" (the default) or "sqs"
//! region = "eu-west-1"                 # else the AWS chain (AWS_REGION, profile)
//! endpoint = "http://127.0.0.1:4566"   # else AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL
//! prefix = "prod-"                     # SQS name of queue `orders`: `prod-orders`
//! fifo = ["outbox"]                    # these are FIFO queues (groups, dedup ids)
//! create = false                       # create missing queues at first use
//! ```
//!
//! Credentials come from the standard AWS chain (environment, profile,
//! instance role); the file holds none.
//!
//! An endpoint belongs to one service: `[queues]`'s is SQS's, and S3's
//! (`[state]`'s, which `[blobs]` takes unless it names its own) is never
//! taken from it; without one, each client takes the AWS chain's for its
//! service (`AWS_ENDPOINT_URL_SQS` or `AWS_ENDPOINT_URL_S3`, then
//! `AWS_ENDPOINT_URL`). A region is the same for every service, so a
//! section without one takes the section before it's.

use crate::backends::Backends;
use crate::backends::aws::Target;
use crate::backends::s3blobs::{S3Blobs, S3Events};
use crate::backends::s3state::S3State;
use crate::backends::sqs::{SqsQueues, SqsSettings};
use crate::clock::Clock;
use anyhow::Context as _;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// Is `name` an S3 bucket name (3-63 lower-case letters, digits, `-`, `.`)?
fn s3_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
}

/// What is wrong with an AWS endpoint, if anything: it must parse as a
/// URI (as the AWS SDK reads it) and as a URL, with the scheme `http` or
/// `https`, a host, and no user name, password, query or fragment
/// (credentials come from the AWS chain, never the endpoint).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = match reqwest::Url::parse(endpoint) {
        Ok(url) => url,
        Err(e) => return Err(bad_endpoint(endpoint, format!("is not a URL ({e})"))),
    };
    let problem = if !matches!(url.scheme(), "http" | "https") {
        format!(
            "has the scheme {}; an endpoint is http or https",
            crate::text::quote(url.scheme())
        )
    } else if url.host_str().is_none_or(str::is_empty) {
        "names no host".into()
    } else if !url.username().is_empty() || url.password().is_some() {
        "holds a user name or password; credentials come from the AWS chain (environment, profile, role), never the endpoint".into()
    } else if url.query().is_some() || url.fragment().is_some() {
        "holds a query or a fragment; an endpoint is a scheme, a host, a port and a path".into()
    } else if let Err(e) = endpoint.parse::<axum::http::Uri>() {
        format!("is not a valid URI ({e})")
    } else {
        return Ok(());
    };
    Err(bad_endpoint(endpoint, problem))
}

/// The error for `endpoint`, with what is wrong and an example.
fn bad_endpoint(endpoint: &str, problem: String) -> String {
    format!(
        "{} {problem}: write e.g. \"https://sqs.eu-west-1.amazonaws.com\" or \"http://127.0.0.1:4566\"",
        crate::text::quote(endpoint)
    )
}

/// A host config file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// Where queues live.
    #[serde(default)]
    pub queues: QueuesConfig,
    /// Where shared state (job records) lives.
    #[serde(default)]
    pub state: StateConfig,
    /// Where buckets live.
    #[serde(default)]
    pub blobs: BlobsConfig,
    /// Which buckets hold sensitive data.
    #[serde(default)]
    pub sensitive: SensitiveConfig,
}

/// `[sensitive]`: buckets only functions with `isolation = "trusted"` may
/// reach, kept by the trusted worker (the admin API answers `403
/// sensitive` for them), and queues whose messages are sealed for it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveConfig {
    /// The buckets.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// The queues (their messages sealed; only trusted functions bound).
    #[serde(default)]
    pub queues: Vec<String>,
    /// The trusted dir (default: `<data-dir>.trusted`, beside the data dir).
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// Serve sensitive buckets even where Landlock cannot confine the two
    /// processes (the weaker mode; the host says so at start).
    #[serde(default)]
    pub accept_without_landlock: bool,
}

/// Which backend holds buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobsKind {
    /// This host's data dir.
    #[default]
    Embedded,
    /// Amazon S3.
    S3,
}

/// `[blobs]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    /// The backend.
    #[serde(default)]
    pub backend: BlobsKind,
    /// Prepended to a bucket's name to make its S3 bucket's.
    #[serde(default)]
    pub prefix: String,
    /// S3 buckets named one by one (fnhost bucket -> S3 bucket).
    #[serde(default)]
    pub buckets: std::collections::BTreeMap<String, String>,
    /// The queue the buckets' event notifications arrive on.
    #[serde(default)]
    pub notifications: String,
    /// The AWS region (else `[state]`'s, else `[queues]`'s, else the AWS chain's).
    #[serde(default)]
    pub region: Option<String>,
    /// The S3 endpoint (else `[state]`'s, else the AWS chain's for S3;
    /// never `[queues]`'s, which is SQS's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Create watched buckets that are missing, and point their event
    /// notifications at the queue.
    #[serde(default)]
    pub create: bool,
}

/// Which backend keeps shared state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// This host's embedded store (nothing shared).
    #[default]
    Embedded,
    /// An S3 bucket every host of the fleet uses.
    S3,
}

/// `[state]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The backend.
    #[serde(default)]
    pub backend: StateKind,
    /// The bucket.
    #[serde(default)]
    pub bucket: String,
    /// Prepended to every key.
    #[serde(default)]
    pub prefix: String,
    /// The AWS region (else `[queues]`'s, else the AWS chain's).
    #[serde(default)]
    pub region: Option<String>,
    /// The S3 endpoint (else the AWS chain's for S3: `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL`; never `[queues]`'s, which is SQS's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Create the bucket if it is missing.
    #[serde(default)]
    pub create: bool,
}

/// Which backend serves queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// The data dir's SQLite store.
    #[default]
    Embedded,
    /// Amazon SQS (the users' queues; the host's own stay embedded).
    Sqs,
}

/// `[queues]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesConfig {
    /// The backend.
    #[serde(default)]
    pub backend: QueueKind,
    /// The AWS region (else the AWS chain's).
    #[serde(default)]
    pub region: Option<String>,
    /// The SQS endpoint (else `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, AWS's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Prepended to each queue's name on SQS.
    #[serde(default)]
    pub prefix: String,
    /// Queues that are FIFO queues on SQS.
    #[serde(default)]
    pub fifo: Vec<String>,
    /// Create missing queues at first use.
    #[serde(default)]
    pub create: bool,
}

impl HostFile {
    /// Read and check `path`; errors name the file, the field and what is wrong.
    pub fn load(path: &Path) -> anyhow::Result<HostFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the host config {path:?}"))?;
        let file: HostFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                crate::text::capped(e.to_string().trim().replace('\n', " "), 1024)
            )
        })?;
        file.check()
            .map_err(|(field, why)| anyhow::anyhow!("{}: {field}: {why}", path.display()))?;
        Ok(file)
    }

    /// Everything serde cannot check.
    fn check(&self) -> Result<(), (String, String)> {
        for (i, b) in self.sensitive.buckets.iter().enumerate() {
            crate::names::BucketName::parse(b)
                .map_err(|e| (format!("sensitive.buckets[{i}]"), e.to_string()))?;
        }
        for (i, q) in self.sensitive.queues.iter().enumerate() {
            crate::names::QueueName::parse_user(q)
                .map_err(|e| (format!("sensitive.queues[{i}]"), e.to_string()))?;
        }
        let q = &self.queues;
        let sqs_name = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        if q.prefix.len() > 40 || !sqs_name(&q.prefix) {
            return Err((
                "queues.prefix".into(),
                format!(
                    "{} must be at most 40 letters, digits, '-' or '_' (SQS queue names allow no more)",
                    crate::text::quote(&q.prefix)
                ),
            ));
        }
        for (i, name) in q.fifo.iter().enumerate() {
            crate::names::QueueName::parse_user(name)
                .map_err(|e| (format!("queues.fifo[{i}]"), e.to_string()))?;
        }
        for (field, endpoint) in [
            ("queues.endpoint", &q.endpoint),
            ("state.endpoint", &self.state.endpoint),
            ("blobs.endpoint", &self.blobs.endpoint),
        ] {
            if let Some(endpoint) = endpoint {
                check_endpoint(endpoint).map_err(|why| (field.to_string(), why))?;
            }
        }
        let st = &self.state;
        if st.backend == StateKind::S3 {
            if q.backend != QueueKind::Sqs {
                return Err((
                    "state.backend".into(),
                    "\"s3\" shares job records across a fleet, whose job queues must be shared too; set backend = \"sqs\" under [queues]".into(),
                ));
            }
            if !s3_bucket_name(&st.bucket) {
                return Err((
                    "state.bucket".into(),
                    format!(
                        "{} is not an S3 bucket name; use 3-63 lower-case letters, digits, '-' and '.'",
                        crate::text::quote(&st.bucket)
                    ),
                ));
            }
            if !st.prefix.is_empty()
                && crate::state::validate_key(&format!("{}x", st.prefix)).is_err()
            {
                return Err((
                    "state.prefix".into(),
                    format!("{} is not a key prefix", crate::text::quote(&st.prefix)),
                ));
            }
        }
        let b = &self.blobs;
        if b.backend == BlobsKind::S3 {
            if st.backend != StateKind::S3 {
                return Err((
                    "blobs.backend".into(),
                    "\"s3\" shares buckets across a fleet, which shares its state too; set backend = \"s3\" under [state] (and \"sqs\" under [queues])".into(),
                ));
            }
            crate::names::QueueName::parse_user(&b.notifications).map_err(|e| {
                (
                    "blobs.notifications".into(),
                    format!("{e}; name the queue the buckets' event notifications arrive on"),
                )
            })?;
            for (bucket, s3) in &b.buckets {
                crate::blobs::validate_bucket(bucket)
                    .map_err(|e| (format!("blobs.buckets.{bucket}"), e.to_string()))?;
                if !s3_bucket_name(s3) {
                    return Err((
                        format!("blobs.buckets.{bucket}"),
                        format!(
                            "{} is not an S3 bucket name; use 3-63 lower-case letters, digits, '-' and '.'",
                            crate::text::quote(s3)
                        ),
                    ));
                }
            }
            if !b.prefix.is_empty() && !s3_bucket_name(&format!("{}abc", b.prefix)) {
                return Err((
                    "blobs.prefix".into(),
                    format!(
                        "{} cannot begin an S3 bucket name; use lower-case letters, digits, '-' and '.'",
                        crate::text::quote(&b.prefix)
                    ),
                ));
            }
        }
        if q.backend == QueueKind::Embedded
            && (q.region.is_some() || q.endpoint.is_some() || !q.fifo.is_empty() || q.create)
        {
            return Err((
                "queues.backend".into(),
                "is \"embedded\" (the default), so region, endpoint, fifo and create mean nothing; set backend = \"sqs\" or remove them".into(),
            ));
        }
        Ok(())
    }

    /// The buckets on S3, when `[blobs]` puts them there.
    pub async fn s3_blobs(&self) -> anyhow::Result<Option<S3Blobs>> {
        let b = &self.blobs;
        if b.backend != BlobsKind::S3 {
            return Ok(None);
        }
        let blobs = S3Blobs::connect(self.blobs_target(), b.prefix.clone(), b.buckets.clone())
            .await
            .context("host.toml: [blobs]")?
            .creating_buckets(b.create);
        Ok(Some(blobs))
    }

    /// The S3 buckets and where their events arrive.
    async fn s3_events(&self, sqs: Arc<SqsQueues>) -> anyhow::Result<S3Events> {
        let b = &self.blobs;
        let blobs = self
            .s3_blobs()
            .await?
            .context("host.toml: [blobs] backend is not \"s3\"")?;
        tracing::info!(prefix = %b.prefix, notifications = %b.notifications, "buckets on S3");
        Ok(S3Events {
            queue: b.notifications.clone(),
            blobs: Arc::new(blobs),
            sqs,
            create: b.create,
        })
    }

    /// Where `[state]`'s bucket is: its own region, else `[queues]`'s; its
    /// own endpoint, else the AWS chain's for S3 (never `[queues]`'s: an
    /// SQS endpoint does not serve S3).
    fn state_target(&self) -> Target {
        let (st, q) = (&self.state, &self.queues);
        Target {
            region: st.region.clone().or_else(|| q.region.clone()),
            endpoint: st.endpoint.clone(),
            keys: None,
        }
    }

    /// Where `[blobs]`'s buckets are: as `[state]`'s (the same service),
    /// unless `[blobs]` names its own region or endpoint.
    fn blobs_target(&self) -> Target {
        let (b, state) = (&self.blobs, self.state_target());
        Target {
            region: b.region.clone().or(state.region),
            endpoint: b.endpoint.clone().or(state.endpoint),
            keys: None,
        }
    }

    /// Are queues shared with other hosts (SQS)?
    pub fn shares_queues(&self) -> bool {
        self.queues.backend == QueueKind::Sqs
    }

    /// The backends this file describes, for a host whose data lives in
    /// `data_dir`. A backend that cannot be reached now is logged, not
    /// fatal: the host serves the rest and its workers retry.
    pub async fn backends(
        &self,
        data_dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Backends> {
        match self.queues.backend {
            QueueKind::Embedded => Backends::embedded(data_dir, clock),
            QueueKind::Sqs => {
                let q = &self.queues;
                let settings = SqsSettings {
                    prefix: q.prefix.clone(),
                    fifo: q.fifo.clone(),
                    create: q.create,
                };
                let target = Target {
                    region: q.region.clone(),
                    endpoint: q.endpoint.clone(),
                    keys: None,
                };
                let sqs = SqsQueues::connect(target, settings, clock.clone()).await?;
                match sqs.check().await {
                    Ok(()) => tracing::info!(prefix = %q.prefix, "queues on SQS"),
                    Err(e) => {
                        tracing::error!(error = %e, "SQS cannot be reached now; queue workers will retry")
                    }
                }
                if self.state.backend == StateKind::Embedded {
                    // Checkpoints of SQS messages in this host's own store.
                    let state = crate::backends::embedded::EmbeddedState::open(data_dir)
                        .with_context(|| {
                            format!("failed to open the state store in {data_dir:?}")
                        })?;
                    let sqs = Arc::new(sqs.with_checkpoints(Arc::new(state)));
                    return Backends::embedded_with_sqs(data_dir, clock, sqs);
                }
                let st = &self.state;
                let state =
                    S3State::connect(self.state_target(), st.bucket.clone(), st.prefix.clone())
                        .await
                        .context("host.toml: [state]")?;
                let ready = match st.create {
                    true => state.create_bucket().await,
                    false => state.check().await,
                };
                match ready {
                    Ok(()) => {
                        tracing::info!(bucket = %st.bucket, prefix = %st.prefix, "shared state on S3")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "S3 cannot be reached now; job submissions and status will fail until it can")
                    }
                }
                let state: Arc<dyn crate::state::StateStore> = Arc::new(state);
                let sqs = Arc::new(sqs.with_checkpoints(state.clone()));
                let events = match self.blobs.backend {
                    BlobsKind::Embedded => None,
                    BlobsKind::S3 => Some(Arc::new(self.s3_events(sqs.clone()).await?)),
                };
                Backends::fleet(data_dir, clock, sqs, state, events)
            }
        }
    }
}

#[cfg(test)]
mod tests;
