//! The webhook dispatcher: consumes channel events from the [`EventLog`], matches them
//! against each app's webhook endpoints, and delivers them as signed HTTP requests
//! (Standard Webhooks or Pusher format) with per-tenant rate limits, retries on a
//! schedule and a dead-letter topic. The webhook model it delivers by (endpoints,
//! stores, secrets, limits) is `herald-webhooks`.
//!
//! [`EventLog`]: herald_backbone::EventLog

//!
//! | module | what |
//! |---|---|
//! | `dispatcher` | [`Dispatcher`]: lifecycle and shutdown; under it `config` (settings, topics), `offsets` (commits), `consumer` (read loops, due queue), `routing` (events to endpoints, endpoint cache), `batcher` (Pusher batches), `worker` (endpoint queues, limits, caps), `attempt` (one POST and its outcome: retry, park, dead letter, disable) |
//! | `format` | request bodies and headers per format |
//! | `client` | HTTP/1.1 keep-alive client (hyper-util's pool, idle expiry) whose connector resolves through the SSRF policy and pins the address; timeouts |
//! | `limiter` | per-app and per-endpoint rate limits, shared through leases |
//! | `schedule` | the retry schedule and `Retry-After` |

pub mod client;
pub mod dispatcher;
pub mod format;
pub mod limiter;
pub mod schedule;

pub use dispatcher::{Dispatcher, DispatcherConfig, Topics};
