//! The webhook dispatcher: consumes channel events from the [`EventLog`], matches them
//! against each app's webhook endpoints, and delivers them as signed HTTP requests
//! (Standard Webhooks or Pusher format) with per-tenant rate limits, retries on a
//! schedule and a dead-letter topic.
//!
//! [`EventLog`]: herald_backbone::EventLog

//!
//! | module | what |
//! |---|---|
//! | `dispatcher` | the consumer loops, endpoint queues, attempts, retry tiers, dead letters |
//! | `endpoint` | endpoints: URL, filters, format, secrets |
//! | `store` | the [`store::WebhookStore`] trait (endpoints, attempts, dead letters) + memory |
//! | `format` | request bodies and headers per format |
//! | `sign` | Standard Webhooks and Pusher signatures, secrets |
//! | `client` | HTTP/1.1 keep-alive client with SSRF-checked resolution and timeouts |
//! | `ssrf` | which addresses are refused |
//! | `limiter`, `gcra` | per-app and per-endpoint rate limits, shared through leases |
//! | `schedule` | the retry schedule and `Retry-After` |
//! | `filter` | event types and channel patterns |

pub mod client;
pub mod dispatcher;
pub mod endpoint;
pub mod filter;
pub mod format;
pub mod gcra;
pub mod limiter;
pub mod schedule;
pub mod sign;
pub mod ssrf;
pub mod store;

pub use dispatcher::{Dispatcher, DispatcherConfig, Topics};
