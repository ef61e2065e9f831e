//! Reading a channel's history for backends: the one request both the Pusher HTTP API
//! (`GET /apps/{id}/channels/{name}/history`) and the gRPC API (`GetHistory`) make, so
//! they accept and refuse exactly the same reads.

use herald_backbone::{Direction, HistoryPage, HistoryQuery, Retention, Topic};
use herald_core::{App, ChannelName, StreamPosition, history::MAX_HISTORY_SIZE};

use crate::Node;

/// Publications a read returns when the request names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A read of a channel's history as a backend asks for it, before validation.
#[derive(Debug, Clone, Default)]
pub struct HistoryRequest {
    pub channel: String,
    /// Only publications after this offset.
    pub since: Option<u64>,
    /// The epoch `since` belongs to: the answer says whether nothing after it is
    /// missing ([`HistoryAnswer::recovered`]).
    pub epoch: Option<String>,
    /// At most this many (1 to 10,000; default [`DEFAULT_HISTORY_LIMIT`]).
    pub limit: Option<usize>,
    /// Oldest or newest first. Default: oldest first after `since`, else newest first
    /// (what followed a position; or the latest messages).
    pub direction: Option<Direction>,
}

/// Why a history read was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// A field is malformed (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The channel keeps no history (HTTP 400, gRPC FAILED_PRECONDITION).
    #[error("channel {0:?} keeps no history: no [[apps.history]] rule of the app matches it")]
    NotKept(String),
    /// The backbone could not answer (HTTP 503, gRPC UNAVAILABLE).
    #[error(transparent)]
    Backbone(#[from] herald_backbone::Error),
}

/// What a read found.
#[derive(Debug, Clone)]
pub struct HistoryAnswer {
    pub channel: ChannelName,
    pub page: HistoryPage,
    /// With `since` and `epoch`: whether every publication after that position is
    /// still kept (a client resuming there misses nothing).
    pub recovered: Option<bool>,
}

/// Validates `request` against `app` and reads the history.
pub(crate) async fn read(
    node: &Node,
    app: &App,
    request: HistoryRequest,
) -> Result<HistoryAnswer, HistoryError> {
    let channel = ChannelName::new(&request.channel)
        .map_err(|e| HistoryError::Invalid(format!("channel: {:?}: {e}", request.channel)))?;
    let rule = app.history_for(&channel).ok_or_else(|| HistoryError::NotKept(channel.to_string()))?;
    let limit = request.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if limit == 0 || limit > MAX_HISTORY_SIZE {
        return Err(HistoryError::Invalid(format!("limit: {limit}; 1 to {MAX_HISTORY_SIZE} accepted")));
    }
    if request.epoch.is_some() && request.since.is_none() {
        return Err(HistoryError::Invalid("epoch: only with since".into()));
    }
    let direction = request.direction.unwrap_or(if request.since.is_some() {
        Direction::Forward
    } else {
        Direction::Backward
    });
    let topic = Topic::channel(&std::sync::Arc::from(app.id.as_str()), &channel);
    let query = HistoryQuery { since: request.since, limit, direction };
    let page = node.history(&topic, Retention::from(rule), query).await?;
    let recovered = match (request.since, &request.epoch) {
        (Some(offset), Some(epoch)) => Some(page.recovers(&StreamPosition::new(offset, epoch.as_str()))),
        _ => None,
    };
    Ok(HistoryAnswer { channel, page, recovered })
}

/// Parses a direction as both APIs spell it.
pub fn parse_direction(text: &str) -> Result<Direction, HistoryError> {
    match text {
        "forward" => Ok(Direction::Forward),
        "backward" => Ok(Direction::Backward),
        other => Err(HistoryError::Invalid(format!("direction: {other:?}; use forward or backward"))),
    }
}
