//! The `RequestHandler` hickory-server calls for every query: cluster
//! names are answered from [`ClusterRecords`], other names go through the
//! [`Forwarder`]. The response always carries the client's id and its
//! question exactly as sent (hickory echoes the question bytes).

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, LowerQuery, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::{debug, warn};

use super::forward::{ForwardError, Forwarder};
use super::name::{classify, QueryName};
use super::records::{ClusterRecords, Outcome};

/// How many CNAMEs an ExternalName chain may have before we stop
/// following it (a loop between two ExternalName services ends here).
const MAX_CNAME_CHAIN: usize = 8;
/// The largest UDP payload we accept to send, whatever a client offers.
const MAX_UDP_PAYLOAD: u16 = 4096;

/// Where an answer came from, for the per-query log line.
#[derive(Debug, Clone, Copy)]
enum Source {
    Cluster,
    Upstream,
    Refused,
}

/// A response before it is encoded.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    truncated: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    source: Source,
}

impl Reply {
    /// An error with no records.
    fn error(rcode: ResponseCode, source: Source) -> Reply {
        Reply {
            rcode,
            authoritative: false,
            truncated: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            source,
        }
    }

    /// An authoritative answer about the cluster domain.
    fn cluster(answers: Vec<Record>, additionals: Vec<Record>) -> Reply {
        Reply {
            rcode: ResponseCode::NoError,
            authoritative: true,
            truncated: false,
            answers,
            authorities: Vec::new(),
            additionals,
            source: Source::Cluster,
        }
    }

    /// NXDOMAIN or NODATA, with the zone's SOA so clients can cache the
    /// negative answer for its minimum TTL.
    fn negative(rcode: ResponseCode, soa: &Record) -> Reply {
        Reply {
            authorities: vec![soa.clone()],
            ..Reply::cluster(Vec::new(), Vec::new())
        }
        .with_rcode(rcode)
    }

    fn with_rcode(mut self, rcode: ResponseCode) -> Reply {
        self.rcode = rcode;
        self
    }
}

/// Answers the queries of the cluster DNS server.
pub(crate) struct ClusterDnsHandler {
    records: ClusterRecords,
    forwarder: Forwarder,
}

impl ClusterDnsHandler {
    pub(crate) fn new(records: ClusterRecords, forwarder: Forwarder) -> Self {
        ClusterDnsHandler { records, forwarder }
    }

    async fn reply(&self, request: &Request) -> (Reply, Option<LowerQuery>) {
        if request.metadata.op_code != OpCode::Query {
            return (Reply::error(ResponseCode::NotImp, Source::Refused), None);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return (Reply::error(ResponseCode::FormErr, Source::Refused), None);
        };
        let query = info.query.clone();
        let qtype = query.query_type();
        let class_ok = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return (
                Reply::error(ResponseCode::Refused, Source::Refused),
                Some(query),
            );
        }
        let owner = query.original().name().clone();
        let reply = match classify(query.name(), self.records.zone().labels()) {
            QueryName::Cluster(_) if !class_ok => {
                Reply::error(ResponseCode::Refused, Source::Refused)
            }
            QueryName::Cluster(_) if !self.records.is_ready() => {
                debug!(name = %owner, "service directory not synced yet");
                Reply::error(ResponseCode::ServFail, Source::Cluster)
            }
            QueryName::Cluster(name) => match self.records.lookup(&name, &owner, qtype) {
                Outcome::Records {
                    answers,
                    additionals,
                } => Reply::cluster(answers, additionals),
                Outcome::NoData => {
                    Reply::negative(ResponseCode::NoError, self.records.zone().soa())
                }
                Outcome::NxDomain => {
                    Reply::negative(ResponseCode::NXDomain, self.records.zone().soa())
                }
                Outcome::Alias { cname, target } => {
                    let mut answers = vec![*cname];
                    if qtype != RecordType::CNAME {
                        answers.extend(
                            self.chase(target, qtype, request.metadata.checking_disabled)
                                .await,
                        );
                    }
                    Reply::cluster(answers, Vec::new())
                }
            },
            QueryName::Reverse(ip) if qtype == RecordType::PTR && class_ok => {
                let records = self.records.reverse(ip, &owner);
                if records.is_empty() {
                    self.forward(request, query.original()).await
                } else {
                    Reply::cluster(records, Vec::new())
                }
            }
            QueryName::Reverse(_) | QueryName::Other => {
                self.forward(request, query.original()).await
            }
        };
        (reply, Some(query))
    }

    /// Resolves the target of an ExternalName CNAME for `qtype`, as CoreDNS
    /// does, so stub resolvers that do not follow CNAMEs themselves still
    /// get addresses. What cannot be resolved is simply left out.
    async fn chase(
        &self,
        mut target: Name,
        qtype: RecordType,
        checking_disabled: bool,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        for _ in 0..MAX_CNAME_CHAIN {
            match classify(&target, self.records.zone().labels()) {
                QueryName::Cluster(name) => match self.records.lookup(&name, &target, qtype) {
                    Outcome::Records { answers, .. } => {
                        records.extend(answers);
                        break;
                    }
                    Outcome::Alias {
                        cname,
                        target: next,
                    } => {
                        records.push(*cname);
                        target = next;
                    }
                    Outcome::NoData | Outcome::NxDomain => break,
                },
                QueryName::Reverse(_) | QueryName::Other => {
                    let query = Query::query(target.clone(), qtype);
                    match self
                        .forwarder
                        .forward(&query, true, checking_disabled)
                        .await
                    {
                        Ok(answer) if answer.metadata.response_code == ResponseCode::NoError => {
                            records.extend(answer.answers);
                        }
                        Ok(answer) => {
                            debug!(%target, rcode = %answer.metadata.response_code, "ExternalName target did not resolve");
                        }
                        Err(error) => {
                            debug!(%target, %error, "ExternalName target did not resolve")
                        }
                    }
                    break;
                }
            }
        }
        records
    }

    /// Passes the question on upstream and relays the answer.
    async fn forward(&self, request: &Request, query: &Query) -> Reply {
        match self
            .forwarder
            .forward(
                query,
                request.metadata.recursion_desired,
                request.metadata.checking_disabled,
            )
            .await
        {
            Ok(answer) => Reply {
                rcode: answer.metadata.response_code,
                authoritative: answer.metadata.authoritative,
                truncated: answer.metadata.truncation,
                answers: answer.answers,
                authorities: answer.authorities,
                additionals: answer.additionals,
                source: Source::Upstream,
            },
            Err(ForwardError::Busy) => {
                warn!(name = %query.name(), "too many forwarded queries in flight; refusing");
                Reply::error(ResponseCode::Refused, Source::Upstream)
            }
            Err(error) => {
                debug!(name = %query.name(), %error, "forwarding failed");
                Reply::error(ResponseCode::ServFail, Source::Upstream)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (reply, query) = self.reply(request).await;

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.truncation = reply.truncated;
        metadata.recursion_available = true;
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });

        match &query {
            Some(query) => debug!(
                name = %query.original().name(),
                qtype = %query.query_type(),
                rcode = %reply.rcode,
                answers = reply.answers.len(),
                source = ?reply.source,
                protocol = %request.protocol(),
                "dns query"
            ),
            None => {
                debug!(rcode = %reply.rcode, protocol = %request.protocol(), "dns request refused")
            }
        }

        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty::<&Record>(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "sending the DNS response failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
