//! What the watches keep of the objects they cache, and a metadata watch with its cache: only
//! what the operator reads, so that nothing a tenant writes into an object's metadata grows the
//! operator's memory.

use crate::domain::api::ANNOTATION_VERIFY_REQUESTED_AT;
use crate::domain::spec;
use crate::shell::api_error::describe_watch;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::Resource;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{info, warn};

/// Objects per page of an initial list: a page is held whole while it is read, and a tenant
/// can make each object large (256 KiB of annotations, more of managed fields). With 150
/// Secrets and 100 resources of 250 KB annotations, pages of 10 raised the peak after a
/// restart by 18 MiB in cluster mode, pages of 2 by 7 MiB.
pub(crate) const LIST_PAGE: u32 = 2;

/// How a watch receives its initial state: streamed by the watch itself where the API server
/// offers it (`sendInitialEvents`: each object an event of its own, served from the watch
/// cache), else listed in pages of [`LIST_PAGE`].
pub(crate) fn config(streaming: bool) -> watcher::Config {
    let config = watcher::Config::default();
    if streaming {
        config.streaming_lists()
    } else {
        config.page_size(LIST_PAGE)
    }
}

/// Whether the API server streams the initial state of a watch (`sendInitialEvents`, the
/// WatchList feature): asked with one watch of `api` that selects nothing, which then ends
/// with the bookmark that marks the end of the initial events. A server that refuses the
/// parameter, or answers anything else, is served by paginated lists.
pub async fn streams_initial_events<K>(api: &Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let params = WatchParams::streaming_lists()
        .fields("metadata.name=mxcred-operator.streaming-lists-probe")
        .timeout(PROBE_TIMEOUT_SECONDS);
    let Ok(stream) = api.watch(&params, "0").await else {
        return false;
    };
    let mut stream = std::pin::pin!(stream);
    let first = tokio::time::timeout(
        Duration::from_secs(u64::from(PROBE_TIMEOUT_SECONDS) + 1),
        stream.next(),
    )
    .await;
    matches!(
        first,
        Ok(Some(Ok(WatchEvent::Bookmark(bookmark))))
            if bookmark.metadata.annotations.get(INITIAL_EVENTS_END).map(String::as_str) == Some("true")
    )
}

/// The annotation of the bookmark that ends the initial events of a streaming list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

const PROBE_TIMEOUT_SECONDS: u32 = 5;

/// The first list of a watch as its objects arrive: the cache it feeds is ready at once and
/// takes each object as it comes, so that reconciles start while the initial state still
/// streams in. A list after an error (or a first list cut short) keeps its meaning: the cache
/// swaps in what it listed at its end, which drops what went meanwhile.
pub fn first_list_as_it_arrives<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send,
{
    use watcher::Event::{Apply, Init, InitApply, InitDone};
    let (mut first, mut started) = (true, false);
    stream.flat_map(move |event| {
        let events = match event {
            Ok(Init) if first && !started => {
                started = true;
                vec![Ok(Init), Ok(InitDone)]
            }
            Ok(Init) if first => {
                first = false;
                vec![Ok(Init)]
            }
            Ok(InitApply(object)) if first => vec![Ok(Apply(object))],
            Ok(InitDone) if first => {
                first = false;
                vec![]
            }
            other => vec![other],
        };
        futures::stream::iter(events)
    })
}

/// What the cache keeps of a resource: of its metadata, besides identity, only the
/// verify-requested-at annotation (a mark in place of a value too long to honour) and, of the
/// managed fields that set it, their manager and time. Labels, other annotations (kubectl's
/// last-applied copy among them) and other managed fields are not used, and a tenant could
/// make them large.
pub fn slim<K: Resource>(resource: &mut K) {
    let meta = resource.meta_mut();
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|e| sets_annotation(e, ANNOTATION_VERIFY_REQUESTED_AT));
        for entry in fields.iter_mut() {
            *entry = setting_entry(entry, ANNOTATION_VERIFY_REQUESTED_AT);
        }
    }
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == ANNOTATION_VERIFY_REQUESTED_AT);
        if let Some(value) = annotations.get_mut(ANNOTATION_VERIFY_REQUESTED_AT)
            && let Some(kept) = spec::slim_verify_request(value)
        {
            *value = kept;
        }
    }
}

/// A metadata watch kept in a cache, with the flag set while that cache is current; and the
/// stream of the objects it touched.
pub fn cached<K>(
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
            if let Err(e) = result {
                warn!(error = %describe_watch(e), "cannot watch {what}; retrying");
            }
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

/// When `key` was last set, from the `managedFields` entry that owns it.
pub fn annotation_set_at(meta: &ObjectMeta, key: &str) -> Option<jiff::Timestamp> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| sets_annotation(entry, key))
        .filter_map(|entry| entry.time.as_ref().map(|t| t.0))
        .max()
}

/// Of a managed-fields entry that sets annotation `key`, what [`annotation_set_at`] reads: its
/// manager, operation and time, and of its fields that one annotation.
pub fn setting_entry(entry: &ManagedFieldsEntry, key: &str) -> ManagedFieldsEntry {
    let fields = serde_json::json!({"f:metadata": {"f:annotations": {format!("f:{key}"): {}}}});
    ManagedFieldsEntry {
        manager: entry.manager.clone(),
        operation: entry.operation.clone(),
        time: entry.time.clone(),
        fields_type: entry.fields_type.clone(),
        fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
            fields,
        )),
        ..ManagedFieldsEntry::default()
    }
}

pub fn sets_annotation(entry: &ManagedFieldsEntry, key: &str) -> bool {
    entry.fields_v1.as_ref().is_some_and(|f| {
        f.0.get("f:metadata")
            .and_then(|m| m.get("f:annotations"))
            .and_then(|a| a.get(format!("f:{key}")))
            .is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    fn through(events: Vec<watcher::Event<&'static str>>) -> Vec<String> {
        let stream = futures::stream::iter(events.into_iter().map(Ok));
        futures::executor::block_on(first_list_as_it_arrives(stream).collect::<Vec<_>>())
            .into_iter()
            .map(|e| format!("{:?}", e.unwrap()))
            .collect()
    }

    fn names(events: &[watcher::Event<&'static str>]) -> Vec<String> {
        events.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn the_first_list_is_taken_as_it_arrives_and_later_ones_as_lists() {
        let relist = vec![Init, InitApply("b"), InitDone, Apply("c"), Delete("b")];
        let mut events = vec![Init, InitApply("a"), InitApply("b"), InitDone];
        events.extend(relist.clone());
        let mut want = names(&[Init, InitDone, Apply("a"), Apply("b")]);
        want.extend(names(&relist));
        assert_eq!(through(events), want);
    }

    #[test]
    fn a_first_list_cut_short_is_listed_again_as_a_list() {
        let events = vec![Init, InitApply("a"), Init, InitApply("b"), InitDone];
        let want = names(&[Init, InitDone, Apply("a"), Init, InitApply("b"), InitDone]);
        assert_eq!(through(events), want);
    }
}
