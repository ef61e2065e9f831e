//! W3C trace context (<https://www.w3.org/TR/trace-context/>) as a publication carries
//! it from the API that accepted it, through the backbone and the event log, to the
//! fan-out on every edge and to each webhook attempt. Only the two header values,
//! checked for shape: what they mean to a tracer is `herald-telemetry`'s business.

use std::sync::Arc;

/// Longest `tracestate` kept (the spec allows 32 members of at most 256 characters;
/// vendors keep it short). A longer one is dropped, the `traceparent` kept.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A `traceparent` (and its `tracestate`), well formed. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Arc<str>,
    tracestate: Option<Arc<str>>,
}

impl TraceContext {
    /// The context of headers as a caller sent them: `None` when `traceparent` is
    /// missing or malformed (the spec's answer: start a new trace). A version other
    /// than `00` is read as `00`, as the spec asks, when its first four fields are.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim();
        let fields = parse(traceparent)?;
        let traceparent = if fields.version == "00" && traceparent.len() == 55 {
            Arc::from(traceparent)
        } else {
            Arc::from(format!("00-{}-{}-{}", fields.trace_id, fields.parent_id, fields.flags))
        };
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.is_ascii())
            .map(Arc::from);
        Some(Self { traceparent, tracestate })
    }

    /// `00-{trace id}-{parent id}-{flags}`.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16 hex digits of the span this context names as the parent.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// Whether the caller records this trace (flag `01`).
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|flags| flags & 1 == 1)
    }
}

struct Fields<'a> {
    version: &'a str,
    trace_id: &'a str,
    parent_id: &'a str,
    flags: &'a str,
}

fn parse(value: &str) -> Option<Fields<'_>> {
    let mut parts = value.split('-');
    let fields = Fields {
        version: parts.next()?,
        trace_id: parts.next()?,
        parent_id: parts.next()?,
        flags: parts.next()?,
    };
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = lower_hex(fields.version, 2)
        && fields.version != "ff"
        && lower_hex(fields.trace_id, 32)
        && lower_hex(fields.parent_id, 16)
        && lower_hex(fields.flags, 2)
        && fields.trace_id.bytes().any(|b| b != b'0')
        && fields.parent_id.bytes().any(|b| b != b'0');
    // Version 00 has exactly four fields; a later version may append more.
    let rest_ok = match parts.next() {
        None => true,
        Some(_) => fields.version != "00",
    };
    (valid && rest_ok).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_parts() {
        let context = TraceContext::from_headers(Some(VALID), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.traceparent(), VALID);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_id(), "00f067aa0ba902b7");
        assert!(context.sampled());
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE"));
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceContext::from_headers(Some(&unsampled), None).unwrap().sampled());
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let context = TraceContext::from_headers(Some(future), None).unwrap();
        assert_eq!(context.traceparent(), VALID);
    }

    #[test]
    fn an_oversized_or_non_ascii_tracestate_is_dropped() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_LEN);
        assert_eq!(TraceContext::from_headers(Some(VALID), Some(&long)).unwrap().tracestate(), None);
        assert_eq!(TraceContext::from_headers(Some(VALID), Some("a=é")).unwrap().tracestate(), None);
    }
}
