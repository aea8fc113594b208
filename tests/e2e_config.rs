//! Configuration end to end, with real containers under `commitd up`: a
//! pod whose environment comes from a ConfigMap and a Secret that are not
//! in Git yet waits in `CreateContainerConfigError` with the kubelet's
//! message, and starts, with the values, as soon as a later commit adds
//! them. The Secret is committed encrypted with age and etcd encrypts it
//! at rest: its value reaches the container's environment and files, and
//! is nowhere in etcd's data directory; a Secret encrypted for someone
//! else is rejected.

mod support;

use std::ffi::OsString;
use std::path::Path;

use commitd_api::encrypted_secrets;
use serde_json::Value;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdcfg0",
    pod_cidr: "10.224.0.0/24",
    service_cidr: "10.100.24.0/24",
    node_name: "config-node",
    dns_port: 10224,
    proxy_table: "cdcfg",
};

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: configured
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      env:
        - name: MODE
          valueFrom: {configMapKeyRef: {name: app-config, key: mode}}
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
        - name: OPTIONAL
          valueFrom: {configMapKeyRef: {name: nowhere, key: x, optional: true}}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: SUMMARY
          value: $(MODE) mode for $(POD_NAME)
      envFrom:
        - configMapRef: {name: app-config}
          prefix: CFG_
"#;

const CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  namespace: demo
data:
  mode: fast
  level: "3"
---
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: demo
stringData:
  password: s3cret
"#;

const FAREWELL: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: farewell
  namespace: demo
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'echo "disk full" > /dev/termination-log; exit 3']
    - name: crash
      image: REGISTRY/commitd/web:1
      terminationMessagePolicy: FallbackToLogsOnError
      command: [sh, -c, 'echo starting >&2; echo "panic: no config" >&2; exit 2']
"#;

/// A pod that reads the Secret as files.
const MOUNTED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: mounted
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      volumeMounts:
        - {name: db, mountPath: /etc/db, readOnly: true}
  volumes:
    - name: db
      secret: {secretName: db}
"#;

const FOREIGN: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: foreign
  namespace: demo
stringData:
  token: not-for-this-cluster
"#;

/// An etcd encryption configuration with one fresh AES-256 key.
const ENCRYPTION: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - name: key1\n              secret: KEY\n      - identity: {}\n";

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_config_maps_and_secrets_waits_for_them() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    // The cluster's age identity, and the key etcd encrypts Secrets with.
    let keys = tempfile::tempdir().expect("tempdir");
    let identity = encrypted_secrets::generate_identity();
    let identity_file = keys.path().join("age.key");
    std::fs::write(&identity_file, &identity.file_text).expect("write identity");
    let encryption_file = keys.path().join("encryption.yaml");
    let key: [u8; 32] = rand::random();
    std::fs::write(&encryption_file, ENCRYPTION.replace("KEY", &base64(&key)))
        .expect("write encryption configuration");
    let args: Vec<OsString> = vec![
        "--age-identity".into(),
        identity_file.into(),
        "--encryption-provider-config".into(),
        encryption_file.into(),
    ];
    let mut cluster = Cluster::up_with(NETWORK, args).await;
    cluster.wait_running(2, "hello from").await;

    cluster.commit_manifest("configured.yaml", POD, "A pod that needs configuration");
    let waiting = until("CreateContainerConfigError", WAIT, || async {
        let p = cluster.cli().get_json("pod", "configured", "demo").await?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "CreateContainerConfigError")
            .then(|| w["message"].as_str().unwrap_or_default().to_string())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    assert_eq!(waiting, "configmap \"app-config\" not found");

    // The Secret is committed encrypted for the cluster's identity.
    let recipient = encrypted_secrets::parse_recipient(&identity.recipient).expect("recipient");
    let encrypted =
        encrypted_secrets::encrypt_text(CONFIG, "config.yaml", &[recipient]).expect("encrypt");
    assert!(!encrypted.contains("s3cret"), "{encrypted}");
    cluster.repo().write("config.yaml", &encrypted);
    cluster.repo().commit("Add the configuration");
    let cri = cluster.cri().await;
    let env = until("the container to run with its configuration", WAIT, || {
        exec_ok(&cri, "configured", &["env"])
    })
    .await;
    let lines: Vec<&str> = env.lines().collect();
    for expected in [
        "MODE=fast",
        "PASSWORD=s3cret",
        "POD_NAME=configured",
        "SUMMARY=fast mode for configured",
        "CFG_mode=fast",
        "CFG_level=3",
    ] {
        assert!(lines.contains(&expected), "{expected} missing in:\n{env}");
    }
    assert!(!env.contains("OPTIONAL="), "{env}");
    let p = cluster
        .cli()
        .get_json("pod", "configured", "demo")
        .await
        .expect("pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    // The same value as files, read back through the CLI as well (which
    // finds the encryption configuration through the state dir).
    cluster.commit_manifest(
        "mounted.yaml",
        MOUNTED,
        "A pod that reads the Secret as files",
    );
    let password = until("the Secret mounted as files", WAIT, || {
        exec_ok(&cri, "mounted", &["cat", "/etc/db/password"])
    })
    .await;
    assert_eq!(password, "s3cret");
    let secret = cluster
        .cli()
        .get_json("secret", "db", "demo")
        .await
        .expect("the Secret reads");
    assert_eq!(secret["data"]["password"], "czNjcmV0", "{secret}");
    // Neither the value nor its base64 is anywhere in etcd's files.
    let etcd_dir = cluster.state_dir().join("etcd");
    for needle in ["s3cret", "czNjcmV0"] {
        let found = files_containing(&etcd_dir, needle);
        assert!(found.is_empty(), "{needle} in {found:?}");
    }
    // etcd does hold the Secret, as ciphertext.
    assert!(
        !files_containing(&etcd_dir, "k8s:enc:aesgcm:v1:key1:").is_empty(),
        "no encrypted value in {}",
        etcd_dir.display()
    );

    // A Secret encrypted for another cluster: the commit is rejected, and
    // everything keeps running.
    let stranger = encrypted_secrets::generate_identity();
    let recipient = encrypted_secrets::parse_recipient(&stranger.recipient).expect("recipient");
    let foreign =
        encrypted_secrets::encrypt_text(FOREIGN, "foreign.yaml", &[recipient]).expect("encrypt");
    cluster.repo().write("foreign.yaml", &foreign);
    cluster.repo().commit("A Secret for another cluster");
    let (_, history, _) = until("the foreign Secret rejected", WAIT, || async {
        let out = cluster.cli().run(&["history", "-n", "1"]).await;
        (out.1.contains("rejected") && out.1.contains("foreign.yaml"))
            .then_some(out.clone())
            .ok_or(out.1)
    })
    .await;
    assert!(history.contains("no identity matches"), "{history}");
    assert!(cluster
        .cli()
        .get_json("secret", "foreign", "demo")
        .await
        .is_err());
    cluster.repo().remove("foreign.yaml");
    cluster.repo().commit("Remove the foreign Secret");

    // What a container writes to its termination log is its message.
    cluster.commit_manifest("farewell.yaml", FAREWELL, "A pod that says why it stopped");
    let terminated = until("farewell to stop with its message", WAIT, || async {
        let (code, out, err) = cluster
            .cli()
            .run(&["get", "pod", "farewell", "-n", "demo", "-o", "json"])
            .await;
        if code != 0 {
            return Err(err);
        }
        let p: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let states: Vec<Value> = ["app", "crash"]
            .iter()
            .map(|name| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .and_then(|all| all.iter().find(|c| c["name"] == *name))
                    .map(|c| c["state"]["terminated"].clone())
                    .unwrap_or_default()
            })
            .collect();
        states
            .iter()
            .all(|t| t["message"].is_string())
            .then_some(states)
            .ok_or(out)
    })
    .await;
    assert_eq!(terminated[0]["message"], "disk full\n");
    assert_eq!(terminated[0]["exitCode"], 3);
    // With FallbackToLogsOnError, a failed container that wrote no
    // message has the end of its log as one.
    assert_eq!(terminated[1]["message"], "starting\npanic: no config\n");
    assert_eq!(terminated[1]["exitCode"], 2);

    cluster.stop().await;
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
