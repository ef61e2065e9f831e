//! `herald.v1.Publisher`: the gRPC face of the same publish path and channel state
//! the Pusher HTTP API uses.

use std::{pin::Pin, sync::Arc, time::Duration};

use herald_backbone::{Claim, IdempotencyStore};
use herald_core::{App, ChannelKind, ChannelName, TraceContext};
use herald_node::{
    EventRequest, HistoryError, HistoryRequest, Node, ValidEvent, publish_span, traced_publish,
    validate_event,
};
use herald_proto::v1::{self as pb, publish_result, publisher_server::Publisher};
use herald_telemetry::trace;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::{
    GrpcConfig,
    auth::{Authenticator, authorize},
    error::{Error, Result},
    idempotency::{Idempotency, MAX_KEY_BYTES},
};

/// The Publisher service of one node. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PublisherService {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<Node>,
    auth: Authenticator,
    idempotency: Idempotency<pb::PublishResponse>,
    idempotency_window: Duration,
    stream_window: usize,
}

/// How long a retry waits for another node's first publish with the same key.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

impl PublisherService {
    pub fn new(node: Arc<Node>, config: &GrpcConfig) -> Self {
        let inner = Inner {
            auth: Authenticator::new(node.apps()),
            idempotency: Idempotency::new(config.idempotency_window, config.idempotency_max_keys),
            idempotency_window: config.idempotency_window,
            stream_window: config.stream_window,
            node,
        };
        Self { inner: Arc::new(inner) }
    }
}

impl Inner {
    fn app<T>(&self, request: &Request<T>, app_id: &str) -> Result<Arc<App>> {
        authorize(&self.auth.caller(request.metadata())?, app_id)
    }

    /// Validates and publishes one event (deduplicated by its idempotency key), in a
    /// span of the caller's trace.
    async fn publish_event(
        &self,
        app: &App,
        event: Option<pb::Event>,
        caller: Option<&TraceContext>,
    ) -> Result<pb::PublishResponse> {
        let publish = async {
            let (valid, key) = self.validate(app, event, caller)?;
            self.publish_valid(app, &valid, &key).await
        };
        traced_publish("grpc", app, caller, publish).await
    }

    /// Checks an event against the app's limits; returns it, carrying the caller's
    /// trace context, with its idempotency key.
    fn validate(
        &self,
        app: &App,
        event: Option<pb::Event>,
        caller: Option<&TraceContext>,
    ) -> Result<(ValidEvent, String)> {
        let event = event.ok_or_else(|| Error::InvalidArgument("event: required".into()))?;
        let data = match event.payload {
            Some(pb::event::Payload::Data(data)) => data,
            Some(pb::event::Payload::DataBytes(bytes)) => String::from_utf8(bytes)
                .map_err(|_| Error::InvalidArgument("data_bytes: must be UTF-8".into()))?,
            None => return Err(Error::InvalidArgument("data: required (data or data_bytes)".into())),
        };
        let mut valid = validate_event(
            app,
            EventRequest {
                name: event.name,
                data,
                channels: event.channels,
                exclude_socket_id: Some(event.exclude_socket_id),
            },
        )?;
        valid.trace = caller.cloned();
        Ok((valid, event.idempotency_key))
    }

    async fn publish_valid(&self, app: &App, valid: &ValidEvent, key: &str) -> Result<pb::PublishResponse> {
        if !key.is_empty()
            && let Some(store) = self.node.idempotency_store()
        {
            return self.publish_claimed(store.as_ref(), app, valid, key).await;
        }
        let publish = || async {
            self.node.publish_event(app, valid).await?;
            Ok(published(valid))
        };
        if key.is_empty() {
            return publish().await;
        }
        let (mut response, duplicate) = self.idempotency.run(&app.id, key, publish).await?;
        response.duplicate = duplicate;
        Ok(response)
    }

    /// Publishes under an idempotency key the whole cluster shares: the node that
    /// claims the key publishes; a retry anywhere within the window gets the first
    /// publication id back (waiting, bounded, while the first is still publishing).
    async fn publish_claimed(
        &self,
        store: &dyn IdempotencyStore,
        app: &App,
        valid: &ValidEvent,
        key: &str,
    ) -> Result<pb::PublishResponse> {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "idempotency_key: longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        let mine = published(valid);
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            let claim = store.claim(&app.id, key, &mine.publication_id, self.idempotency_window);
            let span = trace::child(|| tracing::info_span!(target: trace::TARGET, "idempotency.claim"));
            match claim.instrument(span).await? {
                Claim::Won => break,
                Claim::Done(publication_id) => {
                    return Ok(pb::PublishResponse { publication_id, duplicate: true, ..mine });
                }
                Claim::Pending if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Claim::Pending => {
                    return Err(Error::Unavailable(
                        "idempotency_key: the first publish with this key is still in progress".into(),
                    ));
                }
            }
        }
        if let Err(e) = self.node.publish_event(app, valid).await {
            let _ = store.release(&app.id, key).await;
            return Err(e.into());
        }
        store.complete(&app.id, key, &mine.publication_id, self.idempotency_window).await?;
        Ok(mine)
    }

    /// Publishes a batch in order. Runs of valid events without idempotency keys go
    /// to the broker together, so each subscriber gets its share in one write.
    async fn publish_batch(
        &self,
        app: &App,
        events: Vec<pb::Event>,
        caller: Option<&TraceContext>,
    ) -> Vec<pb::PublishResult> {
        let span = publish_span("grpc", app, caller);
        self.publish_checked(app, events, caller).instrument(span).await
    }

    async fn publish_checked(
        &self,
        app: &App,
        events: Vec<pb::Event>,
        caller: Option<&TraceContext>,
    ) -> Vec<pb::PublishResult> {
        let checked: Vec<Result<(ValidEvent, String)>> =
            events.into_iter().map(|event| self.validate(app, Some(event), caller)).collect();
        let mut results = Vec::with_capacity(checked.len());
        let mut rest = &checked[..];
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|c| matches!(c, Ok((_, key)) if key.is_empty())).count();
            if run == 0 {
                let outcome = match first {
                    Ok((valid, key)) => self.publish_valid(app, valid, key).await,
                    Err(e) => Err(e.clone()),
                };
                results.push(to_result(outcome));
                rest = &rest[1..];
                continue;
            }
            let valid: Vec<&ValidEvent> =
                rest[..run].iter().filter_map(|c| c.as_ref().ok()).map(|(v, _)| v).collect();
            let outcome = self.node.publish_events(app, valid.iter().copied()).await.map_err(Error::from);
            results.extend(valid.iter().map(|v| to_result(outcome.clone().map(|()| published(v)))));
            rest = &rest[run..];
        }
        results
    }
}

/// The answer for a published event.
fn published(valid: &ValidEvent) -> pb::PublishResponse {
    pb::PublishResponse {
        publication_id: publication_id(),
        channels: valid.channels.len() as u32,
        duplicate: false,
    }
}

/// One event's outcome as a batch or stream reports it.
fn to_result(outcome: Result<pb::PublishResponse>) -> pb::PublishResult {
    pb::PublishResult {
        result: Some(match outcome {
            Ok(published) => publish_result::Result::Published(published),
            Err(e) => publish_result::Result::Error(e.to_proto()),
        }),
    }
}

/// A random 128-bit id, hex: unique without coordination between nodes.
fn publication_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn channel_name(name: &str) -> Result<ChannelName> {
    ChannelName::new(name).map_err(|e| Error::InvalidArgument(format!("channel: {name:?}: {e}")))
}

type PublishStream = Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let caller = caller_trace(request.metadata());
        let response = self.inner.publish_event(&app, request.into_inner().event, caller.as_ref()).await?;
        Ok(Response::new(response))
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let given = request.get_ref().events.len();
        let limit = app.limits.max_batch_events;
        if given == 0 || given > limit {
            return Err(
                Error::InvalidArgument(format!("events: {given} given, 1 to {limit} accepted")).into()
            );
        }
        let caller = caller_trace(request.metadata());
        let results = self.inner.publish_batch(&app, request.into_inner().events, caller.as_ref()).await;
        Ok(Response::new(pb::PublishBatchResponse { results }))
    }

    type PublishStreamStream = PublishStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        // The token is checked per message (each names its app), so a stream with a
        // bad token still answers every message, with UNAUTHENTICATED.
        let caller = self.inner.auth.caller(request.metadata());
        let trace = caller_trace(request.metadata());
        let mut inbound = request.into_inner();
        let (answers, stream) = mpsc::channel(self.inner.stream_window);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                // Room for the answer first: a publisher that does not read its
                // answers stops being read, and HTTP/2 flow control holds it back.
                let Ok(slot) = answers.reserve().await else { return };
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(status) => {
                        // An over-limit message: RESOURCE_EXHAUSTED, as for unary calls.
                        let status = match status.code() {
                            tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
                            _ => status,
                        };
                        slot.send(Err(status));
                        return;
                    }
                };
                let outcome = match caller.clone().and_then(|caller| authorize(&caller, &message.app_id)) {
                    Ok(app) => inner.publish_event(&app, message.event, trace.as_ref()).await,
                    Err(e) => Err(e),
                };
                let result = Some(to_result(outcome));
                slot.send(Ok(pb::PublishStreamResponse { sequence: message.sequence, result }));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn get_channel(
        &self,
        request: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::ChannelInfo>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let channel = channel_name(&request.get_ref().channel)?;
        let stats = self.inner.node.channel_stats(&app.id, &channel).await.map_err(Error::from)?;
        Ok(Response::new(channel_info(&channel, stats)))
    }

    async fn list_channels(
        &self,
        request: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let channels =
            self.inner.node.channel_list(&app.id, &request.get_ref().prefix).await.map_err(Error::from)?;
        let channels = channels.iter().map(|(name, stats)| channel_info(name, *stats)).collect();
        Ok(Response::new(pb::ListChannelsResponse { channels }))
    }

    async fn list_presence_users(
        &self,
        request: Request<pb::ListPresenceUsersRequest>,
    ) -> Result<Response<pb::ListPresenceUsersResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let channel = channel_name(&request.get_ref().channel)?;
        if channel.kind() != ChannelKind::Presence {
            return Err(
                Error::InvalidArgument(format!("channel: {channel} is not a presence- channel")).into()
            );
        }
        let members = self.inner.node.presence().members(&app.id, &channel).await.map_err(Error::from)?;
        let users = members
            .into_iter()
            .map(|m| pb::PresenceUser { id: m.user_id.to_string(), user_info_json: m.user_info.to_string() })
            .collect();
        Ok(Response::new(pb::ListPresenceUsersResponse { users }))
    }

    async fn terminate_user_connections(
        &self,
        request: Request<pb::TerminateUserConnectionsRequest>,
    ) -> Result<Response<pb::TerminateUserConnectionsResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        self.inner.node.terminate_user(&app, &request.get_ref().user_id).await.map_err(Error::from)?;
        Ok(Response::new(pb::TerminateUserConnectionsResponse {}))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let request = request.into_inner();
        let direction = match pb::HistoryDirection::try_from(request.direction) {
            Ok(pb::HistoryDirection::Unspecified) => None,
            Ok(pb::HistoryDirection::Forward) => Some(herald_backbone::Direction::Forward),
            Ok(pb::HistoryDirection::Backward) => Some(herald_backbone::Direction::Backward),
            Err(_) => {
                return Err(
                    Error::InvalidArgument(format!("direction: {} is unknown", request.direction)).into()
                );
            }
        };
        let read = HistoryRequest {
            channel: request.channel,
            since: request.since,
            epoch: Some(request.epoch).filter(|e| !e.is_empty()),
            limit: Some(request.limit as usize).filter(|l| *l > 0),
            direction,
        };
        let answer = self.inner.node.read_history(&app, read).await.map_err(|e| match e {
            HistoryError::Invalid(_) => Error::InvalidArgument(e.to_string()),
            HistoryError::NotKept(_) => Error::FailedPrecondition(e.to_string()),
            HistoryError::Backbone(e) => Error::from(e),
        })?;
        let publications = answer
            .page
            .publications
            .iter()
            .map(|p| pb::HistoryPublication {
                offset: p.position.as_ref().map_or(0, |at| at.offset),
                event: p.event.to_string(),
                data: p.data.to_text(),
                user_id: p.user_id.as_deref().unwrap_or_default().to_owned(),
                published_ms: p.published_us / 1000,
            })
            .collect();
        let position = &answer.page.position;
        Ok(Response::new(pb::GetHistoryResponse {
            publications,
            position: Some(pb::StreamPosition { offset: position.offset, epoch: position.epoch.to_string() }),
            first_offset: answer.page.first,
            recovered: answer.recovered,
        }))
    }
}

/// The caller's W3C trace context, from the `traceparent`/`tracestate` metadata.
pub(crate) fn caller_trace(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    let value = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(value("traceparent"), value("tracestate"))
}

fn channel_info(channel: &ChannelName, stats: herald_backbone::ChannelStats) -> pb::ChannelInfo {
    pb::ChannelInfo {
        name: channel.to_string(),
        occupied: stats.subscription_count > 0,
        subscription_count: stats.subscription_count,
        user_count: stats.user_count,
    }
}
