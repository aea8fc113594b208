//! Whether a new head may be applied, before its manifests are read: is it
//! signed by an allowed key (`--verify-commits`), and does it descend from
//! the applied commit, or rewrite history (a force-push, refused with
//! `--forbid-rewrites`)? The answer is a [`Provenance`], recorded in the
//! commit's history record; a refusal in it rejects the commit and the
//! cluster stays on the commit it runs.

use std::sync::Arc;

use commitd_api::records::{Provenance, Refusal};
use git2::Oid;
use tracing::debug;

use crate::git_source::GitSource;
use crate::signatures::{self, AllowedSigners};

/// What the Git source demands of a head before applying it.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// Only heads signed by one of these keys are applied.
    pub allowed_signers: Option<Arc<AllowedSigners>>,
    /// Heads that do not descend from the applied commit are refused
    /// rather than applied with a warning.
    pub forbid_rewrites: bool,
}

/// The object whose signature vouches for a head: the commit itself, or
/// the annotated tag that names it when tags are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// A branch head: the commit's own signature.
    Commit(Oid),
    /// A tag: the tag object's signature.
    Tag(Oid),
}

/// The [`Provenance`] of `head` under `policy`, `applied` being the commit
/// the cluster runs. Errors are the repository's (an object it cannot
/// read), not the commit's: they are retried, never recorded.
pub async fn assess(
    git: &GitSource,
    head: &str,
    applied: Option<&str>,
    policy: &TrustPolicy,
) -> anyhow::Result<Provenance> {
    let mut provenance = Provenance::default();
    if let Some(signers) = policy.allowed_signers.clone() {
        let signed = git.signed_object(head).await?;
        let verdict = git
            .with_repository(move |repo| {
                Ok(match signed {
                    Signed::Commit(oid) => signatures::verify_commit(repo, oid, &signers),
                    Signed::Tag(oid) => signatures::verify_tag(repo, oid, &signers),
                })
            })
            .await?;
        match verdict {
            Ok(signer) => provenance.signer = Some(signer.to_string()),
            Err(rejection) if rejection.is_verdict() => {
                provenance.refusal = Some(Refusal {
                    reason: rejection.reason().to_string(),
                    message: rejection.to_string(),
                });
                return Ok(provenance);
            }
            Err(unreadable) => {
                return Err(anyhow::Error::new(unreadable).context("verifying the head's signature"))
            }
        }
    }
    let Some(applied) = applied.filter(|a| *a != head) else {
        return Ok(provenance);
    };
    // Unknown (a shallow history that cannot be walked that far) is not
    // called a rewrite.
    if git.is_ancestor(applied, head).await? != Some(false) {
        return Ok(provenance);
    }
    debug!(
        applied,
        head, "head does not descend from the applied commit"
    );
    provenance.rewrite_of = Some(applied.to_string());
    if policy.forbid_rewrites {
        provenance.refusal = Some(Refusal {
            reason: "HistoryRewrite".into(),
            message: format!(
                "commit {} does not descend from the applied commit {} (history was rewritten); refused by --forbid-rewrites",
                short(head),
                short(applied)
            ),
        });
    }
    Ok(provenance)
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git_source::GitSourceConfig;
    use git2::{Repository, Signature, Time};

    fn source(dir: &std::path::Path) -> GitSource {
        GitSource::new(GitSourceConfig::local(dir))
    }

    fn commit(repo: &Repository, parents: &[Oid], message: &str) -> Oid {
        let sig = Signature::new("Test", "test@example.com", &Time::new(1_700_000_000, 0))
            .expect("signature");
        let tree_id = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .expect("empty tree");
        let tree = repo.find_tree(tree_id).expect("tree");
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| repo.find_commit(*p).expect("parent"))
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, message, &tree, &refs)
            .expect("commit")
    }

    #[tokio::test]
    async fn descendants_pass_and_rewrites_are_recorded_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let git = source(dir.path());
        let root = commit(&repo, &[], "root");
        let applied = commit(&repo, &[root], "applied");
        let next = commit(&repo, &[applied], "next");
        let rewritten = commit(&repo, &[root], "amended");
        let policy = TrustPolicy::default();
        let applied_sha = applied.to_string();

        let p = assess(&git, &next.to_string(), Some(&applied_sha), &policy)
            .await
            .expect("assess");
        assert!(p.is_empty(), "a descendant is plain: {p:?}");
        let p = assess(&git, &applied.to_string(), Some(&applied_sha), &policy)
            .await
            .expect("assess");
        assert!(p.is_empty(), "the applied commit itself: {p:?}");
        let p = assess(&git, &next.to_string(), None, &policy)
            .await
            .expect("assess");
        assert!(p.is_empty(), "nothing applied yet: {p:?}");

        let p = assess(&git, &rewritten.to_string(), Some(&applied_sha), &policy)
            .await
            .expect("assess");
        assert_eq!(p.rewrite_of.as_deref(), Some(applied_sha.as_str()));
        assert!(p.refusal.is_none(), "rewrites are allowed by default");

        let strict = TrustPolicy {
            forbid_rewrites: true,
            ..TrustPolicy::default()
        };
        let p = assess(&git, &rewritten.to_string(), Some(&applied_sha), &strict)
            .await
            .expect("assess");
        let refusal = p.refusal.expect("refused");
        assert_eq!(refusal.reason, "HistoryRewrite");
        assert!(
            refusal
                .message
                .contains(&format!("from the applied commit {}", &applied_sha[..7])),
            "{}",
            refusal.message
        );
        // A revert is a descendant, not a rewrite.
        let revert = commit(&repo, &[next], "Revert \"next\"");
        let p = assess(&git, &revert.to_string(), Some(&applied_sha), &strict)
            .await
            .expect("assess");
        assert!(p.is_empty(), "{p:?}");
    }

    #[tokio::test]
    async fn an_applied_commit_missing_from_a_complete_history_is_a_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let git = source(dir.path());
        let head = commit(&repo, &[], "root");
        let strict = TrustPolicy {
            forbid_rewrites: true,
            ..TrustPolicy::default()
        };
        let elsewhere = "0123456789abcdef0123456789abcdef01234567";
        let p = assess(&git, &head.to_string(), Some(elsewhere), &strict)
            .await
            .expect("assess");
        // The branch's whole history is there and the applied commit is
        // not in it (it was force-pushed away and collected).
        assert_eq!(p.rewrite_of.as_deref(), Some(elsewhere), "{p:?}");
    }

    #[tokio::test]
    async fn unsigned_heads_are_refused_when_signatures_are_required() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let git = source(dir.path());
        let head = commit(&repo, &[], "root");
        let signers = AllowedSigners::parse("", "allowed_signers").expect("empty list");
        let policy = TrustPolicy {
            allowed_signers: Some(Arc::new(signers)),
            forbid_rewrites: false,
        };
        let p = assess(&git, &head.to_string(), None, &policy)
            .await
            .expect("assess");
        let refusal = p.refusal.expect("refused");
        assert_eq!(refusal.reason, "Unsigned");
        assert_eq!(
            refusal.message,
            format!("commit {} is not signed", &head.to_string()[..7])
        );
    }
}
