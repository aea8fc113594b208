//! The nftables rule generator: turns a [`Model`] into nft scripts, and
//! remembers what the kernel was last given so the next change is written
//! as a transaction that touches only the service ports that changed.
//!
//! # Layout (one `ip` table owned by commitd)
//!
//! - `service-ips`: verdict map `daddr . l4proto . dport` → `goto` the
//!   service port's chain; `service-nodeports`: `l4proto . dport` → the
//!   same chain, consulted only for packets to a local address
//!   (`fib daddr type local`, so node IPs and 127.0.0.1 alike).
//! - One chain per service port (`svc-<hash>-<ns>/<name>[/<port>]`) that
//!   marks traffic for masquerade (node-port traffic always, VIP traffic
//!   from outside the cluster CIDR) and picks a ready endpoint at random.
//!   The pick is a cascade of `numgen random mod (N-i) == 0` rules (what
//!   iptables' `statistic` does) rather than an anonymous `numgen` map:
//!   the kernel names anonymous sets by scanning every set of the table,
//!   so thousands of them load in quadratic time (10 000 services took
//!   50 s here against under 2 s for the cascade).
//! - ClientIP affinity (only for services that ask for it): a chain and a
//!   timeout set per endpoint; the service chain first sends a client found
//!   in an endpoint's set to that endpoint, and the endpoint chain refreshes
//!   the client's entry.
//! - Hairpin (a pod reaching itself through its service): after DNAT the
//!   source equals the destination, which nft cannot compare directly, so a
//!   set of `ip . ip` pairs, one per endpoint address, is checked in
//!   postrouting.
//! - Service ports without ready endpoints are elements of
//!   `no-endpoint-services` / `no-endpoint-nodeports`, checked for new
//!   connections in filter hooks (input, forward, output) before NAT, which
//!   reject them (TCP reset, ICMP port unreachable otherwise) so clients
//!   fail at once instead of timing out.
//! - The cluster DNS redirect (`vip:53` → a local port) sits in the nat
//!   hook chains, in front of the service maps.
//!
//! A full sync recreates the table in one transaction (`add table`,
//! `delete table`, `table { … }`): conntrack keeps the NAT decision of
//! established flows, so they survive it. A refresh (the periodic resync)
//! re-adds and flushes every object instead of deleting the table, which
//! heals hand edits while keeping the affinity sets' entries.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::model::{Model, ServicePort, ServicePortKey};
use super::nft::{self, NftError};
use super::{DnsRedirect, ProxyConfig};

/// The packet mark bit that asks postrouting to masquerade.
const MASQ_MARK: u32 = 0x4000;

/// Name of the verdict map from VIP . protocol . port to service chains.
pub const SERVICE_IPS: &str = "service-ips";
/// Name of the verdict map from protocol . node port to service chains.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Name of the set of VIP . protocol . port without ready endpoints.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Name of the set of protocol . node port without ready endpoints.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Name of the set of endpoint . endpoint pairs for hairpin masquerade.
pub const HAIRPIN: &str = "hairpin";

/// The table's named sets and maps that hold per-service elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Container {
    ServiceIps,
    NodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
}

impl Container {
    const ALL: [Container; 4] = [
        Container::ServiceIps,
        Container::NodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
    ];

    fn name(self) -> &'static str {
        match self {
            Container::ServiceIps => SERVICE_IPS,
            Container::NodePorts => SERVICE_NODEPORTS,
            Container::NoEndpointServices => NO_ENDPOINT_SERVICES,
            Container::NoEndpointNodePorts => NO_ENDPOINT_NODEPORTS,
        }
    }

    fn is_map(self) -> bool {
        matches!(self, Container::ServiceIps | Container::NodePorts)
    }

    fn type_decl(self) -> &'static str {
        match self {
            Container::ServiceIps => "type ipv4_addr . inet_proto . inet_service : verdict;",
            Container::NodePorts => "type inet_proto . inet_service : verdict;",
            Container::NoEndpointServices => "type ipv4_addr . inet_proto . inet_service;",
            Container::NoEndpointNodePorts => "type inet_proto . inet_service;",
        }
    }
}

const HAIRPIN_DECL: &str = "type ipv4_addr . ipv4_addr;";

/// A chain: base chains have a hook line, the others none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    name: String,
    hook: Option<&'static str>,
    rules: Vec<String>,
}

/// One element of a [`Container`]: the key, and the verdict for maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    container: Container,
    key: String,
    value: Option<String>,
}

impl Element {
    fn text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {}", self.key, v),
            None => self.key.clone(),
        }
    }
}

/// Everything one service port adds to the table.
#[derive(Debug, Default)]
struct PortRules {
    /// The service chain first, then endpoint chains.
    chains: Vec<Chain>,
    /// Affinity sets: name and declaration.
    sets: Vec<(String, String)>,
    elements: Vec<Element>,
}

/// Which kind of transaction an [`Update`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Recreate the whole table (start, and after any failure).
    Full,
    /// Re-add and flush every object without deleting the table (the
    /// periodic resync: heals hand edits, keeps affinity entries).
    Refresh,
    /// Only the service ports that changed since the last sync.
    Incremental,
}

/// How the hairpin reference counts change when an update is committed.
#[derive(Debug)]
enum HairpinChange {
    Replace(HashMap<Ipv4Addr, u32>),
    Delta(Vec<(Ipv4Addr, i64)>),
}

/// A planned transaction: the nft script and the model it brings the
/// kernel to. Run the script, then [`Proxier::commit`] the update.
#[derive(Debug)]
pub struct Update {
    kind: SyncKind,
    script: String,
    changed: Vec<ServicePortKey>,
    rules: usize,
    model: Model,
    hairpin: HairpinChange,
}

impl Update {
    /// The nft script (empty when nothing changed).
    pub fn script(&self) -> &str {
        &self.script
    }

    /// Which kind of transaction this is.
    pub fn kind(&self) -> SyncKind {
        self.kind
    }

    /// The service ports whose rules this update writes (all of them for a
    /// full sync or a refresh).
    pub fn changed(&self) -> &[ServicePortKey] {
        &self.changed
    }

    /// How many rules the script adds.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// Whether there is nothing to send to the kernel.
    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }

    /// The model the kernel holds once this update is applied.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// What a sync did, for logs and benchmarks.
#[derive(Debug, Clone)]
pub struct SyncStats {
    /// The kind of transaction.
    pub kind: SyncKind,
    /// How many service ports it rewrote.
    pub changed: usize,
    /// How many rules it added.
    pub rules: usize,
    /// How long planning and `nft` took together.
    pub duration: Duration,
}

/// A table name nft would not accept as an identifier.
#[derive(Debug, thiserror::Error)]
#[error("invalid nftables table name {0:?}: use letters, digits, '_' and '-', starting with a letter, at most 64 characters")]
pub struct InvalidTableName(pub String);

/// What the kernel was last given.
#[derive(Debug)]
struct Applied {
    model: Model,
    /// Endpoint address → how many (port, endpoint) pairs use it.
    hairpin: HashMap<Ipv4Addr, u32>,
}

/// The proxy's rule state: plans full, refresh and incremental
/// transactions against the last model the kernel accepted. Pure apart
/// from [`Proxier::sync`], so benchmarks and tests can drive it directly.
#[derive(Debug)]
pub struct Proxier {
    table: String,
    base_chains: Vec<Chain>,
    applied: Option<Applied>,
}

impl Proxier {
    /// A proxier for `config`'s table, knowing nothing of the kernel yet
    /// (so its first sync is a full one).
    pub fn new(config: &ProxyConfig) -> Result<Proxier, InvalidTableName> {
        if !valid_table_name(&config.table) {
            return Err(InvalidTableName(config.table.clone()));
        }
        Ok(Proxier {
            table: config.table.clone(),
            base_chains: base_chains(config.dns.as_ref(), config.cluster_cidr.map(|n| n.trunc())),
            applied: None,
        })
    }

    /// The table this proxier owns.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The model the kernel holds, if known.
    pub fn applied(&self) -> Option<&Model> {
        self.applied.as_ref().map(|a| &a.model)
    }

    /// Forgets what the kernel holds (after a failed transaction), so the
    /// next incremental plan becomes a full one.
    pub fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Records that `update` was applied.
    pub fn commit(&mut self, update: Update) {
        let hairpin = match update.hairpin {
            HairpinChange::Replace(counts) => counts,
            HairpinChange::Delta(delta) => {
                let mut counts = self.applied.take().map(|a| a.hairpin).unwrap_or_default();
                for (ip, d) in delta {
                    let now = i64::from(counts.get(&ip).copied().unwrap_or(0)) + d;
                    if now > 0 {
                        counts.insert(ip, u32::try_from(now).unwrap_or(u32::MAX));
                    } else {
                        counts.remove(&ip);
                    }
                }
                counts
            }
        };
        self.applied = Some(Applied {
            model: update.model,
            hairpin,
        });
    }

    /// Plans `kind` towards `model` (an incremental plan without a known
    /// kernel state becomes a full one).
    pub fn plan(&self, model: Model, kind: SyncKind) -> Update {
        match kind {
            SyncKind::Full => self.plan_full(model),
            SyncKind::Refresh => self.plan_refresh(model),
            SyncKind::Incremental => self.plan_incremental(model),
        }
    }

    /// Plans, applies with `nft -f -` and commits. On failure the kernel
    /// state is forgotten, so the next sync is a full one.
    pub async fn sync(&mut self, model: Model, kind: SyncKind) -> Result<SyncStats, NftError> {
        let start = Instant::now();
        let update = self.plan(model, kind);
        if !update.is_empty() {
            if let Err(e) = nft::apply(update.script()).await {
                self.invalidate();
                return Err(e);
            }
        }
        let stats = SyncStats {
            kind: update.kind,
            changed: update.changed.len(),
            rules: update.rules,
            duration: start.elapsed(),
        };
        self.commit(update);
        Ok(stats)
    }

    /// A transaction that recreates the table with exactly `model`.
    pub fn plan_full(&self, model: Model) -> Update {
        let t = &self.table;
        let mut rules = 0;
        let (elements, sets, chains) = self.all_port_rules(&model);
        let hairpin = hairpin_counts(&model);
        let mut s = String::with_capacity(256 * (model.len() + 16));
        let _ = writeln!(s, "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{");
        for c in Container::ALL {
            let kind = if c.is_map() { "map" } else { "set" };
            block_set(
                &mut s,
                kind,
                c.name(),
                c.type_decl(),
                elements.get(&c).map(Vec::as_slice),
            );
        }
        let pairs: Vec<String> = sorted_ips(&hairpin)
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
        block_set(&mut s, "set", HAIRPIN, HAIRPIN_DECL, Some(&pairs));
        for (name, decl) in &sets {
            let _ = writeln!(s, "\tset {name} {{ {decl} }}");
        }
        for chain in self.base_chains.iter().chain(&chains) {
            let _ = writeln!(s, "\tchain {} {{", chain.name);
            if let Some(hook) = chain.hook {
                let _ = writeln!(s, "\t\t{hook}");
            }
            for r in &chain.rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            rules += chain.rules.len();
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        Update {
            kind: SyncKind::Full,
            script: s,
            changed: model.ports().keys().cloned().collect(),
            rules,
            model,
            hairpin: HairpinChange::Replace(hairpin),
        }
    }

    /// A transaction that brings an existing (or missing) table to `model`
    /// without deleting it: every chain and set is added (a no-op when it
    /// exists) and flushed, then refilled. Affinity sets are not flushed.
    /// Objects the kernel has beyond the model stay, which only happens if
    /// someone added them by hand: a full sync removes them.
    pub fn plan_refresh(&self, model: Model) -> Update {
        let t = &self.table;
        let mut rules = 0;
        let (elements, sets, chains) = self.all_port_rules(&model);
        let hairpin = hairpin_counts(&model);
        let mut s = String::with_capacity(256 * (model.len() + 16));
        let _ = writeln!(s, "add table ip {t}");
        let all_chains: Vec<&Chain> = self.base_chains.iter().chain(&chains).collect();
        for chain in &all_chains {
            match chain.hook {
                Some(hook) => {
                    let _ = writeln!(s, "add chain ip {t} {} {{ {hook} }}", chain.name);
                }
                None => {
                    let _ = writeln!(s, "add chain ip {t} {}", chain.name);
                }
            }
            let _ = writeln!(s, "flush chain ip {t} {}", chain.name);
        }
        for c in Container::ALL {
            let kind = if c.is_map() { "map" } else { "set" };
            let _ = writeln!(s, "add {kind} ip {t} {} {{ {} }}", c.name(), c.type_decl());
            let _ = writeln!(s, "flush {kind} ip {t} {}", c.name());
        }
        let _ = writeln!(s, "add set ip {t} {HAIRPIN} {{ {HAIRPIN_DECL} }}");
        let _ = writeln!(s, "flush set ip {t} {HAIRPIN}");
        for (name, decl) in &sets {
            let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
        }
        for (c, elems) in &elements {
            add_elements(&mut s, t, c.name(), elems);
        }
        let pairs: Vec<String> = sorted_ips(&hairpin)
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
        add_elements(&mut s, t, HAIRPIN, &pairs);
        for chain in &all_chains {
            for r in &chain.rules {
                let _ = writeln!(s, "add rule ip {t} {} {r}", chain.name);
            }
            rules += chain.rules.len();
        }
        Update {
            kind: SyncKind::Refresh,
            script: s,
            changed: model.ports().keys().cloned().collect(),
            rules,
            model,
            hairpin: HairpinChange::Replace(hairpin),
        }
    }

    /// A transaction touching only the service ports whose model changed
    /// since the last committed update: their chains are added, flushed and
    /// refilled or deleted, their map and set elements added or deleted.
    /// Empty script when nothing changed; a full plan when the kernel state
    /// is unknown.
    pub fn plan_incremental(&self, model: Model) -> Update {
        let Some(applied) = &self.applied else {
            return self.plan_full(model);
        };
        let old = &applied.model;
        let changed = changed_keys(old, &model);

        let mut del_elements: BTreeMap<Container, Vec<String>> = BTreeMap::new();
        let mut new_elements: BTreeMap<Container, Vec<String>> = BTreeMap::new();
        let mut add_sets = Vec::new();
        let mut del_sets = Vec::new();
        let mut add_chains = Vec::new();
        let mut flush_chains = Vec::new();
        let mut fill_chains: Vec<Chain> = Vec::new();
        let mut del_chains = Vec::new();
        let mut hairpin_delta: HashMap<Ipv4Addr, i64> = HashMap::new();
        for key in &changed {
            let before = old.get(key);
            let after = model.get(key);
            for ep in before.iter().flat_map(|p| &p.endpoints) {
                *hairpin_delta.entry(ep.ip).or_default() -= 1;
            }
            for ep in after.iter().flat_map(|p| &p.endpoints) {
                *hairpin_delta.entry(ep.ip).or_default() += 1;
            }
            let before = before.map(|p| self.port_rules(key, p)).unwrap_or_default();
            let after = after.map(|p| self.port_rules(key, p)).unwrap_or_default();
            for e in &before.elements {
                if !after.elements.contains(e) {
                    del_elements
                        .entry(e.container)
                        .or_default()
                        .push(e.key.clone());
                }
            }
            for e in &after.elements {
                if !before.elements.contains(e) {
                    new_elements.entry(e.container).or_default().push(e.text());
                }
            }
            for (name, decl) in &after.sets {
                if !before.sets.iter().any(|(n, _)| n == name) {
                    add_sets.push((name.clone(), decl.clone()));
                }
            }
            for (name, _) in &before.sets {
                if !after.sets.iter().any(|(n, _)| n == name) {
                    del_sets.push(name.clone());
                }
            }
            let kept: Vec<&str> = after.chains.iter().map(|c| c.name.as_str()).collect();
            for chain in &before.chains {
                if !kept.contains(&chain.name.as_str()) {
                    del_chains.push(chain.name.clone());
                }
            }
            for chain in after.chains {
                match before.chains.iter().find(|c| c.name == chain.name) {
                    None => {
                        add_chains.push(chain.name.clone());
                        fill_chains.push(chain);
                    }
                    Some(prev) if prev.rules != chain.rules => {
                        flush_chains.push(chain.name.clone());
                        fill_chains.push(chain);
                    }
                    Some(_) => {}
                }
            }
        }

        let t = &self.table;
        let mut s = String::new();
        for (c, keys) in &del_elements {
            if !keys.is_empty() {
                let _ = writeln!(
                    s,
                    "delete element ip {t} {} {{ {} }}",
                    c.name(),
                    keys.join(", ")
                );
            }
        }
        for (name, decl) in &add_sets {
            let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
        }
        for name in &add_chains {
            let _ = writeln!(s, "add chain ip {t} {name}");
        }
        for name in &flush_chains {
            let _ = writeln!(s, "flush chain ip {t} {name}");
        }
        let mut rules = 0;
        for chain in &fill_chains {
            for r in &chain.rules {
                let _ = writeln!(s, "add rule ip {t} {} {r}", chain.name);
            }
            rules += chain.rules.len();
        }
        for (c, elems) in &new_elements {
            add_elements(&mut s, t, c.name(), elems);
        }
        for name in &del_chains {
            let _ = writeln!(s, "delete chain ip {t} {name}");
        }
        for name in &del_sets {
            let _ = writeln!(s, "delete set ip {t} {name}");
        }
        let mut delta: Vec<(Ipv4Addr, i64)> =
            hairpin_delta.into_iter().filter(|(_, d)| *d != 0).collect();
        delta.sort();
        let mut hp_add = Vec::new();
        let mut hp_del = Vec::new();
        for (ip, d) in &delta {
            let before = i64::from(applied.hairpin.get(ip).copied().unwrap_or(0));
            let after = before + d;
            if before == 0 && after > 0 {
                hp_add.push(format!("{ip} . {ip}"));
            } else if before > 0 && after <= 0 {
                hp_del.push(format!("{ip} . {ip}"));
            }
        }
        if !hp_del.is_empty() {
            let _ = writeln!(
                s,
                "delete element ip {t} {HAIRPIN} {{ {} }}",
                hp_del.join(", ")
            );
        }
        add_elements(&mut s, t, HAIRPIN, &hp_add);
        Update {
            kind: SyncKind::Incremental,
            script: s,
            changed,
            rules,
            model,
            hairpin: HairpinChange::Delta(delta),
        }
    }

    /// The elements (by container), affinity sets and chains of every port.
    #[allow(clippy::type_complexity)]
    fn all_port_rules(
        &self,
        model: &Model,
    ) -> (
        BTreeMap<Container, Vec<String>>,
        Vec<(String, String)>,
        Vec<Chain>,
    ) {
        let mut elements: BTreeMap<Container, Vec<String>> = BTreeMap::new();
        let mut sets = Vec::new();
        let mut chains = Vec::new();
        for (key, port) in model.ports() {
            let pr = self.port_rules(key, port);
            for e in pr.elements {
                elements.entry(e.container).or_default().push(e.text());
            }
            sets.extend(pr.sets);
            chains.extend(pr.chains);
        }
        (elements, sets, chains)
    }

    /// The chains, sets and elements of one service port.
    fn port_rules(&self, key: &ServicePortKey, port: &ServicePort) -> PortRules {
        let mut out = PortRules::default();
        let proto = port.protocol.nft();
        let svc_key = format!("{} . {proto} . {}", port.cluster_ip, port.port);
        let np_key = port.node_port.map(|np| format!("{proto} . {np}"));
        if port.endpoints.is_empty() {
            out.elements.push(Element {
                container: Container::NoEndpointServices,
                key: svc_key,
                value: None,
            });
            if let Some(k) = np_key {
                out.elements.push(Element {
                    container: Container::NoEndpointNodePorts,
                    key: k,
                    value: None,
                });
            }
            return out;
        }
        let chain = service_chain_name(key);
        let verdict = format!("goto {chain}");
        out.elements.push(Element {
            container: Container::ServiceIps,
            key: svc_key,
            value: Some(verdict.clone()),
        });
        if let Some(k) = np_key {
            out.elements.push(Element {
                container: Container::NodePorts,
                key: k,
                value: Some(verdict),
            });
        }
        // Masquerade marks (node ports, sources outside the cluster) are
        // set once in the `services` chain, not per service.
        let mut rules = Vec::new();
        let n = port.endpoints.len();
        let mut targets = Vec::with_capacity(n);
        match port.affinity_timeout {
            None => {
                for ep in &port.endpoints {
                    targets.push(format!(
                        "meta l4proto {proto} dnat to {}:{}",
                        ep.ip, ep.port
                    ));
                }
            }
            Some(timeout) => {
                let mut ep_chains = Vec::with_capacity(n);
                for ep in &port.endpoints {
                    let suffix = format!("{}__{}/{}", readable(key), ep.ip, ep.port);
                    let ip = ep.ip.to_string();
                    let pnum = ep.port.to_string();
                    let parts = [
                        key.namespace.as_str(),
                        &key.name,
                        &key.port_name,
                        &ip,
                        &pnum,
                    ];
                    let ep_chain = format!("ep-{}-{suffix}", short_hash("ep", &parts));
                    let tstr = timeout.to_string();
                    let set_parts = [
                        key.namespace.as_str(),
                        &key.name,
                        &key.port_name,
                        &ip,
                        &pnum,
                        &tstr,
                    ];
                    let set = format!("aff-{}-{suffix}", short_hash("aff", &set_parts));
                    rules.push(format!("ip saddr @{set} goto {ep_chain}"));
                    out.sets.push((
                        set.clone(),
                        format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
                    ));
                    ep_chains.push(Chain {
                        name: ep_chain.clone(),
                        hook: None,
                        rules: vec![
                            format!("update @{set} {{ ip saddr }}"),
                            format!("meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port),
                        ],
                    });
                    targets.push(format!("goto {ep_chain}"));
                }
                out.chains.push(Chain {
                    name: chain.clone(),
                    hook: None,
                    rules: Vec::new(),
                });
                out.chains.extend(ep_chains);
            }
        }
        // Rule i is reached with probability (n-i)/n and takes 1/(n-i) of
        // it, so every endpoint gets 1/n.
        for (i, target) in targets.into_iter().enumerate() {
            if i + 1 < n {
                rules.push(format!("numgen random mod {} == 0 {target}", n - i));
            } else {
                rules.push(target);
            }
        }
        match out.chains.first_mut() {
            Some(svc) => svc.rules = rules,
            None => out.chains.push(Chain {
                name: chain,
                hook: None,
                rules,
            }),
        }
        out
    }
}

/// The keys whose ports differ between `old` and `new` (added, removed or
/// changed), in order: one merge pass over the two sorted maps.
fn changed_keys(old: &Model, new: &Model) -> Vec<ServicePortKey> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let mut a = old.ports().iter().peekable();
    let mut b = new.ports().iter().peekable();
    loop {
        let step = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => (Some((*k).clone()), true, false),
            (None, Some((k, _))) => (Some((*k).clone()), false, true),
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                Ordering::Less => (Some((*ka).clone()), true, false),
                Ordering::Greater => (Some((*kb).clone()), false, true),
                Ordering::Equal => ((va != vb).then(|| (*ka).clone()), true, true),
            },
        };
        out.extend(step.0);
        if step.1 {
            a.next();
        }
        if step.2 {
            b.next();
        }
    }
}

/// The chain of one service port: `svc-<hash>-<ns>/<name>[/<port>]`. The
/// hash (of namespace, name and port name) keeps names unique however the
/// readable part is shortened; both stay the same for the port's life.
pub fn service_chain_name(key: &ServicePortKey) -> String {
    let parts = [key.namespace.as_str(), &key.name, &key.port_name];
    format!("svc-{}-{}", short_hash("svc", &parts), readable(key))
}

/// `ns/name[/port]`, restricted to characters nft accepts in identifiers.
fn readable(key: &ServicePortKey) -> String {
    let mut s = format!("{}/{}", clean(&key.namespace), clean(&key.name));
    if !key.port_name.is_empty() {
        s.push('/');
        s.push_str(&clean(&key.port_name));
    }
    s
}

fn clean(part: &str) -> String {
    part.chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Eight base32 characters (40 bits) of SHA-256 over the parts.
fn short_hash(kind: &str, parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let v = digest[..5]
        .iter()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b));
    (0..8)
        .rev()
        .map(|i| char::from(ALPHABET[((v >> (i * 5)) & 31) as usize]))
        .collect()
}

pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn hairpin_counts(model: &Model) -> HashMap<Ipv4Addr, u32> {
    let mut counts = HashMap::new();
    for ep in model.ports().values().flat_map(|p| &p.endpoints) {
        *counts.entry(ep.ip).or_insert(0u32) += 1;
    }
    counts
}

fn sorted_ips(counts: &HashMap<Ipv4Addr, u32>) -> impl Iterator<Item = Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = counts.keys().copied().collect();
    ips.sort();
    ips.into_iter()
}

/// A set or map declaration inside a `table { }` block.
fn block_set(s: &mut String, kind: &str, name: &str, decl: &str, elements: Option<&[String]>) {
    let _ = writeln!(s, "\t{kind} {name} {{\n\t\t{decl}");
    if let Some(elems) = elements.filter(|e| !e.is_empty()) {
        s.push_str("\t\telements = {\n");
        for (i, e) in elems.iter().enumerate() {
            let sep = if i + 1 < elems.len() { "," } else { "" };
            let _ = writeln!(s, "\t\t\t{e}{sep}");
        }
        s.push_str("\t\t}\n");
    }
    s.push_str("\t}\n");
}

fn add_elements(s: &mut String, table: &str, name: &str, elems: &[String]) {
    if !elems.is_empty() {
        let _ = writeln!(
            s,
            "add element ip {table} {name} {{ {} }}",
            elems.join(", ")
        );
    }
}

/// The chains every table has, whatever the services.
fn base_chains(dns: Option<&DnsRedirect>, cluster_cidr: Option<Ipv4Net>) -> Vec<Chain> {
    let chain = |name: &str, hook: Option<&'static str>, rules: &[&str]| Chain {
        name: name.to_string(),
        hook,
        rules: rules.iter().map(|r| r.to_string()).collect(),
    };
    // Cluster DNS, ahead of the service maps. From pods (prerouting),
    // `redirect` sends to the receiving interface's address, which is also
    // the source the server replies from. From the host (output) the
    // client's own address is the target: a server on 0.0.0.0 replies from
    // its route's source address, which for 127.0.0.1 (what `redirect`
    // would pick there) is not the address the client sent to.
    let mut prerouting = Vec::new();
    let mut output = Vec::new();
    if let Some(d) = dns {
        for proto in ["udp", "tcp"] {
            prerouting.push(format!(
                "ip daddr {} {proto} dport 53 redirect to :{}",
                d.vip, d.port
            ));
            output.push(format!(
                "ip daddr {} {proto} dport 53 dnat to ip saddr:{}",
                d.vip, d.port
            ));
        }
    }
    prerouting.push("jump services".to_string());
    output.push("jump services".to_string());
    // The masquerade mark is set before the lookups and cleared when none
    // matched (a match jumps away with `goto`): traffic to a VIP from
    // outside the cluster, and all node-port traffic, is masqueraded, with
    // one rule for all services instead of one per service.
    let mark = format!("meta mark set meta mark | {MASQ_MARK:#x}");
    let mut services = Vec::new();
    if let Some(cidr) = cluster_cidr {
        services.push(format!("ip saddr != {cidr} {mark}"));
    }
    services.push(format!(
        "ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"
    ));
    services.push(format!("fib daddr type local {mark}"));
    services.push(format!(
        "fib daddr type local meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
    ));
    services.push(format!("meta mark set meta mark & {:#x}", !MASQ_MARK));
    let check = "ct state new jump endpoints-check";
    vec![
        chain(
            "filter-input",
            Some("type filter hook input priority -110; policy accept;"),
            &[check],
        ),
        chain(
            "filter-forward",
            Some("type filter hook forward priority -110; policy accept;"),
            &[check],
        ),
        chain(
            "filter-output",
            Some("type filter hook output priority -110; policy accept;"),
            &[check],
        ),
        Chain {
            name: "endpoints-check".into(),
            hook: None,
            rules: vec![
                format!("ip daddr . meta l4proto . th dport @{NO_ENDPOINT_SERVICES} goto reject-service"),
                format!("fib daddr type local meta l4proto . th dport @{NO_ENDPOINT_NODEPORTS} goto reject-service"),
            ],
        },
        chain(
            "reject-service",
            None,
            &["meta l4proto tcp reject with tcp reset", "reject"],
        ),
        Chain {
            name: "nat-prerouting".into(),
            hook: Some("type nat hook prerouting priority dstnat; policy accept;"),
            rules: prerouting,
        },
        Chain {
            name: "nat-output".into(),
            hook: Some("type nat hook output priority -100; policy accept;"),
            rules: output,
        },
        chain(
            "nat-postrouting",
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            &["jump masquerading"],
        ),
        Chain {
            name: "services".into(),
            hook: None,
            rules: services,
        },
        Chain {
            name: "mark-for-masquerade".into(),
            hook: None,
            rules: vec![format!("meta mark set meta mark | {MASQ_MARK:#x}")],
        },
        Chain {
            name: "masquerading".into(),
            hook: None,
            rules: vec![
                format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} jump mark-for-masquerade"),
                format!("meta mark & {MASQ_MARK:#x} == 0 return"),
                format!("meta mark set meta mark & {:#x}", !MASQ_MARK),
                // Local to local needs no SNAT, and masquerading onto lo
                // (which has no global address) would drop the packet.
                "oif \"lo\" return".to_string(),
                "masquerade fully-random".to_string(),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Endpoint, Protocol};

    fn config() -> ProxyConfig {
        ProxyConfig {
            table: "cdtest".into(),
            cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
            dns: Some(DnsRedirect {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 1053,
            }),
            resync_interval: Duration::from_secs(30),
        }
    }

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            port,
        }
    }

    fn port(vip: [u8; 4], port: u16, node_port: Option<u16>, eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            cluster_ip: Ipv4Addr::from(vip),
            protocol: Protocol::Tcp,
            port,
            node_port,
            affinity_timeout: None,
            endpoints: eps,
        }
    }

    /// web (NodePort, two endpoints), empty (no endpoints), sticky
    /// (ClientIP affinity, one endpoint).
    fn small_model() -> Model {
        let mut m = Model::new();
        m.insert(
            ServicePortKey::new("demo", "web", "http"),
            port(
                [10, 96, 0, 20],
                80,
                Some(30080),
                vec![ep([10, 244, 0, 2], 8080), ep([10, 244, 0, 3], 8080)],
            ),
        );
        m.insert(
            ServicePortKey::new("demo", "empty", ""),
            port([10, 96, 0, 21], 80, Some(30081), vec![]),
        );
        let mut sticky = port([10, 96, 0, 22], 443, None, vec![ep([10, 244, 0, 2], 8443)]);
        sticky.affinity_timeout = Some(600);
        m.insert(ServicePortKey::new("demo", "sticky", ""), sticky);
        m
    }

    fn web_key() -> ServicePortKey {
        ServicePortKey::new("demo", "web", "http")
    }

    /// Compares with `src/proxy/testdata/NAME`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/proxy/testdata")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).expect("writing golden file");
            return;
        }
        let expected = std::fs::read_to_string(&path).expect("reading golden file");
        assert!(
            expected == actual,
            "{name} differs from the golden file (UPDATE_GOLDEN=1 to accept):\n{actual}"
        );
    }

    fn applied_small() -> Proxier {
        let mut p = Proxier::new(&config()).expect("proxier");
        let u = p.plan_full(small_model());
        p.commit(u);
        p
    }

    #[test]
    fn full_script_is_the_golden_one() {
        let p = Proxier::new(&config()).expect("proxier");
        let u = p.plan_full(small_model());
        assert_eq!(u.kind(), SyncKind::Full);
        assert_eq!(u.changed().len(), 3);
        golden("full.nft", u.script());
    }

    #[test]
    fn one_endpoint_change_touches_only_that_service() {
        let p = applied_small();
        let mut m = small_model();
        m.insert(
            web_key(),
            port(
                [10, 96, 0, 20],
                80,
                Some(30080),
                vec![ep([10, 244, 0, 2], 8080)],
            ),
        );
        let u = p.plan_incremental(m);
        assert_eq!(u.kind(), SyncKind::Incremental);
        assert_eq!(u.changed(), &[web_key()]);
        let web = service_chain_name(&web_key());
        for line in u.script().lines() {
            assert!(
                line.contains(&web) || line.contains("hairpin"),
                "touches something else: {line}"
            );
        }
        golden("incremental_endpoint.nft", u.script());
    }

    #[test]
    fn removed_services_and_new_endpoints() {
        let p = applied_small();
        let mut m = small_model();
        m.remove(&web_key());
        m.remove(&ServicePortKey::new("demo", "sticky", ""));
        m.insert(
            ServicePortKey::new("demo", "empty", ""),
            port(
                [10, 96, 0, 21],
                80,
                Some(30081),
                vec![ep([10, 244, 0, 9], 80)],
            ),
        );
        let u = p.plan_incremental(m);
        assert_eq!(u.changed().len(), 3);
        golden("incremental_delete.nft", u.script());
    }

    #[test]
    fn nothing_changed_means_an_empty_transaction() {
        let p = applied_small();
        let u = p.plan_incremental(small_model());
        assert!(u.is_empty(), "{}", u.script());
        assert!(u.changed().is_empty());
    }

    #[test]
    fn incremental_without_known_state_is_full() {
        let mut p = applied_small();
        p.invalidate();
        assert_eq!(p.plan_incremental(small_model()).kind(), SyncKind::Full);
    }

    #[test]
    fn refresh_flushes_everything_but_affinity_entries() {
        let p = applied_small();
        let u = p.plan_refresh(small_model());
        let s = u.script();
        assert!(s.starts_with("add table ip cdtest\n"));
        assert!(!s.contains("delete "), "{s}");
        for chain in p
            .base_chains
            .iter()
            .map(|c| c.name.clone())
            .chain([service_chain_name(&web_key())])
        {
            assert!(
                s.contains(&format!("flush chain ip cdtest {chain}\n")),
                "{chain}"
            );
        }
        assert!(s.contains("add set ip cdtest aff-"));
        assert!(!s.contains("flush set ip cdtest aff-"));
        assert_eq!(u.rules(), p.plan_full(small_model()).rules());
    }

    #[test]
    fn an_affinity_timeout_change_replaces_the_sets_in_order() {
        let p = applied_small();
        let key = ServicePortKey::new("demo", "sticky", "");
        let mut m = small_model();
        let mut sticky = m.get(&key).expect("sticky").clone();
        sticky.affinity_timeout = Some(60);
        m.insert(key, sticky);
        let s = p.plan_incremental(m).script().to_string();
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in\n{s}"))
        };
        let add = pos("add set ip cdtest aff-");
        let flush = pos("flush chain ip cdtest svc-");
        let del = pos("delete set ip cdtest aff-");
        assert!(add < flush && flush < del, "{s}");
        assert!(s.contains("timeout 60s"));
    }

    #[test]
    fn chain_names_are_stable_short_and_valid() {
        // Pinned: a restarted or upgraded agent must name chains the same.
        assert_eq!(service_chain_name(&web_key()), "svc-amyp6tq3-demo/web/http");
        assert_eq!(
            service_chain_name(&ServicePortKey::new("demo", "web", "http")),
            service_chain_name(&web_key())
        );
        let other = service_chain_name(&ServicePortKey::new("demo", "web", "https"));
        assert_ne!(other, service_chain_name(&web_key()));
        let unnamed = service_chain_name(&ServicePortKey::new("demo", "web", ""));
        assert_eq!(unnamed.rsplit_once('-').map(|(_, r)| r), Some("demo/web"));
        let odd = ServicePortKey::new(&"n".repeat(200), "we b$", "p:1");
        let name = service_chain_name(&odd);
        assert!(name.len() < 256, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)),
            "{name}"
        );
    }

    #[test]
    fn table_names_are_checked() {
        for bad in ["", "1table", "a b", "x;flush ruleset"] {
            let cfg = ProxyConfig {
                table: bad.into(),
                ..config()
            };
            assert!(Proxier::new(&cfg).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hairpin_counts_follow_incremental_updates() {
        // A deterministic walk of endpoint changes over a few services that
        // share endpoint addresses: after each commit the reference counts
        // must equal those of the model.
        let mut p = Proxier::new(&config()).expect("proxier");
        let mut m = Model::new();
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for step in 0..200 {
            let svc = next() % 5;
            let key = ServicePortKey::new("ns", &format!("s{svc}"), "");
            if next() % 7 == 0 {
                m.remove(&key);
            } else {
                let eps = (0..next() % 4)
                    .map(|_| ep([10, 244, 0, (next() % 6) as u8], 80))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                m.insert(key, port([10, 96, 1, svc as u8], 80, None, eps));
            }
            let u = p.plan_incremental(m.clone());
            assert_eq!(u.kind() == SyncKind::Full, step == 0);
            p.commit(u);
            let applied = p.applied.as_ref().expect("applied");
            assert_eq!(applied.hairpin, hairpin_counts(&m), "step {step}");
            assert_eq!(applied.model, m);
        }
    }
}
