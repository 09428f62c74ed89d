//! The `stagehand` command line: the only place that uses anyhow and decides exit codes
//! (0 ok, 1 a step failed, 2 invalid plan or usage, 130 interrupted).

mod cli;

fn main() {
    // Before anything is created: a backup, its journal and everything else written
    // are readable by this user only (see private_fs).
    stagehand_host::private_fs::restrict_umask();
    stagehand_host::memory::return_large_buffers_to_the_system();
    std::process::exit(cli::main());
}
