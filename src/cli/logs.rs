//! `commitd logs`: what a container printed, as `kubectl logs` shows it —
//! the same arguments (`POD`, `pod/NAME`, `-c`, `-n`, `-f`, `-p`,
//! `--tail`, `--timestamps`) and the same messages — read from the CRI log
//! files that containerd writes for the node agent on this machine:
//! `<agent dir>/pods/<namespace>_<name>_<uid>/<container>/<restartCount>.log`,
//! where the agent dir is `<state-dir>/agent` (as `commitd up` and
//! `commitd nodeagent` lay it out).
//!
//! Each line of such a file is one entry,
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>`: `F` ends a
//! line, `P` is a piece of a longer line that the next entry of the same
//! stream continues. The parsing below ([`parse_entry`], [`Decoder`],
//! [`Tail`]) is pure; the rest reads the Pod, picks the file and streams it.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use commitd_api::k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use commitd_api::{meta, Kind, Store};
use commitd_nodeagent::pod::log_dir_name;
use tokio::io::AsyncReadExt;

use super::ClusterArgs;

/// The annotation naming the container `kubectl logs` reads without `-c`.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// How often `-f` looks for new output in the file.
const FOLLOW_READ_INTERVAL: Duration = Duration::from_millis(200);
/// How often `-f` re-reads the Pod to see whether the container still runs.
const FOLLOW_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How much of the file is read at a time.
const CHUNK: usize = 64 * 1024;

/// Arguments of `commitd logs`, spelled as kubectl spells them.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The pod: NAME or pod/NAME.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container, kubectl's older spelling of `-c`.
    #[arg(value_name = "CONTAINER")]
    pub inline_container: Option<String>,
    /// The container to read; needed when the pod has several.
    #[arg(short, long)]
    pub container: Option<String>,
    /// Namespace of the pod.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new output until the container stops (or Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Read the previous instance of the container, the one before its
    /// last restart.
    #[arg(short, long)]
    pub previous: bool,
    /// Print only the last N lines; -1 prints them all.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Prefix each line with the time it was written (RFC3339Nano).
    #[arg(long)]
    pub timestamps: bool,
    /// The node agent's directory (`commitd nodeagent --agent-dir`);
    /// default: `<state-dir>/agent`.
    #[arg(long)]
    pub agent_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Prints a container's log. Exit 0 when it was printed (even empty), 1
/// when the pod, the container or its log cannot be found.
pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = match pod_name(&args.pod) {
        Ok(n) => n,
        Err(msg) => return fail(&format!("error: {msg}")),
    };
    if args.container.is_some() && args.inline_container.is_some() {
        return fail("error: only one of -c or an inline [CONTAINER] arg is allowed");
    }
    if args.tail < -1 {
        return fail("error: --tail must be greater than or equal to -1");
    }
    let store = args.cluster.connect().await?;
    let pod = store
        .get::<Pod>(Some(&args.namespace), &name)
        .await
        .with_context(|| format!("reading pod {}/{name}", args.namespace))?;
    let Some(pod) = pod else {
        return fail(&format!(
            "Error from server (NotFound): pods \"{name}\" not found"
        ));
    };
    let requested = args
        .container
        .as_deref()
        .or(args.inline_container.as_deref());
    let container = match pick_container(&pod, requested) {
        Ok(c) => c,
        Err(msg) => return fail(&format!("error: {msg}")),
    };
    let status = container_status(&pod, &container);
    let agent_dir = args
        .agent_dir
        .clone()
        .unwrap_or_else(|| args.cluster.state_dir.join("agent"));
    let log_dir = agent_dir.join("pods").join(log_dir_name(
        &args.namespace,
        &name,
        pod.metadata.uid.as_deref().unwrap_or_default(),
    ));
    let instances = list_instances(&log_dir, &container)?;
    let instance = match select_instance(status, args.previous, instances.as_deref()) {
        Ok(n) => n,
        Err(why) => {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("<none>");
            return fail(&why.message(&name, &container, node, &log_dir));
        }
    };
    let path = log_dir.join(&container).join(format!("{instance}.log"));
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;

    let mut out = Out::new(args.timestamps);
    let mut decoder = Decoder::default();
    // What the file holds now: printed as it is read, or with --tail
    // kept to its last lines.
    let mut tail = usize::try_from(args.tail).ok().map(Tail::new);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        let lines = decoder.feed(&buf[..n]);
        match tail.as_mut() {
            Some(t) => t.extend(lines),
            None => {
                if !out.write(&lines)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    // Only the running instance is followed; then a line still in
    // progress may yet be finished, so it waits.
    let following = args.follow
        && !args.previous
        && status.is_some_and(|s| is_running(s) && restart_count(s) == instance);
    let rest = if following {
        Vec::new()
    } else {
        decoder.finish()
    };
    let lines = match tail {
        Some(mut t) => {
            t.extend(rest);
            t.into_lines()
        }
        None => rest,
    };
    if !out.write(&lines)? || !following {
        return Ok(ExitCode::SUCCESS);
    }
    let target = Followed {
        store: &store,
        namespace: &args.namespace,
        name: &name,
        uid: pod.metadata.uid.as_deref().unwrap_or_default(),
        container: &container,
        instance,
    };
    follow(&target, &mut file, &path, &mut decoder, &mut out, &mut buf).await?;
    Ok(ExitCode::SUCCESS)
}

fn fail(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("{message}");
    Ok(ExitCode::from(1))
}

/// The pod name from `NAME` or `pod/NAME` (also `po/`, `pods/`).
fn pod_name(arg: &str) -> Result<String, String> {
    let Some((kind, name)) = arg.split_once('/') else {
        return if arg.is_empty() {
            Err("expected POD or TYPE/NAME argument".into())
        } else {
            Ok(arg.to_string())
        };
    };
    if kind.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!(
            "arguments in resource/name form must have a single resource and name, got \"{arg}\""
        ));
    }
    match Kind::from_cli(kind) {
        Some(Kind::Pod) => Ok(name.to_string()),
        Some(other) => Err(format!(
            "commitd logs reads pods only, not {}; find the pod with `commitd get pods`",
            other.plural()
        )),
        None => Err(format!(
            "the server doesn't have a resource type \"{kind}\""
        )),
    }
}

/// The container to read: the one asked for, else the pod's
/// default-container annotation, else its only container.
fn pick_container(pod: &Pod, requested: Option<&str>) -> Result<String, String> {
    let name = meta::name(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    if let Some(wanted) = requested {
        if names.contains(&wanted) {
            return Ok(wanted.to_string());
        }
        let init = spec.init_containers.iter().flatten();
        if init.into_iter().any(|c| c.name == wanted) {
            return Err(format!(
                "container {wanted} of pod {name} is an init container, which commitd does not run yet"
            ));
        }
        return Err(format!("container {wanted} is not valid for pod {name}"));
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .filter(|c| names.contains(&c.as_str()));
    if let Some(c) = annotated {
        return Ok(c.clone());
    }
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(format!("pod {name} has no containers")),
        many => Err(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            many.join(" ")
        )),
    }
}

fn container_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)
}

/// The `N` of every `N.log` in the container's log directory; `None` when
/// the pod has no log directory on this machine.
fn list_instances(log_dir: &Path, container: &str) -> anyhow::Result<Option<Vec<u32>>> {
    if !log_dir.is_dir() {
        return Ok(None);
    }
    let dir = log_dir.join(container);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(n) = entry.file_name().to_str().and_then(instance_of) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(Some(found))
}

/// `3` for `3.log`; `None` for any other file name.
fn instance_of(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn restart_count(s: &ContainerStatus) -> u32 {
    u32::try_from(s.restart_count).unwrap_or(0)
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn last_terminated(s: &ContainerStatus) -> bool {
    s.last_state
        .as_ref()
        .is_some_and(|st| st.terminated.is_some())
}

/// Whether an instance of the container has run at all, wherever.
fn ever_ran(s: &ContainerStatus) -> bool {
    let state = s.state.as_ref();
    state.is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        || last_terminated(s)
        || s.restart_count > 0
}

fn waiting_reason(s: Option<&ContainerStatus>) -> Option<String> {
    s.and_then(|s| s.state.as_ref())
        .and_then(|st| st.waiting.as_ref())
        .and_then(|w| w.reason.clone())
        .filter(|r| !r.is_empty())
}

/// Why no log can be shown.
#[derive(Debug, PartialEq, Eq)]
enum Unavailable {
    /// The container has not started (with the status's reason).
    Waiting(String),
    /// `--previous`, but there is no earlier instance's log.
    PreviousNotFound,
    /// The container ran, but its pod's logs are not on this machine.
    Elsewhere,
    /// The container ran here, yet its log file is gone.
    NoFile,
}

impl Unavailable {
    fn message(&self, pod: &str, container: &str, node: &str, log_dir: &Path) -> String {
        match self {
            Unavailable::Waiting(reason) => format!(
                "Error from server (BadRequest): container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"
            ),
            Unavailable::PreviousNotFound => format!(
                "Error from server (BadRequest): previous terminated container \"{container}\" in pod \"{pod}\" not found"
            ),
            Unavailable::Elsewhere => format!(
                "error: pod {pod} runs on node {node}, whose logs are not on this machine ({} does not exist); \
                 commitd's node agent does not serve logs over the network yet",
                log_dir.display()
            ),
            Unavailable::NoFile => format!(
                "error: container \"{container}\" in pod \"{pod}\" has no log file in {}",
                log_dir.join(container).display()
            ),
        }
    }
}

/// Which instance's `N.log` to read, from the container's status and the
/// instances whose logs exist (`None`: the pod has no log directory
/// here). The current instance is `restartCount`; while it has no log
/// yet, the last one that ran (as the kubelet shows the last terminated
/// container). The previous is `restartCount - 1`, or the newest below
/// the current one when that is gone.
fn select_instance(
    status: Option<&ContainerStatus>,
    previous: bool,
    instances: Option<&[u32]>,
) -> Result<u32, Unavailable> {
    let Some(instances) = instances else {
        return Err(if status.is_some_and(ever_ran) {
            Unavailable::Elsewhere
        } else if previous {
            Unavailable::PreviousNotFound
        } else {
            Unavailable::Waiting(waiting_reason(status).unwrap_or_else(creating))
        });
    };
    let newest = instances.iter().copied().max();
    let below = |n: u32| instances.iter().copied().filter(|i| *i < n).max();
    let Some(s) = status else {
        // Not reported yet: the newest log there is.
        return match (previous, newest) {
            (false, Some(n)) => Ok(n),
            (false, None) => Err(Unavailable::Waiting(creating())),
            (true, Some(n)) => below(n).ok_or(Unavailable::PreviousNotFound),
            (true, None) => Err(Unavailable::PreviousNotFound),
        };
    };
    let current = restart_count(s);
    if previous {
        return below(current).ok_or(Unavailable::PreviousNotFound);
    }
    if instances.contains(&current) {
        return Ok(current);
    }
    if last_terminated(s) {
        if let Some(n) = below(current) {
            return Ok(n);
        }
    }
    if let Some(reason) = waiting_reason(Some(s)) {
        return Err(Unavailable::Waiting(reason));
    }
    if ever_ran(s) {
        Err(Unavailable::NoFile)
    } else {
        Err(Unavailable::Waiting(creating()))
    }
}

fn creating() -> String {
    "ContainerCreating".to_string()
}

/// The container instance `-f` follows.
struct Followed<'a> {
    store: &'a Store,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    container: &'a str,
    instance: u32,
}

impl Followed<'_> {
    /// Whether the followed instance still runs. A failed read counts as
    /// running: the next check tells.
    async fn still_running(&self) -> bool {
        let pod = match self.store.get::<Pod>(Some(self.namespace), self.name).await {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(_) => return true,
        };
        if pod.metadata.uid.as_deref().unwrap_or_default() != self.uid {
            return false;
        }
        container_status(&pod, self.container)
            .is_some_and(|s| is_running(s) && restart_count(s) == self.instance)
    }
}

/// Prints what is appended to the file until the instance stops running
/// (then the rest of the file) or the reader of stdout goes away.
async fn follow(
    target: &Followed<'_>,
    file: &mut tokio::fs::File,
    path: &Path,
    decoder: &mut Decoder,
    out: &mut Out,
    buf: &mut [u8],
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(FOLLOW_READ_INTERVAL);
    let mut checked = Instant::now();
    loop {
        ticker.tick().await;
        let mut stopped = false;
        if checked.elapsed() >= FOLLOW_STATUS_INTERVAL {
            checked = Instant::now();
            // Checked before reading, so what the instance wrote before it
            // stopped is still read below.
            stopped = !target.still_running().await;
        }
        loop {
            let n = file
                .read(buf)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            if !out.write(&decoder.feed(&buf[..n]))? {
                return Ok(());
            }
        }
        if stopped {
            out.write(&decoder.finish())?;
            return Ok(());
        }
    }
}

/// stdout, buffered, flushed after every batch of lines.
struct Out {
    w: std::io::BufWriter<std::io::Stdout>,
    timestamps: bool,
    bytes: Vec<u8>,
}

impl Out {
    fn new(timestamps: bool) -> Out {
        Out {
            w: std::io::BufWriter::new(std::io::stdout()),
            timestamps,
            bytes: Vec::new(),
        }
    }

    /// Writes the lines; `false` when the reader went away
    /// (`commitd logs POD | head`), which ends the command quietly.
    fn write(&mut self, lines: &[Line]) -> anyhow::Result<bool> {
        if lines.is_empty() {
            return Ok(true);
        }
        self.bytes.clear();
        for line in lines {
            line.render(self.timestamps, &mut self.bytes);
        }
        match self.w.write_all(&self.bytes).and_then(|()| self.w.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }
}

/// The stream an entry was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One entry of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// RFC3339Nano, as written.
    pub timestamp: &'a str,
    pub stream: Stream,
    /// `P`: the next entry of the same stream continues this line.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Reads one entry (a file line without its newline), or `None` when the
/// line is not in the CRI format.
pub fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    let (timestamp, rest) = split_space(line)?;
    let timestamp = std::str::from_utf8(timestamp).ok()?;
    chrono::DateTime::parse_from_rfc3339(timestamp).ok()?;
    let (stream, rest) = split_space(rest)?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // An empty line is written as `... F ` and may lose its last space.
    let (tags, text) = split_space(rest).unwrap_or((rest, &[]));
    if tags.is_empty() {
        return None;
    }
    // Tags are `:`-separated; `P` and `F` are the ones CRI defines.
    let mut partial = false;
    for tag in tags.split(|b| *b == b':') {
        match tag {
            b"P" => partial = true,
            b"F" => {}
            _ => return None,
        }
    }
    Some(Entry {
        timestamp,
        stream,
        partial,
        text,
    })
}

fn split_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// One line of output: the text of one full entry, or of partial entries
/// joined, or a line of the file that is not an entry (no timestamp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub timestamp: Option<String>,
    pub text: Vec<u8>,
}

impl Line {
    /// The line as printed, with its newline; `--timestamps` puts the
    /// time of its first entry in front.
    pub fn render(&self, timestamps: bool, out: &mut Vec<u8>) {
        if let (true, Some(ts)) = (timestamps, &self.timestamp) {
            out.extend_from_slice(ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.text);
        out.push(b'\n');
    }
}

/// Turns the bytes of a log file, fed in pieces of any size, into lines:
/// splits entries at newlines (keeping an unfinished one for the next
/// piece) and joins partial entries per stream.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of an entry whose newline has not been read yet.
    carry: Vec<u8>,
    /// A line begun by partial entries, per stream (stdout, stderr).
    pending: [Option<Line>; 2],
}

impl Decoder {
    /// The lines completed by `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            if self.carry.is_empty() {
                self.entry(&rest[..at], &mut out);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&rest[..at]);
                self.entry(&line, &mut out);
            }
            rest = &rest[at + 1..];
        }
        self.carry.extend_from_slice(rest);
        out
    }

    /// What is left at the end: an entry without its newline, and lines
    /// whose last partial entry was never continued.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.entry(&line, &mut out);
        }
        out.extend(self.pending.iter_mut().filter_map(Option::take));
        out
    }

    fn entry(&mut self, raw: &[u8], out: &mut Vec<Line>) {
        let Some(e) = parse_entry(raw) else {
            out.push(Line {
                timestamp: None,
                text: raw.to_vec(),
            });
            return;
        };
        let slot = &mut self.pending[e.stream as usize];
        let line = slot.get_or_insert_with(|| Line {
            timestamp: Some(e.timestamp.to_string()),
            text: Vec::new(),
        });
        line.text.extend_from_slice(e.text);
        if !e.partial {
            out.extend(slot.take());
        }
    }
}

/// The last `keep` lines of those pushed.
#[derive(Debug)]
pub struct Tail {
    keep: usize,
    lines: VecDeque<Line>,
}

impl Tail {
    pub fn new(keep: usize) -> Tail {
        Tail {
            keep,
            lines: VecDeque::with_capacity(keep.min(1024)),
        }
    }

    pub fn extend(&mut self, lines: impl IntoIterator<Item = Line>) {
        for line in lines {
            if self.keep == 0 {
                return;
            }
            if self.lines.len() == self.keep {
                self.lines.pop_front();
            }
            self.lines.push_back(line);
        }
    }

    pub fn into_lines(self) -> Vec<Line> {
        self.lines.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, PodSpec,
    };
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const TS: &str = "2024-05-01T10:00:00.123456789Z";
    const TS2: &str = "2024-05-01T12:00:01.5+02:00";

    fn decode_all(bytes: &[u8]) -> Vec<Line> {
        let mut d = Decoder::default();
        let mut lines = d.feed(bytes);
        lines.extend(d.finish());
        lines
    }

    fn render(lines: &[Line], timestamps: bool) -> String {
        let mut out = Vec::new();
        for l in lines {
            l.render(timestamps, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    /// An entry as owned parts: (timestamp, stream, partial, text).
    fn parsed(line: &str) -> Option<(String, Stream, bool, Vec<u8>)> {
        parse_entry(line.as_bytes()).map(|e| {
            (
                e.timestamp.to_string(),
                e.stream,
                e.partial,
                e.text.to_vec(),
            )
        })
    }

    fn text(line: &str) -> Vec<u8> {
        parsed(line).expect(line).3
    }

    #[test]
    fn full_entries_parse() {
        assert_eq!(
            parsed(&format!("{TS} stdout F hello world")),
            Some((
                TS.to_string(),
                Stream::Stdout,
                false,
                b"hello world".to_vec()
            ))
        );
        assert_eq!(
            parsed(&format!("{TS2} stderr F oops")),
            Some((TS2.to_string(), Stream::Stderr, false, b"oops".to_vec()))
        );
        // Empty lines, with and without the space before the text.
        assert_eq!(text(&format!("{TS} stdout F ")), b"");
        assert_eq!(text(&format!("{TS} stdout F")), b"");
        // Spaces inside the text are kept.
        assert_eq!(text(&format!("{TS} stdout F  a  b ")), b" a  b ");
    }

    #[test]
    fn partial_entries_parse() {
        assert_eq!(
            parsed(&format!("{TS} stdout P abc")),
            Some((TS.to_string(), Stream::Stdout, true, b"abc".to_vec()))
        );
        assert_eq!(parsed(&format!("{TS} stdout P:X abc")), None, "unknown tag");
        assert!(parsed(&format!("{TS} stdout F:P abc")).expect("tags").2);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        for bad in [
            "".to_string(),
            "hello".to_string(),
            "not-a-time stdout F x".to_string(),
            format!("{TS} stdin F x"),
            format!("{TS} stdout"),
            format!("{TS} stdout  x"),
            format!("{TS} stdout Q x"),
            "2024-13-45T99:00:00Z stdout F x".to_string(),
        ] {
            assert_eq!(parse_entry(bad.as_bytes()), None, "{bad:?}");
        }
        // Not UTF-8 where the timestamp should be.
        assert_eq!(parse_entry(b"\xff\xfe stdout F x"), None);
    }

    #[test]
    fn partial_entries_join_into_one_line_per_stream() {
        let file = format!(
            "{TS} stdout P hel\n{TS} stderr F oops\n{TS2} stdout P lo \n{TS2} stdout F world\n"
        );
        let lines = decode_all(file.as_bytes());
        assert_eq!(render(&lines, false), "oops\nhello world\n");
        // The joined line carries the time of its first piece.
        assert_eq!(
            render(&lines, true),
            format!("{TS} oops\n{TS} hello world\n")
        );
    }

    #[test]
    fn malformed_lines_are_printed_as_they_are() {
        let file = format!("garbage here\n{TS} stdout F ok\n\n{TS} stdout\n");
        let lines = decode_all(file.as_bytes());
        assert_eq!(
            render(&lines, true),
            format!("garbage here\n{TS} ok\n\n{TS} stdout\n")
        );
        // Bytes that are not UTF-8 pass through untouched.
        let mut raw = TS.as_bytes().to_vec();
        raw.extend_from_slice(b" stdout F \xff\xfe\n\xff\n");
        let lines = decode_all(&raw);
        assert_eq!(lines[0].text, b"\xff\xfe");
        assert_eq!(lines[1].text, b"\xff");
        assert_eq!(lines[1].timestamp, None);
    }

    #[test]
    fn pieces_of_any_size_decode_the_same() {
        let file = format!(
            "{TS} stdout F first\n{TS} stderr F oops\n{TS} stdout P run-\n{TS} stdout F 1234\nbad\n"
        );
        let whole = decode_all(file.as_bytes());
        assert_eq!(render(&whole, false), "first\noops\nrun-1234\nbad\n");
        for size in 1..file.len() {
            let mut d = Decoder::default();
            let mut lines = Vec::new();
            for piece in file.as_bytes().chunks(size) {
                lines.extend(d.feed(piece));
            }
            lines.extend(d.finish());
            assert_eq!(lines, whole, "pieces of {size}");
        }
    }

    #[test]
    fn unfinished_input_waits_for_more_then_finishes() {
        let mut d = Decoder::default();
        assert_eq!(
            d.feed(format!("{TS} stdout P abc\n{TS} stdout F").as_bytes()),
            vec![]
        );
        // The partial entry and the entry without its newline complete
        // only when the rest arrives…
        let lines = d.feed(b" def\n");
        assert_eq!(render(&lines, false), "abcdef\n");
        // …or when the input ends.
        assert_eq!(d.feed(format!("{TS} stdout P tail").as_bytes()), vec![]);
        assert_eq!(render(&d.finish(), false), "tail\n");
        assert_eq!(d.finish(), vec![]);
    }

    fn line(text: &str) -> Line {
        Line {
            timestamp: None,
            text: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let all: Vec<Line> = ["a", "b", "c", "d"].into_iter().map(line).collect();
        let mut t = Tail::new(2);
        t.extend(all[..1].to_vec());
        t.extend(all[1..].to_vec());
        assert_eq!(t.into_lines(), all[2..].to_vec());
        let mut t = Tail::new(0);
        t.extend(all.clone());
        assert_eq!(t.into_lines(), vec![]);
        let mut t = Tail::new(10);
        t.extend(all.clone());
        assert_eq!(t.into_lines(), all);
        // Joined partial entries count as one line.
        let mut t = Tail::new(1);
        t.extend(decode_all(
            format!("{TS} stdout F x\n{TS} stdout P y\n{TS} stdout F z\n").as_bytes(),
        ));
        assert_eq!(render(&t.into_lines(), false), "yz\n");
    }

    #[test]
    fn pod_arguments_read_like_kubectl() {
        assert_eq!(pod_name("web"), Ok("web".to_string()));
        assert_eq!(pod_name("pod/web"), Ok("web".to_string()));
        assert_eq!(pod_name("po/web"), Ok("web".to_string()));
        assert_eq!(pod_name("pods/web"), Ok("web".to_string()));
        assert!(pod_name("deploy/web").unwrap_err().contains("pods only"));
        assert_eq!(
            pod_name("foo/web"),
            Err("the server doesn't have a resource type \"foo\"".to_string())
        );
        assert!(pod_name("pod/").is_err());
        assert!(pod_name("pod/a/b").is_err());
        assert!(pod_name("").is_err());
    }

    #[test]
    fn log_files_are_named_by_instance() {
        assert_eq!(instance_of("0.log"), Some(0));
        assert_eq!(instance_of("12.log"), Some(12));
        assert_eq!(instance_of(".log"), None);
        assert_eq!(instance_of("1.log.gz"), None);
        assert_eq!(instance_of("+1.log"), None);
        assert_eq!(instance_of("a.log"), None);
    }

    fn pod(containers: &[&str], default: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                annotations: default
                    .map(|d| [(DEFAULT_CONTAINER_ANNOTATION.to_string(), d.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|c| Container {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                init_containers: Some(vec![Container {
                    name: "setup".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn containers_are_picked_like_kubectl() {
        assert_eq!(pick_container(&pod(&["a"], None), None), Ok("a".into()));
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), None),
            Err("a container name must be specified for pod web, choose one of: [a b]".into())
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], Some("b")), None),
            Ok("b".into())
        );
        assert!(pick_container(&pod(&["a", "b"], Some("zz")), None).is_err());
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), Some("b")),
            Ok("b".into())
        );
        assert_eq!(
            pick_container(&pod(&["a"], None), Some("nope")),
            Err("container nope is not valid for pod web".into())
        );
        assert!(pick_container(&pod(&["a"], None), Some("setup"))
            .unwrap_err()
            .contains("init container"));
    }

    fn status(
        restarts: i32,
        state: ContainerState,
        last: Option<ContainerState>,
    ) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            restart_count: restarts,
            state: Some(state),
            last_state: last,
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        }
    }

    fn terminated() -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..Default::default()
        }
    }

    #[test]
    fn the_current_instance_is_the_restart_count() {
        let s = status(2, running(), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[1, 2])), Ok(2));
        assert_eq!(select_instance(Some(&s), true, Some(&[1, 2])), Ok(1));
        // The previous one's log is gone: the newest below the current.
        assert_eq!(select_instance(Some(&s), true, Some(&[0, 2])), Ok(0));
        assert_eq!(
            select_instance(Some(&s), true, Some(&[2])),
            Err(Unavailable::PreviousNotFound)
        );
        // Crash-looping: the instance that last ran, and the one before.
        let s = status(3, waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[2, 3])), Ok(3));
        assert_eq!(select_instance(Some(&s), true, Some(&[2, 3])), Ok(2));
        // The next instance is being created: the last one that ran.
        let s = status(4, waiting("ContainerCreating"), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[2, 3])), Ok(3));
    }

    #[test]
    fn nothing_ran_yet_says_why() {
        let s = status(0, waiting("ErrImagePull"), None);
        assert_eq!(
            select_instance(Some(&s), false, Some(&[])),
            Err(Unavailable::Waiting("ErrImagePull".into()))
        );
        assert_eq!(
            select_instance(Some(&s), false, None),
            Err(Unavailable::Waiting("ErrImagePull".into()))
        );
        assert_eq!(
            select_instance(Some(&s), true, None),
            Err(Unavailable::PreviousNotFound)
        );
        assert_eq!(
            select_instance(None, false, None),
            Err(Unavailable::Waiting("ContainerCreating".into()))
        );
        let s = status(0, running(), None);
        assert_eq!(
            select_instance(Some(&s), true, Some(&[0])),
            Err(Unavailable::PreviousNotFound)
        );
        // Not reported yet, but a log exists: the newest.
        assert_eq!(select_instance(None, false, Some(&[0, 1])), Ok(1));
        assert_eq!(select_instance(None, true, Some(&[0, 1])), Ok(0));
        assert_eq!(
            select_instance(None, false, Some(&[])),
            Err(Unavailable::Waiting("ContainerCreating".into()))
        );
    }

    #[test]
    fn a_pod_that_ran_elsewhere_is_named_as_such() {
        let s = status(0, running(), None);
        assert_eq!(
            select_instance(Some(&s), false, None),
            Err(Unavailable::Elsewhere)
        );
        assert_eq!(
            select_instance(Some(&s), false, Some(&[])),
            Err(Unavailable::NoFile)
        );
        let s = status(1, waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(
            select_instance(Some(&s), true, None),
            Err(Unavailable::Elsewhere)
        );
        let msg = Unavailable::Elsewhere.message("web", "app", "n2", Path::new("/s/pods/d"));
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("node n2") && msg.contains("/s/pods/d"),
            "{msg}"
        );
        assert_eq!(
            Unavailable::Waiting("ContainerCreating".into()).message("web", "app", "n", Path::new("/")),
            "Error from server (BadRequest): container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
    }
}
