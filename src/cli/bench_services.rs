//! `commitd bench services`: how fast the service proxy programs nftables,
//! against loading a ruleset the benchmark writes itself.
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
//! - **(b) one endpoint change**: with the table loaded, one endpoint of one
//!   service is replaced (and put back on the next run): incremental plan,
//!   `nft -f -`, commit. Also timed: rebuilding the model from Service and
//!   Endpoints objects, which the agent's loop does before every plan.
//! - **(c) raw**: the same services as a script written here, independently
//!   of the proxy's generator — a verdict map from `daddr . l4proto .
//!   dport` to one chain per service that picks an endpoint with `numgen`
//!   and DNATs to it — loaded into an empty namespace. Two pick styles: a
//!   cascade of `numgen random mod k == 0` rules (what the proxy does) and
//!   one `numgen` map per service (anonymous maps, which the kernel loads in
//!   quadratic time).
//!
//! It prints median, min and max per figure, the ratio of full sync to raw
//! and the goals with whether they are met. Figures only: nothing
//! is asserted about timings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use commitd_nodeagent::proxy::{
    self, nft, service_chain_name, Endpoint, Model, Protocol, Proxier, ProxyConfig, ServicePort,
    ServicePortKey, SyncKind,
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
    /// Leave out the raw variant with one `numgen` map per service (its
    /// load time grows quadratically: about 12 s at 10 000 services).
    #[arg(long)]
    pub skip_raw_map: bool,
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
        "  (a) full sync: Proxier::plan_full + `nft -f -` + commit into an empty namespace \
         (= Proxier::sync(Full));\n      proxy table {PROXY_TABLE}, cluster CIDR {POD_CIDR}."
    );
    let _ = writeln!(
        s,
        "  (b) one endpoint change, whole table loaded: one endpoint of one service replaced \
         (and put back next run):\n      Proxier::plan_incremental + `nft -f -` + commit. \
         The agent's loop first rebuilds the model from the\n      Service and Endpoints \
         objects: timed on its own (\"model rebuild\")."
    );
    let _ = writeln!(
        s,
        "  (c) raw: a script this benchmark writes itself, loaded with `nft -f -` into an empty \
         namespace:\n      vmap daddr . l4proto . dport -> one chain per service -> numgen pick \
         -> dnat; pick as a cascade of\n      `numgen random mod k == 0` rules (as the proxy \
         does) or as one `numgen` map per service."
    );
    let _ = write!(
        s,
        "  The proxy's table holds more than the raw one: masquerade marks (sources outside \
         the cluster\n  CIDR, node ports), a hairpin set of every endpoint address, \
         no-endpoint sets and filter chains."
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
    raw_cascade: Vec<f64>,
    /// `None` with `--skip-raw-map`.
    raw_map: Option<Vec<f64>>,
    change: Series,
    model_build: Vec<f64>,
    full_bytes: usize,
    full_rules: usize,
    raw_cascade_bytes: usize,
    raw_map_bytes: usize,
    change_bytes: usize,
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
    let changed = with_one_endpoint_replaced(&model, &changed_key, n, e)?;
    let cascade = raw_script(RAW_TABLE, &model, Pick::Cascade);
    let map = (!args.skip_raw_map).then(|| raw_script(RAW_TABLE, &model, Pick::Map));
    let config = config();
    let mut f = Figures {
        services: n,
        endpoints: e,
        raw_cascade_bytes: cascade.len(),
        raw_map_bytes: map.as_ref().map_or(0, String::len),
        raw_map: map.as_ref().map(|_| Vec::new()),
        ..Figures::default()
    };

    progress(format_args!("{label}: warm-up"));
    full_sync(&config, &model, cancel).await?;
    load_raw(&cascade, cancel).await?;

    for run in 1..=args.runs {
        let (t, bytes, rules) = full_sync(&config, &model, cancel).await?;
        f.full_bytes = bytes;
        f.full_rules = rules;
        progress(format_args!(
            "{label}: run {run}/{}: full sync {:.1} ms (plan {:.1}, nft {:.1})",
            args.runs,
            t.total(),
            t.plan,
            t.nft
        ));
        f.full.push(&t);
        let raw = load_raw(&cascade, cancel).await?;
        progress(format_args!(
            "{label}: run {run}/{}: raw cascade {raw:.1} ms",
            args.runs
        ));
        f.raw_cascade.push(raw);
        if let (Some(script), Some(times)) = (&map, &mut f.raw_map) {
            let raw = load_raw(script, cancel).await?;
            progress(format_args!(
                "{label}: run {run}/{}: raw numgen map {raw:.1} ms",
                args.runs
            ));
            times.push(raw);
        }
    }
    check_raw_loaded(n).await?;

    // (b): the whole table loaded by the proxier, then one change per run.
    empty_namespace(cancel).await?;
    let mut proxier = Proxier::new(&config).context("creating the proxier")?;
    let update = proxier.plan_full(model.clone());
    apply(update.script(), cancel)
        .await
        .context("loading the table before the endpoint changes")?;
    proxier.commit(update);
    check_proxy_loaded(n).await?;
    // Warm-up change: `changed` loaded, so the measured runs go back and forth.
    incremental(&mut proxier, changed.clone(), cancel).await?;
    for run in 1..=args.runs {
        let target = if run % 2 == 1 { &model } else { &changed };
        let (t, bytes) = incremental(&mut proxier, target.clone(), cancel).await?;
        f.change_bytes = bytes;
        progress(format_args!(
            "{label}: run {run}/{}: one endpoint change {:.2} ms (plan {:.2}, nft {:.2})",
            args.runs,
            t.total(),
            t.plan,
            t.nft
        ));
        f.change.push(&t);
    }
    let expected = if args.runs % 2 == 1 { &model } else { &changed };
    check_endpoints_loaded(&changed_key, expected).await?;

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

/// (a): a fresh proxier loads `model` into an empty namespace. Returns the
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
    let update = proxier.plan_full(model);
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

/// How many `chain svc-…` a listed table has.
fn service_chains(listing: &str) -> usize {
    listing
        .lines()
        .filter(|l| l.trim_start().starts_with("chain svc-"))
        .count()
}

/// Checks (outside every measurement) that the raw table has a chain per service.
async fn check_raw_loaded(n: usize) -> anyhow::Result<()> {
    let listing = nft::list_table(RAW_TABLE)
        .await?
        .with_context(|| format!("table {RAW_TABLE} is missing after loading it"))?;
    let found = service_chains(&listing);
    if found != n {
        bail!("table {RAW_TABLE} has {found} service chains, expected {n}");
    }
    Ok(())
}

/// Checks that the proxy's table has a chain per service.
async fn check_proxy_loaded(n: usize) -> anyhow::Result<()> {
    let listing = nft::list_table(PROXY_TABLE)
        .await?
        .with_context(|| format!("table {PROXY_TABLE} is missing after a full sync"))?;
    let found = service_chains(&listing);
    if found != n {
        bail!("table {PROXY_TABLE} has {found} service chains, expected {n}");
    }
    Ok(())
}

/// Checks that the changed service's chain DNATs to `model`'s endpoints.
async fn check_endpoints_loaded(key: &ServicePortKey, model: &Model) -> anyhow::Result<()> {
    let chain = service_chain_name(key);
    let listing = nft::run(&["list", "chain", "ip", PROXY_TABLE, &chain], None)
        .await
        .with_context(|| format!("listing chain {chain}"))?;
    let port = model
        .get(key)
        .context("the changed service is not in the model")?;
    for ep in &port.endpoints {
        let target = format!("dnat to {}:{}", ep.ip, ep.port);
        if !listing.contains(&target) {
            bail!("chain {chain} lacks `{target}` after the endpoint changes:\n{listing}");
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

/// How the raw ruleset's service chains pick an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// `numgen random mod k == 0 dnat …` for k = N … 2, then a last `dnat`.
    Cascade,
    /// One `dnat ip to numgen random mod N map { i : ip . port, … }`.
    Map,
}

/// The benchmark's own ruleset for `model`, written straightforwardly and
/// independently of the proxy's generator: a verdict map from `daddr .
/// l4proto . dport` to one chain per service (`svc-<i>`, in model order),
/// consulted from the prerouting and output nat hooks; each chain DNATs to
/// an endpoint chosen with `numgen`. Services without endpoints get no
/// rules.
fn raw_script(table: &str, model: &Model, pick: Pick) -> String {
    let mut s = String::with_capacity(160 * model.len() * 2 + 1024);
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
        let proto = p.protocol;
        let n = p.endpoints.len();
        match pick {
            _ if n == 1 => {
                let ep = p.endpoints[0];
                let _ = writeln!(s, "\t\tmeta l4proto {proto} dnat to {}:{}", ep.ip, ep.port);
            }
            Pick::Cascade => {
                for (j, ep) in p.endpoints.iter().enumerate() {
                    let target = format!("meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port);
                    if j + 1 < n {
                        let _ = writeln!(s, "\t\tnumgen random mod {} == 0 {target}", n - j);
                    } else {
                        let _ = writeln!(s, "\t\t{target}");
                    }
                }
            }
            Pick::Map => {
                let entries: Vec<String> = p
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(j, ep)| format!("{j} : {} . {}", ep.ip, ep.port))
                    .collect();
                let _ = writeln!(
                    s,
                    "\t\tmeta l4proto {proto} dnat ip to numgen random mod {n} map {{ {} }}",
                    entries.join(", ")
                );
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

/// Full sync over raw cascade, as a ratio of medians.
fn full_ratio(f: &Figures) -> f64 {
    median(&f.full.total) / median(&f.raw_cascade)
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
    row(&mut s, "(c) raw nft -f, numgen cascade", &f.raw_cascade);
    if let Some(map) = &f.raw_map {
        row(&mut s, "(c) raw nft -f, numgen map", map);
    }
    let ratio = full_ratio(f);
    let _ = writeln!(
        s,
        "  {:<44} {ratio:>10.2}   goal <= {GOAL_FULL_RATIO:.2}: {}",
        "full sync / raw cascade",
        met(ratio <= GOAL_FULL_RATIO)
    );
    if let Some(map) = &f.raw_map {
        let _ = writeln!(
            s,
            "  {:<44} {:>10.2}   (for reference)",
            "full sync / raw numgen map",
            median(&f.full.total) / median(map)
        );
    }
    f.change
        .rows(&mut s, "(b) one endpoint change, table loaded");
    let change = median(&f.change.total);
    let _ = writeln!(
        s,
        "  {:<44} {:>10}   goal <= {GOAL_CHANGE_MS:.0} ms{}: {}",
        "",
        "",
        if f.services == GOAL_CHANGE_SERVICES {
            String::new()
        } else {
            format!(" (set at {} services)", thousands(GOAL_CHANGE_SERVICES))
        },
        met(change <= GOAL_CHANGE_MS)
    );
    row(
        &mut s,
        &format!("model rebuild from {} objects", thousands(2 * f.services)),
        &f.model_build,
    );
    let _ = write!(
        s,
        "  scripts: full sync {} ({} rules), raw cascade {}, raw map {}, one change {}",
        size(f.full_bytes),
        thousands(f.full_rules),
        size(f.raw_cascade_bytes),
        if f.raw_map.is_some() {
            size(f.raw_map_bytes)
        } else {
            "skipped".to_string()
        },
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
        "  full sync <= {GOAL_FULL_RATIO} x raw nft -f (medians, raw = cascade): {}",
        ratios.join("; ")
    );
    let goal = format!(
        "  one endpoint change <= {GOAL_CHANGE_MS:.0} ms at {} services:",
        thousands(GOAL_CHANGE_SERVICES)
    );
    match all.iter().find(|f| f.services == GOAL_CHANGE_SERVICES) {
        Some(f) => {
            let change = median(&f.change.total);
            let with_build = change + median(&f.model_build);
            let _ = write!(
                s,
                "{goal} {change:.2} ms {} (plan + nft + commit; {with_build:.2} ms with the \
                 model rebuild the agent's loop does first: {})",
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
    fn raw_script_has_every_service_once() {
        let model = synthetic_model(50, 5).expect("model");
        for pick in [Pick::Cascade, Pick::Map] {
            let s = raw_script("t", &model, pick);
            assert_eq!(service_chains(&s), 50, "{pick:?}");
            for (i, p) in model.ports().values().enumerate() {
                let element = format!("{} . tcp . {} : goto svc-{i}", p.cluster_ip, p.port);
                assert_eq!(s.matches(&element).count(), 1, "{pick:?}: {element}");
                assert_eq!(
                    s.matches(&format!("chain svc-{i} {{")).count(),
                    1,
                    "{pick:?}: svc-{i}"
                );
                for ep in &p.endpoints {
                    let target = match pick {
                        Pick::Cascade => format!("dnat to {}:{}\n", ep.ip, ep.port),
                        Pick::Map => format!(" : {} . {}", ep.ip, ep.port),
                    };
                    assert_eq!(s.matches(&target).count(), 1, "{pick:?}: {target}");
                }
            }
            assert_eq!(s.matches('{').count(), s.matches('}').count());
        }
    }

    #[test]
    fn raw_cascade_gives_every_endpoint_an_equal_share() {
        let model = synthetic_model(1, 5).expect("model");
        let s = raw_script("t", &model, Pick::Cascade);
        let mods: Vec<&str> = s
            .lines()
            .filter_map(|l| l.trim().strip_prefix("numgen random mod "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(mods, ["5", "4", "3", "2"]);
        assert_eq!(s.matches("dnat to").count(), 5);
        let map = raw_script("t", &model, Pick::Map);
        assert!(map.contains("numgen random mod 5 map { 0 : 10.64.0.1 . 8080, 1 :"));
    }

    #[test]
    fn raw_script_skips_services_without_endpoints() {
        let mut model = synthetic_model(2, 1).expect("model");
        let mut empty = model.get(&key(0)).expect("svc 0").clone();
        empty.endpoints.clear();
        model.insert(key(0), empty);
        let s = raw_script("t", &model, Pick::Cascade);
        assert_eq!(service_chains(&s), 1);
        assert!(s.contains("10.96.0.11 . tcp . 80 : goto svc-0\n"), "{s}");
        assert!(!s.contains("10.96.0.10 "), "{s}");
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
        let changed = with_one_endpoint_replaced(&model, &key(500), 1000, 5).expect("change");
        let differ: Vec<_> = model
            .ports()
            .iter()
            .filter(|(k, p)| changed.get(k) != Some(*p))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(differ, [key(500)]);
        let (old, new) = (
            &model.get(&key(500)).expect("old").endpoints,
            &changed.get(&key(500)).expect("new").endpoints,
        );
        assert_eq!(old.iter().filter(|e| !new.contains(e)).count(), 1);
        assert!(new.windows(2).all(|w| w[0] < w[1]), "sorted");
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
        let f = Figures {
            services: 10_000,
            endpoints: 5,
            full: Series {
                total: vec![130.0],
                ..Series::default()
            },
            raw_cascade: vec![100.0],
            change: Series {
                total: vec![60.0],
                ..Series::default()
            },
            model_build: vec![5.0],
            ..Figures::default()
        };
        let goals = goals_report(std::slice::from_ref(&f));
        assert!(goals.contains("10 000 services 1.30 NOT met"), "{goals}");
        assert!(goals.contains("60.00 ms NOT met"), "{goals}");
        let report = size_report(&f);
        assert!(report.contains("goal <= 1.20: NOT met"), "{report}");
        let good = Figures {
            full: Series {
                total: vec![110.0],
                ..Series::default()
            },
            change: Series {
                total: vec![20.0],
                ..Series::default()
            },
            ..f
        };
        let goals = goals_report(&[good]);
        assert!(goals.contains("1.10 met"), "{goals}");
        assert!(goals.contains("20.00 ms met"), "{goals}");
        assert!(goals_report(&[]).contains("not measured"));
    }
}
