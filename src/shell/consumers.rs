//! The consumers of target Secrets, found by watching Pods and the workload objects that make
//! them ([`crate::domain::consumers::KINDS`]). Each object is cut down as it is read to its
//! controller and the names of the Secrets its pod spec references
//! ([`crate::domain::consumers::WorkloadSpec`]): nothing else of a pod spec is ever kept, logged
//! or written, and the index holds a few names per object. A change of who uses a Secret wakes
//! the resources that publish it.

use crate::domain::consumers::{self, Consumer, Consumers, Key, Owner};
use crate::shell::api_error::describe_watch;
use crate::shell::watch;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use tokio::sync::mpsc;
use tracing::{info, warn};
use workload::{Workload, api_resource};

mod workload;

/// What one object of a namespace contributes: its controller and the Secrets it names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    owner: Option<Owner>,
    secrets: BTreeSet<String>,
}

/// The objects of one namespace.
#[derive(Default)]
struct Namespace {
    entries: HashMap<Key, Entry>,
    /// Each Secret's name, and the objects that name it.
    named_by: HashMap<String, HashSet<Key>>,
}

impl Namespace {
    /// The workloads that use `secret`, each counted as its top controller.
    fn users(&self, secret: &str) -> BTreeSet<(String, String)> {
        let Some(keys) = self.named_by.get(secret) else {
            return BTreeSet::new();
        };
        let owners = Owners(&self.entries);
        keys.iter().map(|key| owners.top(key)).collect()
    }

    /// Sets (or with `None` removes) the entry of `key`; returns the Secrets whose users may
    /// have changed.
    fn set(&mut self, key: Key, entry: Option<Entry>) -> BTreeSet<String> {
        let old = match &entry {
            Some(entry) => self.entries.insert(key.clone(), entry.clone()),
            None => self.entries.remove(&key),
        };
        if old == entry {
            return BTreeSet::new();
        }
        let old_names = old.map(|e| e.secrets).unwrap_or_default();
        let new_names = entry.map(|e| e.secrets).unwrap_or_default();
        for name in old_names.difference(&new_names) {
            if let Some(keys) = self.named_by.get_mut(name) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.named_by.remove(name);
                }
            }
        }
        for name in &new_names {
            self.named_by
                .entry(name.clone())
                .or_default()
                .insert(key.clone());
        }
        old_names.union(&new_names).cloned().collect()
    }
}

/// The controllers of a namespace's objects, for [`consumers::top`].
struct Owners<'a>(&'a HashMap<Key, Entry>);

impl Owners<'_> {
    fn top(&self, key: &Key) -> (String, String) {
        consumers::top(key, &|k: &Key| self.0.get(k).map(|e| e.owner.clone()))
    }
}

/// Where the index stands.
#[derive(Default)]
struct State {
    namespaces: HashMap<String, Namespace>,
    /// The watches that have not listed their objects yet.
    listing: usize,
    /// The watches that have listed their objects once.
    listed: HashSet<Watch>,
    /// The objects seen by each watch's current list, until it is done.
    relisting: HashMap<Watch, HashSet<(String, Key)>>,
    /// Why the consumers cannot be known, once a watch was refused.
    unknown: Option<String>,
}

/// Where the changes of a scope (a namespace, or all) go, as (namespace, Secret).
type Wake = (Option<String>, mpsc::UnboundedSender<(String, String)>);

/// One watch: a kind, in a namespace or all.
type Watch = (&'static str, Option<String>);

/// The consumers of every target Secret, and the wakes of their publishers.
pub struct ConsumerIndex {
    state: Mutex<State>,
    /// Whether consumers are looked for at all (`--discover-consumers`).
    enabled: bool,
    wakes: Mutex<Vec<Wake>>,
}

impl ConsumerIndex {
    pub fn new(enabled: bool) -> Self {
        ConsumerIndex {
            state: Mutex::default(),
            enabled,
            wakes: Mutex::default(),
        }
    }

    /// Whether the index has listed all it watches (or knows it cannot): until then a reconcile
    /// waits, so that its first status already counts the consumers.
    pub fn current(&self) -> bool {
        !self.enabled || self.state.lock().listing == 0
    }

    /// The consumers of Secret `secret` in `namespaces`, named with their namespace when
    /// `with_namespace` (a ClusterMendixCredential's); `None` while not listed yet.
    pub fn of<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a str>,
        secret: &str,
        with_namespace: bool,
    ) -> Option<Consumers> {
        if !self.enabled {
            return Some(Consumers::unknown(
                "not looked for: the operator runs with --discover-consumers=false",
            ));
        }
        let state = self.state.lock();
        if let Some(why) = &state.unknown {
            return Some(Consumers::unknown(why.clone()));
        }
        if state.listing > 0 {
            return None;
        }
        let mut all = BTreeSet::new();
        for ns in namespaces {
            let Some(objects) = state.namespaces.get(ns) else {
                continue;
            };
            all.extend(
                objects
                    .users(secret)
                    .into_iter()
                    .map(|(kind, name)| Consumer {
                        namespace: with_namespace.then(|| ns.to_owned()),
                        kind,
                        name,
                    }),
            );
        }
        Some(Consumers::of(all))
    }

    /// The Secrets, as (namespace, name), whose users changed in `scope` (a namespace, or all).
    pub fn changes(
        &self,
        scope: Option<&str>,
    ) -> impl futures::Stream<Item = (String, String)> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.wakes.lock().push((scope.map(str::to_owned), tx));
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|change| (change, rx))
        })
    }

    fn wake(&self, namespace: &str, secrets: impl IntoIterator<Item = String>) {
        let mut wakes = self.wakes.lock();
        wakes.retain(|(_, tx)| !tx.is_closed());
        for secret in secrets {
            for (scope, tx) in wakes.iter() {
                if scope.as_deref().is_none_or(|s| s == namespace) {
                    let _ = tx.send((namespace.to_owned(), secret.clone()));
                }
            }
        }
    }

    /// Takes in one event of watch `watch`.
    fn apply(&self, watch: &Watch, event: watcher::Event<Workload>) {
        let kind = watch.0;
        let changed = {
            let mut state = self.state.lock();
            match event {
                watcher::Event::Init => {
                    state.relisting.insert(watch.clone(), HashSet::new());
                    vec![]
                }
                watcher::Event::InitApply(object) => {
                    let (ns, key, entry) = parts(kind, object);
                    if let Some(seen) = state.relisting.get_mut(watch) {
                        seen.insert((ns.clone(), key.clone()));
                    }
                    let touched = state
                        .namespaces
                        .entry(ns.clone())
                        .or_default()
                        .set(key, entry);
                    // The first list wakes nobody: the reconciles wait for it.
                    if state.listed.contains(watch) {
                        touched.into_iter().map(|s| (ns.clone(), s)).collect()
                    } else {
                        vec![]
                    }
                }
                watcher::Event::InitDone => {
                    let seen = state.relisting.remove(watch).unwrap_or_default();
                    let gone = stale(&state, watch, &seen);
                    let mut touched = vec![];
                    for (ns, key) in gone {
                        if let Some(objects) = state.namespaces.get_mut(&ns) {
                            touched.extend(
                                objects.set(key, None).into_iter().map(|s| (ns.clone(), s)),
                            );
                        }
                    }
                    if state.listed.insert(watch.clone()) {
                        state.listing = state.listing.saturating_sub(1);
                    }
                    touched
                }
                watcher::Event::Apply(object) => update(&mut state, kind, object, true),
                watcher::Event::Delete(object) => update(&mut state, kind, object, false),
            }
        };
        for (ns, secret) in changed {
            self.wake(&ns, [secret]);
        }
    }

    /// A watch the operator may not make: the consumers are unknown, said once.
    fn refuse(&self, watch: &Watch, why: String) {
        let mut state = self.state.lock();
        if state.unknown.is_none() {
            warn!(
                kind = watch.0,
                namespace = watch.1,
                reason = why,
                "consumers are not counted"
            );
            state.unknown = Some(why);
        }
        if state.listed.insert(watch.clone()) {
            state.listing = state.listing.saturating_sub(1);
        }
    }
}

/// The objects of `watch` that its list just done did not see.
fn stale(state: &State, watch: &Watch, seen: &HashSet<(String, Key)>) -> Vec<(String, Key)> {
    state
        .namespaces
        .iter()
        .filter(|(ns, _)| watch.1.as_ref().is_none_or(|scope| scope == *ns))
        .flat_map(|(ns, objects)| {
            objects
                .entries
                .keys()
                .filter(|key| key.kind == watch.0)
                .map(|key| (ns.clone(), key.clone()))
        })
        .filter(|object| !seen.contains(object))
        .collect()
}

/// A change after the list: the Secrets whose users changed (compared by top controller, so
/// that a pod replaced by its ReplicaSet wakes nobody).
fn update(
    state: &mut State,
    kind: &'static str,
    object: Workload,
    present: bool,
) -> Vec<(String, String)> {
    let (ns, key, entry) = parts(kind, object);
    let objects = state.namespaces.entry(ns.clone()).or_default();
    let before: HashMap<String, _> = entry
        .iter()
        .flat_map(|e| &e.secrets)
        .chain(
            objects
                .entries
                .get(&key)
                .map(|e| &e.secrets)
                .into_iter()
                .flatten(),
        )
        .map(|s| (s.clone(), objects.users(s)))
        .collect();
    let touched = objects.set(key, entry.filter(|_| present));
    touched
        .into_iter()
        .filter(|s| before.get(s).is_none_or(|users| *users != objects.users(s)))
        .map(|s| (ns.clone(), s))
        .collect()
}

/// An object's namespace, key and entry; no entry when the index has no use for it: a Pod that
/// names no Secret, or an object that names none and has no controller (the reference of a
/// child it controls names it all the same). One that names none but has a controller is kept,
/// to lead from pods that name one (say, by a volume a webhook added) up to their top
/// controller.
fn parts(kind: &'static str, object: Workload) -> (String, Key, Option<Entry>) {
    let Workload { metadata, secrets } = object;
    let owner = metadata
        .owner_references
        .into_iter()
        .flatten()
        .next()
        .map(|r| Owner {
            kind: r.kind,
            name: r.name,
        });
    (
        metadata.namespace.unwrap_or_default(),
        Key {
            kind,
            name: metadata.name.unwrap_or_default(),
        },
        (!secrets.is_empty() || (owner.is_some() && kind != "Pod"))
            .then_some(Entry { owner, secrets }),
    )
}

/// Whether a watch error is the API server's refusal: the operator may not list the kind (403),
/// or the server does not serve it (404). Either stays so: the consumers are unknown, and the
/// reconciles do not wait for that list.
fn refused(error: &watcher::Error) -> Option<u16> {
    let code = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => 0,
    };
    [403, 404].contains(&code).then_some(code)
}

/// What the status says of a watch refused with `code`.
fn refusal(watch: &Watch, code: u16) -> String {
    let kind = watch.0;
    let within = watch
        .1
        .as_ref()
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    if code == 404 {
        format!("the API server does not serve {kind}s{within}")
    } else {
        format!("the operator may not list {kind}s{within} (chart value consumers.enabled)")
    }
}

/// Starts the watches of every kind in each of `scopes` (a namespace, or all); they run until
/// the process ends or one is refused.
pub fn start(
    index: &std::sync::Arc<ConsumerIndex>,
    client: &Client,
    scopes: &[Option<String>],
    streaming: bool,
) {
    if !index.enabled {
        return;
    }
    index.state.lock().listing = scopes.len() * consumers::KINDS.len();
    for scope in scopes {
        for kind in consumers::KINDS {
            let resource = api_resource(kind);
            let api: Api<Workload> = match scope {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let watch: Watch = (kind, scope.clone());
            let index = index.clone();
            let stream = watcher(api, watch::config(streaming)).default_backoff();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => index.apply(&watch, event),
                        Err(e) if let Some(code) = refused(&e) => {
                            index.refuse(&watch, refusal(&watch, code));
                            return;
                        }
                        Err(e) => {
                            warn!(kind, error = %describe_watch(&e), "cannot watch workloads; retrying")
                        }
                    }
                }
            });
        }
    }
    info!(
        watches = scopes.len() * consumers::KINDS.len(),
        "watching workloads for the consumers of targets"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn object(json: serde_json::Value) -> Workload {
        serde_json::from_value(json).unwrap()
    }

    fn pod(name: &str, owner: Option<(&str, &str)>, secret: Option<&str>) -> Workload {
        let owners: Vec<serde_json::Value> = owner
            .map(|(kind, name)| {
                serde_json::json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
                    "uid": "u", "controller": true})
            })
            .into_iter()
            .collect();
        let env: Vec<serde_json::Value> = secret
            .map(|s| serde_json::json!({"secretRef": {"name": s}}))
            .into_iter()
            .collect();
        object(
            serde_json::json!({"metadata": {"name": name, "namespace": "ns",
            "ownerReferences": owners},
            "spec": {"containers": [{"name": "c", "envFrom": env,
                "env": [{"name": "PLAIN", "value": "never kept"}]}]}}),
        )
    }

    fn listed(index: &ConsumerIndex, secret: &str) -> Vec<String> {
        let consumers = index.of(["ns"], secret, false).unwrap();
        consumers
            .workloads
            .iter()
            .map(|w| format!("{} {}", w.kind, w.name))
            .collect()
    }

    #[test]
    fn pods_count_as_their_controller_and_only_a_change_of_users_wakes() {
        let index = ConsumerIndex::new(true);
        index.state.lock().listing = 2;
        let mut changes = Box::pin(index.changes(None));
        let pods: Watch = ("Pod", None);
        let sets: Watch = ("ReplicaSet", None);
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(pod("web-1", Some(("ReplicaSet", "web-a")), Some("ci"))),
            watcher::Event::InitApply(pod("plain", None, None)),
            watcher::Event::InitDone,
        ] {
            index.apply(&pods, event);
        }
        assert!(!index.current(), "a list is still under way");
        index.apply(&sets, watcher::Event::Init);
        index.apply(
            &sets,
            watcher::Event::InitApply(pod("web-a", Some(("Deployment", "web")), Some("ci"))),
        );
        index.apply(&sets, watcher::Event::InitDone);
        assert!(index.current());
        assert!(
            changes.next().now_or_never().is_none(),
            "the first lists wake nobody"
        );
        assert_eq!(listed(&index, "ci"), ["Deployment web"]);
        // A pod that names no Secret is not kept.
        let state = index.state.lock();
        assert_eq!(state.namespaces["ns"].entries.len(), 2);
        drop(state);

        // The ReplicaSet's next pod: the same users, no wake.
        index.apply(
            &pods,
            watcher::Event::Apply(pod("web-2", Some(("ReplicaSet", "web-a")), Some("ci"))),
        );
        assert!(changes.next().now_or_never().is_none());
        // A bare pod that starts using it: a wake.
        index.apply(&pods, watcher::Event::Apply(pod("debug", None, Some("ci"))));
        assert_eq!(
            changes.next().now_or_never(),
            Some(Some(("ns".to_owned(), "ci".to_owned())))
        );
        assert_eq!(listed(&index, "ci"), ["Deployment web", "Pod debug"]);
        index.apply(
            &pods,
            watcher::Event::Delete(pod("debug", None, Some("ci"))),
        );
        assert!(changes.next().now_or_never().is_some());
        assert_eq!(listed(&index, "ci"), ["Deployment web"]);
    }

    #[test]
    fn a_refused_watch_makes_the_consumers_unknown_and_waits_for_nothing() {
        let index = ConsumerIndex::new(true);
        index.state.lock().listing = 1;
        let watch: Watch = ("Pod", Some("team-a".into()));
        index.refuse(&watch, refusal(&watch, 403));
        assert!(index.current());
        let unknown = index.of(["team-a"], "ci", false).unwrap().unknown.unwrap();
        assert_eq!(
            unknown,
            "the operator may not list Pods in namespace team-a (chart value consumers.enabled)"
        );
        assert_eq!(
            refusal(&("CronJob", None), 404),
            "the API server does not serve CronJobs"
        );
    }
}
