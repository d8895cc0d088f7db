//! The per-invocation limits ([`Limits`]) and the maxima a manifest may
//! ask for, and the caps on what a guest may hand the host: the numbers
//! the README's limits table and SECURITY.md quote. Plain data.

use std::time::Duration;

/// The largest memory limit a function may ask for: 1 GiB.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

/// The most fuel a function may ask for: more than any guest can burn in
/// the longest timeout (15 minutes at ~10^10 instructions a second).
pub const MAX_FUEL: u64 = 10_000_000_000_000;

/// The most guest output (stdout, and stderr) a function may keep per invocation.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// The largest output body an invocation may return, whatever its trigger:
/// an HTTP response, a synchronous invoke, an async job's result, a queue,
/// blob or timer run's output (its reply carries at most 1 MiB). As Lambda
/// answers synchronous calls up to 6 MB.
pub const MAX_OUTPUT_BYTES: usize = 6 << 20;
/// The most headers on an output.
pub const MAX_OUTPUT_HEADERS: usize = 64;
/// The longest output header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// The longest output header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;

/// The longest error message (`retry`, `fail`, a panic's) kept from a
/// guest; the rest is cut, with a note of the length.
pub const MAX_GUEST_ERROR_BYTES: usize = 4096;

/// The most bytes a guest may hand the host in one call (the arguments of
/// a host call, or its result): the largest object (64 MiB) and its key.
/// Past it wasmtime refuses to copy, and the invocation fails.
pub const MAX_HOSTCALL_BYTES: usize = (64 << 20) + (64 << 10);

/// The most host resources (WASI streams, pollables, ...) an invocation may
/// hold at once; real guests hold a handful.
pub const MAX_RESOURCES: usize = 1024;

/// What one invocation may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Fuel units (roughly, wasm instructions) per invocation.
    pub fuel: u64,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time per invocation.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept per invocation; the rest is dropped.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(30),
            log_bytes: 64 << 10,
        }
    }
}

/// Table elements an instance may hold, all its tables together; generous
/// for real programs, small enough that a table bomb is stopped early.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The largest checkpoint a guest may save, in bytes.
pub const MAX_CHECKPOINT_BYTES: usize = 256 << 10;

/// The longest progress message kept, in bytes.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

/// The most objects one guest `list-objects` call returns.
pub const MAX_LISTED: usize = 10_000;

/// The most objects one guest `list-page` call returns.
pub const MAX_PAGE: u32 = 1_000;

/// Denied guest calls recorded in the audit log per invocation; past it one
/// more line says the rest were not, so a guest cannot flood the log and
/// rotate others' entries away.
pub const MAX_AUDITED_DENIALS: u32 = 8;
