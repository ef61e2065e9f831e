//! The edge node: a tokio + hyper server speaking the Pusher Channels
//! protocol v7 to clients and the Pusher HTTP API to backends, fanning publications
//! out through the [`herald_backbone::Broker`] and keeping presence and occupancy in the
//! [`herald_backbone::PresenceManager`] — so nothing here assumes a single node.
//!
//! | module | what |
//! |---|---|
//! | `server` | accept loop, routing of a connection's first request, graceful shutdown |
//! | `websocket` | the opening handshake and client frames, parsed without held buffers |
//! | `session` | one connection's task: the wait, dispatch, subscribe, sign-in, client events, close |
//! | `message` | client messages parsed without session state (untrusted input) |
//! | `input_budget` | the node-wide bound on unfinished client input (partial frames and messages) |
//! | `liveness` | one sweep per node: pings, pong and write timeouts of every connection |
//! | `http_api` | `/apps/{id}/events`, `batch_events`, `channels`, `users` |
//! | `health` | `/healthz`, `/readyz`, `/metrics` |
//! | `node` | state shared by all of the above |
//! | `share` | the node's share of cluster presence, and its re-assertion after any gap |
//! | `publish` | the one publish path of the HTTP and gRPC APIs: validation and publication |
//! | `events` | channel events (publications, client events, lifecycle) into the event log |
//! | `debounce` | lifecycle announcements waiting for the debounce, one entry per channel or user |

mod accept;
mod config;
mod debounce;
pub mod events;
mod health;
mod http_api;
mod input_budget;
mod liveness;
mod message;
mod node;
mod publish;
mod server;
mod session;
mod share;
pub mod websocket;

pub use accept::{accept, bind};
pub use config::{ConnectionConfig, EdgeConfig, HttpApiConfig};
pub use events::{EventsConfig, RecordError};
pub use health::{Readiness, serve_health, serve_health_of};
pub use node::Node;
pub use publish::{EventRequest, PublishError, ValidEvent, validate_event};
pub use server::serve;
