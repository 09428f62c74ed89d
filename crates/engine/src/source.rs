//! Where each node of a YAML document sits in its file.
//!
//! serde_yaml gives values without positions, so a second pass with yaml-rust2's event
//! parser records the line and column of every key and value by its path
//! (`steps[2].with.connection`). Validation reports errors by path and looks the position
//! up here.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// How deep mappings and lists may nest in a plan. Real plans use six or seven levels;
/// the bound keeps the parsers' work linear in the file's size whatever the input.
pub const MAX_DEPTH: usize = 64;

/// A 1-based line and column in a plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Positions of keys and values, by path.
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    /// The first node nested deeper than [`MAX_DEPTH`]; indexing stopped there.
    too_deep: Option<Pos>,
}

impl PositionIndex {
    /// Indexes the first document of `text`. A document that does not parse gives an
    /// empty index: the YAML error itself is reported by serde_yaml with its own
    /// position. Indexing stops at the first node deeper than [`MAX_DEPTH`].
    pub fn build(text: &str) -> Self {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, mark) = match parser.next_token() {
                Ok(next) => next,
                // The scanner reads a flow collection whole before its first event, and
                // refuses flow nesting past 255 levels: that is too deep as well.
                Err(e) if e.info() == "recursion limit exceeded" => {
                    return Self {
                        too_deep: Some(to_pos(*e.marker())),
                        ..Self::default()
                    };
                }
                Err(_) => return Self::default(),
            };
            if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
                break;
            }
            builder.on_event(event, mark);
            if builder.stack.len() > MAX_DEPTH {
                builder.index.too_deep = Some(to_pos(mark));
                break;
            }
        }
        builder.index
    }

    /// Where the document first nests deeper than [`MAX_DEPTH`], if it does.
    pub fn too_deep(&self) -> Option<Pos> {
        self.too_deep
    }

    /// The position of the value at `path`, or of its closest indexed ancestor.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match parent_path(p) {
                Some(parent) => p = parent,
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The position of the key that names `path` (falls back to the value's position).
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

/// `a.b[3].c` → `a.b[3]` → `a.b` → `a` → `` → None.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a mapping key onto a path.
pub fn child_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct IndexBuilder {
    index: PositionIndex,
    stack: Vec<Frame>,
}

fn to_pos(mark: Marker) -> Pos {
    // yaml-rust2 lines are 1-based, columns 0-based.
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl IndexBuilder {
    /// Path of the node that starts now, or None when it is a mapping key.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| child_key(path, &k)),
            Some(Frame::Seq { path, next }) => {
                let p = child_index(path, *next);
                *next += 1;
                Some(p)
            }
        }
    }

    fn on_scalar(&mut self, value: String, pos: Pos) {
        match self.next_value_path() {
            Some(path) => {
                self.index.values.insert(path, pos);
            }
            None => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    self.index.keys.insert(child_key(path, &value), pos);
                    *key = Some(value);
                }
            }
        }
    }

    fn on_container(&mut self, pos: Pos, is_map: bool) {
        // A container used as a mapping key has no path of its own.
        let path = self.next_value_path().unwrap_or_else(|| "?".to_string());
        self.index.values.insert(path.clone(), pos);
        self.stack.push(if is_map {
            Frame::Map { path, key: None }
        } else {
            Frame::Seq { path, next: 0 }
        });
    }
}

impl IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = to_pos(mark);
        match ev {
            Event::Scalar(value, ..) => self.on_scalar(value, pos),
            Event::Alias(_) => self.on_scalar(String::new(), pos),
            Event::MappingStart(..) => self.on_container(pos, true),
            Event::SequenceStart(..) => self.on_container(pos, false),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values() {
        let text = "version: 1\nsteps:\n  - id: a\n    with: {connection: src}\n";
        let idx = PositionIndex::build(text);
        assert_eq!(
            idx.value("version"),
            Pos {
                line: 1,
                column: 10
            }
        );
        assert_eq!(idx.key("steps"), Pos { line: 2, column: 1 });
        assert_eq!(idx.key("steps[0].id"), Pos { line: 3, column: 5 });
        assert_eq!(idx.value("steps[0].id"), Pos { line: 3, column: 9 });
        assert_eq!(
            idx.key("steps[0].with.connection"),
            Pos {
                line: 4,
                column: 12
            }
        );
        // Unknown paths fall back to their closest ancestor.
        assert_eq!(
            idx.value("steps[0].with.nope"),
            Pos {
                line: 4,
                column: 11
            }
        );
        assert_eq!(idx.too_deep(), None);
    }

    fn nested_lists(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_bound_is_indexed() {
        let idx = PositionIndex::build(&nested_lists(MAX_DEPTH));
        assert_eq!(idx.too_deep(), None);
        let deepest = "[0]".repeat(MAX_DEPTH - 1);
        assert_eq!(
            idx.value(&deepest),
            Pos {
                line: 1,
                column: MAX_DEPTH
            }
        );
    }

    #[test]
    fn nesting_past_the_bound_stops_at_the_first_node_too_deep() {
        let idx = PositionIndex::build(&nested_lists(MAX_DEPTH + 1));
        assert_eq!(
            idx.too_deep(),
            Some(Pos {
                line: 1,
                column: MAX_DEPTH + 1
            })
        );
        // Far deeper input is refused too, without reading it all.
        let mapping = format!("a:\n {}1{}", "{a: ".repeat(100_000), "}".repeat(100_000));
        assert!(PositionIndex::build(&mapping).too_deep().is_some());
        let lists = format!("a: {}", nested_lists(100_000));
        assert!(PositionIndex::build(&lists).too_deep().is_some());
    }
}
