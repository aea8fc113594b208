//! `commitd rollout status|history deployment/NAME`: a Deployment's
//! rollout (and with `status`, a StatefulSet's or DaemonSet's) as
//! `kubectl rollout` shows it, with Git in the picture. `status`
//! follows the rollout live from etcd and prints kubectl's progress lines,
//! so scripts and people written against kubectl read it unchanged and a
//! pipeline can wait on a `git push` becoming pods. `history` lists the
//! revisions (the Deployment's ReplicaSets) with the commit that rolled
//! each out — its author, date and summary joined from the history records
//! — so "which commit runs, and what ran before" is one command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args, Subcommand};
use commitd_api::health::{rollout_progress, RolloutProgress};
use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, REVISION_ANNOTATION, ROLLOUT_COMMIT_ANNOTATION};
use commitd_api::records::{CommitInfo, HistoryRecord};
use commitd_api::{keys, reflector, Kind, Object, Store};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::get::qualified_resource;
use super::output::{self, format_labels, tabbed, Table};
use super::ClusterArgs;

/// Arguments of `commitd rollout`.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// What `commitd rollout` can show, as `kubectl rollout` names it.
#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Follow a Deployment's, StatefulSet's or DaemonSet's rollout until it
    /// is done (exit 0) or fails (exit 1).
    Status(StatusArgs),
    /// List a Deployment's revisions with the commits that rolled them out.
    History(HistoryArgs),
}

/// Arguments of `commitd rollout status`, spelled as kubectl's.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The workload: `deployment/NAME` (also `deploy/NAME`,
    /// `statefulset/NAME`, `ds/NAME` …) or `deployment NAME`.
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..=2)]
    pub resource: Vec<String>,
    /// Namespace of the workload.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// How long to wait before giving up, as a Go duration (`90s`, `5m`,
    /// `1m30s`); 0 waits for ever.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub timeout: Duration,
    /// Keep following until the rollout ends; `--watch=false` prints the
    /// current state once and exits 0.
    #[arg(
        short,
        long,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub watch: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Arguments of `commitd rollout history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The Deployment: `deployment/NAME` or `deployment NAME`.
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..=2)]
    pub resource: Vec<String>,
    /// Namespace of the Deployment.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Show one revision in detail: its commit and its pod template.
    #[arg(long)]
    pub revision: Option<i64>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `commitd rollout …`.
pub async fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RolloutCommand::Status(a) => status(a).await,
        RolloutCommand::History(a) => history(a).await,
    }
}

/// Prints `error: …` and gives kubectl's exit code for a failed command.
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

fn not_found(kind: Kind, name: &str) -> ExitCode {
    eprintln!(
        "Error from server (NotFound): {} \"{name}\" not found",
        qualified_resource(kind)
    );
    ExitCode::from(1)
}

/// The kinds `rollout status` follows, as kubectl's status viewers.
const STATUS_KINDS: [Kind; 3] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet];

/// Reads `KIND/NAME` or `KIND NAME` naming a Deployment, as kubectl's
/// resource builder does; only Deployments have a revision history here.
fn parse_target(args: &[String]) -> Result<String, String> {
    match parse_kind_and_name(args)? {
        (Kind::Deployment, name) => Ok(name),
        (other, _) => Err(format!(
            "rollout history is kept for deployments only, not {}",
            other.plural()
        )),
    }
}

/// Reads `KIND/NAME` or `KIND NAME` naming a workload `rollout status`
/// can follow.
fn parse_status_target(args: &[String]) -> Result<(Kind, String), String> {
    let (kind, name) = parse_kind_and_name(args)?;
    if STATUS_KINDS.contains(&kind) {
        Ok((kind, name))
    } else {
        Err(format!(
            "no status viewer has been implemented for {}",
            kind.plural()
        ))
    }
}

fn parse_kind_and_name(args: &[String]) -> Result<(Kind, String), String> {
    let (kind, name) = match args {
        [one] => match one.split_once('/') {
            Some((k, n)) if !k.is_empty() && !n.is_empty() && !n.contains('/') => (k, n),
            Some(_) => {
                return Err(format!(
                    "arguments in resource/name form must have a single resource and name, got \"{one}\""
                ))
            }
            None => {
                return Err(format!(
                    "a name is required: try `deployment/NAME` (got \"{one}\")"
                ))
            }
        },
        [k, n] if !k.contains('/') && !n.contains('/') => (k.as_str(), n.as_str()),
        _ => {
            return Err(
                "give one Deployment, as `deployment/NAME` or `deployment NAME`".to_string(),
            )
        }
    };
    match Kind::from_cli(kind) {
        Some(k) => Ok((k, name.to_string())),
        None => Err(format!(
            "the server doesn't have a resource type \"{kind}\""
        )),
    }
}

/// Reads a Go duration as kubectl's `--timeout` takes it: `0`, or numbers
/// (fractions allowed) each with a unit of `ns`, `us`, `µs`, `ms`, `s`,
/// `m` or `h`, as in `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: use e.g. 90s, 5m or 1m30s");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Where a rollout stands, by kubectl's `DeploymentStatusViewer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Still going: kubectl's progress line.
    Waiting(String),
    /// Every replica runs the new template and is available.
    Done(String),
    /// The Deployment made no progress within its deadline.
    Failed(String),
}

/// kubectl's error for a workload whose updates are not rolled out.
const NOT_ROLLING: &str = "rollout status is only available for RollingUpdate strategy type";

/// A StatefulSet's rollout, in kubectl's words (`StatefulSetStatusViewer`).
pub fn stateful_set_state(s: &StatefulSet) -> RolloutState {
    let spec = s.spec.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return RolloutState::Failed(NOT_ROLLING.into());
    }
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || s.metadata.generation.unwrap_or(0) > observed {
        return RolloutState::Waiting(
            "Waiting for statefulset spec update to be observed...".into(),
        );
    }
    let replicas = spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < replicas {
        return RolloutState::Waiting(format!(
            "Waiting for {} pods to be ready...",
            replicas - ready
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        if updated < replicas - partition {
            return RolloutState::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                replicas - partition
            ));
        }
        return RolloutState::Done(format!(
            "partitioned roll out complete: {updated} new pods have been updated..."
        ));
    }
    let update_revision = status.update_revision.unwrap_or_default();
    if status.current_revision.as_deref() != Some(update_revision.as_str()) {
        return RolloutState::Waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {update_revision}..."
        ));
    }
    RolloutState::Done(format!(
        "statefulset rolling update complete {} pods at revision {update_revision}...",
        status.current_replicas.unwrap_or(0)
    ))
}

/// A DaemonSet's rollout, in kubectl's words (`DaemonSetStatusViewer`).
pub fn daemon_set_state(d: &DaemonSet) -> RolloutState {
    let spec = d.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return RolloutState::Failed(NOT_ROLLING.into());
    }
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return RolloutState::Waiting(
            "Waiting for daemon set spec update to be observed...".into(),
        );
    }
    let name = meta::name(d);
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return RolloutState::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
        ));
    }
    if available < desired {
        return RolloutState::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
        ));
    }
    RolloutState::Done(format!("daemon set {name:?} successfully rolled out"))
}

/// The state of `d`'s rollout, in exactly kubectl's words (without the
/// trailing newline), so output and scripts match `kubectl rollout status`.
pub fn rollout_state(d: &Deployment) -> RolloutState {
    let name = meta::name(d);
    let waiting = |m: String| {
        RolloutState::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {m}"
        ))
    };
    match rollout_progress(d) {
        RolloutProgress::SpecNotObserved => {
            RolloutState::Waiting("Waiting for deployment spec update to be observed...".into())
        }
        RolloutProgress::DeadlineExceeded => RolloutState::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        )),
        RolloutProgress::Updating { updated, wanted } => waiting(format!(
            "{updated} out of {wanted} new replicas have been updated..."
        )),
        RolloutProgress::OldPending { old } => {
            waiting(format!("{old} old replicas are pending termination..."))
        }
        RolloutProgress::BecomingAvailable { available, updated } => waiting(format!(
            "{available} of {updated} updated replicas are available..."
        )),
        RolloutProgress::Complete => {
            RolloutState::Done(format!("deployment {name:?} successfully rolled out"))
        }
    }
}

/// Prints a progress line now (the reader is often a terminal or a CI log
/// that should see each step as it happens).
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `commitd rollout status`: follows the Deployment through a list+watch
/// cache of its namespace (no polling), printing a line whenever the state
/// changes. Exit 0 when rolled out (or at once with `--watch=false`), 1
/// when the progress deadline is exceeded, the time-out passes, or the
/// Deployment does not exist.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (kind, name) = match parse_status_target(&args.resource) {
        Ok(target) => target,
        Err(msg) => return Ok(fail(&msg)),
    };
    let store = args.cluster.connect().await?;
    match kind {
        Kind::StatefulSet => follow(store, &args, &name, stateful_set_state).await,
        Kind::DaemonSet => follow(store, &args, &name, daemon_set_state).await,
        _ => follow(store, &args, &name, rollout_state).await,
    }
}

/// Follows one workload until `state` says it is done or failed.
async fn follow<T: Object>(
    store: Store,
    args: &StatusArgs,
    name: &str,
    state: fn(&T) -> RolloutState,
) -> anyhow::Result<ExitCode> {
    let kind = T::STORE_KIND;
    let singular = kind.name().to_ascii_lowercase();
    let namespace = args.namespace.as_str();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let cache = reflector::reflect_prefix::<T>(
        store,
        keys::namespace_prefix(kind, Some(namespace)),
        |store, kv| store.decode::<T>(kv).map_err(|e| e.to_string()),
        cancel.clone(),
    );
    let deadline = (!args.timeout.is_zero()).then(|| Instant::now() + args.timeout);
    let timed_out = || fail("timed out waiting for the condition");
    let mut changes = cache.changes();
    let first_list = async {
        cache.ready().await;
    };
    if !within(deadline, first_list).await {
        return Ok(timed_out());
    }

    let mut seen = false;
    let mut last = String::new();
    loop {
        changes.borrow_and_update();
        match cache.get(Some(namespace), name) {
            None if !seen => return Ok(not_found(kind, name)),
            None => return Ok(fail(&format!("{singular} {name:?} was deleted"))),
            Some(d) => {
                seen = true;
                match state(&d) {
                    RolloutState::Failed(msg) => return Ok(fail(&msg)),
                    RolloutState::Done(line) => {
                        say(&line)?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    RolloutState::Waiting(line) => {
                        if line != last {
                            say(&line)?;
                            last = line;
                        }
                        if !args.watch {
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                }
            }
        }
        let changed = async {
            // An error means the cache's task ended: nothing more will come.
            changes.changed().await.is_ok()
        };
        match tokio::time::timeout_at(deadline.unwrap_or_else(far_future), changed).await {
            Ok(true) => {}
            Ok(false) => anyhow::bail!("lost the watch on {singular} {name:?}"),
            Err(_) => return Ok(timed_out()),
        }
    }
}

/// Runs `fut` until `deadline` (if any); whether it finished in time.
async fn within(deadline: Option<Instant>, fut: impl std::future::Future<Output = ()>) -> bool {
    tokio::time::timeout_at(deadline.unwrap_or_else(far_future), fut)
        .await
        .is_ok()
}

/// A deadline that never comes (a century away), for "no time-out".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// One revision of a Deployment: a ReplicaSet of it, with the commit that
/// rolled it out when known.
#[derive(Debug, Clone)]
pub struct Revision {
    /// `deployment.kubernetes.io/revision` (0 if missing or unreadable).
    pub number: i64,
    pub replica_set: ReplicaSet,
    /// The sha of [`ROLLOUT_COMMIT_ANNOTATION`], if the ReplicaSet has one.
    pub sha: Option<String>,
    /// That commit's record, if the history still holds it.
    pub commit: Option<CommitInfo>,
}

/// The Deployment's revisions, oldest first (as kubectl lists them),
/// joined with the commits of `commits` (by sha).
pub fn revisions(
    d: &Deployment,
    replica_sets: &[ReplicaSet],
    commits: &BTreeMap<String, CommitInfo>,
) -> Vec<Revision> {
    let uid = d.metadata.uid.as_deref();
    let mut out: Vec<Revision> = replica_sets
        .iter()
        .filter(|rs| {
            uid.is_some_and(|u| meta::controller_of(&rs.metadata).is_some_and(|o| o.uid == u))
        })
        .map(|rs| {
            let sha = meta::annotation(&rs.metadata, ROLLOUT_COMMIT_ANNOTATION).map(str::to_string);
            Revision {
                number: meta::annotation(&rs.metadata, REVISION_ANNOTATION)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                commit: sha.as_ref().and_then(|s| commits.get(s)).cloned(),
                sha,
                replica_set: rs.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.number
            .cmp(&b.number)
            .then_with(|| meta::name(&a.replica_set).cmp(meta::name(&b.replica_set)))
    });
    out
}

/// A commit time as the history table shows it: UTC, to the second.
fn date_cell(rfc3339: &str) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// The revision table: `deployment.apps/NAME`, then one line per
/// revision, oldest first.
pub fn render_history(d: &Deployment, revisions: &[Revision]) -> String {
    let mut table = Table::new(["REVISION", "COMMIT", "AUTHOR", "DATE", "CHANGE"]);
    for r in revisions {
        let (commit, author, date, change) = match (&r.sha, &r.commit) {
            (Some(_), Some(c)) => (
                c.short_sha().to_string(),
                c.author.clone(),
                date_cell(&c.time),
                c.summary.clone(),
            ),
            (Some(sha), None) => (
                sha.get(..7).unwrap_or(sha).to_string(),
                "<unknown>".into(),
                "<unknown>".into(),
                "<not in the history>".into(),
            ),
            (None, _) => (
                "<none>".into(),
                "<none>".into(),
                "<none>".into(),
                "<none>".into(),
            ),
        };
        table.row([r.number.to_string(), commit, author, date, change]);
    }
    format!(
        "deployment.{}/{}\n{}",
        Kind::Deployment.group(),
        meta::name(d),
        table.render()
    )
}

/// One revision in detail, as `kubectl rollout history --revision N`
/// prints its pod template, with the commit (sha, author, date, whole
/// message) and the ReplicaSet above it.
pub fn render_revision(d: &Deployment, r: &Revision) -> String {
    let mut w = String::new();
    let _ = writeln!(
        w,
        "deployment.{}/{} with revision #{}",
        Kind::Deployment.group(),
        meta::name(d),
        r.number
    );
    let _ = writeln!(w, "ReplicaSet:\t{}", meta::name(&r.replica_set));
    match (&r.sha, &r.commit) {
        (Some(_), Some(c)) => {
            let _ = writeln!(w, "Commit:\t{}", c.sha);
            let who = if c.email.is_empty() {
                c.author.clone()
            } else {
                format!("{} <{}>", c.author, c.email)
            };
            let _ = writeln!(w, "Author:\t{who}");
            let _ = writeln!(w, "Date:\t{}", date_cell(&c.time));
            let _ = writeln!(w, "Message:");
            for line in c.message.trim_end().lines() {
                let line = line.replace('\t', "    ");
                let _ = writeln!(w, "    {line}");
            }
        }
        (Some(sha), None) => {
            let _ = writeln!(w, "Commit:\t{sha} (not in the history records)");
        }
        (None, _) => {
            let _ = writeln!(w, "Commit:\t<none>");
        }
    }
    let template = r
        .replica_set
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let _ = writeln!(w, "Pod Template:");
    let labels = format_labels(template.metadata.as_ref().and_then(|m| m.labels.as_ref()));
    let mut labels = labels.split(',');
    let _ = writeln!(w, "  Labels:\t{}", labels.next().unwrap_or("<none>"));
    for more in labels {
        let _ = writeln!(w, "\t{more}");
    }
    let pod = template.spec.unwrap_or_default();
    let _ = writeln!(w, "  Containers:");
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        let _ = writeln!(w, "   {}:", c.name);
        let _ = writeln!(w, "    Image:\t{}", c.image.as_deref().unwrap_or("<none>"));
        for p in c.ports.iter().flatten() {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let _ = writeln!(w, "    Port:\t{}/{protocol}", p.container_port);
        }
        if let Some(cmd) = c.command.as_ref().filter(|v| !v.is_empty()) {
            let _ = writeln!(w, "    Command:\t{}", cmd.join(" "));
        }
        if let Some(args) = c.args.as_ref().filter(|v| !v.is_empty()) {
            let _ = writeln!(w, "    Args:\t{}", args.join(" "));
        }
    }
    let mut text = tabbed(&w);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Every commit the history records know, by sha.
async fn commits_by_sha(store: &Store) -> anyhow::Result<BTreeMap<String, CommitInfo>> {
    let list = store
        .list_prefix(keys::HISTORY_PREFIX)
        .await
        .context("reading the history from etcd")?;
    let mut out = BTreeMap::new();
    for kv in &list.items {
        match serde_json::from_slice::<HistoryRecord>(kv.value()) {
            Ok(r) => {
                out.insert(r.commit.sha.clone(), r.commit);
            }
            Err(e) => eprintln!(
                "warning: skipping history record {}: {e}",
                String::from_utf8_lossy(kv.key())
            ),
        }
    }
    Ok(out)
}

/// `commitd rollout history`: the revision table, or one revision with
/// `--revision N`. Exit 1 when the Deployment or the revision is missing.
pub async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let name = match parse_target(&args.resource) {
        Ok(n) => n,
        Err(msg) => return Ok(fail(&msg)),
    };
    let namespace = args.namespace.as_str();
    let store = args.cluster.connect().await?;
    let Some(d) = store
        .get::<Deployment>(Some(namespace), &name)
        .await
        .with_context(|| format!("reading deployment {namespace}/{name}"))?
    else {
        return Ok(not_found(Kind::Deployment, &name));
    };
    let replica_sets = super::list_objects::<ReplicaSet>(&store, Some(namespace)).await?;
    let commits = commits_by_sha(&store).await?;
    let revisions = revisions(&d, &replica_sets, &commits);
    let text = match args.revision {
        None | Some(0) => render_history(&d, &revisions),
        Some(n) => match revisions.iter().find(|r| r.number == n) {
            Some(r) => render_revision(&d, r),
            None => return Ok(fail("unable to find the specified revision")),
        },
    };
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    fn deployment(generation: i64, replicas: i32, status: DeploymentStatus) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "d-uid",
                         "generation": generation},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}
            }
        }))
        .expect("valid deployment");
        d.status = Some(status);
        d
    }

    fn counts(observed: i64, replicas: i32, updated: i32, available: i32) -> DeploymentStatus {
        let some = |n: i32| (n != 0).then_some(n);
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: some(replicas),
            updated_replicas: some(updated),
            available_replicas: some(available),
            ..Default::default()
        }
    }

    fn waiting(s: &str) -> RolloutState {
        RolloutState::Waiting(s.to_string())
    }

    #[test]
    fn states_read_as_kubectl_prints_them() {
        assert_eq!(
            rollout_state(&deployment(2, 3, counts(1, 3, 3, 3))),
            waiting("Waiting for deployment spec update to be observed...")
        );
        assert_eq!(
            rollout_state(&deployment(2, 3, counts(2, 4, 1, 3))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
            )
        );
        assert_eq!(
            rollout_state(&deployment(2, 3, counts(2, 4, 3, 2))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
            )
        );
        assert_eq!(
            rollout_state(&deployment(2, 3, counts(2, 3, 3, 2))),
            waiting(
                "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
            )
        );
        assert_eq!(
            rollout_state(&deployment(2, 3, counts(2, 3, 3, 3))),
            RolloutState::Done("deployment \"web\" successfully rolled out".into())
        );
        // No status at all yet: the controller has not looked.
        let mut fresh = deployment(1, 3, DeploymentStatus::default());
        fresh.status = None;
        assert_eq!(
            rollout_state(&fresh),
            waiting("Waiting for deployment spec update to be observed...")
        );
        // Scaled to zero: done once nothing is left.
        assert_eq!(
            rollout_state(&deployment(2, 0, counts(2, 0, 0, 0))),
            RolloutState::Done("deployment \"web\" successfully rolled out".into())
        );
    }

    #[test]
    fn a_missed_deadline_fails_the_rollout() {
        let mut status = counts(2, 5, 2, 3);
        status.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"web-x\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        assert_eq!(
            rollout_state(&deployment(2, 4, status.clone())),
            RolloutState::Failed("deployment \"web\" exceeded its progress deadline".into())
        );
        // Not observed yet: a new commit may have fixed it.
        assert_eq!(
            rollout_state(&deployment(3, 4, status)),
            waiting("Waiting for deployment spec update to be observed...")
        );
    }

    #[test]
    fn targets_are_deployments_by_any_name() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for spelled in [
            "deployment/web",
            "deploy/web",
            "deployments/web",
            "deployments.apps/web",
        ] {
            assert_eq!(
                parse_target(&args(&[spelled])),
                Ok("web".into()),
                "{spelled}"
            );
        }
        assert_eq!(parse_target(&args(&["deploy", "web"])), Ok("web".into()));
        assert!(parse_target(&args(&["sts/web"]))
            .expect_err("a stateful set")
            .contains("deployments only"));
        assert_eq!(
            parse_status_target(&args(&["sts/db"])),
            Ok((Kind::StatefulSet, "db".into()))
        );
        assert_eq!(
            parse_status_target(&args(&["daemonset", "agent"])),
            Ok((Kind::DaemonSet, "agent".into()))
        );
        assert!(parse_status_target(&args(&["pods/web"]))
            .expect_err("pods")
            .contains("no status viewer"));
        assert!(parse_target(&args(&["nope/web"]))
            .expect_err("unknown")
            .contains("doesn't have a resource type \"nope\""));
        assert!(parse_target(&args(&["web"])).is_err());
        assert!(parse_target(&args(&["deploy/"])).is_err());
        assert!(parse_target(&args(&["deploy/a/b"])).is_err());
    }

    #[test]
    fn stateful_set_and_daemon_set_rollouts_read_like_kubectl() {
        let sts = |status: serde_json::Value, partition: i32| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "serviceName": "db", "selector": {},
                    "template": {},
                    "updateStrategy": {"type": "RollingUpdate",
                        "rollingUpdate": {"partition": partition}}},
                "status": status
            }))
            .expect("a StatefulSet")
        };
        let waiting = |s: &str| RolloutState::Waiting(s.to_string());
        assert_eq!(
            stateful_set_state(&sts(
                serde_json::json!({"replicas": 3, "observedGeneration": 1}),
                0
            )),
            waiting("Waiting for statefulset spec update to be observed...")
        );
        assert_eq!(
            stateful_set_state(&sts(
                serde_json::json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 1}),
                0
            )),
            waiting("Waiting for 2 pods to be ready...")
        );
        let rolling = serde_json::json!({"replicas": 3, "observedGeneration": 2,
            "readyReplicas": 3, "updatedReplicas": 1, "currentReplicas": 2,
            "currentRevision": "db-a", "updateRevision": "db-b"});
        assert_eq!(
            stateful_set_state(&sts(rolling.clone(), 0)),
            waiting(
                "waiting for statefulset rolling update to complete 1 pods at revision db-b..."
            )
        );
        assert_eq!(
            stateful_set_state(&sts(rolling, 2)),
            RolloutState::Done(
                "partitioned roll out complete: 1 new pods have been updated...".into()
            )
        );
        let done = serde_json::json!({"replicas": 3, "observedGeneration": 2,
            "readyReplicas": 3, "updatedReplicas": 3, "currentReplicas": 3,
            "currentRevision": "db-b", "updateRevision": "db-b"});
        assert_eq!(
            stateful_set_state(&sts(done, 0)),
            RolloutState::Done(
                "statefulset rolling update complete 3 pods at revision db-b...".into()
            )
        );
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 2,
                "currentNumberScheduled": 2, "numberReady": 1, "numberMisscheduled": 0,
                "updatedNumberScheduled": 2, "numberAvailable": 1}
        }))
        .expect("a DaemonSet");
        assert_eq!(
            daemon_set_state(&ds),
            waiting("Waiting for daemon set \"agent\" rollout to finish: 1 of 2 updated pods are available...")
        );
        let mut on_delete = ds.clone();
        if let Some(spec) = on_delete.spec.as_mut() {
            spec.update_strategy = Some(Default::default());
            if let Some(s) = spec.update_strategy.as_mut() {
                s.type_ = Some("OnDelete".into());
            }
        }
        assert_eq!(
            daemon_set_state(&on_delete),
            RolloutState::Failed(NOT_ROLLING.into())
        );
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "s", "1x", "-1s", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn watch_and_timeout_flags_parse_as_kubectl_spells_them() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: StatusArgs,
        }
        let cmd = Cmd::try_parse_from(["x", "deploy/web", "--watch=false", "--timeout", "1m"])
            .expect("parses");
        assert!(!cmd.args.watch);
        assert_eq!(cmd.args.timeout, Duration::from_secs(60));
        let cmd = Cmd::try_parse_from(["x", "deploy/web", "-n", "demo"]).expect("parses");
        assert!(cmd.args.watch);
        assert_eq!(cmd.args.timeout, Duration::ZERO);
        assert_eq!(cmd.args.namespace, "demo");
        let cmd = Cmd::try_parse_from(["x", "deploy/web", "--watch"]).expect("parses");
        assert!(cmd.args.watch);
    }

    fn replica_set(
        name: &str,
        owner: &str,
        revision: &str,
        sha: Option<&str>,
        image: &str,
    ) -> ReplicaSet {
        let mut annotations = serde_json::json!({ REVISION_ANNOTATION: revision });
        if let Some(sha) = sha {
            annotations[ROLLOUT_COMMIT_ANNOTATION] = sha.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "demo", "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "web", "uid": owner, "controller": true}]
            },
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
                    "spec": {"containers": [{"name": "web", "image": image,
                                             "ports": [{"containerPort": 80}]}]}
                }
            }
        }))
        .expect("valid replica set")
    }

    fn commit(sha: &str, summary: &str) -> CommitInfo {
        CommitInfo {
            sha: sha.into(),
            author: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            time: "2025-01-02T03:04:05+01:00".into(),
            summary: summary.into(),
            message: format!("{summary}\n\nWhy:\tbecause.\n"),
        }
    }

    #[test]
    fn history_lists_revisions_oldest_first_with_their_commits() {
        let d = deployment(4, 3, DeploymentStatus::default());
        let sha = |c: char| c.to_string().repeat(40);
        let sets = vec![
            replica_set("web-c", "d-uid", "4", Some(&sha('c')), "web:2"),
            replica_set("web-a", "d-uid", "1", Some(&sha('a')), "web:1"),
            replica_set("web-b", "d-uid", "3", Some(&sha('b')), "web:missing"),
            replica_set("web-old", "d-uid", "x", None, "web:0"),
            replica_set("other-a", "other-uid", "9", Some(&sha('a')), "web:1"),
        ];
        let commits: BTreeMap<String, CommitInfo> = [
            (sha('a'), commit(&sha('a'), "Web v1")),
            (sha('c'), commit(&sha('c'), "Revert \"Web: missing image\"")),
        ]
        .into();
        let revs = revisions(&d, &sets, &commits);
        assert_eq!(
            revs.iter().map(|r| r.number).collect::<Vec<_>>(),
            vec![0, 1, 3, 4]
        );
        assert_eq!(
            render_history(&d, &revs),
            "deployment.apps/web\n\
             REVISION   COMMIT    AUTHOR         DATE                      CHANGE\n\
             0          <none>    <none>         <none>                    <none>\n\
             1          aaaaaaa   Ada Lovelace   2025-01-02 02:04:05 UTC   Web v1\n\
             3          bbbbbbb   <unknown>      <unknown>                 <not in the history>\n\
             4          ccccccc   Ada Lovelace   2025-01-02 02:04:05 UTC   Revert \"Web: missing image\"\n"
        );
        let detail = render_revision(&d, &revs[1]);
        assert_eq!(
            detail,
            "deployment.apps/web with revision #1\n\
             ReplicaSet:  web-a\n\
             Commit:      aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\
             Author:      Ada Lovelace <ada@example.com>\n\
             Date:        2025-01-02 02:04:05 UTC\n\
             Message:\n\
             \x20   Web v1\n\
             \n\
             \x20   Why:    because.\n\
             Pod Template:\n\
             \x20 Labels:  app=web\n\
             \x20          pod-template-hash=abc\n\
             \x20 Containers:\n\
             \x20  web:\n\
             \x20   Image:  web:1\n\
             \x20   Port:   80/TCP\n"
        );
        assert!(render_revision(&d, &revs[2]).contains("Commit:      bbbbbbb"));
    }
}
