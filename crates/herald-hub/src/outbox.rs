//! A session's bounded outbound queue.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::ErrorCode;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// How a session ends: the `pusher:error` to send (if any) and the close frame's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    /// Send a `pusher:error` with this code and reason before the close frame.
    pub send_error: bool,
}

impl Close {
    /// A Pusher error that ends the connection: `pusher:error`, then the close frame.
    pub fn error(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self { code: code.code(), reason: reason.into(), send_error: true }
    }

    /// A close frame alone (the client went away, or asked to close).
    pub fn plain(code: u16, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), send_error: false }
    }
}

/// The outcome of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The frame did not fit: the outbox dropped its queue and is now closing with 4100.
    Overflow,
    /// The outbox was already closing; the frame was dropped.
    Closed,
}

/// What the writer takes from the queue at once: every pending frame, and the close
/// that follows them if the session is ending.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Bytes>,
    pub close: Option<Close>,
}

/// A session's outbound queue, bounded in bytes. Producers (the hub, the session's
/// own reader) never wait: a frame that does not fit closes the session with 4100, so
/// one slow consumer never blocks a fan-out or grows memory without bound.
///
/// At most `limit` bytes wait in the queue; the writer holds at most one more batch
/// while writing it. Idle, an outbox holds no buffers (an empty `VecDeque` does not
/// allocate).
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    closing: CancellationToken,
    limit: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            limit,
        }
    }

    /// Queues a frame for the writer.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Push::Closed;
        }
        if state.bytes + frame.len() > self.limit {
            // Nothing queued will be sent: free it now, and tell the client why.
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.close = Some(Close::error(
                ErrorCode::OverCapacity,
                "over capacity: the connection could not keep up with its channels",
            ));
            drop(state);
            self.closing.cancel();
            self.wake.notify_one();
            return Push::Overflow;
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        self.wake.notify_one();
        Push::Queued
    }

    /// Ends the session after the frames already queued. The first close wins.
    pub fn close(&self, close: Close) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some(close);
            drop(state);
            self.closing.cancel();
            self.wake.notify_one();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves once the session is closing (for the reader, which stops reading).
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    /// Waits until there is something to write, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut state = self.state.lock();
                if !state.frames.is_empty() || state.close.is_some() {
                    state.bytes = 0;
                    return Batch {
                        frames: std::mem::take(&mut state.frames).into(),
                        close: state.close.take(),
                    };
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the
            // check above and this await is not lost.
            self.wake.notified().await;
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_everything_pending_then_the_close() {
        let outbox = Outbox::new(100);
        assert_eq!(outbox.push(Bytes::from_static(b"a")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Push::Queued);
        outbox.close(Close::plain(1000, "bye"));
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Push::Closed);
        let batch = outbox.next_batch().await;
        assert_eq!(batch.frames, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert_eq!(batch.close, Some(Close::plain(1000, "bye")));
        assert!(outbox.is_closing());
    }

    #[tokio::test]
    async fn overflow_drops_the_queue_and_closes_with_4100() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(Bytes::from(vec![0; 6])), Push::Queued);
        assert_eq!(outbox.push(Bytes::from(vec![0; 6])), Push::Overflow);
        assert_eq!(outbox.queued_bytes(), 0);
        let batch = outbox.next_batch().await;
        assert!(batch.frames.is_empty());
        assert_eq!(batch.close.map(|c| c.code), Some(4100));
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_writer() {
        let outbox = std::sync::Arc::new(Outbox::new(10));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next_batch().await.frames.len() }
        });
        tokio::task::yield_now().await;
        outbox.push(Bytes::from_static(b"x"));
        assert_eq!(writer.await.unwrap(), 1);
    }
}
