//! The archiving loop: events from the server's dump, cut into segments of whole
//! transactions, each uploaded before the next is started. The position only moves
//! past a transaction once all of it has been received, so a lost connection or a
//! crash resumes exactly after the last complete one.

use super::{BinlogArchiveConfig, BinlogArchiveOutput, Mode};
use stagehand_engine::{StepContext, StepError};
use stagehand_mariadb::binlog::format::{
    GroupTracker, Place, RawEvent, FORMAT_DESCRIPTION, HEARTBEAT as HEARTBEAT_EVENT, INCIDENT,
    ROTATE,
};
use stagehand_mariadb::binlog::segment::Segment;
use stagehand_mariadb::binlog::stream::{Dump, DumpRequest};
use stagehand_mariadb::gtid::{Gtid, GtidPos};
use stagehand_mariadb::session::Session;
use stagehand_repo::binlogs::{self, BinlogArchive, Heartbeat, SegmentMeta, SegmentSource};
use stagehand_repo::crypt::Key;
use stagehand_repo::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// When a segment is closed.
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub allow_seq_jumps: bool,
}

/// How often an idle server sends a heartbeat (lets a follower notice a dead link).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Waits between reconnection attempts in follow mode: 1 s doubling to 30 s.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How often an idle archive's heartbeat object is rewritten at most.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

pub struct Archiver<'a> {
    archive: &'a BinlogArchive,
    key: Option<Arc<Key>>,
    limits: Limits,
    /// The position after the last complete transaction received.
    reached: GtidPos,
    next_seq: u64,
    fde: Option<RawEvent>,
    /// The FORMAT_DESCRIPTION says the server started its file, and no segment of it
    /// has been cut yet.
    fde_starts_file: bool,
    source_file: String,
    server_version: String,
    tracker: GroupTracker,
    group: Vec<RawEvent>,
    group_start: Option<(Gtid, u32)>,
    segment: Option<Segment>,
    last_heartbeat: Option<std::time::Instant>,
    /// Dumps started so far (a started one resets the reconnection wait).
    dumps_started: u64,
    out: BinlogArchiveOutput,
}

/// Why a dump ended.
enum Ended {
    /// The end of the binlog (catch-up mode).
    AtEnd,
    Cancelled,
}

impl<'a> Archiver<'a> {
    pub fn new(
        archive: &'a BinlogArchive,
        key: Option<Arc<Key>>,
        limits: Limits,
        start: GtidPos,
        next_seq: u64,
    ) -> Self {
        let out = BinlogArchiveOutput {
            start_state: start.to_string(),
            end_state: start.to_string(),
            ..Default::default()
        };
        Archiver {
            archive,
            key,
            limits,
            reached: start,
            next_seq,
            fde: None,
            fde_starts_file: false,
            source_file: String::new(),
            server_version: String::new(),
            tracker: GroupTracker::default(),
            group: Vec::new(),
            group_start: None,
            segment: None,
            last_heartbeat: None,
            dumps_started: 0,
            out,
        }
    }

    /// Archives until the end of the binlog (catch-up) or until cancelled (follow).
    pub async fn run(
        mut self,
        cfg: &BinlogArchiveConfig,
        ctx: &StepContext,
    ) -> Result<BinlogArchiveOutput, StepError> {
        let mut wait = RECONNECT_FIRST;
        let mut signalled = false;
        loop {
            let started_before = self.dumps_started;
            let attempt = self.connect_and_pump(cfg, ctx, &mut signalled).await;
            if self.dumps_started > started_before {
                // The link worked until it broke: the next outage starts from 1 s again.
                wait = RECONNECT_FIRST;
            }
            // Whole transactions received so far are valid whatever happened next.
            self.cut().await?;
            match attempt {
                Ok(Ended::AtEnd) => {
                    // The server sent everything it had: the archive is complete now.
                    self.beat(true).await?;
                    return Ok(self.out);
                }
                Ok(Ended::Cancelled) => return Ok(self.out),
                Err(e) if cfg.mode == Mode::Follow && e.retryable && !ctx.cancel.is_cancelled() => {
                    tracing::warn!(error = %e.message, retry_in = ?wait, reached = %self.reached, "binlog stream lost; reconnecting");
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => return Ok(self.out),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RECONNECT_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_and_pump(
        &mut self,
        cfg: &BinlogArchiveConfig,
        ctx: &StepContext,
        signalled: &mut bool,
    ) -> Result<Ended, StepError> {
        let handle = ctx.connections.open_private(&cfg.connection).await?;
        let session = handle.downcast::<Session>().map_err(|_| {
            StepError::fatal(format!(
                "connection `{}` is not a MariaDB connection",
                cfg.connection
            ))
        })?;
        self.server_version = session.server_version.clone();
        let conn = session.conn.lock().await.take().ok_or_else(|| {
            StepError::retryable(format!(
                "connection `{}` closed before the dump",
                cfg.connection
            ))
        })?;
        let request = DumpRequest {
            server_id: cfg.server_id,
            start: self.reached.clone(),
            follow: cfg.mode == Mode::Follow,
            heartbeat: HEARTBEAT,
        };
        let mut dump = Dump::start(conn, &request).await?;
        self.dumps_started += 1;
        tracing::info!(from = %self.reached, endpoint = %session.endpoint, "binlog dump started");
        self.tracker.reset();
        self.group.clear();
        self.group_start = None;
        if !*signalled {
            ctx.signal_ready().await;
            *signalled = true;
        }
        self.pump(&mut dump, ctx).await
    }

    async fn pump(&mut self, dump: &mut Dump, ctx: &StepContext) -> Result<Ended, StepError> {
        loop {
            let deadline = self
                .segment
                .as_ref()
                .map(|s| self.limits.max_age.saturating_sub(s.age()))
                .unwrap_or(Duration::from_secs(3600));
            // The dump's stream keeps its half-read packet between polls, so leaving
            // `next` for the timer or the cancel loses nothing.
            let event = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return Ok(Ended::Cancelled),
                _ = tokio::time::sleep(deadline) => { self.cut().await?; continue; }
                e = dump.next(&self.reached) => e,
            };
            match event {
                None => return Ok(Ended::AtEnd),
                Some(e) => self.handle(e?).await?,
            }
        }
    }

    async fn handle(&mut self, ev: RawEvent) -> Result<(), StepError> {
        match ev.type_code {
            ROTATE => {
                if ev.is_artificial() {
                    self.source_file = ev.rotate_name().unwrap_or_default();
                }
                return Ok(());
            }
            FORMAT_DESCRIPTION => {
                // Never two formats in one segment.
                self.cut().await?;
                self.fde_starts_file = ev.fde_created().is_some_and(|c| c != 0);
                self.fde = Some(ev);
                return Ok(());
            }
            HEARTBEAT_EVENT => {
                // Sent only when the server has had nothing new for a while.
                return self.beat(false).await;
            }
            INCIDENT => {
                return Err(StepError::fatal(format!(
                    "the server logged an INCIDENT event in {} after {}: changes may be missing from its binlog",
                    self.source_file, self.reached
                ))
                .with_hint("see the server's error log; take a new full backup, point-in-time restores are exact again from it"))
            }
            _ => {}
        }
        let place = self
            .tracker
            .place(&ev)
            .map_err(|e| StepError::retryable(e.to_string()))?;
        match place {
            Place::Begins(g) => {
                self.group_start = Some((g.gtid, ev.timestamp));
                self.group = vec![ev];
            }
            Place::Inside => self.group.push(ev),
            Place::Ends => {
                self.group.push(ev);
                self.complete_group().await?;
            }
            // File headers, checkpoints, heartbeats, made-up GTID lists: the segment
            // writes its own header.
            Place::Between => {}
        }
        Ok(())
    }

    async fn complete_group(&mut self) -> Result<(), StepError> {
        let Some((gtid, time)) = self.group_start.take() else {
            return Ok(());
        };
        self.refuse_a_hole(gtid)?;
        let fde = self.fde.as_ref().ok_or_else(|| {
            StepError::retryable("a transaction arrived before the binlog's format description")
        })?;
        let segment = self.segment.get_or_insert_with(|| {
            let s = Segment::new(
                fde,
                self.reached.clone(),
                &self.source_file,
                self.fde_starts_file,
            );
            self.fde_starts_file = false;
            s
        });
        segment
            .push_group(gtid, time, &self.group)
            .map_err(|e| StepError::fatal(e.to_string()))?;
        self.group.clear();
        self.reached.advance(gtid);
        if segment.len() as u64 >= self.limits.max_bytes {
            self.cut().await?;
        }
        Ok(())
    }

    /// A transaction whose sequence number skips ahead in its domain: the transactions
    /// in between are not in the binlog, which a restore could not tell from loss.
    fn refuse_a_hole(&self, gtid: Gtid) -> Result<(), StepError> {
        let Some(last) = self.reached.get(gtid.domain) else {
            return Ok(());
        };
        if gtid.seq <= last.seq + 1 || self.limits.allow_seq_jumps {
            return Ok(());
        }
        Err(StepError::fatal(format!(
            "the binlog goes from {last} to {gtid}: sequence numbers {}…{} of domain {} are not in it; the archive stops before the hole (at {})",
            last.seq + 1,
            gtid.seq - 1,
            gtid.domain,
            self.reached
        ))
        .with_hint("was gtid_seq_no set by hand on the server, or the binlog switched off for some transactions? If the hole is expected, set `allow_seq_jumps: true`; otherwise take a new full backup, point-in-time restores are exact again from it"))
    }

    /// Writes the heartbeat object when nothing is pending (no open segment or
    /// transaction): everything the server wrote is in the repository. At most every
    /// [`HEARTBEAT_EVERY`] unless `now`.
    async fn beat(&mut self, now: bool) -> Result<(), StepError> {
        let pending =
            self.segment.as_ref().is_some_and(|s| !s.is_empty()) || self.group_start.is_some();
        let recent = self
            .last_heartbeat
            .is_some_and(|t| t.elapsed() < HEARTBEAT_EVERY);
        if pending || (recent && !now) {
            return Ok(());
        }
        let beat = Heartbeat {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            end_state: self.reached.to_string(),
        };
        self.archive
            .put_heartbeat(&beat)
            .await
            .map_err(StoreError::into_step_error)?;
        self.last_heartbeat = Some(std::time::Instant::now());
        Ok(())
    }

    /// Uploads the open segment, if it holds anything.
    async fn cut(&mut self) -> Result<(), StepError> {
        let Some(segment) = self.segment.take() else {
            return Ok(());
        };
        if segment.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq;
        let (meta, object) = self.seal(seq, segment).await?;
        self.archive
            .put(&meta, object)
            .await
            .map_err(StoreError::into_step_error)?;
        tracing::info!(segment = seq, transactions = meta.groups, to = %meta.end_state, "binlog segment archived");
        self.next_seq += 1;
        self.out.segments += 1;
        self.out.transactions += meta.groups;
        self.out.bytes += meta.size;
        self.out.stored_bytes += meta.stored_bytes;
        self.out.seq_jumps += meta.seq_jumps;
        self.out.end_state = meta.end_state.clone();
        self.out.last_event_time = rfc3339(meta.last_time as i64);
        Ok(())
    }

    /// The segment's metadata and its object (compressed, maybe encrypted).
    async fn seal(&self, seq: u64, segment: Segment) -> Result<(SegmentMeta, Vec<u8>), StepError> {
        let object_key = SegmentMeta::object_key(seq, self.key.is_some());
        let mut meta = SegmentMeta {
            format: SegmentMeta::FORMAT,
            seq,
            object: object_key.clone(),
            stored_bytes: 0,
            size: segment.len() as u64,
            hash: String::new(),
            start_state: segment.start.to_string(),
            end_state: segment.end.to_string(),
            first_gtid: segment
                .first_gtid
                .map(|g| g.to_string())
                .unwrap_or_default(),
            last_gtid: segment.last_gtid.map(|g| g.to_string()).unwrap_or_default(),
            groups: segment.groups,
            first_time: u64::from(segment.first_time),
            last_time: u64::from(segment.last_time),
            max_time: u64::from(segment.max_time),
            seq_jumps: segment.seq_jumps,
            source: SegmentSource {
                server_id: self.fde.as_ref().map_or(0, |f| f.server_id),
                version: self.server_version.clone(),
                binlog_file: segment.source_file.clone(),
            },
            key_id: self.key.as_ref().map(|k| k.id()),
            archived_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let key = self.key.clone();
        let bytes = segment.into_bytes();
        let (object, sha) = tokio::task::spawn_blocking(move || {
            binlogs::encode(&bytes, &object_key, key.as_deref())
        })
        .await
        .map_err(|e| StepError::fatal(format!("the segment writer crashed: {e}")))?
        .map_err(StoreError::into_step_error)?;
        meta.hash = sha;
        meta.stored_bytes = object.len() as u64;
        Ok((meta, object))
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
