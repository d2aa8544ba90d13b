//! A lingering close, as nginx does it: when a connection ends, its write side is shut first and
//! what the client still sends is read and thrown away, within bounds, before the socket closes.
//!
//! Without it, an early answer (403, 413, 415 sent before the body was read) was lost by every
//! client that writes its whole body before reading — Python `requests`, most Java and .NET
//! clients: the server closed with unread bytes in its receive buffer, the kernel answered them
//! with a reset, and the client saw a broken connection instead of the answer.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The longest a closing connection is drained (nginx's `lingering_time`).
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// The longest the client may send nothing while it is drained (nginx's `lingering_timeout`).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);
/// The most bytes drained: beyond the largest body the API reads, a client is not writing a
/// request it wants answered.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// An I/O stream whose shutdown lingers (see the module documentation). Reads and writes pass
/// through unchanged.
pub struct Lingering<IO> {
    io: IO,
    state: State,
}

enum State {
    Open,
    Draining { idle: Pin<Box<Sleep>>, end: Instant, left: u64 },
    Closed,
}

impl<IO> Lingering<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Self { io, state: State::Open }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Lingering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// Shuts the write side (for TLS: close_notify, then the TCP write half), then reads and
    /// discards until the client closes too, goes quiet, or a bound is reached.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    // A failed shutdown (the peer is gone) leaves nothing to drain.
                    if ready!(Pin::new(&mut this.io).poll_shutdown(cx)).is_err() {
                        this.state = State::Closed;
                        continue;
                    }
                    let now = Instant::now();
                    this.state = State::Draining {
                        idle: Box::pin(tokio::time::sleep_until(now + LINGER_IDLE)),
                        end: now + LINGER_TIME,
                        left: LINGER_BYTES,
                    };
                }
                State::Draining { idle, end, left } => {
                    if idle.as_mut().poll(cx).is_ready() || *left == 0 {
                        this.state = State::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => {
                            *left = left.saturating_sub(buf.filled().len() as u64);
                            let next = (Instant::now() + LINGER_IDLE).min(*end);
                            idle.as_mut().reset(next);
                        }
                        // The client closed (end of stream) or broke the connection.
                        _ => this.state = State::Closed,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The server answers after reading 10 bytes of a 16 MiB body and closes; the client, which
    /// writes everything before it reads, still reads the answer.
    #[tokio::test]
    async fn a_client_that_writes_first_reads_the_early_answer() {
        for linger in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = Lingering::new(tcp);
                let mut head = [0u8; 10];
                s.read_exact(&mut head).await.unwrap();
                s.write_all(b"early answer").await.unwrap();
                if linger {
                    s.shutdown().await.unwrap();
                }
                drop(s);
            });
            let mut c = TcpStream::connect(addr).await.unwrap();
            let body = vec![b'x'; 16 * 1024 * 1024];
            let wrote = c.write_all(&body).await;
            let mut answer = Vec::new();
            let read = c.read_to_end(&mut answer).await;
            server.await.unwrap();
            if linger {
                assert!(wrote.is_ok() && read.is_ok(), "{wrote:?} {read:?}");
                assert_eq!(answer, b"early answer");
            } else {
                // The control: without lingering the answer is lost to a reset.
                assert!(wrote.is_err() || read.is_err() || answer != b"early answer");
            }
        }
    }

    /// A client that sends nothing more is not waited for longer than the idle bound.
    #[tokio::test]
    async fn a_quiet_client_is_not_waited_for_beyond_the_idle_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let start = Instant::now();
        Lingering::new(tcp).shutdown().await.unwrap();
        let waited = Instant::now() - start;
        assert!(waited >= LINGER_IDLE && waited < LINGER_IDLE * 3, "{waited:?}");
    }
}
