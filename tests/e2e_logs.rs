//! `commitd logs` end to end, with real containers under `commitd up`: a
//! pod that prints known lines to stdout and stderr and exits, restarted
//! again and again, read back as `kubectl logs` would show it — all lines,
//! `--tail`, `--timestamps`, `--previous` (the instance before the
//! restart, with its own run line), `-f` (ends when the instance stops),
//! and kubectl's messages for a wrong container, a missing pod and a
//! container that never started. `commitd logs` reads through the node
//! agent's read-only HTTP port; the test also speaks to that port itself,
//! at the address and port the Node object publishes: a plain GET, and a
//! follow that streams lines printed after it started and ends when the
//! container stops.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
---
apiVersion: v1
kind: Pod
metadata:
  name: ticker
  namespace: demo
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'i=0; while [ $i -lt 15 ]; do i=$((i+1)); echo tick-$i; sleep 1; done']
"#;

/// The last line each instance of `ticker` prints before it exits, a
/// line a second.
const LAST_TICK: &str = "tick-15";

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

/// Where the node agent serves logs, as the Node object publishes it:
/// `InternalIP:status.daemonEndpoints.kubeletEndpoint.Port`.
async fn agent_address(cluster: &Cluster) -> Result<String, String> {
    let node = cluster
        .cli()
        .get_json("node", NETWORK.node_name, "default")
        .await?;
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| format!("no InternalIP: {}", node["status"]))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .ok_or_else(|| format!("no kubelet port: {}", node["status"]))?;
    Ok(format!("{ip}:{port}"))
}

/// A raw `GET path` over HTTP/1.1 to `addr`, read to the end: the status
/// code and the body. A chunked body must end with the last (empty)
/// chunk: the log was streamed, and ended cleanly.
async fn raw_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {path} did not end within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, mut rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {text:?}"))?;
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((code, rest.to_string()));
    }
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| format!("cut short after {body:?}"))?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("{size:?}: {e}"))?;
        if size == 0 {
            return Ok((code, body));
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("short chunk after {body:?}"))?;
        body.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or_else(|| format!("no chunk end after {body:?}"))?;
    }
}

/// Checks a followed `ticker` log with timestamps: it went on to the
/// instance's last line, and at least one line was written after
/// `started` (so it was streamed, not only what the file held).
fn followed_after(out: &str, started: chrono::DateTime<chrono::Utc>) -> Result<(), String> {
    let mut later = 0;
    let mut last = "";
    for line in out.lines() {
        let (time, text) = line.split_once(' ').ok_or(format!("{line:?}"))?;
        let time =
            chrono::DateTime::parse_from_rfc3339(time).map_err(|e| format!("{line:?}: {e}"))?;
        if time > started {
            later += 1;
        }
        last = text;
    }
    if last != LAST_TICK {
        return Err(format!("the follow ended before {LAST_TICK}: {out:?}"));
    }
    if later == 0 {
        return Err(format!("no line printed after the follow began: {out:?}"));
    }
    Ok(())
}

/// Waits until `ticker` runs an instance.
async fn ticker_running(cluster: &Cluster) -> Result<(), String> {
    let p = cluster.cli().get_json("pod", "ticker", "demo").await?;
    p["status"]["containerStatuses"][0]["state"]["running"]
        .is_object()
        .then_some(())
        .ok_or_else(|| format!("ticker is not running: {}", p["status"]))
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

    // The node agent's port itself, where the Node says it is: a plain GET
    // returns what the container printed.
    let addr = agent_address(&cluster)
        .await
        .expect("the node publishes its agent's address");
    assert!(
        addr.ends_with(&format!(":{}", cluster.read_only_port)),
        "{addr} is not on --read-only-port {}",
        cluster.read_only_port
    );
    until("a raw GET to return chatty's log", WAIT, || async {
        let (code, body) = raw_get(&addr, "/containerLogs/demo/chatty/app", WAIT).await?;
        if code != 200 {
            return Err(format!("{code}: {body}"));
        }
        complete_run(&body)
    })
    .await;
    let (code, body) = raw_get(&addr, "/containerLogs/demo/nope/app", WAIT)
        .await
        .expect("GET");
    assert_eq!(code, 404, "{body}");

    // A follow over the network streams what the container prints after
    // it began, and ends when the container stops; so does `commitd logs
    // -f`, on the same instance. Tried again when they began too late in
    // an instance to see a line printed after them.
    until("follows to stream ticker to its end", WAIT, || async {
        ticker_running(&cluster).await?;
        let started = chrono::Utc::now();
        let limit = Duration::from_secs(40);
        let raw = raw_get(
            &addr,
            "/containerLogs/demo/ticker/app?follow=true&timestamps=true",
            limit,
        );
        let commands = cluster.cli();
        let cli = commands.run(&["logs", "ticker", "-n", "demo", "-f", "--timestamps"]);
        let (raw, cli) = tokio::join!(raw, tokio::time::timeout(limit, cli));
        let (code, body) = raw?;
        if code != 200 {
            return Err(format!("{code}: {body}"));
        }
        followed_after(&body, started).map_err(|e| format!("raw follow: {e}"))?;
        let (code, out, err) =
            cli.map_err(|_| "logs -f did not end when ticker stopped".to_string())?;
        if code != 0 {
            return Err(format!("logs -f exited {code}: {err}"));
        }
        followed_after(&out, started).map_err(|e| format!("logs -f: {e}"))
    })
    .await;

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
