//! The edge node: a hyper + fastwebsockets server speaking the Pusher Channels
//! protocol v7 to clients and the Pusher HTTP API to backends, fanning publications
//! out through the [`herald_backbone::Broker`] and keeping presence and occupancy in the
//! [`herald_backbone::PresenceManager`] — so nothing here assumes a single node.
//!
//! | module | what |
//! |---|---|
//! | `server` | accept loop, routing, upgrades, graceful shutdown |
//! | `session` | one connection's protocol state machine (reader) |
//! | `frame_reader` | client frames read without a per-connection buffer |
//! | `writer` | one connection's writer: outbox → socket, pings |
//! | `http_api` | `/apps/{id}/events`, `batch_events`, `channels`, `users` |
//! | `health` | `/healthz`, `/readyz`, `/metrics` |
//! | `node` | state shared by all of the above |
//! | `publish` | the one publish path of the HTTP and gRPC APIs: validation and publication |

mod accept;
mod config;
mod frame_reader;
mod health;
mod http_api;
mod node;
mod publish;
mod server;
mod session;
mod writer;

pub use accept::accept;
pub use config::{ConnectionConfig, EdgeConfig, HttpApiConfig};
pub use health::serve_health;
pub use node::Node;
pub use publish::{EventRequest, PublishError, ValidEvent, validate_event};
pub use server::serve;
