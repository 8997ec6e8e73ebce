//! An object the operator cannot deserialise gets a condition and does not stop the others.
//! Its own test binary: it loosens the CRD schema, which other tests must not see.

mod common;

use common::TestEnv;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_unreadable_resource_does_not_stop_the_others() {
    let env = TestEnv::new("unreadable").await;
    // Drop the enum on spec.type so the API server stores a value this operator cannot read.
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let patch = json!([{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/type/enum"}]);
    crds.patch(
        "mendixcredentials.mxcred.io",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    env.put_source("raw", &[("token", "a-token")]).await;
    let bogus = format!(
        "apiVersion: mxcred.io/v1alpha1\nkind: MendixCredential\nmetadata: {{name: bogus, namespace: {}}}\nspec: {{type: Bogus, sourceRef: {{name: raw}}}}\n",
        env.ns
    );
    common::apply_yaml(&env.client, &bogus).await;
    env.put_credential("fine", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let _op = env.start_operator(&[]);

    env.wait_reason("fine", "Ready", "Synced").await;
    let guarded: Api<DeserializeGuard<MendixCredential>> =
        Api::namespaced(env.client.clone(), &env.ns);
    let message = common::wait_for(Duration::from_secs(30), || async {
        // Still unreadable to the typed client; its status is read raw below.
        guarded.get("bogus").await.ok()?.0.err()?;
        let raw: kube::api::DynamicObject = Api::namespaced_with(
            env.client.clone(),
            &env.ns,
            &kube::api::ApiResource::erase::<MendixCredential>(&()),
        )
        .get("bogus")
        .await
        .ok()?;
        let conditions = raw
            .data
            .get("status")?
            .get("conditions")?
            .as_array()?
            .clone();
        conditions
            .iter()
            .find(|c| {
                c["type"] == "Ready" && c["reason"] == "InvalidSpec" && c["status"] == "False"
            })
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
    })
    .await
    .expect("the unreadable resource gets Ready=False InvalidSpec");
    assert!(message.contains("cannot be read"), "{message}");
    assert!(env.secrets().get_opt("bogus").await.unwrap().is_none());
}
