//! The cluster-scoped `ClusterMendixCredential`: one source Secret published into every selected
//! namespace. Its API types and its pure decisions: which namespaces are selected, what to do
//! with the copy in each, and the status and Events of a reconcile.
//!
//! The status shares its credential half (fingerprint, times, `TokenValid`) with
//! `MendixCredential`, and so does the decision about it: [`plan`] runs [`crate::plan`]
//! on that half and adds what is per namespace.

use crate::api::{
    CredentialType, MendixCredentialSpec, Rotation, SECRET_KEY, SECRET_NAME, SourceRef, Target,
    Verification, credential_rules, enum_without_null, target_annotations, target_labels,
};
use crate::api::{
    MAX_LABELS, MAX_ROLLOUT_RESTART, RolloutRestartProblem, WorkloadKind, WorkloadRef,
};
use crate::render;
use crate::spec::InvalidSpec;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, Time};
use kube_core::{Selector, SelectorExt};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::api::LABEL_CLUSTER_CREDENTIAL;
/// How many namespaces `status.failedNamespaces` lists; `failedNamespaceCount` counts them all.
pub const MAX_FAILED_NAMESPACES: usize = 20;
/// How many workloads `status.rolloutRestartFailures` lists.
pub const MAX_RESTART_FAILURES: usize = 20;

/// A Mendix platform credential published into many namespaces, for cluster administrators.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    // The generated code names kube-core and kube-derive, not the kube facade (a client crate).
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "mxcred.io",
    version = "v1alpha1",
    kind = "ClusterMendixCredential",
    plural = "clustermendixcredentials",
    shortname = "cmxcred",
    shortname = "cmxc",
    category = "mendix",
    status = "ClusterMendixCredentialStatus",
    doc = "A Mendix platform credential (personal access token or API key) for cluster administrators: read from one opted-in Secret and published as the same Secret in every selected namespace (a label selector and/or a list; nothing is selected unless the spec says so). Secrets of the same name that the operator did not publish are never touched; such namespaces are listed in status.failedNamespaces. The credential is verified against the Mendix platform once per interval, however many namespaces.",
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","description":"synced/selected","jsonPath":".status.namespaces"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"TokenValid\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"TokenValid\")].reason"}"#,
    printcolumn = r#"{"name":"Rotate-By","type":"string","format":"date-time","jsonPath":".status.rotateBy"}"#,
    printcolumn = r#"{"name":"Consumers","type":"integer","description":"workloads that use the Secrets","jsonPath":".status.consumers.count"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = credential_rules)]
pub struct ClusterMendixCredentialSpec {
    /// Kind of credential held by the source Secret: PersonalAccessToken (header
    /// `Authorization: MxToken <token>`) or ApiKey (headers `Mendix-Username` and
    /// `Mendix-ApiKey`). Defaults to PersonalAccessToken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub r#type: Option<CredentialType>,

    /// The Secret that holds the plaintext credential, in the namespace named here. It must opt
    /// in: type Opaque and the label mxcred.io/source: "true".
    pub source_ref: ClusterSourceRef,

    /// The Secret written into each selected namespace, and which namespaces are selected.
    pub target: ClusterTarget,

    /// How and how often the credential is checked against the Mendix platform: once per
    /// interval for all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,

    /// What happens when the source Secret holds a new credential: checked once, for all
    /// namespaces, before it replaces the published one (VerifyFirst, the default), or published
    /// at once (Immediate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
}

/// Where the plaintext credential is read from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSourceRef {
    /// Namespace of the source Secret.
    #[schemars(length(min = 1, max = 63), pattern(NAMESPACE_NAME))]
    pub namespace: String,
    /// Name of the source Secret.
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

/// The Secret written into each selected namespace. The selected namespaces are those matching
/// namespaceSelector and those listed in namespaces (the union); nothing else.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTarget {
    /// Name of the Secret in each selected namespace. Defaults to the name of this resource.
    /// Must differ from spec.sourceRef.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_NAME))]
    pub name: Option<String>,
    /// Namespaces whose labels match this selector are selected. An empty selector ({})
    /// selects nothing, unlike elsewhere in Kubernetes: copies of a credential go only where
    /// the spec says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_selector)]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces selected by name (at most 256), in addition to those the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 63), pattern(NAMESPACE_NAME))
    )]
    pub namespaces: Option<Vec<String>>,
    /// Labels copied onto each Secret (at most 16). Keys under kubernetes.io/, k8s.io/,
    /// mxcred.io/ and replication keys (Reflector, kubed, kubernetes-replicator) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = target_labels)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations copied onto each Secret (at most 16, each value at most 1024 characters).
    /// The same keys as for labels are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = target_annotations)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Workloads (at most 16), each given by kind (Deployment, StatefulSet or DaemonSet) and
    /// name, restarted in every selected namespace once its Secret holds a new credential, so
    /// that those reading it from environment variables pick it up. The same names apply in
    /// each namespace; a namespace without such a workload is skipped (not a failure). A
    /// workload is restarted only with its own consent: its annotation mxcred.io/restart-on
    /// (on the workload, set by whoever may edit it) must list cluster/<this resource's name>
    /// (comma-separated); without it, it is left alone and reported (reason NoConsent). The
    /// operator sets the annotation cluster.restart.mxcred.io/<this resource's name> of each
    /// one's pod template to the credential's fingerprint (by server-side apply, field manager
    /// mxcred-operator/cluster-restart/<this resource's name>), which rolls it out once per
    /// change and never again for the same credential (an operator restart changes nothing);
    /// one workload is restarted at most once per --restart-min-interval (1m by default),
    /// changes within it coming to one later restart. Needs the chart value
    /// rolloutRestart.enabled=true; problems are reported in status.rolloutRestartFailures and never hold up the Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ROLLOUT_RESTART), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart: Option<Vec<WorkloadRef>>,
}

/// Observed state, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMendixCredentialStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The credential type in effect: spec.type, or its default (PersonalAccessToken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = enum_without_null)]
    pub credential_type: Option<CredentialType>,
    /// Name of the Secret in each selected namespace.
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
    /// When a Secret's data was last written, in any namespace.
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
    /// How many existing, active namespaces are selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<i32>,
    /// How many selected namespaces hold the current credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<i32>,
    /// "synced/selected", for kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<String>,
    /// Namespaces that do not hold the credential, and why: the first 20 by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub failed_namespaces: Vec<FailedNamespace>,
    /// How many namespaces failed in all (failedNamespaces lists at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_namespace_count: Option<i32>,
    /// Workloads of spec.target.rolloutRestart that could not be brought to the current
    /// credential, and why: the first 20 by namespace, kind and name. A namespace without
    /// such a workload is not listed. They never change Ready, and are tried again every
    /// minute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub rollout_restart_failures: Vec<RolloutRestartFailure>,
    /// How many workloads could not be brought to the current credential in all
    /// (rolloutRestartFailures lists at most 20). Absent without spec.target.rolloutRestart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart_failure_count: Option<i32>,
    /// Ready: every selected namespace holds the current source credential. TokenValid: the
    /// platform accepted the credential at the last definitive check. RotationDue: the
    /// published credential is older than spec.rotation.maxAge (MaxAgeExceeded), expires
    /// within spec.rotation.renewBefore (ExpiresSoon) or has expired (Expired); absent when
    /// neither a maximum age nor an expiry applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The workloads that use the Secret, in all selected namespaces: how many, and the first
    /// 20 by namespace, kind and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<crate::consumers::Consumers>,
}

/// A namespace that does not hold the credential.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedNamespace {
    /// The namespace.
    pub namespace: String,
    /// TargetConflict (a Secret of that name exists and was not published by this resource),
    /// InvalidTarget (the API server refused the Secret), WriteFailed (the write failed; it is
    /// retried), NamespaceNotFound (listed, does not exist) or NamespaceTerminating (being
    /// deleted).
    pub reason: String,
    /// What happened, without any value of the credential.
    pub message: String,
}

/// A workload of spec.target.rolloutRestart in one namespace that could not be brought to the
/// current credential.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartFailure {
    /// The namespace.
    pub namespace: String,
    /// Deployment, StatefulSet or DaemonSet, as listed in spec.target.rolloutRestart.
    pub kind: WorkloadKind,
    /// Name of the workload in that namespace.
    pub name: String,
    /// NoConsent (its annotation mxcred.io/restart-on does not list cluster/<this resource's
    /// name>: left alone), Forbidden (the operator may not read or patch it: install the chart
    /// with rolloutRestart.enabled=true), Invalid (the API server refused the change) or Failed
    /// (the API server did not answer; tried again).
    pub reason: RolloutRestartProblem,
    /// What happened and what to do.
    pub message: String,
}

/// What the API server accepts as a namespace's name (a DNS label).
const NAMESPACE_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Bounds a label selector: at most 16 labels and 16 expressions of at most 16 values; and
/// lets its map and list be null, as a server-side apply that removes their last entry leaves
/// them.
fn bounded_selector(schema: &mut schemars::Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    if let Some(labels) = properties
        .get_mut("matchLabels")
        .and_then(|l| l.as_object_mut())
    {
        labels.insert("maxProperties".into(), MAX_LABELS.into());
        labels.insert("nullable".into(), true.into());
        if let Some(values) = labels
            .get_mut("additionalProperties")
            .and_then(|v| v.as_object_mut())
        {
            values.insert("maxLength".into(), 63.into());
        }
    }
    if let Some(expressions) = properties
        .get_mut("matchExpressions")
        .and_then(|e| e.as_object_mut())
    {
        expressions.insert("maxItems".into(), 16.into());
        expressions.insert("nullable".into(), true.into());
        let requirement = expressions
            .get_mut("items")
            .and_then(|i| i.get_mut("properties"))
            .and_then(|p| p.as_object_mut());
        for (field, bound) in requirement.into_iter().flat_map(|r| r.iter_mut()) {
            let Some(field_schema) = bound.as_object_mut() else {
                continue;
            };
            match field.as_str() {
                // A qualified label key: a 253-character prefix, '/', a 63-character name.
                "key" => {
                    field_schema.insert("maxLength".into(), 317.into());
                }
                "operator" => {
                    field_schema.insert("maxLength".into(), 16.into());
                }
                "values" => {
                    field_schema.insert("maxItems".into(), 16.into());
                    if let Some(items) = field_schema
                        .get_mut("items")
                        .and_then(|i| i.as_object_mut())
                    {
                        items.insert("maxLength".into(), 63.into());
                    }
                }
                _ => {}
            }
        }
    }
}

impl ClusterMendixCredentialSpec {
    /// The spec as a `MendixCredential`'s in the source's namespace: the same defaults and
    /// checks apply ([`crate::spec::resolve`]).
    /// The workloads to restart are left out: this kind restarts them in each namespace
    /// ([`crate::cluster::restart`]), not as a namespaced resource does.
    pub fn as_namespaced(&self) -> MendixCredentialSpec {
        let s = &self.source_ref;
        MendixCredentialSpec {
            r#type: self.r#type,
            source_ref: SourceRef {
                name: s.name.clone(),
                token_key: s.token_key.clone(),
                username_key: s.username_key.clone(),
                api_key_key: s.api_key_key.clone(),
            },
            target: Some(Target {
                name: self.target.name.clone(),
                labels: self.target.labels.clone(),
                annotations: self.target.annotations.clone(),
                rollout_restart: None,
            }),
            verification: self.verification.clone(),
            rotation: self.rotation.clone(),
        }
    }
}

/// Which namespaces a spec selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    selector: Option<Selector>,
    listed: BTreeSet<String>,
}

impl Selection {
    pub fn of(target: &ClusterTarget) -> Result<Selection, InvalidSpec> {
        // An empty selector selects nothing: a copy of a credential only goes where meant.
        let selector = match &target.namespace_selector {
            Some(s)
                if s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                    || s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) =>
            {
                Some(
                    Selector::try_from(s.clone())
                        .map_err(|e| InvalidSpec(format!("spec.target.namespaceSelector: {e}")))?,
                )
            }
            _ => None,
        };
        Ok(Selection {
            selector,
            listed: target.namespaces.iter().flatten().cloned().collect(),
        })
    }

    pub fn selects(&self, namespace: &NamespaceView) -> bool {
        self.listed.contains(&namespace.name)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&namespace.labels))
    }

    /// The namespaces to hold a copy, and those selected that cannot (listed but missing, or
    /// being deleted).
    pub fn apply<'a>(&self, namespaces: impl IntoIterator<Item = &'a NamespaceView>) -> Selected {
        let mut selected = Selected::default();
        let mut seen = BTreeSet::new();
        for ns in namespaces {
            seen.insert(ns.name.as_str());
            if !self.selects(ns) {
                continue;
            }
            if ns.terminating {
                selected.terminating.push(ns.name.clone());
            } else {
                selected.active.push(ns.name.clone());
            }
        }
        selected.missing = self
            .listed
            .iter()
            .filter(|n| !seen.contains(n.as_str()))
            .cloned()
            .collect();
        selected.active.sort();
        selected.terminating.sort();
        selected
    }
}

/// What the operator knows of a namespace: its name, labels and whether it is being deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub terminating: bool,
}

/// The namespaces a spec selects, by what can be done in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selected {
    /// Existing and active: each gets a copy.
    pub active: Vec<String>,
    /// Being deleted: no copy (ours, if any, is removed).
    pub terminating: Vec<String>,
    /// Listed but not found.
    pub missing: Vec<String>,
}

/// Whether `existing` is a copy published by the ClusterMendixCredential `name` with `uid`.
pub fn is_ours(existing: &Secret, uid: &str, name: &str) -> bool {
    is_ours_meta(&existing.metadata, uid, name)
}

/// As [`is_ours`], from a Secret's metadata alone (what the watch of the copies caches).
pub fn is_ours_meta(meta: &ObjectMeta, uid: &str, name: &str) -> bool {
    render::is_ours_by_meta(meta, uid, LABEL_CLUSTER_CREDENTIAL, name)
}

/// The copy for one namespace: the Secret a MendixCredential would publish, labelled for the
/// cluster resource instead.
pub fn copy_labels(secret: &mut Secret, name: &str) {
    let labels = secret.metadata.labels.get_or_insert_default();
    labels.remove(crate::api::LABEL_CREDENTIAL);
    labels.insert(LABEL_CLUSTER_CREDENTIAL.into(), render::label_value(name));
}

mod decide;
pub use decide::{
    ClusterObserved, ClusterPlan, CopyOutcome, FailedReason, NAMESPACES_FAILED, plan,
};
pub mod restart;

#[cfg(test)]
mod tests;
