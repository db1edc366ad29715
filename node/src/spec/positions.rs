//! Where each key and value of a YAML document sits, by path.
//!
//! serde_yaml reports positions only for syntax errors, but every later fault (an unknown key,
//! a bad reference, a missing directory) must also name its line and column. yaml-rust2's event
//! parser marks every event, so one pass over the events records, for each path
//! (`nodes.web.scale`), where its key and its value start. It also sees duplicate keys, which
//! serde_yaml refuses with a position on the enclosing mapping only.
//!
//! The same pass bounds the nesting depth ([`MAX_DEPTH`]): it pulls events one at a time from
//! the parser (yaml-rust2's own `Parser::load` recurses once per level, so a file of 100,000
//! nested lists overflowed the stack), and stops at the first collection nested deeper than the
//! limit. It also bounds what aliases expand to: serde_yaml's tree copies an anchored value at
//! every alias, so an 87 KB file of 2,000 aliases of one 60 KB value became a 120 MB env. The
//! pass counts the bytes of every scalar as read, an alias counting its anchor's whole size
//! again, and stops where the total passes [`MAX_FILE_BYTES`] (a document without aliases never
//! does: its scalars are part of its text). Nothing downstream (serde_yaml's tree, the walk of
//! the validator) ever sees a deeper or a larger document.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::limits::{MAX_DEPTH, MAX_FILE_BYTES};

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        // yaml-rust2 marks lines from 1 and columns from 0.
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A duplicate key: where it appears again, and where it first appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The path of the mapping holding the key.
    pub parent: Vec<Seg>,
    /// The repeated key.
    pub key: String,
    /// Its second appearance.
    pub at: Pos,
    /// Its first appearance.
    pub first: Pos,
}

/// Positions of every key and value of one YAML document.
#[derive(Debug, Default)]
pub struct Positions {
    keys: HashMap<Vec<Seg>, Pos>,
    values: HashMap<Vec<Seg>, Pos>,
    /// Duplicate keys, in document order.
    pub duplicates: Vec<Duplicate>,
    /// Where yaml-rust2 found a syntax error, and its words: the document was indexed up to
    /// there only, and no tree of it may be built (its depth is unknown past that point).
    pub syntax_error: Option<(Pos, String)>,
}

/// A document the reader refuses to build: nested deeper than [`MAX_DEPTH`] (where the first
/// collection too deep opens), or larger than [`MAX_FILE_BYTES`] once its aliases are expanded
/// (where the alias that passes the limit stands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// Where.
    pub at: Pos,
    /// For a document too large once expanded: its size so far, in bytes.
    pub expanded: Option<usize>,
}

impl Positions {
    /// Index the first document of `text`, refusing one nested deeper than [`MAX_DEPTH`].
    /// Syntax errors are left to serde_yaml, so a document yaml-rust2 cannot read yields
    /// whatever was indexed before the error.
    pub fn index(text: &str) -> Result<Positions, TooDeep> {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let mut depth = Depth::default();
        loop {
            let (ev, mark) = match parser.next_token() {
                Ok(e) => e,
                Err(e) => {
                    let at = Pos::from(*e.marker());
                    // The scanner's own bound on flow nesting (256 levels, met while looking
                    // ahead for a key, before the parser emits the 65th level).
                    if e.info().contains("recursion limit") {
                        return Err(TooDeep { at, expanded: None });
                    }
                    b.out.syntax_error = Some((at, e.info().to_owned()));
                    break;
                }
            };
            let deep = match &ev {
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    !depth.open(*anchor)
                }
                Event::Scalar(value, _, anchor, _) => {
                    depth.scalar(*anchor, value.len());
                    false
                }
                Event::Alias(anchor) => {
                    let within = depth.alias(*anchor);
                    if depth.size > MAX_FILE_BYTES {
                        return Err(TooDeep {
                            at: mark.into(),
                            expanded: Some(depth.size),
                        });
                    }
                    !within
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    depth.close();
                    false
                }
                // One document, as serde_yaml reads (it refuses a second one itself).
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => false,
            };
            if deep {
                return Err(TooDeep {
                    at: mark.into(),
                    expanded: None,
                });
            }
            b.on_event(ev, mark);
        }
        Ok(b.out)
    }

    /// Where the value at `path` starts; for a missing path, the nearest ancestor that exists.
    pub fn value(&self, path: &[Seg]) -> Pos {
        self.nearest(&self.values, path)
    }

    /// Where the key of `path` starts (its value's position for a sequence item).
    pub fn key(&self, path: &[Seg]) -> Pos {
        self.nearest(&self.keys, path)
    }

    fn nearest(&self, map: &HashMap<Vec<Seg>, Pos>, path: &[Seg]) -> Pos {
        (0..=path.len())
            .rev()
            .find_map(|n| map.get(&path[..n]).or_else(|| self.values.get(&path[..n])))
            .copied()
            .unwrap_or(Pos { line: 1, col: 1 })
    }
}

/// The nesting depth as serde_yaml will see it, aliases expanded: an alias is as deep as the
/// collection it names.
#[derive(Debug, Default)]
struct Depth {
    /// The open collections: (anchor id or 0, the deepest level in it, itself counted).
    open: Vec<(usize, usize)>,
    /// The depth of each anchored collection read so far.
    anchored: HashMap<usize, usize>,
    /// The document's size so far with its aliases expanded: scalar bytes, and one per
    /// collection.
    size: usize,
    /// Where each open collection started in `size`.
    open_at: Vec<usize>,
    /// The expanded size of each anchored value read so far.
    anchored_size: HashMap<usize, usize>,
}

impl Depth {
    /// A collection opens; false when it is deeper than [`MAX_DEPTH`].
    fn open(&mut self, anchor: usize) -> bool {
        self.open.push((anchor, 1));
        self.open_at.push(self.size);
        self.size += 1;
        self.open.len() <= MAX_DEPTH
    }

    fn close(&mut self) {
        let at = self.open_at.pop().unwrap_or(self.size);
        if let Some((anchor, deepest)) = self.open.pop() {
            if anchor > 0 {
                self.anchored.insert(anchor, deepest);
                self.anchored_size.insert(anchor, self.size - at);
            }
            self.child(deepest);
        }
    }

    /// A scalar of `len` bytes.
    fn scalar(&mut self, anchor: usize, len: usize) {
        self.size += len;
        if anchor > 0 {
            self.anchored_size.insert(anchor, len);
        }
    }

    /// A child `depth` levels deep sits in the innermost open collection.
    fn child(&mut self, depth: usize) {
        if let Some((_, deepest)) = self.open.last_mut() {
            *deepest = (*deepest).max(depth + 1);
        }
    }

    /// An alias; false when its expansion would be deeper than [`MAX_DEPTH`].
    fn alias(&mut self, anchor: usize) -> bool {
        self.size = self
            .size
            .saturating_add(self.anchored_size.get(&anchor).copied().unwrap_or(0));
        let depth = self.anchored.get(&anchor).copied().unwrap_or(0);
        self.child(depth);
        self.open.len() + depth <= MAX_DEPTH
    }
}

/// A collection being read: a mapping waiting for a key or a value, or a sequence.
#[derive(Debug)]
enum Frame {
    Map {
        pending_key: Option<(String, Pos)>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        next: usize,
    },
}

#[derive(Debug, Default)]
struct Builder {
    out: Positions,
    path: Vec<Seg>,
    stack: Vec<Frame>,
    /// The path of a collection that started but whose first child has not been seen: block
    /// collections are marked unreliably, so their position is that of their first child.
    open: Vec<(Vec<Seg>, Pos)>,
}

impl Builder {
    /// A value (scalar or collection start) arrives at `mark`: where does it belong?
    /// Returns false when it was a mapping key instead.
    fn place_value(&mut self, pos: Pos) -> bool {
        self.settle_open(pos);
        match self.stack.last_mut() {
            None => {
                self.out.values.insert(Vec::new(), pos);
                true
            }
            Some(Frame::Seq { next }) => {
                let i = *next;
                *next += 1;
                let mut p = self.path.clone();
                p.push(Seg::Index(i));
                self.out.values.insert(p.clone(), pos);
                self.out.keys.insert(p, pos);
                true
            }
            Some(Frame::Map { pending_key, .. }) => {
                if let Some((k, _)) = pending_key {
                    let mut p = self.path.clone();
                    p.push(Seg::Key(k.clone()));
                    self.out.values.insert(p, pos);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The first child of a just-opened collection fixes that collection's position.
    fn settle_open(&mut self, pos: Pos) {
        for (p, _) in self.open.drain(..) {
            self.out.values.insert(p, pos);
        }
    }

    /// The path a value placed now gets (after `place_value`).
    fn child_path(&mut self) -> Vec<Seg> {
        let mut p = self.path.clone();
        match self.stack.last_mut() {
            Some(Frame::Seq { next }) => p.push(Seg::Index(*next - 1)),
            Some(Frame::Map { pending_key, .. }) => {
                if let Some((k, _)) = pending_key.take() {
                    p.push(Seg::Key(k));
                }
            }
            None => {}
        }
        p
    }

    fn scalar(&mut self, value: String, pos: Pos) {
        if self.place_value(pos) {
            self.child_path();
            return;
        }
        // A mapping key.
        let parent = self.path.clone();
        if let Some(Frame::Map { pending_key, seen }) = self.stack.last_mut() {
            if let Some(first) = seen.get(&value) {
                self.out.duplicates.push(Duplicate {
                    parent: parent.clone(),
                    key: value.clone(),
                    at: pos,
                    first: *first,
                });
            } else {
                seen.insert(value.clone(), pos);
            }
            let mut p = parent;
            p.push(Seg::Key(value.clone()));
            self.out.keys.insert(p, pos);
            *pending_key = Some((value, pos));
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos) {
        if !self.place_value(pos) {
            // A collection used as a mapping key: not part of quarry.yml's shape; the validator
            // reports the non-string key. Keep the structure balanced.
            self.stack.push(frame);
            self.path.push(Seg::Key(String::from("?")));
            return;
        }
        let p = self.child_path();
        self.out.values.insert(p.clone(), pos);
        self.open.push((p.clone(), pos));
        self.path = p;
        self.stack.push(frame);
    }

    fn close(&mut self) {
        // An empty collection keeps its own start mark.
        self.open.clear();
        self.stack.pop();
        self.path.pop();
    }
}

impl Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(value, ..) => self.scalar(value, pos),
            Event::Alias(_) => self.scalar(String::from("*alias"), pos),
            Event::MappingStart(..) => self.open(
                Frame::Map {
                    pending_key: None,
                    seen: HashMap::new(),
                },
                pos,
            ),
            Event::SequenceStart(..) => self.open(Frame::Seq { next: 0 }, pos),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.to_owned())
    }

    #[test]
    fn keys_and_values_are_found_by_path() {
        let text = "name: x\nnodes:\n  web:\n    ports: [80, 81]\n    scale: 2\n  kv:\n    tags:\n      - a\n";
        let p = Positions::index(text).expect("shallow");
        assert_eq!(p.key(&[k("name")]), Pos { line: 1, col: 1 });
        assert_eq!(p.value(&[k("name")]), Pos { line: 1, col: 7 });
        assert_eq!(p.key(&[k("nodes"), k("web")]), Pos { line: 3, col: 3 });
        assert_eq!(
            p.value(&[k("nodes"), k("web"), k("ports"), Seg::Index(1)]),
            Pos { line: 4, col: 17 }
        );
        assert_eq!(
            p.value(&[k("nodes"), k("web"), k("scale")]),
            Pos { line: 5, col: 12 }
        );
        assert_eq!(
            p.value(&[k("nodes"), k("kv"), k("tags"), Seg::Index(0)]),
            Pos { line: 8, col: 9 }
        );
        // A block mapping value is placed at its first key.
        assert_eq!(p.value(&[k("nodes"), k("web")]), Pos { line: 4, col: 5 });
        // A missing path falls back to its nearest ancestor.
        assert_eq!(
            p.value(&[k("nodes"), k("web"), k("nope")]),
            Pos { line: 4, col: 5 }
        );
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_positions() {
        let p = Positions::index("nodes:\n  web: {}\n  web: {}\n").expect("shallow");
        assert_eq!(p.duplicates.len(), 1);
        let d = &p.duplicates[0];
        assert_eq!(d.key, "web");
        assert_eq!(d.at, Pos { line: 3, col: 3 });
        assert_eq!(d.first, Pos { line: 2, col: 3 });
    }
}
