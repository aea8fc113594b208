//! `commitd history`: every commit the reconciler has seen, newest first —
//! the audit trail of what went live, what was refused and why, and what
//! drift was put back. Git says what was asked for; this says what happened.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use commitd_api::health::{CommitHealth, ObjectHealth};
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::keys;
use commitd_api::records::{HistoryRecord, Outcome};
use etcd_client::{GetOptions, SortOrder, SortTarget};

use super::output::{self, diagnostic_line, Table};
use super::ClusterArgs;

/// Arguments of `commitd history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// How many records to show, newest first (0 shows them all).
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: u32,
    /// Print the records themselves (for scripts) instead of a table.
    #[arg(short, long, value_enum)]
    pub output: Option<HistoryFormat>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Machine-readable forms of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HistoryFormat {
    /// A JSON array of records, newest first.
    Json,
    /// A YAML sequence of records, newest first.
    Yaml,
}

/// Prints the history. Exit 0 whenever etcd answers, even when empty.
pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = args.cluster.connect().await?;
    let mut options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend);
    if args.limit > 0 {
        options = options.with_limit(i64::from(args.limit));
    }
    let resp = store
        .client()
        .get(keys::HISTORY_PREFIX, Some(options))
        .await
        .context("reading the history from etcd")?;
    let mut records = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<HistoryRecord>(kv.value()) {
            Ok(r) => records.push(r),
            Err(e) => eprintln!(
                "warning: skipping history record {}: {e}",
                String::from_utf8_lossy(kv.key())
            ),
        }
    }
    // Keys sort by sequence already; sorting again keeps the order right
    // even if a record was written under an unpadded key.
    records.sort_by_key(|r| std::cmp::Reverse(r.seq));

    let text = match args.output {
        Some(HistoryFormat::Json) => {
            output::json(&serde_json::to_value(&records).context("encoding the history")?)?
        }
        Some(HistoryFormat::Yaml) => {
            output::yaml(&serde_json::to_value(&records).context("encoding the history")?)?
        }
        None if records.is_empty() => {
            eprintln!("No history yet: the reconciler has not seen a commit.");
            return Ok(ExitCode::SUCCESS);
        }
        None => render(&records),
    };
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The lowercase word for an outcome, short enough for a column.
fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Rejected => "rejected",
        Outcome::DriftCorrected => "drift",
    }
}

/// `2025-01-02 15:04:05` in UTC: an audit trail wants absolute times.
fn time_cell(rfc3339: &str) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// One line per record, with a rejected commit's errors (and a drift
/// correction's note) indented under it.
fn render(records: &[HistoryRecord]) -> String {
    let mut table = Table::new([
        "SEQ",
        "COMMIT",
        "OUTCOME",
        "CHANGES",
        "TIME (UTC)",
        "HEALTH",
        "SUMMARY",
    ]);
    for r in records {
        let c = &r.changes;
        table.row([
            r.seq.to_string(),
            r.commit.short_sha().to_string(),
            outcome_word(r.outcome).to_string(),
            format!(
                "+{} ~{} -{}",
                c.created.len(),
                c.updated.len(),
                c.deleted.len()
            ),
            time_cell(&r.recorded_at),
            health_cell(r.health.as_ref()),
            r.commit.summary.clone(),
        ]);
    }
    let mut lines = table.lines().into_iter();
    let mut out = String::new();
    if let Some(header) = lines.next() {
        out += &header;
        out.push('\n');
    }
    for (r, line) in records.iter().zip(lines) {
        out += &line;
        out.push('\n');
        out += &provenance_lines(r);
        for e in &r.errors {
            out += &format!("    {}\n", diagnostic_line(e));
        }
        if let Some(note) = &r.note {
            out += &format!("    {note}\n");
        }
        for o in r.health.iter().flat_map(|h| &h.objects) {
            out += &format!("    {}\n", object_line(o));
        }
    }
    out
}

/// Why a commit was refused before its manifests were read, or that it
/// rewrote history, and who signed it.
fn provenance_lines(r: &HistoryRecord) -> String {
    let p = &r.provenance;
    let mut out = String::new();
    if let Some(refusal) = &p.refusal {
        out += &format!("    refused ({}): {}\n", refusal.reason, refusal.message);
    } else if let Some(from) = &p.rewrite_of {
        out += &format!(
            "    history rewritten: does not descend from the applied commit {}\n",
            from.get(..7).unwrap_or(from)
        );
    }
    if let Some(signer) = &p.signer {
        out += &format!("    signed by {signer}\n");
    }
    out
}

/// `Healthy since 12:03:41`; `-` before the health controller looked.
fn health_cell(health: Option<&CommitHealth>) -> String {
    match health {
        Some(h) => {
            let at = h
                .since
                .parse::<Timestamp>()
                .map(|t| t.strftime("%H:%M:%S").to_string())
                .unwrap_or_else(|_| h.since.clone());
            format!("{} since {at}", h.status)
        }
        None => "-".to_string(),
    }
}

/// One object that is not healthy, and the commit that last changed it.
fn object_line(o: &ObjectHealth) -> String {
    let name = match &o.namespace {
        Some(ns) => format!("{}/{}", ns, o.name),
        None => o.name.clone(),
    };
    let mut line = format!("{} {name}: {}", o.kind, o.status);
    if let Some(reason) = &o.reason {
        line += &format!(" {reason}");
    }
    if let Some(message) = &o.message {
        line += &format!(": {message}");
    }
    if let Some(sha) = &o.commit {
        line += &format!(" (changed by {})", sha.get(..7).unwrap_or(sha));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::diagnostic::Diagnostic;
    use commitd_api::health::HealthStatus;
    use commitd_api::records::{Changes, CommitInfo};

    fn record(seq: u64, outcome: Outcome, summary: &str) -> HistoryRecord {
        HistoryRecord {
            seq,
            commit: CommitInfo {
                sha: format!("{seq:0>40}"),
                author: "Ada".into(),
                email: String::new(),
                time: "2025-01-01T00:00:00Z".into(),
                summary: summary.into(),
                message: summary.into(),
            },
            outcome,
            recorded_at: "2025-01-02T03:04:05.678Z".into(),
            changes: Changes::default(),
            errors: vec![],
            warnings: vec![],
            note: None,
            health: None,
            provenance: Default::default(),
        }
    }

    #[test]
    fn records_print_one_line_each_with_errors_below() {
        let mut applied = record(1, Outcome::Applied, "Add web");
        applied.changes.created = vec!["Deployment demo/web".into(), "Namespace demo".into()];
        let mut rejected = record(2, Outcome::Rejected, "Typo");
        rejected.errors = vec![Diagnostic::error(
            "web.yaml",
            9,
            Some("spec.replica".into()),
            "unknown field \"replica\"",
        )];
        let mut drift = record(3, Outcome::DriftCorrected, "Add web");
        drift.changes.updated = vec!["Deployment demo/web".into()];
        drift.note = Some("put back what was changed outside Git: Deployment demo/web".into());
        applied.health = Some(CommitHealth::of(
            vec![ObjectHealth {
                kind: "Deployment".into(),
                namespace: Some("demo".into()),
                name: "web".into(),
                status: HealthStatus::Degraded,
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("Deployment \"web\" exceeded its progress deadline".into()),
                commit: Some("abcdef0123456789".into()),
            }],
            "2025-01-02T03:14:15Z".into(),
        ));
        assert_eq!(
            render(&[drift, rejected, applied]),
            "SEQ   COMMIT    OUTCOME    CHANGES    TIME (UTC)            HEALTH                    SUMMARY\n\
             3     0000000   drift      +0 ~1 -0   2025-01-02 03:04:05   -                         Add web\n\
             \x20   put back what was changed outside Git: Deployment demo/web\n\
             2     0000000   rejected   +0 ~0 -0   2025-01-02 03:04:05   -                         Typo\n\
             \x20   web.yaml:9: spec.replica: unknown field \"replica\"\n\
             1     0000000   applied    +2 ~0 -0   2025-01-02 03:04:05   Degraded since 03:14:15   Add web\n\
             \x20   Deployment demo/web: Degraded ProgressDeadlineExceeded: Deployment \"web\" exceeded its progress deadline (changed by abcdef0)\n"
        );
    }

    #[test]
    fn refusals_rewrites_and_signers_are_shown() {
        use commitd_api::records::{Provenance, Refusal};
        let mut refused = record(2, Outcome::Rejected, "Unsigned change");
        refused.provenance = Provenance {
            refusal: Some(Refusal {
                reason: "Unsigned".into(),
                message: "commit 0000002 is not signed".into(),
            }),
            ..Provenance::default()
        };
        let mut rewrite = record(1, Outcome::Applied, "Force-pushed");
        rewrite.provenance = Provenance {
            signer: Some("ada@example.com (SHA256:abc)".into()),
            rewrite_of: Some("f00dfeed00000000000000000000000000000000".into()),
            refusal: None,
        };
        let text = render(&[refused, rewrite]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "    refused (Unsigned): commit 0000002 is not signed"
        );
        assert_eq!(
            lines[4],
            "    history rewritten: does not descend from the applied commit f00dfee"
        );
        assert_eq!(lines[5], "    signed by ada@example.com (SHA256:abc)");
    }

    #[test]
    fn unparsable_times_print_as_stored() {
        assert_eq!(time_cell("soon"), "soon");
    }
}
