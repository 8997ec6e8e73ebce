//! The controllers' wiring: the watches of MendixCredentials and of Secrets, the mappings from a
//! Secret to the resources it concerns, the verification loop beside them, and what the HTTP
//! endpoints read. The reconcile itself is [`crate::shell::reconcile`].

use crate::domain::api::{LABEL_CREDENTIAL, LABEL_MANAGED_BY, LABEL_SOURCE, MANAGER};
use crate::domain::spec;
use crate::shell::Guarded;
use crate::shell::api_error::describe_watch;
use crate::shell::consumers::{self, ConsumerIndex};
use crate::shell::context::{Context, Settings};
use crate::shell::metrics::Metrics;
use crate::shell::namespaced::Namespaced;
use crate::shell::reconcile::{error_policy, reconcile};
use crate::shell::secrets::{self, SecretCache, SecretMeta};
use crate::shell::verifier::Verifier;
use crate::shell::watch::{self, slim};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod gauges;

/// What the controller shares with the HTTP endpoints: metrics, and its caches of resources,
/// from which the `mxcred_credentials` gauge is counted at scrape time.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The cache of each watch of MendixCredentials, with the flag the watch sets once it has
    /// listed them.
    stores: Mutex<Vec<(Store<Guarded>, Arc<AtomicBool>)>>,
    /// The cache of ClusterMendixCredentials, in cluster mode.
    cluster: Arc<Mutex<Option<Store<crate::shell::cluster::ClusterGuarded>>>>,
    role: Mutex<Role>,
    /// When the current leadership term ends, on the monotonic clock (`None` without leader
    /// election). A process woken from a stall can answer `/readyz` before its leader task has
    /// run and taken the role back, so `/readyz` reads the clock itself.
    term_ends: Mutex<Option<Instant>>,
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
            cluster: Arc::default(),
            role: Mutex::default(),
            term_ends: Mutex::default(),
        }
    }

    /// Every cached resource.
    fn resources(&self) -> Vec<Arc<Guarded>> {
        let stores = self.stores.lock();
        stores.iter().flat_map(|(store, _)| store.state()).collect()
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .set_cluster_credentials(crate::shell::cluster::token_valid_counts(
                self.cluster_store(),
            ));

        let cluster = self.cluster_store().map(|s| s.state()).unwrap_or_default();
        let counts = gauges::count(&self.resources(), &cluster);
        let (namespaced, cluster) = counts.rotation_due;
        self.metrics.set_rotation_due(namespaced, cluster);
        let (namespaced, cluster) = counts.affected_workloads;
        self.metrics.set_affected_workloads(namespaced, cluster);
        self.metrics.encode(counts.token_valid, counts.held)
    }

    /// What this instance is doing, for `/readyz`: `None` while it is not ready (starting,
    /// stopping, or leading with caches not yet filled).
    pub fn serving(&self) -> Option<&'static str> {
        match *self.role.lock() {
            Role::Starting | Role::Stopping => None,
            // A healthy standby is ready, as in controller-runtime: were it not, a
            // PodDisruptionBudget could never let the leader's node be drained.
            Role::Standby => Some("standby"),
            Role::Serving if !self.within_term() => Some("standby"),
            Role::Serving => {
                let stores = self.stores.lock();
                let listed = !stores.is_empty()
                    && stores
                        .iter()
                        .all(|(_, listed)| listed.load(Ordering::Relaxed));
                listed.then_some("serving")
            }
        }
    }

    /// The cache of ClusterMendixCredentials, while their controller runs.
    fn cluster_store(&self) -> Option<Store<crate::shell::cluster::ClusterGuarded>> {
        self.cluster.lock().clone()
    }

    pub fn set_term_end(&self, end: Option<Instant>) {
        *self.term_ends.lock() = end;
    }

    fn within_term(&self) -> bool {
        self.term_ends.lock().is_none_or(|end| Instant::now() < end)
    }

    pub fn set_role(&self, role: Role) {
        *self.role.lock() = role;
    }
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: Settings,
    verifier: Arc<Verifier>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let probe = api::<crate::domain::api::MendixCredential>(&client, scopes[0].as_deref());
    let streaming_lists = watch::streams_initial_events(&probe).await;
    info!(
        streaming_lists,
        "the watches receive their initial state {}",
        if streaming_lists {
            "streamed (sendInitialEvents)"
        } else {
            "as paginated lists"
        }
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        secrets: SecretCache::default(),
        settings: settings.clone(),
        verifier: verifier.clone(),
        tracker: Arc::default(),
        metrics: shared.metrics.clone(),
        retries: Arc::default(),
        events: Arc::default(),
        status_writes: Default::default(),
        consumers: Arc::new(ConsumerIndex::new(settings.discover_consumers)),
        streaming_lists,
    });
    consumers::start(&ctx.consumers, &client, &scopes, streaming_lists);
    let answered = verifier.routes(&scopes);
    let mut stores = vec![];
    let controllers: Vec<_> = scopes
        .iter()
        .zip(answered)
        .map(|(ns, answered)| {
            let listed = Arc::new(AtomicBool::new(false));
            let controller = controller(&client, ns.as_deref(), &ctx, listed.clone());
            let store = controller.store();
            let used = ctx
                .consumers
                .changes(ns.as_deref())
                .flat_map(move |(ns, secret)| {
                    futures::stream::iter(publishing(&store, &ns, &secret))
                });
            let controller = controller.reconcile_on(answered).reconcile_on(used);
            stores.push((controller.store(), listed));
            controller
        })
        .collect();
    *shared.stores.lock() = stores;
    shared.set_role(Role::Serving);
    tokio::spawn(forget_deleted(
        ctx.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(verifier.run(shutdown.clone()));
    // ClusterMendixCredentials write into any namespace: only an operator serving all of them
    // serves the kind.
    let cluster_controller = async {
        if settings.namespaces.is_empty() {
            crate::shell::cluster::run(ctx.clone(), shared.cluster.clone(), shutdown.clone()).await;
        } else {
            info!(
                "ClusterMendixCredentials are not served: the operator serves only the namespaces given with --namespace"
            );
        }
    };
    let controllers = controllers.into_iter().map(|controller| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            controller
                .graceful_shutdown_on(shutdown.cancelled_owned())
                .run(reconcile, error_policy, Arc::new(Namespaced(ctx)))
                .for_each(|_| std::future::ready(()))
                .await
        }
    });
    futures::future::join(futures::future::join_all(controllers), cluster_controller).await;
    shared.stores.lock().clear();
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

/// Every minute, drops the status copies the cache has caught up with; every ten minutes,
/// forgets what is remembered of resources that no longer exist.
async fn forget_deleted(ctx: Arc<Context>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ctx.tracker.drop_settled(Duration::from_secs(30));
        ticks = ticks.wrapping_add(1);
        // The first tick comes at once, before any list: nothing to forget yet.
        if ticks % 10 != 0 {
            continue;
        }
        let resources = shared.resources();
        let mut live: HashSet<String> = resources
            .iter()
            .filter_map(|guard| guard.meta().uid.clone())
            .collect();
        let (cluster_live, cluster_read) = shared
            .cluster_store()
            .map(|store| crate::shell::cluster::live(&store, ctx.settings.default_interval))
            .unwrap_or_default();
        live.extend(cluster_live);
        debug!(
            live = live.len(),
            "forgetting what is remembered of deleted resources"
        );
        ctx.tracker.retain(&live);
        ctx.verifier.retain(&live);
        ctx.retries.retain(&live);
        let mut read: HashSet<secrets::Reading> = resources
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
        read.extend(cluster_read);
        ctx.secrets.forget_unwanted(&read);
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
/// their data, and cached as name and version only ([`secrets::Versions`]): target Secrets by
/// our label, mapped to their publisher, and sources by their opt-in label, mapped to the
/// credentials that read them. No other Secret is watched or listed, so however many and however large the other
/// Secrets of the cluster are, they cost nothing. (A foreign Secret blocking a target is
/// therefore not watched: that conflict is retried on a timer.) The initial state is streamed
/// by the watch where the API server offers it, else listed in small pages
/// ([`watch::config`]), never in one answer from the API server's watch cache (which at 5000
/// resources raised the peak after a restart by 9 MiB and did not shorten start-up).
fn controller(
    client: &Client,
    namespace: Option<&str>,
    ctx: &Context,
    listed: Arc<AtomicBool>,
) -> Controller<Guarded> {
    let ours = format!("{LABEL_MANAGED_BY}={MANAGER}");
    let sources = format!("{LABEL_SOURCE}=true");
    // Only spec (generation) and annotation (verify-requested-at) changes start a reconcile:
    // the operator's own status writes would otherwise each cause another one.
    let (reader, writer) = reflector::store();
    let tracker = ctx.tracker.clone();
    let credentials = reflector(
        writer,
        watch::first_list_as_it_arrives(
            watcher(
                api::<Guarded>(client, namespace),
                watch::config(ctx.streaming_lists),
            )
            .modify(slim)
            .inspect_ok(lists("MendixCredentials"))
            // Readiness is not read from the store: its signal wakes only its last waiter, and
            // that must remain the controller.
            .inspect_ok(move |event| {
                if let watcher::Event::InitDone = event {
                    listed.store(true, Ordering::Relaxed);
                }
            }),
        ),
    )
    .inspect_err(|e| warn!(error = %describe_watch(e), "cannot watch MendixCredentials; retrying"))
    // Once the cache holds a resource past a status write, the write's copy can go soon.
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
    // The cache keeps versions only; the mappings see the Secrets' links (owner, labels).
    let watch_secrets = |selector: &str, what: &'static str| {
        let mut versions = secrets::Versions::default();
        let current = Arc::new(AtomicBool::new(false));
        ctx.secrets.watch(versions.reader(), current.clone());
        watcher(
            api::<SecretMeta>(client, namespace),
            watch::config(ctx.streaming_lists).labels(selector),
        )
        .inspect_ok(lists(what))
        .inspect_ok(move |event| versions.apply(event))
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
        .watches_stream(watch_secrets(&sources, "source Secrets"), move |secret| {
            reading(&store, &secret)
        })
}

/// The credential that published a target Secret: its controller owner, or, when someone
/// removed the owner reference, the one its `mxcred.io/credential` label names (a long name's
/// label is shortened, and names nothing: such a target waits for the next reconcile of its
/// resource).
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

/// The credentials that publish Secret `target` in `ns` (their `spec.target.name`, else their
/// own name).
fn publishing(store: &Store<Guarded>, ns: &str, target: &str) -> Vec<ObjectRef<Guarded>> {
    store
        .state_filter(|guard| match &guard.0 {
            Ok(cr) => {
                cr.metadata.namespace.as_deref() == Some(ns)
                    && cr
                        .spec
                        .target
                        .as_ref()
                        .and_then(|t| t.name.as_deref())
                        .or(cr.metadata.name.as_deref())
                        == Some(target)
            }
            _ => false,
        })
        .iter()
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}

/// The credentials that read `secret` as their source.
fn reading(store: &Store<Guarded>, secret: &SecretMeta) -> Vec<ObjectRef<Guarded>> {
    let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
        return vec![];
    };
    // Runs for every source event: filter under the store's lock, without allocating per
    // resource, and clone only the matches.
    store
        .state_filter(|guard| match &guard.0 {
            Ok(cr) => {
                cr.metadata.namespace.as_ref() == Some(ns) && cr.spec.source_ref.name == *name
            }
            _ => false,
        })
        .iter()
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}
