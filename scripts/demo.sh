#!/usr/bin/env bash
# The README's first command: starts a throwaway MariaDB server with some data in a
# temporary directory, runs stagehand's main job against it (a hot backup, verified and
# prepared), shows the result, and stops the server. Leaves the backup and the run's
# journal and report in the demo directory for you to look at.
#
#   scripts/demo.sh [DEMO_DIR]     (default: ./demo)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=$(realpath -m "${1:-$ROOT/demo}")

bash scripts/ensure-deps.sh
echo "== building stagehand"
cargo build --release --locked -q
SH="$ROOT/target/release/stagehand"

rm -rf "$DEMO"
mkdir -p "$DEMO"
# Unix socket paths are limited to 107 bytes: keep the socket in a short directory.
RUN=$(mktemp -d /tmp/stagehand-demo.XXXXXX)
SOCK="$RUN/mysqld.sock"
USER_OPT=()
[ "$(id -u)" -eq 0 ] && USER_OPT=(--user=root)

echo "== starting a throwaway MariaDB server in $DEMO/server"
mariadb-install-db --no-defaults --datadir="$DEMO/server" --auth-root-authentication-method=normal \
  --skip-test-db "${USER_OPT[@]}" >"$DEMO/install-db.log" 2>&1
mariadbd --no-defaults --datadir="$DEMO/server" --socket="$SOCK" --skip-networking \
  --pid-file="$RUN/mysqld.pid" --log-error="$DEMO/server.err" --log-bin=binlog --server-id=1 --open-files-limit=4096 \
  "${USER_OPT[@]}" &
SERVER_PID=$!
cleanup() {
  mariadb --no-defaults -S "$SOCK" -uroot -e "SHUTDOWN" 2>/dev/null || kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  mariadb --no-defaults -S "$SOCK" -uroot -e "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== loading sample data"
mariadb --no-defaults -S "$SOCK" -uroot <<'SQL'
CREATE DATABASE shop;
USE shop;
CREATE TABLE shop.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
INSERT INTO shop.accounts SELECT seq, 1000 FROM seq_1_to_10000;
CREATE TABLE shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100)) ENGINE=Aria;
INSERT INTO shop.audit (note) SELECT CONCAT('note ', seq) FROM seq_1_to_1000;
CREATE TABLE shop.legacy (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=MyISAM;
INSERT INTO shop.legacy SELECT seq, 'old' FROM seq_1_to_1000;
SQL

PLAN=plans/server-check.yaml
[ -f plans/full-backup.yaml ] && PLAN=plans/full-backup.yaml
echo "== stagehand run $PLAN --dry-run (what a reviewer sees)"
"$SH" run "$PLAN" --dry-run --set socket="$SOCK" --set user=root \
  $( [ "$PLAN" = plans/full-backup.yaml ] && echo "--set datadir=$DEMO/server --set target=$DEMO/backup" )
echo
echo "== stagehand run $PLAN"
set +e
"$SH" run "$PLAN" --state-dir "$DEMO/state" --set socket="$SOCK" --set user=root \
  $( [ "$PLAN" = plans/full-backup.yaml ] && echo "--set datadir=$DEMO/server --set target=$DEMO/backup" )
rc=$?
set -e
echo
echo "== done (exit code $rc). Look at:"
[ -d "$DEMO/backup" ] && echo "   $DEMO/backup                 the backup (stagehand.json is its manifest)"
echo "   $DEMO/state/runs/*/journal.jsonl   what happened, step by step"
echo "   $DEMO/state/runs/*/report.json     the run's report"
exit $rc
