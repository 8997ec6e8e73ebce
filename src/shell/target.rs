//! The sync step: reads the source Secret (from the cache while its version holds), renders
//! the target, and writes it only when what is there differs. The decisions are pure
//! ([`crate::domain::plan::target_action`]); this is their IO.

use crate::domain::api::{LABEL_CREDENTIAL, MANAGER};
use crate::domain::api::{MendixCredential, MendixCredentialStatus};
use crate::domain::credential::{self, Credential};
use crate::domain::due::Stamps;
use crate::domain::plan::{self, Ready, ReadyReason, Sync, TargetAction};
use crate::domain::render::{self, Publisher};
use crate::domain::rotation::{self, Decision};
use crate::domain::spec::Resolved;
use crate::shell::context::{Context, Error, Id, apply_params, now};
use crate::shell::source::read_source;
use crate::shell::subscribe;
use crate::shell::tracker::Published;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Api, Resource, ResourceExt};
use std::time::SystemTime;
use tracing::info;

/// Reads the source, renders the target and writes it when it differs from what is there.
/// Returns what was established, the credential published and, when it is the source's, the
/// source's time annotations.
pub(crate) async fn sync(
    cr: &MendixCredential,
    id: &Id,
    resolved: &Resolved,
    previous: &MendixCredentialStatus,
    forced: Option<SystemTime>,
    ctx: &Context,
) -> Result<(Sync, Option<Credential>, Stamps), Error> {
    let refused = |ready| Ok((Sync::Refused(ready), None, Stamps::default()));
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let seen = ctx.secrets.version(&id.namespace, &resolved.source.secret);
    let (credential, stamps) = match read_source(ctx, &id.namespace, resolved, seen).await? {
        Err(ready) => return refused(ready),
        Ok(read) => read,
    };
    let checked_first =
        match hold_back(id, &secrets, resolved, previous, &credential, forced, ctx).await? {
            Gate::Held((sync, published)) => return Ok((sync, published, Stamps::default())),
            Gate::Accepted => true,
            Gate::Open => false,
        };

    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let desired = render::target_secret(&id.namespace, &id.name, owner, resolved, &credential);
    let target = &resolved.target_name;
    let seen = ctx.secrets.version(&id.namespace, target);
    let publisher = Publisher {
        uid: &id.uid,
        name: &id.name,
        label: LABEL_CREDENTIAL,
    };
    let (written_at, wrote) = match write_target(ctx, publisher, desired, seen).await? {
        Written::Holds { at, wrote } => (at, wrote),
        Written::Conflict => return refused(plan::target_conflict(target)),
        Written::Invalid(message) => {
            return refused(Ready::refused(ReadyReason::InvalidSpec, message));
        }
    };
    remove_previous_target(previous, &secrets, target, &id.uid).await?;
    let sync = Sync::Published {
        target: target.clone(),
        fingerprint: credential.fingerprint(),
        digest: credential.digest(),
        written_at,
        wrote,
        checked_first,
    };
    Ok((sync, Some(credential), stamps))
}

/// Whether a credential may be published.
enum Gate {
    /// Nothing to protect.
    Open,
    /// The platform accepted it before it replaces a working credential.
    Accepted,
    /// Held back: what was established, and the credential that stays published.
    Held((Sync, Option<Credential>)),
}

/// With rotation policy VerifyFirst, holds a new credential back until the platform accepts it,
/// while the target holds a credential of ours known to work.
async fn hold_back(
    id: &Id,
    secrets: &Api<Secret>,
    resolved: &Resolved,
    previous: &MendixCredentialStatus,
    credential: &Credential,
    forced: Option<SystemTime>,
    ctx: &Context,
) -> Result<Gate, Error> {
    let pending = credential.fingerprint();
    let Some((verification, published)) = resolved.verification.as_ref().zip(rotation::to_protect(
        resolved.rotation,
        resolved.verification.is_some(),
        previous,
        &credential.digest(),
    )) else {
        return Ok(Gate::Open);
    };
    // Only a target of ours that holds the published credential is protected: one deleted or
    // changed by hand meanwhile has nothing left to lose.
    let target = &resolved.target_name;
    let working = secrets
        .get_opt(target)
        .await
        .map_err(Error::ReadTarget)?
        .filter(|existing| render::is_ours(existing, &id.uid, &id.name))
        .and_then(|existing| {
            render::published_credential(&existing, resolved.credential_type, published)
        });
    let Some(working) = working else {
        return Ok(Gate::Open);
    };
    let check = subscribe::check_pending(id, verification, credential, forced, ctx);
    Ok(match rotation::decide(check) {
        Decision::Publish => Gate::Accepted,
        Decision::Hold(held) => Gate::Held((
            Sync::Held {
                target: target.clone(),
                published: credential::fingerprint_of(published),
                pending,
                held,
            },
            Some(working),
        )),
    })
}

/// What writing a target came to.
pub(crate) enum Written {
    /// The target holds the desired content: when its data was last written, and whether this
    /// wrote it.
    Holds { at: Option<Time>, wrote: bool },
    /// Someone else's Secret holds the name: left alone.
    Conflict,
    /// The API server refused the Secret (the fields named, no values).
    Invalid(String),
}

/// Writes `desired` into its namespace for `publisher`, the same for both kinds: kept as it is
/// when the watch reports the target at the version `seen` that this instance left it at;
/// else read, and written when it differs.
pub(crate) async fn write_target(
    ctx: &Context,
    publisher: Publisher<'_>,
    desired: Secret,
    seen: Option<String>,
) -> Result<Written, Error> {
    let digest = render::digest(&desired);
    let (Some(ns), Some(target)) = (
        desired.metadata.namespace.clone(),
        desired.metadata.name.clone(),
    ) else {
        return Err(Error::MissingMetadata("name"));
    };
    let known = ctx
        .tracker
        .publication(publisher.uid, &ns, &target, seen.as_deref(), &digest);
    if let Some(known) = known {
        return Ok(Written::Holds {
            at: known.at,
            wrote: false,
        });
    }
    // Read even when no watch reports it: a Secret another resource (or anyone) created a
    // moment ago must be refused as a conflict, not taken over; the watch may lag by more.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&target).await.map_err(Error::ReadTarget)?;
    let action = plan::target_action(existing.as_ref(), &desired, publisher);
    let (version, at, wrote) = match carry_out(&secrets, action, existing, desired).await? {
        TargetOutcome::Holds { version, at, wrote } => (version, at, wrote),
        TargetOutcome::Conflict => return Ok(Written::Conflict),
        TargetOutcome::Refused(e) => return Ok(Written::Invalid(refused_target(&e))),
    };
    let published = Published {
        target,
        version,
        digest,
        at: at.clone(),
    };
    ctx.tracker.record_published(publisher.uid, &ns, published);
    Ok(Written::Holds { at, wrote })
}

/// What carrying out a [`TargetAction`] came to.
pub(crate) enum TargetOutcome {
    /// The Secret holds the desired content: its version, when its data was last written, and
    /// whether this wrote it.
    Holds {
        version: String,
        at: Option<Time>,
        wrote: bool,
    },
    /// Someone else's Secret holds the name: left alone.
    Conflict,
    /// The API server refused the Secret as invalid.
    Refused(Box<Status>),
}

/// Carries out `action` for `desired`, given the Secret `existing` under its name: keeps it,
/// creates it, or claims and applies it on condition of the version read.
pub(crate) async fn carry_out(
    secrets: &Api<Secret>,
    action: TargetAction,
    existing: Option<Secret>,
    mut desired: Secret,
) -> Result<TargetOutcome, Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    Ok(match action {
        TargetAction::Conflict => TargetOutcome::Conflict,
        TargetAction::Keep { written_at } => TargetOutcome::Holds {
            version: existing
                .and_then(|e| e.metadata.resource_version)
                .unwrap_or_default(),
            at: written_at,
            wrote: false,
        },
        TargetAction::Create => {
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            // A Secret created by someone else since the read makes this fail (409), and the
            // retry reports the conflict: it is never taken over.
            let created = match secrets.create(&params, &desired).await {
                Ok(created) => created,
                Err(kube::Error::Api(e)) if e.is_invalid() => return Ok(TargetOutcome::Refused(e)),
                Err(e) => return Err(Error::ApplyTarget(e)),
            };
            TargetOutcome::Holds {
                version: created.resource_version().unwrap_or_default(),
                at: render::applied_at(&created).or_else(|| Some(now())),
                wrote: true,
            }
        }
        TargetAction::Apply { resource_version } => {
            // Once in a Secret's life, after its creation: what the creation set becomes the
            // apply's to change and remove.
            let resource_version = match existing {
                Some(secret) => claim(secrets, secret)
                    .await?
                    .metadata
                    .resource_version
                    .unwrap_or(resource_version),
                None => resource_version,
            };
            // The resourceVersion makes the apply conditional: if the Secret changed (or was
            // replaced by a foreign one) since it was read, the apply fails and is retried.
            desired.metadata.resource_version = Some(resource_version.clone());
            let written = match secrets
                .patch(&name, &apply_params(), &Patch::Apply(&desired))
                .await
            {
                Ok(written) => written,
                Err(kube::Error::Api(e)) if e.is_invalid() => return Ok(TargetOutcome::Refused(e)),
                Err(e) => return Err(Error::ApplyTarget(e)),
            };
            let version = written.resource_version().unwrap_or_default();
            // An apply that changed nothing keeps the version: nothing was written.
            let wrote = resource_version != version;
            // The server's own time of the write, as any later reader sees it: another
            // instance then agrees on it.
            let at = render::applied_at(&written).or_else(|| wrote.then(now));
            TargetOutcome::Holds { version, at, wrote }
        }
    })
}

/// Turns the entry of our creation (an update) in `managedFields` into an apply entry, so that
/// later applies own, and can remove, what the creation set. Conditional on the version read.
pub(crate) async fn claim(secrets: &Api<Secret>, secret: Secret) -> Result<Secret, Error> {
    let Some(index) = render::needs_claim(&secret) else {
        return Ok(secret);
    };
    let name = secret.name_any();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": secret.resource_version()},
        {"op": "test", "path": format!("/metadata/managedFields/{index}/manager"), "value": MANAGER},
        {"op": "replace", "path": format!("/metadata/managedFields/{index}/operation"), "value": "Apply"},
    ]))
    .expect("a JSON patch");
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    secrets
        .patch(&name, &params, &Patch::Json::<()>(patch))
        .await
        .map_err(Error::ApplyTarget)
}

/// The API server refused the target Secret: only labels and annotations from the spec can make
/// it invalid. Names the fields, not the values.
pub(crate) fn refused_target(e: &Status) -> String {
    let causes: Vec<&str> = e
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    let mut fields: Vec<&str> = causes.iter().map(|f| spec_field(f)).collect();
    fields.dedup();
    let fields = if fields.is_empty() {
        "spec.target.labels or spec.target.annotations".to_owned()
    } else {
        fields.join(", ")
    };
    format!(
        "the API server refused the target Secret: check {fields} (invalid: {})",
        causes.join(", ")
    )
}

/// The field of the spec that a field of the target Secret comes from.
fn spec_field(secret_field: &str) -> &str {
    let field = secret_field.split('[').next().unwrap_or_default();
    match field {
        "metadata.labels" => "spec.target.labels",
        "metadata.annotations" => "spec.target.annotations",
        "metadata.name" => "spec.target.name",
        _ => secret_field,
    }
}

/// After `spec.target.name` changed, deletes the Secret published under the old name.
async fn remove_previous_target(
    previous: &MendixCredentialStatus,
    secrets: &Api<Secret>,
    target: &str,
    uid: &str,
) -> Result<(), Error> {
    let Some(old) = previous.secret_name.as_deref().filter(|old| *old != target) else {
        return Ok(());
    };
    let existing = secrets
        .get_opt(old)
        .await
        .map_err(Error::DeletePreviousTarget)?;
    if let Some(secret) = existing
        && render::is_controlled_by(&secret, uid)
    {
        secrets
            .delete(old, &DeleteParams::default())
            .await
            .map_err(Error::DeletePreviousTarget)?;
        info!(secret = old, "deleted the previous target Secret");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_field_of_the_spec() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "details": {"causes": [
                {"field": "metadata.labels", "message": "must be no more than 63 characters"},
                {"field": "metadata.annotations[x]", "message": "bad"},
            ]},
        }))
        .unwrap();
        let message = refused_target(&status);
        assert!(
            message.contains("check spec.target.labels, spec.target.annotations"),
            "{message}"
        );
        assert!(message.contains("invalid: metadata.labels"), "{message}");
    }
}
