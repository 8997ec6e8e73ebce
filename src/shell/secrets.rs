//! What the operator knows of Secrets without asking the API server: the version of every
//! Secret its watches see, and the credentials it read from source Secrets, each kept for as
//! long as the watch reports the version it was read at.
//!
//! A reconcile that finds its source unchanged and its target as it left it sends no request.

use crate::domain::api::CredentialType;
use crate::domain::credential::{Credential, SourceError};
use crate::domain::due::Stamps;
use crate::domain::spec::SourceKeys;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub type SecretMeta = PartialObjectMeta<Secret>;

/// The versions of the Secrets one watch reports: for each namespace (held once, however many
/// Secrets it has), each Secret's name and resource version (if the API server gave one), all
/// that lookups need. A
/// reflector's store of the metadata would keep an `ObjectMeta` and a key of four strings per
/// Secret: at 5000 target Secrets, about 3 MiB more.
type VersionMap = HashMap<Box<str>, HashMap<Box<str>, Option<Box<str>>>>;

/// The reading side of a [`Versions`] cache.
#[derive(Clone, Default)]
pub struct VersionsReader(Arc<RwLock<VersionMap>>);

impl VersionsReader {
    /// The version of Secret `name` if the cache holds it.
    fn get(&self, namespace: &str, name: &str) -> Option<Option<Box<str>>> {
        self.0.read().get(namespace)?.get(name).cloned()
    }
}

/// The cache of one watch of Secrets, applying its events as a reflector would: a list fills a
/// new map that replaces the old one at its end (so what went meanwhile is dropped), and other
/// events change the current map.
#[derive(Default)]
pub struct Versions {
    reader: VersionsReader,
    listing: Option<VersionMap>,
}

impl Versions {
    pub fn reader(&self) -> VersionsReader {
        self.reader.clone()
    }

    pub fn apply(&mut self, event: &watcher::Event<SecretMeta>) {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        match event {
            Init => self.listing = Some(VersionMap::new()),
            InitApply(secret) => {
                if let Some(listing) = self.listing.as_mut() {
                    insert(listing, secret);
                }
            }
            InitDone => {
                if let Some(listed) = self.listing.take() {
                    *self.reader.0.write() = listed;
                }
            }
            Apply(secret) => insert(&mut self.reader.0.write(), secret),
            Delete(secret) => {
                let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
                else {
                    return;
                };
                let mut map = self.reader.0.write();
                if let Some(names) = map.get_mut(ns.as_str()) {
                    names.remove(name.as_str());
                    if names.is_empty() {
                        map.remove(ns.as_str());
                    }
                }
            }
        }
    }
}

fn insert(map: &mut VersionMap, secret: &SecretMeta) {
    let meta = &secret.metadata;
    let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
        return;
    };
    let version = meta.resource_version.as_deref().map(Box::from);
    match map.get_mut(ns.as_str()) {
        Some(names) => {
            names.insert(name.as_str().into(), version);
        }
        None => {
            map.insert(
                ns.as_str().into(),
                HashMap::from([(name.as_str().into(), version)]),
            );
        }
    }
}

/// What a current cache says of a Secret: that it does not exist, or its version; or nothing,
/// while the cache is not current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Unknown,
    Absent,
    At(String),
}

impl Seen {
    /// What a current cache holding `secret` (or not) says of it.
    pub fn of(secret: Option<&SecretMeta>) -> Self {
        Seen::of_version(secret.map(|s| s.metadata.resource_version.as_deref()))
    }

    /// What a current cache holding a Secret at `version` (or none) says of it.
    fn of_version(version: Option<Option<&str>>) -> Self {
        match version {
            None => Seen::Absent,
            Some(None) => Seen::Unknown,
            Some(Some(version)) => Seen::At(version.to_owned()),
        }
    }

    pub fn version(&self) -> Option<&str> {
        match self {
            Seen::At(version) => Some(version),
            Seen::Unknown | Seen::Absent => None,
        }
    }
}

/// What a credential was read from: a source Secret and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reading {
    namespace: String,
    credential_type: CredentialType,
    keys: SourceKeys,
}

impl Reading {
    pub fn new(namespace: &str, credential_type: CredentialType, keys: &SourceKeys) -> Self {
        Reading {
            namespace: namespace.to_owned(),
            credential_type,
            keys: keys.clone(),
        }
    }
}

/// What a source Secret yielded: its credential and time annotations, or why it cannot be used.
pub type SourceRead = Result<(Credential, Stamps), SourceError>;

/// A credential read from a source Secret at `version`.
struct Read {
    version: String,
    credential: SourceRead,
}

#[derive(Default)]
pub struct SecretCache {
    /// The cache of each watch, with the flag the watch keeps set while that cache is current.
    stores: Mutex<Vec<(VersionsReader, Arc<AtomicBool>)>>,
    reads: Mutex<HashMap<Reading, Read>>,
}

impl SecretCache {
    /// Adds the cache of one watch, and the flag its watch keeps set while the cache is current
    /// (listed, and no error since).
    pub fn watch(&self, store: VersionsReader, current: Arc<AtomicBool>) {
        self.stores.lock().push((store, current));
    }

    /// What the watches last reported of Secret `name`, while they are current.
    pub fn seen(&self, namespace: &str, name: &str) -> Seen {
        let stores = self.stores.lock();
        if !all_current(&stores) {
            return Seen::Unknown;
        }
        Seen::of_version(
            stores
                .iter()
                .find_map(|(store, _)| store.get(namespace, name))
                .as_ref()
                .map(Option::as_deref),
        )
    }

    /// The version of Secret `name` as the watches last reported it, while they are current.
    pub fn version(&self, namespace: &str, name: &str) -> Option<String> {
        let stores = self.stores.lock();
        if !all_current(&stores) {
            return None;
        }
        stores
            .iter()
            .find_map(|(store, _)| store.get(namespace, name))
            .flatten()
            .map(String::from)
    }

    /// The credential read earlier from the source, if the watches are current and still report
    /// the version it was read at. (A watch that failed, say in an API server outage, may have
    /// missed a change until it lists again.)
    pub fn credential(
        &self,
        namespace: &str,
        credential_type: CredentialType,
        keys: &SourceKeys,
    ) -> Option<SourceRead> {
        let current = self.version(namespace, &keys.secret)?;
        self.credential_at(namespace, credential_type, keys, &current)
    }

    /// The credential read earlier from the source at `version`, as a watch of its own reported
    /// it to the caller: one woken by that watch must not take an older read for current while
    /// the cache's watches have not seen the change yet.
    pub fn credential_at(
        &self,
        namespace: &str,
        credential_type: CredentialType,
        keys: &SourceKeys,
        version: &str,
    ) -> Option<SourceRead> {
        let reads = self.reads.lock();
        let read = reads.get(&Reading::new(namespace, credential_type, keys))?;
        (read.version == version).then(|| read.credential.clone())
    }

    /// Remembers what the source at `version` yielded.
    pub fn remember(
        &self,
        namespace: &str,
        credential_type: CredentialType,
        keys: &SourceKeys,
        version: String,
        credential: SourceRead,
    ) {
        self.reads.lock().insert(
            Reading::new(namespace, credential_type, keys),
            Read {
                version,
                credential,
            },
        );
    }

    /// Forgets credentials that no resource reads any more (`wanted` lists what the resources
    /// read), and those whose source has changed or gone.
    pub fn forget_unwanted(&self, wanted: &HashSet<Reading>) {
        let mut reads = self.reads.lock();
        reads.retain(|reading, read| {
            wanted.contains(reading)
                && self
                    .version(&reading.namespace, &reading.keys.secret)
                    .as_ref()
                    == Some(&read.version)
        });
    }
}

/// Whether every watch has listed its Secrets and had no error since: only then is a version the
/// caches hold the latest seen.
fn all_current(stores: &[(VersionsReader, Arc<AtomicBool>)]) -> bool {
    !stores.is_empty()
        && stores
            .iter()
            .all(|(_, current)| current.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(name: &str, version: &str) -> SecretMeta {
        SecretMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    fn keys(secret: &str) -> SourceKeys {
        SourceKeys::defaults_of(secret)
    }

    #[test]
    fn a_list_replaces_the_versions_at_its_end() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let (secrets, mut versions) = (SecretCache::default(), Versions::default());
        secrets.watch(versions.reader(), Arc::new(AtomicBool::new(true)));
        for event in [
            Init,
            InitApply(secret("a", "1")),
            InitApply(secret("b", "2")),
        ] {
            versions.apply(&event);
        }
        assert_eq!(
            secrets.seen("ns", "a"),
            Seen::Absent,
            "not before the list ends"
        );
        versions.apply(&InitDone);
        assert_eq!(secrets.seen("ns", "a"), Seen::At("1".into()));
        assert_eq!(secrets.version("ns", "b").as_deref(), Some("2"));
        assert_eq!(secrets.seen("other", "a"), Seen::Absent);

        versions.apply(&Apply(secret("a", "3")));
        assert_eq!(secrets.version("ns", "a").as_deref(), Some("3"));
        versions.apply(&Delete(secret("a", "3")));
        assert_eq!(secrets.seen("ns", "a"), Seen::Absent);

        // A list after an error: what it did not list is gone at its end.
        for event in [Init, InitApply(secret("c", "4")), InitDone] {
            versions.apply(&event);
        }
        assert_eq!(secrets.seen("ns", "b"), Seen::Absent);
        assert_eq!(secrets.seen("ns", "c"), Seen::At("4".into()));
        versions.apply(&Delete(secret("c", "4")));
        assert!(
            versions.reader.0.read().is_empty(),
            "an empty namespace is dropped"
        );
    }

    #[test]
    fn a_credential_is_used_only_at_the_version_it_was_read_at() {
        let mut writer = Versions::default();
        let secrets = SecretCache::default();
        let current = Arc::new(AtomicBool::new(true));
        secrets.watch(writer.reader(), current.clone());
        let pat = CredentialType::PersonalAccessToken;
        writer.apply(&watcher::Event::Apply(secret("src", "1")));
        assert!(secrets.credential("ns", pat, &keys("src")).is_none());

        let token = Credential::personal_access_token(b"token-1").unwrap();
        secrets.remember(
            "ns",
            pat,
            &keys("src"),
            "1".into(),
            Ok((token, Stamps::default())),
        );
        assert!(secrets.credential("ns", pat, &keys("src")).is_some());
        assert!(secrets.credential("other", pat, &keys("src")).is_none());
        assert!(
            secrets
                .credential("ns", CredentialType::ApiKey, &keys("src"))
                .is_none()
        );

        writer.apply(&watcher::Event::Apply(secret("src", "2")));
        assert!(secrets.credential("ns", pat, &keys("src")).is_none());
        let wanted = HashSet::from([Reading::new("ns", pat, &keys("src"))]);
        secrets.forget_unwanted(&wanted);
        assert!(secrets.reads.lock().is_empty(), "outdated");

        // A read newer than the watch is not used until the watch catches up.
        let token = Credential::personal_access_token(b"token-3").unwrap();
        secrets.remember(
            "ns",
            pat,
            &keys("src"),
            "3".into(),
            Ok((token, Stamps::default())),
        );
        assert!(secrets.credential("ns", pat, &keys("src")).is_none());
        writer.apply(&watcher::Event::Apply(secret("src", "3")));
        assert!(secrets.credential("ns", pat, &keys("src")).is_some());
        secrets.forget_unwanted(&wanted);
        assert!(
            secrets.credential("ns", pat, &keys("src")).is_some(),
            "kept"
        );
        secrets.forget_unwanted(&HashSet::new());
        assert!(
            secrets.credential("ns", pat, &keys("src")).is_none(),
            "no longer read"
        );
        let token = Credential::personal_access_token(b"token-3").unwrap();
        secrets.remember(
            "ns",
            pat,
            &keys("src"),
            "3".into(),
            Ok((token, Stamps::default())),
        );

        current.store(false, Ordering::Relaxed);
        assert!(
            secrets.credential("ns", pat, &keys("src")).is_none(),
            "not while the watch may have missed a change"
        );
        current.store(true, Ordering::Relaxed);
        writer.apply(&watcher::Event::Delete(secret("src", "3")));
        assert!(secrets.credential("ns", pat, &keys("src")).is_none());
    }
}
