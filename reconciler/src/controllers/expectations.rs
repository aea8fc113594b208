//! Read-your-writes for control loops: after a controller writes on behalf
//! of an object, it records the etcd revision of that write, and does not
//! act on the object again until the cache it counts from has caught up.
//! Without this, a cache that has not yet seen three freshly created pods
//! would make the next pass create three more.

use std::collections::HashMap;
use std::sync::Mutex;

/// The newest write revision per owner (keyed by uid).
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    pending: Mutex<HashMap<String, i64>>,
}

impl Expectations {
    /// Records that a write for `owner` happened at `revision`.
    pub fn expect(&self, owner: &str, revision: i64) {
        if revision <= 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(owner.to_string()).or_insert(revision);
        *entry = (*entry).max(revision);
    }

    /// Whether a cache at `cache_revision` reflects every recorded write
    /// for `owner`.
    pub fn satisfied(&self, owner: &str, cache_revision: i64) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(owner).is_none_or(|rev| cache_revision >= *rev)
    }

    /// Drops every expectation a cache at `cache_revision` satisfies, so
    /// owners that were deleted do not linger.
    pub fn forget_satisfied(&self, cache_revision: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, rev| *rev > cache_revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_cache_catches_up() {
        let e = Expectations::default();
        assert!(e.satisfied("a", 0));
        e.expect("a", 10);
        e.expect("a", 7);
        assert!(!e.satisfied("a", 9));
        assert!(e.satisfied("a", 10));
        assert!(e.satisfied("b", 0));
        e.forget_satisfied(10);
        assert!(e.satisfied("a", 0));
    }

    #[test]
    fn ignores_writes_without_a_revision() {
        let e = Expectations::default();
        e.expect("a", 0);
        assert!(e.satisfied("a", 0));
    }
}
