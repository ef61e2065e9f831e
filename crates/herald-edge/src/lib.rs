//! The edge's front ends: a tokio + hyper server speaking the Pusher Channels
//! protocol v7 to clients and the Pusher HTTP API to backends. Everything they share
//! with the gRPC API (publishing, presence, the event log) is the [`herald_node::Node`]
//! they are given, which fans out through the backbone, so nothing here assumes a
//! single node.
//!
//! | module | what |
//! |---|---|
//! | `server` | accept loop, routing of a connection's first request, graceful shutdown |
//! | `websocket` | the opening handshake and client frames, parsed without held buffers |
//! | `session` | one connection's task: the wait, dispatch, subscribe, sign-in, client events, close |
//! | `message` | client messages parsed without session state (untrusted input) |
//! | `liveness` | one sweep per node: pings, pong and write timeouts of every connection |
//! | `http_api` | `/apps/{id}/events`, `batch_events`, `channels`, `users` |

mod http_api;
mod liveness;
mod message;
mod server;
mod session;
pub mod websocket;

pub use server::serve;
