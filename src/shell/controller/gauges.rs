//! The gauges counted from the caches of resources when `/metrics` is scraped.

use crate::domain::api::condition;
use crate::domain::conditions;
use crate::domain::consumers::Consumers;
use crate::domain::ready::ReadyReason;
use crate::shell::metrics::HELD_REASONS;
use crate::shell::{ClusterGuarded, Guarded};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::collections::HashMap;
use std::sync::Arc;

/// What the gauges read of one status.
struct Status<'a> {
    conditions: &'a [Condition],
    consumers: Option<&'a Consumers>,
}

impl<'a> Status<'a> {
    fn of(conditions: &'a [Condition], consumers: Option<&'a Consumers>) -> Self {
        Status {
            conditions,
            consumers,
        }
    }
}

/// The counts, of MendixCredentials and (second) of ClusterMendixCredentials where both are
/// counted apart.
pub(super) struct Counts {
    /// MendixCredentials by TokenValid status.
    pub token_valid: HashMap<&'static str, i64>,
    /// Rotations held back, of both kinds, by Ready reason.
    pub held: HashMap<ReadyReason, i64>,
    pub rotation_due: (i64, i64),
    /// The workloads that use a rejected credential.
    pub affected_workloads: (i64, i64),
}

pub(super) fn count(namespaced: &[Arc<Guarded>], cluster: &[Arc<ClusterGuarded>]) -> Counts {
    let ns: Vec<Status> = namespaced
        .iter()
        .filter_map(|g| g.0.as_ref().ok()?.status.as_ref())
        .map(|s| Status::of(&s.conditions, s.consumers.as_ref()))
        .collect();
    let cl: Vec<Status> = cluster
        .iter()
        .filter_map(|g| g.0.as_ref().ok()?.status.as_ref())
        .map(|s| Status::of(&s.conditions, s.consumers.as_ref()))
        .collect();
    let due = |all: &[Status]| {
        let n = all
            .iter()
            .filter(|s| is(s.conditions, condition::ROTATION_DUE, "True"))
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    };
    let affected = |all: &[Status]| {
        all.iter()
            .filter(|s| is(s.conditions, condition::TOKEN_VALID, "False"))
            .filter_map(|s| s.consumers?.count)
            .map(i64::from)
            .sum()
    };
    let mut held: HashMap<ReadyReason, i64> = HashMap::new();
    for ready in ns
        .iter()
        .chain(&cl)
        .filter_map(|s| conditions::find(s.conditions, condition::READY))
    {
        if let Some(reason) = HELD_REASONS
            .into_iter()
            .find(|r| r.as_str() == ready.reason)
        {
            *held.entry(reason).or_default() += 1;
        }
    }
    let mut token_valid: HashMap<&'static str, i64> = HashMap::new();
    for guard in namespaced {
        let valid = guard
            .0
            .as_ref()
            .ok()
            .and_then(|cr| cr.status.as_ref())
            .and_then(|s| conditions::find(&s.conditions, condition::TOKEN_VALID));
        let status = match valid.map(|c| c.status.as_str()) {
            Some("True") => "True",
            Some("False") => "False",
            _ => "Unknown",
        };
        *token_valid.entry(status).or_default() += 1;
    }
    Counts {
        token_valid,
        held,
        rotation_due: (due(&ns), due(&cl)),
        affected_workloads: (affected(&ns), affected(&cl)),
    }
}

/// Whether condition `type_` has `status`.
fn is(conditions: &[Condition], type_: &str, status: &str) -> bool {
    conditions::find(conditions, type_).is_some_and(|c| c.status == status)
}
