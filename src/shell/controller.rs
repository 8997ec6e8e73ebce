//! The controller: watches, the reconcile pipeline and its error policy.
//!
//! Reconcile is a pipeline of small steps: guard (an object that cannot be read gets a
//! condition, not a crash) -> resolve the spec (pure) -> read the source Secret -> validate the
//! credential (pure) -> render the target (pure) -> apply it -> write the status, only when it
//! changed.

use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, LABEL_CREDENTIAL, LABEL_MANAGED_BY, MANAGER, MendixCredential,
    MendixCredentialStatus, condition, ready,
};
use crate::domain::classify::{Outcome, Reason};
use crate::domain::conditions::{self, Verdict};
use crate::domain::credential::{Credential, SourceError};
use crate::domain::render;
use crate::domain::schedule;
use crate::domain::spec::{self, InvalidSpec, Resolved};
use crate::shell::metrics::Metrics;
use crate::shell::secrets::{self, SecretCache, SecretMeta};
use crate::shell::tracker::{Published, Tracker};
use crate::shell::verification::{self, Verifier};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::{DeserializeGuard, Status};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

type Guarded = DeserializeGuard<MendixCredential>;

/// What the controller is told by its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to serve; empty means all.
    pub namespaces: Vec<String>,
    pub default_interval: Duration,
    pub concurrency: u16,
    /// Replaces every resource's interval (tests only).
    pub test_interval: Option<Duration>,
}

/// Errors that make a reconcile retry with backoff. Problems a user must fix are not errors:
/// they end the reconcile normally with a condition on the resource.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {}", describe(.0))]
    Kube(#[from] kube::Error),
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
}

/// What the controller shares with the HTTP endpoints: metrics, and its caches of resources,
/// from which the `mxcred_credentials` gauge is counted at scrape time.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The cache of each watch of MendixCredentials, with the flag the watch sets once it has
    /// listed them.
    stores: Mutex<Vec<(Store<Guarded>, Arc<AtomicBool>)>>,
    role: Mutex<Role>,
}

/// The part this instance plays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Starting,
    /// Waiting for the Lease.
    Standby,
    /// Running the controllers.
    Serving,
    Stopping,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Shared {
            metrics,
            stores: Mutex::default(),
            role: Mutex::default(),
        }
    }

    /// Every cached resource.
    fn resources(&self) -> Vec<Arc<Guarded>> {
        let stores = self.stores.lock().expect("lock poisoned");
        stores.iter().flat_map(|(store, _)| store.state()).collect()
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for guard in self.resources() {
            let status = match &guard.0 {
                Ok(cr) => cr
                    .status
                    .as_ref()
                    .and_then(|s| conditions::find(&s.conditions, condition::TOKEN_VALID))
                    .map_or("Unknown", |c| match c.status.as_str() {
                        "True" => "True",
                        "False" => "False",
                        _ => "Unknown",
                    }),
                Err(_) => "Unknown",
            };
            *counts.entry(status).or_default() += 1;
        }
        self.metrics.encode(counts)
    }

    /// What this instance is doing, for `/readyz`: `None` while it is not ready (starting,
    /// stopping, or leading with caches not yet filled).
    pub fn serving(&self) -> Option<&'static str> {
        match *self.role.lock().expect("lock poisoned") {
            Role::Starting | Role::Stopping => None,
            // A healthy standby is ready, as in controller-runtime: were it not, a
            // PodDisruptionBudget could never let the leader's node be drained.
            Role::Standby => Some("standby"),
            Role::Serving => {
                let stores = self.stores.lock().expect("lock poisoned");
                let listed = !stores.is_empty()
                    && stores
                        .iter()
                        .all(|(_, listed)| listed.load(Ordering::Relaxed));
                listed.then_some("serving")
            }
        }
    }

    pub fn set_role(&self, role: Role) {
        *self.role.lock().expect("lock poisoned") = role;
    }
}

/// A Kubernetes error for a log line. The API server's own messages for authorization, absence
/// and conflicts name objects only; any other message (an admission webhook's, a validation
/// message) could repeat values of the object sent, which may be a target Secret's data, so only
/// its code and reason are kept.
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if matches!(status.code, 401 | 403 | 404 | 409) => {
            format!("HTTP {} {}: {}", status.code, status.reason, status.message)
        }
        kube::Error::Api(status) => format!("HTTP {} {}", status.code, status.reason),
        other => other.to_string(),
    }
}

pub struct Context {
    client: Client,
    shared: Arc<Shared>,
    reporter: Reporter,
    secret_cache: SecretCache,
    settings: Settings,
    verifier: Arc<Verifier>,
    tracker: Arc<Tracker>,
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: Settings,
    verifier: Arc<Verifier>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        shared: shared.clone(),
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        secret_cache: SecretCache::default(),
        settings: settings.clone(),
        verifier,
        tracker: Arc::default(),
    });
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = vec![];
    let controllers: Vec<_> = scopes
        .into_iter()
        .map(|ns| {
            let listed = Arc::new(AtomicBool::new(false));
            let controller = controller(&client, ns.as_deref(), &ctx, listed.clone());
            stores.push((controller.store(), listed));
            controller
        })
        .collect();
    *shared.stores.lock().expect("lock poisoned") = stores;
    shared.set_role(Role::Serving);
    tokio::spawn(forget_deleted(ctx.clone(), shutdown.clone()));
    let controllers = controllers.into_iter().map(|controller| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            controller
                .graceful_shutdown_on(shutdown.cancelled_owned())
                .run(reconcile, error_policy, ctx)
                .for_each(|_| std::future::ready(()))
                .await
        }
    });
    futures::future::join_all(controllers).await;
    shared.stores.lock().expect("lock poisoned").clear();
}

/// Logs each (re)list of a watch, with how many objects it brought and how long it took.
fn lists<K>(what: &'static str) -> impl FnMut(&watcher::Event<K>) {
    let mut started = Instant::now();
    let mut count = 0usize;
    move |event| match event {
        watcher::Event::Init => {
            started = Instant::now();
            count = 0;
        }
        watcher::Event::InitApply(_) => count += 1,
        watcher::Event::InitDone => info!(count, took = ?started.elapsed(), "listed {what}"),
        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
    }
}

/// Every ten minutes, forgets what is remembered of resources that no longer exist, and cached
/// platform answers too old to be used.
async fn forget_deleted(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let resources = ctx.shared.resources();
        let live: HashSet<String> = resources
            .iter()
            .filter_map(|guard| guard.meta().uid.clone())
            .collect();
        ctx.tracker.retain(&live);
        let read: HashSet<secrets::Reading> = resources
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter_map(|cr| {
                let ns = cr.namespace()?;
                let resolved =
                    spec::resolve(&cr.name_any(), &cr.spec, ctx.settings.default_interval).ok()?;
                Some(secrets::Reading::new(
                    &ns,
                    resolved.credential_type,
                    &resolved.source,
                ))
            })
            .collect();
        ctx.secret_cache.forget_unwanted(&read);
        ctx.verifier
            .forget_older_than(Duration::from_secs(25 * 3600));
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller for one scope (a namespace, or all). Secrets are watched metadata-only, never
/// their data, and cached slimmed to name and version, so memory grows with the number of
/// credentials and hardly with the Secrets of the cluster: target Secrets by label, mapped to
/// their publisher; every other Secret mapped to the credentials that read it as source or want
/// it as target. Initial lists come in pages of 500 (not in one answer from the API server's
/// watch cache, which at 5000 resources raised the peak after a restart by 9 MiB and did not
/// shorten start-up).
fn controller(
    client: &Client,
    namespace: Option<&str>,
    ctx: &Context,
    listed: Arc<AtomicBool>,
) -> Controller<Guarded> {
    let ours = format!("{LABEL_MANAGED_BY}={MANAGER}");
    let others = format!("{LABEL_MANAGED_BY}!={MANAGER}");
    // Only spec (generation) and annotation (verify-requested-at) changes start a reconcile:
    // the operator's own status writes would otherwise each cause another one.
    let (reader, writer) = reflector::store();
    let tracker = ctx.tracker.clone();
    let credentials = reflector(
        writer,
        watcher(
            api::<Guarded>(client, namespace),
            watcher::Config::default(),
        )
        .modify(slim)
        .inspect_ok(lists("MendixCredentials"))
        // Readiness is not read from the store: its signal wakes only its last waiter, and that
        // must remain the controller.
        .inspect_ok(move |event| {
            if let watcher::Event::InitDone = event {
                listed.store(true, Ordering::Relaxed);
            }
        }),
    )
    // Once the cache holds a resource past a status write, the write's copy can go.
    .inspect_ok(move |event| {
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
    );
    let controller = Controller::for_stream(credentials, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    // The cache keeps slim copies; the mappings see the Secrets' links (owner, labels) first.
    let watch_secrets = |selector: &str, what: &'static str| {
        let (reader, mut writer) = reflector::store();
        let current = Arc::new(AtomicBool::new(false));
        ctx.secret_cache.watch(reader, current.clone());
        watcher(
            api::<SecretMeta>(client, namespace),
            watcher::Config::default().labels(selector),
        )
        .inspect_ok(lists(what))
        .inspect_ok(move |event| writer.apply_watcher_event(&secrets::slim_event(event)))
        // The cache is current from the end of a list until an error or the next re-list; after
        // a reconnect, from the first event that arrives. (Until then reconciles read what they
        // need, as they would without a cache.)
        .inspect(move |result| {
            let flowing = matches!(
                result,
                Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))
            );
            current.store(flowing, Ordering::Relaxed);
        })
        .default_backoff()
        .touched_objects()
    };
    controller
        .watches_stream(watch_secrets(&ours, "target Secrets"), |target| {
            publisher(&target)
        })
        .watches_stream(watch_secrets(&others, "other Secrets"), move |secret| {
            referencing(&store, &secret)
        })
}

/// The credential that published a target Secret: its controller owner, or, when someone
/// removed the owner reference, the one its `mxcred.io/credential` label names.
fn publisher(secret: &SecretMeta) -> Option<ObjectRef<Guarded>> {
    let ns = secret.metadata.namespace.as_deref()?;
    let owner = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "MendixCredential")
        .map(|r| r.name.clone());
    let name = owner.or_else(|| secret.labels().get(LABEL_CREDENTIAL).cloned())?;
    Some(ObjectRef::new(&name).within(ns))
}

/// The credentials that read `secret` as their source, or want to write it as their target (a
/// target blocked by a foreign Secret is retried when that Secret changes or goes away).
fn referencing(store: &Store<Guarded>, secret: &SecretMeta) -> Vec<ObjectRef<Guarded>> {
    let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
        return vec![];
    };
    // Runs for every Secret event: filter under the store's lock, without allocating per
    // resource, and clone only the matches.
    store
        .state_filter(|guard| match &guard.0 {
            Ok(cr) if cr.metadata.namespace.as_ref() == Some(ns) => {
                let target = cr.spec.target.as_ref().and_then(|t| t.name.as_deref());
                cr.spec.source_ref.name == *name
                    || target.or(cr.metadata.name.as_deref()) == Some(name)
            }
            _ => false,
        })
        .iter()
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}

async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let uid = guard.meta().uid.clone().unwrap_or_default();
    let result = match &guard.0 {
        Ok(cr) => reconcile_valid(cr, &ctx).await,
        Err(invalid) => reconcile_unreadable(&guard, &invalid.error, &ctx)
            .await
            .map(|action| (action, ready::INVALID_SPEC)),
    };
    let label = result.as_ref().map_or("error", |(_, reason)| reason);
    ctx.shared.metrics.reconciled(label, started.elapsed());
    if result.is_ok() {
        ctx.tracker.api_succeeded(&uid);
    }
    result.map(|(action, _)| action)
}

fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let obj_ref = ObjectRef::from_obj(guard.as_ref());
    let attempt = ctx
        .tracker
        .api_failed(guard.meta().uid.as_deref().unwrap_or_default());
    let delay = backoff(attempt);
    warn!(credential = %obj_ref, %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Exponential backoff for transient API failures: 1 s doubling up to 256 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// An object the API server holds but this version cannot read (for example after a
/// downgrade): say so on the object and wait for it to change.
async fn reconcile_unreadable(
    guard: &Guarded,
    error: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = guard
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let ns = guard
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    warn!(credential = %format!("{ns}/{name}"), error, "cannot read resource");
    let uid = guard.meta().uid.clone().unwrap_or_default();
    let version = guard.meta().resource_version.clone();
    // Its status cannot be read either: remember the write, so that the write's own watch event
    // does not cause another write.
    if ctx.tracker.has_written(&uid, version.as_deref()) {
        return Ok(Action::await_change());
    }
    let mut conds = vec![];
    conditions::set(
        &mut conds,
        Verdict {
            type_: condition::READY,
            status: "False",
            reason: ready::INVALID_SPEC,
            message: format!("the resource cannot be read: {error}"),
        },
        guard.meta().generation,
        now(),
    );
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": "MendixCredential",
        "status": { "conditions": conds, "observedGeneration": guard.meta().generation },
    });
    let written = Api::<Guarded>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &apply_params(), &Patch::Apply(patch))
        .await?;
    let produced = written.meta().resource_version.clone();
    ctx.tracker.wrote_status(&uid, version, produced, None);
    Ok(Action::await_change())
}

/// What the sync step concluded.
struct Synced {
    verdict: Verdict,
    /// The credential now published, if the target holds the current one.
    published: Option<Credential>,
    /// Whether target data was written in this reconcile.
    wrote: bool,
    /// When the target's data was last written, as the target itself records it (a status read
    /// from a stale cache must not lose it).
    synced_at: Option<Time>,
}

/// Reconciles a readable resource; returns the next action and the Ready reason.
async fn reconcile_valid(
    cr: &MendixCredential,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    let ns = cr.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = cr.name_any();
    let uid = cr.uid().ok_or(Error::MissingMetadata("uid"))?;
    let previous = ctx
        .tracker
        .newer_status(&uid, cr.resource_version().as_deref())
        .or_else(|| cr.status.clone())
        .unwrap_or_default();

    let resolved = spec::resolve(&name, &cr.spec, ctx.settings.default_interval);
    let synced = match &resolved {
        Ok(resolved) => sync(cr, &ns, resolved, ctx).await?,
        Err(InvalidSpec(message)) => Synced {
            verdict: not_ready(ready::INVALID_SPEC, message.clone()),
            published: None,
            wrote: false,
            synced_at: None,
        },
    };

    let mut status = previous.clone();
    status.observed_generation = cr.metadata.generation;
    if let Some(credential) = &synced.published {
        status.token_fingerprint = Some(credential.fingerprint());
        if let Ok(resolved) = &resolved {
            status.secret_name = Some(resolved.target_name.clone());
        }
    }
    if synced.synced_at.is_some() {
        status.last_synced_time = synced.synced_at.clone();
    }
    let reason = synced.verdict.reason;
    let previous_reason =
        conditions::find(&previous.conditions, condition::READY).map(|c| c.reason.clone());
    let transition = previous_reason.as_deref() != Some(reason);
    let message = synced.verdict.message.clone();
    conditions::set(
        &mut status.conditions,
        synced.verdict,
        cr.metadata.generation,
        now(),
    );

    // Events are published once the status that records them is written: a crash in between
    // loses an Event rather than repeating it after the restart.
    let mut events: Vec<Announcement> = vec![];
    match reason {
        ready::SYNCED if synced.wrote => {
            let target = status.secret_name.clone().unwrap_or_default();
            events.push((EventType::Normal, reason, format!("wrote Secret {target}")));
        }
        ready::TARGET_CONFLICT | ready::INVALID_SOURCE if transition => {
            events.push((EventType::Warning, reason, message));
        }
        _ => {}
    }

    let next_check = match (&resolved, &synced.published) {
        (Ok(resolved), Some(credential)) => {
            verify(
                cr,
                resolved,
                credential,
                &previous,
                &mut status,
                &mut events,
                ctx,
            )
            .await
        }
        _ => {
            if conditions::find(&status.conditions, condition::TOKEN_VALID).is_none() {
                verification::record(
                    &mut status,
                    &Outcome::pending(),
                    cr.metadata.generation,
                    now(),
                );
            }
            None
        }
    };

    let token_valid = conditions::find(&status.conditions, condition::TOKEN_VALID)
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    write_status(cr, &uid, &ns, &previous, status, ctx).await?;
    for (type_, reason, note) in events {
        publish(ctx, cr, type_, reason, note).await;
    }
    info!(
        credential = %format!("{ns}/{name}"),
        reason,
        token_valid,
        wrote = synced.wrote,
        "reconciled"
    );
    // Periodic resync as a safety net; every input is also watched.
    let resync = Duration::from_secs(3600);
    let action = match (reason, next_check) {
        (_, Some(next)) => Action::requeue(next.min(resync)),
        (ready::SYNCED, None) => Action::requeue(resync),
        _ => Action::await_change(),
    };
    Ok((action, reason))
}

/// An Event to publish: type, reason, note.
type Announcement = (EventType, &'static str, String);

/// Verifies the published credential when a check is due, forced or never made, and records
/// the outcome. Returns the time until the next check.
async fn verify(
    cr: &MendixCredential,
    resolved: &Resolved,
    credential: &Credential,
    previous: &MendixCredentialStatus,
    status: &mut MendixCredentialStatus,
    events: &mut Vec<Announcement>,
    ctx: &Context,
) -> Option<Duration> {
    let uid = cr.uid().unwrap_or_default();
    let uid = uid.as_str();
    let generation = cr.metadata.generation;
    let Some(plan) = &resolved.verification else {
        verification::record(status, &Outcome::verification_disabled(), generation, now());
        status.next_verification_time = None;
        return None;
    };
    let interval = ctx.settings.test_interval.unwrap_or(plan.interval);
    let clock = SystemTime::now();
    let forced = verify_requested(cr, uid, previous, ctx);
    let rotated = previous
        .token_fingerprint
        .as_deref()
        .is_some_and(|f| f != credential.fingerprint());
    if rotated {
        // The verdict was about the previous credential; it says nothing about this one.
        status
            .conditions
            .retain(|c| c.type_ != condition::TOKEN_VALID);
        status.last_verified_time = None;
        status.last_verification_error = None;
        ctx.tracker.reset_transient(uid);
    }
    let has_verdict = conditions::find(&status.conditions, condition::TOKEN_VALID)
        .is_some_and(|c| c.reason != Reason::Pending.as_str());
    let scheduled = previous
        .next_verification_time
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    if forced || rotated || !has_verdict || schedule::is_due(clock, scheduled) {
        let (outcome, answered) = ctx
            .verifier
            .check(&plan.probe, credential, interval, forced)
            .await;
        let attempt = ctx.tracker.attempt(uid, &outcome);
        ctx.shared.metrics.verified(outcome.reason.as_str());
        let name = format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any());
        info!(credential = %name, reason = outcome.reason.as_str(), forced, "verified");
        let answered_at = jiff::Timestamp::try_from(answered).map_or_else(|_| now(), api_time);
        let transition = verification::record(status, &outcome, generation, answered_at);
        if let Some(reason) = transition.filter(|r| ctx.tracker.announce(uid, *r)) {
            let type_ = match reason {
                Reason::Verified => Some(EventType::Normal),
                Reason::TokenRejected | Reason::UserDeactivated => Some(EventType::Warning),
                _ => None,
            };
            if let Some(type_) = type_ {
                events.push((type_, reason.as_str(), outcome.message.clone()));
            }
        }
        let next = schedule::next_check(
            answered.min(clock),
            interval,
            schedule::jitter(uid, interval),
            attempt,
        );
        // Rounded up: a check recorded as due before the cached answer expires would find that
        // answer still fresh, and be due again at once.
        status.next_verification_time = jiff::Timestamp::try_from(next)
            .ok()
            .map(|t| api_time(t + jiff::SignedDuration::from_nanos(999_999_999)));
    }
    let next = status
        .next_verification_time
        .as_ref()
        .map(|t| SystemTime::from(t.0))?;
    Some(next.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Whether the `verify-requested-at` annotation holds a value not served yet: one that changed
/// since this instance last served it or, first seen by this instance, one set (as
/// `managedFields` records) no earlier than the last definitive check.
fn verify_requested(
    cr: &MendixCredential,
    uid: &str,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> bool {
    let Some(value) = cr.annotations().get(ANNOTATION_VERIFY_REQUESTED_AT) else {
        return false;
    };
    match ctx.tracker.serve_verify_request(uid, value) {
        Some(old) => &old != value,
        None => match (
            annotation_set_at(&cr.metadata, ANNOTATION_VERIFY_REQUESTED_AT),
            &previous.last_verified_time,
        ) {
            (Some(asked), Some(done)) => asked >= done.0,
            _ => true,
        },
    }
}

/// When `key` was last set, from the `managedFields` entry that owns it.
fn annotation_set_at(meta: &ObjectMeta, key: &str) -> Option<jiff::Timestamp> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| sets_annotation(entry, key))
        .filter_map(|entry| entry.time.as_ref().map(|t| t.0))
        .max()
}

fn sets_annotation(entry: &ManagedFieldsEntry, key: &str) -> bool {
    entry.fields_v1.as_ref().is_some_and(|f| {
        f.0.get("f:metadata")
            .and_then(|m| m.get("f:annotations"))
            .and_then(|a| a.get(format!("f:{key}")))
            .is_some()
    })
}

/// What the cache keeps of a resource: not its managed fields (but those that set the
/// verify-requested-at annotation) nor kubectl's last-applied copy, which together outweigh the
/// spec many times over.
fn slim(guard: &mut Guarded) {
    let meta = guard.meta_mut();
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|e| sets_annotation(e, ANNOTATION_VERIFY_REQUESTED_AT));
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn not_ready(reason: &'static str, message: String) -> Verdict {
    Verdict {
        type_: condition::READY,
        status: "False",
        reason,
        message,
    }
}

/// Reads the source, renders the target and applies it when it differs from what is there.
async fn sync(
    cr: &MendixCredential,
    ns: &str,
    resolved: &Resolved,
    ctx: &Context,
) -> Result<Synced, Error> {
    let refused = |verdict| Synced {
        verdict,
        published: None,
        wrote: false,
        synced_at: None,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let source_name = &resolved.source.secret;
    let Some(read) = read_source(&secrets, ns, resolved, &ctx.secret_cache).await? else {
        return Ok(refused(not_ready(
            ready::SOURCE_NOT_FOUND,
            format!("Secret {source_name:?} not found in namespace {ns:?}"),
        )));
    };
    let credential = match read {
        Ok(credential) => credential,
        Err(e @ SourceError::KeyMissing { .. }) => {
            return Ok(refused(not_ready(ready::SOURCE_KEY_MISSING, e.to_string())));
        }
        Err(e @ SourceError::Invalid { .. }) => {
            return Ok(refused(not_ready(
                ready::INVALID_SOURCE,
                format!("{e}; the target Secret was left as it was"),
            )));
        }
    };

    let uid = cr.uid().ok_or(Error::MissingMetadata("uid"))?;
    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let desired = render::target_secret(ns, &cr.name_any(), owner, resolved, &credential);
    let digest = render::digest(&desired);
    let target = &resolved.target_name;
    let version = ctx.secret_cache.version(ns, target);
    let known = ctx
        .tracker
        .publication(&uid, target, version.as_deref(), &digest);
    let (wrote, synced_at) = match known {
        // The target is as this instance left it, and would be left as it is.
        Some(published) => (false, published.at),
        None => match write_target(cr, &uid, &secrets, desired, digest, ctx).await? {
            Ok(written) => written,
            Err(verdict) => return Ok(refused(verdict)),
        },
    };
    remove_previous_target(cr, &secrets, target, &uid).await?;
    Ok(Synced {
        verdict: Verdict {
            type_: condition::READY,
            status: "True",
            reason: ready::SYNCED,
            message: format!("Secret {target:?} holds the current credential"),
        },
        published: Some(credential),
        wrote,
        synced_at,
    })
}

/// The credential in the source Secret: from the cache when the watch reports the version it
/// was read at, else read. `None` when the Secret does not exist.
async fn read_source(
    secrets: &Api<Secret>,
    ns: &str,
    resolved: &Resolved,
    cache: &SecretCache,
) -> Result<Option<Result<Credential, SourceError>>, Error> {
    let (credential_type, keys) = (resolved.credential_type, &resolved.source);
    if let Some(cached) = cache.credential(ns, credential_type, keys) {
        return Ok(Some(cached));
    }
    let Some(source) = secrets.get_opt(&keys.secret).await? else {
        return Ok(None);
    };
    let data = source.data.unwrap_or_default();
    let credential = Credential::from_source(credential_type, keys, &data);
    if let Some(version) = source.metadata.resource_version {
        cache.remember(ns, credential_type, keys, version, credential.clone());
    }
    Ok(Some(credential))
}

/// Reads the target and applies `desired` unless the target already holds it; returns whether
/// it wrote and when the data was last written, or the verdict when it cannot be written.
async fn write_target(
    cr: &MendixCredential,
    uid: &str,
    secrets: &Api<Secret>,
    mut desired: Secret,
    digest: [u8; 32],
    ctx: &Context,
) -> Result<Result<(bool, Option<Time>), Verdict>, Error> {
    let target = desired
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    // Read even when no watch reports it: a Secret another resource (or anyone) created a
    // moment ago must be refused as a conflict, not taken over; the watch may lag by more.
    let existing = secrets.get_opt(&target).await?;
    let (published, wrote) = match &existing {
        Some(existing) if !render::is_ours(existing, uid, &cr.name_any()) => {
            return Ok(Err(not_ready(
                ready::TARGET_CONFLICT,
                format!(
                    "Secret {target:?} exists and is not managed by this MendixCredential; \
                     delete or rename it, or choose another spec.target.name"
                ),
            )));
        }
        Some(existing) if render::is_current(existing, &desired) => {
            let published = Published {
                target,
                version: existing.resource_version().unwrap_or_default(),
                digest,
                at: render::applied_at(existing),
            };
            (published, false)
        }
        _ => {
            // The resourceVersion makes the apply conditional: if the Secret changed (or was
            // replaced by a foreign one) since it was read, the apply fails and is retried.
            let before = existing.and_then(|e| e.metadata.resource_version);
            desired.metadata.resource_version = before.clone();
            match secrets
                .patch(&target, &apply_params(), &Patch::Apply(&desired))
                .await
            {
                Ok(written) => {
                    let version = written.resource_version().unwrap_or_default();
                    // An apply that changed nothing keeps the version: nothing was written.
                    let wrote = before.as_ref() != Some(&version);
                    let at = if wrote {
                        Some(now())
                    } else {
                        render::applied_at(&written)
                    };
                    let published = Published {
                        target,
                        version,
                        digest,
                        at,
                    };
                    (published, wrote)
                }
                Err(kube::Error::Api(e)) if e.is_invalid() => {
                    return Ok(Err(not_ready(ready::INVALID_SPEC, refused_target(&e))));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let at = published.at.clone();
    ctx.tracker.record_published(uid, published);
    Ok(Ok((wrote, at)))
}

/// The API server refused the target Secret: only labels and annotations from the spec can make
/// it invalid. Names the fields, not the values.
fn refused_target(e: &Status) -> String {
    let fields: Vec<&str> = e
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    format!(
        "the API server refused the target Secret (invalid: {}); check spec.target.labels and spec.target.annotations",
        fields.join(", ")
    )
}

/// After `spec.target.name` changed, deletes the Secret published under the old name.
async fn remove_previous_target(
    cr: &MendixCredential,
    secrets: &Api<Secret>,
    target: &str,
    uid: &str,
) -> Result<(), Error> {
    let Some(old) = cr.status.as_ref().and_then(|s| s.secret_name.as_deref()) else {
        return Ok(());
    };
    if old == target {
        return Ok(());
    }
    if let Some(secret) = secrets.get_opt(old).await?
        && render::is_controlled_by(&secret, uid)
    {
        secrets.delete(old, &DeleteParams::default()).await?;
        info!(secret = old, "deleted the previous target Secret");
    }
    Ok(())
}

async fn write_status(
    cr: &MendixCredential,
    uid: &str,
    ns: &str,
    previous: &MendixCredentialStatus,
    status: MendixCredentialStatus,
    ctx: &Context,
) -> Result<(), Error> {
    // A status always holds the Ready condition, so it never equals the empty status of a
    // resource seen for the first time.
    if &status == previous {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": "MendixCredential",
        "status": status,
    });
    let written = Api::<MendixCredential>::namespaced(ctx.client.clone(), ns)
        .patch_status(&cr.name_any(), &apply_params(), &Patch::Apply(patch))
        .await?;
    ctx.tracker.wrote_status(
        uid,
        cr.resource_version(),
        written.resource_version(),
        written.status,
    );
    Ok(())
}

async fn publish(
    ctx: &Context,
    cr: &MendixCredential,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // A recorder per Event, as kube documents: a long-lived one keeps every Event it published
    // for six minutes, and scans them all on each publish.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(error) = recorder.publish(&event, &cr.object_ref(&())).await {
        warn!(%error, reason, "could not publish Event");
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn now() -> Time {
    api_time(jiff::Timestamp::now())
}

/// A time as the API serializes it: in whole seconds. A status holding a finer time would differ
/// from its own copy read back, and be written a second time.
fn api_time(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).expect("a second of a valid time is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(100), Duration::from_secs(256));
    }
}
