//! A real edge on 127.0.0.1:0 with the in-memory backbone (feature `edge`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use herald_backbone::{Broker, MemoryBackbone, MemoryBroker};
use herald_core::{App, Apps, auth};
use herald_hub::Hub;
use herald_node::{EdgeConfig, Node, NodeBuilder};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Client, app, http_request, now};

pub struct Server {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub apps: Vec<App>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(apps: Vec<App>, config: EdgeConfig) -> Self {
        Self::start_with_broker(apps, config, |broker| Arc::new(broker)).await
    }

    /// Like [`Server::start`], with the memory broker wrapped (to slow it down, say).
    pub async fn start_with_broker(
        apps: Vec<App>,
        config: EdgeConfig,
        wrap: impl FnOnce(MemoryBroker) -> Arc<dyn Broker>,
    ) -> Self {
        Self::start_with(apps, config, wrap, |node| node).await
    }

    /// Like [`Server::start_with_broker`], with the node's optional collaborators
    /// (idempotency keys, an event log) given by `build`.
    pub async fn start_with(
        apps: Vec<App>,
        config: EdgeConfig,
        wrap: impl FnOnce(MemoryBroker) -> Arc<dyn Broker>,
        build: impl FnOnce(NodeBuilder) -> NodeBuilder,
    ) -> Self {
        Self::start_full(apps, config, None, wrap, build).await
    }

    /// An edge whose port speaks TLS.
    pub async fn start_tls(apps: Vec<App>, config: EdgeConfig, tls: herald_tls::ServerTls) -> Self {
        Self::start_full(apps, config, Some(tls), |broker| Arc::new(broker), |builder| builder).await
    }

    async fn start_full(
        apps: Vec<App>,
        config: EdgeConfig,
        tls: Option<herald_tls::ServerTls>,
        wrap: impl FnOnce(MemoryBroker) -> Arc<dyn Broker>,
        build: impl FnOnce(NodeBuilder) -> NodeBuilder,
    ) -> Self {
        let listener = herald_telemetry::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let backbone = MemoryBackbone::new();
        let node_id = Node::random_id();
        let hub = Arc::new(Hub::new(node_id));
        let broker = wrap(backbone.broker(hub.clone()));
        let node = build(Node::builder(
            node_id,
            Apps::new(apps.clone()).unwrap(),
            config,
            hub,
            broker,
            backbone.presence(),
        ))
        .build();
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(herald_edge::serve(listener, node.clone(), tls, shutdown.clone().cancelled_owned()));
        Self { addr, node, apps, shutdown, task: Some(task) }
    }

    pub async fn default() -> Self {
        Self::start(vec![app("app")], config()).await
    }

    pub fn app(&self) -> &App {
        &self.apps[0]
    }

    /// Triggers shutdown; returns the serve task to await.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        self.shutdown.cancel();
        self.task.take().unwrap()
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr, &self.app().key).await
    }

    /// Calls the Pusher HTTP API, signed with the first app's credentials.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let app = self.app().clone();
        self.api_as(&app, method, path, query, body).await
    }

    pub async fn api_as(
        &self,
        app: &App,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let query = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let signed = auth::sign_api_request(app, method, path, query, &body, now());
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
        http_request(self.addr, method, &format!("{path}?{query}"), body).await
    }

    /// [`Server::api`] over TLS, as a client with the configuration `client`.
    pub async fn api_tls(
        &self,
        client: Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let signed = auth::sign_api_request(self.app(), method, path, Vec::new(), &body, now());
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
        let headers = [("content-type", "application/json")];
        crate::https_request(self.addr, client, method, &format!("{path}?{query}"), &headers, body).await
    }

    /// `POST /apps/{id}/events` with the first app.
    pub async fn trigger(&self, channels: &[&str], event: &str, data: &str) -> (StatusCode, Value) {
        let path = format!("/apps/{}/events", self.app().id);
        self.api("POST", &path, &[], Some(json!({ "name": event, "channels": channels, "data": data }))).await
    }
}

pub fn config() -> EdgeConfig {
    EdgeConfig { shutdown_grace: Duration::from_secs(2), ..EdgeConfig::default() }
}
