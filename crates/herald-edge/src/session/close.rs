//! How a connection ends: refused at admission, or closed after serving; the close
//! frame sent last, the client's half of the handshake awaited briefly, and the close
//! code counted under a bounded label.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use herald_hub::{Close, Outbox};
use herald_telemetry::Metric;
use tokio::time::Instant;

use super::Session;
use herald_node::Node;

use crate::websocket::Violation;

/// How long a closing connection waits for the client's half of the close handshake
/// before it drops the socket (dropping it with unread input would reset the
/// connection and could destroy the close frame just sent).
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a Pusher error and closes a connection that was refused at admission
/// (unknown app, disabled app, bad protocol version).
pub(crate) async fn refuse(node: Arc<Node>, outbox: Arc<Outbox>, handshake: Vec<u8>, close: Close) {
    outbox.push(Bytes::from(handshake));
    outbox.close(close);
    finish(Ending { outbox, node }).await;
}

/// A connection being closed: what `finish` needs of it.
pub(super) struct Ending {
    pub(super) outbox: Arc<Outbox>,
    pub(super) node: Arc<Node>,
}

/// Sends what is still queued (the close frame last), within the write timeout, then
/// ends the connection: shuts the write side and reads (and discards) whatever the
/// client still sends until it closes its side, briefly — dropping a socket with
/// unread input resets the connection, which can destroy the close frame.
pub(super) async fn finish(connection: Ending) {
    let Ending { outbox, node } = connection;
    let config = &node.config().connection;
    let socket = outbox.socket();
    let deadline = Instant::now() + config.write_timeout;
    loop {
        let status = outbox.status();
        if status.broken || !status.pending {
            break;
        }
        match tokio::time::timeout_at(deadline, socket.writable()).await {
            Ok(Ok(())) => outbox.write_pending(),
            _ => break,
        }
    }
    let status = outbox.status();
    let code = status.closing.unwrap_or(1006);
    metrics::counter!(Metric::ConnectionsClosed.name(), "code" => close_code_label(code)).increment(1);
    if status.broken || status.pending {
        return;
    }
    outbox.end_tls();
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain(socket)).await;
}

/// Reads and discards what the client still sends, until it closes its side.
async fn drain(socket: &tokio::net::TcpStream) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let read = {
            let mut scratch = [0u8; 256];
            socket.try_read(&mut scratch)
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

impl Session {
    /// Closes a connection whose input broke RFC 6455 (1002, 1007) or the size limit (1009).
    pub(super) fn close_violation(&self, violation: Violation, max_message: usize) {
        tracing::debug!(socket_id = %self.socket, why = violation.reason(), "websocket violation");
        let close = match violation {
            Violation::TooLarge => {
                Close::plain(1009, format!("message too large: the limit is {max_message} bytes"))
            }
            _ => Close::plain(violation.code(), violation.reason()),
        };
        self.outbox.close(close);
    }
}

/// The `code` label of `herald_connections_closed_total`. A client picks the code of
/// a close it starts (the server echoes it), from about 4,000 valid ones: the label
/// is bucketed so that clients cannot create series at will. Herald's own Pusher
/// codes keep their number; the rest of Pusher's ranges are named by range.
fn close_code_label(code: u16) -> &'static str {
    match code {
        1000 | 1001 => "normal",
        1002 | 1003 => "protocol_error",
        1006 => "abnormal",
        1007 => "invalid_payload",
        1009 => "message_too_large",
        1013 => "try_again_later",
        4001 => "4001",
        4003 => "4003",
        4004 => "4004",
        4005 => "4005",
        4006 => "4006",
        4007 => "4007",
        4008 => "4008",
        4009 => "4009",
        4100 => "4100",
        4200 => "4200",
        4201 => "4201",
        4202 => "4202",
        4301 => "4301",
        4302 => "4302",
        // The rest of each range (a test keeps these in step with `ErrorCode`).
        4000 | 4002 | 4010..=4099 => "4000-4099",
        4101..=4199 => "4100-4199",
        4203..=4299 => "4200-4299",
        4300 | 4302..=4399 => "4300-4399",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use herald_core::ErrorCode;

    use super::*;

    #[test]
    fn close_code_labels_are_a_bounded_set() {
        let labels: std::collections::HashSet<&str> = (0..=u16::MAX).map(close_code_label).collect();
        assert!(labels.len() <= 32, "{labels:?}");
        assert_eq!(close_code_label(1000), "normal");
        assert_eq!(close_code_label(1006), "abnormal");
        assert_eq!(close_code_label(4150), "4100-4199");
        assert_eq!(close_code_label(3000), "other");
        for code in 4000..4400 {
            // Every Pusher code Herald sends keeps its number, and only those.
            let named = close_code_label(code) == code.to_string();
            assert_eq!(named, ErrorCode::from_code(code).is_some(), "{code}");
        }
    }
}
