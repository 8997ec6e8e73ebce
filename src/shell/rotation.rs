//! The rotation gate of both kinds: with rotation policy VerifyFirst, a new credential in the
//! source replaces one known to work only once the platform accepts it, checked once for all
//! of the resource's targets. Until then the targets keep the working credential.

use crate::domain::api::MendixCredentialStatus;
use crate::domain::credential::Credential;
use crate::domain::rotation::{self, Decision, Held};
use crate::domain::spec::Resolved;
use crate::shell::context::{Context, Error, Id};
use crate::shell::subscribe;
use std::time::SystemTime;

/// What the targets hold after the gate.
pub(crate) struct Gated {
    /// The credential to publish: the new one, or the working one while the new one is held.
    pub(crate) publish: Credential,
    /// The new credential held back (its fingerprint), and why.
    pub(crate) held: Option<(String, Held)>,
    /// Whether the platform accepted the new credential before it replaced a working one.
    pub(crate) checked_first: bool,
}

impl Gated {
    fn open(publish: Credential) -> Self {
        Gated {
            publish,
            held: None,
            checked_first: false,
        }
    }
}

/// Passes `credential`, read from the source of the resource whose status is `previous`,
/// through the gate. `working` finds, given the digest the status records as published, that
/// credential still held by a target of ours (how is the kind's): with none left, there is
/// nothing to protect.
pub(crate) async fn pass(
    ctx: &Context,
    id: &Id,
    resolved: &Resolved,
    previous: &MendixCredentialStatus,
    credential: Credential,
    forced: Option<SystemTime>,
    working: impl AsyncFnOnce(&str) -> Result<Option<Credential>, Error>,
) -> Result<Gated, Error> {
    let protected = resolved.verification.as_ref().zip(rotation::to_protect(
        resolved.rotation,
        resolved.verification.is_some(),
        previous,
        &credential.digest(),
    ));
    let Some((verification, published)) = protected else {
        return Ok(Gated::open(credential));
    };
    let Some(working) = working(published).await? else {
        return Ok(Gated::open(credential));
    };
    let check = subscribe::check_pending(id, verification, &credential, forced, ctx);
    Ok(match rotation::decide(check) {
        Decision::Publish => Gated {
            publish: credential,
            held: None,
            checked_first: true,
        },
        Decision::Hold(held) => Gated {
            held: Some((credential.fingerprint(), held)),
            publish: working,
            checked_first: false,
        },
    })
}
