//! `metav1.Condition` bookkeeping. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as decided by a reconcile, before it is merged into the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// Sets `verdict` in `conditions`, keeping `lastTransitionTime` unless the status changed.
pub fn set(conditions: &mut Vec<Condition>, verdict: Verdict, generation: Option<i64>, now: Time) {
    let previous = conditions.iter().position(|c| c.type_ == verdict.type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == verdict.status => c.last_transition_time.clone(),
        _ => now,
    };
    let condition = Condition {
        type_: verdict.type_.to_owned(),
        status: verdict.status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn ready(status: &'static str, reason: &'static str) -> Verdict {
        Verdict {
            type_: "Ready",
            status,
            reason,
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            ready("False", "SourceNotFound"),
            Some(1),
            at(10),
        );
        set(
            &mut conditions,
            ready("False", "SourceKeyMissing"),
            Some(2),
            at(20),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].reason, "SourceKeyMissing");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set(&mut conditions, ready("True", "Synced"), Some(2), at(30));
        assert_eq!(conditions[0].last_transition_time, at(30));
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let mut conditions = vec![];
        set(&mut conditions, ready("True", "Synced"), None, at(1));
        set(
            &mut conditions,
            Verdict {
                type_: "TokenValid",
                status: "Unknown",
                reason: "Pending",
                message: String::new(),
            },
            None,
            at(2),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(find(&conditions, "Ready").unwrap().reason, "Synced");
        assert_eq!(find(&conditions, "TokenValid").unwrap().reason, "Pending");
    }
}
