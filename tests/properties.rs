//! Properties of the pure modules, checked on generated inputs: nothing panics, and the contract
//! of the book holds for every input rather than only for the examples of the unit tests. One
//! group sends credentials through the platform client to a server on 127.0.0.1; nothing else
//! leaves the process.
//!
//! Values that must never reach a message carry [`MARKER`], so that a leak is found wherever the
//! generator puts it. Failures are not persisted to a regressions file: a minimal failing input
//! found here becomes an explicit case in the module it concerns.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, OwnerReference, Time,
};
use mxcred_operator::domain::api::{
    ANNOTATION_FINGERPRINT, CredentialType, LABEL_CREDENTIAL, LABEL_MANAGED_BY, MANAGER,
    MendixCredentialSpec, MendixCredentialStatus, Platform, SourceRef, Target, Verification,
    WorkloadKind, WorkloadRef,
};
use mxcred_operator::domain::classify::{
    Answer, MAX_RETRY_AFTER, Outcome, Reason, TokenValid, classify,
};
use mxcred_operator::domain::conditions;
use mxcred_operator::domain::credential::{ApiKeyPart, Credential, Problem, SourceError};
use mxcred_operator::domain::plan::record;
use mxcred_operator::domain::probe::{NamedProbe, ProbeTarget};
use mxcred_operator::domain::render::{is_current, target_secret};
use mxcred_operator::domain::schedule::{self, Attempt};
use mxcred_operator::domain::spec::{self, Resolved, SourceKeys};
use mxcred_operator::shell::platform::{self as client, PlatformConfig};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Stands for a credential (or anything else a message must not repeat). No fixed text of the
/// operator contains it.
const MARKER: &str = "zqCANARY7x";

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Minimal failing inputs become explicit cases; no untracked regressions files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn insert_marker(mut value: Vec<u8>, at: Index) -> Vec<u8> {
    let at = at.index(value.len() + 1);
    value.splice(at..at, MARKER.bytes());
    value
}

// ---------------------------------------------------------------------------------------------
// Source values
// ---------------------------------------------------------------------------------------------

/// The contract's trimming, written out: surrounding ASCII whitespace (space, tab, LF, FF, CR).
fn trimmed(value: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r');
    let start = value.iter().position(|b| !ws(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// What the contract says about a token or API key: `None` when it is accepted.
fn token_problem(value: &[u8]) -> Option<Problem> {
    let v = trimmed(value);
    if v.is_empty() {
        Some(Problem::Empty)
    } else if v.len() > 4096 {
        Some(Problem::TooLong { max: 4096 })
    } else if !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Some(Problem::NotVisibleAscii)
    } else {
        None
    }
}

/// What the contract says about a username: `None` when it is accepted.
fn username_problem(value: &[u8]) -> Option<Problem> {
    let v = trimmed(value);
    if v.is_empty() {
        return Some(Problem::Empty);
    }
    if v.len() > 256 {
        return Some(Problem::TooLong { max: 256 });
    }
    match std::str::from_utf8(v) {
        Err(_) => Some(Problem::NotUtf8),
        Ok(text) if text.chars().any(char::is_control) => Some(Problem::ControlCharacter),
        Ok(_) => None,
    }
}

fn keys() -> SourceKeys {
    SourceKeys {
        secret: "raw".into(),
        token_key: "token".into(),
        username_key: "username".into(),
        api_key_key: "apiKey".into(),
    }
}

fn source(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
        .collect()
}

/// Bytes a source Secret may hold, each with [`MARKER`] somewhere in it: anything at all,
/// visible ASCII wrapped in whitespace, one troublesome byte (CR, LF, NUL, DEL, a stray UTF-8
/// byte) in an otherwise good value, Unicode text, and lengths around both limits.
fn source_value() -> impl Strategy<Value = Vec<u8>> {
    let whitespace = || "[ \t\r\n\x0c]{0,3}";
    let troublesome = select(vec![
        b'\r', b'\n', 0, b' ', b'\t', 0x0b, 0x0c, 0x7f, 0x80, 0xc3, 0xff,
    ]);
    let fill = select(vec![b'a', b'~', b' ', b'\n', 0xc3, 0x80]);
    let raw = prop_oneof![
        vec(any::<u8>(), 0..64),
        (whitespace(), "[!-~]{0,40}", whitespace())
            .prop_map(|(a, b, c)| format!("{a}{b}{c}").into_bytes()),
        ("[!-~]{0,40}", any::<Index>(), troublesome).prop_map(|(core, at, bad)| {
            let mut v = core.into_bytes();
            v.insert(at.index(v.len() + 1), bad);
            v
        }),
        any::<String>().prop_map(String::into_bytes),
        (fill, prop_oneof![240..=270usize, 4080..=4110usize])
            .prop_map(|(b, n)| vec![b; n.saturating_sub(MARKER.len())]),
    ];
    (raw, any::<Index>()).prop_map(|(v, at)| insert_marker(v, at))
}

/// Checks one value in every position a source value can take.
fn check_source_value(value: &[u8]) -> Result<(), TestCaseError> {
    let no_marker = |text: String| -> Result<(), TestCaseError> {
        prop_assert!(!text.contains(MARKER), "the value reached {text:?}");
        Ok(())
    };
    let want_token = token_problem(value);
    let want_username = username_problem(value);

    let as_token = Credential::from_source(
        CredentialType::PersonalAccessToken,
        &keys(),
        &source(&[("token", value)]),
    );
    let as_api_key = Credential::from_source(
        CredentialType::ApiKey,
        &keys(),
        &source(&[("username", b"ci@example.com"), ("apiKey", value)]),
    );
    let as_username = Credential::from_source(
        CredentialType::ApiKey,
        &keys(),
        &source(&[("username", value), ("apiKey", b"k3y")]),
    );
    for (result, want, key) in [
        (&as_token, want_token, "token"),
        (&as_api_key, want_token, "apiKey"),
        (&as_username, want_username, "username"),
    ] {
        match (result, want) {
            (Ok(credential), None) => no_marker(format!("{credential:?}"))?,
            (
                Err(SourceError::Invalid {
                    secret,
                    key: k,
                    problem,
                }),
                Some(want),
            ) => {
                prop_assert_eq!(secret, "raw");
                prop_assert_eq!(k, key);
                prop_assert_eq!(*problem, want);
            }
            (other, want) => prop_assert!(false, "key {key}: got {other:?}, want {want:?}"),
        }
        if let Err(e) = result {
            no_marker(e.to_string())?;
            no_marker(format!("{e:?}"))?;
        }
    }

    // The direct constructors agree with reading a Secret.
    prop_assert_eq!(Credential::personal_access_token(value).err(), want_token);
    prop_assert_eq!(
        Credential::api_key(value, b"k3y").err(),
        want_username.map(|p| (ApiKeyPart::Username, p))
    );
    prop_assert_eq!(
        Credential::api_key(b"ci@example.com", value).err(),
        want_token.map(|p| (ApiKeyPart::ApiKey, p))
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn source_values_are_accepted_exactly_as_the_contract_says(value in source_value()) {
        check_source_value(&value)?;
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// Up to 1 MiB: one fill byte, perhaps one different byte somewhere, the marker at the start.
    #[test]
    fn huge_source_values_are_refused_without_panicking(
        fill in select(vec![b'a', b' ', b'\n', 0x00, 0xc3]),
        len in 0usize..=1 << 20,
        odd in proptest::option::of((any::<Index>(), any::<u8>())),
    ) {
        let mut value = vec![fill; len];
        if let Some((at, byte)) = odd.filter(|_| len > 0) {
            value[at.index(len)] = byte;
        }
        value.splice(0..0, MARKER.bytes());
        check_source_value(&value)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering the target Secret
// ---------------------------------------------------------------------------------------------

/// A valid credential and the trimmed values it must publish.
#[derive(Debug, Clone)]
enum Published {
    Token(String),
    ApiKey { username: String, api_key: String },
}

fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[!-~]{1,64}",
        1 => "[!-~]{4000,4096}",
    ]
}

fn username_text() -> impl Strategy<Value = String> {
    vec(
        any::<char>().prop_filter("no control characters", |c| !c.is_control()),
        1..64,
    )
    .prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > 256 {
                break;
            }
            text.push(c);
        }
        text
    })
    .prop_filter("not only whitespace", |u| !trimmed(u.as_bytes()).is_empty())
}

fn valid_credential() -> impl Strategy<Value = (Credential, Published)> {
    let padding = "[ \t\r\n]{0,2}";
    prop_oneof![
        (padding, token_text(), padding).prop_map(|(a, token, b)| {
            let credential = Credential::personal_access_token(format!("{a}{token}{b}").as_bytes())
                .expect("a valid token");
            (credential, Published::Token(token))
        }),
        (username_text(), token_text(), padding).prop_map(|(username, api_key, pad)| {
            let credential = Credential::api_key(
                format!("{pad}{username}{pad}").as_bytes(),
                format!("{pad}{api_key}").as_bytes(),
            )
            .expect("a valid API key");
            let username = String::from_utf8(trimmed(username.as_bytes()).to_vec()).unwrap();
            (credential, Published::ApiKey { username, api_key })
        }),
    ]
}

fn spec_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        "[a-z]{1,8}(/[a-z]{1,5})?",
        select(vec![
            LABEL_MANAGED_BY.to_owned(),
            LABEL_CREDENTIAL.to_owned(),
            ANNOTATION_FINGERPRINT.to_owned(),
        ]),
    ];
    btree_map(key, "[ -~]{0,10}", 0..4)
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "mxcred.io/v1alpha1".into(),
        kind: "MendixCredential".into(),
        name: "deploy-bot".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn resolved(
    credential: &Credential,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Resolved {
    Resolved {
        credential_type: match credential {
            Credential::PersonalAccessToken(_) => CredentialType::PersonalAccessToken,
            Credential::ApiKey { .. } => CredentialType::ApiKey,
        },
        source: keys(),
        target_name: "deploy-bot-mendix".into(),
        target_labels: labels,
        target_annotations: annotations,
        verification: None,
        rotation: Default::default(),
        due: Default::default(),
    }
}

/// `desired` as the API server returns it after this operator applied it: the same content,
/// with managed fields naming every key the operator set.
fn applied(desired: &Secret) -> Secret {
    let fields = |keys: Vec<&String>| -> serde_json::Value {
        keys.into_iter()
            .map(|k| (format!("f:{k}"), serde_json::json!({})))
            .collect()
    };
    let mut secret = desired.clone();
    secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(MANAGER.into()),
        operation: Some("Apply".into()),
        fields_v1: Some(FieldsV1(serde_json::json!({
            "f:metadata": {
                "f:labels": fields(desired.metadata.labels.iter().flatten().map(|(k, _)| k).collect()),
                "f:annotations": fields(desired.metadata.annotations.iter().flatten().map(|(k, _)| k).collect()),
            },
            "f:data": fields(desired.data.iter().flatten().map(|(k, _)| k).collect()),
        }))),
        time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
        ..Default::default()
    }]);
    secret.metadata.resource_version = Some("7".into());
    secret
}

fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rendered_secrets_hold_safe_headers_and_round_trip(
        (credential, published) in valid_credential(),
        labels in spec_map(),
        annotations in spec_map(),
    ) {
        let r = resolved(&credential, labels.clone(), annotations);
        let secret = target_secret("ci", "deploy-bot", owner(), &r, &credential);
        let data = secret.data.as_ref().expect("data");
        let text = |key: &str| String::from_utf8(data[key].0.clone()).expect("UTF-8");

        let expected: Vec<(&str, String)> = match &published {
            Published::Token(token) => vec![
                ("MENDIX_TOKEN", token.clone()),
                ("Authorization", format!("MxToken {token}")),
            ],
            Published::ApiKey { username, api_key } => vec![
                ("MENDIX_USERNAME", username.clone()),
                ("MENDIX_API_KEY", api_key.clone()),
                ("Mendix-Username", username.clone()),
                ("Mendix-ApiKey", api_key.clone()),
            ],
        };
        prop_assert_eq!(data.len(), expected.len() + 1, "one key per value, plus headers");
        for (key, want) in &expected {
            prop_assert_eq!(&text(key), want, "key {}", key);
        }

        let headers = credential.headers();
        let mut file = String::new();
        for (name, value) in &headers {
            let value = value.expose_secret();
            prop_assert!(!value.contains(['\r', '\n']), "header {} holds a line break", name);
            prop_assert_eq!(&text(name), value);
            file.push_str(&format!("{name}: {value}\n"));
        }
        let headers_file = text("headers");
        prop_assert_eq!(&headers_file, &file);
        prop_assert!(!headers_file.contains('\r'));
        prop_assert_eq!(headers_file.matches('\n').count(), headers.len());
        prop_assert!(headers_file.ends_with('\n'));

        let fingerprint = credential.fingerprint();
        prop_assert!(is_fingerprint(&fingerprint), "{}", fingerprint);
        let metadata = &secret.metadata;
        prop_assert_eq!(&metadata.annotations.as_ref().unwrap()[ANNOTATION_FINGERPRINT], &fingerprint);
        let rendered_labels = metadata.labels.as_ref().unwrap();
        prop_assert_eq!(rendered_labels[LABEL_MANAGED_BY].as_str(), MANAGER);
        prop_assert_eq!(rendered_labels[LABEL_CREDENTIAL].as_str(), "deploy-bot");
        for (k, v) in labels.iter().filter(|(k, _)| *k != LABEL_MANAGED_BY && *k != LABEL_CREDENTIAL) {
            prop_assert_eq!(&rendered_labels[k], v);
        }
        prop_assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        prop_assert_eq!(metadata.owner_references.as_deref(), Some(&[owner()][..]));

        prop_assert!(is_current(&applied(&secret), &secret));
    }

    #[test]
    fn a_different_credential_is_never_current(
        (first, _) in valid_credential(),
        (second, _) in valid_credential(),
    ) {
        let render = |c: &Credential| {
            target_secret("ci", "deploy-bot", owner(), &resolved(c, BTreeMap::new(), BTreeMap::new()), c)
        };
        let (old, new) = (render(&first), render(&second));
        prop_assert_eq!(is_current(&applied(&old), &new), old.data == new.data);
    }

    /// Server-side apply removes what this operator applied and no longer wants, so a Secret is
    /// current only when labels and annotations are exactly the desired ones.
    #[test]
    fn changed_labels_or_annotations_are_never_current(
        (credential, _) in valid_credential(),
        (labels, new_labels) in (spec_map(), spec_map()),
        (annotations, new_annotations) in (spec_map(), spec_map()),
        keep_labels in any::<bool>(),
        keep_annotations in any::<bool>(),
    ) {
        let new_labels = if keep_labels { labels.clone() } else { new_labels };
        let new_annotations = if keep_annotations { annotations.clone() } else { new_annotations };
        let render = |l, a| target_secret("ci", "deploy-bot", owner(), &resolved(&credential, l, a), &credential);
        let (old, new) = (render(labels, annotations), render(new_labels, new_annotations));
        let same = old.metadata.labels == new.metadata.labels
            && old.metadata.annotations == new.metadata.annotations;
        prop_assert_eq!(is_current(&applied(&old), &new), same);
    }
}

// ---------------------------------------------------------------------------------------------
// Classifying the platform's answers
// ---------------------------------------------------------------------------------------------

fn http_date() -> impl Strategy<Value = String> {
    // Up to the year 9999, the last an HTTP date can name.
    (0u64..=253_402_300_799)
        .prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)))
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| format!(" {n} ")),
        (1_000_000_000u64..5_000_000_000).prop_map(|n| n.to_string()),
        http_date(),
        select(vec![
            "text/html; charset=utf-8".to_owned(),
            "application/json".to_owned(),
            "NaN".to_owned(),
            "inf".to_owned(),
            "-0".to_owned(),
            "1e300".to_owned(),
            String::new(),
        ]),
        "[ -~]{0,40}".prop_map(|s| format!("{s}{MARKER}")),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = select(vec![
        "retry-after",
        "x-ratelimit-reset",
        "content-type",
        "www-authenticate",
        "x-error",
    ]);
    (vec((name, header_value()), 0..5), "[ -~]{0,20}").prop_map(|(pairs, s)| {
        let mut map = HeaderMap::new();
        // Always one header that carries the marker.
        map.append(
            HeaderName::from_static("x-debug"),
            HeaderValue::from_str(&format!("{s}{MARKER}")).expect("visible ASCII"),
        );
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    })
}

/// Bodies with [`MARKER`] in them: random bytes, the documented JSON shapes and their relatives
/// with the words classification looks for, HTML, plain text, and big repetitive ones.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let words = select(vec![
        "The token is not accepted",
        "Account not found or inactive",
        "user deactivated",
        "The User[42] for which the token was issued is not active",
        "Unauthorized",
        "",
    ]);
    let key = select(vec![
        "error",
        "errors",
        "message",
        "detail",
        "reason",
        "title",
        "errorMessage",
        "error_description",
        "description",
        "errorCode",
        "other",
    ]);
    let with_marker =
        (vec(any::<u8>(), 0..512), any::<Index>()).prop_map(|(v, at)| insert_marker(v, at));
    prop_oneof![
        3 => with_marker,
        3 => (key.clone(), words.clone()).prop_map(|(k, w)| {
            format!(r#"{{"{k}":"{w} {MARKER}"}}"#).into_bytes()
        }),
        2 => (key, words.clone()).prop_map(|(k, w)| {
            format!(
                r#"{{"error":{{"code":"{MARKER}","message":"{w}","invalid-params":[{{"{k}":"{MARKER} {w}"}}]}}}}"#
            )
            .into_bytes()
        }),
        1 => words.clone().prop_map(|w| format!("<html><body>{w} {MARKER}</body></html>").into_bytes()),
        1 => words.prop_map(|w| format!("{w} {MARKER}").into_bytes()),
        1 => (vec(any::<u8>(), 1..64), 0usize..=64 * 1024, any::<Index>()).prop_map(|(pattern, len, at)| {
            let filler = pattern.iter().copied().cycle().take(len).collect();
            insert_marker(filler, at)
        }),
    ]
}

fn status_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => 100u16..=599,
        2 => select(vec![200, 204, 301, 302, 400, 404, 429, 500, 502, 503]),
        // Where the verdicts are.
        3 => select(vec![401, 403]),
    ]
}

fn probe() -> impl Strategy<Value = Option<NamedProbe>> {
    proptest::option::of(select(NamedProbe::ALL.to_vec()))
}

/// From 1970 to 2100.
fn now() -> impl Strategy<Value = SystemTime> {
    (0u64..=4_102_444_800).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

const HOST: &str = "cloud.home.mendix.com";

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn classification_keeps_its_promises(
        probe in probe(),
        status in status_code(),
        headers in headers(),
        body in body(),
        now in now(),
    ) {
        let answer = Answer { status, headers: &headers, body: &body };
        let outcome = classify(probe, HOST, &answer, now);
        prop_assert!(
            Reason::OUTCOMES.contains(&outcome.reason) && outcome.reason != Reason::EndpointNotAllowed,
            "{:?} is not an outcome of an answer", outcome.reason
        );
        if outcome.reason.status() == TokenValid::False {
            prop_assert!(matches!(status, 401 | 403), "HTTP {} made the token False", status);
        }
        match status {
            200..=299 => prop_assert_eq!(outcome.reason, Reason::Verified),
            429 => prop_assert_eq!(outcome.reason, Reason::RateLimited),
            500..=599 => prop_assert_eq!(outcome.reason, Reason::PlatformUnavailable),
            401 | 403 => {}
            _ => prop_assert_eq!(outcome.reason.status(), TokenValid::Unknown),
        }
        if probe.is_none() {
            match status {
                401 => prop_assert_eq!(outcome.reason, Reason::TokenRejected),
                403 => prop_assert_eq!(outcome.reason, Reason::Forbidden),
                _ => {}
            }
        }
        prop_assert!(!outcome.message.contains(MARKER), "{:?}", outcome.message);
        prop_assert!(outcome.message.contains(&format!("HTTP {status} from {HOST}")), "{:?}", outcome.message);
        prop_assert!(outcome.retry_after.is_none_or(|wait| wait <= MAX_RETRY_AFTER));
        prop_assert!(MAX_RETRY_AFTER <= DAY);
    }

    #[test]
    fn retry_after_in_seconds_is_obeyed_up_to_a_day(
        probe in probe(),
        status in prop_oneof![Just(429u16), 500u16..=599],
        seconds in prop_oneof![0u64..=2 * 86_400, any::<u64>()],
        now in now(),
    ) {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_str(&seconds.to_string()).unwrap());
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("5"));
        let outcome = classify(probe, HOST, &Answer { status, headers: &headers, body: b"" }, now);
        prop_assert_eq!(outcome.retry_after, Some(Duration::from_secs(seconds).min(DAY)));
    }

    #[test]
    fn rate_limit_reset_at_an_epoch_second_is_obeyed_up_to_a_day(
        probe in probe(),
        status in prop_oneof![Just(429u16), 500u16..=599],
        // From 2002, so that the reset time is read as an epoch second.
        now in (1_010_000_000u64..=4_102_444_800).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        offset in -100_000i64..=200_000,
    ) {
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let reset = now_s.checked_add_signed(offset).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&reset.to_string()).unwrap());
        let outcome = classify(probe, HOST, &Answer { status, headers: &headers, body: b"" }, now);
        let wait = Duration::from_secs(offset.max(0).unsigned_abs()).min(DAY);
        prop_assert_eq!(outcome.retry_after, Some(wait));
    }
}

// ---------------------------------------------------------------------------------------------
// The spec
// ---------------------------------------------------------------------------------------------

fn interval_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,12}",
        "[ ]?([0-9]{1,22} ?(ns|us|ms|s|sec|m|min|h|hr|d|day|days|w|week|M|month|y|year) ?){1,4}",
        (0u64..=40_000_000).prop_map(|s| format!("{s}s")),
    ]
}

fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?",
        2 => "[a-zA-Z0-9._-]{0,12}",
        1 => "\\PC{0,16}",
        1 => any::<String>(),
        1 => "[a-z]{250,256}",
    ]
}

fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[-._a-zA-Z0-9]{1,12}",
        1 => select(vec!["token".to_owned(), "username".to_owned(), "apiKey".to_owned()]),
        1 => "\\PC{0,12}",
        1 => "[a-z]{250,256}",
    ]
}

fn probe_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            NamedProbe::ALL
                .iter()
                .map(|p| p.name().to_owned())
                .chain(["", " DeployApps ", "deployapps"].map(str::to_owned))
                .collect::<Vec<_>>()
        ),
        url_text().prop_map(|(url, _)| url),
        "\\PC{0,24}",
    ]
}

/// URL-like text, and whether it carries user information (a user name or a password).
fn url_text() -> impl Strategy<Value = (String, bool)> {
    let scheme = prop_oneof![
        3 => select(vec!["https", "http"]).prop_map(str::to_owned),
        2 => select(vec![
            "HTTPS", "Http", "ftp", "file", "ws", "wss", "javascript", "data", "gopher", "mailto",
            "", "h",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z][a-z0-9+.-]{0,6}",
    ];
    let separator = prop_oneof![
        4 => Just("://"),
        1 => select(vec![":", ":/", ":\\\\", ":///"]),
    ];
    let user = proptest::option::of((
        "[a-zA-Z0-9%._~-]{0,8}",
        proptest::option::of("[a-zA-Z0-9%._~!$&'()*+,;=-]{0,8}"),
    ));
    let host = select(vec![
        "example.com",
        "pmp.example.com",
        "127.0.0.1",
        "[::1]",
        "localhost:8443",
        "xn--d1acufc.xn--p1ai",
        "",
    ]);
    let path = "(/[a-zA-Z0-9._~%?=&@:-]{0,10}){0,3}";
    (scheme, separator, user, host, path, "[ \t]{0,2}").prop_map(
        |(scheme, separator, user, host, path, pad)| {
            let (userinfo, has_user) = match user {
                None => (String::new(), false),
                Some((name, password)) => {
                    let has = !name.is_empty() || password.is_some();
                    let password = password
                        .map(|p| format!(":{p}{MARKER}"))
                        .unwrap_or_default();
                    (format!("{name}{password}@"), has)
                }
            };
            (
                format!("{pad}{scheme}{separator}{userinfo}{host}{path}{pad}"),
                has_user,
            )
        },
    )
}

fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

fn is_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A URL a credential may be sent to: http(s), a host, no user information.
fn check_url(url: &Url) -> Result<(), TestCaseError> {
    prop_assert!(matches!(url.scheme(), "http" | "https"), "{}", url);
    prop_assert!(
        url.username().is_empty() && url.password().is_none(),
        "{}",
        url
    );
    prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{}", url);
    Ok(())
}

fn check_probe_target(target: &ProbeTarget) -> Result<(), TestCaseError> {
    match target {
        ProbeTarget::Url(url) => check_url(url),
        ProbeTarget::Named { probe, base_url } => {
            prop_assert_eq!(
                base_url.is_some(),
                *probe == NamedProbe::PrivatePlatformProjects
            );
            base_url.iter().try_for_each(check_url)
        }
    }
}

fn credential_type() -> impl Strategy<Value = CredentialType> {
    select(vec![
        CredentialType::PersonalAccessToken,
        CredentialType::ApiKey,
    ])
}

fn workload_ref() -> impl Strategy<Value = WorkloadRef> {
    (
        select(vec![
            WorkloadKind::Deployment,
            WorkloadKind::StatefulSet,
            WorkloadKind::DaemonSet,
        ]),
        name_text(),
    )
        .prop_map(|(kind, name)| WorkloadRef { kind, name })
}

fn platform() -> impl Strategy<Value = Platform> {
    select(vec![Platform::MendixCloud, Platform::PrivatePlatform])
}

fn mendix_credential_spec() -> impl Strategy<Value = MendixCredentialSpec> {
    let source_ref = (
        name_text(),
        proptest::option::of(key_text()),
        proptest::option::of(key_text()),
        proptest::option::of(key_text()),
    )
        .prop_map(|(name, token_key, username_key, api_key_key)| SourceRef {
            name,
            token_key,
            username_key,
            api_key_key,
        });
    let target = proptest::option::of(
        (
            proptest::option::of(name_text()),
            proptest::option::of(spec_map()),
            proptest::option::of(spec_map()),
            proptest::option::of(proptest::collection::vec(workload_ref(), 0..4)),
        )
            .prop_map(|(name, labels, annotations, rollout_restart)| Target {
                name,
                labels,
                annotations,
                rollout_restart,
            }),
    );
    let verification = proptest::option::of(
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(interval_text()),
            proptest::option::of(platform()),
            proptest::option::of(prop_oneof![
                url_text().prop_map(|(url, _)| url),
                Just(String::new())
            ]),
            proptest::option::of(probe_text()),
        )
            .prop_map(
                |(enabled, interval, platform, base_url, probe)| Verification {
                    enabled,
                    interval,
                    platform,
                    base_url,
                    probe,
                },
            ),
    );
    (
        proptest::option::of(credential_type()),
        source_ref,
        target,
        verification,
    )
        .prop_map(
            |(r#type, source_ref, target, verification)| MendixCredentialSpec {
                r#type,
                source_ref,
                target,
                verification,
                rotation: None,
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn intervals_are_within_a_minute_and_a_leap_year(text in interval_text()) {
        if let Ok(interval) = spec::parse_interval(&text) {
            prop_assert!(interval >= MINUTE && interval <= 366 * DAY, "{:?} -> {:?}", text, interval);
        }
    }

    #[test]
    fn intervals_in_seconds_are_accepted_exactly_in_range(seconds in prop_oneof![0u64..=120, 31_622_340u64..=31_622_460, any::<u64>()]) {
        let accepted = spec::parse_interval(&format!("{seconds}s")).is_ok();
        prop_assert_eq!(accepted, (60..=366 * 86_400).contains(&seconds), "{}s", seconds);
    }

    #[test]
    fn resolved_specs_are_safe_to_act_on(name in name_text(), spec in mendix_credential_spec()) {
        let Ok(r) = spec::resolve(&name, &spec, HOUR) else { return Ok(()) };
        prop_assert!(is_dns_subdomain(&r.target_name), "target {:?}", r.target_name);
        prop_assert!(spec::is_dns_subdomain(&r.target_name));
        prop_assert!(is_dns_subdomain(&r.source.secret), "source {:?}", r.source.secret);
        for key in [&r.source.token_key, &r.source.username_key, &r.source.api_key_key] {
            prop_assert!(is_secret_key(key), "key {:?}", key);
        }
        prop_assert_eq!(r.credential_type, spec.r#type.unwrap_or_default());
        if r.credential_type == CredentialType::ApiKey {
            prop_assert_ne!(&r.source.username_key, &r.source.api_key_key);
        }
        let verification = spec.verification.clone().unwrap_or_default();
        prop_assert_eq!(r.verification.is_some(), verification.enabled != Some(false));
        if let Some(plan) = &r.verification {
            prop_assert!(verification.interval.is_some() || plan.interval == HOUR);
            prop_assert!(plan.interval >= MINUTE && plan.interval <= 366 * DAY);
            check_probe_target(&plan.probe)?;
        }
    }

    #[test]
    fn probe_urls_are_http_or_https_without_user_information(
        (url, has_user) in url_text(),
        credential_type in credential_type(),
        platform in platform(),
    ) {
        for result in [
            ProbeTarget::resolve(credential_type, platform, None, Some(&url)),
            ProbeTarget::resolve(
                CredentialType::PersonalAccessToken,
                Platform::PrivatePlatform,
                Some(&url),
                None,
            ),
        ] {
            match result {
                Ok(target) => {
                    prop_assert!(!has_user, "{:?} accepted with user information", url);
                    check_probe_target(&target)?;
                }
                // A URL-shaped value is refused without being repeated: it may hold a password.
                // (Text that is not URL-shaped is repeated to name the unknown probe.)
                Err(e) if url.contains("://") => {
                    prop_assert!(!e.to_string().contains(MARKER), "{}", e);
                }
                Err(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule
// ---------------------------------------------------------------------------------------------

fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        any::<String>()
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    prop_oneof![
        Just(Attempt::Accepted),
        Just(Attempt::Rejected),
        (
            any::<u32>(),
            proptest::option::of((0u64..=86_400_000).prop_map(Duration::from_millis))
        )
            .prop_map(|(failures, retry_after)| Attempt::Transient {
                failures,
                retry_after
            }),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn next_check_keeps_to_the_schedule(
        now in now(),
        // --default-interval is the operator's to set, so below a minute too.
        interval in prop_oneof![
            (1u64..=366 * 86_400).prop_map(Duration::from_secs),
            (0u64..=10_000).prop_map(Duration::from_millis),
        ],
        uid in uid(),
        attempt in attempt(),
    ) {
        let jitter = schedule::jitter(&uid, interval);
        let next = schedule::next_check(now, interval, jitter, attempt);
        let after = next.duration_since(now);
        prop_assert!(after.is_ok(), "{:?} is before now", next);
        let after = after.unwrap();
        let five_minutes = 5 * MINUTE;
        match attempt {
            Attempt::Accepted => {
                prop_assert!(after >= interval && after <= interval + five_minutes, "{:?}", after);
            }
            Attempt::Rejected => {
                prop_assert!(after >= 6 * HOUR && after >= interval, "{:?}", after);
                prop_assert!(after <= interval.max(6 * HOUR) + five_minutes, "{:?}", after);
            }
            Attempt::Transient { retry_after, .. } => {
                let asked = retry_after.unwrap_or_default();
                prop_assert!(after >= asked, "{:?} < {:?}", after, asked);
                prop_assert!(after >= interval.min(Duration::from_secs(30)), "{:?}", after);
                prop_assert!(after <= interval.max(asked), "{:?}", after);
            }
        }
    }

    #[test]
    fn jitter_is_fixed_and_small(
        uid in uid(),
        interval in prop_oneof![
            (0u64..=366 * 86_400_000).prop_map(Duration::from_millis),
            (0u64..=20_000_000).prop_map(Duration::from_nanos),
        ],
    ) {
        let jitter = schedule::jitter(&uid, interval);
        prop_assert_eq!(jitter, schedule::jitter(&uid, interval));
        let bound = (interval / 10).min(5 * MINUTE);
        prop_assert!(jitter == Duration::ZERO || jitter < bound, "{:?} for {:?}", jitter, interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Recording outcomes in the status
// ---------------------------------------------------------------------------------------------

const ALL_REASONS: [Reason; 9] = [
    Reason::Verified,
    Reason::TokenRejected,
    Reason::UserDeactivated,
    Reason::Pending,
    Reason::Forbidden,
    Reason::RateLimited,
    Reason::PlatformUnavailable,
    Reason::EndpointNotAllowed,
    Reason::VerificationDisabled,
];

fn is_definitive(reason: Reason) -> bool {
    reason.status() != TokenValid::Unknown || reason == Reason::VerificationDisabled
}

fn outcome(reason: Reason, n: usize) -> Outcome {
    Outcome {
        reason,
        message: format!("{} message {n}", reason.as_str()),
        retry_after: None,
    }
}

fn at(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(second).unwrap())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn transient_outcomes_never_replace_a_verdict(
        reasons in vec(select(ALL_REASONS.to_vec()), 1..16),
        generations in vec(proptest::option::of(1i64..5), 16),
    ) {
        let mut status = MendixCredentialStatus::default();
        let mut model: Option<Reason> = None;
        for (i, (&reason, generation)) in reasons.iter().zip(generations).enumerate() {
            let before = status.clone();
            let token_valid = |s: &MendixCredentialStatus| {
                conditions::find(&s.conditions, "TokenValid").cloned()
            };
            let now = at(1_000 + i as i64);
            let changed = record(&mut status, &outcome(reason, i), generation, now.clone());

            let keeps_verdict = !is_definitive(reason)
                && model.is_some_and(|m| m.status() != TokenValid::Unknown);
            if keeps_verdict {
                prop_assert_eq!(changed, None);
                prop_assert_eq!(token_valid(&status), token_valid(&before), "{:?} replaced a verdict", reason);
                prop_assert_eq!(&status.last_verified_time, &before.last_verified_time);
            } else {
                prop_assert_eq!(changed, (model != Some(reason)).then_some(reason));
                model = Some(reason);
                let c = token_valid(&status).expect("TokenValid is set");
                prop_assert_eq!(c.status.as_str(), reason.status().as_str());
                prop_assert_eq!(c.reason.as_str(), reason.as_str());
                prop_assert_eq!(c.observed_generation, generation);
                let moved = token_valid(&before).is_none_or(|b| b.status != c.status);
                let want_transition = if moved { now.clone() } else { token_valid(&before).unwrap().last_transition_time };
                prop_assert_eq!(c.last_transition_time, want_transition);
            }
            if is_definitive(reason) {
                prop_assert_eq!(&status.last_verification_error, &None);
                let want = if reason == Reason::VerificationDisabled { before.last_verified_time.clone() } else { Some(now) };
                prop_assert_eq!(&status.last_verified_time, &want);
            } else {
                prop_assert_eq!(status.last_verification_error.clone(), Some(outcome(reason, i).message));
                prop_assert_eq!(&status.last_verified_time, &before.last_verified_time);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending a credential (to a server on loopback)
// ---------------------------------------------------------------------------------------------

/// Header names (lowercase) and raw values.
type Headers = Vec<(String, Vec<u8>)>;

/// Per request path, the headers that carry a credential.
type Seen = Mutex<HashMap<String, Headers>>;

/// A server on 127.0.0.1 that answers every request 200 and keeps, per path, the headers that
/// carry a credential, byte for byte.
struct Loopback {
    port: u16,
    seen: Arc<Seen>,
}

impl Loopback {
    fn get() -> &'static Loopback {
        static SERVER: OnceLock<Loopback> = OnceLock::new();
        SERVER.get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let port = listener.local_addr().expect("address").port();
            let seen = Arc::new(Mutex::new(HashMap::new()));
            let record = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let record = Arc::clone(&record);
                    std::thread::spawn(move || Loopback::answer(stream, &record));
                }
            });
            Loopback { port, seen }
        })
    }

    fn answer(mut stream: TcpStream, record: &Seen) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let mut lines = request
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let path = lines
            .next()
            .and_then(|l| l.split(|&b| b == b' ').nth(1))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let headers = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                let value = line[colon + 1..].trim_ascii().to_vec();
                matches!(
                    name.as_str(),
                    "authorization" | "mendix-username" | "mendix-apikey"
                )
                .then_some((name, value))
            })
            .collect();
        record.lock().expect("lock").insert(path, headers);
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

/// One runtime and one platform client for all cases: only loopback is allowed.
fn platform_client() -> &'static (tokio::runtime::Runtime, client::Platform) {
    static CLIENT: OnceLock<(tokio::runtime::Runtime, client::Platform)> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = PlatformConfig {
            probe_urls: BTreeMap::new(),
            allowed_hosts: [format!("http://127.0.0.1:{}", Loopback::get().port)].into(),
            allow_http: true,
            extra_ca_file: None,
            qps: NonZeroU32::new(10_000).expect("non-zero"),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        };
        let platform = client::Platform::new(config, Arc::default()).expect("platform client");
        (runtime, platform)
    })
}

/// Checks that the platform client sends every header of `credential`, byte for byte, and
/// that the 200 it gets back verifies the credential.
fn check_sent(credential: &Credential) -> Result<(), TestCaseError> {
    static REQUESTS: AtomicU64 = AtomicU64::new(0);
    let server = Loopback::get();
    let path = format!("/case/{}", REQUESTS.fetch_add(1, Ordering::Relaxed));
    let url = Url::parse(&format!("http://127.0.0.1:{}{path}", server.port)).expect("URL");
    let (runtime, platform) = platform_client();
    let outcome = runtime.block_on(platform.check(&ProbeTarget::Url(url), credential));
    prop_assert_eq!(outcome.reason, Reason::Verified, "{}", outcome.message);
    let mut seen = server
        .seen
        .lock()
        .expect("lock")
        .remove(&path)
        .unwrap_or_default();
    let mut want: Headers = credential
        .headers()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                value.expose_secret().as_bytes().to_vec(),
            )
        })
        .collect();
    seen.sort();
    want.sort();
    prop_assert_eq!(seen, want);
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    /// Unicode usernames included: the client sends header values as raw bytes.
    #[test]
    fn valid_credentials_reach_the_platform_byte_for_byte(
        (credential, _) in valid_credential(),
    ) {
        check_sent(&credential)?;
    }
}
