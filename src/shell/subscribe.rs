//! What the sync loop tells the verification loop: which credential and probe a resource
//! uses, the verdict its status already holds (after a restart), and a forced check the
//! `verify-requested-at` annotation asks for. Never waits for the platform.

use crate::domain::api::{ANNOTATION_VERIFY_REQUESTED_AT, MendixCredentialStatus, condition};
use crate::domain::classify::{Reason, TokenValid};
use crate::domain::conditions;
use crate::domain::credential::{self, Credential};
use crate::domain::plan;
use crate::domain::rotation;
use crate::domain::spec::{self, Resolved, VerificationPlan};
use crate::shell::context::{Context, Id, api_time};
use crate::shell::verifier::{Known, Slot, Subscription, View};
use crate::shell::watch::annotation_set_at;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::time::SystemTime;

/// Tells the verification loop which credential and probe this resource uses (the published
/// one, and whether a new one still waits for its check); returns what the plan needs of its
/// answer. The same for both kinds: `generation` is the resource's, `previous` the credential
/// half of its status.
pub(crate) fn subscribe(
    generation: Option<i64>,
    id: &Id,
    resolved: Option<&Resolved>,
    (credential, holding): (Option<&Credential>, bool),
    forced: Option<SystemTime>,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> plan::Verification {
    let verification =
        subscribe_published(generation, id, resolved, credential, forced, previous, ctx);
    // After the published subscription: a credential just published keeps the answer its
    // check as a pending one got.
    if !holding {
        ctx.verifier.unsubscribe_slot(&id.uid, Slot::Pending);
    }
    verification
}

fn subscribe_published(
    generation: Option<i64>,
    id: &Id,
    resolved: Option<&Resolved>,
    credential: Option<&Credential>,
    forced: Option<SystemTime>,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> plan::Verification {
    let Some((resolved, credential)) = resolved.zip(credential) else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Waiting;
    };
    let Some(verification) = &resolved.verification else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Disabled;
    };
    let known = known_verdict(generation, previous, credential);
    let latest = ctx.verifier.subscribe(Subscription {
        known,
        ..subscription(id, Slot::Published, verification, credential, forced, ctx)
    });
    verification_of(latest)
}

/// What the plan needs of the loop's view of a credential.
fn verification_of(latest: View) -> plan::Verification {
    match latest {
        View::Scheduled => plan::Verification::Waiting,
        View::Queued { since } => plan::Verification::Queued {
            since: api_time(timestamp(since)),
        },
        View::Answered(latest) => plan::Verification::Answered(plan::Answer {
            outcome: latest.outcome,
            answered_at: api_time(timestamp(latest.answered_at)),
            // Rounded up: a status never shows a check as due before it is.
            next: Some(api_time(
                timestamp(latest.next) + jiff::SignedDuration::from_nanos(999_999_999),
            )),
            serves_request: latest.serves_request,
        }),
    }
}

/// Asks the verification loop about a new credential before it is published; shares the
/// loop's budget, schedule and dedupe with every other check.
pub(crate) fn check_pending(
    id: &Id,
    verification: &VerificationPlan,
    credential: &Credential,
    forced: Option<SystemTime>,
    ctx: &Context,
) -> rotation::Check {
    let view = ctx.verifier.subscribe(subscription(
        id,
        Slot::Pending,
        verification,
        credential,
        forced,
        ctx,
    ));
    pending_check(view)
}

/// What the verification loop knows of a credential waiting to be published.
fn pending_check(view: View) -> rotation::Check {
    match view {
        View::Answered(latest) => rotation::Check::Answered(latest.outcome),
        View::Queued { since } => rotation::Check::Queued {
            since: api_time(timestamp(since)),
        },
        // Not reached: with nothing known, a new check is due at once.
        View::Scheduled => rotation::Check::Queued {
            since: api_time(jiff::Timestamp::now()),
        },
    }
}

/// A subscription of this resource's `slot` to `credential`, with nothing known of it.
fn subscription<'a>(
    id: &'a Id,
    slot: Slot,
    verification: &'a VerificationPlan,
    credential: &'a Credential,
    forced: Option<SystemTime>,
    ctx: &Context,
) -> Subscription<'a> {
    Subscription {
        scope: id.scope,
        uid: &id.uid,
        slot,
        namespace: &id.namespace,
        name: &id.name,
        credential,
        probe: &verification.probe,
        interval: ctx.settings.test_interval.unwrap_or(verification.interval),
        forced,
        known: None,
    }
}

/// What the status says of the checks of this credential at this generation, which a
/// restarted instance continues from instead of asking again.
fn known_verdict(
    generation: Option<i64>,
    previous: &MendixCredentialStatus,
    credential: &Credential,
) -> Option<Known> {
    let valid = conditions::find(&previous.conditions, condition::TOKEN_VALID)?;
    let same = previous
        .published_digest()
        .is_some_and(|d| credential::is_recorded(d, &credential.digest()))
        && valid.observed_generation == generation
        && valid.reason != Reason::Pending.as_str();
    let verdict = Reason::OUTCOMES
        .into_iter()
        .find(|r| r.as_str() == valid.reason && r.status() != TokenValid::Unknown)
        .zip(previous.last_verified_time.as_ref())
        .map(|(reason, at)| (reason, SystemTime::from(at.0)));
    let next = previous
        .next_verification_time
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    same.then_some(Known { verdict, next })
}

fn timestamp(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or_default()
}

/// The forced check the `verify-requested-at` annotation asks for and no check has served yet:
/// its value, and when this instance first saw it.
pub(crate) fn verify_request(
    meta: &ObjectMeta,
    uid: &str,
    last_verified: Option<&Time>,
    ctx: &Context,
) -> Option<(String, SystemTime)> {
    let value = meta
        .annotations
        .as_ref()?
        .get(ANNOTATION_VERIFY_REQUESTED_AT)?;
    // A value too long to honour forces nothing (the status says so).
    spec::check_verify_request(Some(value)).ok()?;
    // First seen by this instance: served if it was set (as `managedFields` records) before the
    // last definitive check.
    let served_before = || match (
        annotation_set_at(meta, ANNOTATION_VERIFY_REQUESTED_AT),
        last_verified,
    ) {
        (Some(asked), Some(done)) => asked < done.0,
        _ => false,
    };
    ctx.tracker
        .verify_request(uid, value, served_before)
        .map(|at| (value.clone(), at))
}
