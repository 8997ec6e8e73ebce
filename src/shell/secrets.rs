//! What the operator knows of Secrets without asking the API server: the metadata of every
//! Secret it can see, slimmed to what lookups and mappings need, and the credentials it read from
//! source Secrets, each kept for as long as the watch reports the version it was read at.
//!
//! A reconcile that finds its source unchanged and its target as it left it sends no request.

use crate::domain::api::CredentialType;
use crate::domain::credential::{Credential, SourceError};
use crate::domain::due::Stamps;
use crate::domain::spec::SourceKeys;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub type SecretMeta = PartialObjectMeta<Secret>;

/// What the cache keeps of a Secret: its name, namespace and version. Labels, owners, managed
/// fields and the rest would cost memory for every Secret of the cluster and serve no lookup.
fn slimmed(secret: &SecretMeta) -> SecretMeta {
    let meta = &secret.metadata;
    SecretMeta {
        types: None,
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            resource_version: meta.resource_version.clone(),
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

/// A watch event as the cache keeps it (copying only what [`slimmed`] keeps, not the whole
/// Secret's metadata: this runs for every Secret event).
pub fn slim_event(event: &watcher::Event<SecretMeta>) -> watcher::Event<SecretMeta> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    match event {
        Apply(secret) => Apply(slimmed(secret)),
        Delete(secret) => Delete(slimmed(secret)),
        InitApply(secret) => InitApply(slimmed(secret)),
        Init => Init,
        InitDone => InitDone,
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
        match secret {
            None => Seen::Absent,
            Some(secret) => secret
                .metadata
                .resource_version
                .clone()
                .map_or(Seen::Unknown, Seen::At),
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
    stores: Mutex<Vec<(Store<SecretMeta>, Arc<AtomicBool>)>>,
    reads: Mutex<HashMap<Reading, Read>>,
}

impl SecretCache {
    /// Adds the cache of one watch, and the flag its watch keeps set while the cache is current
    /// (listed, and no error since).
    pub fn watch(&self, store: Store<SecretMeta>, current: Arc<AtomicBool>) {
        self.stores.lock().push((store, current));
    }

    /// What the watches last reported of Secret `name`, while they are current.
    pub fn seen(&self, namespace: &str, name: &str) -> Seen {
        let stores = self.stores.lock();
        if !all_current(&stores) {
            return Seen::Unknown;
        }
        let key = ObjectRef::new(name).within(namespace);
        Seen::of(
            stores
                .iter()
                .find_map(|(store, _)| store.get(&key))
                .as_deref(),
        )
    }

    /// The version of Secret `name` as the watches last reported it, while they are current.
    pub fn version(&self, namespace: &str, name: &str) -> Option<String> {
        let stores = self.stores.lock();
        if !all_current(&stores) {
            return None;
        }
        let key = ObjectRef::new(name).within(namespace);
        stores
            .iter()
            .find_map(|(store, _)| store.get(&key))
            .and_then(|secret| secret.metadata.resource_version.clone())
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
fn all_current(stores: &[(Store<SecretMeta>, Arc<AtomicBool>)]) -> bool {
    !stores.is_empty()
        && stores
            .iter()
            .all(|(_, current)| current.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher;
    use std::collections::BTreeMap;

    fn secret(name: &str, version: &str) -> SecretMeta {
        let secret = SecretMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                labels: Some(BTreeMap::from([("a".into(), "b".into())])),
                annotations: Some(BTreeMap::from([("c".into(), "d".into())])),
                owner_references: Some(vec![OwnerReference::default()]),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        };
        slimmed(&secret)
    }

    fn keys(secret: &str) -> SourceKeys {
        SourceKeys::defaults_of(secret)
    }

    #[test]
    fn slim_keeps_only_identity() {
        let other = secret("s", "1");
        assert_eq!(other.metadata.name.as_deref(), Some("s"));
        assert_eq!(other.metadata.resource_version.as_deref(), Some("1"));
        assert!(other.metadata.labels.is_none() && other.metadata.owner_references.is_none());
        assert!(other.metadata.annotations.is_none() && other.metadata.managed_fields.is_none());
    }

    #[test]
    fn a_credential_is_used_only_at_the_version_it_was_read_at() {
        let (reader, mut writer) = store();
        let secrets = SecretCache::default();
        let current = Arc::new(AtomicBool::new(true));
        secrets.watch(reader, current.clone());
        let pat = CredentialType::PersonalAccessToken;
        writer.apply_watcher_event(&watcher::Event::Apply(secret("src", "1")));
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

        writer.apply_watcher_event(&watcher::Event::Apply(secret("src", "2")));
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
        writer.apply_watcher_event(&watcher::Event::Apply(secret("src", "3")));
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
        writer.apply_watcher_event(&watcher::Event::Delete(secret("src", "3")));
        assert!(secrets.credential("ns", pat, &keys("src")).is_none());
    }
}
