//! fnhost: a host for background jobs written as WebAssembly components.
//!
//! The layers, each in its own module (see `docs/architecture.md`):
//! - [`manifest`]: `fnhost.toml`, parsed and validated;
//! - [`sandbox`]: wasmtime: engine, compiled components, one store per invocation;
//! - [`capabilities`]: grants, checked in one place for every guest call;
//! - [`registry`]: deployed functions and their versions, on disk;
//! - [`dispatcher`]: active versions, routes and the host-wide concurrency cap;
//! - [`queue`]: the durable queue store (embedded SQLite) behind its backend trait;
//! - [`blobs`]: buckets of objects (embedded folders + index) behind their backend trait;
//! - [`jobs`]: async job records (state, progress, results) and their store trait;
//! - [`triggers`]: background triggers (queues, blob changes, timers) that invoke through the dispatcher;
//! - [`server`]: the admin API and the HTTP trigger;
//! - [`cli`]: the `fnhost` command line;
//! - [`files`]: content hashes and atomic file writes, shared by the stores;
//! - [`text`]: caller text made safe to quote, store and log.

pub mod backends;
pub mod blobs;
pub mod capabilities;
pub mod cli;
pub mod clock;
pub mod dispatcher;
pub mod exec;
pub mod files;
pub mod host;
pub mod jobs;
pub mod manifest;
pub mod names;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod server;
pub mod task;
pub mod text;
pub mod triggers;

#[cfg(test)]
mod proptests;
