//! The outputs one step kind reads from another, typed. A kind returns its struct from
//! `run`, and a reader finds it with `ctx.upstream_outputs::<T>()`: the field names are
//! the `{{steps.ID.outputs.KEY}}` keys, and their doc comments the descriptions
//! `stagehand steps` shows. `#[serde(default)]` because a failed step's outputs are empty
//! and readers such as `notify` still run after it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stagehand_engine::StepOutput;

/// What `stage_locks` publishes after each stage it takes (or releases at `end`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct StageLocksOutput {
    /// the stage reached
    pub stage: String,
    /// backup_stage, or ftwrl for the fallback
    pub method: String,
    /// the server's version string
    pub server_version: String,
    /// time spent waiting to take the stage(s)
    pub acquire_ms: f64,
    /// hold time of each stage so far, by stage
    pub holds_ms: Map<String, Value>,
    /// at end: how long commits were blocked (BLOCK_COMMIT to END)
    pub commit_blocked_ms: f64,
    /// at end: how long DDL was blocked (BLOCK_DDL to END: the holds of block_ddl and block_commit)
    pub ddl_blocked_ms: f64,
    /// at block_commit: the InnoDB LSN the copy must reach
    pub lsn: u64,
    /// at block_ddl: the InnoDB LSN once DDL was blocked (read after the lock, made durable by FLUSH ENGINE LOGS)
    pub ddl_lsn: u64,
    /// at block_commit: the binary log file
    pub binlog_file: String,
    /// at block_commit: the position in it
    pub binlog_pos: u64,
    /// at block_commit: @@gtid_binlog_pos
    pub gtid_binlog_pos: String,
    /// at block_commit: @@gtid_current_pos
    pub gtid_current_pos: String,
    /// at block_commit: @@gtid_slave_pos
    pub gtid_slave_pos: String,
    /// at block_commit on a replica: each source's file and position
    pub replica: Vec<Value>,
}

impl StepOutput for StageLocksOutput {
    const KIND: &'static str = "stage_locks";
}

/// What `redo_tail` publishes once the log is copied up to the commit point.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RedoTailOutput {
    /// the checkpoint LSN the copy started from
    pub from_lsn: u64,
    /// that checkpoint's end LSN (where recovery parses from)
    pub checkpoint_end_lsn: u64,
    /// the LSN copied up to (a mini-transaction boundary at or after the target)
    pub to_lsn: u64,
    /// the LSN it had to reach (from BLOCK_COMMIT)
    pub target_lsn: u64,
    /// the server's newest checkpoint when the copy ended
    pub last_checkpoint_lsn: u64,
    /// log bytes copied
    pub bytes: u64,
    /// the server log's circular capacity in bytes
    pub capacity: u64,
    /// the most log the copy was ever behind the server
    pub max_lag_bytes: u64,
    /// time from receiving the target LSN to reaching it
    pub final_catch_up_ms: f64,
    /// wall time
    pub seconds: f64,
    /// the ledger of tablespace file operations in the copied log (JSON)
    pub file_ops_ledger: String,
    /// whether file operations could be read (false for an encrypted log)
    pub file_ops_tracked: bool,
    /// tablespaces created in the copied log (FILE_CREATE)
    pub files_created: u64,
    /// tablespaces deleted in the copied log (FILE_DELETE)
    pub files_deleted: u64,
    /// tablespace renames in the copied log (FILE_RENAME)
    pub files_renamed: u64,
    /// tablespaces built from nothing in the copied log (INIT_PAGE of page 0)
    pub page0_inits: u64,
    /// tablespace truncations in the copied log (TRIM_PAGES, undo truncation)
    pub undo_trims: u64,
    /// tablespaces whose file changed beyond page writes (created, deleted, renamed, rebuilt)
    pub spaces_changed: u64,
}

impl StepOutput for RedoTailOutput {
    const KIND: &'static str = "redo_tail";
}

/// What `copy` publishes for the files it copied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct CopyOutput {
    /// files copied
    pub files: u64,
    /// bytes copied
    pub bytes: u64,
    /// InnoDB pages copied and checked
    pub pages: u64,
    /// pages read again after a failed checksum (writes in flight)
    pub reread_pages: u64,
    /// pages kept without a checksum check (see the manifest)
    pub unverified_pages: u64,
    /// wall time
    pub seconds: f64,
    /// throughput in MB/s
    pub mb_per_s: f64,
    /// the manifest part this step wrote
    pub part: String,
}

impl StepOutput for CopyOutput {
    const KIND: &'static str = "copy";
}

/// What `seal` publishes for the backup it marked complete.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct SealOutput {
    /// path of stagehand.json
    pub manifest: String,
    /// files in the backup
    pub files: u64,
    /// bytes in the backup
    pub bytes: u64,
    /// the LSN the backup is consistent at
    pub commit_lsn: u64,
    /// the GTID position the backup holds
    pub gtid_binlog_pos: String,
    /// how long commits were blocked
    pub commit_blocked_ms: f64,
    /// how long DDL was blocked (BLOCK_DDL to END)
    pub ddl_blocked_ms: f64,
}

impl StepOutput for SealOutput {
    const KIND: &'static str = "seal";
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_engine::{output_specs, OutputType};

    #[test]
    fn the_published_outputs_are_read_off_the_structs() {
        let specs = output_specs::<StageLocksOutput>();
        let lsn = specs.iter().find(|s| s.name == "lsn");
        assert_eq!(lsn.map(|s| s.ty), Some(OutputType::Integer));
        assert_eq!(
            lsn.map(|s| s.description.as_str()),
            Some("at block_commit: the InnoDB LSN the copy must reach")
        );
        let kinds: Vec<_> = specs
            .iter()
            .filter(|s| ["holds_ms", "replica", "acquire_ms", "stage"].contains(&s.name.as_str()))
            .map(|s| s.ty)
            .collect();
        assert_eq!(
            kinds,
            [
                OutputType::String,
                OutputType::Number,
                OutputType::Object,
                OutputType::List
            ]
        );
    }

    #[test]
    fn a_failed_step_s_empty_outputs_read_as_defaults() {
        let empty = serde_json::from_value::<SealOutput>(serde_json::json!({}));
        assert_eq!(empty.map(|s| s.files).ok(), Some(0));
    }
}
