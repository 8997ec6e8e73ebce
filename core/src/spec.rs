//! The spec with its defaults applied and checked: what the reconciler acts on.
//!
//! Pure: a [`MendixCredentialSpec`] goes in, a [`Resolved`] or an [`InvalidSpec`] comes out.

use crate::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, CredentialType, DENIED_METADATA_DOMAINS, LABEL_MANAGED_BY,
    MendixCredentialSpec, Platform, RotationPolicy,
};
use crate::due;
use crate::probe::ProbeTarget;
use std::collections::BTreeMap;
use std::time::Duration;

/// The shortest interval a resource may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Why a spec cannot be acted on; the message is shown on the resource as reason `InvalidSpec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub credential_type: CredentialType,
    pub source: SourceKeys,
    pub target_name: String,
    pub target_labels: BTreeMap<String, String>,
    pub target_annotations: BTreeMap<String, String>,
    pub verification: Option<VerificationPlan>,
    pub rotation: RotationPolicy,
    /// How the published credential's age is judged; `max_age` is the spec's, to which the
    /// operator adds its default.
    pub due: due::Policy,
}

/// The source Secret and the keys to read from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceKeys {
    pub secret: String,
    pub token_key: String,
    pub username_key: String,
    pub api_key_key: String,
}

#[cfg(any(test, feature = "testing"))]
impl SourceKeys {
    /// Secret `secret` with the default key names, as unit tests use it.
    pub fn defaults_of(secret: &str) -> Self {
        SourceKeys {
            secret: secret.into(),
            token_key: "token".into(),
            username_key: "username".into(),
            api_key_key: "apiKey".into(),
        }
    }
}

/// Verification as resolved from the spec; `None` in [`Resolved`] when disabled.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationPlan {
    pub interval: Duration,
    pub probe: ProbeTarget,
}

/// Applies defaults and checks what the OpenAPI schema cannot.
pub fn resolve(
    name: &str,
    spec: &MendixCredentialSpec,
    default_interval: Duration,
) -> Result<Resolved, InvalidSpec> {
    let credential_type = spec.r#type.unwrap_or_default();
    let source_ref = &spec.source_ref;
    let key = |k: &Option<String>, default: &str, field: &str| -> Result<String, InvalidSpec> {
        let k = k.as_deref().unwrap_or(default);
        if is_valid_secret_key(k) {
            Ok(k.to_owned())
        } else {
            Err(InvalidSpec(format!(
                "spec.sourceRef.{field} {k:?} is not a valid Secret key (letters, digits, '-', '_' or '.')"
            )))
        }
    };
    if !is_dns_subdomain(&source_ref.name) {
        return Err(InvalidSpec(format!(
            "spec.sourceRef.name {:?} is not a valid Secret name",
            source_ref.name
        )));
    }
    let source = SourceKeys {
        secret: source_ref.name.clone(),
        token_key: key(&source_ref.token_key, "token", "tokenKey")?,
        username_key: key(&source_ref.username_key, "username", "usernameKey")?,
        api_key_key: key(&source_ref.api_key_key, "apiKey", "apiKeyKey")?,
    };
    if credential_type == CredentialType::ApiKey && source.username_key == source.api_key_key {
        return Err(InvalidSpec(
            "spec.sourceRef.usernameKey and apiKeyKey must name different keys".into(),
        ));
    }

    let target = spec.target.clone().unwrap_or_default();
    let target_name = target.name.unwrap_or_else(|| name.to_owned());
    if !is_dns_subdomain(&target_name) {
        return Err(InvalidSpec(format!(
            "spec.target.name {target_name:?} is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253)"
        )));
    }
    // Also a rule of the CRD; checked here too for objects stored before the rule existed.
    if target_name == source.secret {
        return Err(InvalidSpec(
            "spec.target.name (default: the resource's name) must differ from spec.sourceRef.name: the target Secret would be the source Secret".into(),
        ));
    }

    let verification = resolve_verification(credential_type, spec, default_interval)?;
    Ok(Resolved {
        credential_type,
        source,
        target_name,
        target_labels: target.labels.unwrap_or_default(),
        target_annotations: target.annotations.unwrap_or_default(),
        verification,
        rotation: spec
            .rotation
            .as_ref()
            .and_then(|r| r.policy)
            .unwrap_or_default(),
        due: resolve_due(spec)?,
    })
}

/// The longest `spec.rotation.maxAge` and `renewBefore`: ten years.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(3660 * 24 * 3600);

fn resolve_due(spec: &MendixCredentialSpec) -> Result<due::Policy, InvalidSpec> {
    let rotation = spec.rotation.clone().unwrap_or_default();
    let max_age = rotation
        .max_age
        .as_deref()
        .map(|text| parse_rotation_duration("maxAge", text, MIN_INTERVAL))
        .transpose()?;
    let renew_before = rotation
        .renew_before
        .as_deref()
        .map(|text| parse_rotation_duration("renewBefore", text, Duration::ZERO))
        .transpose()?
        .unwrap_or(due::DEFAULT_RENEW_BEFORE);
    Ok(due::Policy {
        max_age,
        renew_before,
    })
}

/// Parses `spec.rotation.<field>`: a humantime duration of at least `min` and at most ten years.
pub fn parse_rotation_duration(
    field: &str,
    text: &str,
    min: Duration,
) -> Result<Duration, InvalidSpec> {
    let duration = humantime::parse_duration(text.trim()).map_err(|_| {
        InvalidSpec(format!(
            "spec.rotation.{field} {text:?} is not a duration such as \"90d\" or \"2160h\""
        ))
    })?;
    if duration < min {
        return Err(InvalidSpec(format!(
            "spec.rotation.{field} {text:?} is shorter than the minimum of {}",
            humantime::format_duration(min)
        )));
    }
    if duration > MAX_AGE_LIMIT {
        return Err(InvalidSpec(format!(
            "spec.rotation.{field} {text:?} is longer than the maximum of 3660d"
        )));
    }
    Ok(duration)
}

/// The domain of Kubernetes' recommended labels (`app.kubernetes.io/name`, `part-of`, ...).
const RECOMMENDED_LABELS: &str = "app.kubernetes.io";

/// The longest `mxcred.io/verify-requested-at` value honoured: a timestamp takes 20 to 35
/// characters, and the API server lets a tenant write 256 KiB there.
pub const MAX_VERIFY_REQUEST: usize = 64;

/// What the operator's cache keeps of a longer value: this prefix and a hash of the value, so
/// that a change of it is still seen as one, and the value itself is never held.
const OVERLONG_VERIFY_REQUEST: &str = "mxcred.io/overlong:";

/// The value of `mxcred.io/verify-requested-at` as the cache keeps it.
pub fn slim_verify_request(value: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    (value.len() > MAX_VERIFY_REQUEST).then(|| {
        let hash = hex::encode(&Sha256::digest(value.as_bytes())[..8]);
        format!("{OVERLONG_VERIFY_REQUEST}{hash}")
    })
}

/// Refuses a `mxcred.io/verify-requested-at` value longer than [`MAX_VERIFY_REQUEST`] (or the
/// mark the cache keeps of one): no check is forced by it.
pub fn check_verify_request(value: Option<&str>) -> Result<(), InvalidSpec> {
    match value {
        Some(v) if v.len() > MAX_VERIFY_REQUEST || v.starts_with(OVERLONG_VERIFY_REQUEST) => {
            Err(InvalidSpec(format!(
                "annotation {ANNOTATION_VERIFY_REQUESTED_AT} is longer than the \
                 {MAX_VERIFY_REQUEST} characters allowed: no check is forced by it; set it to a \
                 timestamp, e.g. $(date -u +%Y-%m-%dT%H:%M:%SZ)"
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses `spec.target` labels and annotations under a denied domain, or starting with one of
/// the administrator's `extra` prefixes. The message names the first such key.
pub fn check_target_metadata(resolved: &Resolved, extra: &[String]) -> Result<(), InvalidSpec> {
    let denied = |key: &str| {
        let domain = key.split_once('/').map(|(d, _)| d);
        // Kubernetes' recommended labels are for users to set (the operator's own managed-by
        // excepted).
        let recommended = domain == Some(RECOMMENDED_LABELS) && key != LABEL_MANAGED_BY;
        let builtin = !recommended
            && domain.is_some_and(|d| {
                DENIED_METADATA_DOMAINS
                    .iter()
                    .any(|denied| d == *denied || d.ends_with(&format!(".{denied}")))
            });
        builtin
            || extra
                .iter()
                .any(|p| !p.is_empty() && key.starts_with(p.as_str()))
    };
    for (field, map) in [
        ("labels", &resolved.target_labels),
        ("annotations", &resolved.target_annotations),
    ] {
        if let Some(key) = map.keys().find(|k| denied(k)) {
            return Err(InvalidSpec(format!(
                "spec.target.{field} key {key:?} is not allowed: keys under kubernetes.io/, \
                 k8s.io/ (and their subdomains, but for the recommended app.kubernetes.io/ \
                 labels), mxcred.io/ and the replication keys of \
                 Reflector, kubed and kubernetes-replicator are refused, and so are the \
                 prefixes the operator's administrator denied"
            )));
        }
    }
    Ok(())
}

fn resolve_verification(
    credential_type: CredentialType,
    spec: &MendixCredentialSpec,
    default_interval: Duration,
) -> Result<Option<VerificationPlan>, InvalidSpec> {
    let v = spec.verification.clone().unwrap_or_default();
    let interval = match v.interval.as_deref() {
        None => default_interval,
        Some(text) => parse_interval(text)?,
    };
    if !v.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let platform = v.platform.unwrap_or_default();
    let base_url = v.base_url.as_deref().filter(|s| !s.is_empty());
    if platform == Platform::PrivatePlatform && base_url.is_none() {
        return Err(InvalidSpec(
            "spec.verification.baseUrl is required when platform is PrivatePlatform".into(),
        ));
    }
    if platform != Platform::PrivatePlatform && base_url.is_some() {
        return Err(InvalidSpec(
            "spec.verification.baseUrl is only used with platform PrivatePlatform".into(),
        ));
    }
    let probe = ProbeTarget::resolve(credential_type, platform, base_url, v.probe.as_deref())
        .map_err(|e| InvalidSpec(format!("spec.verification: {e}")))?;
    Ok(Some(VerificationPlan { interval, probe }))
}

/// Parses `spec.verification.interval`: a humantime duration of at least [`MIN_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, InvalidSpec> {
    let interval = humantime::parse_duration(text.trim()).map_err(|_| {
        InvalidSpec(format!(
            "spec.verification.interval {text:?} is not a duration such as \"30m\", \"1h\" or \"1d\""
        ))
    })?;
    if interval < MIN_INTERVAL {
        return Err(InvalidSpec(format!(
            "spec.verification.interval {text:?} is shorter than the minimum of 1m"
        )));
    }
    // Beyond a year the schedule stops meaning anything and timestamps risk overflow.
    if interval > Duration::from_secs(366 * 24 * 3600) {
        return Err(InvalidSpec(format!(
            "spec.verification.interval {text:?} is longer than the maximum of 366d"
        )));
    }
    Ok(interval)
}

/// RFC 1123 subdomain, as Kubernetes requires of Secret names.
pub fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
}

/// Secret data keys: `[-._a-zA-Z0-9]+`, at most 253 bytes.
pub fn is_valid_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlong_verify_request_is_kept_as_a_mark_and_refused() {
        let timestamp = "2026-12-04T20:30:00Z";
        assert_eq!(slim_verify_request(timestamp), None);
        assert_eq!(check_verify_request(Some(timestamp)), Ok(()));
        assert_eq!(check_verify_request(None), Ok(()));
        let huge = "x".repeat(250_000);
        let kept = slim_verify_request(&huge).unwrap();
        assert!(kept.len() <= MAX_VERIFY_REQUEST, "{kept}");
        assert_ne!(slim_verify_request(&format!("{huge}y")).unwrap(), kept);
        for refused in [huge.as_str(), kept.as_str()] {
            let InvalidSpec(message) = check_verify_request(Some(refused)).unwrap_err();
            assert!(
                message.contains(ANNOTATION_VERIFY_REQUESTED_AT),
                "{message}"
            );
            assert!(!message.contains("xxx"), "{message}");
        }
        assert!(check_verify_request(Some(&"x".repeat(64))).is_ok());
        assert!(check_verify_request(Some(&"x".repeat(65))).is_err());
    }
    use crate::api::{SourceRef, Target, Verification};

    fn spec() -> MendixCredentialSpec {
        MendixCredentialSpec {
            source_ref: SourceRef {
                name: "raw".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn defaults_are_applied_in_code() {
        let r = resolve("deploy-bot", &spec(), HOUR).unwrap();
        assert_eq!(r.credential_type, CredentialType::PersonalAccessToken);
        assert_eq!(r.target_name, "deploy-bot");
        assert_eq!(r.source.token_key, "token");
        assert_eq!(r.source.username_key, "username");
        assert_eq!(r.source.api_key_key, "apiKey");
        let plan = r.verification.unwrap();
        assert_eq!(plan.interval, HOUR);
    }

    #[test]
    fn disabled_verification_has_no_plan() {
        let mut s = spec();
        s.verification = Some(Verification {
            enabled: Some(false),
            ..Default::default()
        });
        assert_eq!(resolve("a", &s, HOUR).unwrap().verification, None);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1m").unwrap(), MIN_INTERVAL);
        assert_eq!(parse_interval("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_interval("1d").unwrap(), 24 * HOUR);
        for bad in ["0s", "59s", "-1h", "abc", "", "1y 1d", "10000d"] {
            let err = parse_interval(bad).unwrap_err();
            assert!(err.0.contains("spec.verification.interval"), "{bad}: {err}");
        }
    }

    #[test]
    fn rotation_durations() {
        use crate::api::Rotation;
        let r = resolve("a", &spec(), HOUR).unwrap();
        assert_eq!(r.due, due::Policy::default());
        assert_eq!(r.due.renew_before, 14 * 24 * HOUR);
        let mut s = spec();
        s.rotation = Some(Rotation {
            max_age: Some("90d".into()),
            renew_before: Some("0s".into()),
            ..Default::default()
        });
        let r = resolve("a", &s, HOUR).unwrap();
        assert_eq!(r.due.max_age, Some(90 * 24 * HOUR));
        assert_eq!(r.due.renew_before, Duration::ZERO);
        for (max_age, renew_before) in [
            ("30s", "1d"),
            ("abc", "1d"),
            ("1d", "soon"),
            ("1d", "20000d"),
        ] {
            s.rotation = Some(Rotation {
                max_age: Some(max_age.into()),
                renew_before: Some(renew_before.into()),
                ..Default::default()
            });
            let err = resolve("a", &s, HOUR).unwrap_err();
            assert!(err.0.starts_with("spec.rotation."), "{err}");
        }
    }

    #[test]
    fn bad_target_name_is_invalid_spec() {
        let mut s = spec();
        s.target = Some(Target {
            name: Some("Not_A_Name".into()),
            ..Default::default()
        });
        let err = resolve("a", &s, HOUR).unwrap_err();
        assert!(err.0.contains("spec.target.name"), "{err}");
    }

    #[test]
    fn bad_source_key_is_invalid_spec() {
        let mut s = spec();
        s.source_ref.token_key = Some("a/b".into());
        assert!(resolve("a", &s, HOUR).unwrap_err().0.contains("tokenKey"));
    }

    #[test]
    fn api_key_needs_two_distinct_keys() {
        let mut s = spec();
        s.r#type = Some(CredentialType::ApiKey);
        s.source_ref.username_key = Some("k".into());
        s.source_ref.api_key_key = Some("k".into());
        assert!(resolve("a", &s, HOUR).is_err());
    }

    #[test]
    fn private_platform_needs_base_url() {
        let mut s = spec();
        s.verification = Some(Verification {
            platform: Some(Platform::PrivatePlatform),
            ..Default::default()
        });
        assert!(resolve("a", &s, HOUR).unwrap_err().0.contains("baseUrl"));
    }

    #[test]
    fn base_url_only_with_private_platform() {
        let mut s = spec();
        s.verification = Some(Verification {
            base_url: Some("https://pmp.example.com".into()),
            ..Default::default()
        });
        assert!(resolve("a", &s, HOUR).unwrap_err().0.contains("only used"));
        s.verification.as_mut().unwrap().base_url = Some(String::new());
        assert!(
            resolve("a", &s, HOUR).is_ok(),
            "an empty baseUrl is no baseUrl"
        );
        s.verification.as_mut().unwrap().enabled = Some(false);
        s.verification.as_mut().unwrap().base_url = Some("https://pmp.example.com".into());
        assert!(resolve("a", &s, HOUR).is_ok(), "not checked when disabled");
    }

    #[test]
    fn target_must_not_be_the_source() {
        let mut s = spec();
        assert!(resolve("raw", &s, HOUR).unwrap_err().0.contains("differ"));
        s.target = Some(Target {
            name: Some("raw".into()),
            ..Default::default()
        });
        assert!(resolve("a", &s, HOUR).unwrap_err().0.contains("differ"));
        s.target.as_mut().unwrap().name = Some("published".into());
        assert!(resolve("raw", &s, HOUR).is_ok());
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns_subdomain("a"));
        assert!(is_dns_subdomain("deploy-bot.mendix"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn reserved_and_replicating_metadata_keys_are_refused_by_name() {
        let with = |labels: &[&str], annotations: &[&str]| {
            let mut r = resolve("a", &spec(), HOUR).unwrap();
            r.target_labels = labels.iter().map(|k| (k.to_string(), "x".into())).collect();
            r.target_annotations = annotations
                .iter()
                .map(|k| (k.to_string(), "x".into()))
                .collect();
            r
        };
        let refused =
            |r: &Resolved, extra: &[String]| check_target_metadata(r, extra).unwrap_err().0;
        for key in [
            "kubernetes.io/service-account.name",
            "app.kubernetes.io/managed-by",
            "node-role.kubernetes.io/x",
            "k8s.io/x",
            "cluster-autoscaler.k8s.io/x",
            "mxcred.io/credential",
            "sub.mxcred.io/x",
            "reflector.v1.k8s.emberstack.com/reflection-allowed",
            "reflector.v1.k8s.emberstack.com/reflection-auto-namespaces",
            "kubed.appscode.com/sync",
            "replicator.v1.mittwald.de/replicate-to",
        ] {
            let message = refused(&with(&[], &[key]), &[]);
            assert!(message.contains(&format!("{key:?}")), "{message}");
            assert!(message.starts_with("spec.target.annotations"), "{message}");
            let message = refused(&with(&[key], &[]), &[]);
            assert!(message.starts_with("spec.target.labels"), "{message}");
        }
        for key in [
            "team",
            "app.kubernetes.io/part-of",
            "example.com/owner",
            "notkubernetes.io/x",
            "kubernetes.io.example.com/x",
            "argocd.argoproj.io/sync-wave",
        ] {
            assert_eq!(
                check_target_metadata(&with(&[key], &[key]), &[]),
                Ok(()),
                "{key}"
            );
        }
        // The administrator's prefixes.
        let extra = vec!["example.com/".to_owned(), "argocd.argoproj.io/".to_owned()];
        assert!(refused(&with(&["example.com/owner"], &[]), &extra).contains("example.com/owner"));
        assert!(
            refused(&with(&[], &["argocd.argoproj.io/sync-wave"]), &extra).contains("sync-wave")
        );
        assert_eq!(check_target_metadata(&with(&["team"], &[]), &extra), Ok(()));
    }
}
