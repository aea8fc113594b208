//! Sending one instance's log file as decoded text: what the file holds
//! (or its last lines), then, when following, what is appended to it
//! until the instance stops running. The receiving end is a response
//! body: when the client goes away, sending stops.

use std::io;
use std::path::Path;
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::format::{Decoder, Line, Tail};

/// How often a follow looks for new output in the file.
const FOLLOW_READ_INTERVAL: Duration = Duration::from_millis(200);
/// How much of the file is read at a time.
const CHUNK: usize = 64 * 1024;

/// One piece of the body, or the error that cuts it short (the client
/// then sees the response end abruptly, not a clean end of the log).
pub(crate) type Chunk = Result<Bytes, io::Error>;

/// What to send of one file.
pub(crate) struct Plan<F> {
    /// Only the last N lines of what the file holds now.
    pub tail: Option<usize>,
    /// Put each line's time in front.
    pub timestamps: bool,
    /// Following: keep sending what is appended while this says the
    /// instance still runs. Asked before each read, so what the instance
    /// wrote before it stopped is still sent.
    pub still_running: Option<F>,
}

/// Sends the file's lines into `sink` as `plan` says, until done, the
/// receiver is dropped, or `cancel` fires.
pub(crate) async fn send_file<F: FnMut() -> bool>(
    mut file: tokio::fs::File,
    path: &Path,
    plan: Plan<F>,
    sink: &mpsc::Sender<Chunk>,
    cancel: &CancellationToken,
) {
    let out = Out {
        sink,
        cancel,
        timestamps: plan.timestamps,
    };
    let mut decoder = Decoder::default();
    let mut tail = plan.tail.map(Tail::new);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => return out.fail(path, e).await,
        };
        if n == 0 {
            break;
        }
        let lines = decoder.feed(&buf[..n]);
        match tail.as_mut() {
            Some(t) => t.extend(lines),
            None => {
                if !out.send(&lines).await {
                    return;
                }
            }
        }
    }
    let Plan {
        mut still_running, ..
    } = plan;
    // When following, a line still in progress may yet be finished.
    let rest = if still_running.is_some() {
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
    if !out.send(&lines).await {
        return;
    }
    let Some(still_running) = still_running.as_mut() else {
        return;
    };
    let mut ticker = tokio::time::interval(FOLLOW_READ_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cancel.cancelled() => return,
            _ = sink.closed() => return,
        }
        let stopped = !still_running();
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return out.fail(path, e).await,
            };
            if n == 0 {
                break;
            }
            if !out.send(&decoder.feed(&buf[..n])).await {
                return;
            }
        }
        if stopped {
            out.send(&decoder.finish()).await;
            return;
        }
    }
}

/// The body's sending end.
struct Out<'a> {
    sink: &'a mpsc::Sender<Chunk>,
    cancel: &'a CancellationToken,
    timestamps: bool,
}

impl Out<'_> {
    /// Sends the lines; false when nobody receives any more.
    async fn send(&self, lines: &[Line]) -> bool {
        if lines.is_empty() {
            return true;
        }
        let mut bytes = Vec::new();
        for line in lines {
            line.render(self.timestamps, &mut bytes);
        }
        tokio::select! {
            sent = self.sink.send(Ok(Bytes::from(bytes))) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Ends the body with a read error.
    async fn fail(&self, path: &Path, e: io::Error) {
        tracing::warn!(path = %path.display(), error = %e, "reading a log file failed");
        let e = io::Error::new(e.kind(), format!("reading {}: {e}", path.display()));
        tokio::select! {
            _ = self.sink.send(Err(e)) => {}
            _ = self.cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    const TS: &str = "2024-05-01T10:00:00.123456789Z";

    fn entry(text: &str) -> String {
        format!("{TS} stdout F {text}\n")
    }

    async fn collect(rx: &mut mpsc::Receiver<Chunk>) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.expect("no read error"));
        }
        String::from_utf8(out).expect("utf-8")
    }

    async fn send_all(path: &Path, tail: Option<usize>, timestamps: bool) -> String {
        let file = tokio::fs::File::open(path).await.expect("open");
        let (tx, mut rx) = mpsc::channel(4);
        let plan = Plan {
            tail,
            timestamps,
            still_running: None::<fn() -> bool>,
        };
        let cancel = CancellationToken::new();
        let (_, out) = tokio::join!(
            async move { send_file(file, path, plan, &tx, &cancel).await },
            collect(&mut rx)
        );
        out
    }

    #[tokio::test]
    async fn whole_files_and_tails_are_sent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        let text = format!("{}{}{TS} stdout P unfinished", entry("one"), entry("two"));
        std::fs::write(&path, text).expect("write");
        assert_eq!(send_all(&path, None, false).await, "one\ntwo\nunfinished\n");
        assert_eq!(send_all(&path, Some(1), false).await, "unfinished\n");
        assert_eq!(send_all(&path, Some(0), false).await, "");
        assert_eq!(
            send_all(&path, Some(2), true).await,
            format!("{TS} two\n{TS} unfinished\n")
        );
    }

    #[tokio::test]
    async fn a_follow_sends_what_is_appended_until_the_instance_stops() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        std::fs::write(&path, entry("before")).expect("write");
        let running = Arc::new(AtomicBool::new(true));
        let file = tokio::fs::File::open(&path).await.expect("open");
        let (tx, mut rx) = mpsc::channel(4);
        let plan = Plan {
            tail: None,
            timestamps: false,
            still_running: Some({
                let running = running.clone();
                move || running.load(Ordering::SeqCst)
            }),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let path = path.clone();
            async move { send_file(file, &path, plan, &tx, &cancel).await }
        });
        let first = rx.recv().await.expect("chunk").expect("data");
        assert_eq!(&first[..], b"before\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(entry("after").as_bytes()).expect("write");
        let second = rx.recv().await.expect("chunk").expect("data");
        assert_eq!(&second[..], b"after\n");
        // Written just before the instance stopped: still sent, and the
        // unfinished line is ended.
        f.write_all(format!("{}{TS} stdout P last", entry("late")).as_bytes())
            .expect("write");
        running.store(false, Ordering::SeqCst);
        assert_eq!(collect(&mut rx).await, "late\nlast\n");
        task.await.expect("task");
    }

    #[tokio::test]
    async fn a_follow_ends_when_the_receiver_goes_or_on_cancel() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        std::fs::write(&path, entry("x")).expect("write");
        for drop_receiver in [true, false] {
            let file = tokio::fs::File::open(&path).await.expect("open");
            let (tx, mut rx) = mpsc::channel(4);
            let plan = Plan {
                tail: None,
                timestamps: false,
                still_running: Some(|| true),
            };
            let cancel = CancellationToken::new();
            let task = tokio::spawn({
                let (path, cancel) = (path.clone(), cancel.clone());
                async move { send_file(file, &path, plan, &tx, &cancel).await }
            });
            assert!(rx.recv().await.is_some());
            if drop_receiver {
                drop(rx);
            } else {
                cancel.cancel();
            }
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the follow ends")
                .expect("task");
        }
    }
}
