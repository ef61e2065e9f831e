//! The HTTP client of webhook deliveries: HTTP/1.1 with keep-alive, over TLS for
//! `https://` endpoints (rustls, Mozilla's roots plus any configured CAs), addresses
//! checked at resolution time (SSRF: a name that resolves to a private address is
//! refused even when it did not at endpoint creation), a connect timeout (TCP and TLS
//! handshakes) and a total timeout, no redirects (a 3xx is an answer like any other),
//! and response bodies read only up to a cap.
//!
//! Pooling is hyper-util's legacy [`Client`](hyper_util::client::legacy::Client): idle
//! connections expire after [`ClientConfig::idle_timeout`], and a request that meets a
//! pooled connection the server has just closed is sent again on a new one instead of
//! failing. What the library cannot know is ours, in the connector: the name is
//! resolved through the [`AddressPolicy`] and the connection goes to exactly the
//! addresses it allowed (never resolved again), then TLS for `https`.

use std::{
    error::Error as _,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, uri::Scheme};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        self,
        connect::{Connected, Connection},
    },
    rt::{TokioIo, TokioTimer},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::task::TaskTracker;

use rustls::pki_types::{CertificateDer, ServerName};

use herald_webhooks::{
    endpoint::Target,
    ssrf::{AddressPolicy, ResolveError},
};

/// Limits of the client (`[dispatcher]` settings).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Resolving and connecting, together.
    pub connect_timeout: Duration,
    /// The whole attempt: connect, send, the response and its (capped) body.
    pub request_timeout: Duration,
    /// Response body bytes read at most; the rest is discarded with the connection.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept per endpoint host.
    pub max_idle_per_host: usize,
    /// How long a keep-alive connection may stay idle before it is closed (default
    /// 30 s: under the idle timeouts of common load balancers, so that we close first
    /// rather than race the server's close; a race lost is retried on a new
    /// connection anyway).
    pub idle_timeout: Duration,
    pub policy: AddressPolicy,
    /// Certificate authorities trusted besides Mozilla's (a private CA, say).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
            max_idle_per_host: 32,
            idle_timeout: Duration::from_secs(30),
            policy: AddressPolicy::default(),
            extra_roots: Vec::new(),
        }
    }
}

/// Reads the CA certificates of a PEM file (`[dispatcher] ca_file`).
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

/// How much of a response body an attempt record keeps.
pub const EXCERPT_BYTES: usize = 1024;

/// An answer from the endpoint.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The start of the body, lossily decoded, at most [`EXCERPT_BYTES`].
    pub excerpt: String,
}

/// Why there was no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("http: {0}")]
    Http(String),
    #[error("tls: {0}")]
    Tls(String),
}

impl SendError {
    /// An address refused by the SSRF policy (not a network failure).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Resolve(ResolveError::Refused(_)))
    }

    /// The connector's own error when it is in `e`'s chain, else hyper's, without the
    /// legacy client's wrapper ("client error (SendRequest)").
    fn from_client(e: &legacy::Error) -> Self {
        let mut cause = e.source();
        while let Some(error) = cause {
            if let Some(ours) = error.downcast_ref::<SendError>() {
                return ours.clone();
            }
            cause = error.source();
        }
        let mut message = String::new();
        let mut cause = e.source();
        while let Some(error) = cause {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&error.to_string());
            cause = error.source();
        }
        if message.is_empty() {
            message = e.to_string();
        }
        Self::Http(message)
    }
}

pub struct Client {
    config: ClientConfig,
    http: legacy::Client<Connector, Full<Bytes>>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Self {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for root in &config.extra_roots {
            if let Err(e) = roots.add(root.clone()) {
                tracing::warn!(error = %e, "an extra CA certificate was refused");
            }
        }
        // ring is the process's provider unless another was installed first (then
        // that one serves as well).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = Connector {
            policy: Arc::new(config.policy.clone()),
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout: config.connect_timeout,
        };
        let http = legacy::Client::builder(Tracked(TaskTracker::new()))
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .retry_canceled_requests(true)
            // The Host header is ours (see `host_header`).
            .set_host(false)
            .build(connector);
        Self { config, http }
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.config.policy
    }

    /// POSTs `body` with `headers` to `target`, within the request timeout.
    pub async fn post(
        &self,
        target: &Target,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response, SendError> {
        let timeout = self.config.request_timeout;
        match tokio::time::timeout(timeout, self.exchange(target, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response, SendError> {
        let scheme = if target.https { "https" } else { "http" };
        let uri = format!("{scheme}://{}:{}{}", bracketed(&target.host), target.port, target.path);
        let mut request = Request::post(uri).header(http::header::HOST, host_header(target));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Http(e.to_string()))?;
        let response = self.http.request(request).await.map_err(|e| SendError::from_client(&e))?;
        let (parts, mut body) = response.into_parts();
        let mut read = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SendError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                read.extend_from_slice(&data);
                if read.len() > self.config.max_response_bytes {
                    // Stop reading: a connection with a body half-read cannot be
                    // reused, so dropping the body closes it instead of pooling it.
                    break;
                }
            }
        }
        read.truncate(EXCERPT_BYTES);
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            excerpt: String::from_utf8_lossy(&read).into_owned(),
        })
    }
}

/// An IPv6 literal in brackets, as a URL authority writes it.
fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// The `Host` header: the port only when it is not the scheme's default.
fn host_header(target: &Target) -> String {
    let default = if target.https { 443 } else { 80 };
    if target.port == default {
        bracketed(&target.host)
    } else {
        format!("{}:{}", bracketed(&target.host), target.port)
    }
}

/// Runs the client's background work (connection drivers, the pool's idle sweep) as
/// tasks tracked together, rather than detached `tokio::spawn`s. They end with their
/// connections: when the server or the idle timeout closes one, or when the client
/// (and its pool) is dropped.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Opens the pooled client's connections: resolves through the SSRF policy, connects
/// to an address it allowed (that one, not the name again), then TLS for `https`, all
/// within the connect timeout.
#[derive(Clone)]
struct Connector {
    policy: Arc<AddressPolicy>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, SendError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            match tokio::time::timeout(connector.connect_timeout, connector.connect(&uri)).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_) => Err(SendError::Timeout(started.elapsed())),
            }
        })
    }
}

impl Connector {
    async fn connect(&self, uri: &Uri) -> Result<Stream, SendError> {
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri.host().ok_or_else(|| SendError::Connect(format!("{uri}: no host")))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses = self.policy.resolve(host, port).await?;
        let mut last = None;
        let mut stream = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(e) => last = Some(format!("{address}: {e}")),
            }
        }
        let stream = stream.ok_or_else(|| SendError::Connect(last.unwrap_or_else(|| "no address".into())))?;
        let _ = stream.set_nodelay(true);
        if !https {
            return Ok(Stream::Plain(stream));
        }
        let name = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let name = ServerName::try_from(name).map_err(|e| SendError::Tls(format!("{host:?}: {e}")))?;
        let stream = self.tls.connect(name, stream).await.map_err(|e| SendError::Tls(e.to_string()))?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// A connection to an endpoint, plain or over TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
        task::JoinSet,
    };

    use super::*;

    /// What the test server saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// A request head, on the `n`th connection accepted.
        Request { connection: usize, head: String },
        /// The `n`th connection ended; `by_client`: the client closed it.
        Closed { connection: usize, by_client: bool },
    }

    /// An HTTP/1.1 server on loopback answering every request 204 (keep-alive), and
    /// with `close_after_answer` closing the connection right after each answer, as a
    /// server whose keep-alive timeout is shorter than the client's does.
    struct Server {
        port: u16,
        seen: mpsc::UnboundedReceiver<Seen>,
        _tasks: JoinSet<()>,
    }

    impl Server {
        async fn start(close_after_answer: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (tell, seen) = mpsc::unbounded_channel();
            let mut tasks = JoinSet::new();
            tasks.spawn(async move {
                let mut connections = JoinSet::new();
                for connection in 0.. {
                    let Ok((mut stream, _)) = listener.accept().await else { return };
                    let tell = tell.clone();
                    connections.spawn(async move {
                        loop {
                            let Some(head) = read_request(&mut stream).await else {
                                let _ = tell.send(Seen::Closed { connection, by_client: true });
                                return;
                            };
                            let _ = tell.send(Seen::Request { connection, head });
                            stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
                            if close_after_answer {
                                drop(stream);
                                let _ = tell.send(Seen::Closed { connection, by_client: false });
                                return;
                            }
                        }
                    });
                }
            });
            Self { port, seen, _tasks: tasks }
        }

        async fn next(&mut self) -> Seen {
            tokio::time::timeout(Duration::from_secs(10), self.seen.recv()).await.unwrap().unwrap()
        }
    }

    /// One request's head (its body, sized by `content-length`, is read and dropped);
    /// `None` when the connection ends first.
    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; (length + end).saturating_sub(buffer.len())];
        stream.read_exact(&mut body).await.ok()?;
        Some(head)
    }

    fn client(idle_timeout: Duration) -> Client {
        Client::new(ClientConfig {
            policy: AddressPolicy::new(&["127.0.0.1".into()]).unwrap(),
            idle_timeout,
            ..ClientConfig::default()
        })
    }

    fn target(port: u16) -> Target {
        Target { https: false, host: "127.0.0.1".into(), port, path: "/hook?x=1".into() }
    }

    async fn post(client: &Client, port: u16) -> Result<Response, SendError> {
        client.post(&target(port), vec![("content-type", "application/json".into())], Bytes::from("{}")).await
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_requests_carry_the_host_and_path() {
        let mut server = Server::start(false).await;
        let client = client(Duration::from_secs(30));
        for _ in 0..2 {
            assert_eq!(post(&client, server.port).await.unwrap().status, StatusCode::NO_CONTENT);
            let Seen::Request { connection, head } = server.next().await else { panic!("no request") };
            assert_eq!(connection, 0, "one connection, reused");
            assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_not_failed() {
        let mut server = Server::start(true).await;
        let client = client(Duration::from_secs(30));
        assert_eq!(post(&client, server.port).await.unwrap().status, StatusCode::NO_CONTENT);
        assert!(matches!(server.next().await, Seen::Request { connection: 0, .. }));
        // The server has closed the connection the client pooled: the next request
        // goes out on a new one.
        assert_eq!(server.next().await, Seen::Closed { connection: 0, by_client: false });
        assert_eq!(post(&client, server.port).await.unwrap().status, StatusCode::NO_CONTENT);
        assert!(matches!(server.next().await, Seen::Request { connection: 1, .. }));
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let mut server = Server::start(false).await;
        let client = client(Duration::from_millis(100));
        assert_eq!(post(&client, server.port).await.unwrap().status, StatusCode::NO_CONTENT);
        assert!(matches!(server.next().await, Seen::Request { connection: 0, .. }));
        // Nothing more is sent: the client closes the idle connection on its own.
        assert_eq!(server.next().await, Seen::Closed { connection: 0, by_client: true });
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected_to() {
        let server = Server::start(false).await;
        let strict = Client::new(ClientConfig::default());
        let error = post(&strict, server.port).await.unwrap_err();
        assert!(error.is_refused(), "{error}");
        assert!(error.to_string().contains("loopback"), "{error}");
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let target = |https, host: &str, port| Target { https, host: host.into(), port, path: "/".into() };
        assert_eq!(host_header(&target(true, "example.com", 443)), "example.com");
        assert_eq!(host_header(&target(false, "example.com", 80)), "example.com");
        assert_eq!(host_header(&target(true, "example.com", 80)), "example.com:80");
        assert_eq!(host_header(&target(false, "example.com", 443)), "example.com:443");
        assert_eq!(host_header(&target(true, "::1", 8443)), "[::1]:8443");
        assert_eq!(host_header(&target(true, "::1", 443)), "[::1]");
    }
}
