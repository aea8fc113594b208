//! `commitd plan` as a reviewer runs it: the built binary on a temporary
//! Git repository, judged by its exit code (0 no change, 1 changes, 2
//! errors) and by its whole output, compared with the expected text. Commit
//! ids change with every run, so their abbreviations are replaced by
//! `<base>` and `<rev>` before comparing; nothing else varies.

mod support;

use std::process::{Command, Output};

use commitd_api::k8s_openapi::api::apps::v1::ReplicaSet;
use commitd_api::records::{CommitInfo, Provenance};
use commitd_reconciler::apply::{apply_commit, live_revision, ApplyOptions, ApplyOutcome};
use support::etcd::{with_etcd_at, Controllers};
use support::git::TestRepo;
use support::wait::until;

/// How long the controllers get to make a ReplicaSet.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const NAMESPACE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
";

const WEB: &str = "\
# The web front end and its Service.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - {name: http, containerPort: 80}
      - name: log
        image: busybox:1.36
        args: [tail, -f, /dev/null]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
";

const LEGACY: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: legacy
  namespace: demo
data:
  mode: old
";

const CONFIG: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: demo
data:
  color: blue
";

/// `WEB` as the pull request changes it: a new image and one more replica.
fn web_updated() -> String {
    WEB.replace("image: nginx:1.25", "image: nginx:1.26")
        .replace("replicas: 2", "replicas: 3")
}

/// A repository whose `deploy/` folder holds the demo, committed twice:
/// the base, then the pull request (update web, add web-config, delete
/// legacy). Files outside `deploy/` are not manifests of this plan.
/// Returns the repository and the two commit ids.
fn demo_repo() -> (TestRepo, String, String) {
    let repo = TestRepo::new();
    let base = repo.commit(
        "Base",
        &[
            ("deploy/namespace.yaml", Some(NAMESPACE)),
            ("deploy/web.yaml", Some(WEB)),
            ("deploy/legacy.yaml", Some(LEGACY)),
            ("other/ignored.yaml", Some("not: [a, manifest\n")),
        ],
    );
    let rev = repo.commit(
        "Update web",
        &[
            ("deploy/web.yaml", Some(&web_updated())),
            ("deploy/config.yaml", Some(CONFIG)),
            ("deploy/legacy.yaml", None),
        ],
    );
    (repo, base, rev)
}

fn commitd(repo: &TestRepo, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_commitd"))
        .arg("plan")
        .arg("--repo")
        .arg(repo.path())
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("COMMITD_ETCD")
        .output()
        .expect("run commitd plan")
}

/// Stdout with the commits' abbreviations replaced by placeholders.
fn stdout(out: &Output, base: &str, rev: &str) -> String {
    mask(&String::from_utf8_lossy(&out.stdout), base, rev)
}

fn mask(text: &str, base: &str, rev: &str) -> String {
    text.replace(&base[..7], "<base>")
        .replace(&rev[..7], "<rev>")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const EXPECTED_TEXT: &str = "\
Plan: main~1 (<base>) → main (<rev>)

Create:
  + configmap/web-config (demo)

Change:
  ~ deployment/web (demo)
      spec.replicas: 2 → 3
      spec.template.spec.containers[web].image: nginx:1.25 → nginx:1.26

Delete:
  - configmap/legacy (demo)

Rollouts:
  deployment/web (demo): new ReplicaSet, strategy RollingUpdate

1 to create, 1 to change, 1 to delete, 1 rollout
";

#[test]
fn text_lists_creates_field_changes_deletes_and_rollouts() {
    let (repo, base, rev) = demo_repo();
    let out = commitd(&repo, &["--path", "deploy", "--base", "main~1", "main"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout(&out, &base, &rev),
        EXPECTED_TEXT,
        "{}",
        describe(&out)
    );
    // Commit ids (whole or abbreviated) name the same revisions as branch
    // expressions do, and are shown abbreviated.
    let by_id = commitd(&repo, &["--path", "deploy", "--base", &base[..10], &rev]);
    assert_eq!(by_id.status.code(), Some(1), "{}", describe(&by_id));
    assert_eq!(
        stdout(&by_id, &base, &rev),
        EXPECTED_TEXT.replace(
            "Plan: main~1 (<base>) → main (<rev>)",
            "Plan: <base> → <rev>"
        ),
    );
}

#[test]
fn markdown_is_a_pull_request_comment() {
    let (repo, base, rev) = demo_repo();
    let out = commitd(
        &repo,
        &[
            "--path", "deploy", "--format", "markdown", "--base", "main~1", "main",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let expected = "\
### commitd plan: `main~1` (<base>) → `main` (<rev>)

1 to create, 1 to change, 1 to delete, 1 rollout

| Change | Kind | Namespace | Name |
|---|---|---|---|
| create | ConfigMap | demo | web-config |
| change | Deployment | demo | web |
| delete | ConfigMap | demo | legacy |

<details><summary>Deployment demo/web: 2 fields changed</summary>

```diff
- spec.replicas: 2
+ spec.replicas: 3
- spec.template.spec.containers[web].image: nginx:1.25
+ spec.template.spec.containers[web].image: nginx:1.26
```

</details>

#### Rollouts

- `deployment/web (demo)`: new ReplicaSet, strategy RollingUpdate
";
    assert_eq!(stdout(&out, &base, &rev), expected, "{}", describe(&out));
}

#[test]
fn json_is_machine_readable() {
    let (repo, _, _) = demo_repo();
    let out = commitd(
        &repo,
        &[
            "--path", "deploy", "--format", "json", "--base", "HEAD~1", "HEAD",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        plan,
        serde_json::json!({
            "created": [{"kind": "ConfigMap", "namespace": "demo", "name": "web-config"}],
            "changed": [{"kind": "Deployment", "namespace": "demo", "name": "web", "fields": [
                {"path": "spec.replicas", "old": 2, "new": 3},
                {"path": "spec.template.spec.containers[web].image", "old": "nginx:1.25", "new": "nginx:1.26"},
            ]}],
            "deleted": [{"kind": "ConfigMap", "namespace": "demo", "name": "legacy"}],
            "rollouts": [{"kind": "Deployment", "namespace": "demo", "name": "web",
                "strategy": "RollingUpdate", "replicaSet": null, "paused": false}],
            "errors": [],
        })
    );
}

/// `WEB` with what Kubernetes fills in anyway written out, and comments.
const WEB_EXPLICIT: &str = "\
# The web front end and its Service, every default spelled out.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2  # two is enough
  revisionHistoryLimit: 10
  progressDeadlineSeconds: 600
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      restartPolicy: Always
      dnsPolicy: ClusterFirst
      terminationGracePeriodSeconds: 30
      containers:
      - name: web
        image: nginx:1.25
        imagePullPolicy: IfNotPresent
        ports:
        - {name: http, containerPort: 80, protocol: TCP}
      - name: log
        image: busybox:1.36
        imagePullPolicy: IfNotPresent
        args: [tail, -f, /dev/null]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  sessionAffinity: None
  externalTrafficPolicy: Cluster
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP}
";

#[test]
fn defaults_written_out_are_no_change() {
    let repo = TestRepo::new();
    let base = repo.commit(
        "Base",
        &[("namespace.yaml", Some(NAMESPACE)), ("web.yaml", Some(WEB))],
    );
    let rev = repo.commit(
        "Spell out the defaults",
        &[("web.yaml", Some(WEB_EXPLICIT))],
    );
    let out = commitd(&repo, &["--base", "main~1", "main"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out, &base, &rev),
        "Plan: main~1 (<base>) → main (<rev>)\n\nNo changes.\n"
    );
    // And the other way round.
    let out = commitd(&repo, &["--base", "main", "main~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn secret_values_are_never_printed() {
    let secret = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: demo\nstringData:\n  password: {password}\n  user: admin\n"
        )
    };
    let repo = TestRepo::new();
    let base = repo.commit(
        "Base",
        &[
            ("namespace.yaml", Some(NAMESPACE)),
            ("secret.yaml", Some(&secret("hunter2"))),
        ],
    );
    let rev = repo.commit(
        "Rotate the password",
        &[("secret.yaml", Some(&secret("correct-horse")))],
    );
    let mut printed = String::new();
    for format in ["text", "markdown", "json"] {
        let out = commitd(&repo, &["--format", format, "--base", "main~1", "main"]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        printed += &stdout(&out, &base, &rev);
    }
    assert!(
        printed.contains("data.password: (value changed)"),
        "{printed}"
    );
    assert!(printed.contains("\"(hidden)\""), "{printed}");
    // Neither the values nor their base64 forms (as `data` holds them).
    for leaked in [
        "hunter2",
        "aHVudGVyMg",
        "correct-horse",
        "Y29ycmVjdC1ob3JzZQ",
    ] {
        assert!(!printed.contains(leaked), "{leaked} printed:\n{printed}");
    }
    let out = commitd(&repo, &["--base", "main~1", "main"]);
    assert_eq!(
        stdout(&out, &base, &rev),
        "\
Plan: main~1 (<base>) → main (<rev>)

Change:
  ~ secret/db (demo)
      data.password: (value changed)

0 to create, 1 to change, 0 to delete
"
    );
}

#[test]
fn validation_errors_exit_2_with_file_and_line_and_the_rest_planned() {
    let repo = TestRepo::new();
    let base = repo.commit(
        "Base",
        &[
            ("deploy/namespace.yaml", Some(NAMESPACE)),
            ("deploy/web.yaml", Some(WEB)),
            ("deploy/config.yaml", Some(CONFIG)),
        ],
    );
    let rev = repo.commit(
        "A typo, and a real change",
        &[
            (
                "deploy/web.yaml",
                Some(&WEB.replace("  replicas: 2", "  replica: 3")),
            ),
            (
                "deploy/config.yaml",
                Some(&CONFIG.replace("color: blue", "color: green")),
            ),
        ],
    );
    let out = commitd(&repo, &["--path", "deploy", "--base", "main~1", "main"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // The Deployment did not load, but its file is still there: it is not
    // called deleted.
    assert_eq!(
        stdout(&out, &base, &rev),
        "\
Plan: main~1 (<base>) → main (<rev>)

Change:
  ~ configmap/web-config (demo)
      data.color: blue → green

Errors:
  deploy/web.yaml:8: error: spec.replica: unknown field \"replica\", did you mean \"replicas\"?

0 to create, 1 to change, 0 to delete, 1 error
"
    );
    let out = commitd(
        &repo,
        &[
            "--path", "deploy", "--format", "json", "--base", "main~1", "main",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        plan["errors"],
        serde_json::json!([{"file": "deploy/web.yaml", "line": 8, "field": "spec.replica",
            "message": "unknown field \"replica\", did you mean \"replicas\"?"}])
    );
    let out = commitd(
        &repo,
        &[
            "--path", "deploy", "--format", "markdown", "--base", "main~1", "main",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stdout(&out, &base, &rev).ends_with(
            "\n#### Errors\n\n- `deploy/web.yaml:8`: `spec.replica`: unknown field \"replica\", did you mean \"replicas\"?\n"
        ),
        "{}",
        describe(&out)
    );
}

#[test]
fn an_unknown_revision_is_an_error_naming_it() {
    let (repo, _, _) = demo_repo();
    let out = commitd(&repo, &["--base", "main", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"no-such-branch\""), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

/// The files of `demo_repo`'s base commit, as the reconciler reads them.
const BASE_FILES: [(&str, &str); 3] = [
    ("deploy/legacy.yaml", LEGACY),
    ("deploy/namespace.yaml", NAMESPACE),
    ("deploy/web.yaml", WEB),
];

/// Applies the commit `sha` whose manifests are `files` with the
/// reconciler's own apply, as the reconciler would on seeing it.
async fn apply(
    store: &commitd_api::Store,
    sha: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<()> {
    let commit = CommitInfo {
        sha: sha.to_string(),
        author: "Test Author".into(),
        email: "author@example.com".into(),
        time: "2024-01-01T00:00:00Z".into(),
        summary: format!("commit {sha}"),
        message: format!("commit {sha}\n"),
    };
    let files = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
        .collect();
    let live = live_revision(store).await?;
    match apply_commit(
        store,
        &ApplyOptions::default(),
        &commit,
        files,
        &Provenance::default(),
        live,
    )
    .await?
    {
        ApplyOutcome::Recorded(r) if r.errors.is_empty() => Ok(()),
        other => anyhow::bail!("commit not applied: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_live_cluster_plans_from_what_etcd_holds() -> anyhow::Result<()> {
    with_etcd_at(|store, endpoint| async move {
        let (repo, base, rev) = demo_repo();
        apply(&store, &base, &BASE_FILES).await?;
        let cli = support::cli::Cli {
            connection: vec!["--etcd".into(), endpoint.into()],
        };
        let repo_dir = repo.path().display().to_string();
        let run = |rev: &'static str| {
            let cli = &cli;
            let repo_dir = repo_dir.clone();
            async move {
                cli.run(&["plan", "--repo", &repo_dir, "--path", "deploy", rev])
                    .await
            }
        };
        // The applied commit itself: etcd holds more (uid, generation,
        // status, commitd's annotations, the Service's allocated address
        // and node port) but nothing Git would change.
        let (code, out, err) = run("main~1").await;
        assert_eq!(
            (code, mask(&out, &base, &rev).as_str()),
            (
                0,
                "Plan: the cluster (applied <base>) → main~1 (<base>)\n\nNo changes.\n"
            ),
            "{err}"
        );
        let (code, out, err) = run("main").await;
        assert_eq!(code, 1, "{out}{err}");
        assert_eq!(
            mask(&out, &base, &rev),
            EXPECTED_TEXT.replace(
                "Plan: main~1 (<base>)",
                "Plan: the cluster (applied <base>)"
            ),
            "{err}"
        );
        Ok(())
    })
    .await
}

/// The name of the ReplicaSet in `demo` whose pods run `image`, once the
/// Deployment controller has made it.
async fn replica_set_for(store: &commitd_api::Store, image: &str) -> String {
    until(&format!("a ReplicaSet running {image}"), WAIT, || async {
        let sets = store
            .list::<ReplicaSet>(Some("demo"))
            .await
            .map_err(|e| e.to_string())?;
        sets.items
            .iter()
            .find(|rs| {
                let pod = rs.spec.as_ref().and_then(|s| s.template.as_ref());
                let containers = pod.and_then(|t| t.spec.as_ref()).map(|s| &s.containers);
                containers.is_some_and(|c| c.iter().any(|c| c.image.as_deref() == Some(image)))
            })
            .and_then(|rs| rs.metadata.name.clone())
            .ok_or_else(|| format!("{} ReplicaSets, none with {image}", sets.items.len()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_against_the_live_cluster_scales_the_old_replica_set_up_again(
) -> anyhow::Result<()> {
    with_etcd_at(|store, endpoint| async move {
        let (repo, base, rev) = demo_repo();
        // The Deployment controller makes the ReplicaSets (and pods, which
        // stay pending: no scheduler or node runs here).
        let controllers = Controllers::start(&store);
        apply(&store, &base, &BASE_FILES).await?;
        let first = replica_set_for(&store, "nginx:1.25").await;
        let updated = web_updated();
        apply(
            &store,
            &rev,
            &[
                ("deploy/config.yaml", CONFIG),
                ("deploy/namespace.yaml", NAMESPACE),
                ("deploy/web.yaml", &updated),
            ],
        )
        .await?;
        replica_set_for(&store, "nginx:1.26").await;
        controllers.stop().await?;
        let cli = support::cli::Cli {
            connection: vec!["--etcd".into(), endpoint.into()],
        };
        let repo_dir = repo.path().display().to_string();
        // Planning the base again is a revert: the old template comes back
        // in its own ReplicaSet; the controllers' objects are not Git's,
        // so nothing else is deleted.
        let (code, out, err) = cli
            .run(&["plan", "--repo", &repo_dir, "--path", "deploy", "main~1"])
            .await;
        assert_eq!(code, 1, "{out}{err}");
        assert_eq!(
            mask(&out, &base, &rev),
            format!(
                "\
Plan: the cluster (applied <rev>) → main~1 (<base>)

Create:
  + configmap/legacy (demo)

Change:
  ~ deployment/web (demo)
      spec.replicas: 3 → 2
      spec.template.spec.containers[web].image: nginx:1.26 → nginx:1.25

Delete:
  - configmap/web-config (demo)

Rollouts:
  deployment/web (demo): ReplicaSet {first} scaled up again, strategy RollingUpdate

1 to create, 1 to change, 1 to delete, 1 rollout
"
            ),
            "{err}"
        );
        Ok(())
    })
    .await
}
