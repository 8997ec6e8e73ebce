//! The publishing step of a ClusterMendixCredential: reads the source, checks a new credential
//! first when it replaces a working one ([`crate::shell::rotation`]), writes the copies
//! ([`super::copies`]), and restarts the workloads of the namespaces whose copy holds it
//! ([`super::restarts`]).

use super::context::ClusterContext;
use super::copies::write_copies;
use super::restarts::restart_workloads;
use super::rotation::working_copy;
use crate::domain::api::MendixCredentialStatus;
use crate::domain::cluster::restart::Restarts;
use crate::domain::cluster::{ClusterMendixCredential, CopyOutcome};
use crate::domain::credential::Credential;
use crate::domain::due::Stamps;
use crate::domain::plan::Ready;
use crate::domain::restart;
use crate::domain::rotation::Held;
use crate::domain::spec::Resolved;
use crate::shell::context::Error;
use crate::shell::context::Id;
use crate::shell::rotation;
use crate::shell::source::read_source;
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
    /// The source's time annotations (default when the source could not be used).
    pub(super) stamps: Stamps,
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
            stamps: Stamps::default(),
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
    pub(super) resolved: &'a Resolved,
    pub(super) forced: Option<SystemTime>,
}

impl Publish<'_> {
    pub(super) async fn run(
        &self,
        previous: &MendixCredentialStatus,
        active: &[String],
    ) -> Result<Publication, Error> {
        let Publish {
            cc,
            cr,
            id,
            resolved,
            forced,
        } = *self;
        let seen = cc.sources.version(&id.namespace, &resolved.source.secret);
        let (credential, stamps) = match read_source(&cc.ctx, &id.namespace, resolved, seen).await?
        {
            Err(ready) => return Ok(Publication::refused(ready)),
            Ok(read) => read,
        };
        let working =
            async |published: &str| working_copy(cc, id, resolved, published, active).await;
        let gated =
            rotation::pass(&cc.ctx, id, resolved, previous, credential, forced, working).await?;
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
            stamps,
        })
    }
}
