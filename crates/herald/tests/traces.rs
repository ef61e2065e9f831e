//! Traces as an operator's collector receives them: a real OTLP/gRPC trace service
//! (the official protocol definitions, served here) collects what `herald edge` and
//! `herald dispatcher` processes export over Redis and a Kafka-protocol broker, and a
//! webhook receiver checks the `traceparent` it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::auth;
use herald_proto::v1::{ListEndpointsRequest, webhook_admin_client::WebhookAdminClient};
use herald_testkit::{
    Client, app, http_request_with, now,
    process::{self, Process},
    receiver::{Answer, Received, Receiver},
    redis::RedisServer,
    tansu::Tansu,
};
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value as AnyValue},
    trace::v1::{Span, status::StatusCode},
};
use serde_json::{Value, json};
use tonic::codegen::Service;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const LONG: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "traces-api-token-0123456789abcdef";

fn caller_traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// One exported span, with the attributes of the resource (process) it came from.
#[derive(Debug, Clone)]
struct Exported {
    resource: HashMap<String, String>,
    span: Span,
}

impl Exported {
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        attributes(&self.span.attributes).remove(key)
    }
}

/// The OTLP trace service: keeps every span it is sent, counts connections.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
    connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(
                    scope.spans.into_iter().map(|span| Exported { resource: resource.clone(), span }),
                );
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves OTLP/gRPC (HTTP/2 with prior knowledge) on a port of its own.
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        let connections = collector.connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let service = service.clone();
                let route = service_fn(move |request: http::Request<Incoming>| {
                    let mut service = service.clone();
                    async move { Ok::<_, Infallible>(service.call(request).await.unwrap()) }
                });
                tokio::spawn(
                    http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), route),
                );
            }
        });
        (collector, endpoint)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until the spans of `TRACE_ID` include `wanted` (name, how many).
    async fn wait_for(&self, wanted: &[(&str, usize)]) -> Vec<Exported> {
        herald_testkit::wait_until(LONG, || {
            let spans: Vec<Exported> = self.spans().into_iter().filter(|s| s.trace() == TRACE_ID).collect();
            let count = |name: &str| spans.iter().filter(|s| s.span.name == name).count();
            if wanted.iter().all(|(name, n)| count(name) >= *n) {
                Ok(spans)
            } else {
                let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
                Err(format!("spans {wanted:?} of the trace; have {names:?}"))
            }
        })
        .await
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A herald process of `role` with `env`, running once it logged `ready`.
fn herald(role: &str, env: &[(String, String)], ready: &str) -> (Process, String) {
    Process::herald(HERALD, role, env.iter().map(|(k, v)| (k.as_str(), v.as_str())), ready)
}

fn ws_addr(ready_line: &str) -> SocketAddr {
    address(ready_line, "ws_addr")
}

fn address(ready_line: &str, name: &str) -> SocketAddr {
    process::address(ready_line, name).unwrap_or_else(|| panic!("no {name} in {ready_line:?}"))
}

/// Lists the app's webhook endpoints over gRPC (WebhookAdmin), in the caller's trace.
async fn list_endpoints(grpc: SocketAddr) -> usize {
    let channel = herald_api::client::connect(grpc).await.unwrap();
    let mut admin = WebhookAdminClient::with_origin(channel, format!("http://{grpc}").parse().unwrap());
    let mut request = tonic::Request::new(ListEndpointsRequest { app_id: "app".into() });
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    metadata.insert("traceparent", caller_traceparent().parse().unwrap());
    admin.list_endpoints(request).await.unwrap().into_inner().endpoints.len()
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// The app, and a Standard Webhooks endpoint at `receiver` for its publications.
fn app_and_hook(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        (
            "HERALD_APPS",
            format!(r#"[{{id = "app", key = "app-key", secret = "app-secret", api_tokens = ["{TOKEN}"]}}]"#),
        ),
        (
            "HERALD_WEBHOOKS",
            format!(
                r#"[{{app_id = "app", id = "hook", url = "{}", secret = "{SECRET}", event_types = ["channel.event"]}}]"#,
                receiver.url("/hook")
            ),
        ),
        ("HERALD_DISPATCHER__ALLOW_ADDRESSES", r#"["127.0.0.1"]"#.into()),
        ("HERALD_DISPATCHER__RETRY_SCHEDULE", r#"["200ms", "400ms"]"#.into()),
        ("HERALD_DISPATCHER__ENDPOINT_REFRESH", "100ms".into()),
        // Export every 100 ms instead of the SDK's 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

/// Publishes through an edge's Pusher HTTP API, with the caller's `traceparent`.
async fn publish(edge: SocketAddr, channel: &str) {
    publish_in(edge, channel, &caller_traceparent()).await;
}

async fn publish_in(edge: SocketAddr, channel: &str, traceparent: &str) {
    let body = json!({ "name": "e", "channels": [channel], "data": "traced" }).to_string().into_bytes();
    let path = "/apps/app/events";
    let query = auth::sign_api_request(&app("app"), "POST", path, Vec::new(), &body, now());
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let headers = [("traceparent", traceparent), ("tracestate", "caller=1")];
    let (status, _) =
        http_request_with(edge, "POST", &format!("{path}?{}", query.join("&")), &headers, body).await;
    assert_eq!(status.as_u16(), 200);
}

async fn webhooks(receiver: &Receiver, n: usize) -> Vec<Received> {
    let got = receiver.wait_for(n, LONG).await;
    assert!(got.iter().all(|r| r.json()["type"] == "channel.event"), "{got:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_a_publish_through_both_edges_and_the_dispatcher_to_the_receiver() {
    let (collector, otlp) = Collector::start().await;
    let receiver = Receiver::start().await;
    // The first attempt fails (a span with an error status, and a log line in it).
    receiver.script([Answer::Status(500)]);
    let redis = RedisServer::start();
    let db =
        std::env::temp_dir().join(format!("herald-traces-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let tansu = Tansu::start_with_storage(&format!("sqlite://{}", db.display()));
    let mut shared = app_and_hook(&receiver);
    shared.extend([
        ("HERALD_REDIS__URL", redis.url()),
        ("HERALD_KAFKA__BROKERS", tansu.brokers()),
        ("HERALD_EVENTS__PARTITIONS", "1".into()),
        ("HERALD_DISPATCHER__PARTITIONS", "1".into()),
        ("HERALD_TELEMETRY__OTLP_ENDPOINT", otlp),
    ]);
    let with = |more: &[(&str, String)]| env(&[shared.clone(), more.to_vec()].concat());
    let (_edge1, one) =
        herald("edge", &with(&[("HERALD_SERVER__NODE_ID", "101".into())]), "herald edge is running");
    let (_edge2, two) =
        herald("edge", &with(&[("HERALD_SERVER__NODE_ID", "102".into())]), "herald edge is running");
    let dispatcher_env = with(&[
        ("HERALD_LOG__JSON", "true".into()),
        ("RUST_LOG", "info,herald_dispatcher=debug".into()),
        ("POD_NAME", "herald-dispatcher-0".into()),
    ]);
    let (dispatcher, _) = herald("dispatcher", &dispatcher_env, "herald dispatcher started");

    // A subscriber on each edge, so each fans the publication out.
    let ready_one = one;
    let (one, two) = (ws_addr(&ready_one), ws_addr(&two));
    let mut alice = Client::connect(one, "app-key").await;
    let mut bob = Client::connect(two, "app-key").await;
    alice.subscribe("traced").await;
    bob.subscribe("traced").await;
    publish(one, "traced").await;
    alice.recv_event("e").await;
    bob.recv_event("e").await;

    let requests = webhooks(&receiver, 1).await;
    assert_eq!(list_endpoints(address(&ready_one, "grpc_addr")).await, 1);
    let spans = collector
        .wait_for(&[
            ("publish", 1),
            ("fan_out", 2),
            ("events.consume", 1),
            ("webhook.attempt", 1),
            ("webhook_admin", 1),
        ])
        .await;
    let named = |name: &str| spans.iter().filter(|s| s.span.name == name).cloned().collect::<Vec<_>>();

    // The publish joined the caller's trace, on the edge that took it.
    let publish = &named("publish")[0];
    assert_eq!(publish.parent(), CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(publish.resource["herald.role"], "edge");
    assert_eq!(publish.resource["herald.node_id"], "101");
    assert_eq!(publish.resource["service.name"], "herald");
    assert_eq!(publish.attribute("api").as_deref(), Some("http"));
    for step in ["validate", "broker.publish", "events.append"] {
        let step = named(step);
        assert!(!step.is_empty() && step.iter().all(|s| s.parent() == publish.id()), "{step:?}");
    }

    // Each edge fanned it out, as a child of the publish.
    let fan_outs = named("fan_out");
    let mut nodes: Vec<String> = fan_outs.iter().map(|s| s.resource["herald.node_id"].clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["101", "102"]);
    for fan_out in &fan_outs {
        assert_eq!(fan_out.parent(), publish.id());
        assert_eq!(fan_out.attribute("subscribers").as_deref(), Some("1"));
        assert_eq!(fan_out.attribute("channel").as_deref(), Some("traced"));
    }

    // The dispatcher consumed it and attempted it, children of the publish (the retry is
    // the webhooks tests' business).
    let consume = &named("events.consume")[0];
    assert_eq!(consume.parent(), publish.id());
    assert_eq!(consume.resource["herald.role"], "dispatcher");
    assert_eq!(consume.resource["k8s.pod.name"], "herald-dispatcher-0");
    let mut attempts = named("webhook.attempt");
    attempts.sort_by_key(|s| s.attribute("attempt"));
    assert!(attempts.iter().all(|a| a.parent() == publish.id()));
    assert_eq!(attempts[0].attribute("status").as_deref(), Some("500"));
    assert_eq!(attempts[0].attribute("outcome").as_deref(), Some("failure"));
    assert_eq!(attempts[0].attribute("endpoint_id").as_deref(), Some("ep_hook"));
    assert_eq!(attempts[0].span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));

    // The webhook request continues the trace from its attempt's span.
    for (request, attempt) in requests.iter().zip(&attempts).take(1) {
        assert_eq!(request.header("traceparent"), format!("00-{TRACE_ID}-{}-01", attempt.id()));
        assert_eq!(request.header("tracestate"), "caller=1");
    }

    // A WebhookAdmin call joined the caller's trace too.
    let admin = &named("webhook_admin")[0];
    assert_eq!((admin.parent(), admin.resource["herald.node_id"].as_str()), (CALLER_SPAN.to_owned(), "101"));
    assert_eq!(admin.attribute("rpc.method").as_deref(), Some("ListEndpoints"));

    // The dispatcher's log line about the failed attempt names the trace and span.
    let output = dispatcher.output();
    let line: Value = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "webhook attempt failed")
        .unwrap_or_else(|| panic!("no log line of the failed attempt in:\n{output}"));
    assert_eq!(line["trace_id"], TRACE_ID);
    assert_eq!(line["span_id"], attempts[0].id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_telemetry_off_nothing_is_exported_and_the_callers_context_is_handed_on() {
    let (collector, otlp) = Collector::start().await;
    let receiver = Receiver::start().await;
    let mut off = app_and_hook(&receiver);
    // The SDK's own variable does not turn exporting on: only [telemetry] does.
    off.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()));
    let (mut dev, ready) = herald("dev", &env(&off), "herald dev is running");
    publish(ws_addr(&ready), "untraced").await;
    let request = &webhooks(&receiver, 1).await[0];
    assert_eq!(request.header("traceparent"), caller_traceparent(), "handed on as it came");
    assert_eq!(request.header("tracestate"), "caller=1");
    // Stopped gracefully: whatever it would have exported has been by now.
    dev.terminate();
    assert_eq!(collector.connections.load(Ordering::SeqCst), 0, "no exporter connected");
    assert!(collector.spans().is_empty());

    // With [telemetry] set, the collector receives the caller's sampled trace; one the
    // caller did not sample (flags 00) makes no span and is handed on as it came.
    let mut on = app_and_hook(&receiver);
    on.push(("HERALD_TELEMETRY__OTLP_ENDPOINT", otlp));
    let (mut dev, ready) = herald("dev", &env(&on), "herald dev is running");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    publish_in(ws_addr(&ready), "unsampled", unsampled).await;
    publish(ws_addr(&ready), "traced").await;
    let requests = webhooks(&receiver, 3).await;
    let to = |channel: &str| requests.iter().find(|r| r.json()["data"]["channel"] == channel).unwrap();
    assert_eq!(to("unsampled").header("traceparent"), unsampled);
    assert!(to("traced").header("traceparent").starts_with(&format!("00-{TRACE_ID}-")));
    dev.terminate();
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.span.name == "publish" && s.trace() == TRACE_ID && s.resource["herald.role"] == "dev")
    );
    let others: Vec<_> =
        spans.iter().filter(|s| s.trace() != TRACE_ID).map(|s| (&s.span.name, s.trace())).collect();
    assert!(others.is_empty(), "only the sampled trace is recorded: {others:?}");
}
