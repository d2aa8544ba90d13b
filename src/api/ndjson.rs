//! NDJSON response bodies streamed from the store: lines are read on a blocking thread and
//! handed to the connection through a bounded queue, so a 10,000-record batch never sits whole
//! in memory.
//!
//! Not `http_body_util::channel::Channel`: its body can report the end before a frame sent just
//! before the sender was dropped (it polls the frame queue, then the sender's liveness), which lost
//! the whole body of a small batch about once in 10,000 responses. Here the end is the queue's own
//! end, which tokio reports only once every sent item has been received.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{Body, BodyError, typed};

/// Bytes gathered before a frame is sent: fewer, larger writes.
const FRAME_BYTES: usize = 64 * 1024;

/// Frames queued ahead of the client: bounds memory to a few frames per response.
const FRAMES_AHEAD: usize = 4;

/// Streams `lines` (each without its newline) as a `200 application/x-ndjson` body. The status
/// line goes out before the first line is read, so a failed read can no longer become an error
/// status: it aborts the body instead (hyper then closes the connection without the terminating
/// chunk, which every HTTP client reports as a truncated response), and is logged as `what`.
pub fn ndjson<I, E>(lines: I, what: &'static str) -> Response<Body>
where
    I: Iterator<Item = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel(FRAMES_AHEAD);
    tokio::task::spawn_blocking(move || produce(lines, &tx, what));
    typed(StatusCode::OK, "application/x-ndjson", Queued(rx).boxed())
}

/// Reads `lines` into frames and queues them; stops when the client goes away (the receiver is
/// dropped with the connection).
fn produce<I, E>(lines: I, tx: &mpsc::Sender<Result<Bytes, BodyError>>, what: &'static str)
where
    I: Iterator<Item = Result<Vec<u8>, E>>,
    E: std::fmt::Display,
{
    let mut buf = BytesMut::with_capacity(FRAME_BYTES + 4096);
    for item in lines {
        match item {
            Ok(line) => {
                buf.extend_from_slice(&line);
                buf.extend_from_slice(b"\n");
            }
            Err(e) => {
                log::error!("{what}: reading failed mid-stream: {e}");
                // What was read is sent first, so the client sees exactly where it stopped.
                if !buf.is_empty() && tx.blocking_send(Ok(buf.split().freeze())).is_err() {
                    return;
                }
                let _ = tx.blocking_send(Err(BodyError(format!("{what}: reading failed mid-stream"))));
                return;
            }
        }
        if buf.len() >= FRAME_BYTES && tx.blocking_send(Ok(buf.split().freeze())).is_err() {
            return;
        }
    }
    if !buf.is_empty() {
        let _ = tx.blocking_send(Ok(buf.freeze()));
    }
}

/// The receiving end as a response body: it ends when the producer has finished and its last
/// frame has been taken.
struct Queued(mpsc::Receiver<Result<Bytes, BodyError>>);

impl hyper::body::Body for Queued {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(rt: &tokio::runtime::Runtime, r: Response<Body>) -> Result<Bytes, BodyError> {
        rt.block_on(async { r.into_body().collect().await.map(|c| c.to_bytes()) })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
    }

    /// The producer may finish and drop its end while the body is being polled: the line it sent
    /// must still arrive. (With http_body_util's Channel this lost 1–2 bodies in 20,000.)
    #[test]
    fn a_short_stream_is_never_lost_when_the_producer_ends_mid_poll() {
        let rt = runtime();
        let _in_runtime = rt.enter();
        let lost = (0..50_000)
            .filter(|i| {
                let lines = std::iter::once(Ok::<_, String>(format!("line {i}").into_bytes()));
                collect(&rt, ndjson(lines, "test")).unwrap() != format!("line {i}\n").as_bytes()
            })
            .count();
        assert_eq!(lost, 0, "bodies that came back short");
    }

    #[test]
    fn long_streams_arrive_whole_in_order() {
        let rt = runtime();
        let _in_runtime = rt.enter();
        let lines = (0..50_000).map(|i| Ok::<_, String>(format!("{{\"n\":{i}}}").into_bytes()));
        let body = collect(&rt, ndjson(lines, "test")).unwrap();
        let got: Vec<String> = String::from_utf8(body.to_vec()).unwrap().lines().map(str::to_owned).collect();
        assert_eq!(got.len(), 50_000);
        assert!(got.iter().enumerate().all(|(i, l)| *l == format!("{{\"n\":{i}}}")));
        assert!(
            collect(&rt, ndjson(std::iter::empty::<Result<Vec<u8>, String>>(), "test")).unwrap().is_empty()
        );
    }

    /// A read failing mid-stream makes the body fail, not end cleanly looking complete.
    #[test]
    fn a_failed_read_aborts_the_body() {
        let rt = runtime();
        let _in_runtime = rt.enter();
        let lines = (0..10_000).map(|i| if i < 9_000 { Ok(vec![b'x'; 20]) } else { Err("disk gone") });
        let e = collect(&rt, ndjson(lines, "test")).unwrap_err();
        assert!(e.to_string().contains("test: reading failed mid-stream"), "{e}");
    }
}
