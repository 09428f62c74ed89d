//! The binary log: its format (`format`), the archive's segments (`segment`) and the
//! replication stream a replica reads it through (`stream`).

pub mod chain;
pub mod format;
pub mod relay;
pub mod segment;
pub mod stream;
