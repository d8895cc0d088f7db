//! Text that came from a guest or a client, made safe to repeat: quoted
//! with at most a short prefix in error messages, cut to a cap at a
//! character boundary before it is stored, and escaped before it is
//! written to the host log (so a guest cannot forge log lines).
//!
//! A leaf: it knows nothing of the rest of the host.

use std::fmt;

/// The most bytes of a caller's value that an error message quotes.
pub const QUOTE_BYTES: usize = 64;

/// `value` quoted as `{:?}` would, but at most [`QUOTE_BYTES`] of it: a
/// longer value is cut and its length given, so an error about a 1 MB key
/// is a line, not a megabyte.
pub fn quote(value: &str) -> String {
    if value.len() <= QUOTE_BYTES {
        return format!("{value:?}");
    }
    let head = cut(value, QUOTE_BYTES);
    format!("{head:?}… ({} bytes)", value.len())
}

/// The longest prefix of `value` of at most `max` bytes that ends on a
/// character boundary.
pub fn cut(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// `value` cut to at most `max` bytes for storing, with a note of how long
/// it was when it had to be cut.
pub fn capped(value: String, max: usize) -> String {
    if value.len() <= max {
        return value;
    }
    let note = format!("… (cut: {} bytes in all)", value.len());
    let keep = cut(&value, max.saturating_sub(note.len()));
    format!("{keep}{note}")
}

/// Displays text for the host log with control characters (newlines,
/// carriage returns, escape sequences) escaped as `\n`, `\r`, `\u{1b}`:
/// whatever a guest writes stays inside one log line.
pub struct LogSafe<'a>(pub &'a str);

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_quoted_by_a_prefix_and_their_length() {
        assert_eq!(quote("orders"), "\"orders\"");
        let key = "k".repeat(1_200_000);
        let q = quote(&key);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("… (1200000 bytes)"), "{q}");
        // Never splits a character.
        let wide = "é".repeat(100);
        let head = format!("{:?}", "é".repeat(32));
        assert!(quote(&wide).starts_with(head.trim_end_matches('"')));
    }

    #[test]
    fn capped_values_keep_a_prefix_and_say_they_were_cut() {
        assert_eq!(capped("short".into(), 10), "short");
        let c = capped("x".repeat(10_000), 100);
        assert!(c.len() <= 100, "{}", c.len());
        assert!(c.ends_with("(cut: 10000 bytes in all)"), "{c}");
    }

    #[test]
    fn control_characters_cannot_start_a_log_line() {
        let forged = "ok\n2026-12-02T00:00:00Z  INFO fnhost: deployed\r\x1b[2K";
        let shown = LogSafe(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\x1b'));
        assert_eq!(
            shown,
            "ok\\n2026-12-02T00:00:00Z  INFO fnhost: deployed\\r\\u{1b}[2K"
        );
    }
}
