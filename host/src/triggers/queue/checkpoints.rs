//! A delivery's checkpoint as the queue keeps it: the name of the function
//! that saved it beside its bytes, so that it is handed back only to that
//! function's next attempt. Several functions may be bound to one queue
//! (each message goes to one of them per attempt); one function's
//! checkpoint never reaches another, whatever its bytes say.
//!
//! Stored as `FNC1` ‖ the name's length (one byte) ‖ the name ‖ the
//! function's bytes. Whatever does not read so (a checkpoint saved before
//! fnhost kept owners) belongs to no function and is not handed over.

const MAGIC: &[u8] = b"FNC1";

/// `state`, saved by `function`, as the queue keeps it.
pub(super) fn frame(function: &str, state: &[u8]) -> Vec<u8> {
    let name = function.as_bytes();
    // Function names are at most 63 bytes (`names::FunctionName`).
    let len = u8::try_from(name.len()).expect("a function name is under 256 bytes");
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + name.len() + state.len());
    out.extend_from_slice(MAGIC);
    out.push(len);
    out.extend_from_slice(name);
    out.extend_from_slice(state);
    out
}

/// The bytes of the checkpoint `stored`, if `function` saved it.
pub(super) fn open(stored: &[u8], function: &str) -> Option<Vec<u8>> {
    let rest = stored.strip_prefix(MAGIC)?;
    let (&len, rest) = rest.split_first()?;
    let (name, state) = rest.split_at_checked(len as usize)?;
    (name == function.as_bytes()).then(|| state.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_goes_back_to_the_function_that_saved_it_only() {
        let stored = frame("vault", br#"{"step": 3}"#);
        assert_eq!(
            open(&stored, "vault").as_deref(),
            Some(&br#"{"step": 3}"#[..])
        );
        assert_eq!(open(&stored, "gatekeeper"), None);
        assert_eq!(
            open(&stored, "vaul"),
            None,
            "a prefix of the name is another name"
        );
        // Bytes not framed here (one function's raw bytes, an old
        // checkpoint, a sealed box) belong to no function.
        for raw in [
            &b"FNHQ1sealed"[..],
            b"{\"step\": 999}",
            b"",
            b"FNC1",
            b"FNC1\x05vau",
        ] {
            assert_eq!(open(raw, "vault"), None, "{raw:?}");
        }
        // Empty state is a checkpoint too.
        assert_eq!(open(&frame("f", b""), "f").as_deref(), Some(&b""[..]));
    }
}
