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

/// Version of the JSON form (`.stagehand/file_ops.json`). 2 added the ordered `events`.
pub const LEDGER_FORMAT: u32 = 2;

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

/// One change to a tablespace's file, in log order: what [`FileOps::state_at`] replays.
/// FILE_MODIFY is not one (it only says pages changed, and is logged after every
/// checkpoint for every changed tablespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The end LSN of the mini-transaction that logged it.
    pub lsn: u64,
    pub space_id: u32,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Create {
        name: String,
    },
    Delete {
        name: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Page 0 initialised: the tablespace's pages are built again from nothing.
    Page0Init,
    /// The file was cut to `pages` pages (undo truncation).
    Trim {
        pages: u32,
    },
}

/// What the log says of one tablespace at some LSN, replaying its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpaceState {
    /// Its name then (the deleted name once deleted); empty when no event named it.
    pub name: String,
    /// False once deleted.
    pub alive: bool,
    /// Created within the ledger's stretch, at this LSN.
    pub created_lsn: Option<u64>,
    /// The newest LSN at which its pages were built again (page 0 initialised, or the
    /// file trimmed): a copy of the file begun before it does not hold its pages.
    pub rebuilt_lsn: Option<u64>,
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
    /// Every file change in log order (creates, deletes, renames, rebuilds): a name
    /// can pass from one tablespace to another (`ALTER … FORCE`, a swap by renames), so
    /// the state at an LSN is a replay in order, not a summary per space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
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
            events: Vec::new(),
        }
    }

    /// Records one event logged by the mtr ending at `lsn`.
    pub fn record(&mut self, op: &FileOp<'_>, lsn: u64) {
        let Some(space_id) = op.space_id() else {
            return;
        };
        if let Some(change) = Change::of(op) {
            self.events.push(Event {
                lsn,
                space_id,
                change,
            });
        }
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

    /// A ledger of `events` (each with the end LSN of its mini-transaction), as the redo
    /// tail would have recorded them from `from_lsn`.
    pub fn of_events(from_lsn: u64, events: &[(u64, FileOp<'_>)]) -> FileOps {
        let mut l = FileOps::new(from_lsn, true);
        for (lsn, op) in events {
            l.record(op, *lsn);
            l.advance(*lsn);
        }
        l
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
            events: self
                .events
                .iter()
                .filter(|e| e.lsn >= lsn)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// Every tablespace an event names, as the log leaves it at `lsn` (events logged
    /// at or before it, replayed in order). Tablespaces the log only modified are not
    /// in it: their files are as they were.
    pub fn state_at(&self, lsn: u64) -> BTreeMap<u32, SpaceState> {
        let mut states: BTreeMap<u32, SpaceState> = BTreeMap::new();
        for e in self.events.iter().take_while(|e| e.lsn <= lsn) {
            let s = states.entry(e.space_id).or_insert_with(|| SpaceState {
                alive: true,
                ..SpaceState::default()
            });
            match &e.change {
                Change::Create { name } => {
                    *s = SpaceState {
                        name: name.clone(),
                        alive: true,
                        created_lsn: Some(e.lsn),
                        rebuilt_lsn: None,
                    }
                }
                Change::Delete { name } => {
                    s.name = name.clone();
                    s.alive = false;
                }
                Change::Rename { to, .. } => s.name = to.clone(),
                Change::Page0Init | Change::Trim { .. } => s.rebuilt_lsn = Some(e.lsn),
            }
        }
        states
    }

    /// The tablespace that held file `name` at `lsn`, if an event says so; `None`
    /// when no event gave that name to a live tablespace by then (the file is then the
    /// one the server had before the stretch, or nobody's).
    pub fn name_owner_at(&self, name: &str, lsn: u64) -> Option<u32> {
        let states = self.state_at(lsn);
        if let Some((id, _)) = states.iter().find(|(_, s)| s.alive && s.name == name) {
            return Some(*id);
        }
        // A tablespace the log names only later held its name since before the
        // stretch if its first event renames or deletes it from that name.
        let mut seen = std::collections::BTreeSet::new();
        for e in self.events.iter().filter(|e| e.lsn > lsn) {
            if states.contains_key(&e.space_id) || !seen.insert(e.space_id) {
                continue;
            }
            let held = match &e.change {
                Change::Rename { from, .. } => from == name,
                Change::Delete { name: gone } => gone == name,
                _ => false,
            };
            if held {
                return Some(e.space_id);
            }
        }
        None
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
            events: self.events.clone(),
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

impl Change {
    /// Whether this change gives or takes the file name `name`.
    pub fn names(&self, name: &str) -> bool {
        match self {
            Change::Create { name: n } | Change::Delete { name: n } => n == name,
            Change::Rename { from, to } => from == name || to == name,
            Change::Page0Init | Change::Trim { .. } => false,
        }
    }

    fn of(op: &FileOp<'_>) -> Option<Change> {
        Some(match *op {
            FileOp::Create { name, .. } => Change::Create { name: text(name) },
            FileOp::Delete { name, .. } => Change::Delete { name: text(name) },
            FileOp::Rename { from, to, .. } => Change::Rename {
                from: text(from),
                to: text(to),
            },
            FileOp::FirstPageInit { .. } => Change::Page0Init,
            FileOp::TrimPages { size, .. } => Change::Trim { pages: size },
            FileOp::Modify { .. } | FileOp::Checkpoint { .. } | FileOp::Padding => return None,
        })
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

    fn replay(events: &[(u64, FileOp<'static>)]) -> FileOps {
        FileOps::of_events(100, events)
    }

    fn rename(space_id: u32, from: &'static str, to: &'static str) -> FileOp<'static> {
        FileOp::Rename {
            space_id,
            from: from.as_bytes(),
            to: to.as_bytes(),
        }
    }

    #[test]
    fn a_rebuild_hands_the_name_to_the_new_tablespace() {
        let l = replay(&[
            (
                110,
                FileOp::Create {
                    space_id: 9,
                    name: b"./d/#sql-alter.ibd",
                },
            ),
            (110, FileOp::FirstPageInit { space_id: 9 }),
            (120, rename(5, "./d/t.ibd", "./d/#sql-ib5.ibd")),
            (120, rename(9, "./d/#sql-alter.ibd", "./d/t.ibd")),
            (
                130,
                FileOp::Delete {
                    space_id: 5,
                    name: b"./d/#sql-ib5.ibd",
                },
            ),
        ]);
        assert!(l.state_at(109).is_empty());
        let during = l.state_at(115);
        assert_eq!(during.len(), 1);
        assert_eq!(during[&9].name, "./d/#sql-alter.ibd");
        assert_eq!(
            (during[&9].created_lsn, during[&9].rebuilt_lsn),
            (Some(110), Some(110))
        );
        let after = l.state_at(130);
        assert_eq!(
            (after[&9].name.as_str(), after[&9].alive),
            ("./d/t.ibd", true)
        );
        assert_eq!(
            (after[&5].name.as_str(), after[&5].alive),
            ("./d/#sql-ib5.ibd", false)
        );
        assert_eq!(after[&5].created_lsn, None);
        assert_eq!(
            l.name_owner_at("./d/t.ibd", 115),
            Some(5),
            "the old one until 120"
        );
        assert_eq!(l.name_owner_at("./d/t.ibd", 120), Some(9));
        assert_eq!(l.name_owner_at("./d/#sql-ib5.ibd", 130), None, "deleted");
    }

    #[test]
    fn a_swap_by_renames_in_one_statement() {
        // RENAME TABLE a TO x, b TO a, x TO b
        let l = replay(&[
            (200, rename(1, "./d/a.ibd", "./d/x.ibd")),
            (200, rename(2, "./d/b.ibd", "./d/a.ibd")),
            (200, rename(1, "./d/x.ibd", "./d/b.ibd")),
        ]);
        let s = l.state_at(200);
        assert_eq!(
            (s[&1].name.as_str(), s[&2].name.as_str()),
            ("./d/b.ibd", "./d/a.ibd")
        );
        assert_eq!(l.name_owner_at("./d/a.ibd", 199), Some(1));
        assert_eq!(l.name_owner_at("./d/b.ibd", 199), Some(2));
        assert_eq!(l.name_owner_at("./d/a.ibd", 200), Some(2));
        assert_eq!(l.name_owner_at("./d/x.ibd", 200), None);
    }

    #[test]
    fn a_temporary_name_is_reused_by_the_next_rebuild() {
        let l = replay(&[
            (
                100,
                FileOp::Create {
                    space_id: 9,
                    name: b"./d/#sql-alter-6.ibd",
                },
            ),
            (110, rename(9, "./d/#sql-alter-6.ibd", "./d/t.ibd")),
            (
                120,
                FileOp::Create {
                    space_id: 10,
                    name: b"./d/#sql-alter-6.ibd",
                },
            ),
            (
                130,
                FileOp::Delete {
                    space_id: 10,
                    name: b"./d/#sql-alter-6.ibd",
                },
            ),
        ]);
        let owner = |lsn| l.name_owner_at("./d/#sql-alter-6.ibd", lsn);
        assert_eq!(
            [owner(105), owner(115), owner(125), owner(135)],
            [Some(9), None, Some(10), None]
        );
        let s = l.state_at(135);
        assert!(s[&9].alive && !s[&10].alive);
    }

    #[test]
    fn an_undo_truncation_rebuilds_without_a_name() {
        let l = replay(&[
            (
                300,
                FileOp::TrimPages {
                    space_id: 1,
                    size: 640,
                },
            ),
            (300, FileOp::FirstPageInit { space_id: 1 }),
        ]);
        assert!(l.state_at(299).is_empty());
        let s = l.state_at(300);
        assert_eq!(
            s[&1],
            SpaceState {
                name: String::new(),
                alive: true,
                created_lsn: None,
                rebuilt_lsn: Some(300)
            }
        );
        let file = l.changed_only();
        assert_eq!(file.events.len(), 2, "the file keeps the events");
        let back: FileOps =
            serde_json::from_str(&serde_json::to_string(&file).expect("json")).expect("parse");
        assert_eq!(back.state_at(300), s);
    }
}
