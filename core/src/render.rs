//! The target Secret: what CI runners read. Pure: built from the resolved spec and credential,
//! compared with what the cluster holds.

use crate::api::{
    ANNOTATION_FINGERPRINT, CredentialType, LABEL_CREDENTIAL, LABEL_MANAGED_BY, MANAGER,
};
use crate::credential::{self, Credential};
use crate::spec::{Resolved, SourceKeys};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The Secret the operator publishes for a credential: header values, environment variables and
/// a `headers` file, labelled for the operator's watch and owned by the resource.
pub fn target_secret(
    namespace: &str,
    credential_name: &str,
    owner: OwnerReference,
    resolved: &Resolved,
    credential: &Credential,
) -> Secret {
    let mut labels = resolved.target_labels.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels.insert(LABEL_CREDENTIAL.into(), label_value(credential_name));
    let mut annotations = resolved.target_annotations.clone();
    annotations.insert(ANNOTATION_FINGERPRINT.into(), credential.fingerprint());

    Secret {
        metadata: ObjectMeta {
            name: Some(resolved.target_name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(secret_data(credential)),
        ..Default::default()
    }
}

/// A resource's name as a label value: itself when it fits the 63 characters of a label value,
/// else a prefix of it, `-` and 10 hex digits of the SHA-256 of the whole name (as Kubernetes
/// tools shorten long names): a resource name may be 253 characters long, and a label value
/// that long makes the API server refuse the Secret. Two names in one namespace share a value
/// only by a 40-bit hash collision, and a shared value alone never makes a Secret ours.
pub fn label_value(name: &str) -> String {
    const MAX: usize = 63;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let hash = &hex::encode(Sha256::digest(name.as_bytes()))[..10];
    // A DNS subdomain is ASCII; the cut may end in '-' or '.', which a label value may not.
    let head = name[..MAX - hash.len() - 1].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// The keys of the target Secret that hold the credential as environment variables.
const TOKEN: &str = "MENDIX_TOKEN";
const USERNAME: &str = "MENDIX_USERNAME";
const API_KEY: &str = "MENDIX_API_KEY";

fn secret_data(credential: &Credential) -> BTreeMap<String, ByteString> {
    let mut data: Vec<(&str, String)> = match credential {
        Credential::PersonalAccessToken(token) => {
            let token = token.expose_secret();
            vec![(TOKEN, token.to_owned())]
        }
        Credential::ApiKey { username, api_key } => vec![
            (USERNAME, username.expose_secret().to_owned()),
            (API_KEY, api_key.expose_secret().to_owned()),
        ],
    };
    let mut headers = String::new();
    for (name, value) in credential.headers() {
        let value = value.expose_secret();
        headers.push_str(&format!("{name}: {value}\n"));
        data.push((name, value.to_owned()));
    }
    data.push(("headers", headers));
    data.into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
        .collect()
}

/// Whether `existing` is controlled by the resource with `uid`.
pub fn is_controlled_by(existing: &Secret, uid: &str) -> bool {
    controller(&existing.metadata).is_some_and(|r| r.uid == uid)
}

/// Whether `existing` was published for the credential `name` with `uid`: controlled by it, or,
/// when it has no controller (someone removed the owner reference, or the resource was deleted
/// with `--cascade=orphan`), written by this operator (its field manager's entry in
/// `managedFields`) and labelled for a credential of this name. Labels alone never make a
/// Secret ours: anyone who may patch a Secret can set them, and adopting it would hand it to the
/// garbage collector along with the resource.
pub fn is_ours(existing: &Secret, uid: &str, name: &str) -> bool {
    is_ours_by(existing, uid, LABEL_CREDENTIAL, name)
}

/// Who publishes a target, as its Secrets tell: the resource's kind (whose label marks them),
/// uid and name.
#[derive(Clone, Copy, Debug)]
pub struct Publisher<'a> {
    pub scope: crate::api::Scope,
    pub uid: &'a str,
    pub name: &'a str,
}

impl Publisher<'_> {
    /// Whether `existing` is a Secret this publisher wrote: [`is_ours_by`].
    pub fn owns(&self, existing: &Secret) -> bool {
        is_ours_by(existing, self.uid, self.scope.target_label(), self.name)
    }
}

/// As [`is_ours`], for a publisher whose Secrets carry `label: name`.
pub fn is_ours_by(existing: &Secret, uid: &str, label: &str, name: &str) -> bool {
    is_ours_by_meta(&existing.metadata, uid, label, name)
}

/// As [`is_ours_by`], from a Secret's metadata alone (what a metadata watch caches).
pub fn is_ours_by_meta(meta: &ObjectMeta, uid: &str, label: &str, name: &str) -> bool {
    match controller(meta) {
        Some(r) => r.uid == uid,
        None => {
            let labelled = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(label))
                .is_some_and(|v| *v == label_value(name));
            labelled && our_entries(meta).next().is_some()
        }
    }
}

/// The credential a target Secret holds, if it is the one whose digest the status recorded
/// (`published`): what a rotation held back protects, and what goes on being verified
/// meanwhile. The data decides, by its full digest: an annotation anyone who may write the
/// Secret can set, and a value with the same fingerprint takes seconds to find.
pub fn published_credential(
    target: &Secret,
    credential_type: CredentialType,
    published: &str,
) -> Option<Credential> {
    let keys = SourceKeys {
        secret: target.metadata.name.clone().unwrap_or_default(),
        token_key: TOKEN.into(),
        username_key: USERNAME.into(),
        api_key_key: API_KEY.into(),
    };
    let credential = Credential::from_source(credential_type, &keys, target.data.as_ref()?).ok()?;
    credential::is_recorded(published, &credential.digest()).then_some(credential)
}

/// Whether the API server recorded a write of ours to `secret` other than by server-side apply
/// (the creation, which is a POST so that it cannot take over a Secret made a moment before).
/// Fields such a write set are owned by that entry, and a later apply would never remove them:
/// the entry is turned into an apply entry first.
pub fn needs_claim(secret: &Secret) -> Option<usize> {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .position(|e| {
            e.manager.as_deref() == Some(MANAGER) && e.operation.as_deref() != Some("Apply")
        })
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether applying `desired` would change nothing in `existing`: every desired label,
/// annotation and data key holds its desired value, the owner reference is there, and nothing
/// this operator applied earlier has since left the desired set (server-side apply would remove
/// it, so it is a change).
pub fn is_current(existing: &Secret, desired: &Secret) -> bool {
    let managed = ManagedKeys::of(existing);
    let contains = |have: &Option<BTreeMap<String, String>>,
                    want: &Option<BTreeMap<String, String>>,
                    ours: &[String]| {
        let empty = BTreeMap::new();
        let have = have.as_ref().unwrap_or(&empty);
        let want = want.as_ref().unwrap_or(&empty);
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            && ours.iter().all(|k| want.contains_key(k))
    };
    let data_current = {
        let empty = BTreeMap::new();
        let have = existing.data.as_ref().unwrap_or(&empty);
        let want = desired.data.as_ref().unwrap_or(&empty);
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            && managed.data.iter().all(|k| want.contains_key(k))
    };
    let owner_current = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|want| {
            existing
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r == want)
        });
    existing.type_ == desired.type_
        && data_current
        && owner_current
        && contains(
            &existing.metadata.labels,
            &desired.metadata.labels,
            &managed.labels,
        )
        && contains(
            &existing.metadata.annotations,
            &desired.metadata.annotations,
            &managed.annotations,
        )
}

/// A digest of everything `desired` states: equal digests, equal Secrets.
pub fn digest(desired: &Secret) -> [u8; 32] {
    let bytes = serde_json::to_vec(desired).expect("a Secret serializes");
    Sha256::digest(bytes).into()
}

/// When this operator last wrote changes to `secret`, from `metadata.managedFields`.
pub fn applied_at(secret: &Secret) -> Option<Time> {
    our_entries(&secret.metadata)
        .filter_map(|e| e.time.clone())
        .max()
}

/// The entries of our field manager, whatever their operation (a creation is an update).
fn our_entries(meta: &ObjectMeta) -> impl Iterator<Item = &ManagedFieldsEntry> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some(MANAGER))
}

/// Keys this operator owns by server-side apply, read from `metadata.managedFields`.
#[derive(Debug, Default, PartialEq)]
struct ManagedKeys {
    labels: Vec<String>,
    annotations: Vec<String>,
    data: Vec<String>,
}

impl ManagedKeys {
    fn of(secret: &Secret) -> Self {
        let mut keys = ManagedKeys::default();
        for entry in our_entries(&secret.metadata) {
            let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else {
                continue;
            };
            let names = |v: Option<&serde_json::Value>| -> Vec<String> {
                v.and_then(|v| v.as_object())
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .filter_map(|k| k.strip_prefix("f:").map(str::to_owned))
                    .collect()
            };
            let metadata = fields.get("f:metadata");
            keys.labels
                .extend(names(metadata.and_then(|m| m.get("f:labels"))));
            keys.annotations
                .extend(names(metadata.and_then(|m| m.get("f:annotations"))));
            keys.data.extend(names(fields.get("f:data")));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "mxcred.io/v1alpha1".into(),
            kind: "MendixCredential".into(),
            name: "deploy-bot".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn resolved(t: CredentialType) -> Resolved {
        Resolved {
            credential_type: t,
            source: SourceKeys::defaults_of("raw"),
            target_name: "deploy-bot-mendix".into(),
            target_labels: [("team".to_string(), "ci".to_string())].into(),
            target_annotations: [("note".to_string(), "x".to_string())].into(),
            verification: None,
            rotation: Default::default(),
            due: Default::default(),
        }
    }

    fn render(resolved: &Resolved, credential: &Credential) -> Secret {
        target_secret("ci", "deploy-bot", owner(), resolved, credential)
    }

    fn pat() -> Credential {
        Credential::PersonalAccessToken("tok-123".to_string().into())
    }

    fn text(s: &Secret, key: &str) -> String {
        String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn a_long_name_is_a_valid_label_value_of_its_own() {
        assert_eq!(label_value("deploy-bot"), "deploy-bot");
        let exactly = "a".repeat(63);
        assert_eq!(label_value(&exactly), exactly);
        let long = format!("{}.{}", "a".repeat(51), "b".repeat(201));
        assert_eq!(long.len(), 253);
        let value = label_value(&long);
        assert!(value.len() <= 63, "{value}");
        assert!(value.starts_with(&"a".repeat(51)), "{value}");
        // The cut fell on the '.': trimmed, as a label value must end alphanumeric.
        assert!(!value.contains(".-"), "{value}");
        let other = format!("{}c", &long[..252]);
        assert_ne!(label_value(&other), value, "the hash tells them apart");
        let valid = |v: &str| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        assert!(valid(&value), "{value}");
        let long_target = target_secret(
            "ns",
            &long,
            owner(),
            &resolved(CredentialType::PersonalAccessToken),
            &pat(),
        );
        assert_eq!(
            long_target.metadata.labels.as_ref().unwrap()[LABEL_CREDENTIAL],
            value
        );
        let mut orphan = applied(&long_target);
        orphan.metadata.owner_references = None;
        assert!(is_ours(&orphan, "uid-1", &long));
        assert!(!is_ours(&orphan, "uid-1", &other));
    }

    #[test]
    fn personal_access_token_keys() {
        let s = render(&resolved(CredentialType::PersonalAccessToken), &pat());
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["Authorization", "MENDIX_TOKEN", "headers"]);
        assert_eq!(text(&s, "MENDIX_TOKEN"), "tok-123");
        assert_eq!(text(&s, "Authorization"), "MxToken tok-123");
        assert_eq!(text(&s, "headers"), "Authorization: MxToken tok-123\n");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.metadata.name.as_deref(), Some("deploy-bot-mendix"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(s.metadata.owner_references, Some(vec![owner()]));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], "mxcred-operator");
        assert_eq!(labels[LABEL_CREDENTIAL], "deploy-bot");
        assert_eq!(labels["team"], "ci");
        let annotations = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[ANNOTATION_FINGERPRINT], pat().fingerprint());
        assert_eq!(annotations["note"], "x");
    }

    #[test]
    fn api_key_keys() {
        let c = Credential::ApiKey {
            username: "ci@example.com".to_string().into(),
            api_key: "k3y".to_string().into(),
        };
        let s = render(&resolved(CredentialType::ApiKey), &c);
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "MENDIX_API_KEY",
                "MENDIX_USERNAME",
                "Mendix-ApiKey",
                "Mendix-Username",
                "headers"
            ]
        );
        assert_eq!(text(&s, "MENDIX_USERNAME"), "ci@example.com");
        assert_eq!(text(&s, "MENDIX_API_KEY"), "k3y");
        assert_eq!(text(&s, "Mendix-Username"), "ci@example.com");
        assert_eq!(text(&s, "Mendix-ApiKey"), "k3y");
        assert_eq!(
            text(&s, "headers"),
            "Mendix-Username: ci@example.com\nMendix-ApiKey: k3y\n"
        );
    }

    #[test]
    fn operator_labels_win_over_spec_labels() {
        let mut r = resolved(CredentialType::PersonalAccessToken);
        r.target_labels
            .insert(LABEL_MANAGED_BY.into(), "someone-else".into());
        r.target_annotations
            .insert(ANNOTATION_FINGERPRINT.into(), "forged".into());
        let s = render(&r, &pat());
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[LABEL_MANAGED_BY],
            MANAGER
        );
        assert_ne!(
            s.metadata.annotations.as_ref().unwrap()[ANNOTATION_FINGERPRINT],
            "forged"
        );
    }

    fn applied(desired: &Secret) -> Secret {
        let mut s = desired.clone();
        let keys = |m: &Option<BTreeMap<String, String>>| -> serde_json::Value {
            m.iter()
                .flatten()
                .map(|(k, _)| (format!("f:{k}"), serde_json::json!({})))
                .collect()
        };
        let data: serde_json::Value = desired
            .data
            .iter()
            .flatten()
            .map(|(k, _)| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        s.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(MANAGER.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:metadata": {"f:labels": keys(&desired.metadata.labels), "f:annotations": keys(&desired.metadata.annotations)},
                "f:data": data,
            }))),
            time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }]);
        s.metadata.resource_version = Some("7".into());
        s
    }

    #[test]
    fn the_digest_changes_with_any_stated_value() {
        let r = resolved(CredentialType::PersonalAccessToken);
        let desired = render(&r, &pat());
        assert_eq!(digest(&desired), digest(&render(&r, &pat())));
        let rotated = Credential::PersonalAccessToken("tok-456".to_string().into());
        assert_ne!(digest(&desired), digest(&render(&r, &rotated)));
        let mut relabelled = r.clone();
        relabelled.target_labels.insert("team".into(), "qa".into());
        assert_ne!(digest(&desired), digest(&render(&relabelled, &pat())));
        let mut annotated = r.clone();
        annotated.target_annotations.clear();
        assert_ne!(digest(&desired), digest(&render(&annotated, &pat())));
        let mut other_owner = owner();
        other_owner.uid = "uid-2".into();
        let reowned = target_secret("ci", "deploy-bot", other_owner, &r, &pat());
        assert_ne!(digest(&desired), digest(&reowned));
    }

    #[test]
    fn current_when_nothing_changed() {
        let desired = render(&resolved(CredentialType::PersonalAccessToken), &pat());
        let mut existing = applied(&desired);
        assert!(is_current(&existing, &desired));
        assert_eq!(
            applied_at(&existing),
            Some(Time(jiff::Timestamp::UNIX_EPOCH))
        );
        // Labels added by someone else do not need a write.
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("other".into(), "1".into());
        assert!(is_current(&existing, &desired));
    }

    #[test]
    fn not_current_after_edits() {
        let r = resolved(CredentialType::PersonalAccessToken);
        let desired = render(&r, &pat());
        let existing = applied(&desired);

        let rotated = render(
            &r,
            &Credential::PersonalAccessToken("new".to_string().into()),
        );
        assert!(!is_current(&existing, &rotated));

        let mut fewer_labels = r.clone();
        fewer_labels.target_labels.clear();
        let desired2 = render(&fewer_labels, &pat());
        assert!(
            !is_current(&existing, &desired2),
            "a label we applied must be removed"
        );

        let mut edited = existing.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("MENDIX_TOKEN".into(), ByteString(b"x".to_vec()));
        assert!(!is_current(&edited, &desired));

        let mut orphaned = existing.clone();
        orphaned.metadata.owner_references = None;
        assert!(!is_current(&orphaned, &desired));

        let api_key = Credential::ApiKey {
            username: "u".to_string().into(),
            api_key: "k".to_string().into(),
        };
        let switched = render(&resolved(CredentialType::ApiKey), &api_key);
        assert!(!is_current(&existing, &switched));
    }

    #[test]
    fn ours_by_owner_or_by_our_write_never_by_labels() {
        let desired = render(&resolved(CredentialType::PersonalAccessToken), &pat());
        assert!(is_ours(&desired, "uid-1", "deploy-bot"));
        assert!(
            !is_ours(&desired, "uid-2", "deploy-bot"),
            "controlled by another resource"
        );
        // Labels alone (anyone who may patch a Secret can forge them) never make it ours.
        let mut forged = desired.clone();
        forged.metadata.owner_references = None;
        assert!(!is_ours(&forged, "uid-1", "deploy-bot"));
        // Written by us, and its owner reference removed (or orphaned): ours again, but only
        // for a credential of the name it is labelled for.
        let mut orphan = applied(&desired);
        orphan.metadata.owner_references = None;
        assert!(is_ours(&orphan, "uid-1", "deploy-bot"));
        assert!(is_ours(&orphan, "uid-new", "deploy-bot"));
        assert!(!is_ours(&orphan, "uid-1", "other-bot"));
        let mut unlabelled = orphan.clone();
        unlabelled.metadata.labels = None;
        assert!(!is_ours(&unlabelled, "uid-1", "deploy-bot"));
        // Created (an update entry) counts as written by us.
        let mut created = orphan.clone();
        created.metadata.managed_fields.as_mut().unwrap()[0].operation = Some("Update".into());
        assert!(is_ours(&created, "uid-1", "deploy-bot"));
        assert_eq!(needs_claim(&created), Some(0));
        assert_eq!(needs_claim(&orphan), None);
        assert_eq!(
            applied_at(&created),
            Some(Time(jiff::Timestamp::UNIX_EPOCH))
        );
        // Someone else's manager entry proves nothing.
        let mut other = orphan.clone();
        other.metadata.managed_fields.as_mut().unwrap()[0].manager = Some("kubectl".into());
        assert!(!is_ours(&other, "uid-1", "deploy-bot"));
    }

    #[test]
    fn control_is_by_uid() {
        let desired = render(&resolved(CredentialType::PersonalAccessToken), &pat());
        assert!(is_controlled_by(&desired, "uid-1"));
        assert!(!is_controlled_by(&desired, "uid-2"));
        let mut not_controller = desired.clone();
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!is_controlled_by(&not_controller, "uid-1"));
    }
}
