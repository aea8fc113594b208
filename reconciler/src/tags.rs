//! Following tags instead of a branch (`--ref tag:v*`): the desired state
//! is the newest release, by semantic version, among the tags a glob
//! matches. Releases are then what a reviewer approves by tagging, and an
//! annotated tag's signature can vouch for it.

use anyhow::Context;
use git2::{Oid, Repository};
use semver::Version;

/// The tag the source follows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHead {
    /// `refs/tags/v1.2.0`.
    pub refname: String,
    /// The commit it names.
    pub commit: Oid,
    /// The tag object, for an annotated tag (whose signature can be
    /// verified); `None` for a lightweight one.
    pub tag: Option<Oid>,
}

/// The version a tag name carries: what follows its non-digit prefix
/// (`v1.2.0`, `release-1.2.0`), when that is a semantic version.
pub fn version_of(name: &str) -> Option<Version> {
    let at = name.find(|c: char| c.is_ascii_digit())?;
    Version::parse(&name[at..]).ok()
}

/// The newest tag matching `pattern` (a glob, as `git tag -l` takes it)
/// by semantic version; tags that carry no version are passed over.
pub fn newest(repo: &Repository, pattern: &str) -> anyhow::Result<Option<TagHead>> {
    let names = repo
        .tag_names(Some(pattern))
        .with_context(|| format!("listing the tags matching {pattern}"))?;
    let newest = names
        .iter()
        .flatten()
        .filter_map(|name| version_of(name).map(|v| (v, name)))
        .max_by(|(a, _), (b, _)| a.cmp(b));
    let Some((_, name)) = newest else {
        return Ok(None);
    };
    let refname = format!("refs/tags/{name}");
    let reference = repo
        .find_reference(&refname)
        .with_context(|| format!("reading {refname}"))?;
    let target = reference
        .target()
        .with_context(|| format!("{refname} is a symbolic reference"))?;
    let tag = repo.find_tag(target).ok().map(|t| t.id());
    let commit = reference
        .peel_to_commit()
        .with_context(|| format!("{refname} does not name a commit"))?
        .id();
    Ok(Some(TagHead {
        refname,
        commit,
        tag,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Signature, Time};

    fn commit(repo: &Repository, message: &str) -> Oid {
        let sig = Signature::new("Test", "test@example.com", &Time::new(1_700_000_000, 0))
            .expect("signature");
        let tree_id = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .expect("empty tree");
        let tree = repo.find_tree(tree_id).expect("tree");
        repo.commit(None, &sig, &sig, message, &tree, &[])
            .expect("commit")
    }

    #[test]
    fn versions_follow_their_prefix() {
        assert_eq!(version_of("v1.2.3"), Version::parse("1.2.3").ok());
        assert_eq!(
            version_of("release-2.0.0-rc.1"),
            Version::parse("2.0.0-rc.1").ok()
        );
        assert_eq!(version_of("latest"), None);
        assert_eq!(version_of("v1.2"), None, "not a full semantic version");
    }

    #[test]
    fn the_newest_version_wins_not_the_newest_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let sig = Signature::new("Test", "test@example.com", &Time::new(1_700_000_000, 0))
            .expect("signature");
        let (a, b, c, d) = (
            commit(&repo, "a"),
            commit(&repo, "b"),
            commit(&repo, "c"),
            commit(&repo, "d"),
        );
        let object = |oid| repo.find_object(oid, None).expect("object");
        repo.tag_lightweight("v1.9.0", &object(a), false)
            .expect("tag");
        let annotated = repo
            .tag("v1.10.0", &object(b), &sig, "Release 1.10", false)
            .expect("tag");
        repo.tag_lightweight("v2.0.0-rc.1", &object(c), false)
            .expect("tag");
        repo.tag_lightweight("other-9.0.0", &object(d), false)
            .expect("tag");
        repo.tag_lightweight("vnext", &object(d), false)
            .expect("tag");

        // 2.0.0-rc.1 is newer than 1.10.0, which is newer than 1.9.0.
        let head = newest(&repo, "v*").expect("tags").expect("a tag");
        assert_eq!(head.refname, "refs/tags/v2.0.0-rc.1");
        assert_eq!((head.commit, head.tag), (c, None));
        let head = newest(&repo, "v1.*").expect("tags").expect("a tag");
        assert_eq!(head.refname, "refs/tags/v1.10.0");
        assert_eq!((head.commit, head.tag), (b, Some(annotated)));
        assert_eq!(newest(&repo, "v3.*").expect("tags"), None);
    }
}
