//! The HTTP client of webhook deliveries: HTTP/1.1 with keep-alive, over TLS for
//! `https://` endpoints (rustls, Mozilla's roots plus any configured CAs), addresses
//! checked at resolution time (SSRF: a name that resolves to a private address is
//! refused even when it did not at endpoint creation), a connect timeout (TCP and TLS
//! handshakes) and a total timeout, no redirects (a 3xx is an answer like any other),
//! and response bodies read only up to a cap.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

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
}

/// Pooled connections are per scheme, host and port.
type Key = (bool, String, u16);

pub struct Client {
    config: ClientConfig,
    tls: TlsConnector,
    idle: Mutex<HashMap<Key, Vec<SendRequest<Full<Bytes>>>>>,
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
        Self { config, tls: TlsConnector::from(std::sync::Arc::new(tls)), idle: Mutex::new(HashMap::new()) }
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
        let key = (target.https, target.host.clone(), target.port);
        let mut sender = match self.idle_sender(&key) {
            Some(sender) => sender,
            None => self.connect(target).await?,
        };
        let host =
            if target.port == 80 { target.host.clone() } else { format!("{}:{}", target.host, target.port) };
        let mut request = Request::post(target.path.as_str()).header(http::header::HOST, host);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Http(e.to_string()))?;
        sender.ready().await.map_err(|e| SendError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| SendError::Http(e.to_string()))?;
        let (parts, mut body) = response.into_parts();
        let mut read = Vec::new();
        let mut complete = true;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SendError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                read.extend_from_slice(&data);
                if read.len() > self.config.max_response_bytes {
                    // Stop reading: the connection cannot be reused with a body
                    // half-read, so it is dropped instead of pooled.
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            self.release(key, sender);
        }
        read.truncate(EXCERPT_BYTES);
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            excerpt: String::from_utf8_lossy(&read).into_owned(),
        })
    }

    fn idle_sender(&self, key: &Key) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock();
        let senders = idle.get_mut(key)?;
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn release(&self, key: Key, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let senders = idle.entry(key).or_default();
        if senders.len() < self.config.max_idle_per_host {
            senders.push(sender);
        }
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let started = Instant::now();
        let timeout = self.config.connect_timeout;
        let connect = async {
            let addresses = self.config.policy.resolve(&target.host, target.port).await?;
            let mut last = None;
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(format!("{address}: {e}")),
                }
            }
            Err(SendError::Connect(last.unwrap_or_else(|| "no address".into())))
        };
        let handshakes = async {
            let stream = connect.await?;
            let _ = stream.set_nodelay(true);
            if !target.https {
                return http1_handshake(stream).await;
            }
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| SendError::Tls(format!("{:?}: {e}", target.host)))?;
            let stream = self.tls.connect(name, stream).await.map_err(|e| SendError::Tls(e.to_string()))?;
            http1_handshake(stream).await
        };
        match tokio::time::timeout(timeout, handshakes).await {
            Ok(sender) => sender,
            Err(_) => Err(SendError::Timeout(started.elapsed())),
        }
    }
}

/// Starts HTTP/1.1 on `io`; its connection task runs until the connection closes.
async fn http1_handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        http1::handshake(TokioIo::new(io)).await.map_err(|e| SendError::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}
