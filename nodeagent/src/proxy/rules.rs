//! The nftables rule generator: turns a [`Model`] into nft scripts, and
//! remembers what the kernel was last given so the next change is written
//! as a transaction that touches only the service ports that changed.
//!
//! # Layout (one `ip` table owned by commitd, names in [`super::layout`])
//!
//! - `service-ips`: verdict map `daddr . l4proto . dport` → `goto` a pick
//!   chain; `service-nodeports`: `l4proto . dport` → the node-port pick
//!   chain, consulted only for packets to a local address (`fib daddr type
//!   local`, so node IPs and 127.0.0.1 alike).
//! - Endpoints are data, not rules: map `endpoint-slot-i` holds the i-th
//!   ready endpoint (`ip . port`) of every service port (`VIP . l4proto .
//!   port`) that has one, and chain `dnat-slot-i` DNATs through it. A pick
//!   chain per endpoint count in use (`pick-of-N`) draws a slot with
//!   `numgen random mod N` and goes to its chain. Node ports have the same
//!   under `nodeport-`, keyed by `l4proto . port`. Replacing an endpoint
//!   therefore rewrites one element and scaling repoints one verdict: no
//!   rule is added, and the kernel does not re-validate the table, which it
//!   does, walking every chain, whenever a rule with NAT or a jump is added.
//! - ClientIP affinity (only for services that ask for it): the port's
//!   verdict goes to its own chain (`svc-<hash>-<ns>/<name>[/<port>]`),
//!   with a chain and a timeout set per endpoint; the service chain first
//!   sends a client found in an endpoint's set to that endpoint, otherwise
//!   picks one with a cascade of `numgen random mod (N-i) == 0` rules, and
//!   the endpoint chain refreshes the client's entry.
//! - Masquerade marks (node-port traffic always, VIP traffic from outside
//!   the cluster CIDR) are set once in the `services` chain and cleared
//!   when no map matched.
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
//! Pick and slot chains, slot maps and hairpin elements are shared between
//! service ports, so
//! the proxier keeps reference counts of them: an incremental transaction
//! adds one when its first user appears and deletes it with its last.
//!
//! A full sync recreates the table in one transaction (`add table`,
//! `delete table`, `table { … }`): conntrack keeps the NAT decision of
//! established flows, so they survive it. A refresh (the periodic resync)
//! re-adds and flushes every object instead of deleting the table, which
//! heals hand edits while keeping the affinity sets' entries.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::conntrack::{self, StaleFlows};
use super::layout::{
    base_chains, readable, service_chain_name, short_hash, valid_table_name, Chain, Container,
    Pick, Slot,
};
use super::model::{Model, ServicePort, ServicePortKey};
use super::nft::{self, NftError};
use super::ProxyConfig;

/// One element of a [`Container`]: the key, and the value for maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    container: Container,
    key: String,
    value: Option<String>,
}

impl Element {
    fn new(container: Container, key: String, value: Option<String>) -> Element {
        Element {
            container,
            key,
            value,
        }
    }

    fn text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {}", self.key, v),
            None => self.key.clone(),
        }
    }
}

/// What one service port adds to the table on its own (shared objects
/// aside, see [`Shared`]).
#[derive(Debug, Default)]
struct PortRules {
    /// Affinity only: the service chain first, then endpoint chains.
    chains: Vec<Chain>,
    /// Affinity sets: name and declaration.
    sets: Vec<(String, String)>,
    elements: Vec<Element>,
}

/// Objects several service ports can share: they exist while at least one
/// port uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Shared {
    /// The pick chain for a count of endpoints.
    Pick(Pick),
    /// A slot's map and chain.
    Slot(Slot),
    /// The `hairpin` element of an endpoint address.
    Hairpin(Ipv4Addr),
}

impl Shared {
    /// The shared objects `port` uses, once per use.
    fn used_by(port: &ServicePort) -> impl Iterator<Item = Shared> + '_ {
        let count = port.endpoints.len();
        let picks = if port.affinity_timeout.is_none() && count > 0 {
            let vip = Some(Pick {
                node_port: false,
                count,
            });
            let np = port.node_port.map(|_| Pick {
                node_port: true,
                count,
            });
            [vip, np]
        } else {
            [None, None]
        };
        picks
            .into_iter()
            .flatten()
            .flat_map(|p| std::iter::once(Shared::Pick(p)).chain(p.slots().map(Shared::Slot)))
            .chain(port.endpoints.iter().map(|ep| Shared::Hairpin(ep.ip)))
    }

    fn element(self) -> Option<String> {
        match self {
            Shared::Hairpin(ip) => Some(format!("{ip} . {ip}")),
            Shared::Pick(_) | Shared::Slot(_) => None,
        }
    }

    fn chain(self) -> Option<Chain> {
        match self {
            Shared::Pick(p) => Some(p.chain()),
            Shared::Slot(s) => Some(s.chain()),
            Shared::Hairpin(_) => None,
        }
    }

    fn map(self) -> Option<Container> {
        match self {
            Shared::Slot(s) => Some(Container::Slot(s)),
            _ => None,
        }
    }
}

/// How many uses each shared object has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RefCounts(BTreeMap<Shared, u32>);

impl RefCounts {
    fn of(model: &Model) -> RefCounts {
        let mut counts = BTreeMap::new();
        for port in model.ports().values() {
            for s in Shared::used_by(port) {
                *counts.entry(s).or_insert(0u32) += 1;
            }
        }
        RefCounts(counts)
    }

    /// The objects `delta` brings into use, and those it leaves unused.
    fn transitions(&self, delta: &BTreeMap<Shared, i64>) -> (Vec<Shared>, Vec<Shared>) {
        let mut appear = Vec::new();
        let mut vanish = Vec::new();
        for (s, d) in delta {
            let before = i64::from(self.0.get(s).copied().unwrap_or(0));
            let after = before + d;
            if before <= 0 && after > 0 {
                appear.push(*s);
            } else if before > 0 && after <= 0 {
                vanish.push(*s);
            }
        }
        (appear, vanish)
    }

    fn apply(&mut self, delta: &BTreeMap<Shared, i64>) {
        for (s, d) in delta {
            let now = i64::from(self.0.get(s).copied().unwrap_or(0)) + d;
            if now > 0 {
                self.0.insert(*s, u32::try_from(now).unwrap_or(u32::MAX));
            } else {
                self.0.remove(s);
            }
        }
    }
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

/// How the shared objects' reference counts change when an update is
/// committed.
#[derive(Debug)]
enum SharedChange {
    Replace(RefCounts),
    Delta(BTreeMap<Shared, i64>),
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
    shared: SharedChange,
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
    /// UDP flows the update left pointing at removed endpoints, for
    /// [`conntrack::delete`].
    pub stale_flows: Vec<StaleFlows>,
}

/// A table name nft would not accept as an identifier.
#[derive(Debug, thiserror::Error)]
#[error("invalid nftables table name {0:?}: use letters, digits, '_' and '-', starting with a letter, at most 64 characters")]
pub struct InvalidTableName(pub String);

/// What the kernel was last given.
#[derive(Debug)]
struct Applied {
    model: Model,
    shared: RefCounts,
}

/// Everything a whole model puts in the table, for full syncs and
/// refreshes.
struct Whole {
    /// The fixed containers, then slot maps.
    containers: Vec<Container>,
    elements: BTreeMap<Container, Vec<String>>,
    sets: Vec<(String, String)>,
    /// Base chains, then pick chains, then affinity chains.
    chains: Vec<Chain>,
    shared: RefCounts,
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
        let shared = match update.shared {
            SharedChange::Replace(counts) => counts,
            SharedChange::Delta(delta) => {
                let mut counts = self.applied.take().map(|a| a.shared).unwrap_or_default();
                counts.apply(&delta);
                counts
            }
        };
        self.applied = Some(Applied {
            model: update.model,
            shared,
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

    /// Plans the sync that starts from an unknown kernel state (agent
    /// start, or after a failure): a full one, which only creates the table
    /// when `nft` says it does not exist (a node's first start), since
    /// deleting even an empty table costs the kernel a grace period.
    pub async fn plan_first(&self, model: Model) -> Update {
        match nft::table_exists(&self.table).await {
            Ok(false) => self.plan_whole(model, false),
            // Present, or unknown: replacing is right either way.
            Ok(true) | Err(_) => self.plan_full(model),
        }
    }

    /// Plans, applies with `nft -f -` and commits. On failure the kernel
    /// state is forgotten, so the next sync is a full one.
    pub async fn sync(&mut self, model: Model, kind: SyncKind) -> Result<SyncStats, NftError> {
        let start = Instant::now();
        let update = match kind {
            SyncKind::Full | SyncKind::Incremental if self.applied.is_none() => {
                self.plan_first(model).await
            }
            _ => self.plan(model, kind),
        };
        if !update.is_empty() {
            if let Err(e) = nft::apply(update.script()).await {
                self.invalidate();
                return Err(e);
            }
        }
        let stale_flows = self
            .applied
            .as_ref()
            .map(|a| conntrack::stale_udp_flows(&a.model, &update.model, &update.changed))
            .unwrap_or_default();
        let stats = SyncStats {
            kind: update.kind,
            changed: update.changed.len(),
            rules: update.rules,
            duration: start.elapsed(),
            stale_flows,
        };
        self.commit(update);
        Ok(stats)
    }

    /// A transaction that recreates the table with exactly `model`.
    pub fn plan_full(&self, model: Model) -> Update {
        self.plan_whole(model, true)
    }

    /// The table with exactly `model`, deleting any previous one first
    /// when `replace`.
    fn plan_whole(&self, model: Model, replace: bool) -> Update {
        let t = &self.table;
        let whole = self.whole(&model);
        let mut s = String::with_capacity(256 * (model.len() + 16));
        if replace {
            let _ = writeln!(s, "add table ip {t}\ndelete table ip {t}");
        }
        let _ = writeln!(s, "table ip {t} {{");
        for &c in &whole.containers {
            let _ = writeln!(s, "\t{} {} {{\n\t\t{}", c.keyword(), c.name(), c.decl());
            if let Some(elems) = whole.elements.get(&c).filter(|e| !e.is_empty()) {
                s.push_str("\t\telements = {\n");
                for (i, e) in elems.iter().enumerate() {
                    let sep = if i + 1 < elems.len() { "," } else { "" };
                    let _ = writeln!(s, "\t\t\t{e}{sep}");
                }
                s.push_str("\t\t}\n");
            }
            s.push_str("\t}\n");
        }
        for (name, decl) in &whole.sets {
            let _ = writeln!(s, "\tset {name} {{ {decl} }}");
        }
        let mut rules = 0;
        for chain in &whole.chains {
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
            shared: SharedChange::Replace(whole.shared),
        }
    }

    /// A transaction that brings an existing (or missing) table to `model`
    /// without deleting it: every chain and set is added (a no-op when it
    /// exists) and flushed, then refilled, and what the last update made
    /// that `model` no longer uses is deleted. Affinity sets are not
    /// flushed. Objects someone added by hand stay: a full sync removes
    /// them.
    pub fn plan_refresh(&self, model: Model) -> Update {
        let t = &self.table;
        let whole = self.whole(&model);
        let mut s = String::with_capacity(256 * (model.len() + 16));
        let _ = writeln!(s, "add table ip {t}");
        for chain in &whole.chains {
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
        for &c in &whole.containers {
            let (kind, name) = (c.keyword(), c.name());
            let _ = writeln!(s, "add {kind} ip {t} {name} {{ {} }}", c.decl());
            let _ = writeln!(s, "flush {kind} ip {t} {name}");
        }
        for (name, decl) in &whole.sets {
            let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
        }
        for (c, elems) in &whole.elements {
            add_elements(&mut s, t, &c.name(), elems);
        }
        let mut rules = 0;
        for chain in &whole.chains {
            for r in &chain.rules {
                let _ = writeln!(s, "add rule ip {t} {} {r}", chain.name);
            }
            rules += chain.rules.len();
        }
        // What the last update made that the model no longer uses; the
        // flushes above removed every reference to it.
        if let Some(applied) = &self.applied {
            let stale = stale_objects(applied, &whole);
            for name in &stale.chains {
                let _ = writeln!(s, "delete chain ip {t} {name}");
            }
            for name in &stale.sets {
                let _ = writeln!(s, "delete set ip {t} {name}");
            }
            for c in &stale.maps {
                let _ = writeln!(s, "delete map ip {t} {}", c.name());
            }
        }
        Update {
            kind: SyncKind::Refresh,
            script: s,
            changed: model.ports().keys().cloned().collect(),
            rules,
            model,
            shared: SharedChange::Replace(whole.shared),
        }
    }

    /// A transaction touching only the service ports whose model changed
    /// since the last committed update: their elements are deleted or
    /// added, affinity chains and sets added, refilled or deleted, and
    /// shared objects added with their first user and deleted with their
    /// last. Empty script when nothing changed; a full plan when the kernel
    /// state is unknown.
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
        let mut add_maps = Vec::new();
        let mut del_maps = Vec::new();
        let mut add_chains = Vec::new();
        let mut flush_chains = Vec::new();
        let mut fill_chains: Vec<Chain> = Vec::new();
        let mut del_chains = Vec::new();
        let mut delta: BTreeMap<Shared, i64> = BTreeMap::new();
        for key in &changed {
            let before = old.get(key);
            let after = model.get(key);
            for s in before.into_iter().flat_map(Shared::used_by) {
                *delta.entry(s).or_default() -= 1;
            }
            for s in after.into_iter().flat_map(Shared::used_by) {
                *delta.entry(s).or_default() += 1;
            }
            let before = before.map(|p| port_rules(key, p)).unwrap_or_default();
            let after = after.map(|p| port_rules(key, p)).unwrap_or_default();
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
            for chain in &before.chains {
                if !after.chains.iter().any(|c| c.name == chain.name) {
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
        delta.retain(|_, d| *d != 0);
        let (appear, vanish) = applied.shared.transitions(&delta);
        for s in appear {
            if let Some(e) = s.element() {
                new_elements.entry(Container::Hairpin).or_default().push(e);
            }
            if let Some(chain) = s.chain() {
                add_chains.push(chain.name.clone());
                fill_chains.push(chain);
            }
            add_maps.extend(s.map());
        }
        for s in vanish {
            if let Some(e) = s.element() {
                del_elements.entry(Container::Hairpin).or_default().push(e);
            }
            if let Some(chain) = s.chain() {
                del_chains.push(chain.name);
            }
            del_maps.extend(s.map());
        }

        // Order matters: elements go before the chains they point to, and
        // chains and sets come before the elements and rules that use them.
        let t = &self.table;
        let mut s = String::new();
        for (c, keys) in &del_elements {
            let _ = writeln!(
                s,
                "delete element ip {t} {} {{ {} }}",
                c.name(),
                keys.join(", ")
            );
        }
        for (name, decl) in &add_sets {
            let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
        }
        for c in &add_maps {
            let _ = writeln!(s, "add map ip {t} {} {{ {} }}", c.name(), c.decl());
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
            add_elements(&mut s, t, &c.name(), elems);
        }
        for name in &del_chains {
            let _ = writeln!(s, "delete chain ip {t} {name}");
        }
        for name in &del_sets {
            let _ = writeln!(s, "delete set ip {t} {name}");
        }
        for c in &del_maps {
            let _ = writeln!(s, "delete map ip {t} {}", c.name());
        }
        Update {
            kind: SyncKind::Incremental,
            script: s,
            changed,
            rules,
            model,
            shared: SharedChange::Delta(delta),
        }
    }

    /// Everything `model` puts in the table.
    fn whole(&self, model: &Model) -> Whole {
        let shared = RefCounts::of(model);
        let mut elements: BTreeMap<Container, Vec<String>> = BTreeMap::new();
        let mut sets = Vec::new();
        let mut containers = Container::FIXED.to_vec();
        let mut chains = self.base_chains.clone();
        for s in shared.0.keys() {
            if let Some(e) = s.element() {
                elements.entry(Container::Hairpin).or_default().push(e);
            }
            chains.extend(s.chain());
            containers.extend(s.map());
        }
        for (key, port) in model.ports() {
            let pr = port_rules(key, port);
            for e in pr.elements {
                elements.entry(e.container).or_default().push(e.text());
            }
            sets.extend(pr.sets);
            chains.extend(pr.chains);
        }
        Whole {
            containers,
            elements,
            sets,
            chains,
            shared,
        }
    }
}

/// Chains, sets and maps to delete, in that order.
#[derive(Debug, Default)]
struct Stale {
    chains: Vec<String>,
    sets: Vec<String>,
    maps: Vec<Container>,
}

/// The objects `applied` has that `whole` lacks: shared ones no port uses
/// any more (pick chains before the slot chains they go to), and the
/// affinity chains and sets of ports that are gone or changed.
fn stale_objects(applied: &Applied, whole: &Whole) -> Stale {
    let mut out = Stale::default();
    for s in applied.shared.0.keys() {
        if !whole.shared.0.contains_key(s) {
            out.chains.extend(s.chain().map(|c| c.name));
            out.maps.extend(s.map());
        }
    }
    let chains: HashSet<&str> = whole.chains.iter().map(|c| c.name.as_str()).collect();
    let sets: HashSet<&str> = whole.sets.iter().map(|(n, _)| n.as_str()).collect();
    for (key, port) in applied.model.ports() {
        if port.affinity_timeout.is_none() {
            continue; // only affinity ports have objects of their own
        }
        let pr = port_rules(key, port);
        for c in pr.chains {
            if !chains.contains(c.name.as_str()) {
                out.chains.push(c.name);
            }
        }
        for (name, _) in pr.sets {
            if !sets.contains(name.as_str()) {
                out.sets.push(name);
            }
        }
    }
    out
}

/// The elements, and for affinity the chains and sets, of one service port.
fn port_rules(key: &ServicePortKey, port: &ServicePort) -> PortRules {
    let mut out = PortRules::default();
    let proto = port.protocol.nft();
    let svc_key = format!("{} . {proto} . {}", port.cluster_ip, port.port);
    let np_key = port.node_port.map(|np| format!("{proto} . {np}"));
    let n = port.endpoints.len();
    if n == 0 {
        out.elements
            .push(Element::new(Container::NoEndpointServices, svc_key, None));
        if let Some(k) = np_key {
            out.elements
                .push(Element::new(Container::NoEndpointNodePorts, k, None));
        }
        return out;
    }
    let Some(timeout) = port.affinity_timeout else {
        for (index, ep) in port.endpoints.iter().enumerate() {
            let target = format!("{} . {}", ep.ip, ep.port);
            let slot = |node_port| Container::Slot(Slot { node_port, index });
            out.elements.push(Element::new(
                slot(false),
                svc_key.clone(),
                Some(target.clone()),
            ));
            if let Some(k) = &np_key {
                out.elements
                    .push(Element::new(slot(true), k.clone(), Some(target)));
            }
        }
        let pick = |node_port| {
            let p = Pick {
                node_port,
                count: n,
            };
            Some(format!("goto {}", p.chain_name()))
        };
        out.elements
            .push(Element::new(Container::ServiceIps, svc_key, pick(false)));
        if let Some(k) = np_key {
            out.elements
                .push(Element::new(Container::NodePorts, k, pick(true)));
        }
        return out;
    };
    let chain = service_chain_name(key);
    let verdict = Some(format!("goto {chain}"));
    out.elements.push(Element::new(
        Container::ServiceIps,
        svc_key,
        verdict.clone(),
    ));
    if let Some(k) = np_key {
        out.elements
            .push(Element::new(Container::NodePorts, k, verdict));
    }
    let mut rules = Vec::with_capacity(2 * n);
    let mut targets = Vec::with_capacity(n);
    let mut ep_chains = Vec::with_capacity(n);
    let tstr = timeout.to_string();
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
    // Rule i is reached with probability (n-i)/n and takes 1/(n-i) of it,
    // so every endpoint gets 1/n.
    for (i, target) in targets.into_iter().enumerate() {
        if i + 1 < n {
            rules.push(format!("numgen random mod {} == 0 {target}", n - i));
        } else {
            rules.push(target);
        }
    }
    out.chains.push(Chain {
        name: chain,
        hook: None,
        rules,
    });
    out.chains.extend(ep_chains);
    out
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

fn add_elements(s: &mut String, table: &str, name: &str, elems: &[String]) {
    if !elems.is_empty() {
        let _ = writeln!(
            s,
            "add element ip {table} {name} {{ {} }}",
            elems.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Endpoint, Protocol};
    use crate::proxy::DnsRedirect;

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
            web_key(),
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
    fn creating_the_table_is_a_full_sync_without_the_delete() {
        let p = Proxier::new(&config()).expect("proxier");
        let full = p.plan_full(small_model());
        let create = p.plan_whole(small_model(), false);
        assert_eq!(create.kind(), SyncKind::Full);
        assert_eq!(
            full.script(),
            format!(
                "add table ip cdtest\ndelete table ip cdtest\n{}",
                create.script()
            )
        );
    }

    #[test]
    fn a_replaced_endpoint_only_rewrites_elements() {
        // The common change (a pod replaced by another) must not add rules:
        // rules with NAT make the kernel re-validate the whole table.
        let p = applied_small();
        let mut m = small_model();
        m.insert(
            web_key(),
            port(
                [10, 96, 0, 20],
                80,
                Some(30080),
                vec![ep([10, 244, 0, 2], 8080), ep([10, 244, 0, 7], 8080)],
            ),
        );
        let u = p.plan_incremental(m);
        assert_eq!(u.changed(), &[web_key()]);
        assert_eq!(u.rules(), 0);
        golden("incremental_endpoint.nft", u.script());
        for line in u.script().lines() {
            assert!(
                line.starts_with("delete element ") || line.starts_with("add element "),
                "{line}"
            );
            assert!(
                line.contains("endpoint-slot-1 { 10.96.0.20 . tcp . 80")
                    || line.contains("nodeport-endpoint-slot-1 { tcp . 30080")
                    || line.contains(" hairpin "),
                "touches something else: {line}"
            );
        }
    }

    #[test]
    fn a_new_endpoint_count_brings_its_pick_chain_and_drops_the_unused_one() {
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
        let s = p.plan_incremental(m).script().to_string();
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in\n{s}"))
        };
        // pick-of-1 exists before the element that points to it; pick-of-2
        // goes after the element that pointed to it, and before the slot
        // chain it points to, which goes before its map.
        assert!(pos("add chain ip cdtest pick-of-1\n") < pos(": goto pick-of-1"));
        assert!(
            pos("delete element ip cdtest service-ips") < pos("delete chain ip cdtest pick-of-2\n")
        );
        assert!(
            pos("delete chain ip cdtest pick-of-2\n") < pos("delete chain ip cdtest dnat-slot-1\n")
        );
        assert!(
            pos("delete chain ip cdtest dnat-slot-1\n")
                < pos("delete map ip cdtest endpoint-slot-1\n")
        );
        assert!(
            s.contains("delete chain ip cdtest nodeport-pick-of-2\n"),
            "{s}"
        );
        assert!(
            s.contains("add chain ip cdtest nodeport-pick-of-1\n"),
            "{s}"
        );
        assert!(
            !s.contains("chain ip cdtest dnat-slot-0\n"),
            "slot 0 stays in use: {s}"
        );
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
        let sticky = service_chain_name(&ServicePortKey::new("demo", "sticky", ""));
        for chain in p
            .base_chains
            .iter()
            .map(|c| c.name.clone())
            .chain(
                [
                    "pick-of-2",
                    "nodeport-pick-of-2",
                    "dnat-slot-1",
                    "nodeport-dnat-slot-1",
                ]
                .map(String::from),
            )
            .chain([sticky])
        {
            assert!(
                s.contains(&format!("flush chain ip cdtest {chain}\n")),
                "{chain}"
            );
        }
        let slot = Container::Slot(Slot {
            node_port: true,
            index: 1,
        });
        for c in Container::FIXED.into_iter().chain([slot]) {
            assert!(
                s.contains(&format!("flush {} ip cdtest {}\n", c.keyword(), c.name())),
                "{c:?}"
            );
        }
        assert!(s.contains("add set ip cdtest aff-"));
        assert!(!s.contains("flush set ip cdtest aff-"));
        assert_eq!(u.rules(), p.plan_full(small_model()).rules());
    }

    #[test]
    fn refresh_deletes_what_the_model_no_longer_uses() {
        let p = applied_small();
        let mut m = small_model();
        m.remove(&ServicePortKey::new("demo", "sticky", ""));
        m.remove(&web_key());
        let s = p.plan_refresh(m).script().to_string();
        let sticky = service_chain_name(&ServicePortKey::new("demo", "sticky", ""));
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in\n{s}"))
        };
        assert!(
            pos("flush map ip cdtest service-ips\n") < pos("delete chain ip cdtest pick-of-2\n")
        );
        assert!(
            pos("delete chain ip cdtest pick-of-2\n") < pos("delete chain ip cdtest dnat-slot-0\n")
        );
        assert!(
            pos("delete chain ip cdtest dnat-slot-1\n")
                < pos("delete map ip cdtest endpoint-slot-1\n")
        );
        assert!(
            s.contains(&format!("delete chain ip cdtest {sticky}\n")),
            "{s}"
        );
        assert!(s.contains("delete set ip cdtest aff-"), "{s}");
        // Without a known state there is nothing to compare with.
        let fresh = Proxier::new(&config()).expect("proxier");
        assert!(!fresh
            .plan_refresh(small_model())
            .script()
            .contains("delete "));
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
    fn bad_table_names_are_refused() {
        let cfg = ProxyConfig {
            table: "x;flush ruleset".into(),
            ..config()
        };
        assert!(Proxier::new(&cfg).is_err());
    }

    #[test]
    fn shared_counts_follow_incremental_updates() {
        // A deterministic walk of changes over a few services that share
        // endpoint addresses and endpoint counts, some with node ports or
        // affinity: after each commit the reference counts must equal those
        // of the model.
        let mut p = Proxier::new(&config()).expect("proxier");
        let mut m = Model::new();
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for step in 0..300 {
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
                let node_port = (next() % 2 == 0).then_some(30000 + svc as u16);
                let mut p = port([10, 96, 1, svc as u8], 80, node_port, eps);
                p.affinity_timeout = (next() % 4 == 0).then_some(60);
                m.insert(key, p);
            }
            let u = p.plan_incremental(m.clone());
            assert_eq!(u.kind() == SyncKind::Full, step == 0);
            p.commit(u);
            let applied = p.applied.as_ref().expect("applied");
            assert_eq!(applied.shared, RefCounts::of(&m), "step {step}");
            assert_eq!(applied.model, m);
        }
    }
}
