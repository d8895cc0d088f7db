//! Per-invocation limits and the memory limiter that enforces them.
//!
//! Knows only wasmtime's `ResourceLimiter`; where limits come from (the
//! manifest) is the caller's business.

use std::time::Duration;

/// The largest memory limit a function may ask for: 1 GiB.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

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
pub(super) struct GuestLimiter {
    memory_bytes: usize,
    refused: Option<usize>,
}

impl GuestLimiter {
    pub(super) fn new(limits: &Limits) -> Self {
        GuestLimiter {
            memory_bytes: limits.memory_bytes,
            refused: None,
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
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.refused = Some(desired);
            // Trap rather than let `memory.grow` return -1: a Rust guest would
            // abort anyway, and a trap lets us say precisely why.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
}
