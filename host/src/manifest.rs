//! `fnhost.toml`: a function's manifest, parsed and validated.
//!
//! One manifest per function: its name, where its component is, its triggers,
//! limits, grants and config values. Parsing is strict (unknown fields are
//! errors) and every error names the file, the field and what is wrong, so
//! nothing half-valid is ever deployed.
//!
//! This module knows nothing of wasm or of how triggers are served.

mod checks;
mod routes;
mod triggers;

use crate::capabilities::Grants;
use crate::exec::{Limits, Profile};
use crate::names::FunctionName;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use routes::overlap;
pub use triggers::{
    BlobTrigger, HttpTrigger, QueuePolicy, QueueTrigger, RouteAuth, Source, TimerTrigger,
};

/// The manifest file's conventional name.
pub const FILE_NAME: &str = "fnhost.toml";

/// Paths the host serves itself; function routes may not shadow them.
pub const RESERVED_PREFIXES: &[&str] = &["/v1", "/healthz"];

/// A function's manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name: lower-case letters, digits and `-`, starting with a letter.
    pub name: String,
    /// Path of the component, relative to the manifest. When absent, the CLI
    /// uses the crate's `wasm32-wasip2` release build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// What starts the function besides direct invocation.
    #[serde(default)]
    pub triggers: Triggers,
    /// Per-invocation limits; each has a default.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// What the function may reach; nothing when absent.
    #[serde(default)]
    pub grants: Grants,
    /// String values the job reads with `fnhost_sdk::config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// How the function's async jobs are delivered (same settings as a queue
    /// binding, without `queue`); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<QueueTrigger>,
    /// `"public"` (the default) or `"trusted"`: only trusted functions may
    /// reach the host's sensitive buckets, and deploying one needs an
    /// `admin` token.
    #[serde(default, skip_serializing_if = "Isolation::is_public")]
    pub isolation: Isolation,
}

/// What a host holds sensitive (the host config's `[sensitive]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sensitive {
    /// Buckets only trusted functions reach, kept by the trusted worker.
    pub buckets: BTreeSet<String>,
    /// Queues whose messages are sealed for the trusted worker.
    pub queues: BTreeSet<String>,
}

impl Sensitive {
    /// True when nothing is sensitive (no trusted worker is needed).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.queues.is_empty()
    }
}

/// Which tier a function runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Reaches what its grants name, never a sensitive bucket or queue;
    /// runs in the public process.
    #[default]
    Public,
    /// May be granted the host's sensitive buckets and bound to its
    /// sensitive queues; runs in the trusted worker.
    Trusted,
}

impl Isolation {
    fn is_public(&self) -> bool {
        *self == Isolation::Public
    }
}

/// The function's triggers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// HTTP routes that invoke the function synchronously.
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    /// Queues whose messages invoke the function.
    #[serde(default)]
    pub queue: Vec<QueueTrigger>,
    /// Buckets whose changes invoke the function.
    #[serde(default)]
    pub blob: Vec<BlobTrigger>,
    /// A schedule that invokes the function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerTrigger>,
}

/// Per-invocation limits as written; absent fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Fuel units (roughly wasm instructions) per invocation. Default 10 billion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory in MiB. Default 128, at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Wall-clock limit, e.g. `"30s"` or `"2m"`. Default 30 s, at most 15 min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Bytes of stdout and of stderr logged per invocation. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
}

/// A manifest that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ManifestError {
    /// The manifest's file name or path.
    pub file: String,
    /// The field at fault (dotted path), or `(syntax)` for a parse error.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl Manifest {
    /// Parse and validate manifest text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let field = e
                .message()
                .split('`')
                .nth(1)
                .filter(|_| e.message().starts_with("unknown field"))
                .map(|f| format!("unknown field `{f}`"))
                .unwrap_or_else(|| "(syntax)".into());
            ManifestError {
                file: file.into(),
                field,
                // toml quotes the offending line: a long one is cut.
                reason: crate::text::capped(e.to_string().trim().replace('\n', " "), 1024),
            }
        })?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    /// Refuse a public function that names one of the host's sensitive
    /// buckets (in a grant or a blob trigger) or is bound to one of its
    /// sensitive queues, and any function with a blob trigger on a
    /// sensitive bucket (the trusted worker keeps no change feed); `file`
    /// names it in errors.
    pub fn check_isolation(&self, file: &str, sensitive: &Sensitive) -> Result<(), ManifestError> {
        let refuse = |field: String, reason: String| ManifestError {
            file: file.into(),
            field,
            reason,
        };
        for (i, b) in self.triggers.blob.iter().enumerate() {
            if sensitive.buckets.contains(&b.bucket) {
                return Err(refuse(
                    format!("triggers.blob[{i}].bucket"),
                    format!(
                        "{} is a sensitive bucket on this host: it lives in the trusted worker, which runs no blob triggers; hand the trusted function its work through a sensitive queue instead",
                        crate::text::quote(&b.bucket)
                    ),
                ));
            }
        }
        if self.isolation == Isolation::Trusted {
            return Ok(());
        }
        let granted = (self.grants.storage.iter().enumerate())
            .find(|(_, g)| sensitive.buckets.contains(&g.bucket));
        if let Some((i, g)) = granted {
            let bucket = &g.bucket;
            return Err(refuse(
                format!("grants.storage[{i}].bucket"),
                format!(
                    "{} is a sensitive bucket on this host: only functions with isolation = \"trusted\" may reach it (deployed with an admin token); put a trusted function in front of it and hand it work through a queue",
                    crate::text::quote(bucket)
                ),
            ));
        }
        for (i, q) in self.triggers.queue.iter().enumerate() {
            if sensitive.queues.contains(&q.queue) {
                return Err(refuse(
                    format!("triggers.queue[{i}].queue"),
                    format!(
                        "{} is a sensitive queue on this host: its messages are sealed for the trusted worker, so only functions with isolation = \"trusted\" may be bound to it",
                        crate::text::quote(&q.queue)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Check everything serde cannot: names, routes, bindings, triggers,
    /// limits, grants, one section at a time ([`checks`]).
    pub fn validate(&self, file: &str) -> Result<(), ManifestError> {
        let t = &self.triggers;
        FunctionName::parse(&self.name)
            .map(drop)
            .map_err(|e| checks::bad("name", e.to_string()))
            .and_then(|()| checks::routes(&t.http))
            .and_then(|()| checks::queue_bindings(&t.queue))
            .and_then(|()| checks::blob_triggers(&t.blob, &self.grants))
            .and_then(|()| checks::timer(t.timer.as_ref()))
            .and_then(|()| checks::jobs(self.jobs.as_ref(), &self.name))
            .and_then(|()| checks::limits(&self.limits))
            .and_then(|()| checks::grants(&self.grants, &t.blob))
            .map_err(|(field, reason)| ManifestError {
                file: file.into(),
                field,
                reason,
            })
    }

    /// The limits with defaults filled in. Call on a validated manifest.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        let l = &self.limits;
        Limits {
            fuel: l.fuel.unwrap_or(d.fuel),
            memory_bytes: l
                .memory_mb
                .map(|mb| (mb as usize) << 20)
                .unwrap_or(d.memory_bytes),
            timeout: l
                .timeout
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(d.timeout),
            log_bytes: l.log_bytes.unwrap_or(d.log_bytes),
        }
    }

    /// Every queue the function consumes, with its policy: its own
    /// `[[triggers.queue]]` bindings, its async-job queue, and the host-owned
    /// queues of its blob and timer triggers.
    pub fn queue_policies(&self) -> Vec<QueuePolicy> {
        let hosted = |queue: String, delivery: &Option<QueueTrigger>, source: Source| {
            let mut policy = QueueTrigger {
                queue,
                ..delivery.clone().unwrap_or_default()
            }
            .policy();
            policy.source = source;
            policy
        };
        let mut policies: Vec<QueuePolicy> = self
            .triggers
            .queue
            .iter()
            .map(QueueTrigger::policy)
            .collect();
        policies.push(hosted(
            crate::names::job_queue(&self.name),
            &self.jobs,
            Source::Jobs,
        ));
        for b in &self.triggers.blob {
            policies.push(hosted(
                b.queue(&self.name),
                &b.delivery,
                Source::Blob(b.clone()),
            ));
        }
        if let Some(t) = &self.triggers.timer {
            policies.push(hosted(
                TimerTrigger::queue(&self.name),
                &t.delivery,
                Source::Timer(t.clone()),
            ));
        }
        policies
    }

    /// What the executor runs version `version` (component `digest`) of
    /// this function with. Call on a validated manifest.
    pub fn profile(&self, version: u32, digest: &str) -> Profile {
        Profile {
            function: self.name.clone(),
            version,
            digest: digest.to_string(),
            limits: self.limits(),
            grants: self.grants.clone(),
            config: self.config.clone(),
            trusted: self.isolation == Isolation::Trusted,
        }
    }
}

#[cfg(test)]
mod tests;
