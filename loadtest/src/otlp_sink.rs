//! `otlp-sink`: an OTLP/gRPC trace service that counts what it is sent and keeps
//! nothing, so a benchmark of Herald with tracing on measures Herald's cost of making
//! and exporting spans, not a collector's. Prints its counts when stopped (SIGTERM).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use serde_json::json;
use tonic::codegen::Service;

#[derive(clap::Args, Clone)]
pub struct OtlpSinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:14317")]
    pub listen: SocketAddr,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub seconds: f64,
}

#[derive(Clone, Default)]
struct Sink {
    requests: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

pub async fn run(args: OtlpSinkArgs) -> anyhow::Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("otlp-sink listening on {}", listener.local_addr()?);
    let sink = Sink::default();
    let service = TraceServiceServer::new(sink.clone());
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = service.clone();
            let route = service_fn(move |request: http::Request<Incoming>| {
                let mut service = service.clone();
                async move { service.call(request).await.map_err(|never: Infallible| match never {}) }
            });
            tokio::spawn(
                http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), route),
            );
        }
    };
    // Reports what it counted when told to stop (SIGTERM), or after `--seconds`.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs_f64(args.seconds), accept) => {}
        _ = terminate.recv() => {}
    }
    Ok(json!({
        "scenario": "otlp-sink",
        "export_requests": sink.requests.load(Ordering::Relaxed),
        "spans": sink.spans.load(Ordering::Relaxed),
    }))
}
