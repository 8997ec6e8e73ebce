//! Probes: the platform endpoints a credential is checked against.
//!
//! A probe is a named endpoint ([`NamedProbe`]), whose answers are classified with what the
//! platform documents about it, or an `https://` URL given in the spec, classified by status code only.

use crate::api::{CredentialType, Platform};
use std::fmt;
use url::Url;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamedProbe {
    DeployApps,
    Projects,
    MarketplaceContent,
    DeployV1Apps,
    PrivatePlatformProjects,
}

impl NamedProbe {
    pub const ALL: [NamedProbe; 5] = [
        NamedProbe::DeployApps,
        NamedProbe::Projects,
        NamedProbe::MarketplaceContent,
        NamedProbe::DeployV1Apps,
        NamedProbe::PrivatePlatformProjects,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NamedProbe::DeployApps => "DeployApps",
            NamedProbe::Projects => "Projects",
            NamedProbe::MarketplaceContent => "MarketplaceContent",
            NamedProbe::DeployV1Apps => "DeployV1Apps",
            NamedProbe::PrivatePlatformProjects => "PrivatePlatformProjects",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The credential type the probe's API accepts.
    pub fn credential_type(self) -> CredentialType {
        match self {
            NamedProbe::DeployV1Apps => CredentialType::ApiKey,
            _ => CredentialType::PersonalAccessToken,
        }
    }

    /// The documented URL on Mendix Cloud; `None` for the Private Platform probe, whose URL
    /// hangs off the spec's base URL.
    pub fn cloud_url(self) -> Option<&'static str> {
        match self {
            NamedProbe::DeployApps => Some("https://cloud.home.mendix.com/api/v4/apps?limit=1"),
            NamedProbe::Projects => {
                Some("https://projects-api.home.mendix.com/v2/projects?limit=1")
            }
            NamedProbe::MarketplaceContent => {
                Some("https://marketplace-api.mendix.com/v1/content?limit=1")
            }
            NamedProbe::DeployV1Apps => Some("https://deploy.mendix.com/api/1/apps"),
            NamedProbe::PrivatePlatformProjects => None,
        }
    }

    /// Path (and query) below a Private Mendix Platform base URL.
    pub const PRIVATE_PLATFORM_PATH: &'static str = "projectservice/v1/projects";
}

impl fmt::Display for NamedProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a resource asks to be checked against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeTarget {
    Named {
        probe: NamedProbe,
        /// Base URL of a Private Mendix Platform (only for `PrivatePlatformProjects`).
        base_url: Option<Url>,
    },
    Url(Url),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("probe {0:?} is neither a named probe ({names}) nor an https:// URL", names = names())]
    Unknown(String),
    #[error("probe {probe} checks {expected:?} credentials, not {actual:?}")]
    WrongCredentialType {
        probe: NamedProbe,
        expected: CredentialType,
        actual: CredentialType,
    },
    #[error("{what} is not a valid URL")]
    BadUrl { what: &'static str },
    #[error("{what} must use https:// (or http:// when the operator allows it)")]
    BadScheme { what: &'static str },
    #[error("{what} must not contain a user name or password")]
    UserInfo { what: &'static str },
    #[error("probe PrivatePlatformProjects needs baseUrl")]
    MissingBaseUrl,
    #[error(
        "API keys have no default probe on a Private Mendix Platform: set probe to an https:// URL"
    )]
    NoDefaultProbe,
}

fn names() -> String {
    NamedProbe::ALL.map(NamedProbe::name).join(", ")
}

impl ProbeTarget {
    /// Picks the probe of a spec: the one named, the URL given, or the default for the
    /// credential type and platform.
    pub fn resolve(
        credential_type: CredentialType,
        platform: Platform,
        base_url: Option<&str>,
        probe: Option<&str>,
    ) -> Result<Self, ProbeError> {
        let base_url = base_url.map(|b| parse_url(b, "baseUrl")).transpose()?;
        let named = match probe.map(str::trim).filter(|p| !p.is_empty()) {
            // Named probes have no colon; anything with one is meant as a URL, and URL errors
            // never repeat the text (it could hold a password).
            Some(p) if p.contains(':') => return Ok(ProbeTarget::Url(parse_url(p, "probe")?)),
            Some(p) => NamedProbe::from_name(p).ok_or_else(|| ProbeError::Unknown(p.to_owned()))?,
            None => match (platform, credential_type) {
                (Platform::PrivatePlatform, CredentialType::PersonalAccessToken) => {
                    NamedProbe::PrivatePlatformProjects
                }
                (Platform::PrivatePlatform, CredentialType::ApiKey) => {
                    return Err(ProbeError::NoDefaultProbe);
                }
                (Platform::MendixCloud, CredentialType::PersonalAccessToken) => {
                    NamedProbe::DeployApps
                }
                (Platform::MendixCloud, CredentialType::ApiKey) => NamedProbe::DeployV1Apps,
            },
        };
        if named.credential_type() != credential_type {
            return Err(ProbeError::WrongCredentialType {
                probe: named,
                expected: named.credential_type(),
                actual: credential_type,
            });
        }
        if named == NamedProbe::PrivatePlatformProjects {
            let base_url = base_url.ok_or(ProbeError::MissingBaseUrl)?;
            return Ok(ProbeTarget::Named {
                probe: named,
                base_url: Some(base_url),
            });
        }
        Ok(ProbeTarget::Named {
            probe: named,
            base_url: None,
        })
    }

    pub fn named(&self) -> Option<NamedProbe> {
        match self {
            ProbeTarget::Named { probe, .. } => Some(*probe),
            ProbeTarget::Url(_) => None,
        }
    }
}

/// Parses a URL from the spec: http(s) only (whether http is allowed is the operator's call),
/// no user information (a credential in a URL would end up in logs and status).
fn parse_url(text: &str, what: &'static str) -> Result<Url, ProbeError> {
    let url = Url::parse(text.trim()).map_err(|_| ProbeError::BadUrl { what })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ProbeError::BadScheme { what });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ProbeError::UserInfo { what });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ProbeError::BadUrl { what });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CredentialType::*;
    use Platform::*;

    #[test]
    fn defaults_per_type_and_platform() {
        let named = |t, p, b| ProbeTarget::resolve(t, p, b, None).unwrap().named();
        assert_eq!(
            named(PersonalAccessToken, MendixCloud, None),
            Some(NamedProbe::DeployApps)
        );
        assert_eq!(
            named(ApiKey, MendixCloud, None),
            Some(NamedProbe::DeployV1Apps)
        );
        assert_eq!(
            named(
                PersonalAccessToken,
                PrivatePlatform,
                Some("https://pmp.example.com")
            ),
            Some(NamedProbe::PrivatePlatformProjects)
        );
        assert_eq!(
            ProbeTarget::resolve(
                ApiKey,
                PrivatePlatform,
                Some("https://pmp.example.com"),
                None
            ),
            Err(ProbeError::NoDefaultProbe)
        );
    }

    #[test]
    fn named_probe_must_fit_the_credential() {
        assert!(matches!(
            ProbeTarget::resolve(ApiKey, MendixCloud, None, Some("Projects")),
            Err(ProbeError::WrongCredentialType { .. })
        ));
        assert!(matches!(
            ProbeTarget::resolve(PersonalAccessToken, MendixCloud, None, Some("Nope")),
            Err(ProbeError::Unknown(_))
        ));
    }

    #[test]
    fn url_probes() {
        let ok = ProbeTarget::resolve(
            PersonalAccessToken,
            MendixCloud,
            None,
            Some("https://api.example.com/ping"),
        )
        .unwrap();
        assert!(matches!(ok, ProbeTarget::Url(u) if u.host_str() == Some("api.example.com")));
        for (bad, want) in [
            ("https://user:pw@example.com/", "user name"),
            ("ftp://example.com/", "https://"),
            ("file:///etc/passwd", "https://"),
            ("https://", "not a valid URL"),
            ("https:user:pw@host", "probe"),
        ] {
            let err = ProbeTarget::resolve(PersonalAccessToken, MendixCloud, None, Some(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }
}
