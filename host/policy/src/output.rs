//! Where a policy's stdout and stderr go: a bounded buffer in memory, one
//! per call, never the agent's own streams.
//!
//! A Rust guest prints through `wasi:cli/stdout` and `stderr`, and every
//! panic message goes to stderr. Writing to the process's real streams
//! would let a policy flood the agent's log, forge its lines, and (through
//! wasmtime-wasi's blocking stdio inside a tokio runtime) kill the process.
//! Here the first [`CAPACITY`] bytes are kept and the rest is counted and
//! dropped; a write never fails, so printing is never itself a failure.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of one stream kept per call.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
struct Buffer {
    kept: Vec<u8>,
    dropped: usize,
}

/// One captured stream. Clones share the buffer.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Buffer>>);

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let Ok(mut b) = self.0.lock() else { return };
        let room = CAPACITY.saturating_sub(b.kept.len());
        let take = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..take]);
        b.dropped += bytes.len() - take;
    }

    /// What was written, as text with invalid UTF-8 replaced and trailing
    /// whitespace removed, noting what was dropped. Empty when nothing was
    /// written. Control characters are left as they are: whoever shows the
    /// text escapes it.
    pub fn text(&self) -> String {
        let Ok(b) = self.0.lock() else { return String::new() };
        let mut text = String::from_utf8_lossy(&b.kept).trim_end().to_owned();
        if b.dropped > 0 {
            text.push_str(&format!(" [… {} more bytes dropped]", b.dropped));
        }
        text
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: what does not fit is dropped, not refused.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
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

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let mut c = Capture::default();
        assert_eq!(c.text(), "");
        c.write(Bytes::from_static(b"hello\n")).expect("write");
        assert_eq!(c.text(), "hello");
        c.write(Bytes::from(vec![b'x'; CAPACITY])).expect("a write past the cap still succeeds");
        let text = c.text();
        assert_eq!(text.len() - text.find(" [").unwrap_or(0), " [… 6 more bytes dropped]".len());
        assert!(text.ends_with("[… 6 more bytes dropped]"), "{text}");
    }
}
