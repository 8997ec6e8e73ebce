//! What the rotation gate ([`crate::shell::rotation`]) protects for a ClusterMendixCredential:
//! the credential the copies hold while a new one is checked.

use super::context::ClusterContext;
use crate::domain::cluster;
use crate::domain::credential::{self, Credential};
use crate::domain::render;
use crate::domain::spec::Resolved;
use crate::shell::context::{Error, Id};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// The published credential (the one whose digest the status recorded): the one this instance
/// published last; after a restart, from a copy of ours in `active` whose data has that full
/// digest. A namespace's users may write its copy, but cannot make data with the digest of a
/// credential other than the working one. With none left, there is nothing to protect.
pub(super) async fn working_copy(
    cc: &ClusterContext,
    id: &Id,
    resolved: &Resolved,
    published: &str,
    active: &[String],
) -> Result<Option<Credential>, Error> {
    let remembered = cc.working(&id.uid);
    if let Some(working) = remembered.filter(|c| credential::is_recorded(published, &c.digest())) {
        return Ok(Some(working));
    }
    let name = &resolved.target_name;
    for ns in active {
        let secrets: Api<Secret> = Api::namespaced(cc.ctx.client.clone(), ns);
        let Some(copy) = secrets.get_opt(name).await.map_err(Error::ReadTarget)? else {
            continue;
        };
        if !cluster::is_ours(&copy, &id.uid, &id.name) {
            continue;
        }
        if let Some(working) =
            render::published_credential(&copy, resolved.credential_type, published)
        {
            return Ok(Some(working));
        }
    }
    Ok(None)
}
