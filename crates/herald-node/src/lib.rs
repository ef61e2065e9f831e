//! A Herald node: what the front ends of one process share, whichever protocol they
//! speak. The WebSocket edge and the Pusher HTTP API (`herald-edge`) and the gRPC API
//! (`herald-api`) both work through a [`Node`], and neither depends on the other.
//!
//! | module | what |
//! |---|---|
//! | `node` | [`Node`], built whole by [`NodeBuilder`]; its whole API |
//! | `history` | reads of a channel's history for backends (HTTP and gRPC), validated once |
//! | `publish` | the one publish path of every API: validation (typed refusals) and publication |
//! | `recorder` | channel events into the event log: one appender per node, bounded |
//! | `lifecycle` | subscription counts and occupied/vacated/member events, decided once per cluster |
//! | `debounce` | lifecycle announcements waiting for the debounce, one entry per channel or user |
//! | `occupancy` | the node's subscription counts, sent to the backbone in batches when they change |
//! | `share` | the node's share of cluster presence, its re-assertion after any gap, reaped nodes |
//! | `interest` | the broker topics the node subscribes to, kept equal to its local subscribers |
//! | `input_budget` | the node-wide bound on unfinished client input (partial frames and messages) |
//! | `config` | the settings of a node and its front ends |

mod config;
mod debounce;
mod history;
mod input_budget;
mod interest;
mod lifecycle;
mod node;
mod occupancy;
mod publish;
mod recorder;
mod share;

pub use config::{ConnectionConfig, EdgeConfig, HttpApiConfig, duration};
pub use history::{DEFAULT_HISTORY_LIMIT, HistoryAnswer, HistoryError, HistoryRequest, parse_direction};
pub use input_budget::InputBudget;
pub use node::{Node, NodeBuilder};
pub use publish::{
    EventField, EventRequest, PublishError, Refusal, ValidEvent, publish_span, traced_publish, validate_event,
};
pub use recorder::{EventsConfig, RecordError, Recorder, channel_event, event_id};
pub use share::Joined;
