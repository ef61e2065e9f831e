//! The context every librdkafka client of this crate runs with: librdkafka's log
//! lines and errors go to `tracing` (target `librdkafka`) with the values of secret
//! properties blanked out, and the latest error is kept, so that failing to reach
//! the cluster can say why (a TLS handshake refused, a SASL authentication failed)
//! rather than only that it timed out.

use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::{
    ClientContext,
    config::RDKafkaLogLevel,
    consumer::ConsumerContext,
    error::{KafkaError, RDKafkaErrorCode},
};

use crate::config::REDACTED;

#[derive(Clone)]
pub(crate) struct Context {
    inner: Arc<Shared>,
}

struct Shared {
    /// Values of the secret properties, longest first (so that a secret containing
    /// another is blanked whole).
    secrets: Vec<String>,
    last_error: Mutex<Option<String>>,
}

impl Context {
    pub(crate) fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { inner: Arc::new(Shared { secrets, last_error: Mutex::new(None) }) }
    }

    /// `text` with every secret value replaced by `<redacted>`. librdkafka redacts
    /// the secret properties in its own configuration dumps; this covers whatever
    /// else might quote one.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.inner.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// The latest error a client reported (a broker refusing the TLS handshake or
    /// the credentials, say), if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().clone()
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.redact(log_message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.redact(reason);
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        // "1/1 brokers are down" follows every failed connection: it is what
        // happened, not why. The error before it (a handshake refused) says why.
        let consequence = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        let mut last = self.inner.last_error.lock();
        if !consequence || last.is_none() {
            *last = Some(reason);
        }
    }
}

impl ConsumerContext for Context {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_longest_first() {
        let context = Context::new(vec!["pass".into(), "password-1".into(), String::new()]);
        assert_eq!(
            context.redact("sent password-1 and pass, not p"),
            "sent <redacted> and <redacted>, not p"
        );
    }
}
