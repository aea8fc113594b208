//! A Git repository for tests, written through git2 the way a user's
//! `git commit` would: files in a work tree, then a commit on the branch.

use std::path::{Path, PathBuf};

/// A repository with a work tree in a temporary directory.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
}

impl TestRepo {
    /// An empty repository on branch `main`.
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("git init");
        repo.set_head("refs/heads/main").expect("set HEAD");
        TestRepo { dir }
    }

    /// The work tree's path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes (or, with `None`, removes) files, then commits them all.
    /// Returns the new commit id.
    pub fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> String {
        for (rel, content) in files {
            let p = self.dir.path().join(rel);
            match content {
                Some(c) => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).expect("mkdir");
                    }
                    std::fs::write(&p, c).expect("write file");
                }
                None => std::fs::remove_file(&p).expect("remove file"),
            }
        }
        TestRepo::open(self.dir.path()).commit_all(message)
    }

    /// Reads a file of the work tree.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).expect("read file")
    }
}

/// Path of the repository's demo manifests.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests")
}

impl TestRepo {
    /// A handle on an existing work tree (not removed on drop).
    pub fn open(path: &Path) -> OpenRepo {
        OpenRepo {
            path: path.to_path_buf(),
        }
    }
}

/// An existing repository a test commits to.
pub struct OpenRepo {
    path: PathBuf,
}

impl OpenRepo {
    /// Stages every change of the work tree (`git add -A`) and commits it.
    pub fn commit_all(&self, message: &str) -> String {
        let repo = git2::Repository::open(&self.path).expect("open");
        let mut index = repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"], None).expect("update");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("find tree");
        let sig = git2::Signature::now("Test Author", "author@example.com").expect("sig");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
            .to_string()
    }

    /// `git revert SHA`: commits the inverse of that commit on top of
    /// HEAD, with git's message, and checks the result out into the work
    /// tree. Panics on a conflict (tests revert only what reverts cleanly).
    pub fn revert(&self, sha: &str) -> String {
        let repo = git2::Repository::open(&self.path).expect("open");
        let target = repo
            .find_commit(git2::Oid::from_str(sha).expect("a commit id"))
            .expect("the commit to revert");
        let head = repo
            .head()
            .and_then(|h| h.peel_to_commit())
            .expect("HEAD commit");
        let mut index = repo.revert_commit(&target, &head, 0, None).expect("revert");
        assert!(!index.has_conflicts(), "reverting {sha} conflicts");
        let tree = repo
            .find_tree(index.write_tree_to(&repo).expect("tree"))
            .expect("find tree");
        let message = format!(
            "Revert \"{}\"\n\nThis reverts commit {sha}.\n",
            target.summary().unwrap_or_default()
        );
        let sig = git2::Signature::now("Test Author", "author@example.com").expect("sig");
        let id = repo
            .commit(Some("HEAD"), &sig, &sig, &message, &tree, &[&head])
            .expect("commit");
        repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .expect("checkout");
        id.to_string()
    }
}
