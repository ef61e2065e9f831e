//! Webhook signatures: Standard Webhooks (`webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`, keyed by a `whsec_` secret) and Pusher's `X-Pusher-Signature`
//! (hex HMAC-SHA256 of the body, keyed by the app secret).
//!
//! Signing is pure and allocation-light so the dispatcher can sign every attempt afresh: a
//! retry keeps its `webhook-id` but gets a new timestamp, hence a new signature.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use herald_core::auth::{HmacSha256, hmac_sha256};
use hmac::Mac;

/// Marks a Standard Webhooks symmetric secret, so a secret pasted into the wrong field is
/// recognisable and so receivers' libraries know which scheme it is for.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key sizes the Standard Webhooks specification allows for HMAC-SHA256 secrets.
pub const MIN_KEY_LEN: usize = 24;
pub const MAX_KEY_LEN: usize = 64;

/// What [`generate_secret`] draws: 256 bits, the HMAC-SHA256 output size, so the key is
/// never the weaker half of the construction.
const GENERATED_KEY_LEN: usize = 32;

/// Signature version for symmetric (HMAC-SHA256) signatures in the Standard Webhooks header.
const VERSION: &str = "v1";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// `getrandom::Error` only implements `std::error::Error` with its `std` feature, so it
    /// is shown in the message instead of being chained as a source.
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error(
        "webhook secret must be a Standard Webhooks secret: \"whsec_\" followed by the base64 \
         of {MIN_KEY_LEN} to {MAX_KEY_LEN} random bytes"
    )]
    MissingPrefix,
    #[error("webhook secret after \"whsec_\" is not valid standard base64")]
    Base64(#[source] base64::DecodeError),
    #[error(
        "webhook secret decodes to {0} bytes; a Standard Webhooks key is {MIN_KEY_LEN} to \
         {MAX_KEY_LEN} bytes"
    )]
    KeyLength(usize),
}

/// A fresh endpoint secret: `whsec_` + standard base64 of 32 bytes from the operating
/// system's CSPRNG (`fastrand` is predictable and must never make keys).
pub fn generate_secret() -> Result<String, SignError> {
    let mut key = [0u8; GENERATED_KEY_LEN];
    getrandom::fill(&mut key).map_err(SignError::Random)?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The HMAC key of a Standard Webhooks endpoint secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Accepts only `whsec_<base64>` with a 24–64 byte key. Bare base64 or raw strings are
    /// refused rather than guessed at: a receiver using a Standard Webhooks library decodes
    /// the secret the same way, so anything else would sign with a key they never have.
    pub fn from_secret(secret: &str) -> Result<Self, SignError> {
        let encoded = secret.trim().strip_prefix(SECRET_PREFIX).ok_or(SignError::MissingPrefix)?;
        let key = STANDARD.decode(encoded).map_err(SignError::Base64)?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(SignError::KeyLength(key.len()));
        }
        Ok(Self(key))
    }
}

impl fmt::Debug for SigningKey {
    /// Only the length: keys end up in `Debug` output of configs and errors, and logs are
    /// read by more people than the secret's owner.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<{} bytes redacted>)", self.0.len())
    }
}

/// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, one entry of the
/// `webhook-signature` header.
pub fn standard_signature(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = standard_mac(key, id, timestamp, body).finalize().into_bytes();
    format!("{VERSION},{}", STANDARD.encode(tag))
}

/// The whole `webhook-signature` value: one signature per key, space-separated. During a
/// rotation the endpoint has the old and the new key and the receiver accepts either, so
/// neither side has to switch at the same instant.
pub fn standard_signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(keys.len() * 48);
    for key in keys {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&standard_signature(key, id, timestamp, body));
    }
    header
}

/// Whether any `v1,` entry of a `webhook-signature` header is `key`'s signature of this
/// message. The comparison is constant-time (the `hmac` crate's `verify_slice`), so a
/// receiver built on this can't be used as an oracle that leaks the expected tag byte by
/// byte. Timestamp freshness is the caller's business.
pub fn verify_standard(key: &SigningKey, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mac = standard_mac(key, id, timestamp, body);
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, signature)| STANDARD.decode(signature).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

/// Pusher's `X-Pusher-Signature`: lowercase hex HMAC-SHA256 of the body, keyed by the app
/// secret's bytes.
pub fn pusher_signature(secret: &str, body: &[u8]) -> String {
    herald_core::auth::sign_bytes(secret, body)
}

fn standard_mac(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = hmac_sha256(&key.0);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> SigningKey {
        SigningKey::from_secret(secret).unwrap()
    }

    /// From the Standard Webhooks reference libraries' tests (e.g. `TestWebhookSign` in
    /// `libraries/go/webhook_test.go` of github.com/standard-webhooks/standard-webhooks).
    /// A round trip through our own verifier would pass with the wrong delimiter, alphabet
    /// or key decoding; reproducing the reference output is what proves a receiver's
    /// library accepts what we send.
    #[test]
    fn reproduces_the_standard_webhooks_reference_vector() {
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signature =
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// The reference Rust library's `test_sign` vector (`libraries/rust/src/lib.rs`).
    #[test]
    fn reproduces_the_reference_rust_library_vector() {
        let key = key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let signature = standard_signature(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn the_reference_vector_verifies_and_tampering_does_not() {
        let k = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let header = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify_standard(&k, id, ts, body, header));
        assert!(!verify_standard(&k, id, ts, br#"{"test": 2432232315}"#, header), "tampered body");
        assert!(!verify_standard(&k, "msg_other", ts, body, header), "other id");
        assert!(!verify_standard(&k, id, ts + 1, body, header), "other timestamp");
        let other = key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        assert!(!verify_standard(&other, id, ts, body, header), "other key");
    }

    #[test]
    fn verify_rejects_malformed_and_foreign_entries() {
        let k = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let good = "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        for header in [
            "",
            " ",
            good,                                              // no version
            &format!("v1a,{good}"),                            // asymmetric scheme, not ours
            &format!("v2,{good}"),                             // unknown version
            "v1,",                                             // empty
            "v1,not base64!",                                  // undecodable
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",  // truncated
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", // last byte differs
        ] {
            assert!(!verify_standard(&k, id, ts, body, header), "{header:?}");
        }
        // Any one matching entry among others is enough, wherever it is.
        assert!(verify_standard(&k, id, ts, body, &format!("v1,bm9wZQ== v1a,xyz v1,{good}")));
        assert!(verify_standard(&k, id, ts, body, &format!("v1,{good} v1,bm9wZQ==")));
    }

    #[test]
    fn rotation_header_carries_a_signature_per_key_and_each_verifies() {
        let old = key(&generate_secret().unwrap());
        let new = key(&generate_secret().unwrap());
        let body = br#"{"type":"channel.occupied"}"#;
        let header = standard_signature_header(&[old.clone(), new.clone()], "msg_1", 1_700_000_000, body);

        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2, "{header}");
        assert_eq!(entries[0], standard_signature(&old, "msg_1", 1_700_000_000, body));
        assert_eq!(entries[1], standard_signature(&new, "msg_1", 1_700_000_000, body));
        assert!(verify_standard(&old, "msg_1", 1_700_000_000, body, &header));
        assert!(verify_standard(&new, "msg_1", 1_700_000_000, body, &header));

        let stranger = key(&generate_secret().unwrap());
        assert!(!verify_standard(&stranger, "msg_1", 1_700_000_000, body, &header));
    }

    #[test]
    fn header_for_one_key_is_its_signature_and_for_none_is_empty() {
        let k = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            standard_signature_header(std::slice::from_ref(&k), "msg_1", 1, b"{}"),
            standard_signature(&k, "msg_1", 1, b"{}")
        );
        assert_eq!(standard_signature_header(&[], "msg_1", 1, b"{}"), "");
    }

    #[test]
    fn negative_timestamps_sign_their_decimal_form() {
        // The signed content is the decimal text of the timestamp, sign included.
        let k = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let header = standard_signature(&k, "msg_1", -5, b"{}");
        assert!(verify_standard(&k, "msg_1", -5, b"{}", &header));
        assert!(!verify_standard(&k, "msg_1", 5, b"{}", &header));
    }

    #[test]
    fn generated_secrets_are_whsec_32_byte_keys_and_differ() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a, b);
        for secret in [&a, &b] {
            let encoded = secret.strip_prefix("whsec_").unwrap();
            assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
            assert_eq!(SigningKey::from_secret(secret).unwrap().0.len(), 32);
        }
    }

    #[test]
    fn from_secret_accepts_24_to_64_byte_keys() {
        for len in [MIN_KEY_LEN, 32, MAX_KEY_LEN] {
            let secret = format!("whsec_{}", STANDARD.encode(vec![7u8; len]));
            assert_eq!(SigningKey::from_secret(&secret).unwrap().0, vec![7u8; len]);
        }
        // Surrounding whitespace from a config file or env var is not part of the secret.
        assert!(SigningKey::from_secret(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").is_ok());
    }

    #[test]
    fn from_secret_refuses_everything_else_with_a_clear_message() {
        let err = SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert!(matches!(err, SignError::MissingPrefix));
        assert!(err.to_string().contains("whsec_"), "{err}");

        for raw in ["", "my-app-secret", "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whpk_abc"] {
            assert!(matches!(SigningKey::from_secret(raw), Err(SignError::MissingPrefix)), "{raw:?}");
        }

        let err = SigningKey::from_secret("whsec_not*base64").unwrap_err();
        assert!(matches!(err, SignError::Base64(_)), "{err:?}");
        assert!(err.to_string().contains("base64"), "{err}");
        // URL-safe alphabet is a different encoding: refused, not silently decoded.
        assert!(SigningKey::from_secret("whsec_____________________________________").is_err());

        let short = format!("whsec_{}", STANDARD.encode([1u8; MIN_KEY_LEN - 1]));
        let err = SigningKey::from_secret(&short).unwrap_err();
        assert!(matches!(err, SignError::KeyLength(23)), "{err:?}");
        assert!(err.to_string().contains("23 bytes") && err.to_string().contains("24 to 64"), "{err}");

        let long = format!("whsec_{}", STANDARD.encode([1u8; MAX_KEY_LEN + 1]));
        assert!(matches!(SigningKey::from_secret(&long), Err(SignError::KeyLength(65))));
        assert!(matches!(SigningKey::from_secret("whsec_"), Err(SignError::KeyLength(0))));
    }

    #[test]
    fn debug_does_not_reveal_the_key() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let k = key(secret);
        let shown = format!("{k:?} {:?}", vec![k.clone()]);
        assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{shown}");
        for byte in &k.0 {
            // Neither as a list of numbers nor as hex.
            assert!(!shown.contains(&format!("{byte}, ")), "{shown}");
        }
        assert!(!shown.contains(&hex::encode(&k.0)), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    /// RFC 4231 test cases 2 (short key) and 6 (key longer than a block), and Pusher's use
    /// of the app secret as raw bytes.
    #[test]
    fn pusher_signature_is_lowercase_hex_hmac_sha256() {
        assert_eq!(
            pusher_signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The key of case 6 (131 × 0xaa) is not UTF-8, so it goes through the byte-level
        // helper that `pusher_signature` uses.
        let mut mac = hmac_sha256(&[0xaa; 131]);
        mac.update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let sig = pusher_signature("7ad3773142a6692b25b8", br#"{"time_ms":1327078148132,"events":[]}"#);
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{sig}");
    }

    /// The Standard Webhooks reference implementation (the `standardwebhooks` crate) as
    /// an oracle, both ways, over fresh secrets: what we sign it verifies (one key, and
    /// a rotation header with two), what it signs we verify, and a changed body fails
    /// for both.
    #[test]
    fn the_reference_implementation_agrees_both_ways() {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        for n in 0..20 {
            let (secret, old_secret) = (generate_secret().unwrap(), generate_secret().unwrap());
            let (ours, oracle) = (key(&secret), standardwebhooks::Webhook::new(&secret).unwrap());
            let id = format!("msg_{n:04}");
            let body = format!(r#"{{"type":"member.added","n":{n},"text":"é ✓ {}"}}"#, "x".repeat(n * 7));
            let body = body.as_bytes();
            let headers = |signature: &str| {
                let mut headers = http::HeaderMap::new();
                headers.insert("webhook-id", id.parse().unwrap());
                headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
                headers.insert("webhook-signature", signature.parse().unwrap());
                headers
            };

            let signed = standard_signature(&ours, &id, now, body);
            oracle.verify(body, &headers(&signed)).unwrap();
            let rotating = standard_signature_header(&[key(&old_secret), ours.clone()], &id, now, body);
            oracle.verify(body, &headers(&rotating)).unwrap();
            assert!(oracle.verify(b"{}", &headers(&signed)).is_err());

            let theirs = oracle.sign(&id, now, body).unwrap();
            assert_eq!(theirs, signed);
            assert!(verify_standard(&ours, &id, now, body, &theirs));
            assert!(!verify_standard(&ours, &id, now, b"{}", &theirs));
            assert!(!verify_standard(&key(&old_secret), &id, now, body, &theirs));
        }
    }
}
