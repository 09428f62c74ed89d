//! The host side of stagehand: files replaced atomically (`atomic`), content hashes
//! (`digest`: BLAKE3, SHA-256 for old records), files and
//! directories only this user can read
//! (`private_fs`), facts about processes from `/proc` (`procfs`), children tied to our life
//! (`process`), the host name (`machine`), a small blocking HTTP
//! client for webhooks and the Pushgateway (`http`) and progress of long
//! byte-moving work (`progress`), and write-behind for
//! large files written beside a live database (`write_behind`). Knows nothing about MariaDB, backups or plans.

pub mod atomic;
pub mod digest;
pub mod http;
pub mod machine;
pub mod memory;
pub mod private_fs;
pub mod process;
pub mod procfs;
pub mod progress;
pub mod write_behind;
