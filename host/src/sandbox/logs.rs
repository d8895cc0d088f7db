//! Guest stdout and stderr: captured per invocation with a size cap, and
//! handed back with the outcome (`crate::exec::Logs`, which logs them).
//!
//! A guest that prints without end is not stopped for it: what passes the
//! cap is counted and dropped, so the invocation's other limits decide.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What one invocation wrote to stdout and stderr.
#[derive(Debug, Clone)]
pub struct GuestLogs {
    stdout: Pipe,
    stderr: Pipe,
}

#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

/// One capped stream; clones share the buffer.
#[derive(Debug, Clone)]
pub struct Pipe {
    cap: usize,
    inner: Arc<Mutex<Captured>>,
}

impl Pipe {
    fn new(cap: usize) -> Self {
        Pipe {
            cap,
            inner: Arc::default(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(c.kept.len());
        let take = room.min(bytes.len());
        c.kept.extend_from_slice(&bytes[..take]);
        c.dropped += (bytes.len() - take) as u64;
    }

    /// The kept text (lossy UTF-8) and the number of bytes dropped.
    pub fn contents(&self) -> (String, u64) {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&c.kept).into_owned(), c.dropped)
    }
}

impl GuestLogs {
    /// Empty logs keeping at most `cap` bytes of each stream.
    pub fn new(cap: usize) -> Self {
        GuestLogs {
            stdout: Pipe::new(cap),
            stderr: Pipe::new(cap),
        }
    }

    pub(super) fn stdout_pipe(&self) -> Pipe {
        self.stdout.clone()
    }

    pub(super) fn stderr_pipe(&self) -> Pipe {
        self.stderr.clone()
    }

    /// Stdout: kept text and dropped byte count.
    pub fn stdout(&self) -> (String, u64) {
        self.stdout.contents()
    }

    /// Stderr: kept text and dropped byte count.
    pub fn stderr(&self) -> (String, u64) {
        self.stderr.contents()
    }

    /// The message of a Rust panic printed to stderr, if there is one.
    pub fn panic_message(&self) -> Option<String> {
        let (text, _) = self.stderr();
        let start = text.find("panicked at ")?;
        let rest = &text[start + "panicked at ".len()..];
        // "src/lib.rs:10:5:\nmessage\nnote: ..."
        let (location, message) = rest.split_once('\n').unwrap_or((rest, ""));
        let message = message.lines().next().unwrap_or("").trim();
        let location = location.trim_end_matches(':');
        Some(if message.is_empty() {
            location.to_string()
        } else {
            format!("{message} (at {location})")
        })
    }

    /// What was captured, as the seam's plain data.
    pub fn into_logs(self) -> crate::exec::Logs {
        let (stdout, stdout_dropped) = self.stdout();
        let (stderr, stderr_dropped) = self.stderr();
        crate::exec::Logs {
            stdout,
            stdout_dropped,
            stderr,
            stderr_dropped,
        }
    }
}

impl IsTerminal for Pipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Pipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Pipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Pipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_cap_is_counted_and_dropped() {
        let logs = GuestLogs::new(8);
        logs.stdout_pipe().push(b"hello ");
        logs.stdout_pipe().push(b"world");
        assert_eq!(logs.stdout(), ("hello wo".to_string(), 3));
    }

    #[test]
    fn panic_messages_are_found_in_stderr() {
        let logs = GuestLogs::new(1024);
        logs.stderr_pipe().push(b"\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(
            logs.panic_message().as_deref(),
            Some("boom (at src/lib.rs:7:5)")
        );
        assert_eq!(GuestLogs::new(8).panic_message(), None);
    }
}
