//! Leader election with a coordination.k8s.io Lease: only the instance holding the Lease runs the
//! controllers; a standby takes over when the leader stops renewing.
//!
//! Written by hand on the rules of client-go's leaderelection rather than with kube-lease-manager
//! 0.13, which cannot be made safe by configuration: it stays leader until its next look at the
//! Lease however long it was stalled (no local deadline), it decides expiry from the holder's
//! wall-clock `renewTime`, and a standby that finds the Lease expired clears it with an
//! unconditional strategic-merge patch, which can wipe out a holder that acquired it a moment
//! earlier. Here every write carries the `resourceVersion` it was decided on, so of two
//! candidates deciding on the same record exactly one write succeeds (the API server answers the
//! other 409 Conflict), and a leader stops on its own monotonic clock before anyone may take over.
//!
//! Why that is enough: a renewal that starts at instant `s` and succeeds is committed after `s`,
//! and a standby waits 14 s (the lease duration less its polling period) from when it first saw
//! that record, which is after the commit. The leader stops serving at `s + RENEW_DEADLINE`, 4 s
//! before the earliest instant a standby may write, and that write fails if the record changed
//! in between.

use crate::domain::api::MANAGER;
use crate::shell::controller::{Role, Shared};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Seconds a Lease stays valid without renewal: the longest a standby waits after a leader died.
pub const LEASE_DURATION: u64 = 15;
/// A leader that has not renewed within this long of the start of its last successful renewal
/// stops serving. The 4 s to the earliest take-over by a standby are what the controllers get to
/// drain and what absorbs clock rate differences between instances.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews.
pub const RENEW_PERIOD: Duration = Duration::from_secs(2);
/// How often a standby reads the Lease: the most by which it sees a renewal late.
pub const STANDBY_PERIOD: Duration = Duration::from_secs(1);
/// How long after first seeing a record a standby may take the Lease: the record's duration less
/// the polling period by which it may have seen the record late, so that a dead leader is
/// replaced within the lease duration of its last renewal. Still 4 s past the renew deadline.
fn take_over_after(lease_duration: Duration) -> Duration {
    lease_duration.saturating_sub(STANDBY_PERIOD)
}

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

/// One instance's view of the Lease, and its attempts to take, renew and release it.
pub struct Elector {
    api: Api<Lease>,
    lease: LeaseConfig,
    /// The `resourceVersion` last read, and when this instance first saw it: expiry is judged on
    /// the local clock from then, never from another instance's timestamps.
    observed: Option<(String, Instant)>,
}

/// What an attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The Lease is ours from the instant the attempt started.
    Held,
    /// Another instance holds it, or won the race for it.
    HeldBy(Option<String>),
    /// Another instance holds it; it expires at this instant unless renewed.
    HeldUntil(String, Instant),
}

impl Elector {
    pub fn new(client: Client, lease: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &lease.namespace),
            lease,
            observed: None,
        }
    }

    /// Takes the Lease if it is free, expired or already ours (renewing it), with one read and
    /// at most one conditional write.
    pub async fn try_acquire_or_renew(&mut self) -> kube::Result<Attempt> {
        let Some(current) = self.api.get_opt(&self.lease.name).await? else {
            return self.create().await;
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let seen = match &self.observed {
            Some((known, since)) if *known == version => *since,
            _ => Instant::now(),
        };
        self.observed = Some((version.clone(), seen));
        let spec = current.spec.unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.lease.identity.as_str());
        if let Some(holder) = holder.clone().filter(|_| !ours) {
            let duration = spec.lease_duration_seconds.map_or(LEASE_DURATION, |d| {
                u64::try_from(d).unwrap_or(LEASE_DURATION)
            });
            let expiry = seen + take_over_after(Duration::from_secs(duration));
            if Instant::now() < expiry {
                return Ok(Attempt::HeldUntil(holder, expiry));
            }
        }
        let now = MicroTime(jiff::Timestamp::now());
        let (acquired, transitions) = if ours {
            (
                spec.acquire_time.unwrap_or(now.clone()),
                spec.lease_transitions,
            )
        } else {
            let previous = spec.lease_transitions.unwrap_or(0);
            (now.clone(), Some(previous + i32::from(holder.is_some())))
        };
        // A resourceVersion in a patch is a precondition: the write fails if anyone wrote since.
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "spec": {
                "holderIdentity": self.lease.identity,
                "leaseDurationSeconds": LEASE_DURATION,
                "acquireTime": acquired,
                "renewTime": now,
                "leaseTransitions": transitions,
            }
        });
        self.write(Patch::Merge(patch), holder).await
    }

    async fn create(&mut self) -> kube::Result<Attempt> {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.lease.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.lease.identity.clone()),
                lease_duration_seconds: Some(LEASE_DURATION as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&post_params(), &lease).await {
            Ok(written) => Ok(self.wrote(&written)),
            Err(e) if conflict(&e) => Ok(Attempt::HeldBy(None)),
            Err(e) => Err(e),
        }
    }

    async fn write(
        &mut self,
        patch: Patch<serde_json::Value>,
        holder: Option<String>,
    ) -> kube::Result<Attempt> {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        match self.api.patch(&self.lease.name, &params, &patch).await {
            Ok(written) => Ok(self.wrote(&written)),
            Err(e) if conflict(&e) => Ok(Attempt::HeldBy(holder)),
            Err(e) => Err(e),
        }
    }

    fn wrote(&mut self, written: &Lease) -> Attempt {
        let version = written
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        self.observed = Some((version, Instant::now()));
        Attempt::Held
    }

    /// Gives the Lease up if this instance still holds it, so that a standby need not wait for
    /// it to expire; tells whether it did.
    pub async fn release(&mut self) -> kube::Result<bool> {
        let Some(current) = self.api.get_opt(&self.lease.name).await? else {
            return Ok(false);
        };
        let spec = current.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.lease.identity.as_str()) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {
                "holderIdentity": null,
                "leaseDurationSeconds": 1,
                "renewTime": MicroTime(jiff::Timestamp::now()),
            }
        });
        let attempt = self.write(Patch::Merge(patch), None).await?;
        Ok(attempt == Attempt::Held)
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    }
}

/// 409: another instance wrote the Lease first (Conflict) or created it first (AlreadyExists).
fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Why a term ended.
enum End {
    /// No successful renewal within the renew deadline: the Lease may expire soon.
    Deadline,
    /// Another instance holds the Lease.
    Lost(Option<String>),
    /// The controllers returned (on shutdown).
    Stopped,
}

/// Runs `lead` for each term this instance holds the Lease, until `shutdown`; each term gets a
/// token that is cancelled when the term ends. Releases the Lease on the way out.
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
    let mut elector = Elector::new(client, lease.clone());
    shared.set_term_end(Some(Instant::now().into_std()));
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for the lease");
    loop {
        shared.set_role(Role::Standby);
        let Some(acquired) = acquire(&mut elector, &shutdown).await else {
            break;
        };
        info!(identity = %lease.identity, "holding the lease: serving");
        let deadline = Cell::new(acquired + RENEW_DEADLINE);
        shared.set_term_end(Some(deadline.get().into_std()));
        let term = shutdown.child_token();
        let mut serving = pin!(lead(term.clone()));
        let end = hold(&mut elector, &deadline, shared, serving.as_mut()).await;
        match end {
            End::Stopped => {}
            End::Deadline | End::Lost(_) => {
                shared.set_term_end(Some(Instant::now().into_std()));
                if !shutdown.is_cancelled() {
                    shared.set_role(Role::Standby);
                }
                term.cancel();
                match &end {
                    End::Lost(holder) => {
                        warn!(identity = %lease.identity, holder = ?holder, "lost the lease: stopping")
                    }
                    _ => {
                        warn!(identity = %lease.identity, "could not renew the lease in time: stopping")
                    }
                }
                drain(serving, deadline.get() - RENEW_DEADLINE).await;
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Only after the controllers have stopped: a standby may start the moment it is released.
    match elector.release().await {
        Ok(true) => info!(identity = %lease.identity, "released the lease"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not release the lease; it expires by itself"),
    }
    Ok(())
}

/// Runs the controllers while renewing the Lease, until the term ends.
async fn hold(
    elector: &mut Elector,
    deadline: &Cell<Instant>,
    shared: &Shared,
    mut serving: Pin<&mut impl Future<Output = ()>>,
) -> End {
    let mut renewing = pin!(renew(elector, deadline, shared));
    let mut watchdog = pin!(sleep_until(deadline.get()));
    // The clock is read before the controllers are polled, every time: after a stall (a frozen
    // process, a starved CPU) they must start no reconcile past the deadline, whichever timer or
    // socket woke the task first. Reconciles already running are tasks of their own: `drain`
    // lets them end while the Lease is surely still ours, and aborts them then.
    poll_fn(|cx| {
        if Instant::now() >= deadline.get() {
            return Poll::Ready(End::Deadline);
        }
        if let Poll::Ready(end) = renewing.as_mut().poll(cx) {
            return Poll::Ready(end);
        }
        if serving.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Stopped);
        }
        watchdog.as_mut().reset(deadline.get());
        watchdog.as_mut().poll(cx).map(|()| End::Deadline)
    })
    .await
}

/// Tries to take the Lease until it succeeds (returning when the successful attempt started) or
/// `shutdown`.
async fn acquire(elector: &mut Elector, shutdown: &CancellationToken) -> Option<Instant> {
    loop {
        let started = Instant::now();
        // A request the API server never answers must not keep a standby from trying again.
        let attempt = tokio::time::timeout(RENEW_DEADLINE, elector.try_acquire_or_renew());
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            attempt = attempt => attempt,
        };
        let wait = match attempt {
            Ok(Ok(Attempt::Held)) => return Some(started),
            Ok(Ok(Attempt::HeldUntil(_, expiry))) => expiry
                .saturating_duration_since(Instant::now())
                .min(STANDBY_PERIOD),
            Ok(Ok(Attempt::HeldBy(_))) => STANDBY_PERIOD,
            Ok(Err(e)) => {
                warn!(error = %e, "could not read or take the lease");
                STANDBY_PERIOD
            }
            Err(_) => {
                warn!("no answer from the API server about the lease");
                STANDBY_PERIOD
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = sleep(wait) => {}
        }
    }
}

/// Renews the Lease every `RENEW_PERIOD`, moving `deadline` on after each success; returns when
/// it is lost or cannot be renewed before the deadline.
async fn renew(elector: &mut Elector, deadline: &Cell<Instant>, shared: &Shared) -> End {
    loop {
        sleep(RENEW_PERIOD).await;
        let started = Instant::now();
        let attempt = tokio::time::timeout_at(deadline.get(), elector.try_acquire_or_renew()).await;
        match attempt {
            Err(_) => return End::Deadline,
            Ok(Ok(Attempt::Held)) => {
                deadline.set(started + RENEW_DEADLINE);
                shared.set_term_end(Some(deadline.get().into_std()));
            }
            Ok(Ok(Attempt::HeldBy(holder))) => return End::Lost(holder),
            Ok(Ok(Attempt::HeldUntil(holder, _))) => return End::Lost(Some(holder)),
            Ok(Err(e)) => warn!(error = %e, "could not renew the lease; trying again"),
        }
    }
}

/// Lets the controllers finish what they started, but only while no other instance can have
/// taken the Lease (`renewed` is the start of the last successful renewal); then drops them.
async fn drain(mut serving: Pin<&mut impl Future<Output = ()>>, renewed: Instant) {
    let expiry = renewed + take_over_after(Duration::from_secs(LEASE_DURATION));
    let mut timer = pin!(sleep_until(expiry));
    let drained = poll_fn(|cx| {
        if Instant::now() >= expiry || timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        serving.as_mut().poll(cx).map(|()| true)
    })
    .await;
    if !drained {
        warn!("the controllers did not stop before the lease could expire: dropped them");
    }
}
