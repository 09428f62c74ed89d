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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event: `{"ts", "run", "event", ...fields}`.
    pub fn event(&self, event: &str, fields: Value) {
        let mut line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "run": self.run_id,
            "event": event,
        });
        if let (Value::Object(l), Value::Object(f)) = (&mut line, fields) {
            l.extend(f);
        }
        let text = self.redactor.redact(&line.to_string());
        // A journal that cannot be written must not stop a backup mid-way (locks held):
        // the error is logged and the run goes on; the report says so at the end.
        let result = self.out.lock().map(|mut out| {
            out.write_all(text.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush())
        });
        if !matches!(result, Ok(Ok(()))) {
            tracing::error!(path = %self.path.display(), "cannot append to the run journal");
        }
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
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
