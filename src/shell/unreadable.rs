//! A resource the API server holds but this version cannot read (for example after a
//! downgrade): a condition says so, once per version of it.

use crate::domain::api::condition;
use crate::domain::conditions::{self, Verdict};
use crate::domain::plan::ReadyReason;
use crate::shell::context::{Error, apply_params, now};
use crate::shell::tracker::Tracker;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Patch;
use kube::{Api, Resource};

/// Writes `Ready` False (`InvalidSpec`) on an object this version cannot read, once per version
/// of it: its status cannot be read either, so the write is remembered, and the events that
/// reconcile it again (its own write's among them) cause no other.
pub async fn mark_unreadable<K>(
    api: Api<K>,
    kind: &str,
    meta: &ObjectMeta,
    name: &str,
    error: &str,
    tracker: &Tracker,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let uid = meta.uid.clone().unwrap_or_default();
    let version = meta.resource_version.clone();
    if tracker.has_written(&uid, version.as_deref()) {
        return Ok(());
    }
    let mut conds = vec![];
    conditions::set(
        &mut conds,
        Verdict {
            type_: condition::READY,
            status: "False",
            reason: ReadyReason::InvalidSpec.as_str(),
            message: format!("the resource cannot be read: {error}"),
        },
        meta.generation,
        now(),
    );
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": kind,
        "status": { "conditions": conds, "observedGeneration": meta.generation },
    });
    let written = api
        .patch_status(name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    let produced = written.meta().resource_version.clone();
    tracker.wrote_status(&uid, version, produced, None::<()>);
    Ok(())
}
