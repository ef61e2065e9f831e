//! The operations listener of every role: `/healthz` (alive), `/readyz` (ready for traffic; 503 with
//! the reason while shutting down, or while an edge is at its connection cap) and `/metrics`
//! (Prometheus text format).

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use tokio::task::JoinSet;

use crate::listen::accept;

/// Whether a process is ready for traffic (`/readyz`); if not, why (the answer's body).
pub type Readiness = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

/// Serves health and metrics of a role until `shutdown` resolves; `ready` answers
/// `/readyz`. The connections it serves end with it.
pub async fn serve_ops(
    listener: TcpListener,
    ready: Readiness,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            stream = accept(&listener, "health") => stream,
        };
        while connections.try_join_next().is_some() {}
        let ready = ready.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(ready(), &metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(
    ready: Result<(), &'static str>,
    metrics: &PrometheusHandle,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => match ready {
            Ok(()) => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"), "text/plain"),
        },
        "/metrics" => (StatusCode::OK, metrics.render(), "text/plain; version=0.0.4"),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string(), "text/plain"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
