//! The `stagehand` command line: the only place that uses anyhow and decides exit codes
//! (0 ok, 1 a step failed, 2 invalid plan or usage, 130 interrupted).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
