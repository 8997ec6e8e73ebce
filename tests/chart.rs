//! The Helm chart, rendered by `helm template` (no cluster): its CRD is the committed one, the
//! operator gets exactly the RBAC it uses in either mode, Leases only in its own namespace, and
//! the Deployment is restricted, probed and passes flags the operator's own parser accepts.
//! `helm` comes from `hack/helm.sh` (installed once into a cache outside the repository).

mod common;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mxcred_operator::shell::cli::{Cli, Command as CliCommand};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::process::Command;

use common::ROOT;
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");
const RELEASE: &str = "mxcred-operator";
const NAMESPACE: &str = "mxcred-system";
/// With the release named after the chart, every object is called this.
const FULLNAME: &str = "mxcred-operator";

fn helm_template(args: &[&str]) -> std::process::Output {
    Command::new(common::helm_tools().join("helm"))
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("helm runs")
}

/// The objects `helm template` renders with `args` (`--set`, `--values`).
fn render(args: &[&str]) -> Rendered {
    let out = helm_template(args);
    assert!(
        out.status.success(),
        "helm template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm renders YAML"))
        .filter(|doc| !doc.is_null())
        .collect();
    Rendered(objects)
}

/// What `helm template` says when it refuses `args`.
fn refusal(args: &[&str]) -> String {
    let out = helm_template(args);
    assert!(
        !out.status.success(),
        "helm template {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Rendered(Vec<serde_yaml::Value>);

impl Rendered {
    fn all<T: DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.0
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .map(|o| {
                serde_yaml::from_value(o.clone())
                    .unwrap_or_else(|e| panic!("a rendered {kind} does not parse: {e}"))
            })
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.0
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .count()
    }

    fn one<T: DeserializeOwned>(&self, kind: &str) -> T {
        let mut all = self.all(kind);
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        all.remove(0)
    }

    fn pod(&self) -> PodSpec {
        let deployment: Deployment = self.one("Deployment");
        deployment
            .spec
            .template
            .spec
            .expect("the Deployment has a pod spec")
    }

    fn container(&self) -> Container {
        let mut containers = self.pod().containers;
        assert_eq!(containers.len(), 1, "one container");
        containers.remove(0)
    }

    fn args(&self) -> Vec<String> {
        self.container().args.expect("the container has args")
    }

    fn role(&self, namespace: &str, name: &str) -> Option<Role> {
        self.all::<Role>("Role").into_iter().find(|r| {
            r.metadata.namespace.as_deref() == Some(namespace)
                && r.metadata.name.as_deref() == Some(name)
        })
    }
}

/// One permission: (API group, resource, verb, resource name).
type Grant = (String, String, String, Option<String>);

/// Flattens rules into single grants, refusing wildcards and non-resource URLs on the way.
fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        let names: Vec<Option<String>> = match &rule.resource_names {
            Some(names) => names.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        for field in [&groups, &resources, &rule.verbs]
            .into_iter()
            .chain(rule.resource_names.as_ref())
        {
            assert!(
                !field.iter().any(|f| f.contains('*')),
                "no wildcards: {rule:?}"
            );
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn grant(group: &str, resource: &str, verbs: &[&str]) -> Vec<Grant> {
    verbs
        .iter()
        .map(|v| (group.into(), resource.into(), (*v).into(), None))
        .collect()
}

/// What the operator does beyond namespaces, in cluster mode only: ClusterMendixCredentials, and
/// the namespaces they select (watched, never changed).
fn cluster_grants() -> BTreeSet<Grant> {
    [
        grant(
            "mxcred.io",
            "clustermendixcredentials",
            &["get", "list", "watch"],
        ),
        grant("mxcred.io", "clustermendixcredentials/status", &["patch"]),
        grant("", "namespaces", &["list", "watch"]),
    ]
    .concat()
    .into_iter()
    .collect()
}

/// What the operator does in a namespace it serves; Secrets are written with server-side apply
/// (patch), never updated.
fn operator_grants() -> BTreeSet<Grant> {
    [
        grant("mxcred.io", "mendixcredentials", &["get", "list", "watch"]),
        grant("mxcred.io", "mendixcredentials/status", &["patch"]),
        grant(
            "",
            "secrets",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        grant("events.k8s.io", "events", &["create"]),
    ]
    .concat()
    .into_iter()
    .chain(consumer_grants())
    .collect()
}

/// `consumers.enabled` (on by default): the kinds that run pods, listed and watched, read only.
fn consumer_grants() -> BTreeSet<Grant> {
    let kinds = [
        ("", "pods"),
        ("apps", "replicasets"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ];
    kinds
        .into_iter()
        .flat_map(|(group, r)| grant(group, r, &["list", "watch"]))
        .collect()
}

/// `rolloutRestart.enabled`: workloads read by name and patched (server-side apply of one
/// annotation); never listed, watched, created or updated.
fn workload_grants() -> BTreeSet<Grant> {
    ["deployments", "statefulsets", "daemonsets"]
        .into_iter()
        .flat_map(|r| grant("apps", r, &["get", "patch"]))
        .collect()
}

/// The Lease of leader election: created once, then read and patched by name.
fn lease_grants(lease: &str) -> BTreeSet<Grant> {
    let lease_group = "coordination.k8s.io".to_owned();
    let mut grants: BTreeSet<Grant> = grant(&lease_group, "leases", &["create"])
        .into_iter()
        .collect();
    for verb in ["get", "patch"] {
        grants.insert((
            lease_group.clone(),
            "leases".into(),
            verb.into(),
            Some(lease.into()),
        ));
    }
    grants
}

fn is_lease(grant: &Grant) -> bool {
    grant.0 == "coordination.k8s.io" || grant.1 == "leases"
}

fn assert_binds_operator(
    role_ref: &RoleRef,
    subjects: Option<&Vec<Subject>>,
    kind: &str,
    name: &str,
) {
    assert_eq!(
        (role_ref.kind.as_str(), role_ref.name.as_str()),
        (kind, name)
    );
    let subjects = subjects.map(Vec::as_slice).unwrap_or_default();
    assert_eq!(subjects.len(), 1, "one subject: {subjects:?}");
    let subject = &subjects[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(subject.name, FULLNAME);
    assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE));
}

/// The rendered args are accepted by the operator's own command line.
fn assert_operator_accepts(args: &[String]) {
    let parsed = Cli::try_parse_from(
        std::iter::once("mxcred-operator".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("the operator refuses the chart's args {args:?}:\n{e}"));
    assert!(
        matches!(parsed.command, CliCommand::Run(_)),
        "the chart runs `run`"
    );
}

#[test]
fn chart_crds_are_the_committed_crds() {
    for (file, _) in mxcred_operator::crds() {
        let crd = format!("crds/{file}");
        let committed = std::fs::read(format!("{ROOT}/{crd}")).expect("the committed CRD");
        let in_chart = std::fs::read(format!("{CHART}/files/{crd}")).expect("the chart's CRD");
        assert!(
            committed == in_chart,
            "charts/mxcred-operator/files/{crd} differs from {crd}: run `make crds`"
        );
    }
}

#[test]
fn the_crds_are_templates_kept_on_uninstall_unless_disabled() {
    let committed: Vec<serde_yaml::Value> = mxcred_operator::crds()
        .into_iter()
        .map(|(_, yaml)| serde_yaml::from_str(&yaml).unwrap())
        .collect();
    let crds: Vec<serde_yaml::Value> = render(&[]).all("CustomResourceDefinition");
    assert_eq!(crds.len(), committed.len());
    for crd in &crds {
        let name = &crd["metadata"]["name"];
        let expected = committed
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name:?} is not a committed CRD"));
        // The same schema and names as the committed file: only the metadata gains labels and
        // the keep policy.
        assert_eq!(crd["spec"], expected["spec"], "{name:?}");
        let annotations = &crd["metadata"]["annotations"];
        assert_eq!(annotations["helm.sh/resource-policy"], "keep", "{name:?}");
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
    }
    let without_keep = render(&["--set", "crds.keep=false"]);
    for crd in without_keep.all::<serde_yaml::Value>("CustomResourceDefinition") {
        assert!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
            "{crd:?}"
        );
    }
    assert_eq!(without_keep.count("CustomResourceDefinition"), 2);
    assert_eq!(
        render(&["--set", "crds.enabled=false"]).count("CustomResourceDefinition"),
        0
    );
    assert!(
        !std::path::Path::new(&format!("{CHART}/crds")).exists(),
        "Helm installs crds/ once and never upgrades it: the CRDs are templates"
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion (the default image tag) should be the crate's version"
    );
    let image = render(&[]).container().image.unwrap();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{image}"
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_operator_uses() {
    let rendered = render(&[]);
    let role: ClusterRole = rendered.one("ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some(FULLNAME));
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    assert!(
        !granted.contains(&("".into(), "secrets".into(), "update".into(), None)),
        "no update on Secrets: the operator writes them with server-side apply (patch)"
    );
    assert!(
        !granted.iter().any(is_lease),
        "leases are not granted cluster-wide"
    );
    let cluster_mode: BTreeSet<Grant> = operator_grants()
        .into_iter()
        .chain(cluster_grants())
        .collect();
    assert_eq!(granted, cluster_mode);
    assert!(role.aggregation_rule.is_none());

    let binding: ClusterRoleBinding = rendered.one("ClusterRoleBinding");
    assert_binds_operator(
        &binding.role_ref,
        binding.subjects.as_ref(),
        "ClusterRole",
        FULLNAME,
    );
    // One replica, no forced election: no Lease, so no Role, no PDB, no --leader-elect.
    assert_eq!(rendered.count("Role"), 0);
    assert_eq!(rendered.count("RoleBinding"), 0);
    assert_eq!(rendered.count("PodDisruptionBudget"), 0);
    let args = rendered.args();
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
    assert!(!args.contains(&"--leader-elect".to_owned()), "{args:?}");
    assert_operator_accepts(&args);
}

#[test]
fn namespace_scoped_mode_has_one_role_per_namespace_and_no_cluster_role() {
    let rendered = render(&["--set", "watchNamespaces={team-a,team-b}"]);
    assert_eq!(rendered.count("ClusterRole"), 0);
    assert_eq!(rendered.count("ClusterRoleBinding"), 0);
    let roles: Vec<Role> = rendered.all("Role");
    assert_eq!(roles.len(), 2, "one Role per watched namespace");
    for namespace in ["team-a", "team-b"] {
        let role = rendered
            .role(namespace, FULLNAME)
            .unwrap_or_else(|| panic!("no Role {FULLNAME} in {namespace}"));
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            operator_grants()
        );
        let binding = rendered
            .all::<RoleBinding>("RoleBinding")
            .into_iter()
            .find(|b| b.metadata.namespace.as_deref() == Some(namespace))
            .unwrap_or_else(|| panic!("no RoleBinding in {namespace}"));
        assert_binds_operator(
            &binding.role_ref,
            binding.subjects.as_ref(),
            "Role",
            FULLNAME,
        );
    }
    let args = rendered.args();
    let namespaces: Vec<_> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--namespace="))
        .collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    assert_operator_accepts(&args);
    let Ok(Cli {
        command: CliCommand::Run(run),
    }) = Cli::try_parse_from(std::iter::once("mxcred-operator".to_owned()).chain(args))
    else {
        panic!("run args")
    };
    assert_eq!(run.namespaces, ["team-a", "team-b"]);

    // The committed scenario of `make chart` is namespace-scoped in the same way.
    let ci = render(&["--values", &format!("{CHART}/ci/namespaced-values.yaml")]);
    assert_eq!(ci.count("ClusterRole") + ci.count("ClusterRoleBinding"), 0);
    assert_eq!(ci.count("Role"), 2);
}

#[test]
fn consumers_are_read_only_and_turned_off_with_their_value() {
    let on = render(&[]);
    assert!(
        on.args().contains(&"--discover-consumers=true".to_owned()),
        "{:?}",
        on.args()
    );
    let off = render(&["--set", "consumers.enabled=false"]);
    let granted = grants(
        off.one::<ClusterRole>("ClusterRole")
            .rules
            .as_deref()
            .unwrap_or_default(),
    );
    let without: BTreeSet<Grant> = operator_grants()
        .difference(&consumer_grants())
        .cloned()
        .chain(cluster_grants())
        .collect();
    assert_eq!(granted, without);
    let args = off.args();
    assert!(
        args.contains(&"--discover-consumers=false".to_owned()),
        "{args:?}"
    );
    assert_operator_accepts(&args);
    let scoped = render(&[
        "--set",
        "consumers.enabled=false",
        "--set",
        "watchNamespaces={team-a}",
    ]);
    let role = scoped.role("team-a", FULLNAME).unwrap();
    assert!(
        grants(role.rules.as_deref().unwrap_or_default()).is_disjoint(&consumer_grants()),
        "no workload read in team-a"
    );
}

#[test]
fn workloads_are_granted_only_with_rollout_restart_enabled() {
    let with_restarts: BTreeSet<Grant> = operator_grants()
        .union(&workload_grants())
        .cloned()
        .collect();
    let off = render(&[]);
    let granted = grants(
        off.one::<ClusterRole>("ClusterRole")
            .rules
            .as_deref()
            .unwrap_or_default(),
    );
    assert!(
        granted
            .iter()
            .all(|g| g.0 != "apps" || ["list", "watch"].contains(&g.2.as_str())),
        "workloads are only listed and watched by default: {granted:?}"
    );

    let on = render(&["--set", "rolloutRestart.enabled=true"]);
    let role: ClusterRole = on.one("ClusterRole");
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        with_restarts.union(&cluster_grants()).cloned().collect()
    );
    // The binary needs no flag: the value changes the RBAC only.
    assert_eq!(on.args(), off.args());

    let scoped = render(&[
        "--set",
        "rolloutRestart.enabled=true",
        "--set",
        "watchNamespaces={team-a,team-b}",
    ]);
    assert_eq!(scoped.count("ClusterRole"), 0);
    for namespace in ["team-a", "team-b"] {
        let role = scoped
            .role(namespace, FULLNAME)
            .unwrap_or_else(|| panic!("no Role {FULLNAME} in {namespace}"));
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            with_restarts,
            "{namespace}"
        );
    }
    let scoped_off = render(&["--set", "watchNamespaces={team-a}"]);
    let role = scoped_off.role("team-a", FULLNAME).unwrap();
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        operator_grants()
    );
    assert!(
        refusal(&["--set", "rolloutRestart.enable=true"]).contains("enable"),
        "a misspelled key is refused"
    );
}

#[test]
fn workloads_can_be_granted_in_listed_namespaces_only() {
    let restarts = format!("{FULLNAME}-restarts");
    let listed = render(&[
        "--set",
        "rolloutRestart.enabled=true",
        "--set",
        "rolloutRestart.namespaces={team-a,team-b}",
    ]);
    // Cluster mode: the ClusterRole grants nothing on workloads.
    let role: ClusterRole = listed.one("ClusterRole");
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        operator_grants()
            .union(&cluster_grants())
            .cloned()
            .collect()
    );
    for namespace in ["team-a", "team-b"] {
        let role = listed
            .role(namespace, &restarts)
            .unwrap_or_else(|| panic!("no Role {restarts} in {namespace}"));
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            workload_grants()
        );
        let binding = listed
            .all::<RoleBinding>("RoleBinding")
            .into_iter()
            .find(|b| {
                b.metadata.namespace.as_deref() == Some(namespace)
                    && b.metadata.name.as_deref() == Some(restarts.as_str())
            })
            .unwrap_or_else(|| panic!("no RoleBinding {restarts} in {namespace}"));
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, restarts);
        let subjects = binding.subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            (FULLNAME, Some(NAMESPACE))
        );
    }
    assert_eq!(listed.count("Role"), 2, "nowhere else");

    // Namespace-scoped: the watched namespaces' Roles grant nothing on workloads; only the
    // listed one may be restarted in.
    let scoped = render(&[
        "--set",
        "rolloutRestart.enabled=true",
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "rolloutRestart.namespaces={team-b}",
    ]);
    for namespace in ["team-a", "team-b"] {
        let role = scoped.role(namespace, FULLNAME).unwrap();
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            operator_grants()
        );
    }
    assert!(scoped.role("team-a", &restarts).is_none());
    let role = scoped.role("team-b", &restarts).unwrap();
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        workload_grants()
    );

    // Without rolloutRestart.enabled, the list grants nothing.
    let off = render(&["--set", "rolloutRestart.namespaces={team-a}"]);
    assert!(off.role("team-a", &restarts).is_none());
    assert!(
        refusal(&["--set", "rolloutRestart.namespaces={Team_A}"]).contains("namespaces"),
        "a namespace name is checked"
    );
}

#[test]
fn leases_only_in_a_role_of_the_release_namespace() {
    for (values, namespaces) in [
        (vec!["--set", "replicas=2"], vec![]),
        (
            vec![
                "--set",
                "replicas=3",
                "--set",
                "watchNamespaces={team-a,team-b}",
            ],
            vec!["team-a", "team-b"],
        ),
        (vec!["--set", "leaderElection.force=true"], vec![]),
    ] {
        let rendered = render(&values);
        let args = rendered.args();
        for expected in [
            "--leader-elect".to_owned(),
            "--lease-name=mxcred-operator".to_owned(),
            format!("--lease-namespace={NAMESPACE}"),
        ] {
            assert!(
                args.contains(&expected),
                "{values:?}: {expected} in {args:?}"
            );
        }
        assert_operator_accepts(&args);

        let election = format!("{FULLNAME}-leader-election");
        let role = rendered
            .role(NAMESPACE, &election)
            .unwrap_or_else(|| panic!("{values:?}: no Role {election} in {NAMESPACE}"));
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            lease_grants("mxcred-operator"),
            "{values:?}"
        );
        let binding = rendered
            .all::<RoleBinding>("RoleBinding")
            .into_iter()
            .find(|b| b.metadata.name.as_deref() == Some(&election))
            .expect("the leader-election RoleBinding");
        assert_eq!(binding.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_binds_operator(
            &binding.role_ref,
            binding.subjects.as_ref(),
            "Role",
            &election,
        );

        // Nowhere else: not in the ClusterRole, not in the Roles of watched namespaces.
        for cluster_role in rendered.all::<ClusterRole>("ClusterRole") {
            let granted = grants(cluster_role.rules.as_deref().unwrap_or_default());
            assert!(
                !granted.iter().any(is_lease),
                "{values:?}: {cluster_role:?}"
            );
        }
        let mut roles_with_leases = 0;
        for role in rendered.all::<Role>("Role") {
            if grants(role.rules.as_deref().unwrap_or_default())
                .iter()
                .any(is_lease)
            {
                roles_with_leases += 1;
                assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
            }
        }
        assert_eq!(roles_with_leases, 1, "{values:?}");
        for namespace in namespaces {
            let role = rendered
                .role(namespace, FULLNAME)
                .expect("the namespace's Role");
            assert_eq!(
                grants(role.rules.as_deref().unwrap_or_default()),
                operator_grants()
            );
        }
    }
}

#[test]
fn more_than_one_replica_gets_a_pod_disruption_budget() {
    assert_eq!(
        render(&["--set", "leaderElection.force=true"]).count("PodDisruptionBudget"),
        0
    );
    let rendered = render(&["--set", "replicas=2"]);
    let pdb: serde_yaml::Value = rendered.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    let deployment: Deployment = rendered.one("Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let selector = serde_yaml::to_value(spec.selector.match_labels.unwrap()).unwrap();
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);
}

#[test]
fn deployment_is_restricted_and_probed() {
    let rendered = render(&[]);
    let pod = rendered.pod();
    assert_eq!(pod.service_account_name.as_deref(), Some(FULLNAME));
    let pod_security = pod.security_context.expect("a pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );

    let container = rendered.container();
    let security = container
        .security_context
        .clone()
        .expect("a container securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, None);
    let capabilities = security.capabilities.expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(capabilities.add, None);
    assert_eq!(
        security.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );

    // Both probes on the metrics port, 8080, where the operator serves them.
    let ports = container.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, 8080);
    assert!(
        container
            .args
            .clone()
            .unwrap()
            .contains(&"--metrics-addr=0.0.0.0:8080".to_owned())
    );
    for (probe, path) in [
        (container.liveness_probe.clone(), "/healthz"),
        (container.readiness_probe.clone(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get)
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert!(
            matches!(&get.port, IntOrString::String(name) if name == "metrics")
                || get.port == IntOrString::Int(8080),
            "{path} on the metrics port: {:?}",
            get.port
        );
    }

    let resources = container.resources.clone().expect("resources");
    let requests = resources.requests.expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(resources.limits.expect("limits").contains_key("memory"));

    // The Pod's name and namespace from the downward API, for the Lease.
    let env = container.env.clone().unwrap_or_default();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("env {name}"));
        let field_ref = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .unwrap_or_else(|| panic!("{name} from the downward API"));
        assert_eq!(field_ref.field_path, field);
    }
}

#[test]
fn operator_flags_and_monitoring_from_values() {
    let rendered = render(&["--values", &format!("{CHART}/ci/ha-monitoring-values.yaml")]);
    let args = rendered.args();
    assert_operator_accepts(&args);
    for expected in [
        "--probe-url=DeployApps=https://mendix-mirror.example.com/api/v4/apps?limit=1",
        "--probe-url=DeployV1Apps=https://mendix-mirror.example.com/api/1/apps",
        "--extra-ca-file=/etc/mxcred-operator/extra-ca/ca.crt",
        "--platform-qps=2",
        "--platform-namespace-qps=1",
        "--default-interval=30m",
        "--concurrency=4",
        "--log-format=json",
        "--denied-metadata-prefix=example.com/",
        "--denied-metadata-prefix=argocd.argoproj.io/",
    ] {
        assert!(
            args.contains(&expected.to_owned()),
            "{expected} in {args:?}"
        );
    }

    // The CA bundle: only its key, from the ConfigMap, mounted read-only where the flag points.
    let container = rendered.container();
    let mount = container
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == "extra-ca")
        .expect("the extra CA mount");
    assert_eq!(mount.mount_path, "/etc/mxcred-operator/extra-ca");
    assert_eq!(mount.read_only, Some(true));
    let volume = rendered
        .pod()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "extra-ca")
        .expect("the extra CA volume");
    let config_map = volume.config_map.expect("from a ConfigMap");
    assert_eq!(config_map.name, "egress-proxy-ca");
    let items = config_map.items.unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );

    let monitor: serde_yaml::Value = rendered.one("ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );

    let rule: serde_yaml::Value = rendered.one("PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules");
    let alert = |name: &str| -> String {
        rules
            .iter()
            .find(|r| r["alert"].as_str() == Some(name))
            .and_then(|r| r["expr"].as_str())
            .unwrap_or_else(|| panic!("alert {name}"))
            .to_owned()
    };
    assert!(alert("MendixCredentialInvalid").contains(r#"token_valid="false""#));
    let failing = alert("MendixCredentialVerificationFailing");
    for kind in [r#"kind="transient""#, r#"kind="definitive""#] {
        assert!(failing.contains(kind), "{kind} in {failing}");
    }
    let down = alert("MendixCredentialOperatorDown");
    assert!(down.contains("max by (namespace, job) (up{"), "{down}");
    assert!(down.contains("absent(up{"), "{down}");

    // The roles for people grant MendixCredentials only, and are not bound to the operator.
    for name in [format!("{FULLNAME}-view"), format!("{FULLNAME}-edit")] {
        let role = rendered
            .all::<ClusterRole>("ClusterRole")
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(&name))
            .unwrap_or_else(|| panic!("ClusterRole {name}"));
        for (group, resource, ..) in grants(role.rules.as_deref().unwrap_or_default()) {
            assert_eq!(
                (group.as_str(), resource.as_str()),
                ("mxcred.io", "mendixcredentials")
            );
        }
        for binding in rendered.all::<ClusterRoleBinding>("ClusterRoleBinding") {
            assert_ne!(binding.role_ref.name, name);
        }
    }
    // No role aggregated to namespace users (admin, edit, view) gives ClusterMendixCredentials:
    // they write into every namespace.
    for role in rendered.all::<ClusterRole>("ClusterRole") {
        let aggregated = role
            .metadata
            .labels
            .iter()
            .flatten()
            .any(|(k, _)| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"));
        let granted = grants(role.rules.as_deref().unwrap_or_default());
        if aggregated {
            assert!(
                !granted
                    .iter()
                    .any(|g| g.1.starts_with("clustermendixcredentials")),
                "{role:?}"
            );
        }
    }
}

#[test]
fn the_restart_interval_is_a_value() {
    let flag = |args: &[String]| -> Vec<String> {
        args.iter()
            .filter(|a| a.starts_with("--restart-min-interval="))
            .cloned()
            .collect()
    };
    let default = render(&[]).args();
    assert_operator_accepts(&default);
    assert_eq!(flag(&default), ["--restart-min-interval=1m"]);
    let set = render(&["--set", "rolloutRestart.minInterval=10m"]).args();
    assert_operator_accepts(&set);
    assert_eq!(flag(&set), ["--restart-min-interval=10m"]);
    assert!(refusal(&["--set", "rolloutRestart.minInterval=soon"]).contains("minInterval"));
}

#[test]
fn values_are_checked() {
    assert!(refusal(&["--set", "replica=2"]).contains("replica"));
    assert!(refusal(&["--set", "probeUrls.Nope=https://x.example.com"]).contains("Nope"));
    assert!(refusal(&["--set", "logFormat=yaml"]).contains("logFormat"));
    assert!(
        refusal(&["--set", "extraCA.configMap=a", "--set", "extraCA.secret=b"])
            .contains("either configMap or secret")
    );
}

/// A label value the API server accepts: at most 63 characters, alphanumerics at both ends,
/// `-`, `_` and `.` between.
fn is_label_value(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(alnum)
            && value.ends_with(alnum)
            && value.chars().all(|c| alnum(c) || "-_.".contains(c)))
}

#[test]
fn a_digest_pins_the_image_and_every_label_stays_valid() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let rendered = render(&[
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "image.tag=1.2.3",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
    ]);
    assert_eq!(
        rendered.container().image.as_deref(),
        Some(format!("ghcr.io/mxcred/mxcred-operator@{digest}").as_str())
    );
    let mut checked = 0;
    for object in &rendered.0 {
        let meta = &object["metadata"];
        let template = &object["spec"]["template"]["metadata"];
        for labels in [&meta["labels"], &template["labels"]] {
            for (key, value) in labels.as_mapping().into_iter().flatten() {
                let value = value.as_str().unwrap_or_default();
                assert!(is_label_value(value), "label {key:?}: {value:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "labels were checked: {checked}");
    assert!(refusal(&["--set", "image.tag=1.2.3@sha256:abc"]).contains("image"));
    assert!(refusal(&["--set", "image.digest=1.2.3"]).contains("digest"));
}

#[test]
fn the_network_policy_allows_dns_the_api_server_the_platform_and_metrics_only() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    assert_eq!(render(&[]).count("NetworkPolicy"), 0, "opt-in");
    assert!(refusal(&["--set", "networkPolicy.enabled=true"]).contains("apiServer.cidrs"));
    let rendered = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServer.cidrs={172.18.0.2/32}",
        "--set",
        "probeUrls.DeployApps=https://mirror.corp.example:8443/api/v4/apps",
    ]);
    let policy: NetworkPolicy = rendered.one("NetworkPolicy");
    let spec = policy.spec.unwrap();
    let deployment: Deployment = rendered.one("Deployment");
    let template_labels = deployment.spec.template.metadata.unwrap().labels.unwrap();
    let selector = spec.pod_selector.clone().unwrap().match_labels.unwrap();
    for (k, v) in selector {
        assert_eq!(
            template_labels.get(&k),
            Some(&v),
            "selects the operator's pods"
        );
    }
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_owned(), "Egress".to_owned()])
    );
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    let ports = ingress[0].ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::String("metrics".into())));
    let egress = spec.egress.unwrap();
    let port_sets: Vec<Vec<i32>> = egress
        .iter()
        .map(|rule| {
            rule.ports
                .iter()
                .flatten()
                .map(|p| match p.port {
                    Some(IntOrString::Int(n)) => n,
                    ref other => panic!("port {other:?}"),
                })
                .collect()
        })
        .collect();
    assert_eq!(
        port_sets,
        vec![vec![53, 53], vec![443, 6443], vec![443, 8443]],
        "DNS, the API server, the platform origins"
    );
    let api = egress[1].to.clone().unwrap();
    assert_eq!(api[0].ip_block.as_ref().unwrap().cidr, "172.18.0.2/32");
}

#[test]
fn proxy_values_set_both_spellings_of_the_proxy_environment() {
    let rendered = render(&[
        "--set",
        "proxy.httpsProxy=http://proxy.corp:3128",
        "--set",
        "proxy.httpProxy=http://proxy.corp:3128",
        "--set",
        "proxy.noProxy=10.96.0.0/12\\,.svc",
    ]);
    let env: Vec<(String, String)> = rendered
        .container()
        .env
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert!(
            env.contains(&(name.into(), "http://proxy.corp:3128".into())),
            "{name} in {env:?}"
        );
    }
    for name in ["NO_PROXY", "no_proxy"] {
        assert!(
            env.contains(&(name.into(), "10.96.0.0/12,.svc".into())),
            "{name}"
        );
    }
    let none = render(&[]).container().env.unwrap();
    assert!(!none.iter().any(|e| e.name.to_lowercase().contains("proxy")));
}

#[test]
fn the_dashboard_is_an_opt_in_config_map_for_grafanas_sidecar() {
    use k8s_openapi::api::core::v1::ConfigMap;
    assert_eq!(render(&[]).count("ConfigMap"), 0, "opt-in");
    let map: ConfigMap = render(&["--set", "grafanaDashboard.enabled=true"]).one("ConfigMap");
    let labels = map.metadata.labels.unwrap();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let json = &map.data.unwrap()["mxcred-operator.json"];
    let dashboard: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "mxcred-operator");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 5);
}

#[test]
fn the_admission_policy_confines_the_operators_secret_writes_when_asked() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let default = render(&[]);
    assert_eq!(
        default.count("ValidatingAdmissionPolicy"),
        0,
        "off by default"
    );
    assert_eq!(default.count("ValidatingAdmissionPolicyBinding"), 0);

    let rendered = render(&["--set", "admissionPolicy.enabled=true"]);
    let named = |name: &str| -> ValidatingAdmissionPolicy {
        rendered
            .all::<ValidatingAdmissionPolicy>("ValidatingAdmissionPolicy")
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no policy {name}"))
    };
    assert_eq!(rendered.count("ValidatingAdmissionPolicy"), 3);
    assert_eq!(rendered.count("ValidatingAdmissionPolicyBinding"), 3);
    let policy = named(&format!("{FULLNAME}-secrets"));
    let spec = policy.spec.expect("a spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .expect("resource rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["secrets".to_owned()][..])
    );
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    let operations: BTreeSet<_> = rules[0].operations.iter().flatten().cloned().collect();
    assert_eq!(
        operations,
        ["CREATE", "UPDATE", "DELETE"].map(String::from).into()
    );
    // Only the operator's ServiceAccount is confined, by its exact user name.
    let conditions = spec.match_conditions.expect("match conditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        conditions[0].expression,
        format!("request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{FULLNAME}'")
    );
    // The new object (create, update) and the old one (update, delete) must carry our label.
    let validations = spec.validations.expect("validations");
    assert_eq!(validations.len(), 2);
    for (v, object, exempt) in [
        (&validations[0], "object.metadata.labels", "'DELETE'"),
        (&validations[1], "oldObject.metadata.labels", "'CREATE'"),
    ] {
        assert!(v.expression.contains(exempt), "{}", v.expression);
        assert!(
            v.expression.contains(&format!(
                "{object}['app.kubernetes.io/managed-by'] == 'mxcred-operator'"
            )),
            "{}",
            v.expression
        );
    }
    let bindings: BTreeSet<(String, Vec<String>)> = rendered
        .all::<ValidatingAdmissionPolicyBinding>("ValidatingAdmissionPolicyBinding")
        .into_iter()
        .map(|b| (b.spec.policy_name, b.spec.validation_actions))
        .collect();
    let deny = vec!["Deny".to_owned()];
    for policy in ["secrets", "workloads", "namespace-labels"] {
        let name = format!("{FULLNAME}-{policy}");
        assert!(
            bindings.contains(&(name.clone(), deny.clone())),
            "{name}: {bindings:?}"
        );
    }

    // Workloads: the operator, on the three kinds it restarts, and its restart annotations only.
    let workloads = named(&format!("{FULLNAME}-workloads")).spec.unwrap();
    let rules = workloads.match_constraints.unwrap().resource_rules.unwrap();
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["apps".to_owned()][..])
    );
    let kinds: BTreeSet<_> = rules[0].resources.iter().flatten().cloned().collect();
    assert_eq!(
        kinds,
        ["daemonsets", "deployments", "statefulsets"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        workloads.match_conditions.unwrap()[0].expression,
        format!("request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{FULLNAME}'")
    );
    let all = serde_json::to_string(&workloads.variables).unwrap();
    assert!(
        all.contains("'restart.mxcred.io/', 'cluster.restart.mxcred.io/'"),
        "{all}"
    );

    // Namespace labels: reserved to the labelers, who are not matched.
    let labels = named(&format!("{FULLNAME}-namespace-labels")).spec.unwrap();
    let exempt = &labels.match_conditions.unwrap()[0].expression;
    assert!(exempt.contains(r#"["system:masters"]"#), "{exempt}");
    let prefix = serde_json::to_string(&labels.variables).unwrap();
    assert!(prefix.contains("'select.mxcred.io/'"), "{prefix}");
    let custom = render(&[
        "--set",
        "admissionPolicy.enabled=true",
        "--set",
        "admissionPolicy.reservedNamespaceLabelPrefix=tenants.example.com/",
        "--set",
        "admissionPolicy.namespaceLabelers.users={system:serviceaccount:argocd:argocd-application-controller}",
    ]);
    let text = serde_json::to_string(&custom.all::<serde_json::Value>("ValidatingAdmissionPolicy"))
        .unwrap();
    assert!(text.contains("'tenants.example.com/'"), "{text}");
    assert!(
        text.contains("system:serviceaccount:argocd:argocd-application-controller"),
        "{text}"
    );
    let unreserved = render(&[
        "--set",
        "admissionPolicy.enabled=true",
        "--set",
        "admissionPolicy.reservedNamespaceLabelPrefix=",
    ]);
    assert_eq!(
        unreserved.count("ValidatingAdmissionPolicy"),
        2,
        "no reservation"
    );
    assert!(refusal(&["--set", "admissionPolicy.enable=true"]).contains("enable"));
    assert!(
        refusal(&[
            "--set",
            "admissionPolicy.reservedNamespaceLabelPrefix=Not A Prefix"
        ])
        .contains("reservedNamespaceLabelPrefix")
    );
}
