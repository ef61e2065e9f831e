//! A minimal Pusher protocol client for load: one TCP stream per connection (TLS
//! over it, optionally), no per-connection task or buffer beyond what a read in
//! progress needs, so one load process can hold many thousands of connections on a
//! small machine. It speaks WebSocket (RFC 6455, masked client frames) and Pusher
//! protocol 7, and works against any Pusher-compatible server.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use anyhow::{Context, bail};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

pub struct PusherConn {
    stream: Stream,
    pub socket_id: String,
}

/// A connection's bytes: plain TCP, or TLS over TCP (`wss://`). The TLS state (its
/// record buffers and keys, a few KiB) is boxed so a plain connection stays the size
/// of its socket, and a plain read or write costs one branch more than on the bare
/// socket.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A frame from the server: its opcode and payload.
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;

impl PusherConn {
    /// Connects from `source` (any port) to `target`, upgrades to a WebSocket at
    /// `/app/{key}?protocol=7` and waits for `pusher:connection_established`.
    pub async fn connect(target: SocketAddr, source: Option<IpAddr>, key: &str) -> anyhow::Result<Self> {
        Self::connect_with(target, source, key, None).await
    }

    /// [`PusherConn::connect`], over TLS when given a connector (`wss://`): the
    /// server's certificate is verified for `target`'s IP address.
    pub async fn connect_with(
        target: SocketAddr,
        source: Option<IpAddr>,
        key: &str,
        tls: Option<&TlsConnector>,
    ) -> anyhow::Result<Self> {
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(source) = source {
            socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
        }
        let tcp = socket.connect(target).await.with_context(|| format!("connecting to {target}"))?;
        tcp.set_nodelay(true)?;
        let mut stream = match tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let name = ServerName::IpAddress(target.ip().into());
                let tls = connector.connect(name, tcp).await.context("TLS handshake")?;
                Stream::Tls(Box::new(tls))
            }
        };
        let request = format!(
            "GET /app/{key}?protocol=7&client=herald-loadtest&version=0.1 HTTP/1.1\r\nHost: {target}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: aGVyYWxkLWxvYWR0ZXN0IQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // Over TLS a write may leave records in rustls; on TCP this is a no-op.
        stream.flush().await?;
        // Read the response head byte by byte: it is short, and reading past it would
        // swallow the first frame.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                bail!("upgrade response headers too long");
            }
            head.push(stream.read_u8().await.context("reading the upgrade response")?);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&head).lines().next().unwrap_or(""));
        }
        let mut conn = Self { stream, socket_id: String::new() };
        let established = conn.next_text().await?;
        let text = String::from_utf8_lossy(&established);
        if !text.contains("pusher:connection_established") {
            bail!("expected pusher:connection_established, got {text}");
        }
        conn.socket_id = extract(&text, "socket_id\\\":\\\"", '\\').unwrap_or_default().to_string();
        Ok(conn)
    }

    /// Over TLS, what was negotiated: version, cipher suite, key exchange group.
    pub fn tls_parameters(&self) -> Option<String> {
        let Stream::Tls(tls) = &self.stream else { return None };
        let (_, connection) = tls.get_ref();
        Some(format!(
            "{:?} {:?} {:?}",
            connection.protocol_version()?,
            connection.negotiated_cipher_suite()?.suite(),
            connection.negotiated_key_exchange_group()?.name()
        ))
    }

    /// Subscribes to a public channel and waits for the acknowledgement.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        let message = format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#);
        self.send_text(message.as_bytes()).await?;
        loop {
            let text = self.next_text().await?;
            if find(&text, b"pusher_internal:subscription_succeeded") {
                return Ok(());
            }
            if find(&text, b"pusher:subscription_error") || find(&text, b"pusher:error") {
                bail!("subscription refused: {}", String::from_utf8_lossy(&text));
            }
        }
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        // A fixed mask is allowed (the server must unmask whatever it is); it only
        // matters against intermediaries, which a loopback test does not have.
        const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | OP_TEXT);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next frame from the server.
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        read_frame(&mut self.stream).await
    }

    /// The next text message; answers Pusher pings, fails on close.
    pub async fn next_text(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            let frame = self.next_frame().await?;
            match frame.opcode {
                OP_TEXT if find(&frame.payload, b"\"pusher:ping\"") => {
                    self.send_text(br#"{"event":"pusher:pong","data":{}}"#).await?;
                }
                OP_TEXT => return Ok(frame.payload),
                OP_CLOSE => {
                    let code = frame.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    bail!("closed by the server with {code:?}");
                }
                _ => {}
            }
        }
    }
}

/// Reads server frames through a buffer: one `read` brings every frame that has
/// arrived, instead of two or three reads per frame. For connections that receive a
/// stream of frames (the fan-out subscribers); idle ones stay unbuffered.
pub struct BufferedConn {
    reader: tokio::io::BufReader<Stream>,
}

impl PusherConn {
    pub fn buffered(self) -> BufferedConn {
        BufferedConn { reader: tokio::io::BufReader::with_capacity(4096, self.stream) }
    }
}

impl BufferedConn {
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        read_frame(&mut self.reader).await
    }
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<ServerFrame> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0F;
    let length = match head[1] & 0x7F {
        126 => u64::from(reader.read_u16().await?),
        127 => reader.read_u64().await?,
        n => u64::from(n),
    };
    if length > 16 << 20 {
        bail!("frame of {length} bytes");
    }
    let mut payload = vec![0; length as usize];
    reader.read_exact(&mut payload).await?;
    Ok(ServerFrame { opcode, payload })
}

pub fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The text after `prefix` up to `end`.
fn extract<'a>(text: &'a str, prefix: &str, end: char) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    Some(&rest[..rest.find(end)?])
}

/// Source addresses 127.0.0.1 … 127.0.0.254, so one target port can take far more
/// connections than one source address has ephemeral ports.
pub fn source_address(index: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 1 + (index % 254) as u8])
}
