//! What a head must be to be applied, against a real etcd and a real
//! reconciler: with `--verify-commits`, only commits signed (git's
//! `gpg.format ssh`) by an allowed key are applied, unsigned ones and
//! those of unknown keys are rejected and recorded while the cluster stays
//! as it was; a force-push is applied with a warning, or refused with
//! `--forbid-rewrites`; a committed age-encrypted Secret is applied only
//! by a reconciler that has the identity.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_api::encrypted_secrets;
use commitd_api::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use commitd_api::records::{HistoryRecord, Outcome};
use commitd_api::Store;
use commitd_reconciler::apply::ApplyOptions;
use commitd_reconciler::git_source::GitSourceConfig;
use commitd_reconciler::signatures::AllowedSigners;
use commitd_reconciler::trust::TrustPolicy;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A work tree driven by the `git` command line, as a user signs commits.
struct SigningRepo {
    dir: tempfile::TempDir,
}

impl SigningRepo {
    fn new() -> SigningRepo {
        let repo = SigningRepo {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(repo.work()).expect("mkdir");
        repo.git(&["init", "-q", "-b", "main", "."]);
        repo
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "Test Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.com")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes an ed25519 key pair; returns the private key's path and the
    /// public key line.
    fn key(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
        (path, public.trim().to_string())
    }

    /// Tags `sha` as `name`: an annotated tag signed with `key`, or a
    /// lightweight one.
    fn tag(&self, name: &str, sha: &str, key: Option<&Path>) {
        match key {
            Some(key) => {
                let signing_key = format!("user.signingkey={}", key.display());
                self.git(&[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing_key,
                    "tag",
                    "-s",
                    "-m",
                    name,
                    name,
                    sha,
                ]);
            }
            None => {
                self.git(&["tag", name, sha]);
            }
        }
    }

    /// A force-push: commits on top of `base` and moves `main` straight
    /// there from wherever it was.
    fn rewrite(&self, base: &str, file: &str, text: &str, message: &str, key: &Path) -> String {
        self.git(&["checkout", "-q", "--detach", base]);
        let sha = self.commit(file, text, message, Some(key));
        self.git(&["update-ref", "refs/heads/main", &sha]);
        self.git(&["checkout", "-q", "main"]);
        sha
    }

    /// Writes a file and commits it, signed with `key` if given.
    fn commit(&self, file: &str, text: &str, message: &str, key: Option<&Path>) -> String {
        std::fs::write(self.work().join(file), text).expect("write");
        self.git(&["add", "-A"]);
        match key {
            Some(key) => {
                let signing_key = format!("user.signingkey={}", key.display());
                self.git(&[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing_key,
                    "commit",
                    "-q",
                    "-S",
                    "-m",
                    message,
                ]);
            }
            None => {
                self.git(&["commit", "-q", "-m", message]);
            }
        }
        self.git(&["rev-parse", "HEAD"])
    }
}

fn config_map(color: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  color: {color}\n"
    )
}

struct Harness {
    _data: tempfile::TempDir,
    etcd: Option<Etcd>,
    store: Store,
}

impl Harness {
    async fn start() -> Harness {
        support::etcd::init_tracing();
        let data = tempfile::Builder::new()
            .prefix("cdetcd")
            .tempdir()
            .expect("tempdir");
        let etcd = Etcd::start(EtcdOptions {
            data_dir: data.path().join("etcd"),
            client_port: None,
            extra_args: Vec::new(),
        })
        .await
        .expect("etcd starts");
        let store = Store::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect");
        Harness {
            _data: data,
            etcd: Some(etcd),
            store,
        }
    }

    /// A reconciler following `main` of `repo` with `trust` and `options`.
    fn follow(
        &self,
        repo: &Path,
        trust: TrustPolicy,
        options: ApplyOptions,
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        self.follow_source(
            GitSourceConfig {
                repo: repo.to_path_buf(),
                branch: Some("main".into()),
                poll_interval: Duration::from_secs(30),
                trust,
                ..GitSourceConfig::default()
            },
            options,
        )
    }

    fn follow_source(
        &self,
        source: GitSourceConfig,
        options: ApplyOptions,
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(commitd_reconciler::follow_with(
            self.store.clone(),
            source,
            options,
            cancel.clone(),
        ));
        (cancel, task)
    }

    async fn record(&self, sha: &str) -> HistoryRecord {
        support::history::wait_for_record(&self.store, sha, WAIT).await
    }

    async fn color(&self) -> Option<String> {
        let cm: Option<ConfigMap> = self
            .store
            .get(Some("default"), "settings")
            .await
            .expect("read the ConfigMap");
        cm.and_then(|c| c.data?.get("color").cloned())
    }

    async fn stop(mut self) {
        if let Some(e) = self.etcd.take() {
            e.stop().await.expect("etcd stops");
        }
    }
}

async fn stop(follower: (CancellationToken, JoinHandle<anyhow::Result<()>>)) {
    follower.0.cancel();
    follower
        .1
        .await
        .expect("the reconciler task")
        .expect("the reconciler stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_allowed_keys_apply_and_rewrites_are_recorded() {
    let h = Harness::start().await;
    let repo = SigningRepo::new();
    let (ci_key, ci_public) = repo.key("ci");
    let (stranger_key, _) = repo.key("stranger");
    let signers_file = repo.dir.path().join("allowed_signers");
    std::fs::write(&signers_file, format!("ci@example.com {ci_public}\n")).expect("write");
    let signers = Arc::new(AllowedSigners::load(&signers_file).expect("allowed signers"));
    let trust = TrustPolicy {
        allowed_signers: Some(signers.clone()),
        forbid_rewrites: false,
    };

    // Signed by an allowed key: applied, and the signer recorded.
    let c1 = repo.commit("settings.yaml", &config_map("blue"), "Blue", Some(&ci_key));
    let follower = h.follow(&repo.work(), trust.clone(), ApplyOptions::default());
    let r1 = h.record(&c1).await;
    assert_eq!(r1.outcome, Outcome::Applied, "{r1:?}");
    let signer = r1.provenance.signer.clone().unwrap_or_default();
    assert!(signer.starts_with("ci@example.com (SHA256:"), "{signer}");
    assert_eq!(h.color().await.as_deref(), Some("blue"));

    // Unsigned, and signed by an unknown key: rejected and recorded with
    // the reason; the cluster keeps the verified commit.
    let c2 = repo.commit("settings.yaml", &config_map("red"), "Red", None);
    let r2 = h.record(&c2).await;
    assert_eq!(r2.outcome, Outcome::Rejected, "{r2:?}");
    let refusal = r2.provenance.refusal.clone().expect("a refusal");
    assert_eq!(refusal.reason, "Unsigned");
    assert_eq!(
        refusal.message,
        format!("commit {} is not signed", &c2[..7])
    );
    let c3 = repo.commit(
        "settings.yaml",
        &config_map("green"),
        "Green",
        Some(&stranger_key),
    );
    let r3 = h.record(&c3).await;
    assert_eq!(r3.outcome, Outcome::Rejected, "{r3:?}");
    let refusal = r3.provenance.refusal.clone().expect("a refusal");
    assert_eq!(refusal.reason, "UnknownKey");
    assert!(
        refusal.message.contains("not in the allowed signers"),
        "{}",
        refusal.message
    );
    assert_eq!(h.color().await.as_deref(), Some("blue"));

    // An allowed signature again: applied.
    let c4 = repo.commit(
        "settings.yaml",
        &config_map("yellow"),
        "Yellow",
        Some(&ci_key),
    );
    assert_eq!(h.record(&c4).await.outcome, Outcome::Applied);
    assert_eq!(h.color().await.as_deref(), Some("yellow"));

    // A force-push: the branch is reset behind the applied commit and
    // moves on elsewhere. Applied by default, recorded as a rewrite.
    let c5 = repo.rewrite(
        &c1,
        "settings.yaml",
        &config_map("purple"),
        "Purple",
        &ci_key,
    );
    let r5 = h.record(&c5).await;
    assert_eq!(r5.outcome, Outcome::Applied, "{r5:?}");
    assert_eq!(r5.provenance.rewrite_of.as_deref(), Some(c4.as_str()));
    assert_eq!(h.color().await.as_deref(), Some("purple"));
    stop(follower).await;

    // With --forbid-rewrites, the next force-push is refused.
    let strict = TrustPolicy {
        forbid_rewrites: true,
        ..trust
    };
    let follower = h.follow(&repo.work(), strict, ApplyOptions::default());
    let c6 = repo.rewrite(
        &c1,
        "settings.yaml",
        &config_map("orange"),
        "Orange",
        &ci_key,
    );
    let r6 = h.record(&c6).await;
    assert_eq!(r6.outcome, Outcome::Rejected, "{r6:?}");
    let refusal = r6.provenance.refusal.clone().expect("a refusal");
    assert_eq!(refusal.reason, "HistoryRewrite");
    assert_eq!(r6.provenance.rewrite_of.as_deref(), Some(c5.as_str()));
    assert_eq!(h.color().await.as_deref(), Some("purple"));
    // A commit on top of the applied one is applied again.
    let c7 = repo.rewrite(&c5, "settings.yaml", &config_map("white"), "White", &ci_key);
    assert_eq!(h.record(&c7).await.outcome, Outcome::Applied);
    assert_eq!(h.color().await.as_deref(), Some("white"));
    stop(follower).await;
    h.stop().await;
}

/// Following release tags: the newest version among `v*` is applied, if
/// its annotated tag is signed by an allowed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_signed_release_tag_is_applied() {
    let h = Harness::start().await;
    let repo = SigningRepo::new();
    let (ci_key, ci_public) = repo.key("ci");
    let signers_file = repo.dir.path().join("allowed_signers");
    std::fs::write(&signers_file, format!("ci@example.com {ci_public}\n")).expect("write");
    let trust = TrustPolicy {
        allowed_signers: Some(Arc::new(
            AllowedSigners::load(&signers_file).expect("allowed signers"),
        )),
        forbid_rewrites: false,
    };
    let c1 = repo.commit("settings.yaml", &config_map("blue"), "Blue", None);
    repo.tag("v1.9.0", &c1, Some(&ci_key));
    // Committed but not released: not applied.
    let c2 = repo.commit("settings.yaml", &config_map("red"), "Red", None);
    let follower = h.follow_source(
        GitSourceConfig {
            repo: repo.work(),
            tags: Some("v*".into()),
            poll_interval: Duration::from_secs(30),
            trust,
            ..GitSourceConfig::default()
        },
        ApplyOptions::default(),
    );
    let r1 = h.record(&c1).await;
    assert_eq!(r1.outcome, Outcome::Applied, "{r1:?}");
    assert!(
        r1.provenance
            .signer
            .as_deref()
            .is_some_and(|s| s.starts_with("ci@example.com")),
        "{r1:?}"
    );
    assert_eq!(h.color().await.as_deref(), Some("blue"));

    // A lightweight tag names an unsigned commit: refused.
    repo.tag("v1.10.0", &c2, None);
    let r2 = h.record(&c2).await;
    assert_eq!(r2.outcome, Outcome::Rejected, "{r2:?}");
    assert_eq!(
        r2.provenance.refusal.map(|r| r.reason).as_deref(),
        Some("Unsigned")
    );
    assert_eq!(h.color().await.as_deref(), Some("blue"));

    // A signed release with a higher version (not a higher name) applies.
    let c3 = repo.commit("settings.yaml", &config_map("green"), "Green", None);
    repo.tag("v1.11.0", &c3, Some(&ci_key));
    assert_eq!(h.record(&c3).await.outcome, Outcome::Applied);
    assert_eq!(h.color().await.as_deref(), Some("green"));
    stop(follower).await;
    h.stop().await;
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: default\nstringData:\n  password: s3cret\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_secret_is_applied_only_with_its_identity() {
    let h = Harness::start().await;
    let repo = SigningRepo::new();
    let generated = encrypted_secrets::generate_identity();
    let recipient =
        encrypted_secrets::parse_recipient(&generated.recipient).expect("recipient parses");
    let encrypted =
        encrypted_secrets::encrypt_text(SECRET, "db.yaml", &[recipient]).expect("encrypts");
    assert!(!encrypted.contains("s3cret"), "{encrypted}");
    let sha = repo.commit("db.yaml", &encrypted, "An encrypted Secret", None);

    // No identity: rejected, naming the file and line; nothing written.
    let follower = h.follow(
        &repo.work(),
        TrustPolicy::default(),
        ApplyOptions::default(),
    );
    let r = h.record(&sha).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    let error = r.errors.first().expect("an error");
    assert_eq!(error.file, "db.yaml");
    assert!(error.message.contains("--age-identity"), "{error}");
    let none: Option<Secret> = h.store.get(Some("default"), "db").await.expect("read");
    assert!(none.is_none());
    stop(follower).await;

    // Restarted with the identity: the same head is applied, decrypted.
    let key_file = repo.dir.path().join("age.key");
    std::fs::write(&key_file, &generated.file_text).expect("write identity");
    let identities = encrypted_secrets::load_identities(&key_file).expect("identity loads");
    let options = ApplyOptions {
        age_identities: Some(Arc::new(identities)),
        ..ApplyOptions::default()
    };
    let follower = h.follow(&repo.work(), TrustPolicy::default(), options);
    let applied = support::wait::until("the Secret applied", WAIT, || async {
        let h = support::history::records(&h.store).await;
        h.iter()
            .rev()
            .find(|r| r.commit.sha == sha && r.outcome == Outcome::Applied)
            .cloned()
            .ok_or_else(|| format!("{h:?}"))
    })
    .await;
    assert_eq!(
        applied.changes.created,
        vec!["Secret default/db".to_string()]
    );
    let secret: Secret = h
        .store
        .get(Some("default"), "db")
        .await
        .expect("read")
        .expect("the Secret");
    let password = secret.data.unwrap_or_default().get("password").cloned();
    assert_eq!(password.map(|b| b.0), Some(b"s3cret".to_vec()));
    assert!(
        !secret
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(encrypted_secrets::ANNOTATION),
        "the marker never reaches the cluster"
    );
    stop(follower).await;
    h.stop().await;
}
