//! `commitd bench services`: how fast the service proxy programs nftables,
//! against loading the same ruleset with `nft -f` directly.
//!
//! Everything runs in a network namespace the benchmark creates (and always
//! deletes): a dedicated thread enters it with `setns` and drives `nft` from
//! a current-thread runtime, so the `nft` processes it starts, and the
//! tables they load, live there and never touch the host's rules. For each
//! service count, with synthetic ClusterIP services of N endpoints each:
//!
//! - **(a) full sync**: a fresh [`Proxier`] plans the whole table, `nft -f -`
//!   loads it into an empty namespace and the update is committed — what
//!   `Proxier::sync(Full)` does, with planning and `nft` timed apart.
//! - **(b) one endpoint change**, with the table loaded: one endpoint of one
//!   service replaced by a new address (a pod replaced), removed (scaled
//!   down or not ready) and added back (scaled up): incremental plan, `nft
//!   -f -`, commit, each timed on its own. Also timed: rebuilding the model
//!   from Service and Endpoints objects, which the agent's loop does before
//!   every plan.
//! - **(c) raw `nft -f`** into an empty namespace of: the same ruleset,
//!   which the benchmark writes from `nft list table` of the proxy's loaded
//!   table (so the ratio (a)/(c) is what planning, the script's form and
//!   committing cost on top of the kernel's own work); and, for reference,
//!   the classic layout the benchmark writes itself, one chain per service
//!   with a cascade of `numgen random mod k == 0` DNAT rules, as
//!   kube-proxy's nftables mode does.
//!
//! It prints median, min and max per figure, the ratios, and the issue's
//! goals with whether they are met. Figures only: nothing is asserted about
//! timings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use commitd_nodeagent::proxy::{
    self, nft, Endpoint, Model, Protocol, Proxier, ProxyConfig, ServicePort, ServicePortKey,
    SyncKind,
};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort as SpecPort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::bench::{ms, summary};
use super::components::shutdown_token;

/// Prefix of the network namespace (`<prefix>-<pid>`).
const NETNS_PREFIX: &str = "cdbenchsvc";
/// The table the proxier owns in the namespace.
const PROXY_TABLE: &str = "cdbenchsvc";
/// The table of the benchmark's own ruleset.
const RAW_TABLE: &str = "cdbenchraw";
/// The synthetic services' namespace.
const NAMESPACE: &str = "bench";
/// Virtual IPs are taken from here, starting at [`VIP_OFFSET`].
const SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);
/// Leaves the first addresses of the service CIDR alone, as allocators do.
const VIP_OFFSET: u32 = 10;
/// Endpoint addresses come from here; it is also the proxier's cluster CIDR.
const POD_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 64, 0, 0), 10);
/// Every service listens on this port …
const SERVICE_PORT: u16 = 80;
/// … and forwards to this one.
const TARGET_PORT: u16 = 8080;
/// Pause after deleting the tables, before a measured load: the kernel
/// frees a deleted table's objects in a worker, which would otherwise run
/// during the measurement.
const SETTLE: Duration = Duration::from_millis(300);
/// The goal for full sync over raw `nft -f` (ratio of medians).
const GOAL_FULL_RATIO: f64 = 1.2;
/// The goal for one endpoint change, in ms …
const GOAL_CHANGE_MS: f64 = 50.0;
/// … with this many services loaded.
const GOAL_CHANGE_SERVICES: usize = 10_000;
/// Most services per size (the service CIDR holds about a million).
const MAX_SERVICES: usize = 200_000;
/// Most endpoints per service.
const MAX_ENDPOINTS: usize = 64;

/// `commitd bench services`.
#[derive(Args, Debug, Clone)]
pub struct ServicesArgs {
    /// Service counts to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub services: Vec<usize>,
    /// Ready endpoints per service.
    #[arg(long, default_value_t = 5)]
    pub endpoints: usize,
    /// Measured runs per figure (after one unmeasured warm-up); median,
    /// min and max are printed.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// Runs the benchmark and prints its figures on stdout (progress on
/// stderr). The namespace is deleted at the end, on errors and on Ctrl-C.
pub async fn run(args: ServicesArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let cancel = shutdown_token()?;
    let netns = Netns::create(format!("{NETNS_PREFIX}-{}", std::process::id())).await?;
    progress(format_args!("network namespace {}", netns.name));
    let result = run_in_netns(netns.path(), netns.name.clone(), args, cancel).await;
    if let Err(e) = netns.delete().await {
        warn!(error = %format!("{e:#}"), "deleting the benchmark's network namespace");
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn check_args(args: &ServicesArgs) -> anyhow::Result<()> {
    if args.services.is_empty() || args.services.iter().any(|&n| n == 0 || n > MAX_SERVICES) {
        bail!("--services takes counts from 1 to {MAX_SERVICES}");
    }
    if args.endpoints == 0 || args.endpoints > MAX_ENDPOINTS {
        bail!("--endpoints takes a count from 1 to {MAX_ENDPOINTS}");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for &n in &args.services {
        nth(POD_CIDR, n * args.endpoints + 1)
            .and_then(|_| nth(SERVICE_CIDR, n + VIP_OFFSET as usize))
            .with_context(|| {
                format!(
                    "{n} services x {} endpoints do not fit the benchmark's address ranges",
                    args.endpoints
                )
            })?;
    }
    Ok(())
}

/// Prints a progress line on stderr.
fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("bench: {args}");
}

/// The benchmark's network namespace; [`Netns::delete`] removes it.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    async fn create(name: String) -> anyhow::Result<Netns> {
        ip(&["netns", "add", &name]).await?;
        Ok(Netns {
            name,
            deleted: false,
        })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        ip(&["netns", "del", &self.name]).await
    }
}

impl Drop for Netns {
    /// Only reached without [`Netns::delete`] (a panic on the way): blocks
    /// briefly, which is acceptable while unwinding.
    fn drop(&mut self) {
        if !self.deleted {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// Runs `ip ARGS`, failing with its error output.
async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs the measurements on a thread that has entered the namespace at
/// `path`, and waits for it without blocking the runtime.
async fn run_in_netns(
    path: PathBuf,
    name: String,
    args: ServicesArgs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("bench-services".into())
        .spawn(move || {
            let _ = tx.send(bench_thread(&path, &name, &args, &cancel));
        })
        .context("starting the benchmark thread")?;
    let result = rx
        .await
        .unwrap_or_else(|_| Err(anyhow!("the benchmark thread panicked")));
    // The thread has sent its result (or died): joining is immediate.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result
}

/// Enters the namespace, then measures every size on a current-thread
/// runtime; removes both tables whatever happened.
fn bench_thread(
    path: &Path,
    name: &str,
    args: &ServicesArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the benchmark thread's runtime")?;
    rt.block_on(async {
        let result = measure_all(name, args, cancel).await;
        if let Err(e) = remove_tables().await {
            warn!(error = %format!("{e:#}"), "removing the benchmark's tables");
        }
        result
    })
}

/// Every size, then the goals.
async fn measure_all(
    netns: &str,
    args: &ServicesArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let version = nft::run(&["--version"], None)
        .await
        .context("running nft --version (is nftables installed?)")?;
    // Nothing of ours may be there; a leftover would distort the first run.
    remove_tables().await?;
    println!("{}", header(version.trim(), netns, args));
    let mut all = Vec::new();
    for &n in &args.services {
        let figures = measure_size(n, args, cancel).await?;
        println!("{}", size_report(&figures));
        all.push(figures);
    }
    println!("{}", goals_report(&all));
    Ok(())
}

fn header(version: &str, netns: &str, args: &ServicesArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncommitd bench services: {version}, in network namespace {netns} (deleted at the end)"
    );
    let _ = writeln!(
        s,
        "  ClusterIP services (TCP {SERVICE_PORT} -> {TARGET_PORT}) x {} endpoints, no node ports; \
         {} measured run(s) per figure after one warm-up;\n  \
         every load from scratch starts {} ms after the namespace was emptied. Times in ms.",
        args.endpoints,
        args.runs,
        SETTLE.as_millis()
    );
    let _ = writeln!(
        s,
        "  (a) full sync: Proxier::plan_first (which checks with `nft list tables` that the table \
         is absent) + `nft -f -`\n      + commit into an empty namespace \
         (= Proxier::sync(Full) of a new proxier); proxy table {PROXY_TABLE}, cluster CIDR \
         {POD_CIDR}."
    );
    let _ = writeln!(
        s,
        "  (b) one endpoint change, whole table loaded: Proxier::plan_incremental + `nft -f -` + \
         commit, for one endpoint\n      of one service replaced by a new address, removed, \
         and added back. The agent's loop first\n      rebuilds the model from the Service and \
         Endpoints objects: timed on its own (\"model rebuild\")."
    );
    let _ = write!(
        s,
        "  (c) raw `nft -f -` into an empty namespace of the same ruleset (written from `nft list \
         table` of the\n      proxy's table), and of the classic layout written here: one \
         chain per service, a cascade of\n      `numgen random mod k == 0` DNAT rules \
         (kube-proxy's nftables mode), for reference."
    );
    s
}

/// The runs of one proxier sync, by phase (ms).
#[derive(Debug, Clone, Default)]
struct Series {
    plan: Vec<f64>,
    nft: Vec<f64>,
    commit: Vec<f64>,
    total: Vec<f64>,
}

impl Series {
    fn push(&mut self, t: &Timed) {
        self.plan.push(t.plan);
        self.nft.push(t.nft);
        self.commit.push(t.commit);
        self.total.push(t.total());
    }

    /// The total row, then one indented row per phase.
    fn rows(&self, s: &mut String, title: &str) {
        row(s, title, &self.total);
        row(s, "      planning", &self.plan);
        row(s, "      nft -f", &self.nft);
        row(s, "      commit", &self.commit);
    }
}

/// One report row: median, min and max of `values`.
fn row(s: &mut String, name: &str, values: &[f64]) {
    let (m, lo, hi) = summary(values.iter().copied());
    let _ = writeln!(s, "  {name:<44} {m:>10.2} {lo:>10.2} {hi:>10.2}");
}

/// What was measured for one service count (all times in ms).
#[derive(Debug, Clone, Default)]
struct Figures {
    services: usize,
    endpoints: usize,
    full: Series,
    /// The same ruleset, loaded raw.
    raw_same: Vec<f64>,
    /// One chain per service, loaded raw.
    raw_chains: Vec<f64>,
    replace: Series,
    remove: Series,
    add: Series,
    model_build: Vec<f64>,
    full_bytes: usize,
    full_rules: usize,
    raw_same_bytes: usize,
    raw_chains_bytes: usize,
    /// The largest one-change script.
    change_bytes: usize,
}

impl Figures {
    /// The slowest kind of endpoint change (median).
    fn worst_change(&self) -> f64 {
        [&self.replace, &self.remove, &self.add]
            .iter()
            .map(|c| median(&c.total))
            .fold(f64::NAN, f64::max)
    }
}

/// Planning, `nft` and commit times of one proxier transaction.
struct Timed {
    plan: f64,
    nft: f64,
    commit: f64,
}

impl Timed {
    fn total(&self) -> f64 {
        self.plan + self.nft + self.commit
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        table: PROXY_TABLE.to_string(),
        cluster_cidr: Some(POD_CIDR),
        ..ProxyConfig::default()
    }
}

async fn measure_size(
    n: usize,
    args: &ServicesArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<Figures> {
    let e = args.endpoints;
    let label = format!("{} services", thousands(n));
    let model = synthetic_model(n, e)?;
    let changed_key = key(n / 2);
    let replaced = with_one_endpoint_replaced(&model, &changed_key, n, e)?;
    let removed = with_one_endpoint_removed(&model, &changed_key)?;
    let chains = per_service_chains_script(RAW_TABLE, &model);
    let config = config();
    let mut f = Figures {
        services: n,
        endpoints: e,
        raw_chains_bytes: chains.len(),
        ..Figures::default()
    };

    progress(format_args!("{label}: warm-up"));
    full_sync(&config, &model, cancel).await?;
    check_proxy_loaded(n, e).await?;
    let same = same_ruleset_script().await?;
    f.raw_same_bytes = same.len();
    load_raw(&same, cancel).await?;
    load_raw(&chains, cancel).await?;

    for run in 1..=args.runs {
        let (t, bytes, rules) = full_sync(&config, &model, cancel).await?;
        f.full_bytes = bytes;
        f.full_rules = rules;
        f.full.push(&t);
        let raw_same = load_raw(&same, cancel).await?;
        f.raw_same.push(raw_same);
        if run == args.runs {
            check_loaded(RAW_TABLE, n, e).await?;
        }
        let raw_chains = load_raw(&chains, cancel).await?;
        f.raw_chains.push(raw_chains);
        progress(format_args!(
            "{label}: run {run}/{}: full sync {:.1} ms (plan {:.1}, nft {:.1}); raw same ruleset \
             {raw_same:.1} ms; raw chain per service {raw_chains:.1} ms",
            args.runs,
            t.total(),
            t.plan,
            t.nft
        ));
    }
    check_raw_chains_loaded(n).await?;

    // (b): the whole table loaded by the proxier, then the changes.
    empty_namespace(cancel).await?;
    let mut proxier = Proxier::new(&config).context("creating the proxier")?;
    let update = proxier.plan_full(model.clone());
    apply(update.script(), cancel)
        .await
        .context("loading the table before the endpoint changes")?;
    proxier.commit(update);
    // Warm-up: one change of each kind, back where it started.
    for target in [&replaced, &model, &removed, &model] {
        incremental(&mut proxier, target.clone(), cancel).await?;
    }
    for run in 1..=args.runs {
        let steps = [
            ("replaced", &replaced),
            ("put back", &model),
            ("removed", &removed),
            ("added", &model),
        ];
        let mut line = String::new();
        for (what, target) in steps {
            let (t, bytes) = incremental(&mut proxier, target.clone(), cancel).await?;
            f.change_bytes = f.change_bytes.max(bytes);
            match what {
                "removed" => f.remove.push(&t),
                "added" => f.add.push(&t),
                _ => f.replace.push(&t),
            }
            let _ = write!(line, " {what} {:.2} (nft {:.2});", t.total(), t.nft);
        }
        progress(format_args!(
            "{label}: run {run}/{}: one endpoint{line}",
            args.runs
        ));
    }
    check_endpoints_loaded(&changed_key, &model).await?;

    let (services, endpoints) = synthetic_objects(&model);
    for _ in 0..args.runs {
        let start = Instant::now();
        let built = Model::build(services.iter(), endpoints.iter(), None);
        f.model_build.push(ms(start.elapsed()));
        if built != model {
            bail!("the synthetic Service and Endpoints objects do not build the benchmark's model");
        }
    }
    empty_namespace(cancel).await?;
    Ok(f)
}

/// Deletes both tables and lets the kernel finish freeing them.
async fn empty_namespace(cancel: &CancellationToken) -> anyhow::Result<()> {
    remove_tables().await?;
    tokio::select! {
        _ = tokio::time::sleep(SETTLE) => Ok(()),
        _ = cancel.cancelled() => bail!("interrupted"),
    }
}

async fn remove_tables() -> anyhow::Result<()> {
    proxy::remove_table(PROXY_TABLE).await?;
    proxy::remove_table(RAW_TABLE).await
}

/// `nft -f -` with `script`, given up on Ctrl-C (which kills nft).
async fn apply(script: &str, cancel: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        r = nft::apply(script) => r.context("nft -f - refused the script"),
        _ = cancel.cancelled() => bail!("interrupted"),
    }
}

/// (a): a fresh proxier loads `model` into an empty namespace, as its first
/// sync would (planning includes checking that the table is absent). Returns the
/// times, the script's size and how many rules it adds.
async fn full_sync(
    config: &ProxyConfig,
    model: &Model,
    cancel: &CancellationToken,
) -> anyhow::Result<(Timed, usize, usize)> {
    empty_namespace(cancel).await?;
    let mut proxier = Proxier::new(config).context("creating the proxier")?;
    let model = model.clone();
    let start = Instant::now();
    let update = proxier.plan_first(model).await;
    let planned = Instant::now();
    apply(update.script(), cancel).await.context("full sync")?;
    let applied = Instant::now();
    let (bytes, rules) = (update.script().len(), update.rules());
    proxier.commit(update);
    let done = Instant::now();
    let t = Timed {
        plan: ms(planned - start),
        nft: ms(applied - planned),
        commit: ms(done - applied),
    };
    Ok((t, bytes, rules))
}

/// (b): one incremental transaction towards `model`. Returns the times and
/// the script's size.
async fn incremental(
    proxier: &mut Proxier,
    model: Model,
    cancel: &CancellationToken,
) -> anyhow::Result<(Timed, usize)> {
    let start = Instant::now();
    let update = proxier.plan_incremental(model);
    let planned = Instant::now();
    if update.kind() != SyncKind::Incremental || update.changed().len() != 1 {
        bail!(
            "expected an incremental update of one service port, got {:?} of {}",
            update.kind(),
            update.changed().len()
        );
    }
    if let Err(e) = apply(update.script(), cancel).await {
        proxier.invalidate();
        return Err(e.context("one endpoint change"));
    }
    let applied = Instant::now();
    let bytes = update.script().len();
    proxier.commit(update);
    let done = Instant::now();
    let t = Timed {
        plan: ms(planned - start),
        nft: ms(applied - planned),
        commit: ms(done - applied),
    };
    Ok((t, bytes))
}

/// (c): `script` loaded into an empty namespace; returns the `nft` time.
async fn load_raw(script: &str, cancel: &CancellationToken) -> anyhow::Result<f64> {
    empty_namespace(cancel).await?;
    let start = Instant::now();
    apply(script, cancel).await.context("raw ruleset")?;
    Ok(ms(start.elapsed()))
}

/// The proxy's loaded table as the kernel lists it, renamed to the raw
/// table: the same ruleset, to load with plain `nft -f`.
async fn same_ruleset_script() -> anyhow::Result<String> {
    let listing = nft::list_table(PROXY_TABLE)
        .await?
        .with_context(|| format!("table {PROXY_TABLE} is missing after a full sync"))?;
    let header = format!("table ip {PROXY_TABLE} {{");
    let rest = listing
        .trim_start()
        .strip_prefix(&header)
        .with_context(|| format!("unexpected listing of table {PROXY_TABLE}"))?;
    Ok(format!("table ip {RAW_TABLE} {{{rest}"))
}

/// How many services of `e` endpoints a listed proxy table sends to their
/// pick chain.
fn picked_services(listing: &str, e: usize) -> usize {
    listing.matches(&format!(": goto pick-of-{e}")).count()
}

/// Checks (outside every measurement) that `table` sends all `n` services
/// to their pick chain.
async fn check_loaded(table: &str, n: usize, e: usize) -> anyhow::Result<()> {
    let listing = nft::list_table(table)
        .await?
        .with_context(|| format!("table {table} is missing after loading it"))?;
    let found = picked_services(&listing, e);
    if found != n {
        bail!("table {table} sends {found} services to pick-of-{e}, expected {n}");
    }
    Ok(())
}

/// Checks that the proxy's table is complete after a full sync.
async fn check_proxy_loaded(n: usize, e: usize) -> anyhow::Result<()> {
    check_loaded(PROXY_TABLE, n, e).await
}

/// How many `chain svc-…` a listed table has.
fn service_chains(listing: &str) -> usize {
    listing
        .lines()
        .filter(|l| l.trim_start().starts_with("chain svc-"))
        .count()
}

/// Checks that the raw per-service table has a chain per service.
async fn check_raw_chains_loaded(n: usize) -> anyhow::Result<()> {
    let listing = nft::list_table(RAW_TABLE)
        .await?
        .with_context(|| format!("table {RAW_TABLE} is missing after loading it"))?;
    let found = service_chains(&listing);
    if found != n {
        bail!("table {RAW_TABLE} has {found} service chains, expected {n}");
    }
    Ok(())
}

/// Checks that the endpoint slot maps hold exactly `model`'s endpoints of
/// the changed service.
async fn check_endpoints_loaded(key: &ServicePortKey, model: &Model) -> anyhow::Result<()> {
    let port = model
        .get(key)
        .context("the changed service is not in the model")?;
    let service = format!("{} . {} . {} : ", port.cluster_ip, port.protocol, port.port);
    for (i, ep) in port.endpoints.iter().enumerate() {
        let map = format!("endpoint-slot-{i}");
        let listing = nft::run(&["list", "map", "ip", PROXY_TABLE, &map], None)
            .await
            .with_context(|| format!("listing map {map}"))?;
        let element = format!("{service}{} . {}", ep.ip, ep.port);
        if !listing.contains(&element) {
            bail!("map {map} lacks `{element}` after the endpoint changes");
        }
    }
    Ok(())
}

/// The key of synthetic service `i`.
fn key(i: usize) -> ServicePortKey {
    ServicePortKey::new(NAMESPACE, &format!("svc-{i:06}"), "")
}

/// The `index`-th address of `net`, if it has one.
fn nth(net: Ipv4Net, index: usize) -> anyhow::Result<Ipv4Addr> {
    let index = u32::try_from(index).ok().filter(|&i| {
        let size = 1u64 << (32 - u32::from(net.prefix_len()));
        u64::from(i) < size
    });
    let index = index.with_context(|| format!("{net} has no address number {index:?}"))?;
    Ok(Ipv4Addr::from(u32::from(net.network()) + index))
}

/// `n` ClusterIP services on TCP [`SERVICE_PORT`], each with `e` endpoints
/// of its own on [`TARGET_PORT`] (sorted, as the model wants them).
fn synthetic_model(n: usize, e: usize) -> anyhow::Result<Model> {
    // The last addresses needed (the replacement endpoint included) first,
    // so a size that does not fit fails at once.
    nth(POD_CIDR, n * e + 1)?;
    nth(SERVICE_CIDR, n + VIP_OFFSET as usize)?;
    let mut model = Model::new();
    for i in 0..n {
        let endpoints = (0..e)
            .map(|j| {
                Ok(Endpoint {
                    ip: nth(POD_CIDR, i * e + j + 1)?,
                    port: TARGET_PORT,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        model.insert(
            key(i),
            ServicePort {
                cluster_ip: nth(SERVICE_CIDR, i + VIP_OFFSET as usize)?,
                protocol: Protocol::Tcp,
                port: SERVICE_PORT,
                node_port: None,
                affinity_timeout: None,
                endpoints,
            },
        );
    }
    Ok(model)
}

/// `model` without the last endpoint of `key`.
fn with_one_endpoint_removed(model: &Model, key: &ServicePortKey) -> anyhow::Result<Model> {
    let mut port = model.get(key).context("no such service")?.clone();
    port.endpoints.pop().context("no endpoints")?;
    let mut changed = model.clone();
    changed.insert(key.clone(), port);
    Ok(changed)
}

/// `model` with the first endpoint of `key` replaced by an address no
/// other endpoint has (a pod replaced by a new one).
fn with_one_endpoint_replaced(
    model: &Model,
    key: &ServicePortKey,
    n: usize,
    e: usize,
) -> anyhow::Result<Model> {
    let mut port = model.get(key).context("no such service")?.clone();
    let first = port.endpoints.first_mut().context("no endpoints")?;
    first.ip = nth(POD_CIDR, n * e + 1)?;
    port.endpoints.sort();
    let mut changed = model.clone();
    changed.insert(key.clone(), port);
    Ok(changed)
}

/// The Service and Endpoints objects that build `model` (what the agent's
/// caches would hold).
fn synthetic_objects(model: &Model) -> (Vec<Service>, Vec<Endpoints>) {
    let meta = |k: &ServicePortKey| ObjectMeta {
        namespace: Some(k.namespace.clone()),
        name: Some(k.name.clone()),
        ..ObjectMeta::default()
    };
    let mut services = Vec::with_capacity(model.len());
    let mut endpoints = Vec::with_capacity(model.len());
    for (k, p) in model.ports() {
        let name = (!k.port_name.is_empty()).then(|| k.port_name.clone());
        let protocol = Some(p.protocol.nft().to_uppercase());
        services.push(Service {
            metadata: meta(k),
            spec: Some(ServiceSpec {
                cluster_ip: Some(p.cluster_ip.to_string()),
                ports: Some(vec![SpecPort {
                    name: name.clone(),
                    port: i32::from(p.port),
                    protocol: protocol.clone(),
                    ..SpecPort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        });
        // One subset per target port, as the endpoints controller groups them.
        let mut by_port: BTreeMap<u16, Vec<EndpointAddress>> = BTreeMap::new();
        for ep in &p.endpoints {
            by_port.entry(ep.port).or_default().push(EndpointAddress {
                ip: ep.ip.to_string(),
                ..EndpointAddress::default()
            });
        }
        let subsets = by_port
            .into_iter()
            .map(|(port, addresses)| EndpointSubset {
                addresses: Some(addresses),
                ports: Some(vec![EndpointPort {
                    name: name.clone(),
                    port: i32::from(port),
                    protocol: protocol.clone(),
                    ..EndpointPort::default()
                }]),
                ..EndpointSubset::default()
            })
            .collect();
        endpoints.push(Endpoints {
            metadata: meta(k),
            subsets: Some(subsets),
        });
    }
    (services, endpoints)
}

/// The classic layout for `model`, written here independently of the
/// proxy's generator: a verdict map from `daddr . l4proto . dport` to one
/// chain per service (`svc-<i>`, in model order), consulted from the
/// prerouting and output nat hooks; each chain DNATs to an endpoint chosen
/// by a cascade of `numgen random mod k == 0` rules. Services without
/// endpoints get no rules.
fn per_service_chains_script(table: &str, model: &Model) -> String {
    let mut s = String::with_capacity(320 * model.len() + 1024);
    let ports: Vec<&ServicePort> = model
        .ports()
        .values()
        .filter(|p| !p.endpoints.is_empty())
        .collect();
    let _ = writeln!(s, "table ip {table} {{");
    s.push_str("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    if !ports.is_empty() {
        s.push_str("\t\telements = {\n");
        for (i, p) in ports.iter().enumerate() {
            let sep = if i + 1 < ports.len() { "," } else { "" };
            let _ = writeln!(
                s,
                "\t\t\t{} . {} . {} : goto svc-{i}{sep}",
                p.cluster_ip, p.protocol, p.port
            );
        }
        s.push_str("\t\t}\n");
    }
    s.push_str("\t}\n");
    for (hook, priority) in [("prerouting", "dstnat"), ("output", "-100")] {
        let _ = writeln!(
            s,
            "\tchain nat-{hook} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;\n\
             \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}}"
        );
    }
    for (i, p) in ports.iter().enumerate() {
        let _ = writeln!(s, "\tchain svc-{i} {{");
        let n = p.endpoints.len();
        for (j, ep) in p.endpoints.iter().enumerate() {
            let target = format!("meta l4proto {} dnat to {}:{}", p.protocol, ep.ip, ep.port);
            if j + 1 < n {
                let _ = writeln!(s, "\t\tnumgen random mod {} == 0 {target}", n - j);
            } else {
                let _ = writeln!(s, "\t\t{target}");
            }
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

fn median(values: &[f64]) -> f64 {
    summary(values.iter().copied()).0
}

/// `10000` as `10 000`, as the issue writes counts.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / f64::from(1 << 10))
    } else {
        format!("{bytes} B")
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Full sync over raw `nft -f` of the same ruleset, as a ratio of medians.
fn full_ratio(f: &Figures) -> f64 {
    median(&f.full.total) / median(&f.raw_same)
}

/// The table of one service count.
fn size_report(f: &Figures) -> String {
    let mut s = String::new();
    let title = format!(
        "{} services x {} endpoints, {} run(s)",
        thousands(f.services),
        f.endpoints,
        f.full.total.len()
    );
    let _ = writeln!(
        s,
        "\n{title:<46} {:>10} {:>10} {:>10}",
        "median", "min", "max"
    );
    f.full.rows(&mut s, "(a) full sync from scratch (Proxier)");
    row(&mut s, "(c) raw nft -f, same ruleset", &f.raw_same);
    row(&mut s, "(c) raw nft -f, chain per service", &f.raw_chains);
    let ratio = full_ratio(f);
    let _ = writeln!(
        s,
        "  {:<44} {ratio:>10.2}   goal <= {GOAL_FULL_RATIO:.2}: {}",
        "full sync / raw same ruleset",
        met(ratio <= GOAL_FULL_RATIO)
    );
    let _ = writeln!(
        s,
        "  {:<44} {:>10.2}   (for reference)",
        "full sync / raw chain per service",
        median(&f.full.total) / median(&f.raw_chains)
    );
    f.replace
        .rows(&mut s, "(b) one endpoint replaced, table loaded");
    f.remove.rows(&mut s, "(b) one endpoint removed");
    f.add.rows(&mut s, "(b) one endpoint added");
    let worst = f.worst_change();
    let _ = writeln!(
        s,
        "  {:<44} {worst:>10.2}   goal <= {GOAL_CHANGE_MS:.0} ms{}: {}",
        "slowest kind of change",
        if f.services == GOAL_CHANGE_SERVICES {
            String::new()
        } else {
            format!(" (set at {} services)", thousands(GOAL_CHANGE_SERVICES))
        },
        met(worst <= GOAL_CHANGE_MS)
    );
    row(
        &mut s,
        &format!("model rebuild from {} objects", thousands(2 * f.services)),
        &f.model_build,
    );
    let _ = write!(
        s,
        "  scripts: full sync {} ({} rules), raw same ruleset {}, raw chain per service {}, \
         one change at most {}",
        size(f.full_bytes),
        thousands(f.full_rules),
        size(f.raw_same_bytes),
        size(f.raw_chains_bytes),
        size(f.change_bytes)
    );
    s
}

/// The goals against what was measured.
fn goals_report(all: &[Figures]) -> String {
    let mut s = String::from("\nGoals (issue 3)\n");
    let ratios: Vec<String> = all
        .iter()
        .map(|f| {
            let r = full_ratio(f);
            format!(
                "{} services {r:.2} {}",
                thousands(f.services),
                met(r <= GOAL_FULL_RATIO)
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  full sync <= {GOAL_FULL_RATIO} x raw nft -f of the same ruleset (medians): {}",
        ratios.join("; ")
    );
    let goal = format!(
        "  one endpoint change <= {GOAL_CHANGE_MS:.0} ms at {} services:",
        thousands(GOAL_CHANGE_SERVICES)
    );
    match all.iter().find(|f| f.services == GOAL_CHANGE_SERVICES) {
        Some(f) => {
            let change = f.worst_change();
            let with_build = change + median(&f.model_build);
            let _ = write!(
                s,
                "{goal} {change:.2} ms {} (slowest of replaced, removed and added; plan + nft + \
                 commit; {with_build:.2} ms with the model rebuild the agent's loop does first: \
                 {})",
                met(change <= GOAL_CHANGE_MS),
                met(with_build <= GOAL_CHANGE_MS)
            );
        }
        None => {
            let _ = write!(
                s,
                "{goal} not measured (add {GOAL_CHANGE_SERVICES} to --services)"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_service_chains_script_has_every_service_once() {
        let model = synthetic_model(50, 5).expect("model");
        let s = per_service_chains_script("t", &model);
        assert_eq!(service_chains(&s), 50);
        for (i, p) in model.ports().values().enumerate() {
            let element = format!("{} . tcp . {} : goto svc-{i}", p.cluster_ip, p.port);
            assert_eq!(s.matches(&element).count(), 1, "{element}");
            assert_eq!(
                s.matches(&format!("chain svc-{i} {{")).count(),
                1,
                "svc-{i}"
            );
            for ep in &p.endpoints {
                let target = format!("dnat to {}:{}\n", ep.ip, ep.port);
                assert_eq!(s.matches(&target).count(), 1, "{target}");
            }
        }
        assert_eq!(s.matches('{').count(), s.matches('}').count());
    }

    #[test]
    fn per_service_cascade_gives_every_endpoint_an_equal_share() {
        let model = synthetic_model(1, 5).expect("model");
        let s = per_service_chains_script("t", &model);
        let mods: Vec<&str> = s
            .lines()
            .filter_map(|l| l.trim().strip_prefix("numgen random mod "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(mods, ["5", "4", "3", "2"]);
        assert_eq!(s.matches("dnat to").count(), 5);
    }

    #[test]
    fn per_service_chains_skip_services_without_endpoints() {
        let mut model = synthetic_model(2, 1).expect("model");
        let mut empty = model.get(&key(0)).expect("svc 0").clone();
        empty.endpoints.clear();
        model.insert(key(0), empty);
        let s = per_service_chains_script("t", &model);
        assert_eq!(service_chains(&s), 1);
        assert!(s.contains("10.96.0.11 . tcp . 80 : goto svc-0\n"), "{s}");
        assert!(!s.contains("10.96.0.10 "), "{s}");
    }

    #[test]
    fn the_proxy_script_sends_every_service_to_its_pick_chain() {
        let model = synthetic_model(30, 4).expect("model");
        let update = Proxier::new(&config()).expect("proxier").plan_full(model);
        assert_eq!(picked_services(update.script(), 4), 30);
        assert_eq!(picked_services(update.script(), 5), 0);
    }

    #[test]
    fn synthetic_services_are_distinct_and_one_endpoint_changes() {
        let model = synthetic_model(1000, 5).expect("model");
        assert_eq!(model.len(), 1000);
        let vips: std::collections::BTreeSet<_> =
            model.ports().values().map(|p| p.cluster_ip).collect();
        assert_eq!(vips.len(), 1000);
        let eps: std::collections::BTreeSet<_> = model
            .ports()
            .values()
            .flat_map(|p| p.endpoints.iter().copied())
            .collect();
        assert_eq!(eps.len(), 5000);
        assert!(eps.iter().all(|e| POD_CIDR.contains(&e.ip)));
        let replaced = with_one_endpoint_replaced(&model, &key(500), 1000, 5).expect("change");
        let removed = with_one_endpoint_removed(&model, &key(500)).expect("change");
        for changed in [&replaced, &removed] {
            let differ: Vec<_> = model
                .ports()
                .iter()
                .filter(|(k, p)| changed.get(k) != Some(*p))
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(differ, [key(500)]);
        }
        let old = &model.get(&key(500)).expect("old").endpoints;
        let new = &replaced.get(&key(500)).expect("new").endpoints;
        assert_eq!(new.len(), 5);
        assert_eq!(old.iter().filter(|e| !new.contains(e)).count(), 1);
        assert!(new.windows(2).all(|w| w[0] < w[1]), "sorted");
        let fewer = &removed.get(&key(500)).expect("removed").endpoints;
        assert_eq!(fewer[..], old[..4]);
    }

    #[test]
    fn synthetic_objects_build_the_same_model() {
        let model = synthetic_model(20, 3).expect("model");
        let (services, endpoints) = synthetic_objects(&model);
        assert_eq!(Model::build(services.iter(), endpoints.iter(), None), model);
    }

    #[test]
    fn addresses_beyond_a_network_are_refused() {
        let net: Ipv4Net = "10.0.0.0/30".parse().expect("net");
        assert_eq!(nth(net, 3).expect("last"), Ipv4Addr::new(10, 0, 0, 3));
        assert!(nth(net, 4).is_err());
        assert!(synthetic_model(MAX_SERVICES, MAX_ENDPOINTS).is_err());
    }

    #[test]
    fn summaries_counts_and_goals() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(thousands(10_000), "10 000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1 234 567");
        let series = |ms: f64| Series {
            total: vec![ms],
            ..Series::default()
        };
        let f = Figures {
            services: 10_000,
            endpoints: 5,
            full: series(130.0),
            raw_same: vec![100.0],
            raw_chains: vec![200.0],
            replace: series(20.0),
            remove: series(60.0),
            add: series(30.0),
            model_build: vec![5.0],
            ..Figures::default()
        };
        assert_eq!(f.worst_change(), 60.0);
        let goals = goals_report(std::slice::from_ref(&f));
        assert!(goals.contains("10 000 services 1.30 NOT met"), "{goals}");
        assert!(goals.contains("60.00 ms NOT met"), "{goals}");
        let report = size_report(&f);
        assert!(report.contains("goal <= 1.20: NOT met"), "{report}");
        assert!(report.contains("0.65   (for reference)"), "{report}");
        let good = Figures {
            full: series(110.0),
            remove: series(25.0),
            ..f
        };
        let goals = goals_report(&[good]);
        assert!(goals.contains("1.10 met"), "{goals}");
        assert!(goals.contains("30.00 ms met"), "{goals}");
        assert!(goals.contains("35.00 ms with the model rebuild"), "{goals}");
        assert!(goals_report(&[]).contains("not measured"));
    }
}
