//! Reads client WebSocket frames (RFC 6455) without a per-connection buffer.
//!
//! fastwebsockets' reader keeps an 8 KiB buffer for the life of a connection; with
//! hundreds of thousands of mostly idle connections that is most of their memory.
//! Clients send little (subscribes, pings, client events), so this reader reads a
//! frame's header into the future's own few bytes and allocates each payload at its
//! exact size only when it arrives: an idle connection holds no buffer at all. The
//! price is a few more `read` calls per client message, on the quiet direction.

use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One frame from a client, unmasked.
pub(crate) struct ClientFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection or the socket failed.
    Gone,
    /// A frame broke RFC 6455 (unmasked, reserved bits, bad opcode, long control frame).
    Protocol(&'static str),
    /// A frame longer than the limit; its payload was not read.
    TooLarge,
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        Self::Gone
    }
}

/// Reads the next frame. Not cancellation-safe: a frame read halfway is lost, so
/// only cancel it when the connection is ending anyway.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    max_payload: usize,
) -> Result<ClientFrame, ReadError> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let fin = head[0] & 0x80 != 0;
    if head[0] & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::try_from(head[0] & 0x0F).map_err(|_| ReadError::Protocol("unknown opcode"))?;
    if head[1] & 0x80 == 0 {
        return Err(ReadError::Protocol("client frames must be masked"));
    }
    let length = match head[1] & 0x7F {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        short => u64::from(short),
    };
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && (!fin || length > 125) {
        return Err(ReadError::Protocol("control frames must be whole and at most 125 bytes"));
    }
    let length = usize::try_from(length).map_err(|_| ReadError::TooLarge)?;
    if length > max_payload {
        return Err(ReadError::TooLarge);
    }
    let mut mask = [0u8; 4];
    io.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; length];
    io.read_exact(&mut payload).await?;
    fastwebsockets::unmask(&mut payload, mask);
    Ok(ClientFrame { fin, opcode, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn reads_frames_of_every_length_form() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = masked(0x81, &payload);
            let frame = read_frame(&mut &bytes[..], 100_000).await.unwrap();
            assert!(frame.fin);
            assert_eq!(frame.opcode, OpCode::Text);
            assert_eq!(frame.payload, payload, "length {len}");
        }
    }

    #[tokio::test]
    async fn refuses_what_rfc_6455_forbids() {
        let unmasked = [0x81, 0x01, b'a'];
        assert!(matches!(read_frame(&mut &unmasked[..], 100).await, Err(ReadError::Protocol(_))));
        let reserved = masked(0xC1, b"a");
        assert!(matches!(read_frame(&mut &reserved[..], 100).await, Err(ReadError::Protocol(_))));
        let fragmented_ping = masked(0x09, b"a");
        assert!(matches!(read_frame(&mut &fragmented_ping[..], 100).await, Err(ReadError::Protocol(_))));
        let big = masked(0x81, &[0; 101]);
        assert!(matches!(read_frame(&mut &big[..], 100).await, Err(ReadError::TooLarge)));
        let truncated = &masked(0x81, b"hello")[..5];
        assert!(matches!(read_frame(&mut &truncated[..], 100).await, Err(ReadError::Gone)));
    }
}
