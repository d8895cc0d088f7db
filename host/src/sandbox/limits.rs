//! Per-invocation limits and the memory limiter that enforces them.
//!
//! Knows only wasmtime's `ResourceLimiter`; where limits come from (the
//! manifest) is the caller's business.

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Table elements an instance may grow to; generous for real programs,
/// small enough that a table bomb is stopped early.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Refuses memory growth past the limit and remembers that it did, so the
/// failure can be reported as a memory-limit hit rather than a bare trap.
/// The limit is for the invocation as a whole: a component with several
/// memories (or tables) shares one budget among them.
pub(super) struct GuestLimiter {
    memory_bytes: usize,
    refused: Option<usize>,
    /// Bytes of every linear memory of the invocation, together.
    memory_used: usize,
    /// Elements of every table of the invocation, together.
    table_used: usize,
}

impl GuestLimiter {
    pub(super) fn new(limits: &Limits) -> Self {
        GuestLimiter {
            memory_bytes: limits.memory_bytes,
            refused: None,
            memory_used: 0,
            table_used: 0,
        }
    }

    /// The size of the refused growth, if growth was refused.
    pub(super) fn memory_refused(&self) -> Option<usize> {
        self.refused
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for a memory's creation too (from 0), so the sum covers
        // every memory of the invocation.
        let total = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_bytes {
            self.refused = Some(total);
            // Trap rather than let `memory.grow` return -1: a Rust guest would
            // abort anyway, and a trap lets us say precisely why.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_bytes);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_used
            .saturating_sub(current)
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_used = total;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn growth_past_the_limit_is_refused_and_remembered() {
        let limits = Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut limiter = GuestLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert_eq!(limiter.memory_refused(), None);
        assert!(limiter.memory_growing(1 << 20, 2 << 20, None).is_err());
        assert_eq!(limiter.memory_refused(), Some(2 << 20));
    }

    #[test]
    fn several_memories_share_one_budget() {
        let limits = Limits {
            memory_bytes: 8 << 20,
            ..Limits::default()
        };
        let mut limiter = GuestLimiter::new(&limits);
        // Two memories of 4 MiB each fit; growing either past that does not.
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(4 << 20, 5 << 20, None).is_err());
        assert_eq!(limiter.memory_refused(), Some(9 << 20));
        // So do tables.
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(!limiter.table_growing(0, 1, None).unwrap());
    }
}
