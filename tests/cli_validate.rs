//! `commitd validate` as a user runs it: the built binary on a directory of
//! manifests, judged by its exit code and the exact lines it prints, since
//! those lines (file, line, field, message) are what people act on.

use std::path::Path;
use std::process::{Command, Output};

/// Writes `files` (relative path, content) under a fresh temporary
/// directory, creating folders as needed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    for (path, content) in files {
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create a folder");
        }
        std::fs::write(&full, content).expect("write a manifest");
    }
    dir
}

fn validate(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_commitd"))
        .arg("validate")
        .arg(path)
        .env("RUST_LOG", "error")
        .output()
        .expect("run commitd validate")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const NAMESPACE: &str = "\
# The demo namespace.
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {team: platform, env: dev}
";

const CONFIG_MAP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: demo
data:
  # an nginx snippet, kept verbatim
  nginx.conf: |
    server {
      listen 8080;
    }
  mode: \"production\"
";

const DEPLOYMENT: &str = "\
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2  # two is enough for the demo
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: localhost:5000/busybox:latest
          command: [\"sh\", \"-c\"]
          args: [\"httpd -f -p 8080 -h /www\"]
          ports: [{containerPort: 8080, name: http}]
      volumes:
        - name: config
          configMap:
            name: web-config
            defaultMode: 0755
";

#[test]
fn a_valid_repository_passes() {
    let dir = repo(&[
        ("namespace.yaml", NAMESPACE),
        ("apps/config.yaml", CONFIG_MAP),
        ("apps/web.yml", DEPLOYMENT),
        ("README.md", "not a manifest: ignored\n"),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = stdout_lines(&out);
    // Fields commitd stores but does not act on yet may warn; nothing errs.
    assert!(
        lines.iter().all(|l| !l.contains(": error:")),
        "{}",
        describe(&out)
    );
    let summary = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        summary == "3 objects valid" || summary.starts_with("3 objects valid, "),
        "{}",
        describe(&out)
    );
    for warning in &lines[..lines.len() - 1] {
        assert!(
            warning.starts_with("apps/web.yml:") && warning.contains(": warning: "),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn a_yaml_syntax_error_names_file_and_line() {
    let dir = repo(&[
        ("namespace.yaml", NAMESPACE),
        (
            "broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata:\n  key: [unclosed\n  other: value\n",
        ),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [
            "broken.yaml:7: error: invalid YAML: did not find expected ',' or ']' at line 7 \
             column 8, while parsing a flow sequence at line 6 column 8",
            "1 error",
        ],
        "{}",
        describe(&out)
    );
}

#[test]
fn an_unknown_field_suggests_the_right_one() {
    let typo = DEPLOYMENT.replace("  replicas: 2  #", "  replica: 2  #");
    let dir = repo(&[
        ("namespace.yaml", NAMESPACE),
        ("apps/config.yaml", CONFIG_MAP),
        ("apps/web.yml", &typo),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert_eq!(
        lines.first().map(String::as_str),
        Some(
            "apps/web.yml:8: error: spec.replica: unknown field \"replica\", \
             did you mean \"replicas\"?"
        ),
        "{}",
        describe(&out)
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("1 error"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_same_object_in_two_files_is_a_duplicate() {
    let dir = repo(&[
        (
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
        ),
        (
            "more/b.yaml",
            "# a second copy\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n",
        ),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [
            "more/b.yaml:3: error: metadata.name: Duplicate value: ConfigMap default/settings \
             is declared twice, first at a.yaml:1",
            "1 error",
        ],
        "{}",
        describe(&out)
    );
}

#[test]
fn a_missing_path_is_an_error_of_the_command() {
    let dir = repo(&[]);
    let out = validate(&dir.path().join("nowhere"));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        describe(&out)
    );
}

#[test]
fn service_addresses_and_node_ports_are_checked_offline() {
    let services = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  clusterIP: 10.0.0.1\n  ports:\n  - port: 80\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 80\n";
    let dir = repo(&[("svc.yaml", services)]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        vec![
            "svc.yaml:6: error: spec.clusterIP: Invalid value: \"10.0.0.1\": failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12",
            "svc.yaml:18: error: spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
            "2 errors",
        ],
        "{}",
        describe(&out)
    );
}

const STATEFUL_SET_WITHOUT_SERVICE: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: db
          image: busybox
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources: {}
";

const CLAIM: &str = "\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: cache
  namespace: demo
spec:
  accessModes: [ReadWriteMany, Sometimes]
  resources:
    requests:
      storage: 1Gi
";

#[test]
fn stateful_sets_and_claims_are_checked_with_file_line_and_field() {
    let dir = repo(&[
        ("namespace.yaml", NAMESPACE),
        ("db/statefulset.yaml", STATEFUL_SET_WITHOUT_SERVICE),
        ("db/claim.yaml", CLAIM),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    for expected in [
        "db/claim.yaml:7: error: spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
        "db/statefulset.yaml:6: error: spec.serviceName: Required value: the governing headless Service gives each pod its DNS name",
        "db/statefulset.yaml:24: error: spec.volumeClaimTemplates[0].spec.resources.requests.storage: Required value: a claim must request its storage size",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing {expected:?}\n{}",
            describe(&out)
        );
    }
    // The mount of the claim template is not "not found": the template is
    // a volume of every member.
    assert!(
        !lines.iter().any(|l| l.contains("volumeMounts[0].name")),
        "{}",
        describe(&out)
    );
}

#[test]
fn every_workload_kind_of_the_examples_passes() {
    let dir = repo(&[
        ("namespace.yaml", NAMESPACE),
        (
            "db/statefulset.yaml",
            &STATEFUL_SET_WITHOUT_SERVICE
                .replace("  replicas: 2\n", "  replicas: 2\n  serviceName: db\n")
                .replace("resources: {}", "resources: {requests: {storage: 64Mi}}"),
        ),
        (
            "db/claim.yaml",
            &CLAIM.replace("[ReadWriteMany, Sometimes]", "[ReadWriteOnce]"),
        ),
        (
            "agent/daemonset.yaml",
            "\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: demo}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{operator: Exists}]
      containers: [{name: agent, image: busybox}]
",
        ),
        (
            "storage/class.yaml",
            "\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: keep}
provisioner: commitd.io/local-path
reclaimPolicy: Retain
",
        ),
    ]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn the_workload_examples_validate_without_a_warning() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workloads");
    let out = validate(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out).last().map(String::as_str),
        Some("9 objects valid"),
        "{}",
        describe(&out)
    );
}

const CRON_JOBS: &str = "\
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: demo}
spec:
  schedule: \"*/5 * * 13 *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: busybox}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: zoned, namespace: demo}
spec:
  schedule: \"TZ=UTC 0 9 * * MON-FRI\"
  timeZone: Mars/Olympus
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: busybox}]
";

#[test]
fn invalid_cron_schedules_and_time_zones_name_file_line_and_field() {
    let dir = repo(&[("namespace.yaml", NAMESPACE), ("jobs/cron.yaml", CRON_JOBS)]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    for expected in [
        "jobs/cron.yaml:5: error: spec.schedule: Invalid value: \"*/5 * * 13 *\": end of range (13) above maximum (12): 13",
        "jobs/cron.yaml:17: error: spec.schedule: Invalid value: \"TZ=UTC 0 9 * * MON-FRI\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        "jobs/cron.yaml:18: error: spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing {expected:?}\n{}",
            describe(&out)
        );
    }
    // Fixed, the same file passes.
    let fixed = CRON_JOBS
        .replace("*/5 * * 13 *", "*/5 * * 12 *")
        .replace("TZ=UTC 0 9", "0 9")
        .replace("Mars/Olympus", "Europe/Berlin");
    let dir = repo(&[("namespace.yaml", NAMESPACE), ("jobs/cron.yaml", &fixed)]);
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
