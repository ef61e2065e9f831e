//! The one publish path for backends: validation of an event against the app's limits
//! and its publication through the broker. The Pusher HTTP API and the gRPC API both
//! call this, so they accept and refuse exactly the same events.

use std::{future::Future, sync::Arc};

use herald_backbone::{Message, Retention, Topic};
use herald_core::{App, ChannelKind, ChannelName, Publication, PublicationData, SocketId, TraceContext};
use herald_telemetry::trace;
use tracing::Instrument;

use crate::{node::Node, recorder::RecordError};

/// Why an event was not published. Each API maps these to its own statuses, and
/// renders a [`Refusal`] with its own field names.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// A field is missing or malformed (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(Refusal),
    /// The data is over the app's size limit (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(Refusal),
    /// The backbone could not take it; nothing was published (HTTP 503, gRPC UNAVAILABLE).
    #[error(transparent)]
    Backbone(#[from] herald_backbone::Error),
    /// The event log could not take it (HTTP 503, gRPC UNAVAILABLE). Subscribers may
    /// have received it; webhooks will not see it. Retry (with an idempotency key).
    #[error(transparent)]
    EventLog(#[from] RecordError),
}

/// The field of an event a refusal is about. Front ends name them differently (the
/// Pusher HTTP API's `socket_id` is the gRPC API's `exclude_socket_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventField {
    Name,
    Data,
    Channels,
    ExcludeSocketId,
    UserId,
}

impl EventField {
    /// The field's name in the Pusher HTTP API (the default rendering).
    pub fn pusher_name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Data => "data",
            Self::Channels => "channels",
            Self::ExcludeSocketId => "socket_id",
            Self::UserId => "user_id",
        }
    }
}

/// A refused field and why, without the field's name in the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: EventField,
    pub reason: String,
}

impl Refusal {
    fn new(field: EventField, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }

    /// `"<field>: <reason>"` with the field named by `name`.
    pub fn render(&self, name: impl Fn(EventField) -> &'static str) -> String {
        format!("{}: {}", name(self.field), self.reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(EventField::pusher_name))
    }
}

/// An event as a backend describes it, before validation.
#[derive(Debug, Clone, Default)]
pub struct EventRequest {
    pub name: String,
    pub data: String,
    pub channels: Vec<String>,
    /// A socket id (`1234.5678`) to exclude; empty means none.
    pub exclude_socket_id: Option<String>,
}

/// An event that passed validation, ready to publish.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    pub channels: Vec<ChannelName>,
    pub name: Arc<str>,
    pub data: PublicationData,
    pub exclude: Option<SocketId>,
    /// The caller's trace context (the API request's `traceparent`), which the front
    /// end sets: handed on as it is when Herald does not trace itself.
    pub trace: Option<TraceContext>,
}

/// Checks an event against Pusher's rules and the app's limits, naming the field and
/// the reason when it refuses.
pub fn validate_event(app: &App, request: EventRequest) -> Result<ValidEvent, PublishError> {
    use EventField::{Channels, Data, ExcludeSocketId, Name};
    let _span = trace::child(|| tracing::info_span!(target: trace::TARGET, "validate")).entered();
    let limits = &app.limits;
    let invalid = |field, reason: String| Err(PublishError::Invalid(Refusal::new(field, reason)));
    if request.name.is_empty() {
        return invalid(Name, "required".into());
    }
    if request.name.chars().count() > limits.max_event_name_len {
        return invalid(Name, format!("longer than {} characters", limits.max_event_name_len));
    }
    if request.name.starts_with("pusher:") || request.name.starts_with("pusher_internal:") {
        return invalid(Name, "names starting with pusher: or pusher_internal: are reserved".into());
    }
    if request.data.len() > limits.max_event_data_bytes {
        let reason = format!("{} bytes, the limit is {}", request.data.len(), limits.max_event_data_bytes);
        return Err(PublishError::TooLarge(Refusal::new(Data, reason)));
    }
    if request.channels.is_empty() {
        return invalid(Channels, "at least one channel is required".into());
    }
    if request.channels.len() > limits.max_channels_per_event {
        let (given, max) = (request.channels.len(), limits.max_channels_per_event);
        return invalid(Channels, format!("{given} given, at most {max} per event"));
    }
    let mut channels = Vec::with_capacity(request.channels.len());
    for name in &request.channels {
        let channel = match ChannelName::new(name) {
            Ok(channel) => channel,
            Err(e) => return invalid(Channels, format!("{name:?}: {e}")),
        };
        if channel.kind() == ChannelKind::PrivateEncrypted && request.channels.len() > 1 {
            return invalid(Channels, "an event to an encrypted channel must name that channel alone".into());
        }
        channels.push(channel);
    }
    let exclude = match request.exclude_socket_id.as_deref() {
        None | Some("") => None,
        Some(id) => match id.parse::<SocketId>() {
            Ok(socket) => Some(socket),
            Err(e) => return invalid(ExcludeSocketId, format!("{id:?}: {e}")),
        },
    };
    Ok(ValidEvent {
        channels,
        name: Arc::from(request.name),
        data: PublicationData::from_string(&request.data),
        exclude,
        trace: None,
    })
}

/// Runs one publish request's `work` (`api`: `http` or `grpc`) in its span, a child of
/// the caller's span when it sent a trace context, and marks the span failed when the
/// work fails. The span's children are validation, the broker publish and the
/// event-log append, and every node's fan-out and every webhook attempt.
pub async fn traced_publish<T, E: std::fmt::Display>(
    api: &'static str,
    app: &App,
    caller: Option<&TraceContext>,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = publish_span(api, app, caller);
    let outcome = work.instrument(span.clone()).await;
    if let Err(e) = &outcome
        && !span.is_disabled()
    {
        span.record("otel.status_code", "ERROR");
        span.record("error", tracing::field::display(e));
    }
    outcome
}

/// The span of one publish request (see [`traced_publish`]).
pub fn publish_span(api: &'static str, app: &App, caller: Option<&TraceContext>) -> tracing::Span {
    trace::api_span(caller, || {
        tracing::info_span!(
            target: trace::TARGET,
            "publish",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            api,
            app_id = %app.id,
            error = tracing::field::Empty,
        )
    })
}

/// Publishes a validated event to each of its channels, on every node.
pub(crate) async fn publish_event(node: &Node, app: &App, event: &ValidEvent) -> Result<(), PublishError> {
    node.publish_events(app, std::slice::from_ref(event)).await
}

/// Publishes validated events, in order, each to each of its channels, on every
/// node; several at once go to the broker as one batch, so each subscriber gets
/// its share of them in one write.
pub(crate) async fn publish_events<'a>(
    node: &Node,
    app: &App,
    events: impl IntoIterator<Item = &'a ValidEvent>,
) -> Result<(), PublishError> {
    let app_id: Arc<str> = Arc::from(app.id.as_str());
    let published_us = herald_core::time::now_us();
    // Traced here: every node's fan-out and every webhook attempt are children of the
    // caller's span (the API's publish span); else the caller's context, as it came.
    let traced = trace::current();
    let messages: Vec<(Topic, Message)> = events
        .into_iter()
        .flat_map(|event| {
            event.channels.iter().map(|channel| {
                let publication = Publication {
                    app_id: app_id.clone(),
                    channel: channel.clone(),
                    event: event.name.clone(),
                    data: event.data.clone(),
                    user_id: None,
                    exclude: event.exclude,
                    published_us,
                    trace: traced.clone().or_else(|| event.trace.clone()),
                    position: None,
                };
                (Topic::channel(&app_id, channel), Message::Publication(publication))
            })
        })
        .collect();
    let records = node.recorder().map(|recorder| {
        let events = messages.iter().filter_map(|(_, message)| match message {
            Message::Publication(p) => Some(publication_event(p)),
            Message::TerminateUser { .. } | Message::Watchlist { .. } => None,
        });
        (recorder.clone(), events.collect::<Vec<_>>())
    });
    let publications = messages.len();
    // Publications of channels that keep history go through the broker's history, which
    // gives them their offsets as it publishes them; the rest are published as they are.
    let mut kept: Vec<(Topic, Publication, Retention)> = Vec::new();
    let mut messages: Vec<(Topic, Message)> = messages
        .into_iter()
        .filter_map(|(topic, message)| match message {
            Message::Publication(p) => match app.history_for(&p.channel) {
                Some(rule) => {
                    kept.push((topic, p, Retention::from(rule)));
                    None
                }
                None => Some((topic, Message::Publication(p))),
            },
            control => Some((topic, control)),
        })
        .collect();
    let fan_out = async {
        if !kept.is_empty() {
            node.broker.publish_kept(kept).await?;
        }
        if messages.len() == 1
            && let Some((topic, message)) = messages.pop()
        {
            node.broker.publish(&topic, message).await
        } else if !messages.is_empty() {
            node.broker.publish_batch(messages).await
        } else {
            Ok(())
        }
    }
    .instrument(trace::child(
        || tracing::info_span!(target: trace::TARGET, "broker.publish", otel.kind = "producer", publications),
    ));
    // Fan-out and the durable append run side by side: the publish takes as long
    // as the slower of the two, not their sum.
    let record = async {
        match records {
            Some((recorder, events)) => {
                let span = trace::child(|| {
                    tracing::info_span!(
                        target: trace::TARGET,
                        "events.append",
                        otel.kind = "producer",
                        events = events.len()
                    )
                });
                recorder.record_publications(events).instrument(span).await
            }
            None => Ok(()),
        }
    };
    let (fanned_out, recorded) = tokio::join!(fan_out, record);
    fanned_out?;
    recorded?;
    Ok(())
}

/// Closes every connection signed in as `user_id`, on every node.
pub(crate) async fn terminate_user(node: &Node, app: &App, user_id: &str) -> Result<(), PublishError> {
    if user_id.is_empty() {
        return Err(PublishError::Invalid(Refusal::new(EventField::UserId, "required")));
    }
    let topic = Topic::user(&Arc::from(app.id.as_str()), user_id);
    node.broker.publish(&topic, Message::TerminateUser { user_id: Arc::from(user_id) }).await?;
    Ok(())
}

/// A publication as the event log records it.
fn publication_event(publication: &Publication) -> herald_proto::v1::ChannelEvent {
    let mut event = crate::recorder::channel_event(
        &publication.app_id,
        publication.channel.as_str(),
        herald_proto::v1::ChannelEventType::Publication,
    );
    event.event = publication.event.to_string();
    event.data = publication.data.to_text();
    event.socket_id = publication.exclude.map(|s| s.to_string()).unwrap_or_default();
    if let Some(trace) = &publication.trace {
        event.traceparent = trace.traceparent().to_owned();
        event.tracestate = trace.tracestate().unwrap_or_default().to_owned();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::for_test("a")
    }

    fn request(channels: &[&str]) -> EventRequest {
        EventRequest {
            name: "e".into(),
            data: "d".into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            exclude_socket_id: None,
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let message = |r: EventRequest| validate_event(&app(), r).unwrap_err().to_string();
        assert!(message(request(&[])).starts_with("channels:"));
        assert!(message(request(&["bad name"])).starts_with("channels:"));
        assert!(message(EventRequest { name: String::new(), ..request(&["c"]) }).starts_with("name:"));
        assert!(message(EventRequest { name: "n".repeat(201), ..request(&["c"]) }).starts_with("name:"));
        assert!(message(EventRequest { name: "pusher:x".into(), ..request(&["c"]) }).contains("reserved"));
        assert!(
            message(EventRequest { exclude_socket_id: Some("x".into()), ..request(&["c"]) })
                .starts_with("socket_id:")
        );
        let big = EventRequest { data: "x".repeat(10 * 1024 + 1), ..request(&["c"]) };
        assert!(matches!(validate_event(&app(), big), Err(PublishError::TooLarge(_))));
        let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(message(request(&many)).contains("at most 100"));
        assert!(validate_event(&app(), request(&["a", "b"])).is_ok());
    }

    #[test]
    fn each_front_end_names_the_fields_its_own_way() {
        let refused =
            validate_event(&app(), EventRequest { exclude_socket_id: Some("x".into()), ..request(&["c"]) });
        let Err(PublishError::Invalid(refusal)) = refused else { panic!("accepted: {refused:?}") };
        assert_eq!(refusal.field, EventField::ExcludeSocketId);
        assert!(refusal.to_string().starts_with("socket_id: "));
        let grpc =
            refusal.render(|f| if f == EventField::ExcludeSocketId { "exclude_socket_id" } else { "x" });
        assert!(grpc.starts_with("exclude_socket_id: \"x\": "), "{grpc}");
    }
}
