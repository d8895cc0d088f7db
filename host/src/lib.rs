//! fnhost: a host for background jobs written as WebAssembly components.
//!
//! The modules, from the top layer down (each uses only the layers below
//! it; `host/tests/layers.rs` keeps it so; see `docs/architecture.md`):
//! - [`cli`]: the `fnhost` command line;
//! - [`host`]: the composition root, where a host is put together;
//! - [`server`]: the admin API and the HTTP trigger;
//! - [`triggers`]: background triggers (queues, blob changes, timers) that invoke through the dispatcher;
//! - [`records`]: the invocation history, kept from the dispatcher's event stream;
//! - [`telemetry`]: metrics for Prometheus, from the same stream and the stores;
//! - [`dispatcher`]: deployments: active versions and routes; hands events to the executor;
//! - [`manifest`]: `fnhost.toml`, parsed and checked;
//! - [`backends`]: the stores behind the seams (embedded: SQLite + files);
//! - [`sandbox`]: wasmtime: engine, compiled components, one store per invocation; the local executor;
//! - [`exec`]: the execution seam: what runs, under which limits, and how it ended, as plain data;
//! - [`jobs`]: async job records and their store trait; completion callbacks;
//! - [`queue`], [`blobs`]: the queue and blob backend traits, their types and validation;
//! - [`registry`]: deployed functions and their versions, on disk;
//! - [`state`]: shared documents with conditional writes (a fleet's job records);
//! - [`tokens`]: scoped admin tokens, kept hashed in the state store;
//! - [`audit`]: the audit log of refusals and changes, JSON lines in the data dir;
//! - [`capabilities`]: grants, checked in one place for every guest call;
//! - [`names`]: function, queue and bucket names; the host's own queues;
//! - [`text`], [`clock`], [`task`], [`files`]: leaves every layer shares.

pub mod audit;
pub mod backends;
pub mod blobs;
pub mod capabilities;
pub mod cli;
pub mod clock;
pub mod confine;
pub mod dispatcher;
pub mod exec;
pub mod files;
pub mod host;
pub mod jobs;
pub mod manifest;
pub mod names;
pub mod queue;
pub mod records;
pub mod registry;
pub mod sandbox;
pub mod server;
pub mod services;
pub mod state;
pub mod task;
pub mod telemetry;
pub mod text;
pub mod tokens;
pub mod triggers;
pub mod trusted;

#[cfg(test)]
mod proptests;
