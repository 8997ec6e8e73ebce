//! Leader election with a coordination.k8s.io Lease (kube-lease-manager): only the instance
//! holding the Lease runs the controllers; a standby takes over when the leader stops renewing.

use crate::domain::api::MANAGER;
use crate::shell::controller::{Role, Shared};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Seconds a Lease stays valid without renewal: the longest a standby waits after a leader died.
pub const LEASE_DURATION: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE: u64 = 5;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Who holds the Lease: the Pod's name, or host name and process id out of a cluster.
    pub identity: String,
}

impl LeaseConfig {
    pub fn identity_of_this_process() -> String {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| MANAGER.into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Runs `lead` for each term this instance holds the Lease, until `shutdown`; each term gets a
/// token that is cancelled when the Lease is lost. Releases the Lease on the way out.
pub async fn run<F, Fut>(
    client: Client,
    lease: LeaseConfig,
    shared: &Shared,
    shutdown: CancellationToken,
    mut lead: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .with_field_manager(MANAGER)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for the lease");
    loop {
        shared.set_role(Role::Standby);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            acquired = leading.wait_for(|leader| *leader) => {
                if acquired.is_err() {
                    break;
                }
            }
        }
        info!(identity = %lease.identity, "holding the lease: serving");
        let term = shutdown.child_token();
        let serving = lead(term.clone());
        tokio::pin!(serving);
        tokio::select! {
            _ = &mut serving => {}
            _ = leading.wait_for(|leader| !*leader) => {
                warn!(identity = %lease.identity, "lost the lease: stopping");
                term.cancel();
                serving.await;
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Closing the channel makes the manager release the Lease, so a standby need not wait for
    // it to expire.
    drop(leading);
    task.await??;
    info!(identity = %lease.identity, "released the lease");
    Ok(())
}
