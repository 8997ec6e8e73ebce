//! The source step of both kinds: the credential in the source Secret, from the cache while the
//! watch reports the version it was read at, else read (and remembered at its version).

use crate::domain::credential::Credential;
use crate::domain::due::Stamps;
use crate::domain::plan::{self, Ready, ReadyReason};
use crate::domain::spec::Resolved;
use crate::shell::context::{Context, Error};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// The credential in the source Secret in `ns` and its time annotations (`mxcred.io/issued-at`,
/// `mxcred.io/expires-at`), or why it cannot be used. `seen` is the
/// version a watch reports of the source: a reconcile woken by that watch must not take an
/// older read for current.
pub(crate) async fn read_source(
    ctx: &Context,
    ns: &str,
    resolved: &Resolved,
    seen: Option<String>,
) -> Result<Result<(Credential, Stamps), Ready>, Error> {
    let (credential_type, keys) = (resolved.credential_type, &resolved.source);
    let cached = seen.and_then(|v| ctx.secrets.credential_at(ns, credential_type, keys, &v));
    let credential = match cached {
        Some(cached) => cached,
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let Some(source) = secrets
                .get_opt(&keys.secret)
                .await
                .map_err(Error::ReadSource)?
            else {
                return Ok(Err(Ready::refused(
                    ReadyReason::SourceNotFound,
                    format!("Secret {:?} not found in namespace {ns:?}", keys.secret),
                )));
            };
            // The annotations of a Secret that has not opted in are not looked at either.
            let credential = Credential::from_secret(credential_type, keys, &source)
                .map(|c| (c, Stamps::of(source.metadata.annotations.as_ref())));
            if let Some(version) = source.metadata.resource_version {
                ctx.secrets
                    .remember(ns, credential_type, keys, version, credential.clone());
            }
            credential
        }
    };
    Ok(credential.map_err(|problem| plan::source_refused(&problem)))
}
