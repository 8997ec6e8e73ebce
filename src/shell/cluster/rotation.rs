//! The rotation gate of a ClusterMendixCredential: a new credential in the source replaces the
//! working one in every copy only once the platform accepts it (policy VerifyFirst), checked
//! once for all of them.

use super::context::ClusterContext;
use crate::domain::api::MendixCredentialStatus;
use crate::domain::cluster;
use crate::domain::credential::{self, Credential};
use crate::domain::render;
use crate::domain::rotation::{self, Decision, Held};
use crate::domain::spec::Resolved;
use crate::shell::context::Error;
use crate::shell::context::Id;
use crate::shell::subscribe;
use crate::shell::verifier::{Slot, Subscription};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// The rotation gate of a ClusterMendixCredential: as for a MendixCredential, a new credential
/// replaces a working one only once the platform accepts it, checked once for every copy.
pub(super) struct CheckedFirst<'a> {
    pub(super) cc: &'a ClusterContext,
    pub(super) id: &'a Id,
    pub(super) resolved: &'a Resolved,
    pub(super) forced: Option<std::time::SystemTime>,
}

/// What the copies hold after the gate.
pub(super) struct Gated {
    pub(super) publish: Credential,
    /// The new credential held back, and why.
    pub(super) held: Option<(String, Held)>,
    pub(super) checked_first: bool,
}

impl CheckedFirst<'_> {
    pub(super) async fn pass(
        &self,
        previous: &MendixCredentialStatus,
        credential: Credential,
        active: &[String],
    ) -> Result<Gated, Error> {
        let pending = credential.fingerprint();
        let resolved = self.resolved;
        let digest = credential.digest();
        let open = |publish| Gated {
            publish,
            held: None,
            checked_first: false,
        };
        let protected = resolved.verification.as_ref().zip(rotation::to_protect(
            resolved.rotation,
            resolved.verification.is_some(),
            previous,
            &digest,
        ));
        let Some((verification, published)) = protected else {
            return Ok(open(credential));
        };
        let Some(working) = self.working_copy(published, active).await? else {
            return Ok(open(credential));
        };
        let ctx = &self.cc.ctx;
        let view = ctx.verifier.subscribe_cluster(Subscription {
            uid: &self.id.uid,
            slot: Slot::Pending,
            namespace: &self.id.namespace,
            name: &self.id.name,
            credential: &credential,
            probe: &verification.probe,
            interval: ctx.settings.test_interval.unwrap_or(verification.interval),
            forced: self.forced,
            known: None,
        });
        Ok(match rotation::decide(subscribe::pending_check(view)) {
            Decision::Publish => Gated {
                publish: credential,
                held: None,
                checked_first: true,
            },
            Decision::Hold(held) => Gated {
                publish: working,
                held: Some((pending, held)),
                checked_first: false,
            },
        })
    }

    /// The published credential (the one whose digest the status recorded): the one this
    /// instance published last; after a restart, from a copy of ours whose data has that full
    /// digest. A namespace's users may write its copy, but cannot make data with the digest of
    /// a credential other than the working one. With none left, there is nothing to protect.
    async fn working_copy(
        &self,
        published: &str,
        active: &[String],
    ) -> Result<Option<Credential>, Error> {
        let remembered = self.cc.working(&self.id.uid);
        if let Some(working) =
            remembered.filter(|c| credential::is_recorded(published, &c.digest()))
        {
            return Ok(Some(working));
        }
        let name = &self.resolved.target_name;
        for ns in active {
            let secrets: Api<Secret> = Api::namespaced(self.cc.ctx.client.clone(), ns);
            let Some(copy) = secrets.get_opt(name).await.map_err(Error::ReadTarget)? else {
                continue;
            };
            if !cluster::is_ours(&copy, &self.id.uid, &self.id.name) {
                continue;
            }
            if let Some(working) =
                render::published_credential(&copy, self.resolved.credential_type, published)
            {
                return Ok(Some(working));
            }
        }
        Ok(None)
    }
}
