//! What is known about a data directory's identity: that it is the datadir of the server
//! a session reaches, and how that was shown. A session remembers it (so later steps of
//! the run do not look again); `datadir` finds it out.

use std::path::PathBuf;

/// How `datadir` was shown to be the datadir of the session's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceProof {
    /// The process behind the socket has this redo log open and runs in `datadir`: the
    /// same files, whatever path the server itself uses for them (containers).
    OpenFiles { log: PathBuf },
    /// The server's `@@datadir` is this directory (device and inode) and the redo log has
    /// its checkpoint. `unproven` says why the open files could not be checked (`None`
    /// over TCP, where there is no process to look at).
    PathAndCheckpoint { unproven: Option<String> },
}

/// A datadir (device, inode) checked to be the session's server's, and how.
#[derive(Debug, Clone)]
pub struct VerifiedSource {
    pub datadir: (u64, u64),
    pub proof: SourceProof,
}
