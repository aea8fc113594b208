//! Records about commits that the reconciler writes and the read-only
//! commands show: the commit now applied, and one history entry per commit
//! seen (applied, rejected, or a drift correction).

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::health::CommitHealth;

/// Who made a commit and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitInfo {
    /// Full hex object id.
    pub sha: String,
    pub author: String,
    pub email: String,
    /// Commit time, RFC 3339.
    pub time: String,
    /// The first line of the message.
    pub summary: String,
    pub message: String,
}

impl CommitInfo {
    /// The 7-character abbreviation people read.
    pub fn short_sha(&self) -> &str {
        self.sha.get(..7).unwrap_or(&self.sha)
    }
}

/// The commit now live, at `/commitd/source/applied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedCommit {
    pub commit: CommitInfo,
    /// Sequence number of its history record.
    pub seq: u64,
    /// When it was applied, RFC 3339.
    pub applied_at: String,
    /// How many objects it declares.
    pub objects: usize,
    /// Set while its sync waves are applied one at a time: the last wave
    /// written. Objects of later waves still hold what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_wave: Option<i64>,
}

/// What happened to a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every object was written.
    Applied,
    /// Validation failed; nothing changed.
    Rejected,
    /// Objects changed outside Git were put back.
    DriftCorrected,
}

/// Counts of what a commit changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
}

/// One entry of `/commitd/history/<seq>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRecord {
    pub seq: u64,
    pub commit: CommitInfo,
    pub outcome: Outcome,
    /// When the reconciler recorded it, RFC 3339.
    pub recorded_at: String,
    #[serde(default)]
    pub changes: Changes,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Diagnostic>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
    /// Free text for events such as drift corrections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// How the commit's objects are doing, kept current by the health
    /// controller while the commit is the applied one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CommitHealth>,
    /// Who signed the commit and whether it rewrote history.
    #[serde(default, skip_serializing_if = "Provenance::is_empty")]
    pub provenance: Provenance,
}

/// What the Git source learned about a commit before its manifests were
/// looked at: whose signature it carries, whether it rewrites the history
/// of the applied commit (a force-push), and whether that refuses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// The verified signer (`alice@example.com (SHA256:…)`), when signatures
    /// are verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The applied commit this one does not descend from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_of: Option<String>,
    /// Why the commit may not be applied, whatever its manifests say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

impl Provenance {
    /// Nothing known: signatures not verified, no rewrite.
    pub fn is_empty(&self) -> bool {
        self == &Provenance::default()
    }
}

/// Why a commit was refused before its manifests were read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// A stable word for tables and scripts: `Unsigned`, `UnknownKey`,
    /// `BadSignature`, `HistoryRewrite`, …
    pub reason: String,
    /// The sentence a person reads.
    pub message: String,
}

/// What is left of a Git-owned object the cluster deleted on purpose (a
/// finished Job whose `ttlSecondsAfterFinished` expired), at
/// [`crate::keys::tombstone_key`]. While the manifest in Git still says
/// what `view` says, the object is not created again: a Job declared in
/// Git runs once per distinct manifest, not once per commit or per drift
/// check. A changed manifest (or a renamed Job) runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    /// The deleted object's uid.
    pub uid: String,
    /// The commit it was last applied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Why it was deleted (`TTLAfterFinished`).
    pub reason: String,
    /// When, RFC 3339.
    pub deleted_at: String,
    /// The object as Git declared it, without status, server-assigned
    /// metadata or provenance annotations: what a manifest is compared with.
    pub view: serde_json::Value,
}
