//! Commits larger than one etcd transaction, against a real etcd started
//! with `--max-txn-ops 16`: they are written in chunks under the apply
//! lock, readers of the event stream never see half a commit without the
//! lock, control loops hold back while it is held, and a reconciler that
//! dies mid-apply leaves a commit the next one completes.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_api::controller::{self, ApplyGate};
use commitd_api::k8s_openapi::api::core::v1::ConfigMap;
use commitd_api::keys;
use commitd_api::records::{AppliedCommit, HistoryRecord, Outcome};
use commitd_api::reflector::reflect;
use commitd_api::{meta, Store};
use commitd_reconciler::apply::{ApplyLock, ApplyOptions};
use commitd_reconciler::git_source::GitSourceConfig;
use etcd_client::{EventType, Txn, TxnOp, WatchOptions};
use serde_json::Value;
use support::git::TestRepo;
use support::wait::until;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
/// The limit the test etcd runs with, and the reconciler is told.
const MAX_TXN_OPS: usize = 16;
const NAMESPACE: &str = "bulk";
const CONFIG_MAP_PREFIX: &str = "/commitd/objects/core/ConfigMap/";

/// Git-owned ConfigMaps as a reader sees them: name → `data`.
type ConfigMaps = BTreeMap<String, Value>;

struct Harness {
    _data: tempfile::TempDir,
    etcd: Option<Etcd>,
    store: Store,
    repo: TestRepo,
    cancel: CancellationToken,
}

impl Harness {
    async fn start() -> Harness {
        let data = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start(EtcdOptions {
            data_dir: data.path().join("etcd"),
            client_port: None,
            extra_args: vec!["--max-txn-ops".into(), MAX_TXN_OPS.to_string()],
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
            repo: TestRepo::new(),
            cancel: CancellationToken::new(),
        }
    }

    fn endpoint(&self) -> String {
        self.etcd.as_ref().expect("etcd runs").endpoint.clone()
    }

    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            max_txn_ops: MAX_TXN_OPS,
            lock_ttl: Duration::from_secs(2),
            ..ApplyOptions::default()
        }
    }

    fn follow(&self, options: ApplyOptions) -> JoinHandle<anyhow::Result<()>> {
        let source = GitSourceConfig {
            repo: self.repo.path(),
            branch: None,
            path: "manifests".into(),
            poll_interval: Duration::from_secs(30),
            ..GitSourceConfig::default()
        };
        tokio::spawn(commitd_reconciler::follow_with(
            self.store.clone(),
            source,
            options,
            self.cancel.clone(),
        ))
    }

    async fn history(&self) -> Vec<HistoryRecord> {
        support::history::records(&self.store).await
    }

    async fn wait_for_record(&self, sha: &str) -> HistoryRecord {
        support::history::wait_for_record(&self.store, sha, WAIT).await
    }

    async fn applied(&self) -> Option<AppliedCommit> {
        self.store.get_record(keys::APPLIED).await.expect("read")
    }

    async fn lock(&self) -> Option<ApplyLock> {
        self.store.get_record(keys::APPLYING).await.expect("read")
    }

    /// The Git-owned ConfigMaps in etcd now, with the commit each carries.
    async fn config_maps(&self) -> BTreeMap<String, (Value, String)> {
        let list = self
            .store
            .list_prefix(CONFIG_MAP_PREFIX)
            .await
            .expect("list");
        list.items
            .iter()
            .filter_map(|kv| {
                let v: Value = serde_json::from_slice(kv.value()).expect("JSON");
                let commit = v["metadata"]["annotations"][meta::COMMIT_ANNOTATION]
                    .as_str()?
                    .to_string();
                let name = v["metadata"]["name"].as_str()?.to_string();
                Some((name, (v["data"].clone(), commit)))
            })
            .collect()
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(e) = self.etcd.take() {
            e.stop().await.expect("etcd stops");
        }
    }
}

/// A Namespace and ConfigMaps `cm-<i>` for `i` in `range`, each with
/// `data: {v: <value><i>}`; returns the manifest and what readers should see.
fn config_maps(range: std::ops::Range<usize>, value: &str) -> (String, ConfigMaps) {
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    let mut expected = ConfigMaps::new();
    for i in range {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: {NAMESPACE}\ndata:\n  v: {value}{i}\n"
        ));
        expected.insert(
            format!("cm-{i}"),
            serde_json::json!({ "v": format!("{value}{i}") }),
        );
    }
    (yaml, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_larger_than_one_transaction_applies_in_chunks() {
    let h = Harness::start().await;
    // The test etcd really refuses a transaction over the limit.
    let too_many: Vec<TxnOp> = (0..=MAX_TXN_OPS)
        .map(|i| TxnOp::put(format!("/probe/{i}"), "x", None))
        .collect();
    let refused = h
        .store
        .client()
        .txn(Txn::new().and_then(too_many))
        .await
        .expect_err("etcd refuses 17 operations");
    assert!(
        refused.to_string().contains("too many operations"),
        "{refused}"
    );

    let (yaml, expected) = config_maps(0..60, "a");
    let c1 = h
        .repo
        .commit("Sixty ConfigMaps", &[("manifests/all.yaml", Some(&yaml))]);
    let _task = h.follow(h.options());
    let r1 = h.wait_for_record(&c1).await;
    assert_eq!(r1.outcome, Outcome::Applied);
    assert_eq!(r1.changes.created.len(), 61, "{:?}", r1.changes);
    assert_eq!(r1.note, None);

    let cms = h.config_maps().await;
    assert_eq!(cms.len(), 60);
    for (name, (data, commit)) in &cms {
        assert_eq!(commit, &c1, "{name} carries the commit");
        assert_eq!(Some(data), expected.get(name), "{name}");
    }
    let ns: Option<commitd_api::k8s_openapi::api::core::v1::Namespace> =
        h.store.get(None, NAMESPACE).await.expect("get");
    assert!(ns.is_some(), "the namespace was created");
    assert_eq!(h.applied().await.map(|a| a.commit.sha), Some(c1.clone()));
    assert_eq!(
        h.lock().await,
        None,
        "the lock is gone after the switch-over"
    );
    let history = h.history().await;
    assert_eq!(history.len(), 1, "{history:?}");

    // 61 objects, at most 15 per transaction besides the lock guard.
    let objects = h
        .store
        .list_prefix("/commitd/objects/")
        .await
        .expect("list");
    let mut revisions: Vec<i64> = objects
        .items
        .iter()
        .map(|kv| kv.create_revision())
        .collect();
    revisions.sort();
    revisions.dedup();
    assert!(
        revisions.len() >= 5,
        "written in {} transactions",
        revisions.len()
    );
    println!(
        "61 objects written in {} chunk transactions",
        revisions.len()
    );
    h.stop().await;
}

/// What a reader replaying the event stream saw.
#[derive(Debug, Default)]
struct Observed {
    /// The newest revision replayed.
    revision: i64,
    /// Revisions at which the lock was held.
    locked: usize,
    /// Revisions at which the lock was held over a mix of commits.
    locked_mixed: usize,
    /// Revisions without the lock whose ConfigMaps were neither commit's.
    violations: Vec<String>,
    /// The ConfigMaps at `revision`.
    last: ConfigMaps,
}

/// Replays every event under `/commitd/` from revision 1 and checks, at
/// each revision without the apply lock, that the Git-owned ConfigMaps are
/// exactly one of `allowed`.
async fn observe(
    endpoint: String,
    allowed: Vec<ConfigMaps>,
    until_revision: tokio::sync::watch::Receiver<i64>,
) -> Observed {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("observer connects");
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(1)
        .with_progress_notify();
    let mut stream = client
        .watch(keys::ROOT, Some(options))
        .await
        .expect("observer watches");
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut seen = Observed::default();
    let check = |values: &BTreeMap<String, Vec<u8>>, rev: i64, seen: &mut Observed| {
        let cms: ConfigMaps = values
            .iter()
            .filter(|(k, _)| k.starts_with(CONFIG_MAP_PREFIX))
            .filter_map(|(_, v)| {
                let v: Value = serde_json::from_slice(v).ok()?;
                v["metadata"]["annotations"]
                    .get(meta::COMMIT_ANNOTATION)
                    .is_some()
                    .then(|| {
                        (
                            v["metadata"]["name"].as_str().unwrap_or_default().into(),
                            v["data"].clone(),
                        )
                    })
            })
            .collect();
        let whole = allowed.iter().any(|a| a == &cms);
        if values.contains_key(keys::APPLYING) {
            seen.locked += 1;
            if !whole {
                seen.locked_mixed += 1;
            }
        } else if !whole {
            seen.violations.push(format!(
                "revision {rev}: {} ConfigMaps, not any commit's whole set",
                cms.len()
            ));
        }
        seen.revision = rev;
        seen.last = cms;
    };
    let mut until_revision = until_revision;
    loop {
        let target = *until_revision.borrow_and_update();
        if target > 0 && seen.revision >= target {
            return seen;
        }
        let resp = tokio::select! {
            msg = stream.message() => msg.expect("watch").expect("watch stream open"),
            changed = until_revision.changed() => {
                changed.expect("the test is waiting");
                continue;
            }
        };
        let mut pending: Option<i64> = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            if let Some(p) = pending.filter(|p| *p != rev) {
                check(&values, p, &mut seen);
            }
            pending = Some(rev);
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    values.insert(key, kv.value().to_vec());
                }
                EventType::Delete => {
                    values.remove(&key);
                }
            }
        }
        // etcd never splits one revision's events across responses.
        if let Some(p) = pending {
            check(&values, p, &mut seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_a_commit_without_the_lock() {
    let h = Harness::start().await;
    let (yaml_a, a) = config_maps(0..60, "a");
    // B updates 40, prunes 20 and creates 20: 80 writes.
    let (yaml_b, b) = config_maps(0..40, "b");
    let (extra_b, more_b) = config_maps(60..80, "b");
    let extra_b = extra_b
        .split_once("---\n")
        .map(|(_, cms)| cms.to_string())
        .expect("ConfigMaps after the Namespace");
    let yaml_b = format!("{yaml_b}---\n{extra_b}");
    let mut b = b;
    b.extend(more_b);
    assert_eq!(b.len(), 60);

    let (target_tx, target_rx) = tokio::sync::watch::channel(0i64);
    let observer = tokio::spawn(observe(
        h.endpoint(),
        vec![ConfigMaps::new(), a.clone(), b.clone()],
        target_rx,
    ));
    let _task = h.follow(h.options());
    let ca = h.repo.commit(
        "A: sixty ConfigMaps",
        &[("manifests/all.yaml", Some(&yaml_a))],
    );
    assert_eq!(h.wait_for_record(&ca).await.outcome, Outcome::Applied);
    let cb = h.repo.commit(
        "B: change forty, drop twenty, add twenty",
        &[("manifests/all.yaml", Some(&yaml_b))],
    );
    let rb = h.wait_for_record(&cb).await;
    assert_eq!(rb.outcome, Outcome::Applied);
    assert_eq!(
        (
            rb.changes.updated.len(),
            rb.changes.deleted.len(),
            rb.changes.created.len()
        ),
        (40, 20, 20),
        "{:?}",
        rb.changes
    );

    let now = h
        .store
        .client()
        .get(keys::APPLIED, None)
        .await
        .expect("get")
        .header()
        .map(|hd| hd.revision())
        .expect("header");
    target_tx.send(now).expect("observer runs");
    let seen = tokio::time::timeout(WAIT, observer)
        .await
        .expect("the observer catches up")
        .expect("observer task");
    println!(
        "replayed to revision {}: {} revisions under the lock, {} of them with a mix of commits",
        seen.revision, seen.locked, seen.locked_mixed
    );
    assert!(seen.violations.is_empty(), "{:#?}", seen.violations);
    assert!(
        seen.locked_mixed > 0,
        "the commits were never half-written under the lock: {seen:?}"
    );
    assert_eq!(seen.last, b, "B is live in the end");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_interrupted_mid_way_is_completed_by_the_next_reconciler() {
    let h = Harness::start().await;
    let (yaml, expected) = config_maps(0..60, "a");
    let c1 = h
        .repo
        .commit("Sixty ConfigMaps", &[("manifests/all.yaml", Some(&yaml))]);
    // The first reconciler stops making progress after two chunks (30
    // objects), lock held, as a process would that hangs and is killed.
    let first = h.follow(ApplyOptions {
        pause_after_chunks: Some(2),
        ..h.options()
    });
    let lock = until("the apply lock and two chunks", WAIT, || async {
        let lock = h.lock().await.ok_or("no lock")?;
        let written = h.config_maps().await.len();
        (written >= 2 * (MAX_TXN_OPS - 2))
            .then(|| lock.clone())
            .ok_or(format!("{written} ConfigMaps written"))
    })
    .await;
    assert_eq!(lock.commit.sha, c1);
    assert_eq!(lock.purpose, Outcome::Applied);
    assert_eq!(lock.previous, None);

    // A control loop started now must not run a pass until the lock goes.
    let probe_cancel = h.cancel.child_token();
    let gate = ApplyGate::watch(h.store.clone(), probe_cancel.clone());
    let cms = reflect::<ConfigMap>(h.store.clone(), probe_cancel.clone());
    let passes = Arc::new(AtomicUsize::new(0));
    let passes_under_lock = Arc::new(AtomicUsize::new(0));
    let first_lease = lock.lease;
    let probe = {
        let (store, passes, under_lock) =
            (h.store.clone(), passes.clone(), passes_under_lock.clone());
        let triggers = vec![cms.changes()];
        tokio::spawn(controller::gated(
            gate.clone(),
            controller::run(
                "probe",
                triggers,
                Duration::from_secs(60),
                probe_cancel.clone(),
                move || {
                    let (store, passes, under_lock) =
                        (store.clone(), passes.clone(), under_lock.clone());
                    async move {
                        // The second reconciler takes a lock of its own
                        // for the rest; a pass that started just before
                        // may see that one. The first lock must never be.
                        let locked: Option<ApplyLock> = store.get_record(keys::APPLYING).await?;
                        if locked.is_some_and(|l| l.lease == first_lease) {
                            under_lock.fetch_add(1, Ordering::SeqCst);
                        }
                        passes.fetch_add(1, Ordering::SeqCst);
                        Ok(None)
                    }
                },
            ),
        ))
    };
    cms.ready().await;
    // Wake the probe while the lock is held: a ConfigMap nobody owns.
    let mut by_hand = ConfigMap::default();
    by_hand.metadata.name = Some("by-hand".into());
    by_hand.metadata.namespace = Some("other".into());
    h.store.create(by_hand).await.expect("create");
    assert!(!gate.is_open(), "the gate is closed while the lock is held");

    // The process dies: its lease is no longer renewed.
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    let second = h.follow(h.options());
    let record = h.wait_for_record(&c1).await;
    assert_eq!(record.outcome, Outcome::Applied);
    assert_eq!(h.lock().await, None);
    assert!(
        record
            .note
            .as_deref()
            .is_some_and(|n| n.contains("interrupted")),
        "{record:?}"
    );
    println!("completed: {:?}", record.note);
    let applied: Vec<HistoryRecord> = h
        .history()
        .await
        .into_iter()
        .filter(|r| r.commit.sha == c1 && r.outcome == Outcome::Applied)
        .collect();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(h.applied().await.map(|a| a.commit.sha), Some(c1.clone()));
    let cms_now = h.config_maps().await;
    assert_eq!(cms_now.len(), 60);
    for (name, (data, commit)) in &cms_now {
        assert_eq!(commit, &c1, "{name}");
        assert_eq!(Some(data), expected.get(name), "{name}");
    }

    until("the probe to run once the lock is gone", WAIT, || async {
        let n = passes.load(Ordering::SeqCst);
        (n > 0).then_some(()).ok_or(format!("{n} passes"))
    })
    .await;
    assert_eq!(
        passes_under_lock.load(Ordering::SeqCst),
        0,
        "a gated loop ran while the lock was held"
    );
    probe_cancel.cancel();
    let _ = probe.await;
    second.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_never_interleave_chunked_applies() {
    let h = Harness::start().await;
    let _a = h.follow(h.options());
    let _b = h.follow(h.options());
    let mut last = (String::new(), ConfigMaps::new());
    for (i, value) in ["a", "b", "c"].into_iter().enumerate() {
        let (yaml, expected) = config_maps(i * 10..i * 10 + 40, value);
        let sha = h.repo.commit(
            &format!("Commit {value}"),
            &[("manifests/all.yaml", Some(&yaml))],
        );
        last = (sha, expected);
    }
    let (sha, expected) = last;
    h.wait_for_record(&sha).await;
    let history = h.history().await;
    let mut applied: Vec<&str> = history
        .iter()
        .filter(|r| r.outcome == Outcome::Applied)
        .map(|r| r.commit.sha.as_str())
        .collect();
    let count = applied.len();
    applied.sort();
    applied.dedup();
    assert_eq!(
        count,
        applied.len(),
        "a commit was applied twice: {history:?}"
    );
    let seqs: Vec<u64> = history.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>());
    let now: ConfigMaps = h
        .config_maps()
        .await
        .into_iter()
        .map(|(name, (data, _))| (name, data))
        .collect();
    assert_eq!(now, expected);
    assert_eq!(h.lock().await, None);
    h.stop().await;
}
