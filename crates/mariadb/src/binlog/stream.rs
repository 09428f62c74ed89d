//! Reading a server's binlog as a replica does (COM_BINLOG_DUMP after the MariaDB GTID
//! handshake), so an archiver trails the server by about a second and can run on
//! another host. The server finds where to start from the GTID position and, in strict
//! mode, refuses a start it cannot serve without a hole (error 1236), which is how a
//! gap in the archive is found.

use super::format::{RawEvent, FORMAT_DESCRIPTION};
use crate::gtid::GtidPos;
use crate::session::classify;
use futures_util::StreamExt;
use mysql_async::binlog::events::Event;
use mysql_async::binlog::BinlogChecksumAlg;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use stagehand_engine::StepError;
use std::time::Duration;

/// What to ask the server for.
#[derive(Debug, Clone)]
pub struct DumpRequest {
    /// The replica id the archiver presents: unique among the server's replicas (a new
    /// dump with the same id kills the old one).
    pub server_id: u32,
    /// The position to continue after (`""`: from the oldest binlog the server has).
    pub start: GtidPos,
    /// Wait for new events at the end of the binlog (else the stream ends there).
    pub follow: bool,
    /// How often an idle server sends a heartbeat.
    pub heartbeat: Duration,
}

/// An open dump: the server's events, checked, one at a time.
pub struct Dump {
    stream: BinlogStream,
}

impl Dump {
    /// Sends the GTID handshake on `conn` and starts the dump (the connection is
    /// consumed).
    pub async fn start(mut conn: Conn, req: &DumpRequest) -> Result<Dump, StepError> {
        // The position is digits, dashes and commas (GtidPos's canonical text).
        let handshake = format!(
            "SET @mariadb_slave_capability=4, @slave_connect_state='{}', \
             @slave_gtid_strict_mode=1, @slave_gtid_ignore_duplicates=0, \
             @master_heartbeat_period={}",
            req.start,
            req.heartbeat.as_nanos()
        );
        conn.query_drop(handshake)
            .await
            .map_err(|e| dump_error(&e, &req.start))?;
        let mut request = BinlogStreamRequest::new(req.server_id);
        if !req.follow {
            request = request.with_non_blocking();
        }
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| dump_error(&e, &req.start))?;
        Ok(Dump { stream })
    }

    /// The next event; `None` at the end (only without `follow`). `start` is the
    /// position the caller has reached, for the error's hint.
    pub async fn next(&mut self, reached: &GtidPos) -> Option<Result<RawEvent, StepError>> {
        let event = self.stream.next().await?;
        Some(
            event
                .map_err(|e| dump_error(&e, reached))
                .and_then(|e| checked(&e)),
        )
    }
}

/// The event as bytes to write, after checking its CRC32 (a mismatch is never
/// written out with a fresh checksum).
fn checked(e: &Event) -> Result<RawEvent, StepError> {
    let h = e.header();
    let is_fde = h.event_type_raw() == FORMAT_DESCRIPTION;
    let alg = e.footer().get_checksum_alg().ok().flatten();
    let mut body = e.data().to_vec();
    if is_fde {
        body.push(alg.map_or(0, |a| a as u8));
    }
    let crc = match e.checksum() {
        Some(sent) => {
            let want = e.calc_checksum(alg.unwrap_or(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32));
            if u32::from_le_bytes(sent) != want {
                return Err(StepError::retryable(format!(
                    "binlog event of type {} ending at {} failed its CRC32 check: corrupted in transit or on the server; reading it again",
                    h.event_type_raw(),
                    h.log_pos()
                )));
            }
            true
        }
        None => false,
    };
    Ok(RawEvent {
        type_code: h.event_type_raw(),
        timestamp: h.timestamp(),
        server_id: h.server_id(),
        log_pos: h.log_pos(),
        flags: h.flags_raw(),
        body,
        crc,
    })
}

/// A dump's failure as a step error: the server's refusals to serve a position are
/// fatal with what to do; connection trouble is retryable.
pub fn dump_error(e: &mysql_async::Error, reached: &GtidPos) -> StepError {
    let mysql_async::Error::Server(s) = e else {
        return classify(e);
    };
    if s.code != 1236 {
        return classify(e);
    }
    let msg = format!(
        "the server refused to send its binlog after {}: server error 1236: {}",
        shown(reached),
        s.message
    );
    let hint = if s.message.contains("purged") || s.message.contains("first log file name") {
        format!(
            "the server no longer has the binlogs right after {}: they were purged before they were archived, so the archive has a gap there. Take a new full backup (point-in-time recovery works again from it, with `start: backup`), and keep binlogs longer on the server (binlog_expire_logs_seconds) than the archiver may be down",
            shown(reached)
        )
    } else if s.message.contains("diverged") || s.message.contains("not in the master's binlog") {
        format!(
            "this server's history does not contain {} as the archive does: it is a different server, was restored to an older point, or a failover picked a replica that diverged. Archive it into a new repository (or from a new backup), not this one",
            shown(reached)
        )
    } else {
        "see the server's error log; the archive is unchanged".to_string()
    };
    StepError::fatal(msg).with_hint(hint)
}

fn shown(pos: &GtidPos) -> String {
    if pos.is_empty() {
        "the start of the binlog".into()
    } else {
        format!("GTID position {pos}")
    }
}
