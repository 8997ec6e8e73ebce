//! ClusterMendixCredentials, in cluster mode only: the controller and the reconcile driver.
//!
//! The controller watches the resources, namespaces (metadata only), the copies it published
//! (metadata only, by their label) and sources (metadata only, by their opt-in label). The
//! reconcile reads as its steps:
//!
//! 1. resolve the spec and the selection (pure),
//! 2. read the source Secret (the cache, or the client),
//! 3. write the copy of each selected namespace that does not hold it, a few at a time (the
//!    decision is pure), and delete our copies where no longer selected,
//! 4. subscribe the credential to the verification loop (shared with MendixCredentials),
//! 5. plan the status and the Events (pure: [`crate::domain::cluster::plan`]),
//! 6. write the status, then publish the Events, then remember what was done.
//!
//! A copy whose version the watch reports as the one this instance wrote or found current is
//! not read again: a resync of many namespaces sends no request.

use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, LABEL_SOURCE, MANAGER, MendixCredential, MendixCredentialStatus,
};
use crate::domain::cluster::{
    self, ClusterMendixCredential, ClusterMendixCredentialStatus, ClusterObserved, CopyOutcome,
    LABEL_CLUSTER_CREDENTIAL, NamespaceView, Selected, Selection,
};
use crate::domain::credential::Credential;
use crate::domain::plan::{self, Ready, ReadyReason, TargetAction};
use crate::domain::render;
use crate::domain::spec::{self, InvalidSpec, Resolved};
use crate::shell::reconcile::{
    CONFLICT_RETRY, Context, Error, apply_params, backoff, describe, now,
};
use crate::shell::secrets::SecretMeta;
use crate::shell::verifier::Subscription;
use crate::shell::{subscribe, target};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

type NamespaceMeta = PartialObjectMeta<Namespace>;

/// Copies written or read at once, per resource.
const WRITERS: usize = 16;

/// What the reconciles of ClusterMendixCredentials share.
pub struct ClusterContext {
    ctx: Arc<Context>,
    namespaces: Store<NamespaceMeta>,
    copies: Store<SecretMeta>,
    /// Set while each watch's cache is current (namespaces, copies).
    current: [Arc<AtomicBool>; 2],
    /// Per resource (uid) and namespace: the copy this instance wrote or found current.
    known: Mutex<HashMap<String, HashMap<String, KnownCopy>>>,
    /// Per resource (uid): the status last written, and the resource version it was based on,
    /// until the watch brings a newer version.
    written: Mutex<HashMap<String, (Option<String>, ClusterMendixCredentialStatus)>>,
}

#[derive(Clone)]
struct KnownCopy {
    name: String,
    version: String,
    digest: [u8; 32],
    at: Option<Time>,
}

/// The names of a resource that every step needs.
struct Id {
    name: String,
    uid: String,
}

/// Runs the controller of ClusterMendixCredentials until `shutdown`; publishes its cache of the
/// resources through `store`, for the metrics and the forgetting of deleted resources.
pub async fn run(
    ctx: Arc<Context>,
    store: Arc<Mutex<Option<Store<ClusterMendixCredential>>>>,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let (namespaces, namespace_stream) = cached(
        watcher(
            Api::<NamespaceMeta>::all(client.clone()),
            watcher::Config::default(),
        ),
        "namespaces",
    );
    let (copies, copy_stream) = cached(
        watcher(
            Api::<SecretMeta>::all(client.clone()),
            watcher::Config::default().labels(LABEL_CLUSTER_CREDENTIAL),
        ),
        "cluster credential copies",
    );
    let sources = watcher(
        Api::<SecretMeta>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_SOURCE}=true")),
    )
    .default_backoff()
    .touched_objects();
    let cc = Arc::new(ClusterContext {
        ctx: ctx.clone(),
        namespaces: namespaces.0,
        copies: copies.0,
        current: [namespaces.1, copies.1],
        known: Mutex::default(),
        written: Mutex::default(),
    });

    let (reader, writer) = reflector::store();
    let resources = reflector(
        writer,
        watcher(
            Api::<ClusterMendixCredential>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .applied_objects()
    // Only spec and annotation (verify-requested-at) changes start a reconcile: the operator's
    // own status writes would otherwise each cause another one.
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    let controller = Controller::for_stream(resources, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let all = controller.store();
    *store.lock().expect("lock poisoned") = Some(all.clone());
    let for_namespaces = all.clone();
    let for_sources = all.clone();
    let answered = ctx.verifier.cluster_route();
    tokio::spawn(forget_deleted(cc.clone(), all, shutdown.clone()));
    controller
        // Any namespace change may change a selection; there are few cluster resources.
        .watches_stream(namespace_stream, move |_| {
            for_namespaces
                .state()
                .iter()
                .map(|cr| ObjectRef::from_obj(cr.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(copy_stream, |copy| {
            copy.labels()
                .get(LABEL_CLUSTER_CREDENTIAL)
                .map(|name| ObjectRef::new(name))
        })
        .watches_stream(sources, move |source| reading(&for_sources, &source))
        .reconcile_on(answered)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, cc)
        .for_each(|_| std::future::ready(()))
        .await;
    *store.lock().expect("lock poisoned") = None;
}

/// A metadata watch kept in a cache, with the flag set while that cache is current; and the
/// stream of the objects it touched.
fn cached<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> (
    (Store<K>, Arc<AtomicBool>),
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let current = Arc::new(AtomicBool::new(false));
    let flag = current.clone();
    let stream = reflector(writer, stream)
        .inspect(move |result| {
            let flowing = matches!(
                result,
                Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))
            );
            flag.store(flowing, Ordering::Relaxed);
            if let Ok(watcher::Event::InitDone) = result {
                info!("listed {what}");
            }
        })
        .default_backoff()
        .touched_objects();
    ((reader, current), stream)
}

/// The cluster resources that read `secret` as their source.
fn reading(
    store: &Store<ClusterMendixCredential>,
    secret: &SecretMeta,
) -> Vec<ObjectRef<ClusterMendixCredential>> {
    let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
        return vec![];
    };
    store
        .state_filter(|cr| cr.spec.source_ref.namespace == *ns && cr.spec.source_ref.name == *name)
        .iter()
        .map(|cr| ObjectRef::from_obj(cr.as_ref()))
        .collect()
}

async fn reconcile(
    cr: Arc<ClusterMendixCredential>,
    cc: Arc<ClusterContext>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_one(&cr, &cc).await;
    let uid = cr.uid().unwrap_or_default();
    match &result {
        Ok((_, ready)) => {
            cc.ctx.metrics.reconciled(ready, started.elapsed());
            cc.ctx.tracker.api_succeeded(&uid);
        }
        Err(e) => {
            cc.ctx.metrics.reconciled("error", started.elapsed());
            cc.ctx.metrics.failed(e.step());
        }
    }
    result.map(|(action, _)| action)
}

fn error_policy(
    cr: Arc<ClusterMendixCredential>,
    error: &Error,
    cc: Arc<ClusterContext>,
) -> Action {
    let attempt = cc.ctx.tracker.api_failed(&cr.uid().unwrap_or_default());
    let delay = backoff(attempt);
    warn!(cluster_credential = cr.name_any(), %error, step = error.step(), attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_one(
    cr: &ClusterMendixCredential,
    cc: &ClusterContext,
) -> Result<(Action, &'static str), Error> {
    let ctx = &cc.ctx;
    // Being deleted: the garbage collector removes the copies (they are owned by it).
    if cr.metadata.deletion_timestamp.is_some() {
        return Ok((Action::await_change(), "Deleting"));
    }
    // Until both caches are current, what is selected and what we hold is not known: a copy
    // must never be deleted for a namespace the cache has not listed yet.
    if !cc.current.iter().all(|c| c.load(Ordering::Relaxed)) {
        debug!(cluster_credential = cr.name_any(), "waiting for the caches");
        return Ok((Action::requeue(Duration::from_millis(500)), "Waiting"));
    }
    let id = Id {
        name: cr.name_any(),
        uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
    };
    let previous = cc.previous_status(cr);
    let source_ns = cr.spec.source_ref.namespace.clone();

    // 1. The spec and the selection.
    let resolved = spec::resolve(
        &id.name,
        &cr.spec.as_namespaced(),
        ctx.settings.default_interval,
    )
    .and_then(|r| {
        spec::check_target_metadata(&r, &ctx.settings.denied_metadata_prefixes).map(|()| r)
    });
    let selection = Selection::of(&cr.spec.target);
    let namespaces: Vec<NamespaceView> = cc.namespaces.state().iter().map(|n| view(n)).collect();
    let selected = match &selection {
        Ok(selection) => selection.apply(&namespaces),
        Err(_) => Selected::default(),
    };

    // 2. and 3. The source, then the copies.
    let mut copies = BTreeMap::new();
    let (source, credential) = match (&resolved, &selection) {
        (Err(InvalidSpec(m)), _) | (_, Err(InvalidSpec(m))) => (
            Err(Ready::refused(ReadyReason::InvalidSpec, m.clone())),
            None,
        ),
        (Ok(resolved), Ok(_)) => match read_source(ctx, &source_ns, resolved).await? {
            Err(ready) => (Err(ready), None),
            Ok(credential) => {
                copies = write_copies(cc, cr, &id, resolved, &credential, &selected.active).await?;
                (Ok(credential.fingerprint()), Some(credential))
            }
        },
    };
    // Our copies outside the selection go, whatever the source says. With a spec that cannot be
    // read, nothing is selected: the copies stay until it is fixed.
    let keep: Option<(&str, BTreeSet<&str>)> = match (&resolved, &selection) {
        (Ok(r), Ok(_)) => Some((
            r.target_name.as_str(),
            selected.active.iter().map(String::as_str).collect(),
        )),
        _ => None,
    };
    let mut retry = false;
    if let Some((target_name, keep)) = keep {
        retry |= !remove_copies(cc, &id, target_name, &keep).await;
    }

    // 4. The verification loop.
    let view_cr = as_namespaced(cr, &previous.core());
    let request = subscribe::verify_request(&view_cr, &id.uid, &previous.core(), ctx);
    let verification = match (resolved.as_ref().ok(), credential.as_ref()) {
        (Some(resolved), Some(credential)) => match &resolved.verification {
            None => {
                ctx.verifier.unsubscribe(&id.uid);
                plan::Verification::Disabled
            }
            Some(v) => subscribe::verification_of(ctx.verifier.subscribe_cluster(Subscription {
                uid: &id.uid,
                namespace: &source_ns,
                name: &id.name,
                credential,
                probe: &v.probe,
                interval: ctx.settings.test_interval.unwrap_or(v.interval),
                forced: request.as_ref().map(|(_, at)| *at),
                known: subscribe::known_verdict(&view_cr, &previous.core(), credential),
            })),
        },
        _ => {
            ctx.verifier.unsubscribe(&id.uid);
            plan::Verification::Waiting
        }
    };

    // 5. The plan.
    let wrote = copies
        .values()
        .filter(|c| matches!(c, CopyOutcome::Synced { wrote: true, .. }))
        .count();
    let plan = cluster::plan(ClusterObserved {
        generation: cr.metadata.generation,
        credential_type: resolved.as_ref().ok().map(|r| r.credential_type),
        previous: &previous,
        target: resolved
            .as_ref()
            .map(|r| r.target_name.clone())
            .unwrap_or_default(),
        source,
        copies,
        selected,
        verification,
        now: now(),
    });

    // 6. Status, Events, memory.
    let wrote_status = plan.status.is_some();
    if let Some(status) = plan.status {
        write_status(cc, cr, &id, status).await?;
    }
    for event in plan.events {
        publish(ctx, cr, event).await;
    }
    if let Some((value, _)) = request.filter(|_| plan.request_served) {
        ctx.tracker.serve_verify_request(&id.uid, &value);
    }
    info!(
        cluster_credential = id.name,
        reason = plan.ready,
        wrote,
        wrote_status,
        "reconciled"
    );
    retry |= plan.retry;
    let action = match plan.hold {
        Some(hold) => Action::requeue(hold),
        // Foreign Secrets in the way are not watched (only ours and sources are).
        None if retry => Action::requeue(CONFLICT_RETRY),
        None if plan.ready == ReadyReason::Synced.as_str() => {
            Action::requeue(Duration::from_secs(3600))
        }
        None => Action::await_change(),
    };
    Ok((action, plan.ready))
}

fn view(ns: &NamespaceMeta) -> NamespaceView {
    NamespaceView {
        name: ns.name_any(),
        labels: ns.labels().clone(),
        terminating: ns.metadata.deletion_timestamp.is_some(),
    }
}

/// The resource as a MendixCredential in its source's namespace: what the verification
/// request and the restored verdict are read from.
fn as_namespaced(
    cr: &ClusterMendixCredential,
    status: &MendixCredentialStatus,
) -> MendixCredential {
    MendixCredential {
        metadata: ObjectMeta {
            name: cr.metadata.name.clone(),
            namespace: Some(cr.spec.source_ref.namespace.clone()),
            uid: cr.metadata.uid.clone(),
            generation: cr.metadata.generation,
            annotations: cr.metadata.annotations.as_ref().map(|a| {
                a.iter()
                    .filter(|(k, _)| *k == ANNOTATION_VERIFY_REQUESTED_AT)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            managed_fields: cr.metadata.managed_fields.clone(),
            ..ObjectMeta::default()
        },
        spec: cr.spec.as_namespaced(),
        status: Some(status.clone()),
    }
}

/// The credential of the source, or why it cannot be used.
async fn read_source(
    ctx: &Context,
    ns: &str,
    resolved: &Resolved,
) -> Result<Result<Credential, Ready>, Error> {
    let (credential_type, keys) = (resolved.credential_type, &resolved.source);
    let credential = match ctx.secrets.credential(ns, credential_type, keys) {
        Some(cached) => cached,
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let Some(source) = secrets
                .get_opt(&keys.secret)
                .await
                .map_err(Error::ReadSource)?
            else {
                return Ok(Err(Ready::refused(
                    ReadyReason::SourceNotFound,
                    format!("Secret {:?} not found in namespace {ns:?}", keys.secret),
                )));
            };
            let credential = Credential::from_secret(credential_type, keys, &source);
            if let Some(version) = source.metadata.resource_version {
                ctx.secrets
                    .remember(ns, credential_type, keys, version, credential.clone());
            }
            credential
        }
    };
    Ok(credential.map_err(|problem| plan::source_refused(&problem)))
}

/// Writes the copy of every namespace in `active` that does not hold it, a few at a time.
async fn write_copies(
    cc: &ClusterContext,
    cr: &ClusterMendixCredential,
    id: &Id,
    resolved: &Resolved,
    credential: &Credential,
    active: &[String],
) -> Result<BTreeMap<String, CopyOutcome>, Error> {
    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let outcomes = futures::stream::iter(active.iter().cloned())
        .map(|ns| {
            let mut desired =
                render::target_secret(&ns, &id.name, owner.clone(), resolved, credential);
            cluster::copy_labels(&mut desired, &id.name);
            async move {
                let outcome = write_copy(cc, id, &ns, desired).await;
                (ns, outcome)
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<BTreeMap<_, _>>()
        .await;
    Ok(outcomes)
}

/// The copy of one namespace: kept when the watch reports it as this instance left it, else
/// read and written when it differs.
async fn write_copy(cc: &ClusterContext, id: &Id, ns: &str, mut desired: Secret) -> CopyOutcome {
    let digest = render::digest(&desired);
    let name = desired.metadata.name.clone().unwrap_or_default();
    if let Some(known) = cc.known_copy(&id.uid, ns, &name, &digest) {
        return CopyOutcome::Synced {
            written_at: known.at,
            wrote: false,
        };
    }
    let secrets: Api<Secret> = Api::namespaced(cc.ctx.client.clone(), ns);
    let failed = |e: &kube::Error| CopyOutcome::Failed(describe(e));
    let existing = match secrets.get_opt(&name).await {
        Ok(existing) => existing,
        Err(e) => return failed(&e),
    };
    let (version, written_at, wrote) =
        match cluster::copy_action(existing.as_ref(), &desired, &id.uid, &id.name) {
            TargetAction::Conflict => return CopyOutcome::Conflict,
            TargetAction::Keep { written_at } => {
                let version = existing.and_then(|e| e.metadata.resource_version);
                (version.unwrap_or_default(), written_at, false)
            }
            TargetAction::Create => {
                let params = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..PostParams::default()
                };
                // A Secret created by someone else since the read makes this fail (409): it is
                // never taken over, and the retry reports the conflict.
                let created = match secrets.create(&params, &desired).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(e)) if e.is_invalid() => {
                        return CopyOutcome::Invalid(target::refused_target(&e));
                    }
                    Err(e) => return failed(&e),
                };
                let at = render::applied_at(&created).or_else(|| Some(now()));
                (created.resource_version().unwrap_or_default(), at, true)
            }
            TargetAction::Apply { resource_version } => {
                let resource_version = match existing {
                    Some(secret) => match target::claim(&secrets, secret).await {
                        Ok(claimed) => claimed
                            .metadata
                            .resource_version
                            .unwrap_or(resource_version),
                        Err(e) => return CopyOutcome::Failed(e.to_string()),
                    },
                    None => resource_version,
                };
                // Conditional on the version read: a Secret replaced meanwhile is not written.
                desired.metadata.resource_version = Some(resource_version.clone());
                let written = match secrets
                    .patch(&name, &apply_params(), &Patch::Apply(&desired))
                    .await
                {
                    Ok(written) => written,
                    Err(kube::Error::Api(e)) if e.is_invalid() => {
                        return CopyOutcome::Invalid(target::refused_target(&e));
                    }
                    Err(e) => return failed(&e),
                };
                let version = written.resource_version().unwrap_or_default();
                let wrote = resource_version != version;
                let at = render::applied_at(&written).or_else(|| wrote.then(now));
                (version, at, wrote)
            }
        };
    cc.remember_copy(
        &id.uid,
        ns,
        KnownCopy {
            name,
            version,
            digest,
            at: written_at.clone(),
        },
    );
    CopyOutcome::Synced { written_at, wrote }
}

/// Deletes our copies other than `target` in the `keep` namespaces. Returns false when a
/// deletion failed (it is retried).
async fn remove_copies(cc: &ClusterContext, id: &Id, target: &str, keep: &BTreeSet<&str>) -> bool {
    let stale: Vec<Arc<SecretMeta>> = cc.copies.state_filter(|copy| {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        let as_secret = Secret {
            metadata: copy.metadata.clone(),
            ..Secret::default()
        };
        cluster::is_ours(&as_secret, &id.uid, &id.name)
            && !(keep.contains(ns) && copy.metadata.name.as_deref() == Some(target))
    });
    let results = futures::stream::iter(stale)
        .map(|copy| async move {
            let ns = copy.metadata.namespace.clone().unwrap_or_default();
            let name = copy.name_any();
            let secrets: Api<Secret> = Api::namespaced(cc.ctx.client.clone(), &ns);
            // Only the very Secret seen as ours: one replaced meanwhile is not deleted.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: copy.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&name, &params).await {
                Ok(_) => {
                    info!(cluster_credential = id.name, namespace = ns, secret = name, "deleted a copy no longer selected");
                    cc.forget_copy(&id.uid, &ns);
                    true
                }
                Err(kube::Error::Api(e)) if e.is_not_found() || e.is_conflict() => true,
                Err(e) => {
                    warn!(cluster_credential = id.name, namespace = ns, error = %describe(&e), "could not delete a copy");
                    false
                }
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<bool>>()
        .await;
    results.into_iter().all(|ok| ok)
}

async fn write_status(
    cc: &ClusterContext,
    cr: &ClusterMendixCredential,
    id: &Id,
    status: ClusterMendixCredentialStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": "ClusterMendixCredential",
        "status": status,
    });
    Api::<ClusterMendixCredential>::all(cc.ctx.client.clone())
        .patch_status(&id.name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    cc.written
        .lock()
        .expect("lock poisoned")
        .insert(id.uid.clone(), (cr.resource_version(), status));
    Ok(())
}

/// Publishes an Event on the resource. One that cannot be published is logged and counted.
///
/// A cluster-scoped object's Events go to the namespace `default`, as kube's `Recorder` and
/// client-go put them. API servers before 1.22 (1.20 in the test environment) accept them only
/// in `kube-system`: there, they go there. Written by hand because the `Recorder` always takes
/// `default`.
async fn publish(ctx: &Context, cr: &ClusterMendixCredential, event: plan::Announcement) {
    let reason = event.reason;
    let at = jiff::Timestamp::now();
    let body = k8s_openapi::api::events::v1::Event {
        action: Some("Reconcile".into()),
        reason: Some(reason.into()),
        note: Some(event.note),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at,
        )),
        regarding: Some(cr.object_ref(&())),
        reporting_controller: Some(ctx.reporter.controller.clone()),
        reporting_instance: Some(
            ctx.reporter
                .instance
                .clone()
                .unwrap_or_else(|| ctx.reporter.controller.clone()),
        ),
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", cr.name_any(), at.as_nanosecond())),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    let mut result = Ok(());
    for ns in ["default", "kube-system"] {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(ctx.client.clone(), ns);
        result = events
            .create(&PostParams::default(), &body)
            .await
            .map(|_| ());
        match &result {
            Err(kube::Error::Api(e)) if e.is_invalid() => continue,
            _ => break,
        }
    }
    if let Err(error) = result {
        ctx.metrics.failed("publish_event");
        warn!(error = %describe(&error), reason, "could not publish Event");
    }
}

impl ClusterContext {
    /// The status to plan from: the one this instance wrote, while the cache still holds the
    /// version it was based on; else the cached one.
    fn previous_status(&self, cr: &ClusterMendixCredential) -> ClusterMendixCredentialStatus {
        let uid = cr.uid().unwrap_or_default();
        let mut written = self.written.lock().expect("lock poisoned");
        match written.get(&uid) {
            Some((based_on, status)) if *based_on == cr.resource_version() => status.clone(),
            _ => {
                written.remove(&uid);
                cr.status.clone().unwrap_or_default()
            }
        }
    }

    /// The copy of `ns` as this instance left it, if the watch still reports that version.
    fn known_copy(&self, uid: &str, ns: &str, name: &str, digest: &[u8; 32]) -> Option<KnownCopy> {
        if !self.current[1].load(Ordering::Relaxed) {
            return None;
        }
        let version = self
            .copies
            .get(&ObjectRef::new(name).within(ns))?
            .metadata
            .resource_version
            .clone()?;
        let known = self.known.lock().expect("lock poisoned");
        let copy = known.get(uid)?.get(ns)?;
        (copy.name == name && copy.version == version && copy.digest == *digest)
            .then(|| copy.clone())
    }

    fn remember_copy(&self, uid: &str, ns: &str, copy: KnownCopy) {
        self.known
            .lock()
            .expect("lock poisoned")
            .entry(uid.to_owned())
            .or_default()
            .insert(ns.to_owned(), copy);
    }

    fn forget_copy(&self, uid: &str, ns: &str) {
        if let Some(copies) = self.known.lock().expect("lock poisoned").get_mut(uid) {
            copies.remove(ns);
        }
    }

    fn retain(&self, live: &HashSet<String>) {
        self.known
            .lock()
            .expect("lock poisoned")
            .retain(|uid, _| live.contains(uid));
        self.written
            .lock()
            .expect("lock poisoned")
            .retain(|uid, _| live.contains(uid));
    }
}

/// Every ten minutes, forgets what is remembered of resources that no longer exist.
async fn forget_deleted(
    cc: Arc<ClusterContext>,
    store: Store<ClusterMendixCredential>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live: HashSet<String> = store.state().iter().filter_map(|cr| cr.uid()).collect();
        cc.retain(&live);
    }
}

/// The uids of the cached ClusterMendixCredentials, and the source readings they use.
pub fn live(
    store: &Store<ClusterMendixCredential>,
    default_interval: Duration,
) -> (HashSet<String>, HashSet<crate::shell::secrets::Reading>) {
    let mut uids = HashSet::new();
    let mut readings = HashSet::new();
    for cr in store.state() {
        if let Some(uid) = cr.uid() {
            uids.insert(uid);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespaced_view_keeps_only_what_verification_reads() {
        let mut cr = ClusterMendixCredential::new("c", Default::default());
        cr.spec.source_ref.namespace = "src".into();
        cr.metadata.uid = Some("u".into());
        cr.metadata.generation = Some(3);
        cr.metadata.annotations = Some(
            [
                (ANNOTATION_VERIFY_REQUESTED_AT.to_owned(), "now".to_owned()),
                ("other".to_owned(), "x".to_owned()),
            ]
            .into(),
        );
        let view = as_namespaced(&cr, &MendixCredentialStatus::default());
        assert_eq!(view.metadata.namespace.as_deref(), Some("src"));
        assert_eq!(view.metadata.generation, Some(3));
        assert_eq!(view.annotations().len(), 1);
    }
}
