//! Integration tests: the CLI on plan files, and runs against real MariaDB servers
//! started by the test harness (stagehand_testkit).

mod cli;
mod dry_run;
mod engine_runs;

mod backup_faults;
mod backup_oracle;
mod data_directory;
mod ddl_workload;
mod file_ops_ledger;
mod invalid_plans;
mod preflight_safety;
mod reconcile;
mod schema;
mod workload;

// notify, run history, metrics (issue 5)
mod history;
mod metrics;
mod notify;
mod pitr_oracle;
mod private_files;
mod progress;
mod restore;
mod rotate;
mod run_privileges;
mod sandbox_safety;
mod servers;
mod storage_compress;
mod storage_encryption;
mod storage_faults;
mod storage_roundtrip;
mod support;
mod versions;
