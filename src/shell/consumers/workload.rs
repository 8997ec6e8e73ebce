//! The objects the consumers are found in, as the watches read them: cut down to what the
//! index uses the moment they arrive.

use crate::domain::consumers::WorkloadSpec;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::core::{ApiResource, DynamicResourceScope};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeSet;

/// An object of one of the watched kinds, as the index reads it: its name, namespace, version
/// and controller, and the Secrets its pod spec names.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Raw")]
pub struct Workload {
    pub metadata: ObjectMeta,
    pub secrets: BTreeSet<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: WorkloadSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

impl From<Raw> for Workload {
    fn from(raw: Raw) -> Self {
        let controller = raw
            .metadata
            .owner_references
            .into_iter()
            .find(|r| r.controller == Some(true));
        Workload {
            metadata: ObjectMeta {
                name: raw.metadata.name,
                namespace: raw.metadata.namespace,
                resource_version: raw.metadata.resource_version,
                owner_references: controller.map(|c| vec![c]),
                ..ObjectMeta::default()
            },
            secrets: raw.spec.secrets(),
        }
    }
}

impl Resource for Workload {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The API resource of each watched kind.
pub fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Pod" => ApiResource::erase::<Pod>(&()),
        "ReplicaSet" => ApiResource::erase::<ReplicaSet>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "Job" => ApiResource::erase::<Job>(&()),
        _ => ApiResource::erase::<CronJob>(&()),
    }
}
