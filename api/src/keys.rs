//! The etcd key layout. Every key commitd reads or writes is built here, so
//! the layout is documented and changed in one place.
//!
//! ```text
//! /commitd/objects/<group>/<Kind>/<namespace>/<name>   namespaced objects (JSON)
//! /commitd/objects/<group>/<Kind>/<name>               cluster-scoped objects
//! /commitd/leases/nodes/<node>                         node heartbeats, on a lease
//! /commitd/source/applied                              the commit now live (JSON)
//! /commitd/source/rejected                             the newest rejected commit (JSON)
//! /commitd/source/seq                                  the newest history sequence number
//! /commitd/source/applying                             the apply lock (JSON, on a lease)
//! /commitd/history/<seq, 20 digits>                    one record per commit seen
//! /commitd/tombstones/<group>/<Kind>/<namespace>/<name> Git-owned objects deleted on purpose (JSON)
//! /commitd/leader/<component>                          reserved for leader election (not used yet)
//! ```
//! The core group is spelled `core` in keys so that every key has the same
//! number of segments.
//!
//! The apply lock exists only while a commit too large for one etcd
//! transaction is written in chunks: from before the first chunk until the
//! transaction that switches `applied` over. Control loops treat its
//! presence as "desired state is half-written" and wait; it lives on the
//! applying reconciler's lease, so a reconciler that dies mid-apply leaves
//! no lock behind once the lease expires.

use crate::kinds::Kind;

/// Root of everything commitd keeps in etcd.
pub const ROOT: &str = "/commitd/";
/// The record of the commit now applied.
pub const APPLIED: &str = "/commitd/source/applied";
/// The record of the newest commit that was rejected.
pub const REJECTED: &str = "/commitd/source/rejected";
/// The newest history sequence number; every history write is guarded by
/// it, so records are numbered without gaps or repeats.
pub const HISTORY_SEQ: &str = "/commitd/source/seq";
/// The apply lock: present while a commit is written in several
/// transactions (see the module docs).
pub const APPLYING: &str = "/commitd/source/applying";
/// Prefix of the per-commit history records.
pub const HISTORY_PREFIX: &str = "/commitd/history/";
/// Prefix of the tombstones: records of Git-owned objects that the
/// cluster deleted on purpose (a finished Job whose `ttlSecondsAfterFinished`
/// expired), so that drift correction does not put them back.
pub const TOMBSTONE_PREFIX: &str = "/commitd/tombstones/";

/// Prefix of node heartbeat keys.
pub const NODE_LEASE_PREFIX: &str = "/commitd/leases/nodes/";

/// The prefix under which all objects of a kind live.
pub fn kind_prefix(kind: Kind) -> String {
    let group = match kind.group() {
        "" => "core",
        g => g,
    };
    format!("/commitd/objects/{group}/{}/", kind.name())
}

/// The prefix of the objects of a kind in one namespace (or all of them).
pub fn namespace_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if kind.namespaced() => format!("{}{ns}/", kind_prefix(kind)),
        _ => kind_prefix(kind),
    }
}

/// The key of one object.
pub fn object_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if kind.namespaced() => format!("{}{ns}/{name}", kind_prefix(kind)),
        _ => format!("{}{name}", kind_prefix(kind)),
    }
}

/// The tombstone key of an object (same layout as [`object_key`] under
/// [`TOMBSTONE_PREFIX`]).
pub fn tombstone_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    let object = object_key(kind, namespace, name);
    let rest = object.strip_prefix("/commitd/objects/").unwrap_or(&object);
    format!("{TOMBSTONE_PREFIX}{rest}")
}

/// The key of one history record; zero-padded so keys sort by sequence.
pub fn history_key(seq: u64) -> String {
    format!("{HISTORY_PREFIX}{seq:020}")
}

/// The heartbeat key of a node.
pub fn node_lease_key(node: &str) -> String {
    format!("{NODE_LEASE_PREFIX}{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(
            object_key(Kind::Deployment, Some("demo"), "web"),
            "/commitd/objects/apps/Deployment/demo/web"
        );
        assert_eq!(
            object_key(Kind::Pod, Some("default"), "p"),
            "/commitd/objects/core/Pod/default/p"
        );
        assert_eq!(
            object_key(Kind::Namespace, None, "demo"),
            "/commitd/objects/core/Namespace/demo"
        );
        assert_eq!(
            object_key(Kind::Node, Some("ignored"), "n1"),
            "/commitd/objects/core/Node/n1"
        );
        assert_eq!(
            tombstone_key(Kind::Job, Some("demo"), "pi"),
            "/commitd/tombstones/batch/Job/demo/pi"
        );
        assert_eq!(history_key(42), "/commitd/history/00000000000000000042");
    }
}
