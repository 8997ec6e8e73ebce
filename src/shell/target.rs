//! The targets. What both kinds share: writing one target in one namespace, only when it
//! differs ([`write_target`]; the decision is pure: [`crate::domain::plan::target_action`]),
//! and deleting one no longer wanted ([`remove_target`]).

use crate::domain::api::MANAGER;
use crate::domain::plan::{self, TargetAction};
use crate::domain::render::{self, Publisher};
use crate::shell::context::{Context, Error, Id, apply_params, now};
use crate::shell::secrets::Seen;
use crate::shell::tracker::Published;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::Status;
use kube::{Api, ResourceExt};
use tracing::info;

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
/// when the watch reports the target at the version that this instance left it at; created at
/// once when the watch reports none; else read, and written when it differs.
pub(crate) async fn write_target(
    ctx: &Context,
    publisher: Publisher<'_>,
    desired: Secret,
    seen: Seen,
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
        .publication(publisher.uid, &ns, &target, seen.version(), &digest);
    if let Some(known) = known {
        return Ok(Written::Holds {
            at: known.at,
            wrote: false,
        });
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // A target the watch does not report is created at once, unless this instance wrote it
    // (the watch has not caught up). A create never takes over a Secret that exists: it
    // answers 409, and the Secret is then read and decided on as any other.
    let absent = seen == Seen::Absent && !ctx.tracker.has_published(publisher.uid, &ns, &target);
    let created = if absent {
        create(&secrets, &desired).await?.ok()
    } else {
        None
    };
    let outcome = match created {
        Some(outcome) => outcome,
        None => {
            let existing = secrets.get_opt(&target).await.map_err(Error::ReadTarget)?;
            let action = plan::target_action(existing.as_ref(), &desired, publisher);
            carry_out(&secrets, action, existing, desired).await?
        }
    };
    let (version, at, wrote) = match outcome {
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

/// Creates `desired`; the server's answer when a Secret of its name exists.
async fn create(
    secrets: &Api<Secret>,
    desired: &Secret,
) -> Result<Result<TargetOutcome, Box<Status>>, Error> {
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let created = match secrets.create(&params, desired).await {
        Ok(created) => created,
        Err(kube::Error::Api(e)) if e.is_already_exists() => return Ok(Err(e)),
        Err(kube::Error::Api(e)) if e.is_invalid() => return Ok(Ok(TargetOutcome::Refused(e))),
        Err(e) => return Err(Error::ApplyTarget(e)),
    };
    Ok(Ok(TargetOutcome::Holds {
        version: created.resource_version().unwrap_or_default(),
        at: render::applied_at(&created).or_else(|| Some(now())),
        wrote: true,
    }))
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
        // A Secret created by someone else since the read makes this fail (409), and the
        // retry reports the conflict: it is never taken over.
        TargetAction::Create => match create(secrets, &desired).await? {
            Ok(outcome) => outcome,
            Err(exists) => return Err(Error::ApplyTarget(kube::Error::Api(exists))),
        },
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

/// Deletes `name` in `ns`, a target of `id` no longer wanted, the same for both kinds: a
/// renamed target, or a copy in a namespace no longer selected. Only the very Secret seen as
/// ours (its uid `secret`): one replaced meanwhile stays, and one gone already is fine.
pub(crate) async fn remove_target(
    ctx: &Context,
    id: &Id,
    ns: &str,
    name: &str,
    secret: Option<String>,
) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(name, &params).await {
        Ok(_) => {
            info!(
                credential = id.name,
                namespace = ns,
                secret = name,
                "deleted a target no longer wanted"
            );
            ctx.tracker.forget_published(&id.uid, ns, name);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
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
