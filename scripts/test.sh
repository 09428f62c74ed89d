#!/usr/bin/env bash
# The README's test command: installs missing prerequisites (scripts/ensure-deps.sh), then
# runs every test of the workspace against real MariaDB servers that the harness starts
# in temporary directories: all of them on the default server build (Debian 12's 10.11),
# then the version matrix: the backup and PITR oracles, fault, storage (encryption too), restore, reconcile, DATA DIRECTORY and safety tests
# again on MariaDB 11.8 (STAGEHAND_MARIADB_BIN names the server build to use).
# With arguments, runs only `cargo test --workspace --locked ARGS` on the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh --matrix
if [ "$#" -gt 0 ]; then
  exec cargo test --workspace --locked "$@"
fi

default_mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
echo "== tests on $("${STAGEHAND_MARIADB_BIN:-$(dirname "$default_mariadbd")}/mariadbd" --no-defaults --version)"
cargo test --workspace --locked

bin="${STAGEHAND_MARIADB_11_8_DIR:-${HOME}/.cache/stagehand/mariadb-11.8}/bin"
echo "== version matrix: backup, PITR, fault, storage, restore and safety tests on $("$bin/mariadbd" --no-defaults --version)"
# The 11.8 build is Debian 13's mariadb-server-core, which has no server plugins: the test
# of an encrypted redo log (it loads file_key_management) runs on the default build only.
STAGEHAND_MARIADB_BIN="$bin" cargo test --locked --test it -- \
  backup_oracle:: backup_faults:: storage_roundtrip:: storage_faults:: restore:: \
  sandbox_safety:: preflight_safety:: private_files:: run_privileges:: file_ops_ledger:: reconcile:: \
  data_directory:: storage_encryption:: pitr_oracle:: \
  --skip reconcile::encrypted_redo_log_refuses_innodb_ddl_during_the_copy_only
