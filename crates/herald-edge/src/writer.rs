//! The writer half of a connection: drains the outbox into the socket with vectored
//! writes, pings idle clients and closes those that do not answer.

use std::{
    io::IoSlice,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use herald_core::{ErrorCode, protocol};
use herald_hub::{Batch, Close, Outbox, frame};
use herald_telemetry::Metric;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::ConnectionConfig;

/// When the client was last heard from, shared by the reader (which touches it on
/// every frame) and the writer (which pings after silence).
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub(crate) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the connection opened; the unit of every comparison here,
    /// so a pong in the same millisecond as its ping still counts as an answer.
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

/// At most this many frames go into one `writev`.
const MAX_IOVECS: usize = 64;

/// Runs until the outbox closes (after writing the close) or a write fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    outbox: Arc<Outbox>,
    activity: Arc<Activity>,
    config: ConnectionConfig,
) {
    let mut ping_sent: Option<u64> = None;
    loop {
        let deadline = match ping_sent {
            Some(sent) => activity.at(sent) + config.pong_timeout(),
            None => activity.at(activity.last_ms()) + config.activity_timeout(),
        };
        tokio::select! {
            batch = outbox.next_batch() => {
                let Batch { frames, close } = batch;
                if !frames.is_empty() && !write_timed(&mut socket, &frames, &config).await {
                    // The client is gone or stuck: nothing more can be sent.
                    outbox.close(Close::plain(1006, ""));
                    return;
                }
                if let Some(close) = close {
                    write_close(&mut socket, &close, &config).await;
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                match ping_sent {
                    Some(sent) if activity.last_ms() < sent => {
                        outbox.close(Close::error(ErrorCode::PongNotReceived, "pong reply not received"));
                    }
                    Some(_) => ping_sent = None,
                    None if activity.at(activity.last_ms()) + config.activity_timeout() <= Instant::now() => {
                        outbox.push(frame::text(protocol::ping().as_bytes()));
                        ping_sent = Some(activity.now_ms());
                    }
                    None => {}
                }
            }
        }
    }
}

async fn write_timed<W: AsyncWrite + Unpin>(
    socket: &mut W,
    frames: &[Bytes],
    config: &ConnectionConfig,
) -> bool {
    matches!(tokio::time::timeout(config.write_timeout(), write_frames(socket, frames)).await, Ok(Ok(())))
}

/// Writes the `pusher:error` (if the close carries one), the close frame, and shuts
/// the write side down.
async fn write_close<W: AsyncWrite + Unpin>(socket: &mut W, close: &Close, config: &ConnectionConfig) {
    metrics::counter!(Metric::ConnectionsClosed.name(), "code" => close.code.to_string()).increment(1);
    let mut frames = Vec::with_capacity(2);
    if close.send_error {
        let code = ErrorCode::from_code(close.code);
        frames.push(frame::text(protocol::error(code, &close.reason).as_bytes()));
    }
    // 1006 means "no close frame": the connection is already unusable.
    if close.code != 1006 {
        frames.push(frame::close(close.code, &close.reason));
        write_timed(socket, &frames, config).await;
    }
    let _ = tokio::time::timeout(config.write_timeout(), socket.shutdown()).await;
}

/// Writes every frame, several per system call.
async fn write_frames<W: AsyncWrite + Unpin>(socket: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < frames.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (i, frame) in frames[index..].iter().take(MAX_IOVECS).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &frame[offset..] } else { frame });
            count += 1;
        }
        let mut written = socket.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && index < frames.len() {
            let remaining = frames[index].len() - offset;
            if written >= remaining {
                written -= remaining;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    socket.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_frames_across_partial_writes() {
        // A duplex with a tiny buffer forces many partial vectored writes.
        let (mut client, mut server) = tokio::io::duplex(7);
        let frames: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("frame-{i};"))).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let writer = tokio::spawn(async move {
            write_frames(&mut server, &frames).await.unwrap();
        });
        let mut got = vec![0; expected.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_when_idle_and_closes_with_4201_without_a_pong() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let outbox = Arc::new(Outbox::new(1 << 20));
        let config = ConnectionConfig {
            activity_timeout_secs: 120,
            pong_timeout_secs: 30,
            ..ConnectionConfig::default()
        };
        let writer = tokio::spawn(write_loop(server, outbox.clone(), Arc::new(Activity::new()), config));
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(!outbox.is_closing());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!outbox.is_closing(), "pinged, waiting for the pong");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(outbox.is_closing(), "no pong within 30 s");
        writer.await.unwrap();
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut { client }, &mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("pusher:ping"), "{text}");
        assert!(text.contains("4201"), "{text}");
    }
}
