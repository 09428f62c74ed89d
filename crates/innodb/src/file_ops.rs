//! The ledger of tablespace file operations seen in a stretch of redo log: per space
//! id, what was created, deleted, renamed, modified, and whether its pages were
//! rebuilt from nothing (page 0 initialised again, or the file trimmed). `redo_tail`
//! fills it while it copies the log, so that a reconcile at BLOCK_DDL knows which
//! copied files no longer match the log (see docs/design/stall-free-copy.md).
//!
//! Names are kept as the log writes them: relative to the datadir with a `./`
//! prefix (`./db/t.ibd`), or absolute for DATA DIRECTORY tables.

use super::redo::FileOp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the JSON form (`.stagehand/file_ops.json`).
pub const LEDGER_FORMAT: u32 = 1;

/// A name and the LSN of the mini-transaction that logged it (the end of that
/// mtr: the LSN a page written by it carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAt {
    pub lsn: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameAt {
    pub lsn: u64,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimAt {
    pub lsn: u64,
    /// Pages left in the file.
    pub pages: u32,
}

/// FILE_MODIFY is logged for every changed tablespace after each checkpoint, so only
/// the first and last are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modified {
    pub name: String,
    pub first_lsn: u64,
    pub last_lsn: u64,
}

/// What the log says happened to one tablespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceOps {
    /// The newest name the log gave it (after renames; the deleted name if deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<NameAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<NameAt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renamed: Vec<RenameAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<Modified>,
    /// LSNs of INIT_PAGE records of page 0: the tablespace was built from nothing
    /// there (a new file, or an undo tablespace truncated); its file as copied before
    /// that LSN does not hold its pages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub page0_init: Vec<u64>,
    /// TRIM_PAGES records: the file was cut short (undo truncation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmed: Vec<TrimAt>,
}

impl SpaceOps {
    fn since(&self, lsn: u64) -> SpaceOps {
        let at = |a: &Option<NameAt>| a.clone().filter(|a| a.lsn >= lsn);
        SpaceOps {
            name: self.name.clone(),
            created: at(&self.created),
            deleted: at(&self.deleted),
            renamed: self
                .renamed
                .iter()
                .filter(|r| r.lsn >= lsn)
                .cloned()
                .collect(),
            modified: self.modified.clone().filter(|m| m.last_lsn >= lsn),
            page0_init: self
                .page0_init
                .iter()
                .copied()
                .filter(|&l| l >= lsn)
                .collect(),
            trimmed: self
                .trimmed
                .iter()
                .filter(|t| t.lsn >= lsn)
                .cloned()
                .collect(),
        }
    }

    fn has_events(&self) -> bool {
        self.changed_file() || self.modified.is_some()
    }

    /// Anything beyond FILE_MODIFY: the file as copied may not be the one the log
    /// describes at its end.
    pub fn changed_file(&self) -> bool {
        self.created.is_some()
            || self.deleted.is_some()
            || !self.renamed.is_empty()
            || self.pages_not_in_copy()
    }

    /// The log rebuilt this tablespace's pages from nothing during the stretch: a copy
    /// of its file taken earlier is stale and must be taken again (or the tablespace
    /// rebuilt from the log alone).
    pub fn pages_not_in_copy(&self) -> bool {
        self.created.is_some() || !self.page0_init.is_empty() || !self.trimmed.is_empty()
    }
}

/// Counts for the step's outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileOpCounts {
    pub created: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub page0_inits: u64,
    pub trims: u64,
    /// Tablespaces whose file changed beyond FILE_MODIFY.
    pub changed_spaces: u64,
}

/// The ledger of one redo stretch `[from_lsn, to_lsn)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOps {
    pub format: u32,
    pub from_lsn: u64,
    pub to_lsn: u64,
    /// False when the log's records could not be read (encrypted log): then the
    /// ledger is empty and says nothing about DDL.
    pub tracked: bool,
    pub spaces: BTreeMap<u32, SpaceOps>,
    /// Spaces left out of `spaces` by [`FileOps::changed_only`] because the log only
    /// modified their pages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modified_only_spaces: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn text(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl FileOps {
    pub fn new(from_lsn: u64, tracked: bool) -> Self {
        Self {
            format: LEDGER_FORMAT,
            from_lsn,
            to_lsn: from_lsn,
            tracked,
            spaces: BTreeMap::new(),
            modified_only_spaces: 0,
        }
    }

    /// Records one event logged by the mtr ending at `lsn`.
    pub fn record(&mut self, op: &FileOp<'_>, lsn: u64) {
        let Some(space_id) = op.space_id() else {
            return;
        };
        let space = self.spaces.entry(space_id).or_default();
        match *op {
            FileOp::Create { name, .. } => {
                space.name = Some(text(name));
                space.created = Some(NameAt {
                    lsn,
                    name: text(name),
                });
            }
            FileOp::Delete { name, .. } => {
                space.name = Some(text(name));
                space.deleted = Some(NameAt {
                    lsn,
                    name: text(name),
                });
            }
            FileOp::Rename { from, to, .. } => {
                space.name = Some(text(to));
                space.renamed.push(RenameAt {
                    lsn,
                    from: text(from),
                    to: text(to),
                });
            }
            FileOp::Modify { name, .. } => {
                space.name.get_or_insert_with(|| text(name));
                match &mut space.modified {
                    Some(m) => m.last_lsn = lsn,
                    None => {
                        space.modified = Some(Modified {
                            name: text(name),
                            first_lsn: lsn,
                            last_lsn: lsn,
                        })
                    }
                }
            }
            FileOp::FirstPageInit { .. } => space.page0_init.push(lsn),
            FileOp::TrimPages { size, .. } => space.trimmed.push(TrimAt { lsn, pages: size }),
            FileOp::Checkpoint { .. } | FileOp::Padding => {}
        }
    }

    /// The log has been read up to `lsn`.
    pub fn advance(&mut self, lsn: u64) {
        self.to_lsn = self.to_lsn.max(lsn);
    }

    /// The events logged at or after `lsn` (e.g. after a file's copy began). A space
    /// keeps its `modified` summary when its last FILE_MODIFY is that late.
    pub fn since(&self, lsn: u64) -> FileOps {
        let spaces = self
            .spaces
            .iter()
            .map(|(id, s)| (*id, s.since(lsn)))
            .filter(|(_, s)| s.has_events())
            .collect();
        FileOps {
            from_lsn: self.from_lsn.max(lsn),
            spaces,
            ..self.clone()
        }
    }

    /// The spaces whose file changed; the others (page writes only, which redo
    /// replays) are only counted. This is what the ledger file holds: a server with
    /// many tables changes most of them, and the file is written while commits wait.
    pub fn changed_only(&self) -> FileOps {
        let spaces: BTreeMap<u32, SpaceOps> = self
            .spaces
            .iter()
            .filter(|(_, s)| s.changed_file())
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        let left_out = (self.spaces.len() - spaces.len()) as u64;
        FileOps {
            format: self.format,
            from_lsn: self.from_lsn,
            to_lsn: self.to_lsn,
            tracked: self.tracked,
            spaces,
            modified_only_spaces: self.modified_only_spaces + left_out,
        }
    }

    pub fn counts(&self) -> FileOpCounts {
        let mut c = FileOpCounts::default();
        for s in self.spaces.values() {
            c.created += u64::from(s.created.is_some());
            c.deleted += u64::from(s.deleted.is_some());
            c.renamed += s.renamed.len() as u64;
            c.page0_inits += s.page0_init.len() as u64;
            c.trims += s.trimmed.len() as u64;
            c.changed_spaces += u64::from(s.changed_file());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_sequence_is_kept_per_space() {
        // ALTER TABLE t FORCE as 10.11 logs it: the new file is created and built, the
        // old one renamed away, the new one renamed to t, the old one deleted.
        let mut l = FileOps::new(100, true);
        let ops = [
            (
                FileOp::Create {
                    space_id: 9,
                    name: b"./d/#sql-alter.ibd",
                },
                110,
            ),
            (FileOp::FirstPageInit { space_id: 9 }, 110),
            (
                FileOp::Rename {
                    space_id: 5,
                    from: b"./d/t.ibd",
                    to: b"./d/#sql-ib5.ibd",
                },
                120,
            ),
            (
                FileOp::Rename {
                    space_id: 9,
                    from: b"./d/#sql-alter.ibd",
                    to: b"./d/t.ibd",
                },
                120,
            ),
            (
                FileOp::Delete {
                    space_id: 5,
                    name: b"./d/#sql-ib5.ibd",
                },
                130,
            ),
            (
                FileOp::Modify {
                    space_id: 3,
                    name: b"./d/u.ibd",
                },
                105,
            ),
            (
                FileOp::Modify {
                    space_id: 3,
                    name: b"./d/u.ibd",
                },
                140,
            ),
            (FileOp::Checkpoint { lsn: 100 }, 140),
        ];
        for (op, lsn) in &ops {
            l.record(op, *lsn);
        }
        l.advance(150);
        assert_eq!(l.to_lsn, 150);
        assert_eq!(l.spaces.len(), 3);
        let new = &l.spaces[&9];
        assert_eq!(new.name.as_deref(), Some("./d/t.ibd"));
        assert!(new.pages_not_in_copy());
        let old = &l.spaces[&5];
        assert_eq!(old.deleted.as_ref().map(|d| d.lsn), Some(130));
        assert!(old.changed_file() && !old.pages_not_in_copy());
        let dml = &l.spaces[&3];
        assert!(!dml.changed_file());
        assert_eq!(
            dml.modified.as_ref().map(|m| (m.first_lsn, m.last_lsn)),
            Some((105, 140))
        );
        assert_eq!(
            l.counts(),
            FileOpCounts {
                created: 1,
                deleted: 1,
                renamed: 2,
                page0_inits: 1,
                trims: 0,
                changed_spaces: 2
            }
        );
        let late = l.since(120);
        assert_eq!(late.spaces.len(), 3);
        assert!(late.spaces[&9].created.is_none() && late.spaces[&9].renamed.len() == 1);
        assert_eq!(late.spaces[&5].renamed.len(), 1);
        assert_eq!(late.counts().page0_inits, 0);
        assert!(l.since(141).spaces.is_empty());
        let file = l.changed_only();
        assert_eq!(file.spaces.keys().copied().collect::<Vec<_>>(), [5, 9]);
        assert_eq!(file.modified_only_spaces, 1);
        assert_eq!(file.counts(), l.counts());
        let json = serde_json::to_string(&l).expect("json");
        let back: FileOps = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, l);
    }
}
