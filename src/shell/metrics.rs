//! Prometheus metrics. Labels carry reasons, result words, hosts and HTTP codes: never a
//! credential, a resource's data or a response body.

use crate::domain::classify::{Reason, TokenValid};
use crate::domain::ready::ReadyReason;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenValidLabel {
    pub token_valid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    errors: Family<StepLabel, Counter>,
    verifications: Family<OutcomeLabel, Counter>,
    platform_requests: Family<RequestLabels, Counter>,
    platform_duration: Family<HostLabel, Histogram>,
    credentials: Family<TokenValidLabel, Gauge>,
    last_verification: Family<KindLabel, Gauge>,
    rotations: Family<ResultLabel, Counter>,
    rotations_held: Family<ReasonLabel, Gauge>,
    /// Serialises encoding with the refresh of the `mxcred_credentials` gauge.
    encoding: Mutex<()>,
    /// ClusterMendixCredentials by TokenValid status.
    cluster_credentials: Family<TokenValidLabel, Gauge>,
    /// MendixCredentials whose RotationDue is True.
    rotation_due: Gauge,
    /// ClusterMendixCredentials whose RotationDue is True.
    cluster_rotation_due: Gauge,
    /// The consumers of MendixCredentials whose credential is rejected.
    affected_workloads: Gauge,
    /// The consumers of ClusterMendixCredentials whose credential is rejected.
    cluster_affected_workloads: Gauge,
}

/// The steps of a reconcile that can fail, as the error metric labels them.
const STEPS: [&str; 7] = [
    "read_resource",
    "read_source",
    "read_target",
    "apply_target",
    "delete_previous_target",
    "write_status",
    "publish_event",
];

/// The results of a new credential, as the rotation metric labels them.
const ROTATION_RESULTS: [&str; 2] = ["published", "rejected"];
/// The Ready reasons of a rotation held back.
pub const HELD_REASONS: [ReadyReason; 2] =
    [ReadyReason::RotationRejected, ReadyReason::RotationPending];

/// A family of counters with each of `labels` from zero, so that increase() sees the first
/// count after a start.
fn zeroed<L, const N: usize>(labels: [L; N]) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for label in &labels {
        family.get_or_create(label).inc_by(0);
    }
    family
}

/// The operator's version, as a gauge of 1.
fn build_info() -> Family<VersionLabel, Gauge> {
    let info = Family::<VersionLabel, Gauge>::default();
    info.get_or_create(&VersionLabel {
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .set(1);
    info
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mxcred");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (the Ready reason, or error)",
            reconciles.clone(),
        );
        let reconcile_duration = seconds_histogram();
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let errors = zeroed(STEPS.map(|step| StepLabel { step: step.into() }));
        registry.register(
            "reconcile_errors",
            "Failed reconcile steps, by step (read_source, read_target, apply_target, delete_previous_target, write_status, publish_event, read_resource)",
            errors.clone(),
        );
        let verifications = zeroed(Reason::OUTCOMES.map(|reason| OutcomeLabel {
            outcome: reason.as_str().into(),
        }));
        registry.register(
            "verifications",
            "Verification attempts by outcome (the TokenValid reason)",
            verifications.clone(),
        );
        let platform_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "platform_requests",
            "Requests sent to the Mendix platform, by host and HTTP code (or error)",
            platform_requests.clone(),
        );
        let platform_duration = Family::<HostLabel, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "platform_request_duration_seconds",
            "Duration of requests to the Mendix platform",
            platform_duration.clone(),
        );
        // When the last attempt of each kind ended: an alert can then tell "the latest attempts
        // all failed" without a window, whatever the retry spacing (up to a day).
        let last_verification = Family::<KindLabel, Gauge>::default();
        for kind in ["definitive", "transient"] {
            last_verification.get_or_create(&KindLabel { kind }).set(0);
        }
        registry.register(
            "last_verification_timestamp_seconds",
            "Unix time of the last verification attempt with a definitive outcome (Verified, \
             TokenRejected, UserDeactivated) or a transient one; 0 when none since start",
            last_verification.clone(),
        );
        let credentials = Family::<TokenValidLabel, Gauge>::default();
        registry.register(
            "credentials",
            "MendixCredentials by TokenValid status (true, false, unknown)",
            credentials.clone(),
        );
        let rotations = zeroed(ROTATION_RESULTS.map(|result| ResultLabel {
            result: result.into(),
        }));
        registry.register(
            "rotations",
            "New credentials from a source Secret by result: published (replacing another), or \
             rejected by the platform before publication (rotation policy VerifyFirst)",
            rotations.clone(),
        );
        let rotations_held = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "rotations_held",
            "MendixCredentials whose new credential is held back, by Ready reason \
             (RotationRejected, RotationPending)",
            rotations_held.clone(),
        );
        registry.register("build_info", "The operator's version", build_info());
        let cluster_credentials = Family::<TokenValidLabel, Gauge>::default();
        registry.register(
            "cluster_credentials",
            "ClusterMendixCredentials by TokenValid status (true, false, unknown)",
            cluster_credentials.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let rotation_due = gauge(
            "credentials_rotation_due",
            "MendixCredentials whose RotationDue condition is True (MaxAgeExceeded, ExpiresSoon, \
             Expired)",
        );
        let cluster_rotation_due = gauge(
            "cluster_credentials_rotation_due",
            "ClusterMendixCredentials whose RotationDue condition is True (MaxAgeExceeded, \
             ExpiresSoon, Expired)",
        );
        let affected_workloads = gauge(
            "affected_workloads",
            "Workloads that use the Secret of a MendixCredential whose credential the platform \
             rejects (TokenValid False: TokenRejected, UserDeactivated)",
        );
        let cluster_affected_workloads = gauge(
            "cluster_affected_workloads",
            "Workloads that use a Secret of a ClusterMendixCredential whose credential the \
             platform rejects (TokenValid False: TokenRejected, UserDeactivated)",
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            verifications,
            platform_requests,
            platform_duration,
            credentials,
            last_verification,
            rotations,
            rotations_held,
            encoding: Mutex::default(),
            cluster_credentials,
            rotation_due,
            cluster_rotation_due,
            affected_workloads,
            cluster_affected_workloads,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// A new credential was published in place of another (`published`), or rejected before
    /// publication (`rejected`).
    pub fn rotated(&self, result: &str) {
        self.rotations
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A step of a reconcile failed (an Event that could not be published included).
    pub fn failed(&self, step: &str) {
        self.errors
            .get_or_create(&StepLabel { step: step.into() })
            .inc();
    }

    /// A verification attempt ended with `outcome`.
    pub fn verified(&self, outcome: Reason) {
        self.verifications
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().into(),
            })
            .inc();
        let kind = if outcome.status() != TokenValid::Unknown {
            "definitive"
        } else {
            "transient"
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_verification
            .get_or_create(&KindLabel { kind })
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// One request to the platform; `code` is the HTTP status, or `error` when none came back.
    pub fn platform_request(&self, host: &str, code: Option<u16>, took: Duration) {
        let code = code.map_or_else(|| "error".to_owned(), |c| c.to_string());
        self.platform_requests
            .get_or_create(&RequestLabels {
                host: host.into(),
                code,
            })
            .inc();
        self.platform_duration
            .get_or_create(&HostLabel { host: host.into() })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition; `token_valid` gives the current count of credentials per
    /// TokenValid status ("True", "False", "Unknown"), and `held` per Ready reason of a
    /// rotation held back, read from the controller's cache.
    pub fn encode(
        &self,
        token_valid: impl IntoIterator<Item = (&'static str, i64)>,
        held: impl IntoIterator<Item = (ReadyReason, i64)>,
    ) -> String {
        let _guard = self.encoding.lock();
        for reason in HELD_REASONS {
            self.rotations_held
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(0);
        }
        for (reason, count) in held {
            self.rotations_held
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(count);
        }
        for status in ["true", "false", "unknown"] {
            self.credentials
                .get_or_create(&TokenValidLabel {
                    token_valid: status.into(),
                })
                .set(0);
        }
        for (status, count) in token_valid {
            self.credentials
                .get_or_create(&TokenValidLabel {
                    token_valid: status.to_ascii_lowercase(),
                })
                .set(count);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Sets the counts of MendixCredentials and of ClusterMendixCredentials whose RotationDue is
    /// True, read from the controller's cache, before an [`Self::encode`].
    /// Sets the workloads that use a rejected credential, of each kind.
    pub fn set_affected_workloads(&self, namespaced: i64, cluster: i64) {
        let _guard = self.encoding.lock();
        self.affected_workloads.set(namespaced);
        self.cluster_affected_workloads.set(cluster);
    }

    pub fn set_rotation_due(&self, namespaced: i64, cluster: i64) {
        let _guard = self.encoding.lock();
        self.rotation_due.set(namespaced);
        self.cluster_rotation_due.set(cluster);
    }

    /// Sets the count of ClusterMendixCredentials per TokenValid status ("True", "False",
    /// "Unknown"), read from the controller's cache, before an [`Self::encode`].
    pub fn set_cluster_credentials(
        &self,
        token_valid: impl IntoIterator<Item = (&'static str, i64)>,
    ) {
        let _guard = self.encoding.lock();
        for status in ["true", "false", "unknown"] {
            self.cluster_credentials
                .get_or_create(&TokenValidLabel {
                    token_valid: status.into(),
                })
                .set(0);
        }
        for (status, count) in token_valid {
            self.cluster_credentials
                .get_or_create(&TokenValidLabel {
                    token_valid: status.to_ascii_lowercase(),
                })
                .set(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(text: &str, kind: &str) -> i64 {
        let prefix = format!("mxcred_last_verification_timestamp_seconds{{kind=\"{kind}\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix}in {text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn the_last_attempt_of_each_kind_is_timed() {
        let m = Metrics::default();
        let text = m.encode([], []);
        assert_eq!(
            (last(&text, "definitive"), last(&text, "transient")),
            (0, 0)
        );
        m.verified(Reason::PlatformUnavailable);
        let text = m.encode([], []);
        assert_eq!(last(&text, "definitive"), 0);
        assert!(last(&text, "transient") > 1_700_000_000);
        for outcome in [
            Reason::Verified,
            Reason::TokenRejected,
            Reason::UserDeactivated,
        ] {
            let m = Metrics::default();
            m.verified(outcome);
            let text = m.encode([], []);
            assert!(last(&text, "definitive") > 1_700_000_000, "{outcome:?}");
            assert_eq!(last(&text, "transient"), 0, "{outcome:?}");
        }
    }

    #[test]
    fn credentials_due_are_counted_per_kind() {
        let m = Metrics::default();
        let text = m.encode([], []);
        assert!(text.contains("mxcred_credentials_rotation_due 0"), "{text}");
        m.set_rotation_due(3, 1);
        m.set_affected_workloads(7, 2);
        let text = m.encode([], []);
        for line in [
            "mxcred_credentials_rotation_due 3",
            "mxcred_cluster_credentials_rotation_due 1",
            "mxcred_affected_workloads 7",
            "mxcred_cluster_affected_workloads 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn cluster_credentials_are_counted_apart() {
        let m = Metrics::default();
        m.set_cluster_credentials([("False", 2)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            r#"mxcred_cluster_credentials{token_valid="false"} 2"#,
            r#"mxcred_cluster_credentials{token_valid="true"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn exposes_every_family_with_its_prefix() {
        let m = Metrics::default();
        m.reconciled("Synced", Duration::from_millis(3));
        m.verified(Reason::Verified);
        m.failed("write_status");
        m.platform_request(
            "cloud.home.mendix.com",
            Some(200),
            Duration::from_millis(80),
        );
        m.platform_request("cloud.home.mendix.com", None, Duration::from_secs(5));
        let text = m.encode([("True", 2), ("Unknown", 1)], []);
        for line in [
            r#"mxcred_reconciles_total{result="Synced"} 1"#,
            r#"mxcred_verifications_total{outcome="Verified"} 1"#,
            r#"mxcred_reconcile_errors_total{step="write_status"} 1"#,
            r#"mxcred_reconcile_errors_total{step="read_source"} 0"#,
            r#"mxcred_platform_requests_total{host="cloud.home.mendix.com",code="200"} 1"#,
            r#"mxcred_platform_requests_total{host="cloud.home.mendix.com",code="error"} 1"#,
            r#"mxcred_credentials{token_valid="true"} 2"#,
            r#"mxcred_credentials{token_valid="false"} 0"#,
            r#"mxcred_credentials{token_valid="unknown"} 1"#,
            r#"mxcred_build_info{version=""#,
            "mxcred_reconcile_duration_seconds_count 1",
            r#"mxcred_platform_request_duration_seconds_count{host="cloud.home.mendix.com"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
