//! What the reconciles of ClusterMendixCredentials share, beside the [`Context`] of both kinds.

use super::sources::SourceWatches;
use crate::domain::api::WorkloadRef;
use crate::domain::cluster::{NamespaceView, RolloutRestartFailure, Selected};
use crate::domain::credential::Credential;
use crate::shell::context::Context;
use crate::shell::retries::Retries;
use crate::shell::secrets::SecretMeta;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::Store;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A namespace as its watch keeps it: metadata only.
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The credential this instance restarted the workloads of one namespace to, and those workloads.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Restarted {
    pub(super) fingerprint: String,
    pub(super) workloads: Vec<WorkloadRef>,
}

/// What the reconciles of ClusterMendixCredentials share.
pub struct ClusterContext {
    pub(super) ctx: Arc<Context>,
    pub(super) namespaces: Store<NamespaceMeta>,
    pub(super) copies: Store<SecretMeta>,
    /// The opted-in sources (metadata) in the namespaces the resources name: the version each
    /// reconcile reads its source at.
    pub(super) sources: SourceWatches,
    /// Set while each watch's cache is current (namespaces, copies).
    pub(super) current: [Arc<AtomicBool>; 2],
    /// Per resource (uid) and namespace: the credential this instance brought all the
    /// workloads of `spec.target.rolloutRestart` to.
    pub(super) restarted: Mutex<HashMap<String, HashMap<String, Restarted>>>,
    /// Per resource (uid): the credential this instance last published to the copies, which a
    /// rotation held back keeps in them. Kept here rather than read back from a copy: the users
    /// of a selected namespace may write its copy.
    pub(super) working: Mutex<HashMap<String, Credential>>,
    /// Per resource (uid): the namespaces where it may hold a copy, which a change of one of
    /// them concerns even once it no longer selects it.
    pub(super) selections: Selections,
    /// When the workloads of each resource and namespace are tried again.
    pub(super) retries: Retries<Vec<RolloutRestartFailure>>,
}

impl ClusterContext {
    /// A context over the caches of the namespaces and the copies, remembering nothing yet;
    /// `current` is set while each of them is current. The sources are watched in the
    /// namespaces the reconciles name; the stream returned brings the sources those watches
    /// touched.
    pub fn new(
        ctx: Arc<Context>,
        namespaces: Store<NamespaceMeta>,
        copies: Store<SecretMeta>,
        current: [Arc<AtomicBool>; 2],
    ) -> (Self, UnboundedReceiver<SecretMeta>) {
        let (sources, touched) = SourceWatches::new(ctx.client.clone(), ctx.streaming_lists);
        let cc = ClusterContext {
            ctx,
            namespaces,
            copies,
            sources,
            current,
            restarted: Mutex::default(),
            working: Mutex::default(),
            selections: Selections::default(),
            retries: Retries::default(),
        };
        (cc, touched)
    }

    pub(super) fn working(&self, uid: &str) -> Option<Credential> {
        self.working.lock().get(uid).cloned()
    }

    pub(super) fn remember_working(&self, uid: &str, credential: &Credential) {
        self.working
            .lock()
            .insert(uid.to_owned(), credential.clone());
    }

    /// Remembers what the reconcile of resource `uid` selected: the namespaces where its copies
    /// are kept or removed.
    pub(super) fn remember_selected(&self, uid: &str, selected: &Selected) {
        self.selections.replace(uid, selected);
    }

    pub(super) fn retain(&self, live: &HashSet<String>) {
        self.selections.retain(live);
        self.restarted.lock().retain(|uid, _| live.contains(uid));
        self.working.lock().retain(|uid, _| live.contains(uid));
        self.retries.retain(live);
    }
}

/// What a selection reads of a namespace.
pub(super) fn namespace_view(ns: &NamespaceMeta) -> NamespaceView {
    NamespaceView {
        name: ns.name_any(),
        labels: ns.labels().clone(),
        terminating: ns.metadata.deletion_timestamp.is_some(),
    }
}

/// Per resource (uid): the namespaces its last reconcile selected (active or being deleted), and
/// those a namespace's change matched since (the reconcile it wakes may write a copy there
/// before it remembers its own selection).
#[derive(Default)]
pub(super) struct Selections(Mutex<HashMap<String, HashSet<String>>>);

impl Selections {
    /// What a reconcile of `uid` selected, in place of what was remembered.
    pub(super) fn replace(&self, uid: &str, selected: &Selected) {
        let namespaces = selected
            .active
            .iter()
            .chain(&selected.terminating)
            .cloned()
            .collect();
        self.0.lock().insert(uid.to_owned(), namespaces);
    }

    /// Adds `namespace` to what `uid` selected.
    pub(super) fn add(&self, uid: &str, namespace: &str) {
        let mut selections = self.0.lock();
        match selections.get_mut(uid) {
            Some(namespaces) if namespaces.contains(namespace) => {}
            Some(namespaces) => {
                namespaces.insert(namespace.to_owned());
            }
            None => {
                selections.insert(uid.to_owned(), HashSet::from([namespace.to_owned()]));
            }
        }
    }

    /// Whether `uid` selected `namespace`, as far as is remembered.
    pub(super) fn contains(&self, uid: &str, namespace: &str) -> bool {
        self.0
            .lock()
            .get(uid)
            .is_some_and(|namespaces| namespaces.contains(namespace))
    }

    pub(super) fn retain(&self, live: &HashSet<String>) {
        self.0.lock().retain(|uid, _| live.contains(uid));
    }
}
