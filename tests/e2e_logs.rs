//! `commitd logs` end to end, with real containers under `commitd up`: a
//! pod that prints known lines to stdout and stderr and exits, restarted
//! again and again, read back as `kubectl logs` would show it — all lines,
//! `--tail`, `--timestamps`, `--previous` (the instance before the
//! restart, with its own run line), `-f` (ends when the instance stops),
//! and kubectl's messages for a wrong container, a missing pod and a
//! container that never started.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdlog0",
    pod_cidr: "10.222.0.0/24",
    service_cidr: "10.100.22.0/24",
    node_name: "log-node",
    dns_port: 10222,
    proxy_table: "cdlog",
};

/// Prints `first` (stdout), `oops` (stderr), then a second later a line
/// unique to the instance, and exits 1 two seconds after: restarted with
/// back-off. The pause keeps `oops` before the run line in the file (the
/// two streams are copied separately). `unpullable` never starts.
const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: chatty
  namespace: demo
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'echo first; echo oops >&2; sleep 1; echo run-$(cat /proc/sys/kernel/random/uuid | cut -c1-8); sleep 2; exit 1']
---
apiVersion: v1
kind: Pod
metadata:
  name: unpullable
  namespace: demo
spec:
  containers:
    - name: app
      image: REGISTRY/commitd/missing:1
"#;

fn restarts(pod: &Value) -> u64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// `commitd logs chatty -n demo ARGS...`, which must succeed.
async fn logs(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["logs", "chatty", "-n", "demo"];
    all.extend_from_slice(args);
    let (code, out, err) = cluster.cli().run(&all).await;
    if code != 0 {
        return Err(format!("logs {args:?} exited {code}: {err}"));
    }
    Ok(out)
}

/// The run line of one instance's whole log, once the instance printed
/// all three lines: `first` and `run-…` in order, `oops` before `run-…`.
fn complete_run(out: &str) -> Result<String, String> {
    let lines: Vec<&str> = out.lines().collect();
    match lines.as_slice() {
        [a, b, run]
            if run.starts_with("run-") && {
                let mut ab = [*a, *b];
                ab.sort_unstable();
                ab == ["first", "oops"]
            } =>
        {
            Ok(run.to_string())
        }
        _ => Err(format!("{out:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_current_previous_and_tail() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    // The examples' web pods run: the repository exists, pods start.
    cluster.wait_running(2, "hello from").await;

    cluster.commit_manifest(
        "logs.yaml",
        PODS,
        "A pod that talks and exits, and one that never starts",
    );

    // All of an instance's lines, stdout and stderr, nothing else.
    let out = until("chatty's log to hold all its lines", WAIT, || async {
        complete_run(&logs(&cluster, &[]).await?)
    })
    .await;
    assert!(out.starts_with("run-") && out.len() == 12, "{out}");

    // --tail 1: the last line only; --tail 0 nothing.
    until("--tail 1 to print the run line", WAIT, || async {
        let out = logs(&cluster, &["--tail", "1"]).await?;
        (out.lines().count() == 1 && out.starts_with("run-") && out.ends_with('\n'))
            .then_some(())
            .ok_or(format!("{out:?}"))
    })
    .await;
    assert_eq!(logs(&cluster, &["--tail=0"]).await, Ok(String::new()));

    // --timestamps: each line after the time it was written.
    let out = logs(&cluster, &["--timestamps"]).await.expect("timestamps");
    for line in out.lines() {
        let (time, text) = line.split_once(' ').expect("time and text");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "{line:?}"
        );
        assert!(
            ["first", "oops"].contains(&text) || text.starts_with("run-"),
            "{line:?}"
        );
    }

    // Once restarted, --previous shows the instance before, whose run line
    // differs from the current one. Both are read at one restart count.
    until("--previous to show the instance before", WAIT, || async {
        let before = restarts(&cluster.cli().get_json("pod", "chatty", "demo").await?);
        if before < 1 {
            return Err("not restarted yet".into());
        }
        let current = complete_run(&logs(&cluster, &[]).await?)?;
        let previous = complete_run(&logs(&cluster, &["--previous"]).await?)?;
        let after = restarts(&cluster.cli().get_json("pod", "chatty", "demo").await?);
        if before != after {
            return Err(format!("restarted while reading ({before} -> {after})"));
        }
        (current != previous)
            .then_some(())
            .ok_or(format!("both {current}"))
    })
    .await;
    let (code, out, _) = cluster
        .cli()
        .run(&["logs", "pod/chatty", "-n", "demo", "-p", "--tail", "2"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out:?}");

    // -f on a running instance ends when it exits (within seconds).
    until("chatty to run again", WAIT, || async {
        let p = cluster.cli().get_json("pod", "chatty", "demo").await?;
        p["status"]["containerStatuses"][0]["state"]["running"]
            .is_object()
            .then_some(())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    let followed = tokio::time::timeout(Duration::from_secs(30), logs(&cluster, &["-f"]))
        .await
        .expect("-f ends when the container exits")
        .expect("-f");
    // It printed the whole instance, not just what was there at the start.
    assert!(complete_run(&followed).is_ok(), "{followed:?}");

    // kubectl's messages.
    let (code, out, err) = cluster
        .cli()
        .run(&["logs", "chatty", "-n", "demo", "-c", "nope"])
        .await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "error: container nope is not valid for pod chatty\n");
    let (code, _, err) = cluster.cli().run(&["logs", "nope", "-n", "demo"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "Error from server (NotFound): pods \"nope\" not found\n"
    );
    until("unpullable to say why it has no log", WAIT, || async {
        let (code, _, err) = cluster
            .cli()
            .run(&["logs", "unpullable", "-n", "demo"])
            .await;
        let expected = "Error from server (BadRequest): container \"app\" in pod \"unpullable\" \
                        is waiting to start: ";
        (code == 1 && err.starts_with(expected) && err.contains("ImagePull"))
            .then_some(())
            .ok_or(format!("{code}: {err}"))
    })
    .await;

    cluster.stop().await;
}
