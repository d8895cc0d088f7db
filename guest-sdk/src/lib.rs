//! The fnhost guest SDK: write a background job as one plain Rust function.
//!
//! A job is a function marked [`job`] that takes the [`Event`] that started it
//! (and optionally the [`Invocation`] it runs in) and returns
//! [`Result<Output>`]. Build the crate for `wasm32-wasip2` (`fnhost build`) and
//! deploy it with `fnhost deploy`; the host runs every invocation in a fresh
//! sandbox.
//!
//! ```no_run
//! use fnhost_sdk::{Event, Output, Result, job};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Order { id: String, quantity: u32 }
//!
//! #[derive(Serialize)]
//! struct Accepted { id: String }
//!
//! #[job]
//! fn accept(event: Event) -> Result<Output> {
//!     let order: Order = event.json()?;
//!     if order.quantity == 0 {
//!         // A permanent failure: retrying cannot help.
//!         return Err(fnhost_sdk::Error::fail(format!("order {} has no items", order.id)));
//!     }
//!     fnhost_sdk::progress(100, "accepted")?;
//!     Output::json(&Accepted { id: order.id })
//! }
//! # fn main() {}
//! ```
//!
//! Errors: `?` turns any `std::error::Error` into a [`Error::fail`]; use
//! [`Error::retry`] (or [`ResultExt::or_retry`]) for transient failures that
//! deserve another attempt. A panic or trap is a failed attempt too.
//!
//! This crate knows the WIT contract (`wit/job.wit`) and nothing of the host.
#![deny(missing_docs)]

use serde::{Serialize, de::DeserializeOwned};
use std::fmt;

pub use fnhost_sdk_macro::job;

/// Raw bindings generated from `wit/job.wit`. Prefer the re-exports and
/// helpers at the crate root.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "job",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_job",
        default_bindings_module: "::fnhost_sdk::bindings",
    });
}

pub use bindings::fnhost::job::types::{
    BlobChange, ChangeKind, Event, HttpRequest, Invocation, Output, QueueMessage, TimerTick,
};

/// Host storage: buckets of objects, limited to the manifest's grants.
pub mod storage {
    pub use crate::bindings::fnhost::job::storage::*;

    /// Every object whose key starts with `prefix`, in key order, fetched a
    /// page (up to 1,000) at a time as the iterator is consumed, so a bucket
    /// of any size can be walked. Deleting the objects already seen while
    /// walking is safe: the next page starts after the last key seen.
    pub fn objects(bucket: &str, prefix: &str) -> Objects {
        Objects {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            page: Vec::new().into_iter(),
            next: Some(None),
        }
    }

    /// The iterator of [`objects`].
    pub struct Objects {
        bucket: String,
        prefix: String,
        page: std::vec::IntoIter<ObjectMeta>,
        /// `Some(start_after)` while more pages may follow.
        next: Option<Option<String>>,
    }

    impl Iterator for Objects {
        type Item = Result<ObjectMeta, StorageError>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some(object) = self.page.next() {
                    return Some(Ok(object));
                }
                let start_after = self.next.take()?;
                match list_page(&self.bucket, &self.prefix, start_after.as_deref(), 1_000) {
                    Ok(page) => {
                        self.next = page.next_start_after.map(Some);
                        self.page = page.objects.into_iter();
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
        }
    }
}

/// Host queues: send messages to queues the manifest grants.
pub mod queue {
    pub use crate::bindings::fnhost::job::queue::*;
}

/// A job's error: whether it is worth another attempt, and why.
///
/// `?` converts any `std::error::Error` into a permanent failure
/// ([`Error::fail`]). Mark transient failures with [`Error::retry`].
pub struct Error {
    retry: bool,
    message: String,
}

impl Error {
    /// A transient failure: the host tries again later, with backoff, up to
    /// the function's attempt limit.
    pub fn retry(message: impl Into<String>) -> Self {
        Error {
            retry: true,
            message: message.into(),
        }
    }

    /// A permanent failure: the host does not try again (a queue message goes
    /// to its dead-letter queue).
    pub fn fail(message: impl Into<String>) -> Self {
        Error {
            retry: false,
            message: message.into(),
        }
    }

    /// True when the host should try again.
    pub fn is_retry(&self) -> bool {
        self.retry
    }

    /// The message the host records.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retry { "retry" } else { "fail" };
        write!(f, "{kind}: {}", self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::fail(message)
    }
}

/// The result of a job or an SDK call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Mark the error of any result as transient or permanent, with context.
pub trait ResultExt<T> {
    /// On error, a retryable [`Error`] that starts with `context`.
    fn or_retry(self, context: &str) -> Result<T>;
    /// On error, a permanent [`Error`] that starts with `context`.
    fn or_fail(self, context: &str) -> Result<T>;
}

impl<T, E: fmt::Display> ResultExt<T> for std::result::Result<T, E> {
    fn or_retry(self, context: &str) -> Result<T> {
        self.map_err(|e| Error::retry(format!("{context}: {e}")))
    }
    fn or_fail(self, context: &str) -> Result<T> {
        self.map_err(|e| Error::fail(format!("{context}: {e}")))
    }
}

impl Event {
    /// The payload: the request body, message body or invoke payload. Empty
    /// for blob and timer events, which carry their data in fields.
    pub fn payload(&self) -> &[u8] {
        match self {
            Event::Http(req) => &req.body,
            Event::Queue(msg) => &msg.body,
            Event::Invoke(data) => data,
            Event::Blob(_) | Event::Timer(_) => &[],
        }
    }

    /// Parse the payload as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.payload())
            .map_err(|e| Error::fail(format!("the payload is not the JSON this job expects: {e}")))
    }

    /// A short name of the event's kind: `http`, `queue`, `blob`, `timer` or `invoke`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Http(_) => "http",
            Event::Queue(_) => "queue",
            Event::Blob(_) => "blob",
            Event::Timer(_) => "timer",
            Event::Invoke(_) => "invoke",
        }
    }
}

fn lookup<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl HttpRequest {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        lookup(&self.headers, name)
    }

    /// A parameter captured by the route, e.g. `name` in `/hello/{name}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter with this name, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// Parse the body as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::fail(format!(
                "the request body is not the JSON this job expects: {e}"
            ))
        })
    }
}

/// Decode `+` and `%XX` escapes of a query component; invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Output {
    /// An empty `200` output.
    pub fn empty() -> Self {
        Output {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `200` output with a body and its content type.
    pub fn bytes(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Output {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A `200` plain-text output.
    pub fn text(body: impl Into<String>) -> Self {
        Self::bytes("text/plain; charset=utf-8", body.into())
    }

    /// A `200` JSON output.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::fail(format!("cannot encode the output as JSON: {e}")))?;
        Ok(Self::bytes("application/json", body))
    }

    /// The same output with another status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same output with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Report progress of the running invocation: a percentage (0–100) and a
/// short message. The host records it on the invocation (and on the job
/// record for async jobs).
pub fn progress(percent: u8, message: &str) -> Result<()> {
    Ok(bindings::fnhost::job::context::progress(percent, message)?)
}

/// Save a checkpoint: if this attempt is cut off, the next attempt receives
/// it as [`Invocation::checkpoint`].
pub fn checkpoint<T: Serialize + ?Sized>(state: &T) -> Result<()> {
    let bytes = serde_json::to_vec(state)
        .map_err(|e| Error::fail(format!("cannot encode the checkpoint as JSON: {e}")))?;
    Ok(bindings::fnhost::job::context::checkpoint(&bytes)?)
}

/// A configuration value from the function's manifest (`[config]`).
pub fn config(key: &str) -> Option<String> {
    bindings::fnhost::job::context::config(key)
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// Convert a job's result into the WIT result the host receives.
    pub fn finish(result: Result<Output>) -> std::result::Result<Output, bindings::JobError> {
        result.map_err(|e| {
            if e.retry {
                bindings::JobError::Retry(e.message)
            } else {
                bindings::JobError::Fail(e.message)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            params: vec![("name".into(), "ada".into())],
            headers: vec![("content-type".into(), "text/plain".into())],
            body: br#"{"n": 3}"#.to_vec(),
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let req = request("a=1&name=Ada+Lovelace&pct=100%25&bad=%zz");
        assert_eq!(req.query_param("name").as_deref(), Some("Ada Lovelace"));
        assert_eq!(req.query_param("pct").as_deref(), Some("100%"));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn headers_and_params() {
        let req = request("");
        assert_eq!(req.header("Content-Type"), Some("text/plain"));
        assert_eq!(req.param("name"), Some("ada"));
        #[derive(serde::Deserialize)]
        struct N {
            n: u32,
        }
        assert_eq!(req.json::<N>().unwrap().n, 3);
    }

    #[test]
    fn question_mark_makes_a_permanent_failure() {
        fn parse() -> Result<u32> {
            Ok("x".parse::<u32>()?)
        }
        let err = parse().unwrap_err();
        assert!(!err.is_retry());
        assert!(err.message().contains("invalid digit"));
        let err = "x"
            .parse::<u32>()
            .or_retry("reading the count")
            .unwrap_err();
        assert!(err.is_retry());
        assert!(err.message().starts_with("reading the count: "));
    }

    #[test]
    fn finish_keeps_the_kind() {
        assert!(matches!(
            __private::finish(Err(Error::retry("later"))),
            Err(bindings::JobError::Retry(m)) if m == "later"
        ));
        let out = __private::finish(Output::json(&[1, 2])).unwrap();
        assert_eq!(out.body, b"[1,2]");
        assert_eq!(out.headers[0].1, "application/json");
    }
}
