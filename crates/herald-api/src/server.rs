//! The gRPC listener: HTTP/2 (prior knowledge, or over TLS with ALPN `h2`) served by
//! hyper, routing by service path to the Publisher, health and reflection services.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use herald_core::TraceContext;
use herald_node::Node;
use herald_proto::v1::{publisher_server::PublisherServer, webhook_admin_server::WebhookAdminServer};
use herald_telemetry::{accept, listen::serve_until_stopped, trace};
use herald_tls::ServerTls;
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{body::Body, codegen::Service, server::NamedService};
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::{GrpcConfig, PublisherService, WebhookAdminService};

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves gRPC on `listener` (over TLS with `tls`) until `shutdown` resolves; then
/// reports NOT_SERVING, sends GOAWAY to every connection and waits (at most `grace`)
/// for in-flight calls.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    config: GrpcConfig,
    tls: Option<ServerTls>,
    webhooks: Option<WebhookAdminService>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let Some((router, health)) = GrpcRouter::new(node, &config, webhooks).await else { return };
    let acceptor = tls.map(|tls| {
        tls.watch();
        tls.acceptor()
    });
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            stream = accept(&listener, "grpc") => stream,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let route = service_fn(move |request: http::Request<Incoming>| {
            let response = router.route(request);
            async move {
                match response {
                    Routed::Call(call) => call.await.map(oversized_is_resource_exhausted),
                    Routed::Unimplemented => {
                        Ok(tonic::Status::unimplemented("no such gRPC service").into_http())
                    }
                }
            }
        });
        let stop = stop.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let Some(acceptor) = acceptor else { return serve_connection(stream, route, stop).await };
            if let Some(stream) = herald_tls::accept(&acceptor, stream, TLS_HANDSHAKE_TIMEOUT, "grpc").await {
                serve_connection(stream, route, stop).await;
            }
        });
    }

    set_not_serving(&health).await;
    drop(listener);
    stop.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("gRPC calls still running at the end of the grace period");
    }
}

/// Serves one connection's HTTP/2 until it closes, or until `stop` (gracefully).
async fn serve_connection<S, R>(stream: S, route: R, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: hyper::service::HttpService<Incoming, ResBody = Body> + Clone + Send + 'static,
    R::Future: Send + 'static,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Explicit windows bound what one connection can make us buffer (2 MiB)
        // while a stream is held back, and size h2's budget for small DATA
        // frames (half the connection window): with h2's 64 KiB default a
        // publisher whose stream is paused by flow control trickles small
        // frames and trips ENHANCE_YOUR_CALM.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .serve_connection(TokioIo::new(stream), route);
    serve_until_stopped(connection, stop, "gRPC").await;
}

async fn set_not_serving(reporter: &HealthReporter) {
    reporter.set_not_serving::<PublisherServer<PublisherService>>().await;
    reporter.set_not_serving::<WebhookAdminServer<WebhookAdminService>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

/// tonic refuses a request message over the size limit with OUT_OF_RANGE; the gRPC
/// convention (and every other limit here) is RESOURCE_EXHAUSTED. Unary calls fail
/// before reaching the service, in a trailers-only response: rewrite its status.
fn oversized_is_resource_exhausted(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            // grpc-message is percent-encoded on the wire.
            let m = m.as_bytes();
            m.starts_with(b"Error,%20decoded%20message%20length%20too%20large")
                || m.starts_with(b"Error, decoded message length too large")
        });
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// What a tonic server's `call` returns.
type GrpcFuture = tonic::codegen::BoxFuture<http::Response<Body>, Infallible>;

/// A tonic server as the router calls it.
trait GrpcService:
    Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible, Future = GrpcFuture>
    + Clone
    + Send
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = GrpcFuture,
        > + Clone
        + Send
        + 'static
{
}

/// The services of the gRPC listener, routed by path prefix (tonic's own router would
/// bring axum in).
#[derive(Clone)]
struct GrpcRouter<H, R1, R2> {
    publisher: PublisherServer<PublisherService>,
    webhooks: Option<WebhookAdminServer<WebhookAdminService>>,
    health: H,
    reflection_v1: R1,
    reflection_v1alpha: R2,
}

impl GrpcRouter<(), (), ()> {
    /// The router and the reporter of its health service; `None` (logged) if the
    /// reflection service cannot be built.
    async fn new(
        node: Arc<Node>,
        config: &GrpcConfig,
        webhooks: Option<WebhookAdminService>,
    ) -> Option<(GrpcRouter<impl GrpcService, impl GrpcService, impl GrpcService>, HealthReporter)> {
        let webhooks =
            webhooks.map(|w| WebhookAdminServer::new(w).max_decoding_message_size(config.max_message_bytes));
        let publisher = PublisherServer::new(PublisherService::new(node, config))
            .max_decoding_message_size(config.max_message_bytes);
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<PublisherServer<PublisherService>>().await;
        if webhooks.is_some() {
            reporter.set_serving::<WebhookAdminServer<WebhookAdminService>>().await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(herald_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(reflection_v1), Ok(reflection_v1alpha)) => Some((
                GrpcRouter { publisher, webhooks, health, reflection_v1, reflection_v1alpha },
                reporter,
            )),
            (Err(e), _) | (_, Err(e)) => {
                // The descriptor sets are compiled in and checked by tests.
                tracing::error!(error = %e, "gRPC reflection unavailable");
                None
            }
        }
    }
}

impl<H: GrpcService, R1: GrpcService, R2: GrpcService> GrpcRouter<H, R1, R2> {
    fn route(&self, request: http::Request<Incoming>) -> Routed<GrpcFuture> {
        let path = request.uri().path();
        if path.starts_with(&prefix::<PublisherServer<PublisherService>>()) {
            Routed::Call(self.publisher.clone().call(request))
        } else if let Some(webhooks) = self
            .webhooks
            .as_ref()
            .filter(|_| path.starts_with(&prefix::<WebhookAdminServer<WebhookAdminService>>()))
        {
            Routed::Call(admin_call(webhooks, request))
        } else if path.starts_with("/grpc.health.v1.Health/") {
            Routed::Call(self.health.clone().call(request))
        } else if path.starts_with("/grpc.reflection.v1.ServerReflection/") {
            Routed::Call(self.reflection_v1.clone().call(request))
        } else if path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") {
            Routed::Call(self.reflection_v1alpha.clone().call(request))
        } else {
            Routed::Unimplemented
        }
    }
}

/// A WebhookAdmin call in a span of the caller's trace, named by its method.
fn admin_call(
    webhooks: &WebhookAdminServer<WebhookAdminService>,
    request: http::Request<Incoming>,
) -> GrpcFuture {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let caller = TraceContext::from_headers(header("traceparent"), header("tracestate"));
    let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
    let span = trace::api_span(caller.as_ref(), || {
        tracing::info_span!(
            target: trace::TARGET,
            "webhook_admin",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        )
    });
    let call = webhooks.clone().call(request).instrument(span.clone());
    Box::pin(async move {
        let response = call.await;
        // A failed unary call answers trailers-only: its status is in the headers.
        if let Ok(response) = &response
            && let Some(status) = response.headers().get("grpc-status").and_then(|s| s.to_str().ok())
        {
            span.record("rpc.grpc.status_code", status);
        }
        response
    })
}

fn prefix<S: NamedService>() -> String {
    format!("/{}/", S::NAME)
}

/// Which service a request went to: a tonic call, or nothing.
enum Routed<F> {
    Call(F),
    Unimplemented,
}
