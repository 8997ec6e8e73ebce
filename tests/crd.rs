//! The committed CRD is what `mxcred-operator crd` prints.

#[test]
fn committed_crd_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/mendixcredentials.mxcred.io.yaml"
    ))
    .unwrap();
    assert!(
        committed == mxcred_operator::crd_yaml(),
        "crds/mendixcredentials.mxcred.io.yaml is stale: run `cargo run -- crd > crds/mendixcredentials.mxcred.io.yaml`"
    );
}
