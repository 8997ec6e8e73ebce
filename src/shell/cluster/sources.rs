//! The sources of ClusterMendixCredentials, watched (metadata only, by their opt-in label) in
//! the namespaces the resources name and nowhere else: a namespace's users who label their own
//! Secrets put nothing in this cache.

use crate::domain::api::LABEL_SOURCE;
use crate::shell::secrets::SecretMeta;
use crate::shell::watch::{self, cached};
use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use tokio::task::AbortHandle;
use tracing::info;

/// One watch per source namespace, their caches, and one stream of the sources they touched.
pub struct SourceWatches {
    client: Client,
    /// Whether the watches stream their initial state ([`watch::config`]).
    streaming_lists: bool,
    watches: Mutex<HashMap<String, (Store<SecretMeta>, AbortHandle)>>,
    touched: mpsc::UnboundedSender<SecretMeta>,
}

impl SourceWatches {
    /// No watch yet, and the stream every later watch sends the sources it touched to.
    pub fn new(
        client: Client,
        streaming_lists: bool,
    ) -> (Self, mpsc::UnboundedReceiver<SecretMeta>) {
        let (touched, stream) = mpsc::unbounded();
        let watches = SourceWatches {
            client,
            streaming_lists,
            watches: Mutex::default(),
            touched,
        };
        (watches, stream)
    }

    /// The cached version of the source `name` in `ns`, watching that namespace from now on if
    /// it was not yet (its first list is then still under way: none).
    pub fn version(&self, ns: &str, name: &str) -> Option<String> {
        let store = self.watch(ns);
        let source = store.get(&ObjectRef::new(name).within(ns))?;
        source.metadata.resource_version.clone()
    }

    fn watch(&self, ns: &str) -> Store<SecretMeta> {
        let mut watches = self.watches.lock();
        if let Some((store, _)) = watches.get(ns) {
            return store.clone();
        }
        info!(namespace = ns, "watching sources of cluster credentials");
        let ((store, _), stream) = cached(
            watcher(
                Api::<SecretMeta>::namespaced(self.client.clone(), ns),
                watch::config(self.streaming_lists).labels(&format!("{LABEL_SOURCE}=true")),
            )
            .modify(slim_source),
            "sources of cluster credentials",
        );
        let touched = self.touched.clone();
        let task = tokio::spawn(stream.for_each(move |source| {
            if let Ok(source) = source {
                // The receiver is gone only when the controller stopped.
                let _ = touched.unbounded_send(source);
            }
            std::future::ready(())
        }));
        watches.insert(ns.to_owned(), (store.clone(), task.abort_handle()));
        store
    }

    /// Stops the watches of namespaces no resource names any longer.
    pub fn keep_only(&self, named: &HashSet<String>) {
        let mut watches = self.watches.lock();
        watches.retain(|ns, (_, task)| {
            let keep = named.contains(ns);
            if !keep {
                task.abort();
                info!(
                    namespace = ns,
                    "stopped watching sources of cluster credentials"
                );
            }
            keep
        });
    }

    /// The namespaces watched.
    #[cfg(test)]
    fn watched(&self) -> HashSet<String> {
        let watches = self.watches.lock();
        watches.keys().cloned().collect()
    }
}

/// What the cache keeps of a source: its identity and version.
fn slim_source(source: &mut SecretMeta) {
    let meta = &mut source.metadata;
    meta.annotations = None;
    meta.labels = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

impl Drop for SourceWatches {
    fn drop(&mut self) {
        self.keep_only(&HashSet::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_the_namespaces_the_resources_name_and_no_other() {
        // An API server that never answers: the watches wait on their first list.
        let (service, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "default");
        let (watches, _touched) = SourceWatches::new(client, false);
        assert_eq!(watches.version("sources", "admin-token"), None);
        assert_eq!(watches.version("sources", "other-token"), None);
        assert_eq!(watches.version("more-sources", "admin-token"), None);
        assert_eq!(
            watches.watched(),
            HashSet::from(["sources".to_owned(), "more-sources".to_owned()])
        );
        watches.keep_only(&HashSet::from(["more-sources".to_owned()]));
        assert_eq!(
            watches.watched(),
            HashSet::from(["more-sources".to_owned()])
        );
    }
}
