//! Classifying one answer of the platform to a probe. Pure.
//!
//! The outcome feeds the `TokenValid` condition of the status. The platform's documents disagree
//! (the book's "What the platform documents" lists what they say), so only an answer that clearly
//! says so makes a credential False; whatever cannot be placed is Unknown. A message is a fixed
//! sentence per case plus the HTTP status, the host and the probe: never a byte of the body, a
//! header value or the credential, so that whatever a platform or proxy sends back cannot reach a
//! status or a log.

use crate::probe::NamedProbe;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, RETRY_AFTER};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much of a body classification looks at. Callers need not read more.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest wait a rate limit can impose: a platform or proxy asking for more is not
/// obeyed beyond it, so that one odd header cannot stop verification for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// `X-RateLimit-Reset` values from here on are epoch seconds (September 2001), smaller ones
/// seconds to wait: no API asks to wait 31 years.
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;

/// The status of the `TokenValid` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenValid {
    True,
    False,
    Unknown,
}

impl TokenValid {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenValid::True => "True",
            TokenValid::False => "False",
            TokenValid::Unknown => "Unknown",
        }
    }
}

/// The reason of the `TokenValid` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Verified,
    TokenRejected,
    UserDeactivated,
    Pending,
    Forbidden,
    RateLimited,
    PlatformUnavailable,
    EndpointNotAllowed,
    VerificationDisabled,
}

impl Reason {
    /// The outcomes of a verification attempt (`Pending` and `VerificationDisabled` are states,
    /// not outcomes).
    pub const OUTCOMES: [Reason; 7] = [
        Reason::Verified,
        Reason::TokenRejected,
        Reason::UserDeactivated,
        Reason::Forbidden,
        Reason::RateLimited,
        Reason::PlatformUnavailable,
        Reason::EndpointNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Verified => "Verified",
            Reason::TokenRejected => "TokenRejected",
            Reason::UserDeactivated => "UserDeactivated",
            Reason::Pending => "Pending",
            Reason::Forbidden => "Forbidden",
            Reason::RateLimited => "RateLimited",
            Reason::PlatformUnavailable => "PlatformUnavailable",
            Reason::EndpointNotAllowed => "EndpointNotAllowed",
            Reason::VerificationDisabled => "VerificationDisabled",
        }
    }

    pub fn status(self) -> TokenValid {
        match self {
            Reason::Verified => TokenValid::True,
            Reason::TokenRejected | Reason::UserDeactivated => TokenValid::False,
            Reason::Pending
            | Reason::Forbidden
            | Reason::RateLimited
            | Reason::PlatformUnavailable
            | Reason::EndpointNotAllowed
            | Reason::VerificationDisabled => TokenValid::Unknown,
        }
    }
}

/// What one check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    /// Safe for a condition, an Event or a log line.
    pub message: String,
    /// How long the platform asked to wait (`Retry-After`, `X-RateLimit-Reset`), at most
    /// [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

impl Outcome {
    fn new(reason: Reason, message: String) -> Self {
        Outcome {
            reason,
            message,
            retry_after: None,
        }
    }

    /// An outcome of `reason` with the message "`<reason>` message", for tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn of(reason: Reason) -> Self {
        Outcome::new(reason, format!("{} message", reason.as_str()))
    }

    pub fn pending() -> Self {
        Outcome::new(Reason::Pending, "not verified yet".to_owned())
    }

    pub fn verification_disabled() -> Self {
        Outcome::new(
            Reason::VerificationDisabled,
            "verification is disabled (spec.verification.enabled: false)".to_owned(),
        )
    }

    pub fn endpoint_not_allowed(host: &str) -> Self {
        Outcome::new(
            Reason::EndpointNotAllowed,
            format!(
                "the probe's origin (scheme, host {host} and port) is not in the operator's \
                 allow-list: no request was sent; the operator's administrator can add it \
                 (--allowed-host)"
            ),
        )
    }
}

/// One answer of the platform. `body` may be cut short by the caller; only its first
/// [`MAX_BODY`] bytes are looked at.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why a request got no answer at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    Timeout,
    Connect,
    Tls,
    Other,
}

/// The outcome of a request that got no HTTP answer: always `PlatformUnavailable`.
pub fn transport_failure(host: &str, what: TransportFailure) -> Outcome {
    let message = match what {
        TransportFailure::Timeout => {
            format!("no answer from {host} in time: the check is retried later")
        }
        TransportFailure::Connect => {
            format!("could not connect to {host}: the check is retried later")
        }
        TransportFailure::Tls => format!(
            "the TLS handshake with {host} failed: check that the operator trusts the \
             platform's certificate (--extra-ca-file)"
        ),
        TransportFailure::Other => {
            format!("the request to {host} failed: the check is retried later")
        }
    };
    Outcome::new(Reason::PlatformUnavailable, message)
}

/// Classifies the answer of `host` to a probe: a named probe (`Some`), whose documented
/// answers are recognised, or a URL given by the user (`None`), classified by status code only.
/// `now` turns rate-limit times into waits.
pub fn classify(
    probe: Option<NamedProbe>,
    host: &str,
    answer: &Answer<'_>,
    now: SystemTime,
) -> Outcome {
    let code = answer.status;
    let facts = format!("HTTP {code} from {host}");
    let rejected = || {
        Outcome::new(
            Reason::TokenRejected,
            format!(
                "the platform rejected the credential ({facts}): it was deleted, revoked or \
                 never existed; make a new token under User Settings → Developer Settings in \
                 the Mendix Portal and put it into the source Secret"
            ),
        )
    };
    let deactivated = || {
        Outcome::new(
            Reason::UserDeactivated,
            format!(
                "the platform says the credential's user is not active ({facts}): reactivate \
                 the user, or make a new token of an active user under User Settings → \
                 Developer Settings in the Mendix Portal and put it into the source Secret"
            ),
        )
    };
    let forbidden = || {
        Outcome::new(
            Reason::Forbidden,
            format!(
                "the platform refused the request without naming the cause ({facts}): {}",
                scope_hint(probe)
            ),
        )
    };
    let unexpected = || {
        Outcome::new(
            Reason::PlatformUnavailable,
            format!(
                "unexpected answer ({facts}): not an answer the probe is known to give; check \
                 the probe URL and any proxy in between"
            ),
        )
    };
    match (code, probe) {
        (200..=299, _) => Outcome::new(
            Reason::Verified,
            format!("the platform accepted the credential ({facts})"),
        ),
        (429, _) => Outcome {
            reason: Reason::RateLimited,
            message: format!("the platform is limiting requests ({facts}): the check waits"),
            retry_after: retry_after(answer.headers, now),
        },
        (500..=599, _) => Outcome {
            reason: Reason::PlatformUnavailable,
            message: format!("the platform could not answer ({facts}): the check is retried later"),
            retry_after: retry_after(answer.headers, now),
        },
        (401, None) => rejected(),
        (403, None) => forbidden(),
        (401, Some(_)) if is_html(answer) => Outcome::new(
            Reason::PlatformUnavailable,
            format!(
                "a web page answered instead of the platform ({facts}): a proxy or gateway may \
                 be in the way; the check is retried later"
            ),
        ),
        (401, Some(_)) => {
            if says_user_inactive(&texts(answer.body)) {
                deactivated()
            } else {
                rejected()
            }
        }
        (403, Some(NamedProbe::DeployApps)) if !is_html(answer) => {
            let texts = texts(answer.body);
            if says_user_inactive(&texts) {
                deactivated()
            } else if says_not_accepted(&texts) {
                rejected()
            } else {
                forbidden()
            }
        }
        (403, Some(_)) => forbidden(),
        _ => unexpected(),
    }
}

/// What a 403 without a cause may mean, with the scope the platform documents for the probe.
fn scope_hint(probe: Option<NamedProbe>) -> &'static str {
    match probe {
        Some(NamedProbe::DeployApps) => {
            "the token may lack the scope mx:deployment:read that probe DeployApps needs"
        }
        Some(NamedProbe::Projects) => {
            "the token may lack the scope mx:app:metadata:read that probe Projects needs"
        }
        Some(NamedProbe::MarketplaceContent) => {
            "the token may lack the scope mx:marketplace-content:read that probe \
             MarketplaceContent needs"
        }
        Some(NamedProbe::DeployV1Apps) => {
            "the API key's user may lack the API rights that probe DeployV1Apps needs"
        }
        Some(NamedProbe::PrivatePlatformProjects) | None => {
            "the credential may lack the rights the probe needs"
        }
    }
}

fn is_html(answer: &Answer<'_>) -> bool {
    let declared = answer
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
    // JSON and the plain-text messages of the platform never start with '<'.
    let looks = answer.body.trim_ascii_start().starts_with(b"<");
    declared || looks
}

/// The human-readable texts of a body, lowercased, for matching only: the string values under
/// the message fields of every documented JSON shape (and of shapes like them), or a body that
/// is not JSON as a whole, as the plain-text answers of User Identifiers are.
fn texts(body: &[u8]) -> Vec<String> {
    let body = &body[..body.len().min(MAX_BODY)];
    let mut out = Vec::new();
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => collect_messages(&value, true, &mut out),
        Err(_) => out.push(String::from_utf8_lossy(body).to_lowercase()),
    }
    out
}

/// Walks a JSON value; depth is bounded by serde_json's recursion limit.
fn collect_messages(value: &Value, under_message_key: bool, out: &mut Vec<String>) {
    match value {
        Value::String(s) if under_message_key => out.push(s.to_lowercase()),
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_messages(v, under_message_key, out)),
        Value::Object(fields) => fields
            .iter()
            .for_each(|(k, v)| collect_messages(v, is_message_key(k), out)),
        _ => {}
    }
}

/// `error` (a string in `{"error": ""}`, an object in shapeA), `message`, `detail`, `reason`
/// (shapeA's `invalid-params`), `title` (Private Platform), `errorMessage` (Deploy v1) and a
/// few common relatives.
fn is_message_key(key: &str) -> bool {
    const KEYS: [&str; 9] = [
        "error",
        "errors",
        "message",
        "detail",
        "reason",
        "title",
        "errormessage",
        "error_description",
        "description",
    ];
    KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// "Account not found or inactive" (Deploy v4), "The User[...] for which the token was issued
/// is not active" (User Identifiers).
fn says_user_inactive(texts: &[String]) -> bool {
    texts.iter().any(|t| {
        (t.contains("user") || t.contains("account"))
            && (t.contains("inactive") || t.contains("not active") || t.contains("deactivated"))
    })
}

/// "The token is not accepted" (Deploy v4).
fn says_not_accepted(texts: &[String]) -> bool {
    texts.iter().any(|t| t.contains("not accepted"))
}

/// The wait a rate limit asks for: `Retry-After` (seconds or an HTTP date), else
/// `X-RateLimit-Reset` (epoch seconds or seconds to wait).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let until = |at: SystemTime| at.duration_since(now).unwrap_or_default();
    let from_retry_after = || {
        let value = header(&RETRY_AFTER)?;
        match value.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => httpdate::parse_http_date(value).ok().map(until),
        }
    };
    let from_reset = || {
        let value = header(&HeaderName::from_static("x-ratelimit-reset"))?;
        let seconds = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)?;
        let seconds = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        if seconds.as_secs() >= EPOCH_SECONDS_FROM {
            Some(
                UNIX_EPOCH
                    .checked_add(seconds)
                    .map_or(MAX_RETRY_AFTER, until),
            )
        } else {
            Some(seconds)
        }
    };
    from_retry_after()
        .or_else(from_reset)
        .map(|wait| wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use NamedProbe::*;
    use Reason::*;
    use http::header::HeaderValue;

    const HOST: &str = "cloud.home.mendix.com";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn check(probe: Option<NamedProbe>, status: u16, hs: &HeaderMap, body: &[u8]) -> Outcome {
        let outcome = classify(
            probe,
            HOST,
            &Answer {
                status,
                headers: hs,
                body,
            },
            now(),
        );
        assert!(
            outcome
                .message
                .contains(&format!("HTTP {status} from {HOST}")),
            "{}",
            outcome.message
        );
        assert_no_body_text(&outcome.message, body);
        outcome
    }

    fn reason(probe: Option<NamedProbe>, status: u16, body: &str) -> Reason {
        check(probe, status, &HeaderMap::new(), body.as_bytes()).reason
    }

    fn html_reason(probe: Option<NamedProbe>, status: u16) -> Reason {
        let hs = headers(&[("content-type", "text/html; charset=utf-8")]);
        check(probe, status, &hs, PROXY_PAGE.as_bytes()).reason
    }

    /// No text of the body (a JSON string value, or the whole of any other body) appears in
    /// the message. The canary test below checks the same with a marker in every field.
    fn assert_no_body_text(message: &str, body: &[u8]) {
        fn strings(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::String(s) => out.push(s.clone()),
                Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
                Value::Object(fields) => fields.values().for_each(|v| strings(v, out)),
                _ => {}
            }
        }
        let mut texts = Vec::new();
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => strings(&value, &mut texts),
            Err(_) => texts.push(String::from_utf8_lossy(body).trim().to_owned()),
        }
        for text in texts.iter().filter(|t| t.len() >= 6) {
            assert!(
                !message.contains(text.as_str()),
                "{text:?} leaked into {message:?}"
            );
        }
    }

    fn shape_a(code: u16, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message, "invalid-params": [
            {"name": "Authentication", "reason": message}]}})
        .to_string()
    }

    const PROXY_PAGE: &str = "<!DOCTYPE html><html><head><title>Gateway</title></head>\
        <body><h1>Sign in to corpproxy</h1></body></html>";

    #[test]
    fn deploy_v4() {
        let p = Some(DeployApps);
        assert_eq!(reason(p, 200, r#"{"apps":[]}"#), Verified);
        let missing = shape_a(401, "Missing or invalid Authorization header");
        assert_eq!(reason(p, 401, &missing), TokenRejected);
        assert_eq!(
            reason(p, 403, &shape_a(403, "The token is not accepted")),
            TokenRejected
        );
        assert_eq!(
            reason(p, 403, &shape_a(403, "Account not found or inactive")),
            UserDeactivated
        );
        assert_eq!(
            reason(p, 403, &shape_a(403, "ACCOUNT NOT FOUND OR INACTIVE")),
            UserDeactivated
        );
        // The cause only in invalid-params.
        let only_reason = r#"{"error":{"code":403,"message":"Forbidden",
            "invalid-params":[{"name":"Authentication","reason":"The token is not accepted"}]}}"#;
        assert_eq!(reason(p, 403, only_reason), TokenRejected);
        assert_eq!(
            reason(p, 403, &shape_a(403, "Insufficient scope")),
            Forbidden
        );
        let technical = shape_a(
            500,
            "Not able to authenticate the request due a technical failure",
        );
        assert_eq!(reason(p, 500, &technical), PlatformUnavailable);
    }

    #[test]
    fn projects_v2() {
        let p = Some(Projects);
        let body = |code, m| {
            format!(
                r#"{{"error":{{"message":"{m}","detail":"Token check failed","code":{code}}}}}"#
            )
        };
        assert_eq!(reason(p, 200, r#"{"items":[]}"#), Verified);
        assert_eq!(reason(p, 401, &body(401, "Unauthorized")), TokenRejected);
        assert_eq!(reason(p, 403, &body(403, "Forbidden")), Forbidden);
        // Texts that are decisive on Deploy v4 are not on an API that does not document them.
        assert_eq!(
            reason(p, 403, &shape_a(403, "The token is not accepted")),
            Forbidden
        );
    }

    #[test]
    fn marketplace_content() {
        let body = r#"{"error":{"code":401,"message":"Unauthorized","detail":"Invalid token"}}"#;
        assert_eq!(reason(Some(MarketplaceContent), 401, body), TokenRejected);
        assert_eq!(
            reason(Some(MarketplaceContent), 200, r#"{"items":[]}"#),
            Verified
        );
    }

    #[test]
    fn deploy_v1_api_key() {
        let p = Some(DeployV1Apps);
        let body = r#"{"errorMessage":"Authentication failed. Check Mendix-Username and Mendix-ApiKey","errorCode":"UNAUTHORIZED"}"#;
        assert_eq!(reason(p, 401, body), TokenRejected);
        assert_eq!(reason(p, 200, "[]"), Verified);
        assert_eq!(reason(p, 403, r#"{"errorCode":"FORBIDDEN"}"#), Forbidden);
    }

    #[test]
    fn private_platform() {
        let p = Some(PrivatePlatformProjects);
        let unauthorized = r#"{"status":401,"title":"Unauthorized","detail":"Token expired"}"#;
        assert_eq!(reason(p, 401, unauthorized), TokenRejected);
        let forbidden = r#"{"status":403,"title":"Forbidden","detail":"Access denied"}"#;
        assert_eq!(reason(p, 403, forbidden), Forbidden);
    }

    #[test]
    fn user_identifiers_style_answers() {
        for p in NamedProbe::ALL {
            let probe = Some(p);
            let invalid = "Supplied personal access token is invalid.";
            assert_eq!(reason(probe, 401, invalid), TokenRejected, "{p}");
            let inactive = "Unauthorized. The User[5b6f0c7e-2d6a-4d1e-9a43-0f1c2b3d4e5f] for \
                which the token was issued is not active";
            assert_eq!(reason(probe, 401, inactive), UserDeactivated, "{p}");
            let as_json = serde_json::json!({ "message": inactive }).to_string();
            assert_eq!(reason(probe, 401, &as_json), UserDeactivated, "{p}");
            // A token that is not active is a rejected token, not a deactivated user.
            let token = r#"{"detail":"token is not active"}"#;
            assert_eq!(reason(probe, 401, token), TokenRejected, "{p}");
        }
    }

    #[test]
    fn data_hub_style_empty_error() {
        assert_eq!(reason(Some(DeployApps), 403, r#"{"error": ""}"#), Forbidden);
        assert_eq!(reason(Some(Projects), 403, r#"{"error": ""}"#), Forbidden);
    }

    #[test]
    fn undocumented_shapes() {
        for p in NamedProbe::ALL {
            let probe = Some(p);
            assert_eq!(reason(probe, 401, ""), TokenRejected, "{p}");
            assert_eq!(reason(probe, 403, ""), Forbidden, "{p}");
            assert_eq!(reason(probe, 401, "{not json"), TokenRejected, "{p}");
            assert_eq!(reason(probe, 403, "{\"error\": {"), Forbidden, "{p}");
            assert_eq!(reason(probe, 401, "null"), TokenRejected, "{p}");
            assert_eq!(reason(probe, 401, "[1,2,{}]"), TokenRejected, "{p}");
            assert_eq!(reason(probe, 200, ""), Verified, "{p}");
            assert_eq!(html_reason(probe, 401), PlatformUnavailable, "{p}");
            assert_eq!(html_reason(probe, 403), Forbidden, "{p}");
            assert_eq!(html_reason(probe, 502), PlatformUnavailable, "{p}");
            // An HTML page even without a content type.
            assert_eq!(
                check(probe, 401, &HeaderMap::new(), PROXY_PAGE.as_bytes()).reason,
                PlatformUnavailable
            );
            for code in [301, 302, 304, 307, 400, 404, 405, 407, 418, 451] {
                assert_eq!(reason(probe, code, ""), PlatformUnavailable, "{p} {code}");
                assert_eq!(
                    reason(probe, code, &shape_a(code, "The token is not accepted")),
                    PlatformUnavailable,
                    "{p} {code}"
                );
            }
            for code in [500, 502, 503, 504, 599] {
                assert_eq!(
                    reason(probe, code, "oops"),
                    PlatformUnavailable,
                    "{p} {code}"
                );
            }
        }
    }

    #[test]
    fn unexpected_answers_say_so() {
        for code in [301, 404, 418] {
            let outcome = check(Some(DeployApps), code, &HeaderMap::new(), b"");
            assert!(
                outcome.message.starts_with("unexpected answer"),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn url_probes_by_status_only() {
        let inactive = shape_a(403, "Account not found or inactive");
        assert_eq!(reason(None, 204, ""), Verified);
        assert_eq!(reason(None, 401, &inactive), TokenRejected);
        assert_eq!(html_reason(None, 401), TokenRejected);
        assert_eq!(reason(None, 403, &inactive), Forbidden);
        assert_eq!(reason(None, 429, ""), RateLimited);
        assert_eq!(reason(None, 503, ""), PlatformUnavailable);
        for code in [302, 400, 404, 418] {
            assert_eq!(reason(None, code, ""), PlatformUnavailable, "{code}");
        }
    }

    #[test]
    fn huge_garbage_bodies() {
        // A deterministic 64 KiB of bytes that are neither JSON nor UTF-8.
        let mut x: u32 = 0x9e37_79b9;
        let garbage: Vec<u8> = (0..MAX_BODY)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        let none = HeaderMap::new();
        for p in NamedProbe::ALL {
            for (code, want) in [
                (200, Verified),
                (401, TokenRejected),
                (403, Forbidden),
                (500, PlatformUnavailable),
                (404, PlatformUnavailable),
            ] {
                let outcome = check(Some(p), code, &none, &garbage);
                assert_eq!(outcome.reason, want, "{p} {code}");
            }
        }
        // Deeply nested JSON past the parser's limit, and the inactive words past the bound.
        let nested = "[".repeat(MAX_BODY);
        assert_eq!(reason(Some(DeployApps), 403, &nested), Forbidden);
        let mut late = vec![b' '; MAX_BODY];
        late.extend_from_slice(b"user is not active");
        assert_eq!(
            check(Some(DeployApps), 401, &none, &late).reason,
            TokenRejected
        );
    }

    #[test]
    fn canary_never_reaches_a_message() {
        const CANARY: &str = "CANARYf00dfeed";
        let bodies = [
            CANARY.to_owned(),
            shape_a(401, CANARY),
            shape_a(403, &format!("The token is not accepted {CANARY}")),
            shape_a(403, &format!("Account not found or inactive {CANARY}")),
            format!(r#"{{"status":403,"title":"{CANARY}","detail":"{CANARY}"}}"#),
            format!(r#"{{"errorMessage":"{CANARY}","errorCode":"{CANARY}"}}"#),
            format!("The User[{CANARY}] for which the token was issued is not active"),
            format!("<html><title>{CANARY}</title></html>"),
            format!(r#"{{"error": "{CANARY}"}}"#),
        ];
        let hs = headers(&[
            ("retry-after", "17"),
            ("x-ratelimit-reset", "1750000042"),
            ("www-authenticate", CANARY),
            ("content-type", "application/json"),
        ]);
        for probe in NamedProbe::ALL.map(Some).into_iter().chain([None]) {
            for status in [200, 204, 301, 400, 401, 403, 404, 418, 429, 500, 502, 503] {
                for body in &bodies {
                    let answer = Answer {
                        status,
                        headers: &hs,
                        body: body.as_bytes(),
                    };
                    let outcome = classify(probe, HOST, &answer, now());
                    assert!(!outcome.message.contains(CANARY), "{outcome:?}");
                    assert!(!outcome.message.contains("17"), "{outcome:?}");
                }
            }
        }
    }

    #[test]
    fn rate_limits() {
        let p = Some(DeployApps);
        let wait = |pairs: &[(&'static str, &str)]| {
            let outcome = check(p, 429, &headers(pairs), b"{}");
            assert_eq!(outcome.reason, RateLimited);
            outcome.retry_after
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(wait(&[]), None);
        assert_eq!(wait(&[("retry-after", "120")]), secs(120));
        assert_eq!(wait(&[("retry-after", " 7 ")]), secs(7));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(wait(&[("retry-after", &date)]), secs(90));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
        assert_eq!(wait(&[("retry-after", &past)]), secs(0));
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[("x-ratelimit-reset", "1750000060")]), secs(60));
        assert_eq!(wait(&[("x-ratelimit-reset", "1749999000")]), secs(0));
        assert_eq!(wait(&[("x-ratelimit-reset", "45")]), secs(45));
        assert_eq!(
            wait(&[("x-ratelimit-reset", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(wait(&[("x-ratelimit-reset", "-3")]), None);
        assert_eq!(wait(&[("x-ratelimit-reset", "NaN")]), None);
        assert_eq!(wait(&[("x-ratelimit-reset", "inf")]), None);
        // Retry-After wins over X-RateLimit-Reset.
        assert_eq!(
            wait(&[("retry-after", "5"), ("x-ratelimit-reset", "1750000060")]),
            secs(5)
        );
        // Absurd waits are cut to a day, without overflowing.
        assert_eq!(
            wait(&[("retry-after", "99999999999")]),
            Some(MAX_RETRY_AFTER)
        );
        let max = u64::MAX.to_string();
        assert_eq!(wait(&[("x-ratelimit-reset", &max)]), Some(MAX_RETRY_AFTER));
        assert_eq!(
            wait(&[("x-ratelimit-reset", "1e300")]),
            Some(MAX_RETRY_AFTER)
        );
        // A 503 may say when to come back too.
        let outcome = check(p, 503, &headers(&[("retry-after", "30")]), b"");
        assert_eq!(
            (outcome.reason, outcome.retry_after),
            (PlatformUnavailable, secs(30))
        );
    }

    #[test]
    fn statuses_and_names() {
        assert_eq!(Verified.status(), TokenValid::True);
        assert_eq!(TokenRejected.status(), TokenValid::False);
        assert_eq!(UserDeactivated.status(), TokenValid::False);
        for r in [
            Pending,
            Forbidden,
            RateLimited,
            PlatformUnavailable,
            EndpointNotAllowed,
            VerificationDisabled,
        ] {
            assert_eq!(r.status(), TokenValid::Unknown);
            assert_eq!(format!("{r:?}"), r.as_str());
        }
        assert_eq!(TokenValid::Unknown.as_str(), "Unknown");
        assert_eq!(Outcome::pending().reason, Pending);
        assert_eq!(
            Outcome::verification_disabled().reason,
            VerificationDisabled
        );
        let blocked = Outcome::endpoint_not_allowed("10.0.0.1");
        assert_eq!(blocked.reason, EndpointNotAllowed);
        assert!(blocked.message.contains("10.0.0.1"));
    }

    #[test]
    fn transport_failures() {
        for what in [
            TransportFailure::Timeout,
            TransportFailure::Connect,
            TransportFailure::Tls,
            TransportFailure::Other,
        ] {
            let outcome = transport_failure(HOST, what);
            assert_eq!(outcome.reason, PlatformUnavailable);
            assert!(outcome.message.contains(HOST), "{outcome:?}");
            assert_eq!(outcome.retry_after, None);
        }
    }
}
