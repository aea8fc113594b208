//! The cluster DNS server over real sockets on 127.0.0.1: a bound server
//! fed by an in-memory directory, asked over UDP and TCP by a minimal
//! client, with a second in-process hickory server as the upstream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitd_api::k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::*;

/// How long a test client waits for any one answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fixtures

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        ..ObjectMeta::default()
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.to_string()),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, protocol, port)| ServicePort {
                        name: Some(name.to_string()),
                        protocol: Some(protocol.to_string()),
                        port: *port,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".to_string()),
            external_name: Some(target.to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn address(ip: &str, hostname: Option<&str>) -> EndpointAddress {
    EndpointAddress {
        ip: ip.to_string(),
        hostname: hostname.map(str::to_string),
        ..EndpointAddress::default()
    }
}

fn endpoints(
    ns: &str,
    name: &str,
    ready: Vec<EndpointAddress>,
    not_ready: Vec<EndpointAddress>,
    ports: &[(&str, &str, i32)],
) -> Endpoints {
    Endpoints {
        metadata: meta(ns, name),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(ready),
            not_ready_addresses: Some(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, protocol, port)| EndpointPort {
                        name: Some(name.to_string()),
                        protocol: Some(protocol.to_string()),
                        port: *port,
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        }]),
    }
}

/// demo/web (ClusterIP, two pods), demo/db (headless, two ready pods with
/// hostnames and one not ready), demo/empty (headless, no endpoints),
/// demo/ext (ExternalName outside), demo/inner (ExternalName inside).
fn fixture() -> Arc<MemoryDirectory> {
    let directory = Arc::new(MemoryDirectory::new());
    let web_ports = [("http", "TCP", 80), ("metrics", "UDP", 9090)];
    directory.put_service(service("demo", "web", "10.96.0.20", &web_ports));
    directory.put_endpoints(endpoints(
        "demo",
        "web",
        vec![address("10.244.0.5", None), address("10.244.0.6", None)],
        vec![],
        &[("http", "TCP", 8080), ("metrics", "UDP", 9090)],
    ));
    directory.put_service(service("demo", "db", "None", &[("pg", "TCP", 5432)]));
    directory.put_endpoints(endpoints(
        "demo",
        "db",
        vec![
            address("10.244.1.7", Some("db-0")),
            address("10.244.1.8", Some("db-1")),
        ],
        vec![address("10.244.1.9", Some("db-2"))],
        &[("pg", "TCP", 5432)],
    ));
    directory.put_service(service("demo", "empty", "None", &[("http", "TCP", 80)]));
    directory.put_service(external("demo", "ext", "Example.COM"));
    directory.put_service(external("demo", "inner", "web.demo.svc.cluster.local"));
    directory
}

// ------------------------------------------------------------------ server

struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(directory: Arc<MemoryDirectory>, upstreams: Vec<SocketAddr>) -> Running {
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            domain: "cluster.local".to_string(),
            upstreams,
        };
        let server = bind(config, directory)
            .await
            .expect("binding the DNS server");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        Running { addr, cancel, task }
    }

    /// Cancels the server and checks that it stops cleanly and promptly.
    async fn stop(self) {
        self.cancel.cancel();
        let result = timeout(CLIENT_DEADLINE, self.task)
            .await
            .expect("server stops within the deadline")
            .expect("server task did not panic");
        result.expect("server stopped without error");
    }
}

// ------------------------------------------------------------------ client

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
}

fn question(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("test names are valid"),
        qtype,
    ));
    message
}

async fn ask(server: SocketAddr, via: Via, name: &str, qtype: RecordType) -> Message {
    exchange(server, via, &question(rand::random(), name, qtype)).await
}

async fn exchange(server: SocketAddr, via: Via, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encoding the test query");
    let answer = match via {
        Via::Udp => udp_exchange(server, &bytes).await,
        Via::Tcp => tcp_exchange(server, &bytes).await,
    };
    let answer = Message::from_vec(&answer).expect("the server's answer decodes");
    assert_eq!(
        answer.metadata.id, message.metadata.id,
        "answer keeps the query id"
    );
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.queries.len(), 1);
    assert!(
        answer.queries[0].name().eq_case(message.queries[0].name()),
        "question echoed as sent: {} vs {}",
        answer.queries[0].name(),
        message.queries[0].name()
    );
    answer
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    socket
        .send_to(bytes, server)
        .await
        .expect("sending the query");
    let mut buffer = vec![0u8; 65535];
    let (len, from) = timeout(CLIENT_DEADLINE, socket.recv_from(&mut buffer))
        .await
        .expect("an answer arrives before the deadline")
        .expect("receiving the answer");
    assert_eq!(from, server);
    buffer.truncate(len);
    buffer
}

async fn tcp_exchange(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let work = async {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).expect("small query");
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(bytes).await?;
        let len = stream.read_u16().await?;
        let mut buffer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buffer).await?;
        Ok::<_, std::io::Error>(buffer)
    };
    timeout(CLIENT_DEADLINE, work)
        .await
        .expect("an answer arrives before the deadline")
        .expect("TCP exchange")
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

fn srv_records(message: &Message) -> Vec<SRV> {
    let mut srvs: Vec<SRV> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    srvs.sort_by_key(|srv| srv.target.to_string());
    srvs
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test names are valid")
}

fn assert_soa_authority(message: &Message) {
    assert_eq!(message.authorities.len(), 1, "{message:?}");
    let soa = &message.authorities[0];
    assert_eq!(soa.name, name("cluster.local."));
    assert!(
        matches!(soa.data, RData::SOA(SOA { minimum: 5, .. })),
        "{soa:?}"
    );
}

// ----------------------------------------------------------------- upstream

/// A tiny authoritative server for the outside world: `example.com` has
/// one address, `big.example.com` more than fit in 1232 bytes.
#[derive(Default)]
struct FakeUpstream {
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
}

const EXAMPLE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const BIG_COUNT: u8 = 120;

/// The upstream's handler; shares its counters with the test.
struct FakeHandler(Arc<FakeUpstream>);

#[async_trait::async_trait]
impl RequestHandler for FakeHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        match request.protocol() {
            Protocol::Tcp => self.0.tcp_queries.fetch_add(1, Ordering::SeqCst),
            _ => self.0.udp_queries.fetch_add(1, Ordering::SeqCst),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let mut answers = Vec::new();
        if let Ok(info) = request.request_info() {
            let owner = info.query.original().name().clone();
            let qname = info.query.name().to_string();
            let is_a = info.query.query_type() == RecordType::A;
            if qname == "example.com." {
                if is_a {
                    answers.push(Record::from_rdata(owner, 60, RData::A(A(EXAMPLE_IP))));
                }
            } else if qname == "big.example.com." {
                for i in 1..=BIG_COUNT {
                    if is_a {
                        answers.push(Record::from_rdata(
                            owner.clone(),
                            60,
                            RData::A(A(Ipv4Addr::new(198, 51, 100, i))),
                        ));
                    }
                }
            } else {
                metadata.response_code = ResponseCode::NXDomain;
            }
        }
        let edns = request.edns.clone();
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers.iter(),
            std::iter::empty::<&Record>(),
            std::iter::empty::<&Record>(),
            std::iter::empty::<&Record>(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => panic!("fake upstream could not answer: {error}"),
        }
    }
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<FakeUpstream>,
    server: Server<FakeHandler>,
}

impl Upstream {
    async fn start() -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("upstream UDP");
        let addr = udp.local_addr().expect("upstream address");
        let tcp = TcpListener::bind(addr)
            .await
            .expect("upstream TCP on the same port");
        let state = Arc::new(FakeUpstream::default());
        let mut server = Server::new(FakeHandler(state.clone()));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 8);
        Upstream {
            addr,
            state,
            server,
        }
    }

    async fn stop(mut self) {
        timeout(CLIENT_DEADLINE, self.server.shutdown_gracefully())
            .await
            .expect("upstream stops")
            .expect("upstream stops cleanly");
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn cluster_ip_service_answers_its_address_over_udp_and_tcp() {
    let server = Running::start(fixture(), vec![]).await;
    for via in [Via::Udp, Via::Tcp] {
        let answer = ask(
            server.addr,
            via,
            "web.demo.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{via:?}"
        );
        assert!(answer.metadata.authoritative, "{via:?}");
        assert_eq!(
            a_records(&answer),
            vec![Ipv4Addr::new(10, 96, 0, 20)],
            "{via:?}"
        );
        assert_eq!(answer.answers[0].ttl, 5);
        assert_eq!(answer.answers[0].name, name("web.demo.svc.cluster.local."));
    }
    server.stop().await;
}

#[tokio::test]
async fn headless_service_answers_every_ready_endpoint() {
    let server = Running::start(fixture(), vec![]).await;
    for via in [Via::Udp, Via::Tcp] {
        let answer = ask(
            server.addr,
            via,
            "db.demo.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            a_records(&answer),
            vec![Ipv4Addr::new(10, 244, 1, 7), Ipv4Addr::new(10, 244, 1, 8)],
            "ready endpoints only ({via:?})"
        );
    }
    // One endpoint by its hostname; a not-ready one does not exist.
    let answer = ask(
        server.addr,
        Via::Udp,
        "db-1.db.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 244, 1, 8)]);
    let answer = ask(
        server.addr,
        Via::Udp,
        "db-2.db.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    // An endpoint without a hostname goes by its dashed address.
    let answer = ask(
        server.addr,
        Via::Udp,
        "10-244-0-6.web.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 244, 0, 6)]);
    // Headless with no ready endpoints: NXDOMAIN, as CoreDNS.
    let answer = ask(
        server.addr,
        Via::Udp,
        "empty.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&answer);
    server.stop().await;
}

#[tokio::test]
async fn srv_records_for_named_ports() {
    let server = Running::start(fixture(), vec![]).await;

    let answer = ask(
        server.addr,
        Via::Udp,
        "_http._tcp.web.demo.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        srv_records(&answer),
        vec![SRV::new(0, 100, 80, name("web.demo.svc.cluster.local."))]
    );
    assert_eq!(answer.additionals.len(), 1, "the target's A record");
    assert_eq!(
        answer.additionals[0].name,
        name("web.demo.svc.cluster.local.")
    );
    assert!(
        matches!(answer.additionals[0].data, RData::A(A(ip)) if ip == Ipv4Addr::new(10, 96, 0, 20))
    );

    let answer = ask(
        server.addr,
        Via::Tcp,
        "_metrics._udp.web.demo.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_records(&answer),
        vec![SRV::new(0, 100, 9090, name("web.demo.svc.cluster.local."))]
    );

    // Headless: one SRV per ready endpoint, targets named by hostname.
    let answer = ask(
        server.addr,
        Via::Udp,
        "_pg._tcp.db.demo.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_records(&answer),
        vec![
            SRV::new(0, 50, 5432, name("db-0.db.demo.svc.cluster.local.")),
            SRV::new(0, 50, 5432, name("db-1.db.demo.svc.cluster.local.")),
        ]
    );
    let mut extra: Vec<(String, RData)> = answer
        .additionals
        .iter()
        .map(|r| (r.name.to_string(), r.data.clone()))
        .collect();
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        extra,
        vec![
            (
                "db-0.db.demo.svc.cluster.local.".to_string(),
                RData::A(A(Ipv4Addr::new(10, 244, 1, 7)))
            ),
            (
                "db-1.db.demo.svc.cluster.local.".to_string(),
                RData::A(A(Ipv4Addr::new(10, 244, 1, 8)))
            ),
        ]
    );

    // Wrong protocol, unknown port: no such name.
    for missing in [
        "_http._udp.web.demo.svc.cluster.local.",
        "_nope._tcp.web.demo.svc.cluster.local.",
    ] {
        let answer = ask(server.addr, Via::Udp, missing, RecordType::SRV).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{missing}"
        );
    }
    // The SRV name exists, so A on it is NODATA.
    let answer = ask(
        server.addr,
        Via::Udp,
        "_http._tcp.web.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn external_name_service_is_a_cname() {
    let upstream = Upstream::start().await;
    let server = Running::start(fixture(), vec![upstream.addr]).await;

    let answer = ask(
        server.addr,
        Via::Udp,
        "ext.demo.svc.cluster.local.",
        RecordType::CNAME,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        answer.answers[0].data,
        RData::CNAME(CNAME(name("example.com.")))
    );

    // For A, the CNAME and then the target's address, from upstream.
    let answer = ask(
        server.addr,
        Via::Tcp,
        "ext.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        answer.answers[0].data,
        RData::CNAME(CNAME(name("example.com.")))
    );
    assert_eq!(a_records(&answer), vec![EXAMPLE_IP]);

    // A target inside the cluster is resolved locally.
    let answer = ask(
        server.addr,
        Via::Udp,
        "inner.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        answer.answers[0].data,
        RData::CNAME(CNAME(name("web.demo.svc.cluster.local.")))
    );
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 96, 0, 20)]);

    server.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn missing_names_are_nxdomain_with_soa() {
    let server = Running::start(fixture(), vec![]).await;
    for missing in [
        "nothing.demo.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "example.com.demo.svc.cluster.local.",
        "www.example.com.demo.svc.cluster.local.",
        "example.com.cluster.local.",
        "other.svc.cluster.local.",
    ] {
        for via in [Via::Udp, Via::Tcp] {
            let answer = ask(server.addr, via, missing, RecordType::A).await;
            assert_eq!(
                answer.metadata.response_code,
                ResponseCode::NXDomain,
                "{missing} {via:?}"
            );
            assert!(answer.metadata.authoritative);
            assert!(answer.answers.is_empty());
            assert_soa_authority(&answer);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn existing_names_of_another_type_are_nodata() {
    let server = Running::start(fixture(), vec![]).await;
    for (existing, qtype) in [
        ("web.demo.svc.cluster.local.", RecordType::AAAA),
        ("db.demo.svc.cluster.local.", RecordType::AAAA),
        ("web.demo.svc.cluster.local.", RecordType::TXT),
        ("demo.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
    ] {
        let answer = ask(server.addr, Via::Udp, existing, qtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{existing} {qtype}"
        );
        assert!(answer.answers.is_empty(), "{existing} {qtype}");
        assert_soa_authority(&answer);
    }
    let answer = ask(server.addr, Via::Udp, "cluster.local.", RecordType::SOA).await;
    assert!(matches!(answer.answers[0].data, RData::SOA(_)));
    server.stop().await;
}

#[tokio::test]
async fn names_match_case_insensitively() {
    let server = Running::start(fixture(), vec![]).await;
    let answer = ask(
        server.addr,
        Via::Udp,
        "WeB.DeMo.SVC.Cluster.LOCAL.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 96, 0, 20)]);
    // The answer is owned by the name as the client wrote it.
    assert!(answer.answers[0]
        .name
        .eq_case(&name("WeB.DeMo.SVC.Cluster.LOCAL.")));
    let answer = ask(
        server.addr,
        Via::Tcp,
        "_HTTP._Tcp.WEB.demo.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv_records(&answer).len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn pod_and_reverse_records() {
    let server = Running::start(fixture(), vec![]).await;
    let answer = ask(
        server.addr,
        Via::Udp,
        "10-244-3-4.demo.pod.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 244, 3, 4)]);
    let answer = ask(
        server.addr,
        Via::Udp,
        "10-244-3.demo.pod.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    for (reverse, target) in [
        ("20.0.96.10.in-addr.arpa.", "web.demo.svc.cluster.local."),
        (
            "7.1.244.10.in-addr.arpa.",
            "db-0.db.demo.svc.cluster.local.",
        ),
        (
            "5.0.244.10.in-addr.arpa.",
            "10-244-0-5.web.demo.svc.cluster.local.",
        ),
    ] {
        let answer = ask(server.addr, Via::Udp, reverse, RecordType::PTR).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{reverse}"
        );
        assert_eq!(answer.answers.len(), 1, "{reverse}");
        assert_eq!(
            answer.answers[0].data,
            RData::PTR(PTR(name(target))),
            "{reverse}"
        );
    }
    let answer = ask(
        server.addr,
        Via::Udp,
        "dns-version.cluster.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(answer.answers.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn directory_changes_are_answered_without_restart() {
    let directory = fixture();
    let server = Running::start(directory.clone(), vec![]).await;
    let answer = ask(
        server.addr,
        Via::Udp,
        "late.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    directory.put_service(service("demo", "late", "10.96.0.99", &[]));
    let answer = ask(
        server.addr,
        Via::Udp,
        "late.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 96, 0, 99)]);
    directory.remove_service("demo", "late");
    let answer = ask(
        server.addr,
        Via::Udp,
        "late.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn malformed_packets_do_not_kill_the_server() {
    let server = Running::start(fixture(), vec![]).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");

    // Too short for a header: dropped silently.
    client
        .send_to(&[0x12, 0x34, 0x01], server.addr)
        .await
        .expect("send");
    // Random bytes.
    let junk: Vec<u8> = (0..200).map(|_| rand::random::<u8>()).collect();
    client.send_to(&junk, server.addr).await.expect("send");
    // A header promising a question that is not there: FORMERR.
    let header_only = [0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let reply = udp_exchange(server.addr, &header_only).await;
    let reply = Message::from_vec(&reply).expect("FORMERR decodes");
    assert_eq!(reply.metadata.id, 0xABCD);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A label running past the end of the packet.
    let mut cut = question(7, "web.demo.svc.cluster.local.", RecordType::A)
        .to_vec()
        .expect("encode");
    cut.truncate(20);
    client.send_to(&cut, server.addr).await.expect("send");
    // A well-formed message without a question: FORMERR from our handler.
    let empty = Message::new(0x0101, MessageType::Query, OpCode::Query);
    let reply = udp_exchange(server.addr, &empty.to_vec().expect("encode")).await;
    let reply = Message::from_vec(&reply).expect("decodes");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Garbage over TCP, then a closed connection.
    {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(&[0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .expect("write");
        stream.write_all(&[0xFF, 0xFF, 1, 2]).await.expect("write");
    }

    // Still serving, over both transports.
    for via in [Via::Udp, Via::Tcp] {
        let answer = ask(
            server.addr,
            via,
            "web.demo.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(
            a_records(&answer),
            vec![Ipv4Addr::new(10, 96, 0, 20)],
            "{via:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn other_names_are_forwarded_upstream_keeping_id_and_question() {
    let upstream = Upstream::start().await;
    let server = Running::start(fixture(), vec![upstream.addr]).await;
    for (via, id) in [(Via::Udp, 0xBEEF), (Via::Tcp, 0x0102)] {
        let answer = exchange(
            server.addr,
            via,
            &question(id, "ExAmple.COM.", RecordType::A),
        )
        .await;
        assert_eq!(answer.metadata.id, id);
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{via:?}"
        );
        assert!(answer.metadata.recursion_available);
        assert_eq!(a_records(&answer), vec![EXAMPLE_IP], "{via:?}");
        // Upstream NXDOMAIN is relayed as such.
        let answer = ask(server.addr, via, "nope.example.com.", RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{via:?}"
        );
    }
    // A reverse name the cluster does not know goes upstream too.
    let before = upstream.state.udp_queries.load(Ordering::SeqCst);
    let answer = ask(
        server.addr,
        Via::Udp,
        "1.2.0.192.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(upstream.state.udp_queries.load(Ordering::SeqCst) > before);
    server.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let upstream = Upstream::start().await;
    let server = Running::start(fixture(), vec![upstream.addr]).await;
    let answer = ask(server.addr, Via::Tcp, "big.example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), usize::from(BIG_COUNT));
    assert!(
        upstream.state.tcp_queries.load(Ordering::SeqCst) >= 1,
        "the forwarder retried over TCP"
    );
    // A UDP client without EDNS gets what fits in 512 bytes, marked truncated.
    let answer = ask(server.addr, Via::Udp, "big.example.com.", RecordType::A).await;
    assert!(answer.metadata.truncation);
    assert!(answer.answers.len() < usize::from(BIG_COUNT));
    server.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn unreachable_upstreams_give_servfail() {
    // A port nobody listens on (refused at once) and a socket that never
    // answers (the forwarder's timeout).
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
        socket.local_addr().expect("address")
    };
    let black_hole = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    let server = Running::start(
        fixture(),
        vec![closed, black_hole.local_addr().expect("address")],
    )
    .await;
    let started = tokio::time::Instant::now();
    let answer = ask(server.addr, Via::Udp, "example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.answers.is_empty());
    assert!(started.elapsed() < CLIENT_DEADLINE);
    // Cluster names do not depend on upstreams.
    let answer = ask(
        server.addr,
        Via::Udp,
        "web.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 96, 0, 20)]);
    server.stop().await;

    // No upstreams at all: SERVFAIL at once.
    let server = Running::start(fixture(), vec![]).await;
    let answer = ask(server.addr, Via::Tcp, "example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[tokio::test]
async fn unsynced_directory_answers_servfail_for_cluster_names() {
    struct NotReady;
    impl ServiceDirectory for NotReady {
        fn service(&self, _: &str, _: &str) -> Option<Arc<Service>> {
            None
        }
        fn endpoints(&self, _: &str, _: &str) -> Option<Arc<Endpoints>> {
            None
        }
        fn list_services(&self) -> Vec<Arc<Service>> {
            Vec::new()
        }
        fn list_endpoints(&self) -> Vec<Arc<Endpoints>> {
            Vec::new()
        }
        fn is_ready(&self) -> bool {
            false
        }
    }
    let config = DnsConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        domain: "Cluster.Local.".to_string(),
        upstreams: vec![],
    };
    let server = bind(config, NotReady).await.expect("bind");
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.serve(cancel.clone()));
    let answer = ask(addr, Via::Udp, "web.demo.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    cancel.cancel();
    timeout(CLIENT_DEADLINE, task)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("clean stop");
}

#[tokio::test]
async fn upstreams_that_are_ourselves_are_dropped() {
    let config = DnsConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        domain: "cluster.local".to_string(),
        upstreams: vec![],
    };
    let probe = bind(config, MemoryDirectory::new()).await.expect("bind");
    let port = probe.local_addr().port();
    drop(probe);
    let ours: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    assert!(is_ourselves(ours, ours));
    assert!(is_ourselves(
        ours,
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    ));
    assert!(is_ourselves(
        SocketAddr::new(Ipv4Addr::new(127, 0, 0, 53).into(), port),
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    ));
    assert!(!is_ourselves(
        SocketAddr::new(Ipv4Addr::new(127, 0, 0, 53).into(), 53),
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    ));
    assert!(!is_ourselves(
        SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), port),
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
    ));
    // Bound on the port it reported, the server does not ask itself: a
    // query for an outside name fails at once instead of looping.
    let config = DnsConfig {
        listen: ours,
        domain: "cluster.local".to_string(),
        upstreams: vec![ours],
    };
    let server = bind(config, MemoryDirectory::new())
        .await
        .expect("rebind the same port");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.serve(cancel.clone()));
    let answer = ask(ours, Via::Udp, "example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    cancel.cancel();
    timeout(CLIENT_DEADLINE, task)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("clean stop");
}

#[test]
fn directory_keys_default_namespace() {
    let directory = MemoryDirectory::new();
    let mut svc = service("x", "a", "10.96.0.1", &[]);
    svc.metadata.namespace = None;
    directory.put_service(svc);
    assert!(directory.service("default", "a").is_some());
    assert!(directory.service("x", "a").is_none());
}
