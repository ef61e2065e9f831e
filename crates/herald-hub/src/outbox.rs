//! A connection's send side: its socket, and a bounded queue of what the socket could
//! not take yet.
//!
//! Whoever has a frame for the connection — the hub fanning out a publication, or the
//! session answering its client — writes it straight into the socket when nothing is
//! queued ahead of it (a non-blocking `write`, under the outbox's lock so frames never
//! interleave). Only what the socket refuses is queued, and only then is the session's
//! task woken to wait for writability and drain the queue with vectored writes. So a
//! delivery to a reader that keeps up costs one system call and no task wake-up, and
//! an idle connection holds no buffer.
//!
//! Over TLS the outbox owns the connection's rustls state too, under the same lock:
//! a frame is encrypted into the connection's records by whoever pushes it and
//! written the same way. Frames enter rustls whole, and only when rustls has sent
//! everything before them, so the queue (and its bound, and an overflow) works as
//! over plain TCP: rustls holds at most one batch of records. The session reads
//! through [`Outbox::read`], which decrypts under the lock.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, Read, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use herald_core::{ErrorCode, protocol};
use parking_lot::{Mutex, MutexGuard};
use rustls::ServerConnection;
use tokio::{net::TcpStream, time::Instant};

use crate::frame;

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

    /// 1006 means "no close frame": the connection is unusable and is just dropped.
    fn is_abrupt(&self) -> bool {
        self.code == 1006
    }
}

/// The outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Taken for delivery: written to the socket or queued behind earlier frames.
    Queued,
    /// The frame did not fit: the outbox dropped its queue and is now closing with 4100.
    Overflow,
    /// The outbox was already closing (or its socket failed); the frame was dropped.
    Closed,
}

/// A snapshot of an outbox, for the session that drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Bytes are queued: wait for writability and call [`Outbox::write_pending`].
    pub pending: bool,
    /// Since when the queue has been waiting (the write timeout counts from here).
    pub stalled_since: Option<Instant>,
    /// The close code, once the session is ending (its frames are queued last).
    pub closing: Option<u16>,
    /// The socket failed or must be dropped without a close handshake.
    pub broken: bool,
}

/// At most this many frames go into one `writev`.
const MAX_IOVECS: usize = 64;

/// Over TLS, plaintext bytes encrypted at once when draining the queue: what rustls
/// holds beyond the queue's bound.
const TLS_BATCH: usize = 64 * 1024;

/// Bytes of plaintext taken out of rustls per step of [`Outbox::read`].
const READ_CHUNK: usize = 4096;

/// A connection's socket and bounded outbound queue. Producers never wait: a frame
/// that does not fit closes the connection with 4100, so one slow consumer never
/// blocks a fan-out or grows memory without bound.
pub struct Outbox {
    socket: TcpStream,
    /// The connection is TLS (its rustls state is in `state`).
    tls: bool,
    state: Mutex<State>,
    limit: usize,
    /// When the client was last heard from, in [`millis`].
    heard: AtomicU64,
    /// When an unanswered ping was sent, in [`millis`]; 0 if none is pending.
    pinged: AtomicU64,
}

/// Milliseconds on a process-wide monotonic clock (never 0): the unit of connection
/// liveness, cheap to store in an atomic.
pub fn millis() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(|| std::time::Instant::now() - std::time::Duration::from_millis(1));
    start.elapsed().as_millis() as u64
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Unwritten bytes in `frames`.
    bytes: usize,
    stalled_since: Option<Instant>,
    closing: Option<u16>,
    broken: bool,
    /// The session's task, to wake when there is news for it.
    waker: Option<Waker>,
    /// News since the session last looked (a wake-up is never lost).
    notified: bool,
    /// The TLS connection, when the client connected with TLS. Boxed: one pointer
    /// in plain connections.
    tls: Option<Box<ServerConnection>>,
}

impl State {
    /// Bytes wait to be written: frames queued, or TLS records rustls holds.
    fn pending(&self) -> bool {
        !self.frames.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// The socket failed: nothing more can be sent.
    fn mark_broken(&mut self) {
        self.broken = true;
        self.closing.get_or_insert(1006);
        self.frames.clear();
        self.bytes = 0;
        self.offset = 0;
    }

    fn queue(&mut self, frame: Bytes) {
        if self.frames.is_empty() {
            self.stalled_since = Some(Instant::now());
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }
}

/// The close of a connection that could not keep up.
fn over_capacity() -> Close {
    Close::error(ErrorCode::OverCapacity, "over capacity: the connection could not keep up with its channels")
}

/// Records news for the session and wakes it, after releasing the lock.
fn notify(mut state: MutexGuard<'_, State>) {
    state.notified = true;
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// What a connection's task woke for ([`Outbox::wake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The outbox has news: frames to drain, or a close.
    News,
    /// The socket is writable (or failed: `false`).
    Writable(bool),
    /// The socket is readable (or failed: `false`).
    Readable(bool),
}

impl Outbox {
    /// `limit` bounds the queued bytes (frames the socket could not take yet).
    pub fn new(socket: TcpStream, limit: usize) -> Self {
        Self {
            socket,
            tls: false,
            state: Mutex::new(State::default()),
            limit,
            heard: AtomicU64::new(millis()),
            pinged: AtomicU64::new(0),
        }
    }

    /// An outbox for a connection whose TLS handshake is done: frames are encrypted
    /// with `tls`. Its plaintext buffer must be empty (read out as the session's
    /// first input); records still to send are sent first.
    pub fn with_tls(socket: TcpStream, mut tls: ServerConnection, limit: usize) -> Self {
        // The queue bounds what waits; rustls holds at most one batch (see the module).
        tls.set_buffer_limit(None);
        let outbox = Self { tls: true, ..Self::new(socket, limit) };
        {
            let mut state = outbox.state.lock();
            state.tls = Some(Box::new(tls));
            outbox.write_queued(&mut state);
            if state.pending() {
                state.stalled_since = Some(Instant::now());
                state.notified = true;
            }
        }
        outbox
    }

    /// The most bytes it queues.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The connection's socket, for the session to read from and wait on.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Sends a frame (or several, concatenated: a burst then costs one system call):
    /// written at once if nothing waits ahead of it, queued otherwise.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return Push::Closed;
        }
        if state.pending() {
            // The session was woken when the queue filled and is waiting to drain it.
            if let Push::Overflow = self.queue_bounded(&mut state, frame) {
                self.begin_close(state, &over_capacity());
                return Push::Overflow;
            }
            return Push::Queued;
        }
        if let Some(tls) = state.tls.as_mut() {
            let flushed = match tls.writer().write_all(&frame) {
                Ok(()) => flush_tls(tls, &self.socket),
                Err(e) => Err(e),
            };
            match flushed {
                Ok(true) => {}
                Ok(false) => {
                    state.stalled_since = Some(Instant::now());
                    notify(state);
                }
                Err(_) => {
                    self.fail(state);
                    return Push::Closed;
                }
            }
            return Push::Queued;
        }
        let written = match self.socket.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.fail(state);
                return Push::Closed;
            }
        };
        if written < frame.len() {
            // Queued whole, with its written part marked, so that an overflow knows a
            // frame is half on the wire and keeps its rest.
            state.queue(frame);
            state.offset = written;
            state.bytes -= written;
            notify(state);
        }
        Push::Queued
    }

    #[cfg(test)]
    pub(crate) fn queue_without_writing(&self, frame: Bytes) {
        self.state.lock().queue(frame);
    }

    /// Writes what is queued, as far as the socket takes it (the session calls this
    /// when the socket is writable). The session re-reads [`Outbox::status`] after.
    pub fn write_pending(&self) {
        let mut state = self.state.lock();
        self.write_queued(&mut state);
    }

    /// Queues a frame behind others, within the limit. Over it, drops everything
    /// queued but the front frame's unwritten rest (cutting it would corrupt the
    /// stream) and returns `Overflow`: the caller then closes with [`over_capacity`].
    fn queue_bounded(&self, state: &mut State, frame: Bytes) -> Push {
        if state.bytes + frame.len() <= self.limit {
            state.queue(frame);
            return Push::Queued;
        }
        if state.offset > 0 {
            state.frames.truncate(1);
            state.bytes = state.frames.front().map_or(0, |f| f.len() - state.offset);
        } else {
            state.frames.clear();
            state.bytes = 0;
        }
        Push::Overflow
    }

    /// Ends the session after the frames already queued: queues the `pusher:error`
    /// (if any) and the close frame, and wakes the session to send them. The first
    /// close wins; 1006 drops the connection without a close frame.
    pub fn close(&self, close: Close) {
        let state = self.state.lock();
        if state.closing.is_none() {
            self.begin_close(state, &close);
        }
    }

    fn begin_close(&self, mut state: MutexGuard<'_, State>, close: &Close) {
        state.closing = Some(close.code);
        if close.is_abrupt() {
            state.broken = true;
        } else {
            if close.send_error {
                let code = ErrorCode::from_code(close.code);
                state.queue(frame::text(protocol::error(code, &close.reason).as_bytes()));
            }
            state.queue(frame::close(close.code, &close.reason));
        }
        notify(state);
    }

    /// The socket failed: nothing more can be sent.
    fn fail(&self, mut state: MutexGuard<'_, State>) {
        state.mark_broken();
        notify(state);
    }

    /// Ready when the outbox has news for the session: frames the socket did not take,
    /// or a close. Otherwise registers the task to be woken (only the last task that
    /// polled is). News between two polls is kept, never lost.
    pub fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if std::mem::take(&mut state.notified) {
            return Poll::Ready(());
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves when the outbox has news for the session (see [`Outbox::poll_news`]).
    pub async fn news(&self) {
        std::future::poll_fn(|cx| self.poll_news(cx)).await;
    }

    /// Waits for what the connection's task must act on next: news from the outbox,
    /// room in the socket for the frames it did not take (only when `pending`, see
    /// [`Status::pending`]), or input. News comes first, so a close is never kept
    /// waiting behind a busy socket.
    pub async fn wake(&self, pending: bool) -> Wake {
        let socket = &self.socket;
        std::future::poll_fn(|cx| {
            if self.poll_news(cx).is_ready() {
                return Poll::Ready(Wake::News);
            }
            if pending && let Poll::Ready(ready) = socket.poll_write_ready(cx) {
                return Poll::Ready(Wake::Writable(ready.is_ok()));
            }
            socket.poll_read_ready(cx).map(|ready| Wake::Readable(ready.is_ok()))
        })
        .await
    }

    pub fn status(&self) -> Status {
        let state = self.state.lock();
        Status {
            pending: state.pending() && !state.broken,
            stalled_since: state.stalled_since,
            closing: state.closing,
            broken: state.broken,
        }
    }

    /// The client was heard from (any frame).
    pub fn touch(&self) {
        self.heard.store(millis(), Ordering::Relaxed);
    }

    /// When the client was last heard from, and when the unanswered ping (if any) was
    /// sent, in [`millis`].
    pub fn liveness(&self) -> (u64, Option<u64>) {
        let pinged = self.pinged.load(Ordering::Relaxed);
        (self.heard.load(Ordering::Relaxed), (pinged != 0).then_some(pinged))
    }

    /// Records a ping sent at `at` ([`millis`]), or that none is pending (`None`).
    pub fn set_pinged(&self, at: Option<u64>) {
        self.pinged.store(at.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().closing.is_some()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Bytes> {
        self.state.lock().frames.iter().cloned().collect()
    }

    /// Reads what the client sent into `input`, as [`TcpStream::try_read_buf`] does:
    /// the bytes added, 0 at the end of the stream, `WouldBlock` when nothing
    /// arrived. Over TLS, decrypted: the plaintext rustls holds comes first, and
    /// whatever the TLS layer must answer (an alert, a key update) is sent.
    pub fn read(&self, input: &mut Vec<u8>) -> io::Result<usize> {
        if !self.tls {
            return self.socket.try_read_buf(input);
        }
        let mut state = self.state.lock();
        let before = input.len();
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let Some(tls) = state.tls.as_mut() else { return self.socket.try_read_buf(input) };
            let mut ended = false;
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if input.len() > before || ended {
                return Ok(input.len() - before);
            }
            if tls.read_tls(&mut SocketIo(&self.socket))? == 0 {
                return Ok(0);
            }
            let processed = tls.process_new_packets().map(|_| ());
            if tls.wants_write() {
                let _ = flush_tls(tls, &self.socket);
            }
            if state.pending() && state.stalled_since.is_none() {
                state.stalled_since = Some(Instant::now());
            }
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Over TLS, sends `close_notify` (as far as the socket takes it now): the
    /// last thing before the write side is shut.
    pub fn end_tls(&self) {
        if let Some(tls) = self.state.lock().tls.as_mut() {
            tls.send_close_notify();
            let _ = flush_tls(tls, &self.socket);
        }
    }

    /// Writes until the queue is empty or the socket would block.
    fn write_queued(&self, state: &mut State) {
        if state.tls.is_some() {
            self.write_queued_tls(state);
        } else {
            self.write_queued_plain(state);
        }
        if !state.pending() {
            state.stalled_since = None;
            if state.frames.capacity() > 16 {
                // A burst is over: give its queue back.
                state.frames = VecDeque::new();
            }
        }
    }

    /// Over TLS: sends what rustls holds, then encrypts the next batch of whole
    /// frames, until both are empty or the socket would block.
    fn write_queued_tls(&self, state: &mut State) {
        let State { tls: Some(tls), frames, bytes, .. } = state else { return };
        let failed = loop {
            match flush_tls(tls, &self.socket) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => break true,
            }
            if frames.is_empty() {
                break false;
            }
            let mut batch = 0;
            while batch < TLS_BATCH
                && let Some(frame) = frames.pop_front()
            {
                // Whole frames only: the front frame's offset stays 0 over TLS.
                if tls.writer().write_all(&frame).is_err() {
                    break;
                }
                batch += frame.len();
                *bytes -= frame.len();
            }
        };
        if failed {
            state.mark_broken();
        }
    }

    /// Vectored writes until the queue is empty or the socket would block.
    fn write_queued_plain(&self, state: &mut State) {
        while !state.frames.is_empty() && !state.broken {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in state.frames.iter().take(MAX_IOVECS).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &frame[state.offset..] } else { frame });
                count += 1;
            }
            let written = match self.socket.try_write_vectored(&slices[..count]) {
                Ok(0) => {
                    state.mark_broken();
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    state.mark_broken();
                    return;
                }
            };
            state.bytes -= written;
            let mut written = written;
            while written > 0 {
                let Some(front) = state.frames.front() else { break };
                let remaining = front.len() - state.offset;
                if written >= remaining {
                    written -= remaining;
                    state.frames.pop_front();
                    state.offset = 0;
                } else {
                    state.offset += written;
                    written = 0;
                }
            }
        }
    }
}

/// The socket as rustls reads and writes it: non-blocking, `WouldBlock` when it
/// cannot.
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the TLS records rustls holds: `Ok(true)` when all are sent, `Ok(false)`
/// when the socket would block first.
fn flush_tls(tls: &mut ServerConnection, socket: &TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut SocketIo(socket)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the server side in an outbox, and the client's socket.
    pub async fn pair(limit: usize) -> (Outbox, TcpStream) {
        let (server, client) = herald_test_util::tcp_pair().await;
        (Outbox::new(server, limit), client)
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn writes_through_when_nothing_is_queued() {
        let (outbox, mut client) = pair(100).await;
        assert_eq!(outbox.push(Bytes::from_static(b"hello")), Push::Queued);
        assert_eq!(outbox.queued_bytes(), 0, "written, not queued");
        assert_eq!(read_exactly(&mut client, 5).await, b"hello");
        assert!(!outbox.status().pending);
    }

    #[tokio::test]
    async fn frames_queue_behind_unwritten_ones_and_leave_in_order() {
        let (outbox, mut client) = pair(100).await;
        outbox.queue_without_writing(Bytes::from_static(b"a"));
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"cd")), Push::Queued);
        assert_eq!(outbox.queued_bytes(), 4, "nothing jumps the queue");
        assert!(outbox.status().pending);
        outbox.write_pending();
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(read_exactly(&mut client, 4).await, b"abcd");
        assert_eq!(outbox.push(Bytes::from_static(b"ef")), Push::Queued);
        assert_eq!(outbox.queued_bytes(), 0, "a burst is written at once");
        assert_eq!(read_exactly(&mut client, 2).await, b"ef");
    }

    #[tokio::test]
    async fn close_queues_the_error_and_close_frames_and_refuses_more() {
        let (outbox, mut client) = pair(100).await;
        outbox.queue_without_writing(Bytes::from_static(b"x"));
        outbox.close(Close::error(ErrorCode::ReconnectImmediately, "bye"));
        outbox.close(Close::plain(1000, "second close is ignored"));
        assert_eq!(outbox.push(Bytes::from_static(b"y")), Push::Closed);
        let status = outbox.status();
        assert_eq!(status.closing, Some(4200));
        assert!(status.pending);
        outbox.write_pending();
        let error = frame::text(protocol::error(Some(ErrorCode::ReconnectImmediately), "bye").as_bytes());
        let close = frame::close(4200, "bye");
        let got = read_exactly(&mut client, 1 + error.len() + close.len()).await;
        assert_eq!(got, [&b"x"[..], &error, &close].concat());
    }

    #[tokio::test]
    async fn overflow_drops_the_queue_and_closes_with_4100() {
        let (outbox, _client) = pair(10).await;
        outbox.queue_without_writing(Bytes::from(vec![0; 6]));
        assert_eq!(outbox.push(Bytes::from(vec![0; 6])), Push::Overflow);
        let status = outbox.status();
        assert_eq!(status.closing, Some(4100));
        // Only the error and close frames are left to send.
        let error_and_close = outbox.queued_bytes();
        assert!(error_and_close > 0 && error_and_close < 200, "{error_and_close}");
    }

    #[tokio::test]
    async fn an_overflow_keeps_the_rest_of_a_frame_already_on_the_wire() {
        let (outbox, mut client) = pair(64 * 1024).await;
        // Larger than the kernel's buffers on both sides, so only part of it is taken.
        let big = Bytes::from(vec![b'x'; 32 << 20]);
        assert_eq!(outbox.push(big.clone()), Push::Queued);
        let queued = outbox.queued_bytes();
        assert!(queued > 0 && queued < big.len(), "partly written: {queued} left");
        assert_eq!(outbox.push(Bytes::from(vec![b'y'; 64 * 1024])), Push::Overflow);

        let outbox = std::sync::Arc::new(outbox);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                while outbox.status().pending {
                    outbox.socket().writable().await.unwrap();
                    outbox.write_pending();
                }
            }
        });
        let reason = "over capacity: the connection could not keep up with its channels";
        let error = frame::text(protocol::error(Some(ErrorCode::OverCapacity), reason).as_bytes());
        let close = frame::close(4100, reason);
        let got = read_exactly(&mut client, big.len() + error.len() + close.len()).await;
        writer.await.unwrap();
        assert!(got[..big.len()].iter().all(|b| *b == b'x'), "the big frame arrived whole");
        assert_eq!(got[big.len()..], [&error[..], &close[..]].concat());
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_fills_the_queue_and_is_cut_off() {
        let (outbox, _client) = pair(1 << 20).await;
        let frame = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut pushes = 0;
        while outbox.push(frame.clone()) == Push::Queued {
            pushes += 1;
            assert!(pushes < 100_000, "never overflowed");
        }
        let status = outbox.status();
        assert_eq!(status.closing, Some(4100));
        assert!(status.stalled_since.is_some());
        assert!(outbox.queued_bytes() <= (1 << 20) + 16 * 1024, "bounded");
    }

    #[tokio::test]
    async fn a_close_wakes_the_session() {
        let (outbox, _client) = pair(1 << 20).await;
        outbox.close(Close::plain(1000, ""));
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.news()).await.unwrap();
    }
}
