//! The service proxy against the real kernel: nftables rules programmed in
//! network namespaces the test creates, real TCP and UDP traffic through
//! them, and (for the loop) Service and Endpoints objects in a real etcd.
//!
//! Topology per test: a "node" namespace (where the proxy and `nft` run,
//! and clients connect from) joined by a veth pair to a "pod" namespace
//! holding two endpoint addresses, each with a listener that answers with
//! its name and the peer address it sees. Needs root (CI runs as root);
//! skipped with a message otherwise. Every namespace is deleted at the end.

mod support;

use support::etcd::{init_tracing, with_etcd};
use support::is_root;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::k8s_openapi::api::core::v1::{Endpoints, Service};
use commitd_api::reflector::reflect;
use commitd_api::Store;
use commitd_nodeagent::proxy::{
    self, nft, DnsRedirect, Endpoint, Model, Protocol, Proxier, ProxyConfig, ServicePort,
    ServicePortKey, SyncKind,
};
use support::wait::until;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(20);
/// Node side of the veth, and the two endpoint addresses in the pod side.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const EP_A: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const EP_B: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 3);
const EP_PORT: u16 = 8080;
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DNS_PORT: u16 = 1053;

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Result<Netns> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns(name);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh(&["ip", "netns", "del", &self.0]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A thread that has entered a network namespace and runs futures there on
/// a current-thread runtime: sockets they open (when first polled) and
/// processes they spawn (`nft`) live in that namespace.
struct NsRuntime {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn start(netns: &str) -> Result<NsRuntime> {
        let path = format!("/run/netns/{netns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<tokio::runtime::Runtime> {
                let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            let rt = match setup() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(async move {
                while let Some(job) = rx.recv().await {
                    tokio::spawn(job());
                }
            });
        });
        ready_rx
            .recv()
            .context("namespace thread died before it was ready")??;
        Ok(NsRuntime {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Starts `fut` in the namespace; the receiver gets its output.
    fn spawn<T, F>(&self, fut: F) -> oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(fut.await);
            })
        });
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        rx
    }

    /// Runs `fut` in the namespace and returns its output.
    async fn run<T, F>(&self, fut: F) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        self.spawn(fut).await.expect("namespace runtime stopped")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node and pod namespaces with listeners "a" and "b" on the pod side.
/// Field order is drop order: runtimes stop before their namespaces go.
struct Lab {
    node: NsRuntime,
    pod: NsRuntime,
    _node_ns: Netns,
    _pod_ns: Netns,
}

impl Lab {
    async fn start(tag: &str) -> Result<Lab> {
        let base = format!("cdproxy-{}-{tag}", std::process::id());
        let node_ns = Netns::create(format!("{base}-n"))?;
        let pod_ns = Netns::create(format!("{base}-p"))?;
        let (n, p) = (node_ns.0.as_str(), pod_ns.0.as_str());
        sh(&[
            "ip", "-n", n, "link", "add", "cdpx0", "type", "veth", "peer", "name", "eth0", "netns",
            p,
        ])?;
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "10.231.0.1/24",
            "dev",
            "cdpx0",
        ])?;
        sh(&["ip", "-n", n, "link", "set", "cdpx0", "up"])?;
        // Host → VIP traffic needs a route to leave by before NAT.
        sh(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "cdpx0",
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        sh(&["ip", "-n", p, "addr", "add", "10.231.0.2/24", "dev", "eth0"])?;
        sh(&["ip", "-n", p, "addr", "add", "10.231.0.3/24", "dev", "eth0"])?;
        sh(&["ip", "-n", p, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "-n",
            p,
            "route",
            "add",
            "default",
            "via",
            "10.231.0.1",
        ])?;
        let lab = Lab {
            node: NsRuntime::start(n)?,
            pod: NsRuntime::start(p)?,
            _node_ns: node_ns,
            _pod_ns: pod_ns,
        };
        for (name, ip) in [("a", EP_A), ("b", EP_B)] {
            let listener = lab
                .pod
                .run(TcpListener::bind(SocketAddr::from((ip, EP_PORT))))
                .await
                .with_context(|| format!("listening on {ip}:{EP_PORT}"))?;
            drop(lab.pod.spawn(serve(listener, name)));
            let socket = lab
                .pod
                .run(UdpSocket::bind(SocketAddr::from((ip, EP_PORT))))
                .await
                .with_context(|| format!("listening on udp {ip}:{EP_PORT}"))?;
            drop(lab.pod.spawn(answer_udp(socket, name)));
        }
        Ok(lab)
    }

    /// Connects from the node namespace and returns the listener's greeting
    /// (`"<name> <peer ip>"`).
    async fn fetch(&self, addr: SocketAddr) -> io::Result<String> {
        self.node.run(greeting(addr, None)).await
    }

    /// Lists the table from the node namespace.
    async fn table(&self, table: &str) -> Option<String> {
        let table = table.to_string();
        self.node
            .run(async move { nft::list_table(&table).await })
            .await
            .expect("nft list table")
    }

    async fn nft(&self, args: &[&str]) -> Result<()> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.node
            .run(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                nft::run(&args, None).await.map(|_| ())
            })
            .await?;
        Ok(())
    }
}

/// Greets every connection with `"<name> <peer ip>\n"`, then echoes lines.
async fn serve(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            if w.write_all(format!("{name} {}\n", peer.ip()).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Answers every datagram with `name`.
async fn answer_udp(socket: UdpSocket, name: &'static str) {
    let mut buf = [0u8; 512];
    while let Ok((_, peer)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(name.as_bytes(), peer).await;
    }
}

/// Connects (from `source` if given) and reads the greeting line. A
/// time-out is an error of kind `TimedOut`.
async fn greeting(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<String> {
    let attempt = async {
        let stream = match source {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let s = TcpSocket::new_v4()?;
                s.bind(SocketAddr::from((ip, 0)))?;
                s.connect(addr).await?
            }
        };
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
}

/// Which listeners `n` connections to `addr` reach.
async fn spread(lab: &Lab, addr: SocketAddr, n: usize) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let g = lab.fetch(addr).await.map_err(|e| format!("{addr}: {e}"))?;
        seen.insert(g.split(' ').next().unwrap_or_default().to_string());
    }
    Ok(seen)
}

fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 96, 0, last), port))
}

fn service(name: &str, json_spec: serde_json::Value) -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": NS, "name": name},
        "spec": json_spec,
    }))?)
}

fn endpoints(name: &str, port_name: &str, ips: &[Ipv4Addr]) -> Result<Endpoints> {
    let subsets = if ips.is_empty() {
        serde_json::json!([])
    } else {
        let addrs: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip.to_string()}))
            .collect();
        serde_json::json!([{
            "addresses": addrs,
            "notReadyAddresses": [{"ip": "10.231.0.99"}],
            "ports": [{"name": port_name, "port": EP_PORT, "protocol": "TCP"}],
        }])
    };
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"namespace": NS, "name": name},
        "subsets": subsets,
    }))?)
}

/// The whole loop: objects in etcd → reflector caches → `proxy::run` →
/// nftables in the node namespace → real connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_loop_programs_services_from_etcd() -> Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to create network namespaces and program nftables");
        return Ok(());
    }
    with_etcd(run_loop_scenario).await
}

async fn run_loop_scenario(store: Store) -> Result<()> {
    let lab = Lab::start("loop").await?;
    let table = "cdproxytest";

    store
        .create(service(
            "web",
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.20",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
        )?)
        .await?;
    store
        .create(endpoints("web", "http", &[EP_A, EP_B])?)
        .await?;
    store
        .create(service(
            "empty",
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.21",
                "ports": [{"port": 80, "nodePort": 30081, "protocol": "TCP"}]}),
        )?)
        .await?;
    store.create(endpoints("empty", "", &[])?).await?;
    store
        .create(service(
            "headless",
            serde_json::json!({"clusterIP": "None", "ports": [{"port": 80, "protocol": "TCP"}]}),
        )?)
        .await?;
    store.create(endpoints("headless", "", &[EP_A])?).await?;
    store
        .create(service(
            "udp",
            serde_json::json!({"clusterIP": "10.96.0.23",
                "ports": [{"port": 5353, "protocol": "UDP"}]}),
        )?)
        .await?;
    let udp_endpoints = |ips: &[Ipv4Addr]| -> Result<Endpoints> {
        let addrs: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip.to_string()}))
            .collect();
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"namespace": NS, "name": "udp"},
            "subsets": [{"addresses": addrs,
                "ports": [{"port": EP_PORT, "protocol": "UDP"}]}],
        }))?)
    };
    store.create(udp_endpoints(&[EP_A, EP_B])?).await?;

    // The caches live on this runtime; the loop runs in the node namespace.
    let cancel = CancellationToken::new();
    let services = reflect::<Service>(store.clone(), cancel.clone());
    let eps = reflect::<Endpoints>(store.clone(), cancel.clone());
    let config = ProxyConfig {
        table: table.to_string(),
        cluster_cidr: Some("10.231.0.0/24".parse()?),
        dns: Some(DnsRedirect {
            vip: DNS_VIP,
            port: DNS_PORT,
        }),
        resync_interval: Duration::from_secs(2),
    };
    let proxy_cancel = CancellationToken::new();
    let done = lab
        .node
        .spawn(proxy::run(services, eps, config, proxy_cancel.clone()));
    let dns_echo = lab
        .node
        .run(UdpSocket::bind(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            DNS_PORT,
        ))))
        .await?;
    drop(lab.node.spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = dns_echo.recv_from(&mut buf).await {
            let mut reply = b"echo ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = dns_echo.send_to(&reply, peer).await;
        }
    }));

    // The VIP reaches both endpoints.
    until("the VIP to reach both endpoints", DEADLINE, || async {
        let seen = spread(&lab, vip(20, 80), 16).await?;
        (seen.len() == 2)
            .then_some(())
            .ok_or(format!("reached {seen:?}"))
    })
    .await;

    // NodePort on 127.0.0.1 and on the node's address; masqueraded, so the
    // endpoint sees the node, not 127.0.0.1.
    for addr in [
        SocketAddr::from((Ipv4Addr::LOCALHOST, 30080)),
        SocketAddr::from((NODE_IP, 30080)),
    ] {
        let g = lab
            .fetch(addr)
            .await
            .with_context(|| format!("node port {addr}"))?;
        assert!(g.ends_with(" 10.231.0.1"), "{addr}: {g}");
    }

    // No ready endpoints: refused at once, by VIP and by node port.
    for addr in [vip(21, 80), SocketAddr::from((Ipv4Addr::LOCALHOST, 30081))] {
        let err = lab.fetch(addr).await.expect_err("no endpoints must refuse");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionRefused,
            "{addr}: {err}"
        );
    }

    // Headless services get no rules; the DNS VIP is redirected locally.
    let listing = lab.table(table).await.context("table exists")?;
    assert!(!listing.contains("headless"), "{listing}");
    let reply = until(
        "the DNS VIP to reach the local DNS port",
        DEADLINE,
        || async {
            lab.node
                .run(async {
                    let s = UdpSocket::bind("0.0.0.0:0")
                        .await
                        .map_err(|e| e.to_string())?;
                    s.send_to(b"q", SocketAddr::from((DNS_VIP, 53)))
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut buf = [0u8; 64];
                    let (n, from) =
                        tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf))
                            .await
                            .map_err(|_| "no reply".to_string())?
                            .map_err(|e| e.to_string())?;
                    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
                })
                .await
        },
    )
    .await;
    assert_eq!(reply.0, "echo q");
    assert_eq!(
        reply.1,
        SocketAddr::from((DNS_VIP, 53)),
        "reply comes from the VIP"
    );

    // UDP: a client that keeps its source port stays on one endpoint
    // (conntrack); once that endpoint is taken out, its next datagram
    // reaches the other one, although the first still listens.
    let client = lab
        .node
        .run(async {
            let s = UdpSocket::bind("0.0.0.0:0").await?;
            s.connect(vip(23, 5353)).await?;
            s.into_std()
        })
        .await?;
    let client = UdpSocket::from_std(client)?;
    let ask = || async {
        client.send(b"q").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf))
            .await
            .map_err(|_| "no reply".to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = until("the UDP service to answer", DEADLINE, ask).await;
    for _ in 0..5 {
        assert_eq!(ask().await.map_err(anyhow::Error::msg)?, first, "same flow");
    }
    let (gone, other) = if first == "a" {
        (EP_A, "b")
    } else {
        (EP_B, "a")
    };
    let left = if gone == EP_A { EP_B } else { EP_A };
    store
        .modify::<Endpoints, _>(Some(NS), "udp", |e| {
            e.subsets = udp_endpoints(&[left]).expect("endpoints").subsets;
            true
        })
        .await?;
    until(
        "the flow to move to the remaining endpoint",
        DEADLINE,
        || async {
            let name = ask().await?;
            (name == other).then_some(()).ok_or(name)
        },
    )
    .await;

    // An endpoint taken out is no longer reached.
    store
        .modify::<Endpoints, _>(Some(NS), "web", |e| {
            if let Some(s) = e.subsets.as_mut().and_then(|s| s.first_mut()) {
                s.addresses = Some(vec![serde_json::from_value(
                    serde_json::json!({"ip": EP_A.to_string()}),
                )
                .expect("address")]);
            }
            true
        })
        .await?;
    until("only endpoint a to be reached", DEADLINE, || async {
        let seen = spread(&lab, vip(20, 80), 12).await?;
        (seen.len() == 1 && seen.contains("a"))
            .then_some(())
            .ok_or(format!("reached {seen:?}"))
    })
    .await;

    // Hairpin: endpoint a reaching itself through the VIP is masqueraded
    // (without it the pod would see a packet from its own address).
    let g = lab.pod.run(greeting(vip(20, 80), Some(EP_A))).await?;
    assert_eq!(g, "a 10.231.0.1");

    // A map and a chain flushed by hand come back with the periodic
    // resync.
    let endpoint = "10.96.0.20 . tcp . 80 : 10.231.0.2 . 8080";
    lab.nft(&["flush", "map", "ip", table, "endpoint-slot-0"])
        .await?;
    lab.nft(&["flush", "chain", "ip", table, "dnat-slot-0"])
        .await?;
    let listing = lab.table(table).await.context("table exists")?;
    assert!(!listing.contains(endpoint), "{listing}");
    until(
        "the periodic resync to restore the flushed map and chain",
        DEADLINE,
        || async {
            let listing = lab.table(table).await.unwrap_or_default();
            (listing.contains(endpoint) && listing.contains("map @endpoint-slot-0"))
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;
    lab.fetch(vip(20, 80))
        .await
        .context("VIP after the resync")?;

    // Deleting the Service removes its elements, and the chains and maps
    // no other service uses (it was the only one with node ports).
    store.delete::<Service>(Some(NS), "web", None).await?;
    until("the deleted service's rules to go", DEADLINE, || async {
        let listing = lab.table(table).await.unwrap_or_default();
        if listing.contains("10.96.0.20")
            || listing.contains("30080")
            || listing.contains("nodeport-")
        {
            Err(listing)
        } else {
            Ok(())
        }
    })
    .await;

    // Cancelled, the loop returns and leaves the table in place.
    proxy_cancel.cancel();
    tokio::time::timeout(DEADLINE, done)
        .await
        .context("proxy did not stop")?
        .context("proxy task dropped")??;
    let listing = lab.table(table).await.context("table left in place")?;
    assert!(listing.contains("10.96.0.21"), "{listing}");
    cancel.cancel();

    lab.node
        .run(async move { proxy::remove_table(table).await })
        .await?;
    assert!(lab.table(table).await.is_none(), "table removed");
    Ok(())
}

fn port(last: u8, affinity: Option<u32>, eps: &[Ipv4Addr]) -> ServicePort {
    ServicePort {
        cluster_ip: Ipv4Addr::new(10, 96, 0, last),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        affinity_timeout: affinity,
        endpoints: eps
            .iter()
            .map(|ip| Endpoint {
                ip: *ip,
                port: EP_PORT,
            })
            .collect(),
    }
}

/// The `Proxier` driven directly, as a benchmark would: ClientIP affinity,
/// incremental changes, and a full rebuild (an agent restart) that keeps an
/// established connection working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxier_affinity_and_rebuild_keep_connections() -> Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to create network namespaces and program nftables");
        return Ok(());
    }
    init_tracing();
    let lab = Lab::start("direct").await?;
    let config = ProxyConfig {
        table: "cdproxydirect".into(),
        cluster_cidr: Some("10.231.0.0/24".parse()?),
        ..ProxyConfig::default()
    };
    let sticky = ServicePortKey::new(NS, "sticky", "");
    let plain = ServicePortKey::new(NS, "plain", "");
    let mut model = Model::new();
    model.insert(sticky.clone(), port(30, Some(600), &[EP_A, EP_B]));
    model.insert(plain.clone(), port(31, None, &[EP_A, EP_B]));

    let proxier_config = config.clone();
    let first = model.clone();
    let mut proxier = lab
        .node
        .run(async move {
            let mut p = Proxier::new(&proxier_config)?;
            let stats = p.sync(first, SyncKind::Incremental).await?;
            anyhow::ensure!(stats.kind == SyncKind::Full, "first sync must be full");
            Ok::<_, anyhow::Error>(p)
        })
        .await?;

    // Affinity: every connection from this client lands on one endpoint.
    let seen = spread(&lab, vip(30, 80), 12)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(seen.len(), 1, "affinity broken: {seen:?}");
    let listing = lab.table("cdproxydirect").await.context("table")?;
    assert!(
        listing.contains("10.231.0.1 expires"),
        "client recorded: {listing}"
    );

    // An established connection to the plain service.
    // Opened in the node namespace, used from here (a socket keeps its
    // namespace wherever it is used).
    let conn = lab
        .node
        .run(async { TcpStream::connect(vip(31, 80)).await?.into_std() })
        .await?;
    let mut conn = TcpStream::from_std(conn)?;
    let mut reader = BufReader::new(&mut conn);
    let mut hello = String::new();
    reader.read_line(&mut hello).await?;

    // An incremental change to the other service touches only it.
    model.insert(sticky.clone(), port(30, Some(600), &[EP_B]));
    let next = model.clone();
    let (p, stats) = lab
        .node
        .run(async move {
            let stats = proxier.sync(next, SyncKind::Incremental).await;
            (proxier, stats)
        })
        .await;
    proxier = p;
    let stats = stats?;
    assert_eq!((stats.kind, stats.changed), (SyncKind::Incremental, 1));
    let seen = spread(&lab, vip(30, 80), 6)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(seen, BTreeSet::from(["b".to_string()]));

    // A restarted agent: a fresh Proxier recreates the table whole. The
    // established connection keeps working (conntrack kept its NAT).
    let rebuilt = model.clone();
    let restart_config = config.clone();
    lab.node
        .run(async move {
            let mut p = Proxier::new(&restart_config)?;
            p.sync(rebuilt, SyncKind::Full).await?;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    drop(proxier);
    reader.get_mut().write_all(b"still there\n").await?;
    let mut echo = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut echo))
        .await
        .context("established connection broke across the rebuild")??;
    assert_eq!(echo.trim(), "still there");

    lab.node
        .run(async { proxy::remove_table("cdproxydirect").await })
        .await?;
    Ok(())
}

/// A table listing reduced to what must match: its maps, sets and chains
/// by header (nft lists them in creation order), each with its lines in
/// order, except set elements (listed in hash order), which are sorted.
fn normalized(listing: &str, table: &str) -> BTreeMap<String, Vec<String>> {
    let mut blocks = BTreeMap::new();
    let mut header = String::new();
    let mut lines = Vec::new();
    let mut elements: Option<Vec<String>> = None;
    for line in listing.replace(table, "TABLE").lines() {
        let l = line.trim();
        if !line.starts_with("\t\t") {
            if line.starts_with('\t') && l == "}" {
                blocks.insert(std::mem::take(&mut header), std::mem::take(&mut lines));
            } else if line.starts_with('\t') {
                header = l.to_string();
            }
            continue;
        }
        let (body, collecting) = match (&elements, l.strip_prefix("elements = {")) {
            (None, Some(rest)) => (rest, true),
            (Some(_), _) => (l, true),
            (None, None) => (l, false),
        };
        if !collecting {
            lines.push(l.to_string());
            continue;
        }
        let (body, last) = match body.strip_suffix('}') {
            Some(b) => (b, true),
            None => (body, false),
        };
        let all = elements.get_or_insert_with(Vec::new);
        all.extend(
            body.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from),
        );
        if last {
            let mut all = elements.take().unwrap_or_default();
            all.sort();
            lines.push(format!("elements = {{ {} }}", all.join(", ")));
        }
    }
    blocks
}

/// Incremental transactions against the real kernel, over a random walk of
/// changes (endpoints replaced, added and removed, services with node
/// ports, with affinity, without endpoints, created and deleted), leave
/// exactly the table a full sync of the same model builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_updates_leave_the_table_a_full_sync_builds() -> Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to create network namespaces and program nftables");
        return Ok(());
    }
    init_tracing();
    let lab = Lab::start("walk").await?;
    let (inc_table, full_table) = ("cdwalkinc", "cdwalkfull");
    let config = |table: &str| ProxyConfig {
        table: table.into(),
        cluster_cidr: Some("10.231.0.0/24".parse().expect("cidr")),
        ..ProxyConfig::default()
    };
    let (inc_config, full_config) = (config(inc_table), config(full_table));
    let mut proxiers = lab
        .node
        .run(async move {
            Ok::<_, anyhow::Error>((Proxier::new(&inc_config)?, Proxier::new(&full_config)?))
        })
        .await?;
    let mut model = Model::new();
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut kinds = BTreeSet::new();
    for step in 0..40 {
        // One to three services change per step.
        for _ in 0..=next() % 3 {
            let svc = (next() % 6) as u8;
            let key = ServicePortKey::new(NS, &format!("s{svc}"), "");
            if next() % 6 == 0 {
                model.remove(&key);
                continue;
            }
            let eps: Vec<Ipv4Addr> = (0..next() % 5)
                .map(|_| Ipv4Addr::new(10, 231, 0, 2 + (next() % 8) as u8))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut p = port(40 + svc, (next() % 5 == 0).then_some(60), &eps);
            p.node_port = (next() % 2 == 0).then_some(30100 + u16::from(svc));
            model.insert(key, p);
        }
        let m = model.clone();
        let (p, result) = lab
            .node
            .run(async move {
                let (mut inc, mut full) = proxiers;
                let r = async {
                    // Every fifth step is a refresh (the periodic resync).
                    let kind = if step % 5 == 4 {
                        SyncKind::Refresh
                    } else {
                        SyncKind::Incremental
                    };
                    let stats = inc.sync(m.clone(), kind).await?;
                    full.sync(m, SyncKind::Full).await?;
                    Ok::<_, anyhow::Error>(stats.kind)
                }
                .await;
                ((inc, full), r)
            })
            .await;
        proxiers = p;
        kinds.insert(format!(
            "{:?}",
            result.with_context(|| format!("step {step}"))?
        ));
        let inc = lab.table(inc_table).await.context("incremental table")?;
        let full = lab.table(full_table).await.context("full table")?;
        assert_eq!(
            normalized(&inc, inc_table),
            normalized(&full, full_table),
            "step {step}: incremental\n{inc}\nfull\n{full}"
        );
    }
    assert!(
        kinds.contains("Incremental") && kinds.contains("Refresh"),
        "{kinds:?}"
    );
    lab.node
        .run(async move {
            proxy::remove_table(inc_table).await?;
            proxy::remove_table(full_table).await
        })
        .await?;
    Ok(())
}
