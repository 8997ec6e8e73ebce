//! The Kubernetes versions are named once, in hack/kubernetes-versions.env: the CI workflow's
//! matrix and the book's compatibility table (docs/compatibility.md) name the same ones.

use std::collections::BTreeMap;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn versions() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("{ROOT}/hack/kubernetes-versions.env")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap()
}

#[test]
fn the_versions_are_named_once_and_agree_everywhere() {
    let versions = versions();
    let (newest, oldest) = (
        &versions["KUBERNETES_NEWEST"],
        &versions["KUBERNETES_OLDEST"],
    );
    // ValidatingAdmissionPolicy, which the chart offers, is GA from 1.30.
    assert!(minor(oldest) >= 30, "{oldest}");
    assert!(minor(newest) > minor(oldest), "{newest} {oldest}");
    assert!(versions.contains_key("ETCD_VERSION"));

    let workflow = std::fs::read_to_string(format!("{ROOT}/.github/workflows/ci.yaml")).unwrap();
    let workflow: serde_yaml::Value = serde_yaml::from_str(&workflow).unwrap();
    let matrix: Vec<&str> = workflow["jobs"]["test"]["strategy"]["matrix"]["kubernetes"]
        .as_sequence()
        .expect("a kubernetes matrix")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(matrix, [oldest.as_str(), newest.as_str()], "the CI matrix");

    let table = std::fs::read_to_string(format!("{ROOT}/docs/compatibility.md")).unwrap();
    for version in [oldest, newest] {
        assert!(
            table.contains(&format!("| {version}")),
            "the compatibility table (docs/compatibility.md) does not name {version}"
        );
    }
    for file in [
        "README.md",
        "docs/compatibility.md",
        "docs/install.md",
        "docs/upgrade.md",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        assert!(!text.contains("1.20"), "{file} still names Kubernetes 1.20");
    }
}
