//! A container's termination message, as the kubelet reports it in
//! `lastState.terminated.message`: what the container wrote to its
//! `terminationMessagePath` (a host file per instance, mounted in), or,
//! with `terminationMessagePolicy: FallbackToLogsOnError`, the tail of its
//! log when it failed and wrote nothing there.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use super::sanitize;
use super::volumes::pod_dir;
use crate::cri::proto::Mount;
use crate::logs::format::{Decoder, Tail};

/// The most of a termination message that is kept, as in Kubernetes.
pub const MAX_MESSAGE: usize = 4096;
/// What the log fallback keeps: the last lines, and of those at most so
/// many bytes (the kubelet's `MaxContainerTerminationMessageLogLines` and
/// `…LogLength`).
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;
/// How much of the end of a log the fallback reads: enough for 80 lines
/// of any sensible length, without reading a large log whole.
const FALLBACK_WINDOW: u64 = 64 * 1024;
const FALLBACK_POLICY: &str = "FallbackToLogsOnError";

/// The host file behind a container instance's `terminationMessagePath`
/// (volume names cannot start with a dot, so this never meets a volume).
pub fn log_file(root: &Path, uid: &str, container: &str, restart_count: u32) -> PathBuf {
    pod_dir(root, uid)
        .join("..termination")
        .join(format!("{}-{restart_count}", sanitize(container)))
}

/// Creates the (empty) termination log of an instance and returns its
/// mount, unless the container has no `terminationMessagePath`.
pub fn mount(container: &Container, file: &Path) -> io::Result<Option<Mount>> {
    let target = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_string());
    if target.is_empty() {
        return Ok(None);
    }
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(file, b"")?;
    fs::set_permissions(file, fs::Permissions::from_mode(0o666))?;
    Ok(Some(Mount {
        container_path: target,
        host_path: file.to_string_lossy().into_owned(),
        ..Default::default()
    }))
}

/// The message of an exited instance: its termination log (at most
/// [`MAX_MESSAGE`] bytes), else — when `container` asks for it and the
/// instance failed — the end of what it printed (`container_log`, the CRI
/// log file). Blocking.
pub fn message(
    container: Option<&Container>,
    exit_code: i32,
    termination_log: &Path,
    container_log: &Path,
) -> Option<String> {
    if let Some(written) = written_message(termination_log) {
        return Some(written);
    }
    let fallback = container
        .and_then(|c| c.termination_message_policy.as_deref())
        .is_some_and(|p| p == FALLBACK_POLICY);
    if !fallback || exit_code == 0 {
        return None;
    }
    log_tail(container_log).filter(|t| !t.is_empty())
}

/// What an instance wrote to its termination log, if anything.
fn written_message(file: &Path) -> Option<String> {
    let mut bytes = fs::read(file).ok()?;
    bytes.truncate(MAX_MESSAGE);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (!text.is_empty()).then_some(text)
}

/// The last [`FALLBACK_LINES`] lines of a CRI log file, cut to
/// [`FALLBACK_BYTES`] as the kubelet cuts them (keeping the start).
fn log_tail(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(FALLBACK_WINDOW);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    // From the middle of the file, the first entry is cut: skip it.
    let whole = if start > 0 {
        let at = bytes.iter().position(|b| *b == b'\n')?;
        &bytes[at + 1..]
    } else {
        &bytes[..]
    };
    let mut decoder = Decoder::default();
    let mut tail = Tail::new(FALLBACK_LINES);
    tail.extend(decoder.feed(whole));
    tail.extend(decoder.finish());
    let mut out = Vec::new();
    for line in tail.into_lines() {
        line.render(false, &mut out);
    }
    out.truncate(FALLBACK_BYTES);
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(policy: Option<&str>) -> Container {
        let mut c: Container =
            serde_json::from_value(serde_json::json!({"name": "app", "image": "i"})).expect("c");
        c.termination_message_policy = policy.map(str::to_string);
        c
    }

    #[test]
    fn termination_logs_are_per_instance_and_bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = log_file(tmp.path(), "u1", "app", 2);
        assert!(
            file.ends_with("u1/..termination/app-2"),
            "{}",
            file.display()
        );
        let c = container(None);
        let m = mount(&c, &file).expect("mount").expect("some");
        assert_eq!(m.container_path, "/dev/termination-log");
        assert!(!m.readonly);
        let no_log = tmp.path().join("none.log");
        assert_eq!(
            message(Some(&c), 1, &file, &no_log),
            None,
            "empty means none"
        );
        fs::write(&file, "x".repeat(5000)).expect("write");
        assert_eq!(
            message(Some(&c), 1, &file, &no_log).map(|m| m.len()),
            Some(MAX_MESSAGE)
        );
        let mut off = container(None);
        off.termination_message_path = Some(String::new());
        assert!(mount(&off, &file).expect("ok").is_none());
    }

    fn entry(text: &str) -> String {
        format!("2024-05-01T10:00:00.123456789Z stderr F {text}\n")
    }

    #[test]
    fn a_failed_container_falls_back_to_the_end_of_its_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = tmp.path().join("termination");
        fs::write(&empty, "").expect("write");
        let log = tmp.path().join("0.log");
        let lines: String = (0..100).map(|i| entry(&format!("line {i}"))).collect();
        fs::write(&log, lines).expect("write");
        let fallback = container(Some(FALLBACK_POLICY));

        let got = message(Some(&fallback), 1, &empty, &log).expect("fallback");
        assert!(got.starts_with("line 20\n"), "{got}");
        assert!(got.ends_with("line 99\n"), "{got}");
        // Only on failure, and only when asked.
        assert_eq!(message(Some(&fallback), 0, &empty, &log), None);
        assert_eq!(message(Some(&container(None)), 1, &empty, &log), None);
        assert_eq!(message(None, 1, &empty, &log), None);
        // What the container wrote wins.
        fs::write(&empty, "bye").expect("write");
        assert_eq!(
            message(Some(&fallback), 1, &empty, &log).as_deref(),
            Some("bye")
        );
    }

    #[test]
    fn the_fallback_is_bounded_and_reads_only_the_end_of_a_large_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("0.log");
        let long = "y".repeat(100);
        let lines: String = (0..2000).map(|i| entry(&format!("{i} {long}"))).collect();
        fs::write(&log, lines).expect("write");
        let got = log_tail(&log).expect("tail");
        assert_eq!(got.len(), FALLBACK_BYTES);
        assert!(got.starts_with("1920 "), "{}", &got[..20]);
    }
}
