//! Reading and checking the credential held by a source Secret.
//!
//! From the moment its bytes leave the source Secret until they are written into the target
//! Secret or a request header, a credential lives in [`SecretString`]s, whose `Debug` prints
//! `[REDACTED]`: it cannot reach a log line or an error message by accident.

use crate::api::{CredentialType, LABEL_SOURCE};
use crate::spec::SourceKeys;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const MAX_SECRET_LEN: usize = 4096;
pub const MAX_USERNAME_LEN: usize = 256;

#[derive(Debug, Clone)]
pub enum Credential {
    PersonalAccessToken(SecretString),
    ApiKey {
        username: SecretString,
        api_key: SecretString,
    },
}

/// The type a source Secret must have.
pub const SOURCE_TYPE: &str = "Opaque";

/// Why a source Secret does not yield a credential. Never carries the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The Secret has not opted in. The same words whatever it lacks, so that nothing about a
    /// Secret the resource's author may not read (its type, labels, keys) is revealed.
    #[error(
        "Secret {secret:?} is not a source: a Secret opts in with type {SOURCE_TYPE} and the label \
         {LABEL_SOURCE}: \"true\" (kubectl label secret {secret} {LABEL_SOURCE}=true); it was not \
         read, and the target Secret was left as it was"
    )]
    NotAllowed { secret: String },
    #[error("Secret {secret:?} has no key {key:?}")]
    KeyMissing { secret: String, key: String },
    #[error("key {key:?} of Secret {secret:?} {problem}")]
    Invalid {
        secret: String,
        key: String,
        problem: Problem,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyPart {
    Username,
    ApiKey,
}

/// What is wrong with a value, in words that do not reveal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is empty (after trimming surrounding whitespace)")]
    Empty,
    #[error("is longer than the {max} bytes allowed")]
    TooLong { max: usize },
    #[error(
        "contains a byte that is not visible ASCII (such as a space, line break or non-ASCII character)"
    )]
    NotVisibleAscii,
    #[error("is not valid UTF-8")]
    NotUtf8,
    #[error("contains a control character (such as a line break)")]
    ControlCharacter,
}

impl Credential {
    /// A personal access token from raw bytes: surrounding whitespace trimmed, then checked.
    pub fn personal_access_token(value: &[u8]) -> Result<Self, Problem> {
        check_token(value.trim_ascii()).map(|t| Credential::PersonalAccessToken(t.into()))
    }

    /// An API key from raw bytes; the error tells which of the two values is wrong.
    pub fn api_key(username: &[u8], api_key: &[u8]) -> Result<Self, (ApiKeyPart, Problem)> {
        Ok(Credential::ApiKey {
            username: check_username(username.trim_ascii())
                .map_err(|p| (ApiKeyPart::Username, p))?
                .into(),
            api_key: check_token(api_key.trim_ascii())
                .map_err(|p| (ApiKeyPart::ApiKey, p))?
                .into(),
        })
    }

    /// Reads the credential of `credential_type` from a source Secret, if it has opted in
    /// ([`check_opt_in`]); a Secret that has not is not looked into.
    pub fn from_secret(
        credential_type: CredentialType,
        keys: &SourceKeys,
        secret: &Secret,
    ) -> Result<Self, SourceError> {
        check_opt_in(&keys.secret, secret)?;
        let empty = BTreeMap::new();
        Self::from_source(
            credential_type,
            keys,
            secret.data.as_ref().unwrap_or(&empty),
        )
    }

    /// Reads the credential of `credential_type` from the data of the source Secret.
    pub fn from_source(
        credential_type: CredentialType,
        keys: &SourceKeys,
        data: &BTreeMap<String, ByteString>,
    ) -> Result<Self, SourceError> {
        let field = |key: &str, check: fn(&[u8]) -> Result<String, Problem>| {
            let value = data.get(key).ok_or_else(|| SourceError::KeyMissing {
                secret: keys.secret.clone(),
                key: key.to_owned(),
            })?;
            check(value.0.trim_ascii())
                .map(SecretString::from)
                .map_err(|problem| SourceError::Invalid {
                    secret: keys.secret.clone(),
                    key: key.to_owned(),
                    problem,
                })
        };
        Ok(match credential_type {
            CredentialType::PersonalAccessToken => {
                Credential::PersonalAccessToken(field(&keys.token_key, check_token)?)
            }
            CredentialType::ApiKey => Credential::ApiKey {
                username: field(&keys.username_key, check_username)?,
                api_key: field(&keys.api_key_key, check_token)?,
            },
        })
    }

    /// `sha256:` and the 64 hex digits of the SHA-256 of the token (or of username, a line feed
    /// and key). Every decision that compares credentials (publication, a verdict carried
    /// over, whether a Secret holds the published one) compares these: a pair of credentials
    /// with the same [`Credential::fingerprint`] takes seconds to find, one with the same
    /// digest does not exist to be found.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        match self {
            Credential::PersonalAccessToken(token) => hash.update(token.expose_secret()),
            Credential::ApiKey { username, api_key } => {
                hash.update(username.expose_secret());
                hash.update(b"\n");
                hash.update(api_key.expose_secret());
            }
        }
        format!("sha256:{}", hex::encode(hash.finalize()))
    }

    /// `sha256:` and the first 12 hex digits of [`Credential::digest`]: enough for people to
    /// match Secrets to tokens, useless to recover them, and never what a decision compares.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.digest())
    }

    /// The HTTP headers that authenticate this credential, as (name, value) pairs.
    pub fn headers(&self) -> Vec<(&'static str, SecretString)> {
        match self {
            Credential::PersonalAccessToken(token) => vec![(
                "Authorization",
                format!("MxToken {}", token.expose_secret()).into(),
            )],
            Credential::ApiKey { username, api_key } => vec![
                ("Mendix-Username", username.clone()),
                ("Mendix-ApiKey", api_key.clone()),
            ],
        }
    }
}

/// The fingerprint of a digest: its first 12 hex digits (a fingerprint stays as it is).
pub fn fingerprint_of(digest: &str) -> String {
    digest.chars().take(FINGERPRINT_LEN).collect()
}

/// `sha256:` and 12 hex digits.
const FINGERPRINT_LEN: usize = "sha256:".len() + 12;

/// Whether `recorded` (a digest, from a status the operator wrote) names the credential whose
/// digest is `digest`. A status written before the operator recorded digests holds only the
/// fingerprint: that is compared until the next status write records the digest.
pub fn is_recorded(recorded: &str, digest: &str) -> bool {
    if recorded.len() == FINGERPRINT_LEN {
        return digest.starts_with(recorded);
    }
    recorded == digest
}

/// Whether a Secret has opted in as a source: type `Opaque` (an unset type is stored as
/// `Opaque`) and the label `mxcred.io/source: "true"`. Without this, whoever may create a
/// MendixCredential could make the operator copy any Secret of the namespace (a database
/// password, a ServiceAccount token) into a target they can read, or send it to a probe.
pub fn check_opt_in(name: &str, secret: &Secret) -> Result<(), SourceError> {
    let type_ok = secret.type_.as_deref().unwrap_or(SOURCE_TYPE) == SOURCE_TYPE;
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SOURCE))
        .is_some_and(|v| v == "true");
    if type_ok && labelled {
        Ok(())
    } else {
        Err(SourceError::NotAllowed {
            secret: name.to_owned(),
        })
    }
}

/// A token or API key: 1 to 4096 bytes of visible ASCII (0x21-0x7E). This also shuts out
/// header injection through CR or LF.
fn check_token(value: &[u8]) -> Result<String, Problem> {
    if value.is_empty() {
        return Err(Problem::Empty);
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(Problem::TooLong {
            max: MAX_SECRET_LEN,
        });
    }
    if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Problem::NotVisibleAscii);
    }
    // Visible ASCII is valid UTF-8, so this never fails.
    String::from_utf8(value.to_vec()).map_err(|_| Problem::NotVisibleAscii)
}

/// A login name: 1 to 256 bytes of UTF-8 without control characters.
fn check_username(value: &[u8]) -> Result<String, Problem> {
    if value.is_empty() {
        return Err(Problem::Empty);
    }
    if value.len() > MAX_USERNAME_LEN {
        return Err(Problem::TooLong {
            max: MAX_USERNAME_LEN,
        });
    }
    let text = std::str::from_utf8(value).map_err(|_| Problem::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(Problem::ControlCharacter);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SourceKeys {
        SourceKeys::defaults_of("raw")
    }

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect()
    }

    fn pat(value: &[u8]) -> Result<Credential, SourceError> {
        Credential::from_source(
            CredentialType::PersonalAccessToken,
            &keys(),
            &data(&[("token", value)]),
        )
    }

    fn problem(value: &[u8]) -> Problem {
        match pat(value) {
            Err(SourceError::Invalid { problem, .. }) => problem,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn trims_surrounding_whitespace() {
        let Credential::PersonalAccessToken(t) = pat(b"  abc-DEF_123\n").unwrap() else {
            panic!()
        };
        assert_eq!(t.expose_secret(), "abc-DEF_123");
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        assert_eq!(problem(b""), Problem::Empty);
        assert_eq!(problem(b" \n\t"), Problem::Empty);
        assert_eq!(problem(b"abc\r\nX-Injected: 1"), Problem::NotVisibleAscii);
        assert_eq!(problem(b"a b"), Problem::NotVisibleAscii);
        assert_eq!(problem("tökén".as_bytes()), Problem::NotVisibleAscii);
        assert_eq!(problem(&[0xff, 0xfe]), Problem::NotVisibleAscii);
        assert!(pat(&[b'a'; 4096]).is_ok());
        assert_eq!(problem(&[b'a'; 4097]), Problem::TooLong { max: 4096 });
        assert!(
            !pat(&[b'a'; 4097]).unwrap_err().to_string().contains("4097"),
            "no message tells a value's length"
        );
    }

    #[test]
    fn missing_key_names_secret_and_key() {
        let err = Credential::from_source(CredentialType::PersonalAccessToken, &keys(), &data(&[]))
            .unwrap_err();
        assert_eq!(err.to_string(), r#"Secret "raw" has no key "token""#);
    }

    #[test]
    fn error_messages_never_contain_the_value() {
        let secret = b"SECRET-VALUE\nmore";
        let err = pat(secret).unwrap_err();
        assert!(!err.to_string().contains("SECRET"));
        assert!(!format!("{err:?}").contains("SECRET"));
    }

    #[test]
    fn api_key_reads_both_values() {
        let c = Credential::from_source(
            CredentialType::ApiKey,
            &keys(),
            &data(&[("username", b"ci@example.com\n"), ("apiKey", b"k3y")]),
        )
        .unwrap();
        let headers: Vec<_> = c
            .headers()
            .into_iter()
            .map(|(n, v)| (n, v.expose_secret().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("Mendix-Username", "ci@example.com".to_owned()),
                ("Mendix-ApiKey", "k3y".to_owned())
            ]
        );
        assert!(!format!("{c:?}").contains("k3y"));
    }

    #[test]
    fn usernames_may_be_unicode_but_not_control() {
        let read = |u: &[u8]| {
            Credential::from_source(
                CredentialType::ApiKey,
                &keys(),
                &data(&[("username", u), ("apiKey", b"k")]),
            )
        };
        assert!(read("jöhn@example.com".as_bytes()).is_ok());
        for (bad, want) in [
            (&b"a\rb"[..], Problem::ControlCharacter),
            (&[0xc3, 0x28][..], Problem::NotUtf8),
            (&[b'u'; 257][..], Problem::TooLong { max: 256 }),
        ] {
            assert!(
                matches!(read(bad), Err(SourceError::Invalid { problem, .. }) if problem == want)
            );
        }
    }

    fn source(type_: Option<&str>, label: Option<&str>) -> Secret {
        let mut secret = Secret {
            type_: type_.map(str::to_owned),
            data: Some(data(&[
                ("token", b"tok-123"),
                ("password", b"hunter2-long"),
            ])),
            ..Default::default()
        };
        if let Some(value) = label {
            secret.metadata.labels = Some([(LABEL_SOURCE.to_owned(), value.to_owned())].into());
        }
        secret
    }

    #[test]
    fn only_a_labelled_opaque_secret_is_read() {
        let read =
            |s: &Secret| Credential::from_secret(CredentialType::PersonalAccessToken, &keys(), s);
        assert!(read(&source(Some("Opaque"), Some("true"))).is_ok());
        assert!(
            read(&source(None, Some("true"))).is_ok(),
            "unset type is Opaque"
        );
        let refused = [
            source(Some("Opaque"), None),
            source(Some("Opaque"), Some("false")),
            source(Some("Opaque"), Some("yes")),
            source(Some("kubernetes.io/service-account-token"), Some("true")),
            source(Some("kubernetes.io/dockerconfigjson"), Some("true")),
            source(Some("kubernetes.io/tls"), None),
        ];
        let messages: Vec<String> = refused
            .iter()
            .map(|s| match read(s) {
                Err(e @ SourceError::NotAllowed { .. }) => e.to_string(),
                other => panic!("expected NotAllowed, got {other:?}"),
            })
            .collect();
        // One message for every refusal: it tells nothing of the Secret's type, keys or values.
        assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
        let message = &messages[0];
        assert!(message.contains("mxcred.io/source"), "{message}");
        for hidden in [
            "password",
            "token\"",
            "hunter2",
            "tok-123",
            "12",
            "service-account",
        ] {
            assert!(!message.contains(hidden), "{message} reveals {hidden}");
        }
    }

    /// Two tokens whose fingerprints are equal (found by a cycle search over the 48 bits):
    /// what a tenant can make in seconds.
    const COLLIDING: [&str; 2] = ["mxforge-8f8b40ea2ff9", "mxforge-7cf267c610d5"];

    #[test]
    fn a_fingerprint_collision_is_not_a_digest_collision() {
        let [a, b] = COLLIDING.map(|t| pat(t.as_bytes()).unwrap());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.digest(), b.digest());
        assert!(is_recorded(&a.digest(), &a.digest()));
        assert!(!is_recorded(&a.digest(), &b.digest()));
        assert_eq!(a.digest().len(), "sha256:".len() + 64);
        assert_eq!(fingerprint_of(&a.digest()), a.fingerprint());
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let f = pat(b"token-1").unwrap().fingerprint();
        assert_eq!(f.len(), "sha256:".len() + 12);
        assert_eq!(f, pat(b"token-1\n").unwrap().fingerprint());
        assert_ne!(f, pat(b"token-2").unwrap().fingerprint());
    }
}
