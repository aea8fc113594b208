//! Presentation shared by the read-only commands: kubectl-style tables, ages
//! and the pod summary (`READY`, `STATUS`, `RESTARTS`) exactly as kubectl
//! computes them, so that people who know Kubernetes read our output without
//! translating, and scripts written against kubectl's columns keep working.

use std::collections::BTreeMap;
use std::io::Write;

use commitd_api::diagnostic::Diagnostic;
use commitd_api::k8s_openapi::api::core::v1::{Container, ContainerStatus, Endpoints, Pod};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use commitd_api::k8s_openapi::jiff::Timestamp;

/// Space between two columns, as kubectl's tabwriter pads them.
const COLUMN_GAP: usize = 3;
/// Space after a column of `kubectl describe` output (its tabwriter's
/// padding, with no minimum width).
const DESCRIBE_PADDING: usize = 2;
/// How many endpoints kubectl lists before `+ N more...`.
const MAX_LISTED_ENDPOINTS: usize = 3;
/// The narrowest a column gets (kubectl's tabwriter `minwidth`), counting
/// its gap, so that columns of tiny values still line up with the header.
const MIN_CELL_WIDTH: usize = 6;

/// A table printed the way kubectl prints one: upper-case headers, each
/// column as wide as its widest cell plus three spaces, the last column
/// unpadded so lines carry no trailing blanks.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (upper-cased here so callers can
    /// write them in any case and never print a lower-case header).
    pub fn new<I, S>(headers: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Table {
            headers: headers
                .into_iter()
                .map(|h| h.as_ref().to_uppercase())
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty, extra cells are kept so
    /// that nothing a caller computed is silently dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Whether no row was added (callers print "No resources found" then).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header line followed by one line per row, without newlines, for
    /// callers that interleave extra lines (errors under a history entry).
    pub fn lines(&self) -> Vec<String> {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(display_width(cell));
            }
        }
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|line| format_line(line, &widths))
            .collect()
    }

    /// The whole table, each line ending in a newline.
    pub fn render(&self) -> String {
        self.lines().into_iter().map(|l| l + "\n").collect()
    }

    /// Writes the table to `out` (stdout in the commands).
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(self.render().as_bytes())
    }
}

fn display_width(s: &str) -> usize {
    s.chars().count()
}

fn format_line(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    let last = widths.len().saturating_sub(1);
    for (i, width) in widths.iter().enumerate() {
        let cell = cells.get(i).map(String::as_str).unwrap_or("");
        line.push_str(cell);
        if i < last {
            let cell_width = (width + COLUMN_GAP).max(MIN_CELL_WIDTH);
            line.extend(std::iter::repeat_n(' ', cell_width - display_width(cell)));
        }
    }
    line.truncate(line.trim_end().len());
    line
}

/// Aligns tab-separated text as Go's `text/tabwriter` does for `kubectl
/// describe` (padding 2, no minimum width): a cell ends at a tab, the text
/// after a line's last tab is not aligned, and a column is aligned over the
/// run of adjacent lines that have a cell in it. That is why `Port:` lines
/// (`Port:\thttp\t80/TCP`) align their name only with themselves, exactly
/// as kubectl prints them.
pub fn tabbed(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut widths = Vec::new();
    format_block(&lines, &mut widths, &mut out);
    // `split` yields an empty last line after a final newline; the loop
    // above wrote a newline after every line, so drop the one too many.
    if out.ends_with('\n') {
        out.pop();
    }
    out
}

/// Go's `Writer.format`: finds the blocks of adjacent lines that have a
/// cell in the next column, fixes that column's width for each block, and
/// recurses to the columns right of it.
fn format_block(lines: &[Vec<&str>], widths: &mut Vec<usize>, out: &mut String) {
    let column = widths.len();
    let has_cell = |line: &Vec<&str>| column + 1 < line.len();
    let mut start = 0;
    let mut i = 0;
    while i < lines.len() {
        if !has_cell(&lines[i]) {
            i += 1;
            continue;
        }
        write_lines(&lines[start..i], widths, out);
        let block_start = i;
        let mut width = 0;
        while i < lines.len() && has_cell(&lines[i]) {
            width = width.max(display_width(lines[i][column]) + DESCRIBE_PADDING);
            i += 1;
        }
        widths.push(width);
        format_block(&lines[block_start..i], widths, out);
        widths.pop();
        start = i;
    }
    write_lines(&lines[start..], widths, out);
}

/// Writes lines with their aligned cells padded, and without trailing
/// blanks (an empty value after a title, as `IP:` of an ExternalName
/// Service, would leave some; the tables drop them too).
fn write_lines(lines: &[Vec<&str>], widths: &[usize], out: &mut String) {
    for line in lines {
        let start = out.len();
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(w) = widths.get(j).filter(|_| j + 1 < line.len()) {
                out.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(display_width(cell)),
                ));
            }
        }
        let kept = start + out[start..].trim_end_matches(' ').len();
        out.truncate(kept);
        out.push('\n');
    }
}

/// A label map as kubectl's `labels.FormatLabels` writes it: `k=v` pairs
/// sorted by key and comma joined, `<none>` when there are none.
pub fn format_labels(labels: Option<&BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if pairs.is_empty() {
        "<none>".to_string()
    } else {
        pairs.join(",")
    }
}

/// `ip:port`, bracketing IPv6 addresses as Go's `net.JoinHostPort` does.
pub fn host_port(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The ready endpoints of an Endpoints object as kubectl's
/// `formatEndpoints` lists them: `ip:port` for every ready address and
/// port (only ports named `port`, when given), bare IPs for a subset
/// without ports, the first three and then `+ N more...`; `<none>` when the
/// object has no subsets, and empty when it has only not-ready addresses
/// (kubectl prints that blank too).
pub fn format_endpoints(endpoints: &Endpoints, port: Option<&str>) -> String {
    let subsets = endpoints.subsets.as_deref().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list = Vec::new();
    let mut count = 0;
    let mut push = |entry: String| {
        if list.len() < MAX_LISTED_ENDPOINTS {
            list.push(entry);
        }
        count += 1;
    };
    for subset in subsets {
        let addresses = subset.addresses.as_deref().unwrap_or_default();
        let ports = subset.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            addresses.iter().for_each(|a| push(a.ip.clone()));
            continue;
        }
        for p in ports {
            if port.is_none_or(|want| p.name.as_deref().unwrap_or_default() == want) {
                addresses
                    .iter()
                    .for_each(|a| push(host_port(&a.ip, p.port)));
            }
        }
    }
    let listed = list.join(",");
    if count > MAX_LISTED_ENDPOINTS {
        format!("{listed} + {} more...", count - MAX_LISTED_ENDPOINTS)
    } else {
        listed
    }
}

/// Writes to stdout, treating a closed pipe (`commitd get pods | head`) as
/// the reader having seen enough rather than as a failure to report.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// JSON as kubectl prints it (four-space indent, keys in the order of
/// `serde_json`'s sorted maps), ending in a newline.
pub fn json(value: &serde_json::Value) -> anyhow::Result<String> {
    use serde::Serialize;
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    value.serialize(&mut ser)?;
    buf.push(b'\n');
    Ok(String::from_utf8(buf)?)
}

/// YAML as kubectl prints it (block style, sequences flush with their key).
pub fn yaml(value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

/// How long ago `since` was, as kubectl's AGE column says it; `<unknown>`
/// when the object carries no time (kubectl prints the same).
pub fn age(since: Option<&Time>, now: Timestamp) -> String {
    match since {
        Some(t) => human_duration(now.duration_since(t.0).as_secs()),
        None => "<unknown>".to_string(),
    }
}

/// Like [`age`] for RFC 3339 strings, as the commit records keep times.
pub fn age_of_rfc3339(since: &str, now: Timestamp) -> String {
    match since.parse::<Timestamp>() {
        Ok(t) => human_duration(now.duration_since(t).as_secs()),
        Err(_) => "<unknown>".to_string(),
    }
}

/// A duration in seconds in kubectl's words (`duration.HumanDuration`):
/// precise while it is short, coarser as it grows (`45s`, `3m2s`, `15m`,
/// `5h30m`, `2d`, `3y12d`). Clocks a second or two apart read as now.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// A diagnostic as the read-only commands list them under a commit
/// (`file:line: field: message`): the severity is already said by the
/// heading they appear under.
pub fn diagnostic_line(d: &Diagnostic) -> String {
    match &d.field {
        Some(field) => format!("{}:{}: {field}: {}", d.file, d.line, d.message),
        None => format!("{}:{}: {}", d.file, d.line, d.message),
    }
}

/// `n thing` or `n things`, for summary lines.
pub fn plural(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("{n} {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// The `READY`, `STATUS` and `RESTARTS` cells of a pod, as kubectl's
/// `printPod` derives them from the container statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    /// `ready/total` containers (restartable init containers count).
    pub ready: String,
    /// The one word people look at: a waiting or terminated reason when a
    /// container has one, `Init:…` while initializing, `Terminating`, or
    /// else the phase.
    pub status: String,
    /// Restarts, with how long ago the last one was when known.
    pub restarts: String,
}

/// The status cells of a pod, computed as kubectl does.
pub fn pod_summary(pod: &Pod, now: Timestamp) -> PodSummary {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = spec.map_or(&[][..], |s| s.containers.as_slice());
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let init_statuses = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default();
    let container_statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let status_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();

    let total = containers.len()
        + init_containers
            .iter()
            .filter(|c| is_restartable_init(Some(c)))
            .count();
    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut restartable_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_restart: Option<Timestamp> = None;

    let mut reason = if status_reason.is_empty() {
        phase.to_string()
    } else {
        status_reason.to_string()
    };
    if conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".to_string();
    }

    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
        let container = init_containers.iter().find(|c| c.name == cs.name);
        let restartable = is_restartable_init(container);
        restarts += i64::from(cs.restart_count);
        let finished = last_termination(cs);
        last_restart = later(last_restart, finished);
        if restartable {
            restartable_restarts += i64::from(cs.restart_count);
            last_restartable_restart = later(last_restartable_restart, finished);
        }
        let state = cs.state.as_ref();
        let terminated = state.and_then(|s| s.terminated.as_ref());
        let waiting_reason = state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .unwrap_or_default();
        if terminated.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if restartable && cs.started == Some(true) {
            if cs.ready {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => match t.signal.filter(|s| *s != 0) {
                    Some(sig) => format!("Init:Signal:{sig}"),
                    None => format!("Init:ExitCode:{}", t.exit_code),
                },
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_containers.len());
        }
        initializing = true;
        break;
    }

    let initialized = conditions
        .iter()
        .any(|c| c.type_ == "Initialized" && c.status == "True");
    if !initializing || initialized {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        for cs in container_statuses.iter().rev() {
            restarts += i64::from(cs.restart_count);
            last_restart = later(last_restart, last_termination(cs));
            let state = cs.state.as_ref();
            let waiting = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .filter(|r| !r.is_empty());
            let terminated = state.and_then(|s| s.terminated.as_ref());
            if let Some(w) = waiting {
                reason = w.to_string();
            } else if let Some(t) = terminated {
                reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None => match t.signal.filter(|s| *s != 0) {
                        Some(sig) => format!("Signal:{sig}"),
                        None => format!("ExitCode:{}", t.exit_code),
                    },
                };
            } else if cs.ready && state.is_some_and(|s| s.running.is_some()) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    let deleting = pod.metadata.deletion_timestamp.is_some();
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    // A pod nobody has reported on yet: kubectl shows its (defaulted) phase.
    if reason.is_empty() {
        reason = "Pending".to_string();
    }
    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration(now.duration_since(t).as_secs())
        ),
        _ => restarts.to_string(),
    };
    PodSummary {
        ready: format!("{ready}/{total}"),
        status: reason,
        restarts,
    }
}

fn is_restartable_init(container: Option<&Container>) -> bool {
    container.is_some_and(|c| c.restart_policy.as_deref() == Some("Always"))
}

fn last_termination(cs: &ContainerStatus) -> Option<Timestamp> {
    cs.last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()
        .map(|t| t.0)
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodCondition, PodSpec, PodStatus,
    };

    #[test]
    fn describe_text_aligns_like_kubectls_tabwriter() {
        let text = "Name:\tkubernetes\n\
                    Labels:\tcomponent=apiserver\n\
                    \tprovider=kubernetes\n\
                    Port:\thttps\t443/TCP\n\
                    TargetPort:\t6443/TCP\n\
                    NodePort:\t<unset>\t30443/TCP\n\
                    Internal Traffic Policy:\tCluster\n";
        assert_eq!(
            tabbed(text),
            "Name:                     kubernetes\n\
             Labels:                   component=apiserver\n\
             \x20                         provider=kubernetes\n\
             Port:                     https  443/TCP\n\
             TargetPort:               6443/TCP\n\
             NodePort:                 <unset>  30443/TCP\n\
             Internal Traffic Policy:  Cluster\n"
        );
        // Lines without a tab break a block: columns on either side of
        // them are aligned on their own.
        assert_eq!(
            tabbed("a:\t1\nplain\nlonger:\t2\n"),
            "a:  1\nplain\nlonger:  2\n"
        );
        assert_eq!(tabbed("no tabs"), "no tabs");
        assert_eq!(
            tabbed("IP:\t\nType:\tExternalName\n"),
            "IP:\nType:  ExternalName\n"
        );
    }

    #[test]
    fn labels_format_sorted_or_none() {
        let labels = BTreeMap::from([
            ("tier".to_string(), "front".to_string()),
            ("app".to_string(), "web".to_string()),
        ]);
        assert_eq!(format_labels(Some(&labels)), "app=web,tier=front");
        assert_eq!(format_labels(Some(&BTreeMap::new())), "<none>");
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("fd00::1", 80), "[fd00::1]:80");
    }

    fn endpoints(v: serde_json::Value) -> Endpoints {
        serde_json::from_value(v).expect("valid endpoints")
    }

    #[test]
    fn endpoints_list_three_then_count_the_rest() {
        let ep = endpoints(serde_json::json!({
            "metadata": {"name": "web"},
            "subsets": [{
                "addresses": [{"ip": "10.244.0.1"}, {"ip": "10.244.0.2"}, {"ip": "10.244.0.3"}],
                "notReadyAddresses": [{"ip": "10.244.0.9"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]
            }]
        }));
        assert_eq!(
            format_endpoints(&ep, None),
            "10.244.0.1:8080,10.244.0.2:8080,10.244.0.3:8080 + 3 more..."
        );
        assert_eq!(
            format_endpoints(&ep, Some("metrics")),
            "10.244.0.1:9100,10.244.0.2:9100,10.244.0.3:9100"
        );
        assert_eq!(format_endpoints(&ep, Some("dns")), "");
        let two = endpoints(serde_json::json!({
            "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": "10.244.0.1"}, {"ip": "10.244.0.2"}],
                         "ports": [{"port": 80}]}]
        }));
        assert_eq!(format_endpoints(&two, None), "10.244.0.1:80,10.244.0.2:80");
        assert_eq!(
            format_endpoints(&two, Some("")),
            "10.244.0.1:80,10.244.0.2:80"
        );
        let headless = endpoints(serde_json::json!({
            "metadata": {"name": "db"},
            "subsets": [{"addresses": [{"ip": "10.244.0.5"}]}]
        }));
        assert_eq!(format_endpoints(&headless, None), "10.244.0.5");
        let not_ready = endpoints(serde_json::json!({
            "metadata": {"name": "web"},
            "subsets": [{"notReadyAddresses": [{"ip": "10.244.0.9"}], "ports": [{"port": 80}]}]
        }));
        assert_eq!(format_endpoints(&not_ready, None), "");
        let empty = endpoints(serde_json::json!({"metadata": {"name": "web"}}));
        assert_eq!(format_endpoints(&empty, None), "<none>");
    }

    #[test]
    fn tables_align_like_kubectl() {
        let mut t = Table::new(["name", "ready", "status", "restarts", "age"]);
        t.row(["web-7d9c5-abcde", "1/1", "Running", "0", "5m"]);
        t.row(["db-0", "0/1", "ContainerCreating", "0", "12s"]);
        assert_eq!(
            t.render(),
            "NAME              READY   STATUS              RESTARTS   AGE\n\
             web-7d9c5-abcde   1/1     Running             0          5m\n\
             db-0              0/1     ContainerCreating   0          12s\n"
        );
    }

    #[test]
    fn narrow_columns_keep_kubectls_minimum_width() {
        let mut t = Table::new(["a", "b"]);
        t.row(["x", "y"]);
        assert_eq!(t.lines(), vec!["A     B", "x     y"]);
    }

    #[test]
    fn lines_carry_no_trailing_blanks_and_short_rows_are_padded() {
        let mut t = Table::new(["name", "ip", "node"]);
        t.row(["p", "10.0.0.1"]);
        t.row(["q", "", ""]);
        for line in t.lines() {
            assert_eq!(line, line.trim_end());
        }
        assert_eq!(t.lines()[1], "p      10.0.0.1");
        assert!(!t.is_empty());
        assert!(Table::new(["x"]).is_empty());
    }

    #[test]
    fn wide_characters_count_once() {
        let mut t = Table::new(["name", "age"]);
        t.row(["défaut", "1s"]);
        assert_eq!(t.lines()[0], "NAME     AGE");
        assert_eq!(t.lines()[1], "défaut   1s");
    }

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (2 * 365 * 86400, "2y"),
            (3 * 365 * 86400 + 12 * 86400, "3y12d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn ages_count_from_the_timestamp() {
        let now: Timestamp = "2025-01-03T00:00:00Z".parse().unwrap();
        let created = Time("2025-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(age(Some(&created), now), "2d");
        assert_eq!(age(None, now), "<unknown>");
        assert_eq!(age_of_rfc3339("2025-01-02T23:56:58Z", now), "3m2s");
        assert_eq!(age_of_rfc3339("yesterday", now), "<unknown>");
    }

    #[test]
    fn diagnostics_list_without_severity() {
        let d = Diagnostic::error("a.yaml", 3, Some("spec.replica".into()), "unknown field");
        assert_eq!(diagnostic_line(&d), "a.yaml:3: spec.replica: unknown field");
        let d = Diagnostic::error("a.yaml", 1, None, "invalid YAML");
        assert_eq!(diagnostic_line(&d), "a.yaml:1: invalid YAML");
        assert_eq!(plural(1, "error", "errors"), "1 error");
        assert_eq!(plural(0, "error", "errors"), "0 errors");
    }

    fn now() -> Timestamp {
        "2025-01-01T01:00:00Z".parse().unwrap()
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Container::default()
        }
    }

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn waiting(name: &str, reason: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn terminated(name: &str, exit_code: i32, reason: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: reason.map(Into::into),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    fn pod(
        containers: &[&str],
        phase: &str,
        statuses: Vec<ContainerStatus>,
        init: Vec<ContainerStatus>,
    ) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: containers.iter().map(|n| container(n)).collect(),
                init_containers: (!init.is_empty())
                    .then(|| init.iter().map(|s| container(&s.name)).collect()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(statuses),
                init_container_statuses: (!init.is_empty()).then_some(init),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn running_pods_show_ready_counts() {
        let p = pod(
            &["a", "b"],
            "Running",
            vec![running("a", true), running("b", false)],
            vec![],
        );
        let s = pod_summary(&p, now());
        assert_eq!((s.ready.as_str(), s.status.as_str()), ("1/2", "Running"));
        assert_eq!(s.restarts, "0");
    }

    #[test]
    fn waiting_reasons_win_over_the_phase() {
        for reason in ["ContainerCreating", "CrashLoopBackOff", "ErrImagePull"] {
            let p = pod(&["a"], "Pending", vec![waiting("a", reason)], vec![]);
            assert_eq!(pod_summary(&p, now()).status, reason);
        }
    }

    #[test]
    fn terminated_containers_show_their_reason_or_exit_code() {
        let p = pod(
            &["a"],
            "Failed",
            vec![terminated("a", 1, Some("Error"))],
            vec![],
        );
        assert_eq!(pod_summary(&p, now()).status, "Error");
        let p = pod(&["a"], "Failed", vec![terminated("a", 137, None)], vec![]);
        assert_eq!(pod_summary(&p, now()).status, "ExitCode:137");
        let p = pod(
            &["a"],
            "Succeeded",
            vec![terminated("a", 0, Some("Completed"))],
            vec![],
        );
        assert_eq!(pod_summary(&p, now()).status, "Completed");
    }

    #[test]
    fn unreported_pods_are_pending() {
        let p = Pod {
            spec: Some(PodSpec {
                containers: vec![container("a")],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let s = pod_summary(&p, now());
        assert_eq!((s.ready.as_str(), s.status.as_str()), ("0/1", "Pending"));
        let p = pod(&["a"], "Pending", vec![], vec![]);
        assert_eq!(pod_summary(&p, now()).status, "Pending");
    }

    #[test]
    fn deletion_shows_terminating_unless_finished() {
        let mut p = pod(&["a"], "Running", vec![running("a", true)], vec![]);
        p.metadata.deletion_timestamp = Some(Time(now()));
        assert_eq!(pod_summary(&p, now()).status, "Terminating");
        let mut p = pod(
            &["a"],
            "Succeeded",
            vec![terminated("a", 0, Some("Completed"))],
            vec![],
        );
        p.metadata.deletion_timestamp = Some(Time(now()));
        assert_eq!(pod_summary(&p, now()).status, "Completed");
    }

    #[test]
    fn init_containers_report_progress() {
        let p = pod(
            &["a"],
            "Pending",
            vec![waiting("a", "PodInitializing")],
            vec![
                terminated("init-1", 0, Some("Completed")),
                running("init-2", false),
            ],
        );
        assert_eq!(pod_summary(&p, now()).status, "Init:1/2");
        let p = pod(
            &["a"],
            "Pending",
            vec![waiting("a", "PodInitializing")],
            vec![waiting("init-1", "CrashLoopBackOff")],
        );
        assert_eq!(pod_summary(&p, now()).status, "Init:CrashLoopBackOff");
        let p = pod(
            &["a"],
            "Failed",
            vec![],
            vec![terminated("init-1", 2, None)],
        );
        assert_eq!(pod_summary(&p, now()).status, "Init:ExitCode:2");
    }

    #[test]
    fn completed_with_a_running_sidecar_reads_not_ready() {
        let mut p = pod(
            &["a", "b"],
            "Running",
            vec![terminated("a", 0, Some("Completed")), running("b", true)],
            vec![],
        );
        // Statuses are walked from the last, so the first container's reason
        // is the one kubectl keeps.
        assert_eq!(pod_summary(&p, now()).status, "NotReady");
        if let Some(s) = p.status.as_mut() {
            s.conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]);
        }
        assert_eq!(pod_summary(&p, now()).status, "Running");
    }

    #[test]
    fn restarts_say_when_the_last_one_was() {
        let mut cs = running("a", true);
        cs.restart_count = 3;
        cs.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                finished_at: Some(Time("2025-01-01T00:55:00Z".parse().unwrap())),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        let p = pod(&["a"], "Running", vec![cs], vec![]);
        assert_eq!(pod_summary(&p, now()).restarts, "3 (5m ago)");
    }
}
