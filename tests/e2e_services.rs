//! Services end to end, through every real layer: `commitd up` with the
//! examples (a Deployment of two web pods and a ClusterIP Service), then
//! commits that add a client pod, a headless, a NodePort and an
//! endpoint-less Service, scale down, and remove a Service. The test looks
//! only where a user would: the VIP and node port from the host, HTTP
//! and `nslookup` inside a pod, the read-only commands, and `nft`.

mod support;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::Duration;

use commitd_nodeagent::cri::Cri;
use commitd_nodeagent::proxy::nft;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::http_get;
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdsvc0",
    pod_cidr: "10.220.0.0/24",
    service_cidr: "10.100.20.0/24",
    node_name: "svc-node",
    dns_port: 10220,
    proxy_table: "cdsvc",
};
const NODE_PORT: u16 = 30220;

/// What the second commit adds: a client pod to look from, a headless
/// Service, a NodePort Service and a Service that selects nothing.
const MORE: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
spec:
  containers:
    - name: client
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
  namespace: demo
spec:
  clusterIP: None
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: web-np
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - port: 8080
      targetPort: 80
      nodePort: NODE_PORT
---
apiVersion: v1
kind: Service
metadata:
  name: nothing
  namespace: demo
spec:
  selector: {app: nothing}
  ports:
    - port: 80
"#;

async fn cluster_ip(cluster: &Cluster, name: &str) -> String {
    let svc = until(&format!("service {name}"), WAIT, || async {
        cluster.cli().get_json("service", name, "demo").await
    })
    .await;
    svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no clusterIP: {svc}"))
        .to_string()
}

/// The pod name in a page (`<h1>hello from NAME</h1>…`).
fn server_of(page: &str) -> String {
    page.split("hello from ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .to_string()
}

/// `count` requests to `addr`; every one must succeed. Returns the pods
/// that answered.
async fn spread(addr: &str, count: usize) -> BTreeSet<String> {
    let mut servers = BTreeSet::new();
    for i in 0..count {
        match http_get(addr).await {
            Ok(page) => {
                servers.insert(server_of(&page));
            }
            Err(e) => panic!(
                "request {i} to {addr} failed: {e}\nrules:\n{}",
                table().await
            ),
        }
    }
    servers
}

/// Runs a command in the client pod's container; its output.
async fn exec(cri: &Cri, cmd: &[&str]) -> Result<String, String> {
    exec_ok(cri, "client", cmd).await
}

/// `GET http://HOST/` from inside the client pod. busybox's `nc` resolves
/// the name through the pod's resolv.conf (the demo image's static
/// busybox `wget` crashes on any URL, a bug of that build).
async fn get_from_client(cri: &Cri, host: &str) -> Result<String, String> {
    let script =
        format!("printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 3 {host} 80");
    let response = exec(cri, &["sh", "-c", &script]).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(format!("unexpected response: {response:?}")),
    }
}

async fn table() -> String {
    nft::list_table(NETWORK.proxy_table)
        .await
        .expect("nft list table")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_balance_resolve_and_follow_their_pods() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    let pods = cluster.wait_running(2, "hello from").await;
    let pod_names: BTreeSet<String> = pods.iter().map(|(n, _)| n.clone()).collect();

    // The examples' Service: once both pods are ready and programmed
    // (Running is not Ready: the readiness probe decides), 200 requests
    // from the node to its VIP all succeed and reach both pods. Endpoints
    // sit in the slot maps as `VIP . tcp . 80 : IP . PORT`.
    let vip = cluster_ip(&cluster, "web").await;
    assert!(vip.starts_with("10.100.20."), "{vip}");
    let vip_addr = format!("{vip}:80");
    let pod_ips = until("both endpoints of web", WAIT, || async {
        let ips = cluster.cli().endpoint_ips("web", "demo").await?;
        (ips.len() == 2)
            .then_some(ips.clone())
            .ok_or(format!("{ips:?}"))
    })
    .await;
    let programmed = |t: &str, ip: &str| t.contains(&format!(": {ip} . "));
    until("both endpoints in the rules", WAIT, || async {
        let t = table().await;
        pod_ips
            .iter()
            .all(|ip| programmed(&t, ip))
            .then_some(())
            .ok_or(t)
    })
    .await;
    assert_eq!(spread(&vip_addr, 200).await, pod_names);

    // More Services and a client pod.
    let more = MORE.replace("NODE_PORT", &NODE_PORT.to_string());
    cluster.commit_manifest("more.yaml", &more, "Client pod and more services");
    let cri = cluster.cri().await;

    // From inside a pod, by short and full DNS name; the pod's
    // environment names the Services that existed when it started.
    let page = until("GET http://web/ from the client pod", WAIT, || {
        get_from_client(&cri, "web")
    })
    .await;
    assert!(pod_names.contains(&server_of(&page)), "{page}");
    let page = get_from_client(&cri, "web.demo.svc.cluster.local")
        .await
        .expect("GET by the full name");
    assert!(pod_names.contains(&server_of(&page)), "{page}");
    let env = exec(&cri, &["env"]).await.expect("env");
    assert!(
        env.lines().any(|l| l == format!("WEB_SERVICE_HOST={vip}")),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "WEB_SERVICE_PORT=80"), "{env}");

    // Headless: one record per ready pod.
    until("headless lookup to return the pod IPs", WAIT, || async {
        let out = exec(&cri, &["nslookup", "web-headless.demo.svc.cluster.local"]).await?;
        pod_ips
            .iter()
            .all(|ip| out.contains(ip.as_str()))
            .then_some(())
            .ok_or(out)
    })
    .await;

    // NodePort on 127.0.0.1.
    let node_port = format!("127.0.0.1:{NODE_PORT}");
    until("the node port to answer", WAIT, || http_get(&node_port)).await;
    assert_eq!(spread(&node_port, 20).await.len(), 2);

    // A Service without ready endpoints refuses at once.
    let nothing = format!("{}:80", cluster_ip(&cluster, "nothing").await);
    until("the endpoint-less service to refuse", WAIT, || async {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&nothing),
        )
        .await;
        match attempt {
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The read-only commands show it all.
    let (code, listing, _) = cluster
        .cli()
        .run(&["get", "services,endpoints", "-n", "demo"])
        .await;
    assert_eq!(code, 0);
    for expected in [
        format!("{NODE_PORT}/TCP"),
        vip.clone(),
        "web-headless".into(),
    ]
    .iter()
    .chain(pod_ips.iter())
    {
        assert!(
            listing.contains(expected.as_str()),
            "{expected} missing:\n{listing}"
        );
    }

    // Scale to one: once the change is programmed, no request fails and
    // all reach the remaining pod.
    cluster
        .repo()
        .edit("web.yaml", "replicas: 2", "replicas: 1");
    cluster.repo().commit("Scale web to 1");
    let remaining = until("one endpoint left in web", WAIT, || async {
        let ips = cluster.cli().endpoint_ips("web", "demo").await?;
        (ips.len() == 1)
            .then_some(ips.clone())
            .ok_or(format!("{ips:?}"))
    })
    .await;
    let gone: Vec<String> = pod_ips.difference(&remaining).cloned().collect();
    until("the removed pod to leave the rules", WAIT, || async {
        let t = table().await;
        gone.iter()
            .all(|ip| !programmed(&t, ip))
            .then_some(())
            .ok_or(t)
    })
    .await;
    let servers = spread(&vip_addr, 100).await;
    assert_eq!(servers.len(), 1, "{servers:?}");

    // An element deleted by hand comes back.
    let service_ips = || async {
        nft::run(
            &["list", "map", "ip", NETWORK.proxy_table, "service-ips"],
            None,
        )
        .await
        .unwrap_or_else(|e| e.to_string())
    };
    let element = format!("{vip} . tcp . 80");
    assert!(service_ips().await.contains(&element));
    nft::run(
        &[
            "delete",
            "element",
            "ip",
            NETWORK.proxy_table,
            "service-ips",
            &format!("{{ {element} }}"),
        ],
        None,
    )
    .await
    .expect("delete the VIP's element by hand");
    until("the deleted element to come back", WAIT, || async {
        let t = service_ips().await;
        t.contains(&element).then_some(()).ok_or(t)
    })
    .await;
    assert_eq!(spread(&vip_addr, 10).await, servers);

    // Deleting a Service removes its rules.
    let without_np = more
        .split("---\n")
        .filter(|doc| !doc.contains("name: web-np"))
        .collect::<Vec<_>>()
        .join("---\n");
    cluster.repo().write("more.yaml", &without_np);
    cluster.repo().commit("Remove the NodePort service");
    until("the node port to leave the rules", WAIT, || async {
        let t = table().await;
        (!t.contains(&NODE_PORT.to_string())).then_some(()).ok_or(t)
    })
    .await;

    // Stopping the cluster removes its table.
    cluster.stop().await;
    assert_eq!(
        nft::list_table(NETWORK.proxy_table).await.expect("nft"),
        None,
        "the table outlived the cluster"
    );
}
