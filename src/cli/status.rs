//! `commitd status`: the one screen that answers "is what I pushed running?"
//! — which commit is live, whether a newer one was refused and why, whether
//! the nodes are alive, and how the workloads are doing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::Context;
use commitd_api::health::{self, CommitHealth, HealthStatus};
use commitd_api::k8s_openapi::api::apps::v1::Deployment;
use commitd_api::k8s_openapi::api::core::v1::{Node, Pod};
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::records::{AppliedCommit, CommitInfo, HistoryRecord};
use commitd_api::{keys, meta};

use super::get::node_status;
use super::output::{self, age, age_of_rfc3339, diagnostic_line, plural, pod_summary, Table};
use super::ClusterArgs;

/// Width of the labels in the commit block, so values line up.
const LABEL_WIDTH: usize = 10;

/// Prints the cluster's status. Always exit 0 when etcd answers: a refused
/// commit or a sick pod is news to show, not a failure of the command.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let store = args.connect().await?;
    let now = Timestamp::now();
    let applied: Option<AppliedCommit> = store
        .get_record(keys::APPLIED)
        .await
        .context("reading the applied commit")?;
    let rejected: Option<HistoryRecord> = store
        .get_record(keys::REJECTED)
        .await
        .context("reading the last rejected commit")?;
    let health = match &applied {
        Some(a) => store
            .get_record::<HistoryRecord>(&keys::history_key(a.seq))
            .await
            .context("reading the applied commit's history record")?
            .and_then(|r| r.health),
        None => None,
    };
    let nodes = super::list_objects::<Node>(&store, None).await?;
    let leases = store
        .list_prefix(keys::NODE_LEASE_PREFIX)
        .await
        .context("reading node heartbeats")?;
    let heartbeats: BTreeSet<String> = leases
        .items
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter_map(|k| k.strip_prefix(keys::NODE_LEASE_PREFIX))
        .map(str::to_string)
        .collect();
    let deployments = super::list_objects::<Deployment>(&store, None).await?;
    let pods = super::list_objects::<Pod>(&store, None).await?;

    let mut text = commit_block(applied.as_ref(), rejected.as_ref(), now);
    text.push_str(&health_block(health.as_ref(), now));
    text.push('\n');
    text.push_str(&nodes_block(&nodes, &heartbeats, now));
    text.push('\n');
    text.push_str(&deployments_block(&deployments, now));
    text.push('\n');
    text.push_str(&pods_block(&pods, now));
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn label(name: &str) -> String {
    format!("{:<LABEL_WIDTH$}", format!("{name}:"))
}

fn continuation() -> String {
    " ".repeat(LABEL_WIDTH)
}

fn author(c: &CommitInfo) -> String {
    if c.email.is_empty() {
        c.author.clone()
    } else {
        format!("{} <{}>", c.author, c.email)
    }
}

/// The applied commit, and the rejected one if it came after it: a refused
/// commit older than what is live has been superseded and is not news.
fn commit_block(
    applied: Option<&AppliedCommit>,
    rejected: Option<&HistoryRecord>,
    now: Timestamp,
) -> String {
    let mut s = String::new();
    match applied {
        Some(a) => {
            s += &format!(
                "{}{}  {}\n",
                label("Applied"),
                a.commit.short_sha(),
                a.commit.summary
            );
            s += &format!("{}by {}\n", continuation(), author(&a.commit));
            s += &format!(
                "{}applied {} ago ({}, history #{})\n",
                continuation(),
                age_of_rfc3339(&a.applied_at, now),
                plural(a.objects, "object", "objects"),
                a.seq
            );
            if let Some(wave) = a.through_wave {
                s += &format!(
                    "{}through sync wave {wave}; later waves wait for it to be healthy\n",
                    continuation()
                );
            }
        }
        None => s += &format!("{}none yet: no commit has been applied\n", label("Applied")),
    }
    let newer = rejected.filter(|r| applied.is_none_or(|a| r.seq > a.seq));
    if let Some(r) = newer {
        s += &format!(
            "{}{}  {}\n",
            label("Rejected"),
            r.commit.short_sha(),
            r.commit.summary
        );
        let why = match &r.provenance.refusal {
            Some(refusal) => format!("refused, {}", refusal.reason),
            None => plural(r.errors.len(), "error", "errors"),
        };
        s += &format!(
            "{}by {}, {} ago; nothing from it was applied ({why}):\n",
            continuation(),
            author(&r.commit),
            age_of_rfc3339(&r.recorded_at, now),
        );
        if let Some(refusal) = &r.provenance.refusal {
            s += &format!("{}  {}\n", continuation(), refusal.message);
        }
        for e in &r.errors {
            s += &format!("{}  {}\n", continuation(), diagnostic_line(e));
        }
    }
    s
}

/// How the applied commit's objects are doing, and the ones that are not
/// healthy; nothing before the health controller first looked.
fn health_block(health: Option<&CommitHealth>, now: Timestamp) -> String {
    let Some(h) = health else {
        return String::new();
    };
    let mut s = format!(
        "{}{} for {}\n",
        label("Health"),
        h.status,
        age_of_rfc3339(&h.since, now)
    );
    for o in &h.objects {
        let name = match &o.namespace {
            Some(ns) => format!("{ns}/{}", o.name),
            None => o.name.clone(),
        };
        let why = o.message.as_deref().or(o.reason.as_deref()).unwrap_or("");
        s += &format!("{}{} {name}: {} {why}\n", continuation(), o.kind, o.status);
        if let Some(sha) = o
            .commit
            .as_deref()
            .filter(|_| o.status == HealthStatus::Degraded)
        {
            s += &format!(
                "{}  changed last by commit {}\n",
                continuation(),
                sha.get(..7).unwrap_or(sha)
            );
        }
    }
    s
}

fn nodes_block(nodes: &[Node], heartbeats: &BTreeSet<String>, now: Timestamp) -> String {
    if nodes.is_empty() && heartbeats.is_empty() {
        return "Nodes: none registered\n".to_string();
    }
    let ready = nodes.iter().filter(|n| node_status(n) == "Ready").count();
    let mut s = format!("Nodes: {ready}/{} ready\n", nodes.len());
    let mut table = Table::new(["NAME", "STATUS", "HEARTBEAT", "AGE"]);
    let mut named = BTreeSet::new();
    for n in nodes {
        let name = meta::name(n);
        named.insert(name.to_string());
        let beat = if heartbeats.contains(name) {
            "alive"
        } else {
            "missing"
        };
        table.row([
            name.to_string(),
            node_status(n),
            beat.to_string(),
            age(n.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    for orphan in heartbeats.difference(&named) {
        table.row([
            orphan.clone(),
            "Unregistered".into(),
            "alive".into(),
            "<unknown>".into(),
        ]);
    }
    s += &indent(&table.render());
    s
}

fn deployments_block(deployments: &[Deployment], now: Timestamp) -> String {
    if deployments.is_empty() {
        return "Deployments: none\n".to_string();
    }
    let complete = deployments
        .iter()
        .filter(|d| {
            let (ready, desired) = replica_counts(d);
            ready >= desired
        })
        .count();
    let mut s = format!(
        "Deployments: {complete}/{} fully ready\n",
        deployments.len()
    );
    let mut table = Table::new([
        "NAMESPACE",
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "HEALTH",
        "AGE",
    ]);
    for d in deployments {
        let (ready, desired) = replica_counts(d);
        let status = d.status.as_ref();
        table.row([
            meta::namespace(d).unwrap_or_default().to_string(),
            meta::name(d).to_string(),
            format!("{ready}/{desired}"),
            status
                .and_then(|s| s.updated_replicas)
                .unwrap_or(0)
                .to_string(),
            status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                .to_string(),
            health::deployment(d).status.to_string(),
            age(d.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    s += &indent(&table.render());
    s
}

fn replica_counts(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (ready, desired)
}

/// Pods counted by phase, then every pod that needs a look (not running
/// with all containers ready, and not finished successfully).
fn pods_block(pods: &[Pod], now: Timestamp) -> String {
    if pods.is_empty() {
        return "Pods: none\n".to_string();
    }
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pods {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("Pending");
        *phases.entry(phase).or_default() += 1;
    }
    let counts: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    let mut table = Table::new(["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let mut unwell = 0;
    for p in pods {
        let summary = pod_summary(p, now);
        let all_ready = summary.ready.split_once('/').is_some_and(|(r, t)| r == t);
        let healthy = (summary.status == "Running" && all_ready) || summary.status == "Completed";
        if healthy {
            continue;
        }
        unwell += 1;
        table.row([
            meta::namespace(p).unwrap_or_default().to_string(),
            meta::name(p).to_string(),
            summary.ready,
            summary.status,
            summary.restarts,
            age(p.metadata.creation_timestamp.as_ref(), now),
        ]);
    }
    let mut s = format!("Pods: {} ({})", pods.len(), counts.join(", "));
    if unwell == 0 {
        s += "; all running and ready\n";
    } else {
        s += &format!("; {unwell} not running and ready:\n");
        s += &indent(&table.render());
    }
    s
}

fn indent(block: &str) -> String {
    block.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::diagnostic::Diagnostic;
    use commitd_api::records::{Changes, Outcome};

    fn commit(sha: &str, summary: &str) -> CommitInfo {
        CommitInfo {
            sha: sha.into(),
            author: "Ada".into(),
            email: "ada@example.com".into(),
            time: "2025-01-01T00:00:00Z".into(),
            summary: summary.into(),
            message: summary.into(),
        }
    }

    fn now() -> Timestamp {
        "2025-01-01T00:10:00Z".parse().unwrap()
    }

    #[test]
    fn a_newer_rejection_is_shown_with_every_error() {
        let applied = AppliedCommit {
            commit: commit("abcdef0123", "Add web"),
            seq: 3,
            applied_at: "2025-01-01T00:05:00Z".into(),
            objects: 4,
            through_wave: None,
        };
        let rejected = HistoryRecord {
            seq: 4,
            commit: commit("0123456789", "Scale web"),
            outcome: Outcome::Rejected,
            recorded_at: "2025-01-01T00:09:00Z".into(),
            changes: Changes::default(),
            errors: vec![Diagnostic::error(
                "web.yaml",
                7,
                Some("spec.replica".into()),
                "unknown field \"replica\", did you mean \"replicas\"?",
            )],
            warnings: vec![],
            note: None,
            health: None,
            provenance: Default::default(),
        };
        let text = commit_block(Some(&applied), Some(&rejected), now());
        assert_eq!(
            text,
            "Applied:  abcdef0  Add web\n\
             \x20         by Ada <ada@example.com>\n\
             \x20         applied 5m ago (4 objects, history #3)\n\
             Rejected: 0123456  Scale web\n\
             \x20         by Ada <ada@example.com>, 60s ago; nothing from it was applied (1 error):\n\
             \x20           web.yaml:7: spec.replica: unknown field \"replica\", did you mean \"replicas\"?\n"
        );
        let older = HistoryRecord { seq: 2, ..rejected };
        assert!(!commit_block(Some(&applied), Some(&older), now()).contains("Rejected"));
    }

    #[test]
    fn nothing_applied_says_so() {
        assert_eq!(
            commit_block(None, None, now()),
            "Applied:  none yet: no commit has been applied\n"
        );
    }
}
