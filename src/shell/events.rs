//! A bound on the Events of one object: per object (uid) and reason, a burst of
//! [`BURST`] and then one every [`EVERY`], as client-go's spam filter bounds the Events of one
//! object. Without it, whoever can make a resource change state again and again (a tenant
//! rewriting its source, deleting its copy of a cluster credential) makes as many Events.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// Events of one reason an object may have at once.
pub const BURST: u32 = 10;
/// How often, after the burst, one more is allowed.
pub const EVERY: Duration = Duration::from_secs(30);

/// The keys kept before the ones full again are dropped.
const KEYS: usize = 10_000;

pub struct EventLimiter(DefaultKeyedRateLimiter<(String, &'static str)>);

impl Default for EventLimiter {
    fn default() -> Self {
        let quota = Quota::with_period(EVERY)
            .expect("a period above zero")
            .allow_burst(NonZeroU32::new(BURST).expect("above zero"));
        EventLimiter(RateLimiter::keyed(quota))
    }
}

impl EventLimiter {
    /// Whether an Event of `reason` on the object `uid` may be published now (and counts it).
    pub fn allow(&self, uid: &str, reason: &'static str) -> bool {
        if self.0.len() > KEYS {
            self.0.retain_recent();
        }
        self.0.check_key(&(uid.to_owned(), reason)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_per_object_and_reason() {
        let limiter = EventLimiter::default();
        let allowed = (0..100).filter(|_| limiter.allow("a", "Synced")).count();
        assert_eq!(allowed, BURST as usize);
        assert!(limiter.allow("a", "Rotated"), "another reason has its own");
        assert!(limiter.allow("b", "Synced"), "another object has its own");
    }
}
