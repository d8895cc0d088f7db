//! What a guest call turned into: the seam's plain data from wasmtime's
//! (the output, a trap's precise reason, the limits checked on what the
//! guest hands over), and the WIT types built from the seam's.

use super::GuestLogs;
use super::HostState;
use super::bindings::fnhost::job::types as wit;
use crate::exec::{
    ChangeKind, Event, Failure, Invocation, Limits, MAX_GUEST_ERROR_BYTES, MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES, MAX_OUTPUT_BYTES, MAX_OUTPUT_HEADERS, MAX_RESOURCES, Output,
    TrapReason,
};
use wasmtime::{Store, Trap};

/// The WIT invocation record for `inv`.
pub(super) fn wit_invocation(inv: Invocation) -> wit::Invocation {
    wit::Invocation {
        id: inv.id,
        function: inv.function,
        version: inv.version,
        attempt: inv.attempt,
        job_id: inv.job_id,
        checkpoint: inv.checkpoint,
        deadline_ms: inv.deadline_ms,
    }
}

/// The WIT event for `event` (the bodies move, nothing is copied).
pub(super) fn wit_event(event: Event) -> wit::Event {
    match event {
        Event::Http(r) => wit::Event::Http(wit::HttpRequest {
            method: r.method,
            path: r.path,
            query: r.query,
            params: r.params,
            headers: r.headers,
            body: r.body,
        }),
        Event::Queue(m) => wit::Event::Queue(wit::QueueMessage {
            id: m.id,
            queue: m.queue,
            body: m.body,
            attributes: m.attributes,
            dequeue_count: m.dequeue_count,
            enqueued_at_ms: m.enqueued_at_ms,
            group: m.group,
            correlation_id: m.correlation_id,
        }),
        Event::Blob(c) => wit::Event::Blob(wit::BlobChange {
            bucket: c.bucket,
            key: c.key,
            kind: match c.kind {
                ChangeKind::Created => wit::ChangeKind::Created,
                ChangeKind::Updated => wit::ChangeKind::Updated,
                ChangeKind::Deleted => wit::ChangeKind::Deleted,
            },
            etag: c.etag,
            size: c.size,
            content_type: c.content_type,
        }),
        Event::Timer(t) => wit::Event::Timer(wit::TimerTick {
            schedule: t.schedule,
            scheduled_at_ms: t.scheduled_at_ms,
            past_due: t.past_due,
        }),
        Event::Invoke(payload) => wit::Event::Invoke(payload),
    }
}

/// The seam's output for the guest's.
pub(super) fn output(o: wit::Output) -> Output {
    Output {
        status: o.status,
        headers: o.headers,
        body: o.body,
    }
}

/// A guest's error message, cut to [`MAX_GUEST_ERROR_BYTES`].
pub(super) fn guest_error(message: String) -> String {
    crate::text::capped(message, MAX_GUEST_ERROR_BYTES)
}

/// An output within the limits, or why not.
pub(super) fn check_output(output: Output) -> Result<Output, Failure> {
    if output.body.len() > MAX_OUTPUT_BYTES {
        return Err(Failure::Limit(format!(
            "its output is {} bytes, over the limit of {MAX_OUTPUT_BYTES}; return less, or put the result in a bucket and return its key",
            output.body.len()
        )));
    }
    if output.headers.len() > MAX_OUTPUT_HEADERS {
        return Err(Failure::Limit(format!(
            "its output has {} headers, over the limit of {MAX_OUTPUT_HEADERS}",
            output.headers.len()
        )));
    }
    for (name, value) in &output.headers {
        if name.len() > MAX_HEADER_NAME_BYTES || value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(Failure::Limit(format!(
                "its output header {} is over the limits of {MAX_HEADER_NAME_BYTES} bytes for a name and {MAX_HEADER_VALUE_BYTES} for a value",
                crate::text::quote(name)
            )));
        }
    }
    Ok(output)
}

/// True when wasmtime refused to copy more than the host-call budget
/// ([`MAX_HOSTCALL_BYTES`]) from the guest. (wasmtime has no public type
/// for it; its message is matched, and a test keeps the match honest.)
pub(super) fn is_hostcall_overflow(err: &wasmtime::Error) -> bool {
    err.chain().any(|e| {
        e.to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    })
}

/// Turn a wasmtime error from a guest call into a precise reason.
pub(super) fn classify(
    err: &wasmtime::Error,
    store: &Store<HostState>,
    limits: &Limits,
    logs: &GuestLogs,
) -> TrapReason {
    if let Some(requested) = store.data().limiter.memory_refused() {
        return TrapReason::MemoryLimit {
            limit: limits.memory_bytes,
            requested,
        };
    }
    let too_many_resources = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) || e.to_string().contains("store handle limit exceeded")
    });
    if too_many_resources {
        return TrapReason::TooManyResources {
            limit: MAX_RESOURCES,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TrapReason::FuelExhausted { limit: limits.fuel },
        Some(Trap::StackOverflow) => TrapReason::StackOverflow,
        Some(Trap::UnreachableCodeReached) => match logs.panic_message() {
            Some(msg) => TrapReason::Panic(guest_error(msg)),
            None => TrapReason::Other(Trap::UnreachableCodeReached.to_string()),
        },
        Some(trap) => TrapReason::Other(trap.to_string()),
        None => TrapReason::Host(error_chain(err)),
    }
}

/// A wasmtime error with its causes, on one line.
pub(super) fn error_chain(err: &wasmtime::Error) -> String {
    err.chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
