//! What names a resource's restarts: the pod-template annotation and field manager of each
//! kind, and the workload's own consent annotation.

use crate::api::Scope;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The domain of the pod-template annotations; the name part is the resource's name.
pub const ANNOTATION_DOMAIN: &str = "restart.mxcred.io";
/// The domain of a ClusterMendixCredential's annotations: another domain, so that a cluster
/// resource and a namespaced one of the same name restarting the same workload never share a
/// key (each would undo the other's value forever).
pub const CLUSTER_ANNOTATION_DOMAIN: &str = "cluster.restart.mxcred.io";

/// The annotation of a workload (on the workload itself, not its pod template) naming the
/// credentials it follows, comma-separated: `<name>` for the MendixCredential of that name in
/// its namespace, `cluster/<name>` for a ClusterMendixCredential. Set by whoever may edit the
/// workload, as Reloader's `secret.reloader.stakater.com/reload` is: listing a workload in a
/// resource one may create gives no right to restart it.
pub const CONSENT_ANNOTATION: &str = "mxcred.io/restart-on";

/// The field managers of the restart annotations start with one of these.
const RESTART_MANAGERS: [&str; 2] = [
    "mxcred-operator/restart/",
    "mxcred-operator/cluster-restart/",
];

/// The name part of this resource's annotation key and field manager: its name when that fits
/// the 63 characters of an annotation name, else a prefix of it and a hash of the whole name.
/// A resource's name is unique in its namespace, as are the workloads it may restart, so two
/// resources never share a key (they would undo each other's value forever) nor a field manager
/// (an apply by one manager removes the fields it set before and does not set again: with one
/// manager for all resources, each would remove the other's annotation).
fn name_part(credential: &str) -> String {
    const MAX: usize = 63;
    if credential.len() <= MAX {
        return credential.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(credential.as_bytes())[..4]);
    // A DNS subdomain is ASCII; the cut may end in '-' or '.', which an annotation name may not.
    let head = credential[..MAX - hash.len() - 1].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// The marks one resource's restarts leave on a workload, its kind's own: the pod-template
/// annotation holding the credential's fingerprint, the field manager that sets it, and the
/// entry of the workload's [`CONSENT_ANNOTATION`] that names the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marks {
    pub key: String,
    pub manager: String,
    pub consent: String,
}

impl Marks {
    /// The marks of the resource `credential` of kind `scope`.
    pub fn of(scope: Scope, credential: &str) -> Self {
        match scope {
            Scope::Namespaced => Marks {
                key: annotation_key(credential),
                manager: field_manager(credential),
                consent: consent_entry(credential),
            },
            Scope::Cluster => Marks {
                key: cluster_annotation_key(credential),
                manager: cluster_field_manager(credential),
                consent: cluster_consent_entry(credential),
            },
        }
    }
}

/// The pod-template annotation holding the fingerprint of the credential a workload was last
/// restarted for: `restart.mxcred.io/<resource name>`.
pub(crate) fn annotation_key(credential: &str) -> String {
    format!("{ANNOTATION_DOMAIN}/{}", name_part(credential))
}

/// The server-side apply field manager of this resource's annotations on workloads.
pub(crate) fn field_manager(credential: &str) -> String {
    format!("mxcred-operator/restart/{}", name_part(credential))
}

/// The pod-template annotation of the ClusterMendixCredential `credential`:
/// `cluster.restart.mxcred.io/<resource name>`.
pub(crate) fn cluster_annotation_key(credential: &str) -> String {
    format!("{CLUSTER_ANNOTATION_DOMAIN}/{}", name_part(credential))
}

/// The server-side apply field manager of the ClusterMendixCredential `credential`'s
/// annotations: distinct from a namespaced resource's of the same name, whose apply would
/// otherwise remove this one's annotation.
pub(crate) fn cluster_field_manager(credential: &str) -> String {
    format!("mxcred-operator/cluster-restart/{}", name_part(credential))
}

/// The entry of [`CONSENT_ANNOTATION`] that consents to restarts by the MendixCredential
/// `credential` of the workload's namespace.
pub(crate) fn consent_entry(credential: &str) -> String {
    credential.to_owned()
}

/// The entry of [`CONSENT_ANNOTATION`] that consents to restarts by the
/// ClusterMendixCredential `credential`.
pub(crate) fn cluster_consent_entry(credential: &str) -> String {
    format!("cluster/{credential}")
}

/// Whether a workload whose own annotations are `annotations` consents to restarts by `entry`.
pub fn consents(annotations: Option<&BTreeMap<String, String>>, entry: &str) -> bool {
    annotations
        .and_then(|a| a.get(CONSENT_ANNOTATION))
        .is_some_and(|list| list.split(',').any(|e| e.trim() == entry))
}

/// Whether `manager` is the field manager of a restart annotation (of either kind).
pub fn is_restart_manager(manager: &str) -> bool {
    RESTART_MANAGERS.iter().any(|p| manager.starts_with(p))
}
