//! ClusterMendixCredentials, in cluster mode only: the controller ([`run`]) that watches the
//! resources, namespaces (metadata only), the copies it published (metadata only, by their
//! label) and sources (metadata only, by their opt-in label, in the namespaces the resources
//! name: [`sources`]); its steps for the one reconcile driver ([`kind`]); its publishing step
//! ([`publish`]): the copies in each namespace ([`copies`]) and the workloads restarted in
//! each ([`restarts`]).

mod context;
mod copies;
mod kind;
mod publish;
mod restarts;
mod rotation;
mod sources;

pub use crate::shell::ClusterGuarded;
pub use context::{ClusterContext, NamespaceMeta};

use context::Selections;

use crate::domain::api::MANAGER;
use crate::domain::cluster::{LABEL_CLUSTER_CREDENTIAL, NamespaceView, Selection};
use crate::domain::spec;
use crate::shell::api_error::describe_watch;
use crate::shell::context::Context;
use crate::shell::reconcile::{error_policy, reconcile};
use crate::shell::secrets::SecretMeta;
use crate::shell::watch::{self, cached, slim};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Runs the controller of ClusterMendixCredentials until `shutdown`; publishes its cache of the
/// resources through `store`, for the metrics and the forgetting of deleted resources.
pub async fn run(
    ctx: Arc<Context>,
    store: Arc<Mutex<Option<Store<ClusterGuarded>>>>,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let (namespaces, namespace_stream) = cached(
        watcher(
            Api::<NamespaceMeta>::all(client.clone()),
            watch::config(ctx.streaming_lists),
        )
        .modify(slim_namespace),
        "namespaces",
    );
    let (copies, copy_stream) = cached(
        watcher(
            Api::<SecretMeta>::all(client.clone()),
            watch::config(ctx.streaming_lists).labels(LABEL_CLUSTER_CREDENTIAL),
        )
        .modify(slim_copy),
        "cluster credential copies",
    );
    // Kept in caches of their own: a reconcile they wake reads the source's version there, not
    // in the operator's other caches, which may not have seen the change yet.
    let (cc, source_stream) = ClusterContext::new(
        ctx.clone(),
        namespaces.0,
        copies.0,
        [namespaces.1, copies.1],
    );
    let cc = Arc::new(cc);

    let (reader, writer) = reflector::store();
    let listed = Arc::new(AtomicBool::new(false));
    let resources = resources(&ctx, writer, listed.clone());
    let controller = Controller::for_stream(resources, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let all = controller.store();
    *store.lock() = Some(all.clone());
    let for_namespaces = all.clone();
    let remembered = cc.clone();
    let for_sources = all.clone();
    let answered = ctx
        .verifier
        .cluster_route()
        .map(|answered| ObjectRef::new(&answered.name));
    // A change of who uses a copy wakes the resource that published it.
    let copies = cc.copies.clone();
    let used = ctx.consumers.changes(None).filter_map(move |(ns, secret)| {
        let copy = copies.get(&ObjectRef::new(&secret).within(&ns));
        std::future::ready(copy.and_then(|copy| publisher(&copy)))
    });
    tokio::spawn(forget_deleted(cc.clone(), all, shutdown.clone()));
    let controller = controller
        .watches_stream(namespace_stream, move |namespace| {
            concerned(&for_namespaces.state(), &remembered.selections, &namespace)
        })
        .watches_stream(copy_stream, |copy| publisher(&copy))
        .watches_stream(source_stream.map(Ok::<_, watcher::Error>), move |source| {
            reading(&for_sources, &source)
        })
        .reconcile_on(answered)
        .reconcile_on(used)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, cc)
        .for_each(|_| std::future::ready(()));
    // A controller whose resources were never listed (their CRD is missing) waits for that list
    // even when told to stop: it is dropped at once. Otherwise its reconciles under way may
    // finish, for a while.
    let dropped = async {
        shutdown.cancelled().await;
        if listed.load(Ordering::Relaxed) {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        () = controller => {}
        () = dropped => warn!("the controller of ClusterMendixCredentials did not stop in time: dropped"),
    }
    *store.lock() = None;
}

/// The ClusterMendixCredentials that start a reconcile, cached in `writer`: on a change of
/// spec or annotations (`verify-requested-at`), not on the operator's own status writes, which
/// would otherwise each cause another one. `listed` is set once they were listed.
fn resources(
    ctx: &Context,
    writer: reflector::store::Writer<ClusterGuarded>,
    listed: Arc<AtomicBool>,
) -> impl futures::Stream<Item = Result<ClusterGuarded, watcher::Error>> + use<> {
    let tracker = ctx.tracker.clone();
    reflector(
        writer,
        watch::first_list_as_it_arrives(
            watcher(
                Api::<ClusterGuarded>::all(ctx.client.clone()),
                watch::config(ctx.streaming_lists),
            )
            .modify(slim)
            .inspect_ok(move |event| {
                if let watcher::Event::InitDone = event {
                    listed.store(true, Ordering::Relaxed);
                }
            }),
        ),
    )
    // Before their CRD is applied (an upgrade), or without RBAC for them: say so, and retry.
    .inspect_err(
        |e| warn!(error = %describe_watch(e), "cannot watch ClusterMendixCredentials; retrying"),
    )
    .inspect_ok(move |event| {
        // Once the cache holds a resource past a status write, the write's copy can go soon.
        if let watcher::Event::Apply(cr) = event
            && let (Some(uid), Some(version)) = (&cr.meta().uid, &cr.meta().resource_version)
        {
            tracker.cache_reached(uid, version);
        }
    })
    .default_backoff()
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    )
}

/// How long reconciles under way may take to finish once the operator stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the cache keeps of a namespace: its name, labels (selections read them) and whether it
/// is being deleted.
fn slim_namespace(namespace: &mut NamespaceMeta) {
    let meta = &mut namespace.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// What the cache keeps of a copy: its identity and version, its owner, its
/// `mxcred.io/cluster-credential` label and, of its managed fields, our entries' manager and
/// time (what tells a copy of ours whose owner reference was removed). A namespace's users may
/// write the rest, as large as they like.
fn slim_copy(copy: &mut SecretMeta) {
    let meta = &mut copy.metadata;
    meta.annotations = None;
    meta.finalizers = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == LABEL_CLUSTER_CREDENTIAL);
    }
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|e| e.manager.as_deref() == Some(MANAGER));
        for entry in fields.iter_mut() {
            entry.fields_v1 = None;
        }
    }
}

/// The cluster resource that published a copy: its controller owner, or, when someone removed
/// the owner reference, the one its label names (a long name's label is shortened, and names
/// nothing: such a copy waits for the next reconcile of its resource).
fn publisher(copy: &SecretMeta) -> Option<ObjectRef<ClusterGuarded>> {
    let owner = copy
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "ClusterMendixCredential")
        .map(|r| r.name.clone());
    let name = owner.or_else(|| copy.labels().get(LABEL_CLUSTER_CREDENTIAL).cloned())?;
    Some(ObjectRef::new(&name))
}

/// The cluster resources a change of `namespace` concerns: those that select it now (listed, or
/// matched by their selector; remembered as selecting it, for the reconcile this wakes), and
/// those that selected it at their last reconcile (its labels no longer match, it is deleted).
fn concerned(
    resources: &[Arc<ClusterGuarded>],
    selections: &Selections,
    namespace: &NamespaceMeta,
) -> Vec<ObjectRef<ClusterGuarded>> {
    let view = context::namespace_view(namespace);
    let mut concerned = Vec::new();
    for guard in resources {
        let uid = guard.meta().uid.as_deref().unwrap_or_default();
        let now = selects(guard, &view);
        if now {
            selections.add(uid, &view.name);
        }
        if now || selections.contains(uid, &view.name) {
            concerned.push(ObjectRef::from_obj(guard.as_ref()));
        }
    }
    concerned
}

/// Whether the spec of `guard` selects `namespace` (a spec that cannot be read selects none).
fn selects(guard: &ClusterGuarded, namespace: &NamespaceView) -> bool {
    guard
        .0
        .as_ref()
        .ok()
        .and_then(|cr| Selection::of(&cr.spec.target).ok())
        .is_some_and(|selection| selection.selects(namespace))
}

/// The cluster resources that read `secret` as their source.
fn reading(store: &Store<ClusterGuarded>, secret: &SecretMeta) -> Vec<ObjectRef<ClusterGuarded>> {
    let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
        return vec![];
    };
    store
        .state_filter(|guard| {
            guard.0.as_ref().is_ok_and(|cr| {
                cr.spec.source_ref.namespace == *ns && cr.spec.source_ref.name == *name
            })
        })
        .iter()
        .map(|cr| ObjectRef::from_obj(cr.as_ref()))
        .collect()
}

/// Every ten minutes, forgets what is remembered of resources that no longer exist.
async fn forget_deleted(
    cc: Arc<ClusterContext>,
    store: Store<ClusterGuarded>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let resources = store.state();
        let live: HashSet<String> = resources
            .iter()
            .filter_map(|guard| guard.meta().uid.clone())
            .collect();
        cc.retain(&live);
        let named: HashSet<String> = resources
            .iter()
            .filter_map(|guard| Some(guard.0.as_ref().ok()?.spec.source_ref.namespace.clone()))
            .collect();
        cc.sources.keep_only(&named);
    }
}

/// The uids of the cached ClusterMendixCredentials, and the source readings they use.
pub fn live(
    store: &Store<ClusterGuarded>,
    default_interval: Duration,
) -> (HashSet<String>, HashSet<crate::shell::secrets::Reading>) {
    let mut uids = HashSet::new();
    let mut readings = HashSet::new();
    for guard in store.state() {
        if let Some(uid) = guard.meta().uid.clone() {
            uids.insert(uid);
        }
        let Ok(cr) = &guard.0 else {
            continue;
        };
        if let Ok(resolved) =
            spec::resolve(&cr.name_any(), &cr.spec.as_namespaced(), default_interval)
        {
            readings.insert(crate::shell::secrets::Reading::new(
                &cr.spec.source_ref.namespace,
                resolved.credential_type,
                &resolved.source,
            ));
        }
    }
    (uids, readings)
}

/// The cached ClusterMendixCredentials by TokenValid status ("True", "False", "Unknown"), for
/// the `mxcred_cluster_credentials` gauge.
pub fn token_valid_counts(store: Option<Store<ClusterGuarded>>) -> HashMap<&'static str, i64> {
    let mut counts: HashMap<&'static str, i64> = HashMap::new();
    for guard in store.map(|s| s.state()).unwrap_or_default() {
        let valid = guard.0.as_ref().ok().and_then(|cr| {
            let status = cr.status.as_ref()?;
            crate::domain::conditions::find(
                &status.conditions,
                crate::domain::api::condition::TOKEN_VALID,
            )
        });
        let status = match valid.map(|c| c.status.as_str()) {
            Some("True") => "True",
            Some("False") => "False",
            _ => "Unknown",
        };
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cluster::{ClusterMendixCredential, ClusterTarget, Selected};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use kube::core::DeserializeGuard;

    fn resource(name: &str, target: ClusterTarget) -> Arc<ClusterGuarded> {
        let mut cr = ClusterMendixCredential::new(name, Default::default());
        cr.metadata.uid = Some(format!("uid-{name}"));
        cr.spec.target = target;
        Arc::new(DeserializeGuard(Ok(cr)))
    }

    fn selecting(label: &str) -> ClusterTarget {
        ClusterTarget {
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("team".to_owned(), label.to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..ClusterTarget::default()
        }
    }

    fn namespace(name: &str, team: Option<&str>) -> NamespaceMeta {
        NamespaceMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: team.map(|t| [("team".to_owned(), t.to_owned())].into()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    fn names(refs: Vec<ObjectRef<ClusterGuarded>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_namespace_change_wakes_only_the_resources_that_select_it_or_did() {
        let resources = [
            resource("by-label", selecting("a")),
            resource(
                "by-list",
                ClusterTarget {
                    namespaces: Some(vec!["listed".into()]),
                    ..ClusterTarget::default()
                },
            ),
            resource("was", selecting("b")),
            resource("unrelated", selecting("z")),
        ];
        let selections = Selections::default();
        let was = Selected {
            active: vec!["deselected".into()],
            ..Selected::default()
        };
        selections.replace("uid-was", &was);
        let wakes = |ns: &NamespaceMeta| names(concerned(&resources, &selections, ns));

        assert_eq!(wakes(&namespace("matching", Some("a"))), ["by-label"]);
        assert_eq!(wakes(&namespace("listed", None)), ["by-list"]);
        assert_eq!(wakes(&namespace("deselected", Some("c"))), ["was"]);
        assert_eq!(wakes(&namespace("other", Some("c"))), Vec::<String>::new());
        // Matched once, before its resource's reconcile remembers it: a label removed at once
        // still wakes that resource.
        assert_eq!(wakes(&namespace("matching", None)), ["by-label"]);
        // What a reconcile selected replaces what was remembered.
        selections.replace("uid-by-label", &Selected::default());
        assert_eq!(wakes(&namespace("matching", None)), Vec::<String>::new());
    }

    #[test]
    fn the_selections_of_deleted_resources_are_forgotten() {
        let selections = Selections::default();
        selections.add("uid-gone", "team-a");
        selections.add("uid-live", "team-a");
        selections.retain(&["uid-live".to_owned()].into());
        assert!(!selections.contains("uid-gone", "team-a"));
        assert!(selections.contains("uid-live", "team-a"));
    }
}
