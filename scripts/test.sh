#!/usr/bin/env bash
# The README's test command: installs missing prerequisites (scripts/ensure-deps.sh), then
# runs every test of the workspace against real MariaDB servers that the harness starts
# in temporary directories.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
exec cargo test --workspace --locked "$@"
