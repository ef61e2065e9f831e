//! The webhook model every role shares: endpoints and their filters, secrets and
//! signatures, the address policy an endpoint URL must pass, rate limits, and the
//! contracts of the stores that hold them ([`store::WebhookStore`],
//! [`limiter::RateLimiter`]), with memory implementations. The dispatcher delivers by
//! it, the gRPC WebhookAdmin edits it, `herald-redis` implements its contracts; none of
//! them depends on another.
//!
//! | module | what |
//! |---|---|
//! | `endpoint` | endpoints: URL, filters, format, secrets |
//! | `filter` | event types and channel patterns |
//! | `store` | the [`store::WebhookStore`] trait (endpoints, attempts, dead letters) + memory + conformance; [`store::upsert_declared`] for config-declared endpoints |
//! | `sign` | Standard Webhooks and Pusher signatures, secrets |
//! | `ssrf` | which addresses are refused (named ranges over `ipnet`), resolve-then-pin |
//! | `gcra`, `limiter` | the rate-limit algorithm and the [`limiter::RateLimiter`] contract |
//! | `delivery` | a delivery's id and its record in the dispatcher's topics |

pub mod delivery;
pub mod endpoint;
pub mod filter;
pub mod gcra;
pub mod limiter;
pub mod sign;
pub mod ssrf;
pub mod store;
