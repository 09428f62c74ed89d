//! Integration tests: the CLI on plan files, and runs against real MariaDB servers
//! started by the test harness (stagehand_steps::testkit).

mod cli;
mod dry_run;
mod engine_runs;

mod invalid_plans;
mod schema;
