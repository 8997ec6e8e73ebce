//! The `MendixCredential` custom resource (`mxcred.io/v1alpha1`) and the names that form the
//! public interface: labels, annotations, condition types and reasons.
//!
//! Optional fields are `Option<T>` with no schema default; defaults are applied in code
//! ([`crate::spec`]), so GitOps tools see no drift between what they applied and what is stored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// SSA field manager, Event reporter and `managed-by` label value.
pub const MANAGER: &str = "mxcred-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_CREDENTIAL: &str = "mxcred.io/credential";
/// The label naming, on each copy, the ClusterMendixCredential that published it.
pub const LABEL_CLUSTER_CREDENTIAL: &str = "mxcred.io/cluster-credential";

/// The two kinds of resource, by their scope: what sets apart the marks each leaves (the label
/// of its targets, the annotation and field manager of its restarts) and where the answers of
/// the verification loop go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A MendixCredential: one target, in its own namespace.
    Namespaced,
    /// A ClusterMendixCredential: one target in each selected namespace.
    Cluster,
}

impl Scope {
    /// The label that names, on each target, the resource that published it.
    pub fn target_label(self) -> &'static str {
        match self {
            Scope::Namespaced => LABEL_CREDENTIAL,
            Scope::Cluster => LABEL_CLUSTER_CREDENTIAL,
        }
    }
}
/// The label by which a Secret opts in as a source (value `"true"`).
pub const LABEL_SOURCE: &str = "mxcred.io/source";
pub const ANNOTATION_FINGERPRINT: &str = "mxcred.io/token-fingerprint";
pub const ANNOTATION_VERIFY_REQUESTED_AT: &str = "mxcred.io/verify-requested-at";
/// On the source Secret: when the credential was issued (RFC 3339); its age counts from then.
pub const ANNOTATION_ISSUED_AT: &str = "mxcred.io/issued-at";
/// On the source Secret: when the credential expires (RFC 3339).
pub const ANNOTATION_EXPIRES_AT: &str = "mxcred.io/expires-at";

/// A Mendix platform credential, published as a Secret that CI runners use as HTTP headers or
/// environment variables, and verified against the platform at an interval.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    // The generated code names kube-core and kube-derive, not the kube facade (a client crate).
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    attr = r#"x_kube(crates(kube_core = "::kube_core"))"#,
    group = "mxcred.io",
    version = "v1alpha1",
    kind = "MendixCredential",
    plural = "mendixcredentials",
    shortname = "mxcred",
    shortname = "mxc",
    category = "mendix",
    namespaced,
    status = "MendixCredentialStatus",
    doc = "A Mendix platform credential (personal access token or API key), read from a Secret in the same namespace and published as a Secret that CI runners use as HTTP headers or environment variables. The operator verifies it against the Mendix platform at an interval.",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.credentialType"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Sync","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"TokenValid\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"TokenValid\")].reason"}"#,
    printcolumn = r#"{"name":"Last Verified","type":"date","jsonPath":".status.lastVerifiedTime"}"#,
    printcolumn = r#"{"name":"Rotate-By","type":"string","format":"date-time","jsonPath":".status.rotateBy"}"#,
    printcolumn = r#"{"name":"Consumers","type":"integer","description":"workloads that use the Secret","jsonPath":".status.consumers.count"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Checked at apply time; the operator refuses the same specs in status (`domain::spec`), for
    // objects written before a rule existed. Here, not on the spec, because only the root sees
    // the name the target defaults to.
    validation = Rule::new("(has(self.spec.target) && has(self.spec.target.name) ? self.spec.target.name : self.metadata.name) != self.spec.sourceRef.name")
        .message("the target Secret would be the source Secret: spec.target.name (default: the resource's name) must differ from spec.sourceRef.name")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = credential_rules)]
pub struct MendixCredentialSpec {
    /// Kind of credential held by the source Secret: PersonalAccessToken (header
    /// `Authorization: MxToken <token>`) or ApiKey (headers `Mendix-Username` and
    /// `Mendix-ApiKey`). Defaults to PersonalAccessToken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub r#type: Option<CredentialType>,

    /// The Secret, in the same namespace as this resource, that holds the plaintext credential.
    pub source_ref: SourceRef,

    /// The Secret this operator writes for CI runners. Defaults to a Secret named like this
    /// resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,

    /// How and how often the credential is checked against the Mendix platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,

    /// What happens when the source Secret holds a new credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
}

/// How a new credential in the source Secret replaces the published one.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// VerifyFirst: while the published credential is known good (TokenValid True), a new one
    /// is checked against the probe first and published only if the platform accepts it; a
    /// rejected one is held back (Ready False, RotationRejected) and the target keeps the
    /// working credential. Immediate: a new credential is published at once. Defaults to
    /// VerifyFirst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub policy: Option<RotationPolicy>,
    /// How old the published credential may grow, as a duration such as "90d" or "2160h":
    /// older, it is reported due for rotation (condition RotationDue True, reason
    /// MaxAgeExceeded). Its age counts from the source Secret's annotation mxcred.io/issued-at
    /// (RFC 3339), or else from when the operator first published it (status.publishedTime).
    /// Defaults to the operator's --default-max-age (none by default: no maximum age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub max_age: Option<String>,
    /// How long before the expiry the source Secret's annotation mxcred.io/expires-at gives
    /// (RFC 3339) the credential is reported due for rotation (condition RotationDue True,
    /// reason ExpiresSoon; Expired once past), as a duration such as "14d". Defaults to 14d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub renew_before: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationPolicy {
    #[default]
    VerifyFirst,
    Immediate,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CredentialType {
    #[default]
    PersonalAccessToken,
    ApiKey,
}

/// Where the plaintext credential is read from. Always a Secret in the resource's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// Name of the source Secret in this resource's namespace.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME))]
    pub name: String,
    /// Key holding the personal access token (type PersonalAccessToken). Defaults to "token".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_KEY))]
    pub token_key: Option<String>,
    /// Key holding the Mendix login name (type ApiKey). Defaults to "username".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_KEY))]
    pub username_key: Option<String>,
    /// Key holding the API key (type ApiKey). Defaults to "apiKey".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_KEY))]
    pub api_key_key: Option<String>,
}

/// The Secret written for CI runners, in this resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the target Secret. Defaults to the name of this resource. Must differ from
    /// spec.sourceRef.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_NAME))]
    pub name: Option<String>,
    /// Labels copied onto the target Secret (at most 16). Keys under kubernetes.io/, k8s.io/,
    /// mxcred.io/ and replication keys (Reflector, kubed, kubernetes-replicator) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = target_labels)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations copied onto the target Secret (at most 16, each value at most 1024
    /// characters). The same keys as for labels are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = target_annotations)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Workloads of this namespace (at most 16), each given by kind (Deployment, StatefulSet or
    /// DaemonSet) and name, restarted when the published credential changes, so that those
    /// reading it from environment variables pick it up. A workload is restarted only with its
    /// own consent: its annotation mxcred.io/restart-on (on the workload, set by whoever may
    /// edit it) must name this resource (a comma-separated list of names; cluster/<name> names
    /// a ClusterMendixCredential); without it, it is left alone and reported (reason
    /// NoConsent). The operator sets the annotation restart.mxcred.io/<this resource's name>
    /// of each one's pod template to the credential's fingerprint (by server-side apply),
    /// which rolls it out once per change and never again for the same credential (an
    /// operator restart changes nothing); one workload is restarted at most once per
    /// --restart-min-interval (1m by default), changes within it coming to one later restart.
    /// A workload newly added to the list is annotated, and so restarted, once. Needs the chart
    /// value rolloutRestart.enabled=true; problems are reported in status.rolloutRestart and
    /// never hold up the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ROLLOUT_RESTART), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart: Option<Vec<WorkloadRef>>,
}

/// A workload in the resource's namespace.
#[derive(
    Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct WorkloadRef {
    /// Deployment, StatefulSet or DaemonSet (group apps).
    pub kind: WorkloadKind,
    /// Name of the workload in this resource's namespace.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME))]
    pub name: String,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// How many workloads `spec.target.rolloutRestart` may list.
pub const MAX_ROLLOUT_RESTART: u32 = 16;

/// Periodic verification of the credential against the Mendix platform.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.enabled) && !self.enabled) || !has(self.platform) || self.platform != 'PrivatePlatform' || (has(self.baseUrl) && self.baseUrl != '')",
        "message": "baseUrl is required when platform is PrivatePlatform"
    },
    {
        "rule": "(has(self.enabled) && !self.enabled) || !has(self.baseUrl) || self.baseUrl == '' || (has(self.platform) && self.platform == 'PrivatePlatform')",
        "message": "baseUrl is only used with platform PrivatePlatform"
    },
    {
        "rule": "(has(self.enabled) && !self.enabled) || !has(self.probe) || self.probe.trim() == '' || (self.probe.contains(':') ? self.probe.trim().matches('^https?://') : self.probe.trim() in ['DeployApps', 'Projects', 'MarketplaceContent', 'DeployV1Apps', 'PrivatePlatformProjects'])",
        "message": "probe must be a named probe (DeployApps, Projects, MarketplaceContent, DeployV1Apps, PrivatePlatformProjects) or an http(s):// URL"
    }
]))]
pub struct Verification {
    /// Whether the credential is verified at all. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Time between two checks, as a duration such as "30m", "1h" or "1d". At least 1m.
    /// Defaults to the operator's default interval (1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // CEL's duration() reads Go's syntax only ("90s", "1h30m"); other spellings ("1d",
    // "2 hours") are left to the operator, which refuses the same intervals under 1m.
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [{
        "rule": "!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || duration(self) >= duration('1m')",
        "message": "interval must be at least 1m"
    }, {
        "rule": "!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || duration(self) <= duration('8784h')",
        "message": "interval must be at most 366d"
    }]))]
    pub interval: Option<String>,
    /// Which platform issued the credential: MendixCloud or PrivatePlatform. Defaults to
    /// MendixCloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub platform: Option<Platform>,
    /// Base URL of a Private Mendix Platform, e.g. https://pmp.example.com. Required for
    /// PrivatePlatform; its host must be allowed by the operator's administrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Bounded so that the API server's cost estimate of the CEL rules on this object stays low.
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,
    /// The probe: a named probe (DeployApps, Projects, MarketplaceContent, DeployV1Apps,
    /// PrivatePlatformProjects) or an https:// URL answered with 2xx for a working credential.
    /// Defaults to DeployApps for personal access tokens, DeployV1Apps for API keys and
    /// PrivatePlatformProjects on a Private Mendix Platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub probe: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Platform {
    #[default]
    MendixCloud,
    PrivatePlatform,
}

/// Observed state, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MendixCredentialStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The credential type in effect: spec.type, or its default (PersonalAccessToken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub credential_type: Option<CredentialType>,
    /// Name of the target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// sha256 fingerprint of the published credential ("sha256:" and 12 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// SHA-256 of the published credential ("sha256:" and 64 hex digits), of which
    /// tokenFingerprint is the start: what the operator compares to decide whether a
    /// credential is the published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_digest: Option<String>,
    /// Fingerprint of a new credential in the source Secret that is not published yet: it
    /// waits for the platform's verdict (RotationPending) or was rejected (RotationRejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_fingerprint: Option<String>,
    /// When the target Secret's data was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_time: Option<Time>,
    /// When the operator first published the credential of tokenFingerprint: its age counts
    /// from then, unless the source Secret's annotation mxcred.io/issued-at says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_time: Option<Time>,
    /// The date by which to publish a new credential: the earlier of the end of
    /// spec.rotation.maxAge and the expiry of mxcred.io/expires-at. Absent when neither applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_by: Option<Time>,
    /// When the platform last gave a definitive answer about the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// When the next check is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verification_time: Option<Time>,
    /// Why the last check attempt failed, if it did (short and sanitized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification_error: Option<String>,
    /// Ready: the target Secret holds the current source credential. TokenValid: the platform
    /// accepted the credential at the last definitive check. RotationDue: the published
    /// credential is older than spec.rotation.maxAge (MaxAgeExceeded), expires within
    /// spec.rotation.renewBefore (ExpiresSoon) or has expired (Expired); absent when neither a
    /// maximum age nor an expiry applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The workloads of spec.target.rolloutRestart as the operator last found them: the
    /// credential fingerprint each one's pod template holds, and why it does not hold the
    /// current one (reason NotFound, NoConsent, Forbidden, Invalid or Failed, and a message). A workload
    /// without a reason runs the current credential, or is rolling out to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart: Vec<RolloutRestartStatus>,
    /// The workloads that use the target Secret: how many, and the first 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<crate::consumers::Consumers>,
}

impl MendixCredentialStatus {
    /// The digest of the published credential; a status written before digests were recorded
    /// has only its fingerprint.
    pub fn published_digest(&self) -> Option<&str> {
        self.token_digest
            .as_deref()
            .or(self.token_fingerprint.as_deref())
    }
}

/// A workload of spec.target.rolloutRestart, as the operator last found it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartStatus {
    /// Deployment, StatefulSet or DaemonSet, as listed in spec.target.rolloutRestart.
    pub kind: WorkloadKind,
    /// Name of the workload in this resource's namespace.
    pub name: String,
    /// The fingerprint of the credential the workload's pod template holds under the
    /// annotation restart.mxcred.io/<this resource's name>: the credential it was last
    /// restarted for. Absent when it holds none (or does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why the workload could not be brought to the current credential: NotFound (no such
    /// workload), NoConsent (its annotation mxcred.io/restart-on does not name this resource:
    /// left alone), Forbidden (the operator may not read or patch it: install the chart with
    /// rolloutRestart.enabled=true), Invalid (the API server refused the change) or Failed
    /// (the API server did not answer; tried again). Absent when it holds the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub reason: Option<RolloutRestartProblem>,
    /// What happened and what to do, when there is a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum RolloutRestartProblem {
    NotFound,
    /// The workload does not name the credential in its annotation mxcred.io/restart-on.
    NoConsent,
    Forbidden,
    Invalid,
    Failed,
}

/// What the API server accepts as a Secret's name (a DNS subdomain) and as a key of its data.
pub(crate) const SECRET_NAME: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub(crate) const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// How many labels, and annotations, `spec.target` may carry. With the other bounds of the
/// schema, a resource's spec stays under about 20 KiB, so what the operator caches of each
/// resource is bounded whatever a tenant writes.
pub const MAX_LABELS: u64 = 16;
pub const MAX_ANNOTATIONS: u64 = 16;

/// A map of at most `N` entries whose values are at most `LEN` characters.
pub(crate) fn bounded_map<const N: u64, const LEN: u64>(schema: &mut schemars::Schema) {
    schema.insert("maxProperties".into(), N.into());
    if let Some(values) = schema.get_mut("additionalProperties")
        && let Some(values) = values.as_object_mut()
    {
        values.insert("maxLength".into(), LEN.into());
    }
}

/// `spec.target.labels`: at most [`MAX_LABELS`] labels, each key a qualified name outside the
/// denied domains and each value a label value, as the API server requires of the target.
pub(crate) fn target_labels(schema: &mut schemars::Schema) {
    bounded_map::<MAX_LABELS, 63>(schema);
    let mut rules = metadata_key_rules("labels");
    rules.push(serde_json::json!({
        "rule": format!("self.all(k, self[k].matches('{LABEL_VALUE}'))"),
        "message": "label values must be at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit",
    }));
    schema.insert("x-kubernetes-validations".into(), rules.into());
}

/// `spec.target.annotations`: at most [`MAX_ANNOTATIONS`] annotations of at most 1024
/// characters, each key a qualified name outside the denied domains.
pub(crate) fn target_annotations(schema: &mut schemars::Schema) {
    bounded_map::<MAX_ANNOTATIONS, 1024>(schema);
    schema.insert(
        "x-kubernetes-validations".into(),
        metadata_key_rules("annotations").into(),
    );
}

/// Domains whose label and annotation keys a spec may not put on a target Secret (the domain and
/// its subdomains): Kubernetes' own (`kubernetes.io`, `k8s.io`, such as
/// `kubernetes.io/service-account.name`), this operator's, and the replication keys of
/// Reflector, kubed and kubernetes-replicator, which would copy the token into other namespaces.
pub const DENIED_METADATA_DOMAINS: [&str; 6] = [
    "kubernetes.io",
    "k8s.io",
    "mxcred.io",
    "reflector.v1.k8s.emberstack.com",
    "kubed.appscode.com",
    "replicator.v1.mittwald.de",
];

/// A qualified name (`[prefix/]name`), as label and annotation keys are; the prefix a DNS
/// subdomain, the name at most 63 characters. In CEL's string syntax (backslashes doubled).
const QUALIFIED_NAME: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value, in CEL's string syntax.
const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// The CEL rules of a metadata map's keys: the same refusals as
/// [`crate::spec::check_target_metadata`] makes of the keys, but for the prefixes the
/// operator's administrator adds, which only the operator knows.
fn metadata_key_rules(field: &str) -> Vec<serde_json::Value> {
    let domains = DENIED_METADATA_DOMAINS
        .map(|d| d.replace('.', r"\\."))
        .join("|");
    vec![
        serde_json::json!({
            "rule": format!("self.all(k, k.matches('{QUALIFIED_NAME}'))"),
            "message": format!("{field} keys must be qualified names: an optional DNS subdomain and '/', then at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"),
        }),
        serde_json::json!({
            "rule": format!("self.all(k, !k.matches('^([^/]*\\\\.)?({domains})/') || (k.startsWith('app.kubernetes.io/') && k != 'app.kubernetes.io/managed-by'))"),
            "message": format!("{field} keys under kubernetes.io/, k8s.io/ (and their subdomains, but for the recommended app.kubernetes.io/ labels), mxcred.io/ and the replication keys of Reflector, kubed and kubernetes-replicator are refused"),
        }),
    ]
}

/// The CEL rules of a spec of either kind that tie its fields together: the credential type
/// with the source keys and the probe. The operator refuses the same specs in status
/// ([`crate::spec::resolve`]).
pub(crate) fn credential_rules(schema: &mut schemars::Schema) {
    const VERIFIED: &str =
        "has(self.verification) && !(has(self.verification.enabled) && !self.verification.enabled)";
    const PROBE: &str = "has(self.verification.probe) ? self.verification.probe.trim() : ''";
    const API_KEY: &str = "has(self.type) && self.type == 'ApiKey'";
    let rules = serde_json::json!([
        {
            "rule": format!("!({API_KEY}) || (has(self.sourceRef.usernameKey) ? self.sourceRef.usernameKey : 'username') != (has(self.sourceRef.apiKeyKey) ? self.sourceRef.apiKeyKey : 'apiKey')"),
            "message": "sourceRef.usernameKey and sourceRef.apiKeyKey must name different keys",
        },
        {
            "rule": format!("!({VERIFIED}) || !({API_KEY}) || !(({PROBE}) in ['DeployApps', 'Projects', 'MarketplaceContent', 'PrivatePlatformProjects'])"),
            "message": "probes DeployApps, Projects, MarketplaceContent and PrivatePlatformProjects check personal access tokens, not API keys",
        },
        {
            "rule": format!("!({VERIFIED}) || {API_KEY} || ({PROBE}) != 'DeployV1Apps'"),
            "message": "probe DeployV1Apps checks API keys, not personal access tokens",
        },
        {
            "rule": format!("!({VERIFIED}) || !({API_KEY}) || !has(self.verification.platform) || self.verification.platform != 'PrivatePlatform' || ({PROBE}) != ''"),
            "message": "API keys have no default probe on a Private Mendix Platform: set verification.probe to an https:// URL",
        },
    ]);
    schema.insert("x-kubernetes-validations".into(), rules);
}

/// An optional enum is generated with `null` among its values, which the API server's OpenAPI
/// validation rejects; the field being optional is enough.
pub(crate) fn enum_without_null(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Array(values)) = schema.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
}

/// Condition types.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const TOKEN_VALID: &str = "TokenValid";
    pub const ROTATION_DUE: &str = "RotationDue";
}
