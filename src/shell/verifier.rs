//! The verification loop: asks the platform about each credential (per credential and probe,
//! however many resources share them), apart from the sync of Secrets, and tells the resources
//! that use a credential when its answer changed.
//!
//! Reconciles subscribe (a call that never waits) and read the latest answer; the loop runs the
//! checks that are due, a few at a time and round-robin over namespaces, so that a namespace
//! with many due or slow checks takes no more than its share of workers and of the platform's
//! rate limit. Forced checks of one credential are merged within a cooldown.

use crate::domain::api::Scope;
use crate::domain::classify::{Outcome, Reason};
use crate::domain::cluster::ClusterMendixCredential;
use crate::domain::credential::Credential;
use crate::domain::probe::ProbeTarget;
use crate::domain::schedule::{Attempt, fair_pick};
use crate::shell::Guarded;
use crate::shell::metrics::Metrics;
use crate::shell::platform::Platform;
use futures::channel::mpsc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::info;

mod check;
use check::{Check, Subscriber};

/// Checks under way at once, in all.
const WORKERS: usize = 16;

/// A digest of a credential and the URL it is checked at: the loop never keys by the credential.
pub type Key = [u8; 32];
/// Checks under way at once for the resources of one namespace.
const PER_NAMESPACE: usize = 2;

pub struct Verifier {
    platform: Platform,
    metrics: Arc<Metrics>,
    /// Forced checks of one credential closer together than this are merged into one.
    cooldown: Duration,
    /// The shortest interval a resource's interval makes the checks of a credential shared with
    /// another namespace's resource.
    shared_floor: Duration,
    /// Checks started per second for the resources of one namespace.
    per_namespace_rate: DefaultKeyedRateLimiter<String>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    /// Where to send the resources whose answer changed: the controller of each scope.
    routes: Mutex<Vec<Route>>,
    /// Where to send the ClusterMendixCredentials whose answer changed (cluster mode only).
    cluster_route: Mutex<Option<mpsc::UnboundedSender<ObjectRef<ClusterMendixCredential>>>>,
}

/// The resources of a scope (a namespace, or all) and where to send them.
type Route = (Option<String>, mpsc::UnboundedSender<ObjectRef<Guarded>>);

/// A check to run.
struct Job {
    key: Key,
    namespace: String,
    probe: ProbeTarget,
    credential: Credential,
    forced: bool,
}

#[derive(Default)]
struct State {
    checks: HashMap<Key, Check>,
    /// The credential each resource (by uid) subscribed to, in each slot.
    subscribed: HashMap<(String, Slot), Key>,
    /// Per resource and slot that moved to a new credential: since when it has, and how many
    /// times since. Beyond [`FREE_MOVES`] within the cooldown, the moves make one check at its
    /// end, as forced checks do: rewriting a source again and again spends no more of the
    /// platform.
    moved: HashMap<(String, Slot), (SystemTime, u8)>,
    /// Checks under way per namespace.
    running: HashMap<String, usize>,
    /// The namespace served last, for round-robin.
    cursor: Option<String>,
}

/// Which of a resource's credentials a subscription is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The credential the target holds.
    Published,
    /// A new credential checked before it is published (rotation policy VerifyFirst).
    Pending,
}

/// What a reconcile tells the loop about its resource.
pub struct Subscription<'a> {
    pub scope: Scope,
    pub uid: &'a str,
    pub slot: Slot,
    pub namespace: &'a str,
    pub name: &'a str,
    pub credential: &'a Credential,
    pub probe: &'a ProbeTarget,
    pub interval: Duration,
    /// A forced check requested at this time, not yet served.
    pub forced: Option<SystemTime>,
    /// The verdict the status holds for this credential and probe, after a restart: the
    /// schedule goes on from it instead of asking again at once.
    pub known: Option<Known>,
}

/// What a resource's status says of its credential's checks, after a restart.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known {
    /// The last definitive verdict, and when it was given.
    pub verdict: Option<(Reason, SystemTime)>,
    /// When the next check is due.
    pub next: Option<SystemTime>,
}

/// What the loop knows of a credential, as a reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    Answered(Latest),
    /// Its first check is due now (or under way), queued at `since`.
    Queued {
        since: SystemTime,
    },
    /// No answer from this instance, and none due yet: the status's verdict still holds.
    Scheduled,
}

/// The latest answer for a credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Latest {
    pub outcome: Outcome,
    pub answered_at: SystemTime,
    pub next: SystemTime,
    /// Whether it was asked no earlier than the forced check in the subscription.
    pub serves_request: bool,
}

/// Moves of a resource to a new credential within the cooldown whose check runs at once (a
/// wrong token and its fix).
const FREE_MOVES: u8 = 2;

/// The default of `--platform-namespace-qps`.
pub const DEFAULT_NAMESPACE_QPS: NonZeroU32 = NonZeroU32::new(2).unwrap();

/// The checks one namespace may start at once before its rate applies: a namespace's first
/// handful of credentials are checked together, a flood of them at its rate.
pub const NAMESPACE_BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();

/// One namespace's share: bursts of [`NAMESPACE_BURST`] (or `qps`, if more), then `qps` a second.
fn namespace_quota(qps: NonZeroU32) -> Quota {
    Quota::per_second(qps).allow_burst(NAMESPACE_BURST.max(qps))
}

/// The default of `--shared-interval-floor`.
pub const DEFAULT_SHARED_FLOOR: Duration = Duration::from_secs(15 * 60);

impl Verifier {
    /// With `floor` as the shortest interval one namespace's resource makes the checks of a
    /// credential that another namespace's resources share.
    pub fn with_shared_floor(mut self, floor: Duration) -> Self {
        self.shared_floor = floor;
        self
    }

    /// With `qps` as the checks started per second for the resources of one namespace.
    pub fn with_namespace_qps(mut self, qps: NonZeroU32) -> Self {
        self.per_namespace_rate = RateLimiter::keyed(namespace_quota(qps));
        self
    }

    pub fn new(platform: Platform, metrics: Arc<Metrics>, cooldown: Duration) -> Self {
        Verifier {
            platform,
            metrics,
            cooldown,
            shared_floor: DEFAULT_SHARED_FLOOR,
            per_namespace_rate: RateLimiter::keyed(namespace_quota(DEFAULT_NAMESPACE_QPS)),
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            routes: Mutex::default(),
            cluster_route: Mutex::default(),
        }
    }

    /// Subscribes a resource to the checks of its credential and probe (and from any other it
    /// used before); returns what is known of its answer. `s.namespace` is the namespace whose
    /// share of the checks it counts against (a ClusterMendixCredential's source's).
    pub fn subscribe(&self, s: Subscription) -> View {
        let key = self.key(s.probe, s.credential);
        let now = SystemTime::now();
        let mut state = self.state.lock();
        let subscriber = (s.uid.to_owned(), s.slot);
        let mut moved = false;
        if let Some(old) = state.subscribed.insert(subscriber.clone(), key)
            && old != key
        {
            state.leave(&old, &subscriber);
            moved = true;
        }
        let not_before = (moved && !state.checks.contains_key(&key)).then(|| {
            let window = state.moved.entry(subscriber.clone()).or_insert((now, 0));
            if now >= window.0 + self.cooldown {
                *window = (now, 0);
            }
            window.1 = window.1.saturating_add(1);
            if window.1 <= FREE_MOVES {
                now
            } else {
                window.0 + self.cooldown
            }
        });
        let check = state
            .checks
            .entry(key)
            .or_insert_with(|| Check::new(s.credential.clone(), s.probe.clone()));
        if let Some(at) = not_before.filter(|at| *at > now) {
            check.not_before = Some(at);
        }
        check.subscribers.insert(
            subscriber,
            Subscriber {
                namespace: s.namespace.to_owned(),
                name: s.name.to_owned(),
                interval: s.interval,
                scope: s.scope,
            },
        );
        match (&check.answer, s.known) {
            (Some(_), _) => {}
            (None, Some(known)) => {
                if check.last.is_none() && check.restored_next.is_none() {
                    check.last = known.verdict.map(|(reason, at)| (at, Attempt::of(reason)));
                    check.restored_next = known.next;
                }
            }
            (None, None) => {
                check.wanted.get_or_insert(now);
            }
        }
        let asked = check.answer.as_ref().map(|(_, _, asked)| *asked);
        let served = match s.forced {
            Some(at) => asked.is_some_and(|asked| asked >= at),
            None => true,
        };
        if !served {
            check.forced = Some(
                check
                    .forced
                    .map_or(s.forced.unwrap_or(now), |f| f.min(s.forced.unwrap_or(now))),
            );
        }
        let next = check.scheduled(&key, self.shared_floor);
        let view = match &check.answer {
            Some((outcome, answered_at, _)) => View::Answered(Latest {
                outcome: outcome.clone(),
                answered_at: *answered_at,
                next,
                serves_request: s.forced.is_some() && served,
            }),
            None if check.first_due() => View::Queued {
                since: check.wanted.unwrap_or(now),
            },
            None => View::Scheduled,
        };
        drop(state);
        self.wake.notify_one();
        view
    }

    /// The resource no longer uses any credential (its source is gone or refused).
    pub fn unsubscribe(&self, uid: &str) {
        for slot in [Slot::Published, Slot::Pending] {
            self.unsubscribe_slot(uid, slot);
        }
    }

    /// The resource no longer uses a credential in `slot`.
    pub fn unsubscribe_slot(&self, uid: &str, slot: Slot) {
        let mut state = self.state.lock();
        let subscriber = (uid.to_owned(), slot);
        if let Some(key) = state.subscribed.remove(&subscriber) {
            state.leave(&key, &subscriber);
        }
    }

    /// Forgets resources that no longer exist.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut state = self.state.lock();
        let gone: Vec<(String, Slot)> = state
            .subscribed
            .keys()
            .filter(|(uid, _)| !live.contains(uid))
            .cloned()
            .collect();
        for subscriber in gone {
            if let Some(key) = state.subscribed.remove(&subscriber) {
                state.leave(&key, &subscriber);
            }
        }
        state.moved.retain(|(uid, _), _| live.contains(uid));
    }

    /// A stream of the resources of `scope` (a namespace, or all) whose answer changed. A new
    /// set of routes replaces the previous one (each leadership term starts controllers anew).
    pub fn routes(
        &self,
        scopes: &[Option<String>],
    ) -> Vec<mpsc::UnboundedReceiver<ObjectRef<Guarded>>> {
        let mut routes = self.routes.lock();
        routes.clear();
        scopes
            .iter()
            .map(|scope| {
                let (tx, rx) = mpsc::unbounded();
                routes.push((scope.clone(), tx));
                rx
            })
            .collect()
    }

    /// A stream of the ClusterMendixCredentials whose answer changed; replaces the previous one.
    pub fn cluster_route(&self) -> mpsc::UnboundedReceiver<ObjectRef<ClusterMendixCredential>> {
        let (tx, rx) = mpsc::unbounded();
        *self.cluster_route.lock() = Some(tx);
        rx
    }

    /// Runs due checks until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            let (due, wait) = self.take_due(running.len());
            for job in due {
                running.spawn(self.clone().check(job));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        running.abort_all();
        // Checks cut short must run again in the next term.
        let mut state = self.state.lock();
        state.running.clear();
        for check in state.checks.values_mut() {
            check.running = false;
        }
    }

    /// The checks to start now, fairly over namespaces, and how long to wait for the next.
    fn take_due(&self, busy: usize) -> (Vec<Job>, Duration) {
        let now = SystemTime::now();
        let mut state = self.state.lock();
        let mut waiting: BTreeMap<String, Vec<(SystemTime, Key)>> = BTreeMap::new();
        let mut soonest = Duration::from_secs(3600);
        for (key, check) in &state.checks {
            if check.running || check.subscribers.is_empty() {
                continue;
            }
            let due = check.due(key, self.cooldown, self.shared_floor);
            match due.duration_since(now) {
                Ok(wait) if !wait.is_zero() => soonest = soonest.min(wait),
                _ => waiting
                    .entry(check.namespace().to_owned())
                    .or_default()
                    .push((due, *key)),
            }
        }
        let picked = fair_pick(
            waiting,
            &state.running,
            state.cursor.as_deref(),
            WORKERS.saturating_sub(busy),
            PER_NAMESPACE,
        );
        let mut started = vec![];
        for (namespace, key) in picked {
            // A namespace past its rate waits; the others' picks still start.
            if let Err(later) = self.per_namespace_rate.check_key(&namespace) {
                soonest = soonest.min(later.wait_time_from(DefaultClock::default().now()));
                continue;
            }
            let check = state.checks.get_mut(&key).expect("picked from the checks");
            check.running = true;
            let forced = check.forced.is_some_and(|f| f <= now);
            if forced {
                check.last_forced = Some(now);
            }
            started.push(Job {
                key,
                namespace: namespace.clone(),
                probe: check.probe.clone(),
                credential: check.credential.clone(),
                forced,
            });
            *state.running.entry(namespace.clone()).or_default() += 1;
            state.cursor = Some(namespace);
        }
        self.per_namespace_rate.retain_recent();
        (started, soonest)
    }

    async fn check(self: Arc<Self>, job: Job) {
        let Job {
            key,
            namespace,
            probe,
            credential,
            forced,
        } = job;
        let asked = SystemTime::now();
        let outcome = self.platform.check(&probe, &credential).await;
        let answered = SystemTime::now();
        self.metrics.verified(outcome.reason);
        let told = {
            let mut state = self.state.lock();
            if let Some(n) = state.running.get_mut(&namespace) {
                *n = n.saturating_sub(1);
            }
            let Some(check) = state.checks.get_mut(&key) else {
                return;
            };
            check.running = false;
            check.record(&outcome, asked, answered);
            if check.forced.is_some_and(|f| f <= asked) {
                check.forced = None;
            }
            let told: Vec<Subscriber> = check.subscribers.values().cloned().collect();
            if told.is_empty() {
                state.checks.remove(&key);
            }
            told
        };
        info!(
            fingerprint = credential.fingerprint(),
            host = self.platform.url_for(&probe).host_str().unwrap_or_default(),
            reason = outcome.reason.as_str(),
            forced,
            resources = told.len(),
            "verified"
        );
        self.tell(told);
        self.wake.notify_one();
    }

    /// Sends each subscriber to the controller of its kind (and scope), to read the answer.
    fn tell(&self, told: Vec<Subscriber>) {
        let routes = self.routes.lock();
        let cluster_route = self.cluster_route.lock();
        for subscriber in told {
            if subscriber.scope == Scope::Cluster {
                if let Some(tx) = cluster_route.as_ref() {
                    let _ = tx.unbounded_send(ObjectRef::new(&subscriber.name));
                }
                continue;
            }
            let resource = ObjectRef::new(&subscriber.name).within(&subscriber.namespace);
            for (scope, tx) in routes.iter() {
                if scope.as_ref().is_none_or(|s| *s == subscriber.namespace) {
                    let _ = tx.unbounded_send(resource.clone());
                }
            }
        }
    }

    fn key(&self, probe: &ProbeTarget, credential: &Credential) -> Key {
        let mut hash = Sha256::new();
        for (name, value) in credential.headers() {
            hash.update(name);
            hash.update(b"\0");
            hash.update(value.expose_secret());
            hash.update(b"\0");
        }
        // Probe URLs of an allowed origin that differ only in their query string (or fragment)
        // make one check, at the first subscriber's URL: a resource could otherwise multiply
        // the checks of a shared credential by varying the query. An origin allowed only for
        // exact `--probe-url` URLs keeps the whole URL: a variant of one is not allowed.
        let mut url = self.platform.url_for(probe);
        if self.platform.origin_allowed(&url) {
            url.set_query(None);
            url.set_fragment(None);
        }
        hash.update(url.as_str());
        hash.finalize().into()
    }
}

impl State {
    fn leave(&mut self, key: &Key, subscriber: &(String, Slot)) {
        if let Some(check) = self.checks.get_mut(key) {
            check.subscribers.remove(subscriber);
            if check.subscribers.is_empty() && !check.running {
                self.checks.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        let metrics = Arc::new(Metrics::default());
        let config = crate::shell::platform::PlatformConfig {
            probe_urls: Default::default(),
            allowed_hosts: crate::shell::platform::PlatformConfig::default_allowed_hosts(),
            allow_http: false,
            extra_ca_file: None,
            qps: std::num::NonZeroU32::new(5).unwrap(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        };
        Verifier::new(
            Platform::new(config, metrics.clone()).unwrap(),
            metrics,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn moves_to_new_credentials_within_the_cooldown_make_one_check_at_its_end() {
        let v = verifier();
        let probe = ProbeTarget::Url("https://cloud.home.mendix.com/probe".parse().unwrap());
        let tokens: Vec<Credential> = (0..5)
            .map(|i| Credential::personal_access_token(format!("tok-{i}").as_bytes()).unwrap())
            .collect();
        let started = SystemTime::now();
        for credential in &tokens {
            v.subscribe(Subscription {
                scope: Scope::Namespaced,
                uid: "rewriter",
                slot: Slot::Published,
                namespace: "team-b",
                name: "rewriter",
                credential,
                probe: &probe,
                interval: Duration::from_secs(3600),
                forced: None,
                known: None,
            });
        }
        let state = v.state.lock();
        assert_eq!(
            state.checks.len(),
            1,
            "only the latest credential is left to check"
        );
        let (key, check) = state.checks.iter().next().unwrap();
        assert_eq!(*key, v.key(&probe, &tokens[4]));
        let due = check.due(key, v.cooldown, v.shared_floor);
        assert!(
            due >= started + v.cooldown - Duration::from_secs(1),
            "the latest waits for the end of the cooldown"
        );
        assert!(due <= SystemTime::now() + v.cooldown);
    }

    /// The namespaces of the checks `take_due` starts, in order.
    fn started(v: &Verifier) -> Vec<String> {
        v.take_due(0)
            .0
            .into_iter()
            .map(|job| job.namespace)
            .collect()
    }

    #[test]
    fn one_namespace_starts_no_more_checks_a_second_than_its_share() {
        let subscribe_all = |v: &Verifier| {
            let probe = ProbeTarget::Url("https://cloud.home.mendix.com/probe".parse().unwrap());
            // More of team-a's than its burst, and one of team-b's.
            let team_a = NAMESPACE_BURST.get() as usize + 3;
            let namespaces = std::iter::repeat_n("team-a", team_a).chain(["team-b"]);
            for (i, namespace) in namespaces.enumerate() {
                let credential =
                    Credential::personal_access_token(format!("tok-{i}").as_bytes()).unwrap();
                v.subscribe(Subscription {
                    scope: Scope::Namespaced,
                    uid: &format!("uid-{i}"),
                    slot: Slot::Published,
                    namespace,
                    name: "deploy-bot",
                    credential: &credential,
                    probe: &probe,
                    interval: Duration::from_secs(3600),
                    forced: None,
                    known: None,
                });
            }
        };
        let generous = verifier().with_namespace_qps(NonZeroU32::new(100).unwrap());
        subscribe_all(&generous);
        assert_eq!(
            started(&generous),
            ["team-a", "team-b", "team-a"],
            "without a tight share, team-a takes its two workers"
        );

        let v = verifier().with_namespace_qps(NonZeroU32::MIN);
        subscribe_all(&v);
        // The checks started are done at once (a fast platform): team-a's workers are free
        // again at each turn, until its burst is spent.
        let mut team_a = 0;
        let wait = loop {
            let (jobs, wait) = v.take_due(0);
            v.state.lock().running.clear();
            let more = jobs.iter().filter(|job| job.namespace == "team-a").count();
            if more == 0 {
                break wait;
            }
            team_a += more;
        };
        assert_eq!(team_a, NAMESPACE_BURST.get() as usize, "team-a's burst");
        assert!(
            wait <= Duration::from_secs(1),
            "the loop wakes when team-a may start again, not in {wait:?}"
        );
    }

    #[test]
    fn probe_urls_that_differ_only_in_their_query_share_one_check() {
        let v = verifier();
        let credential = Credential::personal_access_token(b"tok").unwrap();
        let url = |u: &str| ProbeTarget::Url(u.parse().unwrap());
        let key = v.key(&url("https://deploy.mendix.com/probe?limit=1"), &credential);
        for same in [
            "https://deploy.mendix.com/probe?limit=1&x=2",
            "https://deploy.mendix.com/probe",
            "https://deploy.mendix.com/probe?variant=59#f",
        ] {
            assert_eq!(v.key(&url(same), &credential), key, "{same}");
        }
        // pmp.example.com is no allowed host here: only an exact --probe-url URL would be.
        assert_ne!(
            v.key(&url("https://pmp.example.com/probe?limit=1"), &credential),
            v.key(&url("https://pmp.example.com/probe?limit=2"), &credential),
            "an origin not allowed as a whole keeps the query"
        );
        let cloud = v.key(
            &url("https://cloud.home.mendix.com/probe?limit=1"),
            &credential,
        );
        assert_eq!(
            v.key(
                &url("https://cloud.home.mendix.com/probe?x=59"),
                &credential
            ),
            cloud
        );
        for other in [
            "https://deploy.mendix.com/other?limit=1",
            "https://pmp.example.com/probe?limit=1",
        ] {
            assert_ne!(v.key(&url(other), &credential), key, "{other}");
        }
    }

    #[tokio::test]
    async fn a_cluster_resource_shares_the_check_and_counts_against_its_sources_namespace() {
        let v = verifier();
        let credential = Credential::personal_access_token(b"tok").unwrap();
        let probe = ProbeTarget::Url("https://cloud.home.mendix.com/probe".parse().unwrap());
        let subscription = |scope, uid: &'static str, namespace: &'static str| Subscription {
            scope,
            uid,
            slot: Slot::Published,
            namespace,
            name: uid,
            credential: &credential,
            probe: &probe,
            interval: Duration::from_secs(3600),
            forced: None,
            known: None,
        };
        v.subscribe(subscription(Scope::Namespaced, "namespaced", "team-a"));
        v.subscribe(subscription(Scope::Cluster, "cluster", "sources"));
        let mut answered = v.cluster_route();
        {
            let state = v.state.lock();
            assert_eq!(state.checks.len(), 1, "one check for both kinds");
            let check = state.checks.values().next().unwrap();
            let scopes: Vec<_> = check.subscribers.values().map(|s| s.scope).collect();
            assert_eq!(scopes, [Scope::Cluster, Scope::Namespaced]);
            assert_eq!(
                check.subscribers[&("cluster".to_owned(), Slot::Published)].namespace,
                "sources"
            );
            // The fairness share is the first subscriber's (by uid): here the source's namespace.
            assert_eq!(check.namespace(), "sources");
        }
        // Answers go to the controller of each kind: the cluster resource by name alone.
        let mut namespaced = v.routes(&[None]).pop().unwrap();
        let told: Vec<Subscriber> = {
            let state = v.state.lock();
            state
                .checks
                .values()
                .next()
                .unwrap()
                .subscribers
                .values()
                .cloned()
                .collect()
        };
        v.tell(told);
        let cluster = answered.try_recv().unwrap();
        assert_eq!(
            (cluster.name.as_str(), cluster.namespace),
            ("cluster", None)
        );
        assert!(answered.try_recv().is_err(), "only the cluster resource");
        let other = namespaced.try_recv().unwrap();
        assert_eq!(
            (other.name.as_str(), other.namespace.as_deref()),
            ("namespaced", Some("team-a"))
        );
        assert!(
            namespaced.try_recv().is_err(),
            "only the namespaced resource"
        );
    }
}
