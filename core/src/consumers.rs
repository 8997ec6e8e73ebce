//! The consumers of a target Secret: the workloads whose pods read it. What a pod spec says of
//! Secrets ([`WorkloadSpec`], deserialized from any workload kind and keeping nothing but Secret
//! names), the top controller a workload is counted as ([`top`]), and what the status and the
//! messages say of them ([`Consumers`], [`with_affected`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How many workloads `status.consumers.workloads` lists.
pub const MAX_LISTED: usize = 20;

/// How many workloads a condition's message and an Event's note name.
pub const NAMED: usize = 3;

/// The workloads that use the target Secret(s), as the operator last found them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumers {
    /// How many workloads use the Secret: Deployments, StatefulSets, DaemonSets, Jobs, CronJobs
    /// and bare Pods whose pod template (or pod) names it in an env, envFrom, secret volume or
    /// projected secret source, in any container. Pods count as their top controller, once;
    /// workloads of zero replicas count. Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    /// The first 20 of them, by namespace, kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub workloads: Vec<Consumer>,
    /// Why they are not known (the operator may not list the workloads), instead of count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// A workload that uses the target Secret.
#[derive(
    Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// Its namespace (ClusterMendixCredential only: a MendixCredential's are its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod, or the kind of the controller
    /// that owns its pods.
    pub kind: String,
    pub name: String,
}

impl Consumers {
    /// The status of `workloads` (in order).
    pub fn of(workloads: BTreeSet<Consumer>) -> Self {
        Consumers {
            count: Some(i32::try_from(workloads.len()).unwrap_or(i32::MAX)),
            workloads: workloads.into_iter().take(MAX_LISTED).collect(),
            unknown: None,
        }
    }

    /// Not known, and why.
    pub fn unknown(why: impl Into<String>) -> Self {
        Consumers {
            unknown: Some(why.into()),
            ..Consumers::default()
        }
    }

    /// What a message says of them: how many, and the first [`NAMED`]. None when unknown.
    pub fn affected(&self) -> Option<String> {
        let count = self.count?;
        let named: Vec<String> = self
            .workloads
            .iter()
            .take(NAMED)
            .map(|w| match &w.namespace {
                Some(ns) => format!("{} {ns}/{}", w.kind, w.name),
                None => format!("{} {}", w.kind, w.name),
            })
            .collect();
        let more = usize::try_from(count)
            .unwrap_or(0)
            .saturating_sub(named.len());
        Some(match (count, more) {
            (0, _) => format!("{AFFECTED}no workload uses the Secret."),
            (1, _) => format!("{AFFECTED}1 workload ({}).", named.join(", ")),
            (n, 0) => format!("{AFFECTED}{n} workloads ({}).", named.join(", ")),
            (n, more) => format!(
                "{AFFECTED}{n} workloads ({} and {more} more).",
                named.join(", ")
            ),
        })
    }
}

/// Where a message's account of the consumers starts.
const AFFECTED: &str = "Affected: ";

/// `message` with its account of the consumers replaced by that of `consumers` (removed when
/// they are unknown): the message of a verdict that holds is amended as they change.
pub fn with_affected(message: &str, consumers: Option<&Consumers>) -> String {
    let base = match message.find(AFFECTED) {
        Some(at) => message[..at].trim_end(),
        None => message,
    };
    match consumers.and_then(Consumers::affected) {
        Some(affected) if base.ends_with('.') => format!("{base} {affected}"),
        Some(affected) => format!("{base}. {affected}"),
        None => base.to_owned(),
    }
}

/// The kinds whose objects are read for Secret references.
pub const KINDS: [&str; 7] = [
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

/// What an object of any of [`KINDS`] says of Secrets: its pod spec's references, wherever the
/// kind keeps the pod spec (a Pod's `spec`, a `spec.template.spec`, a CronJob's
/// `spec.jobTemplate.spec.template.spec`). Everything else is skipped as it is read, never
/// kept.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    #[serde(default)]
    containers: Vec<ContainerRefs>,
    #[serde(default)]
    init_containers: Vec<ContainerRefs>,
    #[serde(default)]
    ephemeral_containers: Vec<ContainerRefs>,
    #[serde(default)]
    volumes: Vec<VolumeRefs>,
    #[serde(default)]
    template: Option<Box<Template>>,
    #[serde(default)]
    job_template: Option<Box<Template>>,
}

/// A pod template (`spec` a pod spec) or a job template (`spec.template` one).
#[derive(Deserialize, Clone, Debug, Default)]
struct Template {
    #[serde(default)]
    spec: WorkloadSpec,
}

impl WorkloadSpec {
    /// The Secrets it names, each once, in order.
    pub fn secrets(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        self.collect(&mut names, 0);
        names.retain(|n| !n.is_empty());
        names
    }

    fn collect(&self, names: &mut BTreeSet<String>, depth: u8) {
        let containers = self
            .containers
            .iter()
            .chain(&self.init_containers)
            .chain(&self.ephemeral_containers);
        for c in containers {
            let env = c
                .env
                .iter()
                .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref()?.name.clone());
            let env_from = c
                .env_from
                .iter()
                .filter_map(|e| e.secret_ref.as_ref()?.name.clone());
            names.extend(env.chain(env_from));
        }
        for v in &self.volumes {
            names.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
            if let Some(projected) = &v.projected {
                names.extend(
                    projected
                        .sources
                        .iter()
                        .filter_map(|s| s.secret.as_ref()?.name.clone()),
                );
            }
        }
        // A CronJob's pod spec is two templates down.
        if depth < 2 {
            for template in [&self.template, &self.job_template].into_iter().flatten() {
                template.spec.collect(names, depth + 1);
            }
        }
    }
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerRefs {
    #[serde(default)]
    env: Vec<EnvRef>,
    #[serde(default)]
    env_from: Vec<EnvFromRef>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct EnvRef {
    #[serde(default)]
    value_from: Option<EnvSource>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    #[serde(default)]
    secret_key_ref: Option<Named>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct EnvFromRef {
    #[serde(default)]
    secret_ref: Option<Named>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct VolumeRefs {
    #[serde(default)]
    secret: Option<SecretVolume>,
    #[serde(default)]
    projected: Option<Projected>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct SecretVolume {
    #[serde(default)]
    secret_name: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Projected {
    #[serde(default)]
    sources: Vec<ProjectedSource>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct ProjectedSource {
    #[serde(default)]
    secret: Option<Named>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

/// An object of one namespace, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: &'static str,
    pub name: String,
}

/// An object's controller: the kind and name of its controller owner reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// The kind among [`KINDS`] of that name, if any.
pub fn known_kind(kind: &str) -> Option<&'static str> {
    KINDS.into_iter().find(|k| *k == kind)
}

/// The workload `key` is counted as: its controller's, up the chain of controllers the index
/// knows (a Pod's ReplicaSet's Deployment, a Job's CronJob); a controller the index does not
/// hold (of another kind, or not yet seen) is the top. `controller_of` gives the controller of
/// each object the index holds (`None` for an object it does not hold).
pub fn top(key: &Key, controller_of: &dyn Fn(&Key) -> Option<Option<Owner>>) -> (String, String) {
    let mut current = (key.kind.to_owned(), key.name.clone());
    let mut next = controller_of(key).flatten();
    // Controllers form no cycle in a sound cluster; a bound keeps a broken one finite.
    for _ in 0..KINDS.len() {
        let Some(owner) = next else { break };
        next = known_kind(&owner.kind)
            .and_then(|kind| {
                controller_of(&Key {
                    kind,
                    name: owner.name.clone(),
                })
            })
            .flatten();
        current = (owner.kind, owner.name);
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(json: serde_json::Value) -> WorkloadSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_place_a_pod_spec_names_a_secret_is_read() {
        let pod = json_pod();
        let names: Vec<String> = spec(pod.clone()).secrets().into_iter().collect();
        assert_eq!(
            names,
            [
                "env",
                "env-from",
                "ephemeral",
                "init",
                "projected",
                "volume"
            ]
        );
        let template = serde_json::json!({"template": {"spec": pod.clone()}, "replicas": 0});
        assert_eq!(spec(template).secrets().len(), 6);
        let cron = serde_json::json!({"schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {"spec": pod}}}});
        assert_eq!(spec(cron).secrets().len(), 6);
    }

    fn json_pod() -> serde_json::Value {
        serde_json::json!({
            "containers": [{"name": "a", "image": "x",
                "env": [{"name": "PLAIN", "value": "not kept"},
                        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}},
                        {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "env-from"}}, {"configMapRef": {"name": "cm"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init"}}]}],
            "ephemeralContainers": [{"name": "e", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "ephemeral", "key": "k"}}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "volume"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "projected"}}, {"configMap": {"name": "cm"}}]}},
                        {"name": "d", "emptyDir": {}}]
        })
    }

    #[test]
    fn a_pod_counts_as_its_top_controller() {
        let key = |kind, name: &str| Key {
            kind,
            name: name.into(),
        };
        let owner = |kind: &str, name: &str| {
            Some(Owner {
                kind: kind.into(),
                name: name.into(),
            })
        };
        let owners = HashMap::from([
            (key("Pod", "web-1"), owner("ReplicaSet", "web-abc")),
            (key("ReplicaSet", "web-abc"), owner("Deployment", "web")),
            (key("Deployment", "web"), None),
            (key("Pod", "nightly-1-x"), owner("Job", "nightly-1")),
            (key("Job", "nightly-1"), owner("CronJob", "nightly")),
            (key("Pod", "rollout-1"), owner("ReplicaSet", "rollout-abc")),
            (key("ReplicaSet", "rollout-abc"), owner("Rollout", "canary")),
            (key("Pod", "bare"), None),
        ]);
        let lookup = |owners: &HashMap<Key, Option<Owner>>, k: &Key| owners.get(k).cloned();
        let top = |kind, name| top(&key(kind, name), &|k: &Key| lookup(&owners, k));
        assert_eq!(top("Pod", "web-1"), ("Deployment".into(), "web".into()));
        assert_eq!(
            top("Pod", "nightly-1-x"),
            ("CronJob".into(), "nightly".into())
        );
        assert_eq!(top("Pod", "rollout-1"), ("Rollout".into(), "canary".into()));
        assert_eq!(top("Pod", "bare"), ("Pod".into(), "bare".into()));
        // An owner not (yet) seen is the top.
        let orphan = HashMap::from([(key("Pod", "p"), owner("ReplicaSet", "gone"))]);
        assert_eq!(
            super::top(&key("Pod", "p"), &|k: &Key| lookup(&orphan, k)),
            ("ReplicaSet".into(), "gone".into())
        );
    }

    #[test]
    fn a_message_names_the_first_three_and_is_amended_as_they_change() {
        let consumer = |kind: &str, name: &str| Consumer {
            namespace: None,
            kind: kind.into(),
            name: name.into(),
        };
        let four = Consumers::of(BTreeSet::from([
            consumer("CronJob", "nightly"),
            consumer("Deployment", "runner"),
            consumer("Job", "smoke"),
            consumer("StatefulSet", "cache"),
        ]));
        let message = with_affected("The platform rejected the token.", Some(&four));
        assert_eq!(
            message,
            "The platform rejected the token. Affected: 4 workloads (CronJob nightly, \
             Deployment runner, Job smoke and 1 more)."
        );
        let one = Consumers::of(BTreeSet::from([consumer("Job", "smoke")]));
        assert_eq!(
            with_affected(&message, Some(&one)),
            "The platform rejected the token. Affected: 1 workload (Job smoke)."
        );
        let none = Consumers::of(BTreeSet::new());
        assert_eq!(
            with_affected(&message, Some(&none)),
            "The platform rejected the token. Affected: no workload uses the Secret."
        );
        // Amending an amended message changes nothing.
        assert_eq!(with_affected(&message, Some(&four)), message);
        let unknown = Consumers::unknown("forbidden");
        assert_eq!(
            with_affected(&message, Some(&unknown)),
            "The platform rejected the token."
        );
        let cluster = Consumers::of(BTreeSet::from([Consumer {
            namespace: Some("team-a".into()),
            kind: "Deployment".into(),
            name: "runner".into(),
        }]));
        assert_eq!(
            with_affected("rejected", Some(&cluster)),
            "rejected. Affected: 1 workload (Deployment team-a/runner)."
        );
    }

    #[test]
    fn the_status_lists_twenty_and_counts_all() {
        let all: BTreeSet<Consumer> = (0..25)
            .map(|i| Consumer {
                namespace: None,
                kind: "Job".into(),
                name: format!("j{i:02}"),
            })
            .collect();
        let status = Consumers::of(all);
        assert_eq!(status.count, Some(25));
        assert_eq!(status.workloads.len(), MAX_LISTED);
        assert_eq!(status.workloads[0].name, "j00");
    }
}
