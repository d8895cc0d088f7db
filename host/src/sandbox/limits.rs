//! The memory and table limiter that enforces an invocation's [`Limits`]
//! inside wasmtime, across all of the instance's memories and tables.
//!
//! Knows only wasmtime's `ResourceLimiter`; where limits come from (the
//! manifest) is the caller's business.

use crate::exec::{Limits, MAX_TABLE_ELEMENTS};

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

    /// The most linear memory the invocation held at once, in bytes (a
    /// wasm memory only grows, so this is what it holds at the end).
    pub(super) fn memory_peak(&self) -> usize {
        self.memory_used
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
