//! The CRI log file format, decoded: what containerd writes for each
//! container instance (`<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>`
//! per line, `F` ending a line, `P` a piece of a longer line that the next
//! entry of the same stream continues) turned back into the lines the
//! container printed. Pure, so the server and its tests share one reading
//! of the format.

use std::collections::VecDeque;

/// The stream an entry was written to: partial entries join per stream,
/// since the runtime copies the two separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

/// One entry of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// RFC3339Nano, as written.
    pub timestamp: &'a str,
    /// The stream it was written to, which a `P` entry is continued on.
    pub stream: Stream,
    /// `P`: the next entry of the same stream continues this line.
    pub partial: bool,
    /// What the container printed, without the newline; bytes, since a
    /// container may print anything.
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
    /// When its first entry was written (RFC3339Nano, as in the file);
    /// `None` for a file line that is not an entry.
    pub timestamp: Option<String>,
    /// The text, without its newline.
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

/// The last `keep` lines of those pushed: `tailLines` without holding a
/// whole file in memory.
#[derive(Debug)]
pub struct Tail {
    keep: usize,
    lines: VecDeque<Line>,
}

impl Tail {
    /// Keeps at most `keep` lines (0: none).
    pub fn new(keep: usize) -> Tail {
        Tail {
            keep,
            lines: VecDeque::with_capacity(keep.min(1024)),
        }
    }

    /// Pushes lines, dropping the oldest beyond `keep`.
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

    /// The lines kept, oldest first.
    pub fn into_lines(self) -> Vec<Line> {
        self.lines.into()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

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
}
