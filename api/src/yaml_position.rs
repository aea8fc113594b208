//! Where each field of a YAML document is, and which plain scalars are YAML
//! 1.1 octal integers. serde_yaml gives values without positions and reads
//! YAML 1.2; this index, built from yaml-rust2's marked events over the same
//! text, supplies the line of every field for diagnostics, and the scalars
//! Kubernetes (YAML 1.1) reads as octal, such as `defaultMode: 0755`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::field_path::{FieldPath, Segment};

/// Positions inside one document.
#[derive(Debug, Default, Clone)]
pub struct DocumentIndex {
    /// 1-based line where the document's content starts.
    pub start_line: usize,
    lines: HashMap<FieldPath, usize>,
    /// Plain scalars that YAML 1.1 reads as octal integers, with their value.
    pub octals: Vec<(FieldPath, i64)>,
}

impl DocumentIndex {
    /// The line of a field, or of its nearest ancestor that exists.
    pub fn line_of(&self, path: &FieldPath) -> usize {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(l) = self.lines.get(&cur) {
                return *l;
            }
            p = cur.parent();
        }
        self.start_line
    }
}

enum Frame {
    Map {
        path: FieldPath,
        key: Option<String>,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<DocumentIndex>,
    stack: Vec<Frame>,
    in_doc: bool,
}

impl Builder {
    /// The path of the node that starts now, recording its line; for a
    /// mapping key returns `None` (keys are recorded when read).
    fn child_path(&mut self, line: usize) -> Option<FieldPath> {
        let doc = self.docs.last_mut()?;
        match self.stack.last_mut() {
            None => {
                doc.start_line = line;
                Some(FieldPath::root())
            }
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                doc.lines.insert(p.clone(), line);
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| path.key(&k)),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line().max(1);
        match ev {
            Event::DocumentStart => {
                self.docs.push(DocumentIndex {
                    start_line: line,
                    ..Default::default()
                });
                self.stack.clear();
                self.in_doc = true;
            }
            Event::DocumentEnd => self.in_doc = false,
            Event::Scalar(text, style, _, _) => {
                if !self.in_doc {
                    return;
                }
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let p = path.key(&text);
                    *key = Some(text);
                    if let Some(doc) = self.docs.last_mut() {
                        doc.lines.insert(p, line);
                    }
                    return;
                }
                if let Some(p) = self.child_path(line) {
                    if style == TScalarStyle::Plain {
                        if let Some(v) = yaml11_octal(&text) {
                            if let Some(doc) = self.docs.last_mut() {
                                doc.octals.push((p, v));
                            }
                        }
                    }
                }
            }
            Event::Alias(_) => {
                self.child_path(line);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.child_path(line) {
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A complex (mapping) key: track it so the structure
                    // stays aligned; its fields get no lines.
                    self.stack.push(Frame::Map {
                        path: FieldPath(vec![Segment::Key("?".into())]),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                let path = self
                    .child_path(line)
                    .unwrap_or_else(|| FieldPath(vec![Segment::Key("?".into())]));
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// The value of a YAML 1.1 octal integer (`0755`, `-017`), as go-yaml v2 and
/// so Kubernetes read it.
fn yaml11_octal(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let octal = digits.strip_prefix('0')?;
    if octal.is_empty() || !octal.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let v = i64::from_str_radix(octal, 8).ok()?;
    Some(if neg { -v } else { v })
}

/// Indexes every document of a YAML stream. If the text does not parse,
/// returns what was indexed before the error (serde_yaml reports the error).
pub fn index(text: &str) -> Vec<DocumentIndex> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let _ = parser.load(&mut b, true);
    b.docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_fields() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: x\n  - name: b\n    image: y\n";
        let docs = index(text);
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.line_of(&FieldPath::parse("kind")), 2);
        assert_eq!(d.line_of(&FieldPath::parse("spec.containers[1].image")), 10);
        assert_eq!(d.line_of(&FieldPath::parse("spec.containers[0]")), 7);
        // A missing field is placed at its nearest existing parent.
        assert_eq!(
            d.line_of(&FieldPath::parse("spec.containers[1].ports[0]")),
            9
        );
    }

    #[test]
    fn documents_and_flow_collections() {
        let text = "# leading comment\na: 1\n---\nb: [x, {c: 2}]\n---\n# only a comment\n---\nd: |\n  block\n  text\ne: 3\n";
        let docs = index(text);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0].start_line, 2);
        assert_eq!(docs[1].line_of(&FieldPath::parse("b[1].c")), 4);
        assert_eq!(docs[3].line_of(&FieldPath::parse("e")), 11);
    }

    #[test]
    fn plain_octals_only() {
        let text = "a: 0755\nb: '0755'\nc: 0\nd: 08\ne: 0644\n";
        let docs = index(text);
        let octals: Vec<_> = docs[0]
            .octals
            .iter()
            .map(|(p, v)| (p.to_string(), *v))
            .collect();
        assert_eq!(octals, vec![("a".to_string(), 493), ("e".to_string(), 420)]);
    }
}
