//! What this operator instance remembers about each resource between reconciles. Everything
//! here may be lost (a restart): the durable state is the resource's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

#[derive(Default)]
pub struct Tracker {
    resources: Mutex<HashMap<String, Memory>>,
}

#[derive(Default)]
struct Memory {
    /// Failed reconciles in a row (API errors).
    api_failures: u32,
    /// The last `verify-requested-at` value seen, and whether a check has served it (boxed:
    /// few resources ever have one, and every resource's entry would carry its room).
    verify_request: Option<Box<VerifyRequest>>,
    /// The last status write.
    written: Option<StatusWrite>,
    /// The target Secret of each namespace as this instance last wrote or confirmed it, sorted
    /// by namespace. A sorted list, not a map: a MendixCredential publishes into one namespace,
    /// and an empty hash map allocates room for several entries on its first insert (at 5000
    /// resources, 2.4 MiB).
    published: Vec<(String, Published)>,
}

struct VerifyRequest {
    value: String,
    /// When this instance first saw the value.
    seen: SystemTime,
    served: bool,
}

/// A target Secret known to hold the desired content: its name and version, the digest of
/// that content, and when it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub target: String,
    pub version: String,
    pub digest: [u8; 32],
    pub at: Option<Time>,
}

/// A status write: the resource version it was based on and the one it produced, and the
/// status written (of either kind).
struct StatusWrite {
    based_on: Option<String>,
    produced: Option<String>,
    status: Option<Box<dyn Any + Send>>,
    /// When the cache first held the write.
    reached: Option<Instant>,
}

impl Memory {
    /// Where the target of `namespace` is in `published`, or would go.
    fn published_at(&self, namespace: &str) -> Result<usize, usize> {
        self.published
            .binary_search_by(|(ns, _)| ns.as_str().cmp(namespace))
    }

    fn published_in(&self, namespace: &str) -> Option<&Published> {
        let at = self.published_at(namespace).ok()?;
        Some(&self.published[at].1)
    }
}

impl Tracker {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut resources = self.resources.lock();
        f(resources.entry(uid.to_owned()).or_default())
    }

    /// Counts a failed reconcile; returns the failures in a row.
    pub fn api_failed(&self, uid: &str) -> u32 {
        self.with(uid, |m| {
            m.api_failures = m.api_failures.saturating_add(1);
            m.api_failures
        })
    }

    pub fn api_succeeded(&self, uid: &str) {
        self.with(uid, |m| m.api_failures = 0);
    }

    /// The forced check that `value` of the annotation asks for: when this instance first saw
    /// it, or `None` once served. A value first seen counts as served if `served_before` says
    /// so (the last definitive check came after it was set).
    pub fn verify_request(
        &self,
        uid: &str,
        value: &str,
        served_before: impl FnOnce() -> bool,
    ) -> Option<SystemTime> {
        self.with(uid, |m| {
            let request = match &mut m.verify_request {
                Some(request) if request.value == value => request,
                other => {
                    let served = other.is_none() && served_before();
                    other.insert(Box::new(VerifyRequest {
                        value: value.to_owned(),
                        seen: SystemTime::now(),
                        served,
                    }))
                }
            };
            (!request.served).then_some(request.seen)
        })
    }

    /// A check answered the request with `value`, and the status that tells of it is written.
    pub fn serve_verify_request(&self, uid: &str, value: &str) {
        self.with(uid, |m| {
            if let Some(request) = m.verify_request.as_mut().filter(|r| r.value == value) {
                request.served = true;
            }
        });
    }

    /// Remembers a status write based on the object at `based_on` that produced `produced`,
    /// with the status it wrote, when there is one to plan from.
    pub fn wrote_status<S: Send + 'static>(
        &self,
        uid: &str,
        based_on: Option<String>,
        produced: Option<String>,
        status: Option<S>,
    ) {
        let status = status.map(|s| Box::new(s) as Box<dyn Any + Send>);
        self.with(uid, |m| {
            m.written = Some(StatusWrite {
                based_on,
                produced,
                status,
                reached: None,
            })
        });
    }

    /// The status this instance wrote, while the object a reconcile holds is older than that
    /// write: a reconcile triggered by another event may hold the object from before the cache
    /// saw our own write, and must not act on the older status. (Versions between the one the
    /// write was based on and the one it produced exist: a status write of an instance that
    /// stopped a moment before lands in between.) A reconcile holding our write or later drops
    /// the copy.
    pub fn newer_status<S: Clone + 'static>(&self, uid: &str, version: Option<&str>) -> Option<S> {
        self.with(uid, |m| {
            let w = m.written.as_mut()?;
            if version.is_some_and(|v| reaches(v, w.produced.as_deref())) {
                w.status = None;
            }
            w.status.as_ref()?.downcast_ref::<S>().cloned()
        })
    }

    /// The cache now holds the resource at `version`. The copy of a status this reaches is
    /// not dropped at once: a reconcile may have taken the object from the cache a moment
    /// before, and still need it. [`Tracker::drop_settled`] drops it later.
    pub fn cache_reached(&self, uid: &str, version: &str) {
        let mut resources = self.resources.lock();
        if let Some(w) = resources.get_mut(uid).and_then(|m| m.written.as_mut())
            && w.reached.is_none()
            && reaches(version, w.produced.as_deref())
        {
            w.reached = Some(Instant::now());
        }
    }

    /// Drops the status copies the cache has held for longer than `settled`.
    pub fn drop_settled(&self, settled: Duration) {
        let mut resources = self.resources.lock();
        for w in resources.values_mut().filter_map(|m| m.written.as_mut()) {
            if w.reached.is_some_and(|at| at.elapsed() > settled) {
                w.status = None;
            }
        }
    }

    /// Whether the object at `version` is one this instance wrote the status of, or based a
    /// write on.
    pub fn has_written(&self, uid: &str, version: Option<&str>) -> bool {
        self.with(uid, |m| {
            m.written.as_ref().is_some_and(|w| {
                version.is_some()
                    && (w.based_on.as_deref() == version || w.produced.as_deref() == version)
            })
        })
    }

    /// Remembers the target in `namespace` as written or confirmed.
    pub fn record_published(&self, uid: &str, namespace: &str, published: Published) {
        self.with(uid, |m| match m.published_at(namespace) {
            Ok(at) => m.published[at].1 = published,
            Err(at) => {
                if m.published.is_empty() {
                    // Room for this one only: a first insert would make room for four.
                    m.published.reserve_exact(1);
                }
                m.published.insert(at, (namespace.to_owned(), published));
            }
        });
    }

    /// The target in `namespace` as last written or confirmed, if it was `target` at `version`
    /// holding the content with `digest`: then it needs neither a read nor a write.
    pub fn publication(
        &self,
        uid: &str,
        namespace: &str,
        target: &str,
        version: Option<&str>,
        digest: &[u8; 32],
    ) -> Option<Published> {
        self.with(uid, |m| {
            m.published_in(namespace).cloned().filter(|p| {
                p.target == target && Some(p.version.as_str()) == version && p.digest == *digest
            })
        })
    }

    /// Whether this instance wrote or confirmed `target` in `namespace`, at any version.
    pub fn has_published(&self, uid: &str, namespace: &str, target: &str) -> bool {
        self.with(uid, |m| {
            m.published_in(namespace)
                .is_some_and(|p| p.target == target)
        })
    }

    /// Forgets `target` in `namespace`: it was deleted.
    pub fn forget_published(&self, uid: &str, namespace: &str, target: &str) {
        self.with(uid, |m| {
            if let Ok(at) = m.published_at(namespace)
                && m.published[at].1.target == target
            {
                m.published.remove(at);
            }
        });
    }

    /// Forgets resources that no longer exist.
    pub fn retain(&self, live: &HashSet<String>) {
        self.resources.lock().retain(|uid, _| live.contains(uid));
    }
}

/// Whether an object at `version` holds the write that produced `produced`. Resource versions
/// are etcd revisions, so they are compared as numbers; one that is not a number (an API server
/// not backed by etcd) holds the write only when it is that version.
fn reaches(version: &str, produced: Option<&str>) -> bool {
    let Some(produced) = produced else {
        return true;
    };
    match (version.parse::<u64>(), produced.parse::<u64>()) {
        (Ok(v), Ok(p)) => v >= p,
        _ => version == produced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::api::MendixCredentialStatus;

    #[test]
    fn the_newer_status_wins_over_a_stale_cache() {
        let t = Tracker::default();
        let status = MendixCredentialStatus {
            secret_name: Some("new".into()),
            ..Default::default()
        };
        t.wrote_status(
            "u",
            Some("10".into()),
            Some("13".into()),
            Some(status.clone()),
        );
        assert_eq!(t.newer_status("u", Some("10")), Some(status.clone()));
        assert_eq!(
            t.newer_status("u", Some("12")),
            Some(status.clone()),
            "another write landed between the one ours was based on and ours"
        );
        // The cache reaches the write, but a reconcile may hold the older object still.
        t.cache_reached("u", "13");
        assert_eq!(t.newer_status("u", Some("10")), Some(status.clone()));
        t.drop_settled(Duration::from_secs(60));
        assert_eq!(
            t.newer_status("u", Some("10")),
            Some(status.clone()),
            "not settled yet"
        );
        t.drop_settled(Duration::ZERO);
        assert_eq!(
            t.newer_status::<MendixCredentialStatus>("u", Some("10")),
            None,
            "settled: dropped"
        );
        // A reconcile holding the write or later drops the copy.
        t.wrote_status(
            "u",
            Some("13".into()),
            Some("15".into()),
            Some(status.clone()),
        );
        assert_eq!(
            t.newer_status::<MendixCredentialStatus>("u", Some("15")),
            None
        );
        assert_eq!(
            t.newer_status::<MendixCredentialStatus>("u", Some("14")),
            None,
            "dropped"
        );
        assert!(t.has_written("u", Some("15")));
        assert!(t.has_written("u", Some("13")));
        assert!(!t.has_written("u", Some("14")));
    }

    #[test]
    fn a_publication_matches_only_the_same_target_version_and_content() {
        let t = Tracker::default();
        let published = Published {
            target: "t".into(),
            version: "5".into(),
            digest: [1; 32],
            at: None,
        };
        assert_eq!(t.publication("u", "ns", "t", Some("5"), &[1; 32]), None);
        t.record_published("u", "ns", published.clone());
        assert_eq!(
            t.publication("u", "ns", "t", Some("5"), &[1; 32]),
            Some(published)
        );
        assert_eq!(
            t.publication("u", "ns", "t", Some("6"), &[1; 32]),
            None,
            "changed since"
        );
        assert_eq!(t.publication("u", "ns", "t", None, &[1; 32]), None, "gone");
        assert_eq!(
            t.publication("u", "ns", "t", Some("5"), &[2; 32]),
            None,
            "new content"
        );
        assert_eq!(
            t.publication("u", "ns", "x", Some("5"), &[1; 32]),
            None,
            "renamed"
        );
        assert_eq!(
            t.publication("u", "other", "t", Some("5"), &[1; 32]),
            None,
            "another namespace"
        );
        assert!(t.has_published("u", "ns", "t"));
        assert!(!t.has_published("u", "ns", "x"));
        t.forget_published("u", "ns", "x");
        assert!(t.has_published("u", "ns", "t"), "another name: kept");
        t.forget_published("u", "ns", "t");
        assert!(!t.has_published("u", "ns", "t"));
        assert_eq!(
            t.publication("u", "ns", "t", Some("5"), &[1; 32]),
            None,
            "deleted"
        );
    }

    #[test]
    fn each_namespace_keeps_its_own_publication() {
        let t = Tracker::default();
        let published = |target: &str| Published {
            target: target.into(),
            version: "1".into(),
            digest: [1; 32],
            at: None,
        };
        for ns in ["b", "c", "a"] {
            t.record_published("u", ns, published(&format!("t-{ns}")));
        }
        t.record_published("u", "b", published("renamed"));
        assert!(t.has_published("u", "a", "t-a") && t.has_published("u", "c", "t-c"));
        assert!(t.has_published("u", "b", "renamed") && !t.has_published("u", "b", "t-b"));
        t.forget_published("u", "c", "t-c");
        assert!(!t.has_published("u", "c", "t-c"));
        assert!(t.has_published("u", "a", "t-a") && t.has_published("u", "b", "renamed"));
    }

    #[test]
    fn retain_forgets_deleted_resources() {
        let t = Tracker::default();
        t.api_failed("a");
        t.api_failed("b");
        t.retain(&HashSet::from(["a".to_owned()]));
        assert_eq!(t.api_failed("a"), 2, "a is remembered");
        assert_eq!(t.api_failed("b"), 1, "b is forgotten");
    }

    #[test]
    fn a_verify_request_stays_pending_until_served() {
        let t = Tracker::default();
        let seen = t.verify_request("u", "1", || false).expect("pending");
        assert_eq!(
            t.verify_request("u", "1", || false),
            Some(seen),
            "still pending"
        );
        t.serve_verify_request("u", "other");
        assert_eq!(
            t.verify_request("u", "1", || false),
            Some(seen),
            "not this one"
        );
        t.serve_verify_request("u", "1");
        assert_eq!(t.verify_request("u", "1", || false), None, "served");
        assert!(
            t.verify_request("u", "2", || true).is_some(),
            "a new value is new"
        );
    }

    #[test]
    fn a_request_first_seen_after_its_check_is_served() {
        let t = Tracker::default();
        assert_eq!(t.verify_request("u", "1", || true), None);
    }
}
