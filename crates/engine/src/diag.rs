//! Plan diagnostics: every problem found in a plan, with file:line:column and a hint.

use crate::source::{Pos, PositionIndex};
use serde::Serialize;
use std::fmt;

/// An error stops the plan; a warning is printed and the plan goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a plan file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Path of the offending node, e.g. `steps[2].with.connection`.
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Where a diagnostic points: at a key (unknown field) or at a value (bad value).
#[derive(Debug, Clone, Copy)]
pub enum At {
    Key,
    Value,
}

/// Collects diagnostics for one file; positions come from the file's index.
pub struct Collector<'a> {
    file: &'a str,
    index: &'a PositionIndex,
    pub items: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a str, index: &'a PositionIndex) -> Self {
        Self {
            file,
            index,
            items: Vec::new(),
        }
    }

    pub fn error(&mut self, path: &str, at: At, message: impl Into<String>, hint: Option<String>) {
        let pos = self.position(path, at);
        self.push_at(path, pos, message, hint);
    }

    /// Something the plan may do but should not: printed, and validation still passes.
    pub fn warn(&mut self, path: &str, at: At, message: impl Into<String>, hint: Option<String>) {
        let pos = self.position(path, at);
        self.push(Severity::Warning, path, pos, message.into(), hint);
    }

    /// Whether an error (not only warnings) was collected.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    fn position(&self, path: &str, at: At) -> Pos {
        match at {
            At::Key => self.index.key(path),
            At::Value => self.index.value(path),
        }
    }

    pub fn push_at(
        &mut self,
        path: &str,
        pos: Pos,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, path, pos, message.into(), hint);
    }

    fn push(
        &mut self,
        severity: Severity,
        path: &str,
        pos: Pos,
        message: String,
        hint: Option<String>,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message,
            hint,
        });
    }

    /// Sorted by position, so the report reads top to bottom.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message)));
        self.items.dedup();
        self.items
    }
}

/// "did you mean `x`?" for a misspelt name, using edit distance.
pub fn did_you_mean<'b>(
    name: &str,
    candidates: impl IntoIterator<Item = &'b str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// "expected one of: a, b, c".
pub fn one_of<'b>(candidates: impl IntoIterator<Item = &'b str>) -> String {
    let list: Vec<&str> = candidates.into_iter().collect();
    format!("expected one of: {}", list.join(", "))
}
