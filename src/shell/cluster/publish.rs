//! The publishing step of a ClusterMendixCredential: reads the source, checks a new credential
//! first when it replaces a working one ([`super::rotation`]), writes the copies
//! ([`super::copies`]), and restarts the workloads of the namespaces whose copy holds it
//! ([`super::restarts`]).

use super::context::{ClusterContext, Id};
use super::copies::write_copies;
use super::restarts::restart_workloads;
use super::rotation::CheckedFirst;
use crate::domain::cluster::restart::Restarts;
use crate::domain::cluster::{ClusterMendixCredential, ClusterMendixCredentialStatus, CopyOutcome};
use crate::domain::credential::Credential;
use crate::domain::plan::{self, Ready, ReadyReason};
use crate::domain::restart;
use crate::domain::rotation::Held;
use crate::domain::spec::Resolved;
use crate::shell::context::Error;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// What the publishing step did: the digest of the credential the copies hold (or why none
/// could be used), the rotation it held back, each copy, and the restarts it made.
pub(super) struct Publication {
    pub(super) source: Result<String, Ready>,
    pub(super) credential: Option<Credential>,
    pub(super) held: Option<(String, Held)>,
    pub(super) checked_first: bool,
    pub(super) copies: BTreeMap<String, CopyOutcome>,
    pub(super) restarted: Option<Restarts>,
    pub(super) restart_again: Option<Duration>,
}

impl Publication {
    pub(super) fn refused(ready: Ready) -> Self {
        Publication {
            source: Err(ready),
            credential: None,
            held: None,
            checked_first: false,
            copies: BTreeMap::new(),
            restarted: None,
            restart_again: None,
        }
    }
}

/// The publishing step: reads the source, checks a new credential first when it replaces a
/// working one, writes the copies, and then restarts the workloads of the namespaces whose
/// copy holds it.
pub(super) struct Publish<'a> {
    pub(super) cc: &'a ClusterContext,
    pub(super) cr: &'a ClusterMendixCredential,
    pub(super) id: &'a Id,
    pub(super) source_ns: &'a str,
    pub(super) resolved: &'a Resolved,
    pub(super) forced: Option<SystemTime>,
}

impl Publish<'_> {
    pub(super) async fn run(
        &self,
        previous: &ClusterMendixCredentialStatus,
        active: &[String],
    ) -> Result<Publication, Error> {
        let Publish {
            cc,
            cr,
            id,
            source_ns,
            resolved,
            forced,
        } = *self;
        let credential = match read_source(cc, source_ns, resolved).await? {
            Err(ready) => return Ok(Publication::refused(ready)),
            Ok(credential) => credential,
        };
        let gate = CheckedFirst {
            cc,
            id,
            source_ns,
            resolved,
            forced,
        };
        let gated = gate.pass(&previous.core(), credential, active).await?;
        let published = gated.publish;
        let copies = write_copies(cc, cr, id, resolved, &published, active).await?;
        let (mut restarted, mut restart_again) = (None, None);
        // Only once a copy holds the credential (a restarted pod must read it), and not for a
        // credential held back: the copies keep the one the workloads run.
        if gated.held.is_none() {
            let holding: Vec<&str> = copies
                .iter()
                .filter(|(_, c)| matches!(c, CopyOutcome::Synced { .. }))
                .map(|(ns, _)| ns.as_str())
                .collect();
            let workloads = restart::listed(cr.spec.target.rollout_restart.as_deref());
            let (restarts, again) = restart_workloads(
                cc,
                id,
                cr.metadata.generation,
                &workloads,
                &published.fingerprint(),
                &holding,
            )
            .await;
            (restarted, restart_again) = (Some(restarts), again);
            cc.remember_working(&id.uid, &published);
        }
        Ok(Publication {
            source: Ok(published.digest()),
            credential: Some(published),
            held: gated.held,
            checked_first: gated.checked_first,
            copies,
            restarted,
            restart_again,
        })
    }
}

/// The credential of the source, or why it cannot be used.
async fn read_source(
    cc: &ClusterContext,
    ns: &str,
    resolved: &Resolved,
) -> Result<Result<Credential, Ready>, Error> {
    let ctx = &cc.ctx;
    let (credential_type, keys) = (resolved.credential_type, &resolved.source);
    // The version this controller's own watch reports: a reconcile it woke for a change must
    // not read the credential from before it.
    let seen = cc.sources.version(ns, &keys.secret);
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
            let credential = Credential::from_secret(credential_type, keys, &source);
            if let Some(version) = source.metadata.resource_version {
                ctx.secrets
                    .remember(ns, credential_type, keys, version, credential.clone());
            }
            credential
        }
    };
    Ok(credential.map_err(|problem| plan::source_refused(&problem)))
}
