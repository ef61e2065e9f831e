//! The Pusher HTTP API (`/apps/{app_id}/...`), authenticated exactly as Pusher does,
//! so the official Pusher server SDKs work unchanged.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use herald_backbone::{ChannelStats, Direction, HistoryQuery, Retention, Topic};
use herald_core::{App, ChannelKind, ChannelName, TraceContext, auth};
use herald_telemetry::Metric;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use herald_node::{
    EventRequest, HistoryError, HistoryRequest, HttpApiConfig, Node, PublishError, ValidEvent,
    parse_direction, traced_publish, validate_event,
};

/// An API failure: the status and the message put in the JSON body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// Close the connection after the answer: the request body was not read to its
    /// end, so nothing more can be read from the connection.
    close: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), close: false }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn closing(self) -> Self {
        Self { close: true, ..self }
    }
}

impl From<herald_backbone::Error> for ApiError {
    fn from(e: herald_backbone::Error) -> Self {
        let status = if e.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self::new(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves one request under `/apps/`.
pub(crate) async fn handle(node: Arc<Node>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let result = serve(&node, request).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.status.is_client_error() => "client_error",
        Err(_) => "server_error",
    };
    metrics::counter!(Metric::HttpApiRequests.name(), "outcome" => outcome).increment(1);
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            let mut response = json_response(e.status, &json!({ "error": e.message }));
            if e.close {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            response
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// The endpoints, told apart from the method and path alone.
enum Endpoint<'a> {
    Trigger,
    Batch,
    Channels,
    Channel(&'a str),
    Users(&'a str),
    History(&'a str),
    Terminate(&'a str),
}

impl<'a> Endpoint<'a> {
    /// `rest` is the path after `/apps/{app_id}/`.
    fn route(method: &Method, rest: &[&'a str], path: &str) -> ApiResult<Self> {
        match (method, rest) {
            (&Method::POST, ["events"]) => Ok(Self::Trigger),
            (&Method::POST, ["batch_events"]) => Ok(Self::Batch),
            (&Method::GET, ["channels"]) => Ok(Self::Channels),
            (&Method::GET, ["channels", channel]) => Ok(Self::Channel(channel)),
            (&Method::GET, ["channels", channel, "users"]) => Ok(Self::Users(channel)),
            (&Method::GET, ["channels", channel, "history"]) => Ok(Self::History(channel)),
            (&Method::POST, ["users", user_id, "terminate_connections"]) => Ok(Self::Terminate(user_id)),
            (_, ["events" | "batch_events" | "channels" | "users", ..]) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            )),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no API endpoint at {path}"))),
        }
    }
}

/// Everything that can be checked from the head is checked before the body is read,
/// so a client cannot make the server wait for a body it will refuse anyway: the
/// declared length, the app, the credentials (the signature covers `body_md5`, a
/// query parameter, so only the body's digest itself waits for the body), the app
/// being enabled and the endpoint. The body then has `http.body_timeout` to
/// arrive.
async fn serve(node: &Node, request: Request<Incoming>) -> ApiResult<Value> {
    let (parts, body) = request.into_parts();
    let config = &node.config().http;
    // Anything refused before the body was read closes the connection: the unread
    // body is still on its way, and hyper would otherwise have to drain it.
    let has_body = !body.is_end_stream();
    let unread = |e: ApiError| if has_body { e.closing() } else { e };
    if body.size_hint().lower() > config.max_body_bytes as u64 {
        return Err(too_large(config));
    }

    let path = parts.uri.path().to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["apps", app_id, rest @ ..] = segments.as_slice() else {
        return Err(unread(ApiError::new(StatusCode::NOT_FOUND, "not found")));
    };
    let app = node
        .apps()
        .by_id(app_id)
        .ok_or_else(|| unread(ApiError::new(StatusCode::NOT_FOUND, format!("unknown app id {app_id:?}"))))?
        .clone();

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let verify = |body: &[u8]| {
        auth::verify_api_request(
            &app,
            parts.method.as_str(),
            &path,
            &query,
            body,
            now,
            config.timestamp_tolerance.as_secs(),
        )
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))
    };
    // Without a body, verification checks everything but `body_md5`.
    verify(&[]).map_err(unread)?;
    if !app.enabled {
        return Err(unread(ApiError::new(StatusCode::FORBIDDEN, "app is disabled")));
    }
    let endpoint = Endpoint::route(&parts.method, rest, &path).map_err(unread)?;

    let body = read_body(body, config).await?;
    if !body.is_empty() {
        verify(&body)?;
    }

    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match endpoint {
        Endpoint::Trigger | Endpoint::Batch => {
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
            let caller = TraceContext::from_headers(header("traceparent"), header("tracestate"));
            let work = async {
                match endpoint {
                    Endpoint::Trigger => trigger(node, &app, &body, caller.clone()).await,
                    _ => batch(node, &app, &body, caller.clone()).await,
                }
            };
            traced_publish("http", &app, caller.as_ref(), work).await
        }
        Endpoint::Channels => channels(node, &app, param("filter_by_prefix"), param("info")).await,
        Endpoint::Channel(channel) => channel_info(node, &app, channel, param("info")).await,
        Endpoint::Users(channel) => users(node, &app, channel).await,
        Endpoint::History(channel) => history(node, &app, channel, &query).await,
        Endpoint::Terminate(user_id) => terminate(node, &app, user_id).await,
    }
}

/// Reads a body of at most `http.max_body_bytes` within `http.body_timeout`.
/// A failure closes the connection, as the rest of the body was not read.
async fn read_body(body: Incoming, config: &HttpApiConfig) -> ApiResult<Bytes> {
    let read = Limited::new(body, config.max_body_bytes).collect();
    match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(config)),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("could not read the body: {e}")).closing()),
        Err(_) => {
            let timeout = config.body_timeout;
            let message = format!("request body not received within {timeout:?}");
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, message).closing())
        }
    }
}

fn too_large(config: &HttpApiConfig) -> ApiError {
    let limit = config.max_body_bytes;
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {limit} bytes"))
        .closing()
}

/// An event as the Pusher HTTP API takes it.
#[derive(Deserialize)]
struct HttpEvent {
    name: Option<String>,
    data: Option<Value>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchRequest {
    batch: Vec<HttpEvent>,
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid(refusal) => Self::bad_request(refusal.to_string()),
            PublishError::TooLarge(refusal) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, refusal.to_string()),
            PublishError::Backbone(e) => e.into(),
            PublishError::EventLog(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

/// Validates an HTTP event through the shared publish path; returns it with the
/// `info` attributes asked for.
fn validate(app: &App, event: HttpEvent, batch: bool) -> ApiResult<(ValidEvent, Vec<String>)> {
    let data = match event.data {
        Some(Value::String(data)) => data,
        Some(_) => return Err(ApiError::bad_request("data: must be a string (JSON-encode objects)")),
        None => return Err(ApiError::bad_request("data: required")),
    };
    let channels = match (event.channels, event.channel) {
        (Some(channels), None) if !batch => channels,
        (None, Some(channel)) => vec![channel],
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either channels or channel, not both")),
        (Some(_), None) => return Err(ApiError::bad_request("channel: batch events take one channel each")),
        (None, None) => return Err(ApiError::bad_request("channels: required")),
    };
    let info = parse_info(event.info.as_deref())?;
    let request = EventRequest {
        name: event.name.unwrap_or_default(),
        data,
        channels,
        exclude_socket_id: event.socket_id,
    };
    Ok((validate_event(app, request)?, info))
}

fn parse_info(info: Option<&str>) -> ApiResult<Vec<String>> {
    let attributes: Vec<String> =
        info.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    for attribute in &attributes {
        if !matches!(attribute.as_str(), "user_count" | "subscription_count") {
            return Err(ApiError::bad_request(format!(
                "unknown info attribute {attribute:?}; use user_count or subscription_count"
            )));
        }
    }
    Ok(attributes)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The `info` attributes of one channel, as the events endpoints report them.
async fn attributes(
    node: &Node,
    app: &App,
    channel: &ChannelName,
    info: &[String],
) -> ApiResult<Map<String, Value>> {
    let stats = node.channel_stats(&app.id, channel).await?;
    Ok(attributes_of(&stats, channel, info))
}

/// The `info` attributes of a channel whose stats are known.
fn attributes_of(stats: &ChannelStats, channel: &ChannelName, info: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    for attribute in info {
        match attribute.as_str() {
            "user_count" if channel.kind() == ChannelKind::Presence => {
                out.insert("user_count".into(), stats.user_count.into());
            }
            "subscription_count" => {
                out.insert("subscription_count".into(), stats.subscription_count.into());
            }
            _ => {}
        }
    }
    out
}

/// The body of `POST /events`, parsed and validated.
fn parse_trigger(app: &App, body: &[u8]) -> ApiResult<(ValidEvent, Vec<String>)> {
    validate(app, parse_json(body)?, false)
}

/// The body of `POST /batch_events`, parsed and validated: every event or none.
fn parse_batch(app: &App, body: &[u8]) -> ApiResult<Vec<(ValidEvent, Vec<String>)>> {
    let request: BatchRequest = parse_json(body)?;
    let limit = app.limits.max_batch_events;
    if request.batch.len() > limit {
        return Err(ApiError::bad_request(format!(
            "batch has {} events, at most {limit} are accepted",
            request.batch.len()
        )));
    }
    request
        .batch
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            validate(app, e, true).map_err(|e| ApiError::new(e.status, format!("batch[{i}]: {}", e.message)))
        })
        .collect()
}

async fn trigger(node: &Node, app: &App, body: &[u8], caller: Option<TraceContext>) -> ApiResult<Value> {
    let (mut event, info) = parse_trigger(app, body)?;
    event.trace = caller;
    node.publish_event(app, &event).await?;
    if info.is_empty() {
        return Ok(json!({}));
    }
    let mut channels = Map::new();
    for channel in &event.channels {
        let attributes = attributes(node, app, channel, &info).await?;
        channels.insert(channel.to_string(), Value::Object(attributes));
    }
    Ok(json!({ "channels": channels }))
}

async fn batch(node: &Node, app: &App, body: &[u8], caller: Option<TraceContext>) -> ApiResult<Value> {
    // Validate everything before publishing anything: a bad batch publishes nothing.
    let mut events = parse_batch(app, body)?;
    for (event, _) in &mut events {
        event.trace = caller.clone();
    }
    node.publish_events(app, events.iter().map(|(event, _)| event)).await?;
    if events.iter().all(|(_, info)| info.is_empty()) {
        return Ok(json!({}));
    }
    let mut results = Vec::with_capacity(events.len());
    for (event, info) in &events {
        let attributes = match event.channels.first() {
            Some(channel) => attributes(node, app, channel, info).await?,
            None => Map::new(),
        };
        results.push(Value::Object(attributes));
    }
    Ok(json!({ "batch": results }))
}

async fn channels(node: &Node, app: &App, prefix: Option<&str>, info: Option<&str>) -> ApiResult<Value> {
    let prefix = prefix.unwrap_or("");
    let info = parse_info(info)?;
    if info.iter().any(|a| a == "subscription_count") {
        return Err(ApiError::bad_request("the channels list reports user_count only"));
    }
    let want_users = !info.is_empty();
    if want_users && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request("info=user_count needs filter_by_prefix=presence-"));
    }
    let mut channels = Map::new();
    for (channel, stats) in node.channel_list(&app.id, prefix).await? {
        let entry = if want_users { json!({ "user_count": stats.user_count }) } else { json!({}) };
        channels.insert(channel.to_string(), entry);
    }
    Ok(json!({ "channels": channels }))
}

async fn channel_info(node: &Node, app: &App, channel: &str, info: Option<&str>) -> ApiResult<Value> {
    let channel =
        ChannelName::new(channel).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))?;
    let info = parse_info(info)?;
    if info.iter().any(|a| a == "user_count") && channel.kind() != ChannelKind::Presence {
        return Err(ApiError::bad_request("user_count is only available for presence channels"));
    }
    let stats = node.channel_stats(&app.id, &channel).await?;
    let mut out = json!({ "occupied": stats.subscription_count > 0 });
    for attribute in attributes_of(&stats, &channel, &info) {
        out[attribute.0] = attribute.1;
    }
    if channel.is_cache()
        && let Some(cache) = cached(node, app, &channel).await?
    {
        out["cache"] = cache;
    }
    Ok(out)
}

/// `GET /apps/{id}/channels/{name}/history?since=&epoch=&limit=&direction=`: the
/// channel's kept publications, its position, and (with `since` and `epoch`) whether
/// nothing after that position is missing.
async fn history(node: &Node, app: &App, channel: &str, query: &[(String, String)]) -> ApiResult<Value> {
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let number = |name: &str| -> ApiResult<Option<u64>> {
        param(name)
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{name}: {text:?} is not a number")))
            })
            .transpose()
    };
    let request = HistoryRequest {
        channel: channel.to_owned(),
        since: number("since")?,
        epoch: param("epoch").map(str::to_owned),
        limit: number("limit")?.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
        direction: param("direction").map(parse_direction).transpose()?,
    };
    let answer = node.read_history(app, request).await?;
    let publications: Vec<Value> = answer
        .page
        .publications
        .iter()
        .map(|p| {
            let mut publication = json!({
                "offset": p.position.as_ref().map_or(0, |at| at.offset),
                "event": &*p.event,
                "data": p.data.to_text(),
                "published_ms": p.published_us / 1000,
            });
            if let Some(user_id) = &p.user_id {
                publication["user_id"] = json!(&**user_id);
            }
            publication
        })
        .collect();
    let position = &answer.page.position;
    let mut out = json!({
        "channel": answer.channel.as_str(),
        "publications": publications,
        "position": { "offset": position.offset, "epoch": &*position.epoch },
        "first_offset": answer.page.first,
    });
    if let Some(recovered) = answer.recovered {
        out["recovered"] = json!(recovered);
    }
    Ok(out)
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Invalid(_) | HistoryError::NotKept(_) => Self::bad_request(e.to_string()),
            HistoryError::Backbone(e) => e.into(),
        }
    }
}

/// A cache channel's cached event as Pusher's channel info shows it: its data and the
/// seconds it has left.
async fn cached(node: &Node, app: &App, channel: &ChannelName) -> ApiResult<Option<Value>> {
    let Some(rule) = app.history_for(channel) else { return Ok(None) };
    let topic = Topic::channel(&Arc::from(app.id.as_str()), channel);
    let last = HistoryQuery { since: None, limit: 1, direction: Direction::Backward };
    let page = node.history(&topic, Retention::from(rule), last).await?;
    Ok(page.publications.first().map(|p| {
        let age =
            Duration::from_micros(u64::try_from(herald_core::time::now_us() - p.published_us).unwrap_or(0));
        json!({ "data": p.data.to_text(), "ttl": rule.ttl.saturating_sub(age).as_secs() })
    }))
}

async fn users(node: &Node, app: &App, channel: &str) -> ApiResult<Value> {
    let channel =
        ChannelName::new(channel).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::bad_request("users are only available for presence channels"));
    }
    let members = node.presence().members(&app.id, &channel).await?;
    let users: Vec<Value> = members.iter().map(|m| json!({ "id": &*m.user_id })).collect();
    Ok(json!({ "users": users }))
}

async fn terminate(node: &Node, app: &App, user_id: &str) -> ApiResult<Value> {
    node.terminate_user(app, user_id).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod properties {
    //! Request bodies are untrusted input: whatever arrives gets an answer, and a
    //! refusal is a 4xx that says why.
    use herald_core::AppLimits;
    use proptest::{
        collection::vec,
        prelude::*,
        sample::{Index, select},
    };

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn app(limits: AppLimits) -> App {
        App { limits, ..App::for_test("1") }
    }

    /// Small limits, so that the edges of each are reached.
    fn limits() -> impl Strategy<Value = AppLimits> {
        (1usize..300, 1usize..40, 1usize..12, 1usize..6).prop_map(|(data, name, channels, batch)| AppLimits {
            max_event_data_bytes: data,
            max_event_name_len: name,
            max_channels_per_event: channels,
            max_batch_events: batch,
            ..AppLimits::default()
        })
    }

    /// An event within `limits`, as a JSON body, with what it must validate to.
    #[derive(Debug, Clone)]
    struct Event {
        name: String,
        data: String,
        channels: Vec<String>,
        socket_id: Option<String>,
    }

    impl Event {
        fn json(&self, single: bool) -> Value {
            let mut event = json!({ "name": self.name, "data": self.data });
            match (single, self.channels.as_slice()) {
                (true, [channel]) => event["channel"] = json!(channel),
                _ => event["channels"] = json!(self.channels),
            }
            if let Some(socket_id) = &self.socket_id {
                event["socket_id"] = json!(socket_id);
            }
            event
        }

        fn check(&self, valid: &ValidEvent) -> Result<(), TestCaseError> {
            let channels: Vec<&str> = valid.channels.iter().map(ChannelName::as_str).collect();
            prop_assert_eq!(channels, self.channels.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(&*valid.name, self.name.as_str());
            prop_assert_eq!(valid.data.to_text(), self.data.clone());
            prop_assert_eq!(valid.exclude.map(|s| s.to_string()), self.socket_id.clone());
            Ok(())
        }
    }

    fn channel_name() -> impl Strategy<Value = String> {
        let prefix = select(vec!["", "private-", "presence-", "#server-to-user-"]);
        (prefix, "[A-Za-z0-9_=@,.;-]{1,40}").prop_map(|(prefix, body)| format!("{prefix}{body}"))
    }

    /// `text` cut to at most `max` bytes, on a character boundary.
    fn cut(text: &str, max: usize) -> String {
        let mut end = text.len().min(max);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }

    fn event(limits: &AppLimits) -> impl Strategy<Value = Event> + use<> {
        let (max_name, max_data, max_channels) =
            (limits.max_event_name_len, limits.max_event_data_bytes, limits.max_channels_per_event);
        let name = vec(any::<char>(), 1..=max_name)
            .prop_map(|chars| chars.into_iter().collect::<String>())
            .prop_filter("reserved prefix", |n| !n.starts_with("pusher"));
        let channels = prop_oneof![
            vec(channel_name(), 1..=max_channels),
            // An encrypted channel alone.
            "private-encrypted-[a-z0-9]{1,20}".prop_map(|c| vec![c]),
        ];
        let socket_id =
            proptest::option::of((any::<u32>(), any::<u64>()).prop_map(|(n, c)| format!("{n}.{c}")));
        (name, ".{0,300}", channels, socket_id).prop_map(move |(name, data, channels, socket_id)| Event {
            name,
            data: cut(&data, max_data),
            channels,
            socket_id,
        })
    }

    /// A valid body with a few bytes overwritten and the end cut off: gets past
    /// the first checks, unlike most random bytes.
    fn mangled() -> impl Strategy<Value = Vec<u8>> {
        let body = event(&AppLimits::default()).prop_map(|e| e.json(false).to_string().into_bytes());
        let batch = vec(event(&AppLimits::default()), 0..4).prop_map(|events| {
            let batch: Vec<Value> = events.iter().map(|e| e.json(true)).collect();
            json!({ "batch": batch }).to_string().into_bytes()
        });
        let flips = vec((any::<Index>(), any::<u8>()), 0..4);
        (prop_oneof![body, batch], flips, any::<Index>()).prop_map(|(mut bytes, flips, cut)| {
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(bytes.len() / 2));
            bytes
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bodies_are_answered_with_a_client_error(
            body in prop_oneof![vec(any::<u8>(), 0..200), mangled()],
        ) {
            let app = app(AppLimits::default());
            for result in [parse_trigger(&app, &body).map(|_| ()), parse_batch(&app, &body).map(|_| ())] {
                if let Err(e) = result {
                    prop_assert!(
                        matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE),
                        "{:?}", e
                    );
                    prop_assert!(!e.message.is_empty());
                }
            }
        }

        #[test]
        fn events_within_the_limits_are_accepted(
            (limits, events) in limits()
                .prop_flat_map(|l| (Just(l.clone()), vec(event(&l), 1..=l.max_batch_events))),
        ) {
            let app = app(limits);
            let body = events[0].json(false).to_string();
            let (valid, info) =
                parse_trigger(&app, body.as_bytes()).map_err(|e| TestCaseError::fail(e.message))?;
            events[0].check(&valid)?;
            prop_assert!(info.is_empty());

            let single: Vec<Event> = events.into_iter().map(|mut e| { e.channels.truncate(1); e }).collect();
            let batch: Vec<Value> = single.iter().map(|e| e.json(true)).collect();
            let body = json!({ "batch": batch }).to_string();
            let valid = parse_batch(&app, body.as_bytes()).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(valid.len(), single.len());
            for (event, (valid, _)) in single.iter().zip(&valid) {
                event.check(valid)?;
            }
        }

        #[test]
        fn events_over_a_limit_are_refused_with_the_reason(
            (limits, event) in limits().prop_flat_map(|l| (Just(l.clone()), event(&l))),
            over in 1usize..20,
            which in 0..4,
        ) {
            let app = app(limits.clone());
            let mut event = event;
            let (status, message) = match which {
                0 => {
                    event.data = "x".repeat(limits.max_event_data_bytes + over);
                    (StatusCode::PAYLOAD_TOO_LARGE, format!(
                        "data: {} bytes, the limit is {}", event.data.len(), limits.max_event_data_bytes
                    ))
                }
                1 => {
                    event.name = "é".repeat(limits.max_event_name_len + over);
                    let message = format!("name: longer than {} characters", limits.max_event_name_len);
                    (StatusCode::BAD_REQUEST, message)
                }
                2 => {
                    let count = limits.max_channels_per_event + over;
                    event.channels = (0..count).map(|i| format!("c{i}")).collect();
                    (StatusCode::BAD_REQUEST, format!(
                        "channels: {count} given, at most {} per event", limits.max_channels_per_event
                    ))
                }
                _ => {
                    event.channels.truncate(1);
                    let count = limits.max_batch_events + over;
                    let batch = vec![event.json(true); count];
                    let body = json!({ "batch": batch }).to_string();
                    let e = parse_batch(&app, body.as_bytes()).err().unwrap();
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    let expected =
                        format!("batch has {count} events, at most {} are accepted", limits.max_batch_events);
                    prop_assert_eq!(e.message, expected);
                    return Ok(());
                }
            };
            let e = parse_trigger(&app, event.json(false).to_string().as_bytes()).err().unwrap();
            prop_assert_eq!(e.status, status);
            prop_assert_eq!(&e.message, &message);
            if which != 2 {
                // The same refusal inside a batch names the event.
                event.channels.truncate(1);
                let body = json!({ "batch": [event.json(true)] }).to_string();
                let e = parse_batch(&app, body.as_bytes()).err().unwrap();
                prop_assert_eq!(e.status, status);
                prop_assert_eq!(e.message, format!("batch[0]: {message}"));
            }
        }
    }
}
