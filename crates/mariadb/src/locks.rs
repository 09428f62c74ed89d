//! The backup locks a session holds: which BACKUP STAGE (or FTWRL), since when, and how
//! long each stage was held. The state lives with the session, so whatever step takes or
//! releases a stage reads and updates the same record.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Start,
    Flush,
    BlockDdl,
    BlockCommit,
    End,
}

impl Stage {
    pub const ORDER: [Stage; 4] = [
        Stage::Start,
        Stage::Flush,
        Stage::BlockDdl,
        Stage::BlockCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Start => "start",
            Stage::Flush => "flush",
            Stage::BlockDdl => "block_ddl",
            Stage::BlockCommit => "block_commit",
            Stage::End => "end",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Stage::Start => "BACKUP STAGE START",
            Stage::Flush => "BACKUP STAGE FLUSH",
            Stage::BlockDdl => "BACKUP STAGE BLOCK_DDL",
            Stage::BlockCommit => "BACKUP STAGE BLOCK_COMMIT",
            Stage::End => "BACKUP STAGE END",
        }
    }

    /// What holding this stage blocks on the server (observed on 10.11).
    pub fn blocks(self) -> &'static str {
        match self {
            Stage::Start => "nothing but another backup",
            Stage::Flush => "writes to non-transactional tables (MyISAM)",
            Stage::BlockDdl => "DDL and MyISAM writes",
            Stage::BlockCommit => "all commits, DDL and MyISAM/Aria writes",
            Stage::End => "nothing",
        }
    }
}

/// How the session holds its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMethod {
    BackupStage,
    Ftwrl,
}

impl LockMethod {
    /// The word used in outputs and the manifest: `backup_stage` or `ftwrl`.
    pub fn name(self) -> &'static str {
        match self {
            LockMethod::BackupStage => "backup_stage",
            LockMethod::Ftwrl => "ftwrl",
        }
    }
}

/// The backup-lock state of one session.
#[derive(Debug, Default)]
pub struct LockState {
    pub method: Option<LockMethod>,
    /// The stage held now and since when.
    pub current: Option<(Stage, Instant)>,
    /// How long each stage was held (milliseconds, fractional).
    pub holds: BTreeMap<&'static str, f64>,
    /// Set when a stage outlived its budget and the locks were released.
    pub lost: Option<String>,
    /// Bumped at each stage change; a budget watchdog acts only on its own generation.
    pub generation: u64,
    /// Whether the liveness watch of this session runs.
    pub watched: bool,
}

impl LockState {
    /// Closes the hold of the current stage.
    pub fn close_current(&mut self, now: Instant) {
        if let Some((stage, since)) = self.current.take() {
            let ms = now.duration_since(since).as_secs_f64() * 1000.0;
            *self.holds.entry(stage.name()).or_insert(0.0) += ms;
        }
    }
}
