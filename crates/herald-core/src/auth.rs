//! The HMAC-SHA256 signatures of the Pusher protocol: channel authorization
//! (`key:hex(HMAC(secret, "socket_id:channel[:channel_data]"))`), user sign-in
//! (`"socket_id::user::user_data"`) and HTTP API request signing. Every comparison is
//! constant-time. [`authorize_subscription`] applies Pusher's subscription rules on top.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::App;

mod subscription;

pub use subscription::{PresenceMember, SubscriptionError, authorize_subscription, parse_presence_data};

/// HMAC-SHA256, the one MAC of every signature Herald makes or checks (Pusher's,
/// Standard Webhooks').
pub type HmacSha256 = Hmac<Sha256>;

/// One SHA-256 block: RFC 2104 hashes longer keys, and zero-pads every key to this.
const BLOCK_LEN: usize = 64;

/// Hex HMAC-SHA256 of `message` under `secret`: Pusher's signatures (channel auth,
/// the HTTP API, `X-Pusher-Signature` on webhooks).
pub fn sign(secret: &str, message: &str) -> String {
    sign_bytes(secret, message.as_bytes())
}

/// [`sign`] of bytes.
pub fn sign_bytes(secret: &str, message: &[u8]) -> String {
    let mut mac = hmac_sha256(secret.as_bytes());
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// HMAC-SHA256 keyed by any number of bytes, without a fallible constructor.
///
/// `Hmac::new_from_slice` returns a `Result` although HMAC accepts every key length, which
/// would leave a panic path on the signing path. RFC 2104 defines the key as hashed when
/// longer than a block and then zero-padded to one block; doing that here and handing the
/// block to the infallible `new` gives the same MAC (a test checks it against
/// `new_from_slice` for every length around the block size).
pub fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; BLOCK_LEN];
    if key.len() > BLOCK_LEN {
        let digest = Sha256::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacSha256 as hmac::digest::KeyInit>::new(&block.into())
}

/// The `auth` a client must present to subscribe to a private or presence channel.
pub fn channel_auth(app: &App, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{}:{}", app.key, sign(&app.secret, &message))
}

/// The `auth` a client must present with `pusher:signin`.
pub fn user_auth(app: &App, socket_id: &str, user_data: &str) -> String {
    format!("{}:{}", app.key, sign(&app.secret, &format!("{socket_id}::user::{user_data}")))
}

/// Checks a channel subscription's `auth` in constant time.
pub fn verify_channel_auth(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    constant_time_eq(&channel_auth(app, socket_id, channel, channel_data), auth)
}

/// Checks a `pusher:signin` `auth` in constant time.
pub fn verify_user_auth(app: &App, socket_id: &str, user_data: &str, auth: &str) -> bool {
    constant_time_eq(&user_auth(app, socket_id, user_data), auth)
}

pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why an HTTP API request's signature was refused; each maps to HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("auth_key does not belong to this app")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    UnsupportedVersion,
    #[error("auth_timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("auth_timestamp is {skew} s from the server's time; at most {tolerance} s is accepted")]
    Expired { skew: u64, tolerance: u64 },
    #[error("body_md5 does not match the body")]
    BodyMd5Mismatch,
    #[error("invalid signature: expected HMAC-SHA256 hex digest of {string_to_sign:?}")]
    BadSignature { string_to_sign: String },
}

/// Verifies a Pusher HTTP API request as Pusher does: `auth_key` is the app's key,
/// `auth_timestamp` within `tolerance_secs` of `now_secs`, `auth_version=1.0`,
/// `body_md5` the hex MD5 of a non-empty body, and `auth_signature` the hex
/// HMAC-SHA256 of `"METHOD\nPATH\nsorted_query"` where `sorted_query` is every other
/// parameter, keys lowercased and sorted, joined unescaped as `k=v&k=v`.
pub fn verify_api_request(
    app: &App,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), ApiAuthError> {
    let param = |name: &'static str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .ok_or(ApiAuthError::Missing(name))
    };
    let key = param("auth_key")?;
    let timestamp = param("auth_timestamp")?;
    let version = param("auth_version")?;
    let signature = param("auth_signature")?;
    if !constant_time_eq(key, &app.key) {
        return Err(ApiAuthError::WrongKey);
    }
    if version != "1.0" {
        return Err(ApiAuthError::UnsupportedVersion);
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| ApiAuthError::BadTimestamp)?;
    let skew = now_secs.abs_diff(timestamp);
    if skew > tolerance_secs {
        return Err(ApiAuthError::Expired { skew, tolerance: tolerance_secs });
    }
    if !body.is_empty() {
        let md5 = param("body_md5")?;
        if !constant_time_eq(&hex::encode(Md5::digest(body)), &md5.to_ascii_lowercase()) {
            return Err(ApiAuthError::BodyMd5Mismatch);
        }
    }
    let string_to_sign = string_to_sign(method, path, query);
    if constant_time_eq(&sign(&app.secret, &string_to_sign), signature) {
        Ok(())
    } else {
        Err(ApiAuthError::BadSignature { string_to_sign })
    }
}

/// `"METHOD\nPATH\nsorted_query"` with `auth_signature` left out.
pub fn string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    params.sort();
    let joined: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\n{path}\n{}", method.to_ascii_uppercase(), joined.join("&"))
}

/// Signs a request the way a Pusher server SDK does; for tests and tools.
pub fn sign_api_request(
    app: &App,
    method: &str,
    path: &str,
    mut query: Vec<(String, String)>,
    body: &[u8],
    timestamp: u64,
) -> Vec<(String, String)> {
    query.push(("auth_key".into(), app.key.clone()));
    query.push(("auth_timestamp".into(), timestamp.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        query.push(("body_md5".into(), hex::encode(Md5::digest(body))));
    }
    let signature = sign(&app.secret, &string_to_sign(method, path, &query));
    query.push(("auth_signature".into(), signature));
    query
}

#[cfg(test)]
mod tests {
    //! The worked examples from Pusher's "auth signatures" and "HTTP API reference"
    //! documentation: published vectors, so these catch a wrongly assembled string to
    //! sign, not just the code agreeing with itself.
    use super::*;

    #[test]
    fn block_padding_matches_the_hmac_crates_own_key_handling() {
        for len in (0..=140).chain([255, 1000]) {
            let key: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut ours = hmac_sha256(&key);
            let mut theirs = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            ours.update(b"message");
            theirs.update(b"message");
            assert_eq!(ours.finalize().into_bytes(), theirs.finalize().into_bytes(), "key length {len}");
        }
    }

    fn doc_app() -> App {
        App::pusher_docs_example()
    }

    #[test]
    fn private_channel_example() {
        let auth = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(channel_auth(&doc_app(), "1234.1234", "private-foobar", None), auth);
        assert!(verify_channel_auth(&doc_app(), "1234.1234", "private-foobar", None, auth));
        assert!(!verify_channel_auth(&doc_app(), "1234.1235", "private-foobar", None, auth));
    }

    #[test]
    fn presence_channel_example() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
        assert!(verify_channel_auth(&doc_app(), "1234.1234", "presence-foobar", Some(data), auth));
        assert!(!verify_channel_auth(&doc_app(), "1234.1234", "presence-foobar", None, auth));
    }

    #[test]
    fn user_authentication_example() {
        let auth = "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba";
        assert!(verify_user_auth(&doc_app(), "1234.1234", r#"{"id":"12345"}"#, auth));
    }

    fn doc_query() -> Vec<(String, String)> {
        [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_signature", "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const DOC_BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    #[test]
    fn http_api_example_verifies() {
        let ok =
            verify_api_request(&doc_app(), "POST", "/apps/3/events", &doc_query(), DOC_BODY, 1353088179, 600);
        assert_eq!(ok, Ok(()));
        let signed = sign_api_request(&doc_app(), "POST", "/apps/3/events", vec![], DOC_BODY, 1353088179);
        assert_eq!(signed, doc_query());
    }

    #[test]
    fn http_api_refusals() {
        let app = doc_app();
        let verify = |q: &[(String, String)], body: &[u8], now| {
            verify_api_request(&app, "POST", "/apps/3/events", q, body, now, 600)
        };
        assert!(matches!(
            verify(&doc_query(), DOC_BODY, 1353088179 + 601),
            Err(ApiAuthError::Expired { skew: 601, .. })
        ));
        assert_eq!(verify(&doc_query(), b"{}", 1353088179), Err(ApiAuthError::BodyMd5Mismatch));
        let mut tampered = doc_query();
        tampered.push(("socket_id".into(), "1.1".into()));
        assert!(matches!(verify(&tampered, DOC_BODY, 1353088179), Err(ApiAuthError::BadSignature { .. })));
        let missing: Vec<_> = doc_query().into_iter().filter(|(k, _)| k != "auth_key").collect();
        assert_eq!(verify(&missing, DOC_BODY, 1353088179), Err(ApiAuthError::Missing("auth_key")));
    }

    mod properties {
        use proptest::{
            collection::vec,
            prelude::*,
            sample::{Index, select},
        };

        use super::*;

        const TOLERANCE: u64 = 600;
        const RESERVED: [&str; 5] =
            ["auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5"];

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        fn app() -> impl Strategy<Value = App> {
            ("[a-z0-9]{1,20}", "[a-zA-Z0-9]{1,40}").prop_map(|(key, secret)| App { key, secret, ..doc_app() })
        }

        /// A request as an SDK signs it: distinct lowercase keys (the signature covers
        /// keys lowercased, so their case is not signed), values without `&` and `=`.
        #[derive(Debug, Clone)]
        struct Request {
            app: App,
            method: String,
            path: String,
            params: Vec<(String, String)>,
            body: Vec<u8>,
            now: u64,
            timestamp: u64,
        }

        impl Request {
            fn signed(&self) -> Vec<(String, String)> {
                sign_api_request(
                    &self.app,
                    &self.method,
                    &self.path,
                    self.params.clone(),
                    &self.body,
                    self.timestamp,
                )
            }

            fn verify(&self, query: &[(String, String)]) -> Result<(), ApiAuthError> {
                verify_api_request(
                    &self.app,
                    &self.method,
                    &self.path,
                    query,
                    &self.body,
                    self.now,
                    TOLERANCE,
                )
            }
        }

        fn request() -> impl Strategy<Value = Request> {
            let params = proptest::collection::btree_map("[a-z][a-z0-9_]{0,9}", "[^&=]{0,12}", 0..6)
                .prop_map(|map| map.into_iter().filter(|(k, _)| !RESERVED.contains(&k.as_str())).collect());
            let method = prop_oneof![
                select(vec!["GET", "POST", "PUT", "DELETE"]).prop_map(String::from),
                "[A-Z]{1,8}",
            ];
            let body = prop_oneof![Just(Vec::new()), vec(any::<u8>(), 1..200)];
            (
                app(),
                method,
                "/apps/[a-z0-9]{1,6}(/[a-z_]{1,10}){0,3}",
                params,
                body,
                0u64..1 << 40,
                -600i64..=600,
            )
                .prop_map(|(app, method, path, params, body, now, skew)| Request {
                    app,
                    method,
                    path,
                    params,
                    body,
                    now,
                    timestamp: now.saturating_add_signed(skew),
                })
        }

        /// `text` with the character at `at` replaced by a different one from `alphabet`.
        fn change_char(text: &str, at: Index, alphabet: &[char], pick: Index) -> String {
            let mut chars: Vec<char> = text.chars().collect();
            if chars.is_empty() {
                return alphabet[pick.index(alphabet.len())].to_string();
            }
            let at = at.index(chars.len());
            let others: Vec<char> = alphabet.iter().copied().filter(|c| *c != chars[at]).collect();
            chars[at] = others[pick.index(others.len())];
            chars.into_iter().collect()
        }

        fn value<'q>(query: &'q mut [(String, String)], key: &str) -> &'q mut String {
            let at = query.iter().position(|(k, _)| k == key).unwrap();
            &mut query[at].1
        }

        /// Which signed part of a request to change.
        #[derive(Debug, Clone, Copy)]
        enum Tamper {
            Method,
            Path,
            ParamValue,
            Timestamp,
            Body,
            Signature,
        }

        fn tamper() -> impl Strategy<Value = Tamper> {
            select(vec![
                Tamper::Method,
                Tamper::Path,
                Tamper::ParamValue,
                Tamper::Timestamp,
                Tamper::Body,
                Tamper::Signature,
            ])
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn a_correctly_signed_request_verifies(request in request()) {
                prop_assert_eq!(request.verify(&request.signed()), Ok(()));
            }

            #[test]
            fn changing_any_signed_part_fails(
                request in request(),
                what in tamper(),
                at in any::<Index>(),
                pick in any::<Index>(),
            ) {
                let mut query = request.signed();
                let mut changed = request.clone();
                let letters: Vec<char> = ('A'..='Z').collect();
                let hex: Vec<char> = "0123456789abcdef".chars().collect();
                match what {
                    // The method is signed uppercased: change it to another letter.
                    Tamper::Method => changed.method = change_char(&request.method, at, &letters, pick),
                    Tamper::Path => changed.path = change_char(&request.path, at, &hex, pick),
                    Tamper::ParamValue if request.params.is_empty() => {
                        query.insert(0, ("extra".into(), "1".into()));
                    }
                    Tamper::ParamValue => {
                        let i = at.index(request.params.len());
                        query[i].1 = change_char(&query[i].1, pick, &hex, pick);
                    }
                    Tamper::Timestamp => {
                        // Still within the window: only the signature can catch it.
                        let ts = request.timestamp;
                        let moved = if ts <= request.now { ts + 1 } else { ts - 1 };
                        *value(&mut query, "auth_timestamp") = moved.to_string();
                    }
                    Tamper::Body if request.body.is_empty() => changed.body = vec![pick.index(256) as u8],
                    Tamper::Body => {
                        let i = at.index(request.body.len());
                        changed.body[i] ^= 1 + pick.index(255) as u8;
                    }
                    Tamper::Signature => {
                        let signature = value(&mut query, "auth_signature");
                        *signature = change_char(signature, at, &hex, pick);
                    }
                }
                prop_assert!(changed.verify(&query).is_err(), "{:?} still verifies", what);
            }

            #[test]
            fn a_timestamp_outside_the_window_fails(
                request in request(),
                skew in (TOLERANCE + 1)..100_000,
                later in any::<bool>(),
            ) {
                let mut request = request;
                // When `now` is too small to go back that far, go forward.
                request.timestamp =
                    if later || request.now < skew { request.now + skew } else { request.now - skew };
                let result = request.verify(&request.signed());
                prop_assert_eq!(result, Err(ApiAuthError::Expired { skew, tolerance: TOLERANCE }));
            }

            #[test]
            fn arbitrary_queries_never_panic(
                app in app(),
                method in ".{0,8}",
                path in ".{0,30}",
                mut query in vec(
                    (
                        prop_oneof![select(RESERVED.to_vec()).prop_map(String::from), ".{0,10}"],
                        ".{0,40}",
                    ),
                    0..8,
                ),
                also_signed in any::<bool>(),
                body in vec(any::<u8>(), 0..64),
                now in any::<u64>(),
                tolerance in any::<u64>(),
            ) {
                if also_signed {
                    // Garbage around a valid signature gets further into the checks.
                    query.extend(sign_api_request(&app, &method, &path, vec![], &body, now));
                }
                let _ = verify_api_request(&app, &method, &path, &query, &body, now, tolerance);
            }
        }
    }
}
