//! The run journal (JSON lines, one event per line) and the final report, both redacted.

use crate::redact::Redactor;
use serde::Serialize;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the run journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends events to `journal.jsonl`; every line is flushed so a killed run keeps its
/// history up to the kill.
#[derive(Clone)]
pub struct Journal {
    path: PathBuf,
    out: Arc<Mutex<BufWriter<File>>>,
    redactor: Arc<Redactor>,
    run_id: String,
    /// The first write that failed: the journal is incomplete from there on.
    lost: Arc<Mutex<Option<std::io::Error>>>,
}

impl Journal {
    pub fn create(
        path: &Path,
        run_id: &str,
        redactor: Arc<Redactor>,
    ) -> Result<Self, JournalError> {
        let file = File::create(path).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Arc::new(Mutex::new(BufWriter::new(file))),
            redactor,
            run_id: run_id.to_string(),
            lost: Arc::new(Mutex::new(None)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event: `{"ts", "run", "event", ...fields}`. A journal that cannot be
    /// written must not stop a backup mid-way (locks held): the error is logged, kept
    /// for [`Journal::lost`], and the run goes on.
    pub fn event(&self, event: &str, fields: Value) {
        let first_loss = self.lost().is_none();
        if let Err(e) = self.try_event(event, fields) {
            // Once is enough: a full disk would otherwise repeat it for every event.
            if first_loss {
                tracing::error!(error = %e, "events are being lost; the run will be failed at its end");
            }
        }
    }

    /// Writes one event and says whether it reached the file (for the first event, which
    /// decides whether the run can be recorded at all).
    pub fn try_event(&self, event: &str, fields: Value) -> Result<(), JournalError> {
        let mut line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "run": self.run_id,
            "event": event,
        });
        if let (Value::Object(l), Value::Object(f)) = (&mut line, fields) {
            l.extend(f);
        }
        let text = self.redactor.redact(&line.to_string());
        let result = match self.out.lock() {
            Ok(mut out) => out
                .write_all(text.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush()),
            Err(_) => Err(std::io::Error::other("the journal writer panicked")),
        };
        result.map_err(|source| {
            if let Ok(mut lost) = self.lost.lock() {
                lost.get_or_insert_with(|| std::io::Error::new(source.kind(), source.to_string()));
            }
            JournalError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// The first write error, when some events could not be written.
    pub fn lost(&self) -> Option<JournalError> {
        let lost = self.lost.lock().ok()?;
        lost.as_ref().map(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        })
    }
}

/// Writes `value` as pretty JSON through a temporary file and a rename, so a reader
/// never sees half a report.
pub fn write_json_atomic(
    path: &Path,
    value: &impl Serialize,
    redactor: &Redactor,
) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let text = redactor.redact(&text);
    let mut bytes = text.into_bytes();
    bytes.push(b'\n');
    // A full disk keeps no half-written report behind.
    stagehand_host::atomic::write_atomic(
        path,
        &bytes,
        stagehand_host::atomic::AtomicOptions::durable(),
    )
}
