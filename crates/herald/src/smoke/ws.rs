//! The smallest WebSocket client the smoke test needs: the opening handshake (with
//! the accept key checked), masked text frames out, server frames in (pings answered,
//! fragments joined, a close reported with its code).

use std::time::Duration;

use anyhow::{Context, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Stream;

/// RFC 6455's GUID, appended to the key for the accept header.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message the smoke test accepts (Herald's defaults allow 64 KiB).
const MAX_MESSAGE: usize = 1 << 20;

pub(super) struct WebSocket {
    stream: Stream,
    buffer: Vec<u8>,
}

impl WebSocket {
    /// Upgrades `path` on `stream`, a connection to `host:port`.
    pub(super) async fn connect(
        mut stream: Stream,
        host: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<Self> {
        let key = STANDARD.encode(fastrand::u128(..).to_le_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > 16 * 1024 || stream.read_buf(&mut buffer).await? == 0 {
                bail!("no complete handshake response");
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("the server answered {status:?}, not 101 Switching Protocols");
        }
        let expected = STANDARD.encode(Sha1::digest(format!("{key}{GUID}").as_bytes()));
        let accept = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim().to_owned())
        });
        if accept.as_deref() != Some(expected.as_str()) {
            bail!("wrong Sec-WebSocket-Accept: {accept:?}");
        }
        buffer.drain(..end);
        Ok(Self { stream, buffer })
    }

    /// Sends `text` as one masked text frame.
    pub(super) async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let frame = frame(0x1, text.as_bytes());
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next text message, within `within`; pings are answered on the way.
    pub(super) async fn next_text(&mut self, within: Duration) -> anyhow::Result<String> {
        let next = async {
            let mut message = Vec::new();
            loop {
                let (fin, opcode, payload) = self.frame().await?;
                match opcode {
                    0x9 => self.stream.write_all(&frame(0xA, &payload)).await?,
                    0xA => {}
                    0x8 => {
                        let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                        bail!("the server closed the connection: {code} {reason}");
                    }
                    0x0 | 0x1 => {
                        message.extend_from_slice(&payload);
                        if message.len() > MAX_MESSAGE {
                            bail!("a message over {MAX_MESSAGE} bytes");
                        }
                        if fin {
                            return String::from_utf8(message).context("a text message that is not UTF-8");
                        }
                    }
                    other => bail!("unexpected frame opcode {other:#x}"),
                }
            }
        };
        tokio::time::timeout(within, next).await.map_err(|_| anyhow::anyhow!("nothing within {within:?}"))?
    }

    /// Reads one frame: FIN, opcode, payload.
    async fn frame(&mut self) -> anyhow::Result<(bool, u8, Vec<u8>)> {
        loop {
            if let Some((header, len)) = parse_header(&self.buffer)?
                && self.buffer.len() >= header + len
            {
                let (fin, opcode) = (self.buffer[0] & 0x80 != 0, self.buffer[0] & 0x0F);
                let payload = self.buffer[header..header + len].to_vec();
                self.buffer.drain(..header + len);
                return Ok((fin, opcode, payload));
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the connection ended");
            }
        }
    }
}

/// A server frame's header length and payload length, once the header is complete.
fn parse_header(buffer: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let [_, second, ..] = buffer else { return Ok(None) };
    if second & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (header, len) = match second & 0x7F {
        126 => match buffer.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buffer.get(2..10) {
            Some(b) => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(b);
                (10, usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX))
            }
            None => return Ok(None),
        },
        small => (2, usize::from(small)),
    };
    if len > MAX_MESSAGE {
        bail!("a frame over {MAX_MESSAGE} bytes");
    }
    Ok(Some((header, len)))
}

/// A final, masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_be_bytes();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_the_right_length_encoding() {
        for len in [0usize, 125, 126, 0xFFFF, 0x10000] {
            let payload = vec![b'x'; len];
            let frame = frame(0x1, &payload);
            assert_eq!(frame[0], 0x81);
            assert_ne!(frame[1] & 0x80, 0, "masked");
            let header = match frame[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let mask = &frame[header..header + 4];
            let unmasked: Vec<u8> =
                frame[header + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(unmasked, payload, "length {len}");
        }
    }

    #[test]
    fn server_headers_need_all_their_bytes() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 1, 0]).unwrap(), Some((4, 256)));
        assert!(parse_header(&[0x81, 0x85]).is_err(), "servers never mask");
        assert!(parse_header(&[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0]).is_err(), "over the limit");
    }
}
