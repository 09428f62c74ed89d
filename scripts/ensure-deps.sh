#!/usr/bin/env bash
# Installs what stagehand's demo and tests need on Debian 12, if it is missing:
# MariaDB 10.11 server and client, mariadb-backup (compatibility tests, benchmarks), zstd,
# openssl (a test certificate for STARTTLS) and the aiosmtpd SMTP server (notify tests);
# with --matrix (what scripts/test.sh asks for) also MariaDB 11.8 (the tests' second
# server version) and Garage (a production S3 server, built once), both in a cache
# directory.
# Safe to run again; installs nothing when everything is there.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "not root and no sudo: install these packages by hand: mariadb-server mariadb-backup mariadb-client zstd" >&2
  fi
fi

# bsdutils (`script`: the progress-bar test runs on a pty), mount (the disk-full and
# bind-mount tests), util-linux (`setpriv`: the tests connect as user `nobody`) and
# debian-archive-keyring (MariaDB 11.8's packages are checked with it) are in every
# Debian install; listed so a trimmed image gets them. gdb: the tests' watchdog prints
# the stacks of a hung stagehand with it.
APT_PACKAGES=(mariadb-server mariadb-backup mariadb-client zstd openssl bsdutils mount util-linux debian-archive-keyring gdb)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
  # The packaged service is not needed: stagehand's tests and demo start their own
  # throwaway servers. Stop it so it does not compete for CPU.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mariadb 2>/dev/null; then
    $SUDO systemctl stop mariadb || true
  fi
fi

# The notify tests start an SMTP server on loopback with Python's aiosmtpd. They use
# `python3`, else Debian's /usr/bin/python3: install it for the latter from Debian (pip
# may not install into Debian's Python, PEP 668), or with pip where there is no apt.
has_aiosmtpd() {
  python3 -c 'import aiosmtpd' >/dev/null 2>&1 || /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1
}
if ! has_aiosmtpd; then
  echo "== installing aiosmtpd (SMTP server for the notify tests)"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-aiosmtpd </dev/null
  else
    python3 -m pip install --user aiosmtpd
  fi
  has_aiosmtpd || { echo "aiosmtpd is still missing: install python3-aiosmtpd or pip install aiosmtpd" >&2; exit 1; }
fi

# The S3 store tests (crates/repo/tests/s3_store.rs) run a real moto_server on loopback. pip
# into `python3` where that works (pyenv, virtualenvs, Pythons without PEP 668); else,
# as on a stock Debian 12 (PEP 668: "externally managed"), into a venv of our own,
# which the test harness also looks in. moto >= 5.2.2: 5.2.1 answers
# CompleteMultipartUpload with a wrong XML root (getmoto/moto#10055).
MOTO_SPEC='moto[server]>=5.2.2'
MOTO_VENV="${HOME}/.local/share/stagehand/moto"
has_moto() {
  [ -n "${STAGEHAND_MOTO_SERVER:-}" ] && [ -x "${STAGEHAND_MOTO_SERVER}" ] && return 0
  command -v moto_server >/dev/null 2>&1 || [ -x "${MOTO_VENV}/bin/moto_server" ] || [ -x "${HOME}/.local/bin/moto_server" ]
}
pip_usable() {
  python3 -m pip --version >/dev/null 2>&1 || return 1
  # PEP 668: pip refuses to install into an externally managed interpreter.
  ! python3 -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)' 2>/dev/null
}
if ! has_moto; then
  echo "== installing moto_server (S3 server for the repository tests)"
  if command -v python3 >/dev/null 2>&1 && pip_usable && python3 -m pip install -q "$MOTO_SPEC"; then
    # pyenv only shows new console scripts after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  fi
  if ! has_moto; then
    if [ ! -x "${MOTO_VENV}/bin/pip" ] && ! python3 -m venv "$MOTO_VENV" >/dev/null 2>&1; then
      # Debian ships venv's pip bootstrap separately (python3-venv).
      rm -rf "$MOTO_VENV"
      if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends python3-venv </dev/null
      fi
      python3 -m venv "$MOTO_VENV" || {
        echo "python3 cannot make a venv: install python3-venv, or run pip install '$MOTO_SPEC'" >&2
        exit 1
      }
    fi
    "${MOTO_VENV}/bin/pip" install -q "$MOTO_SPEC"
  fi
  has_moto || { echo "moto_server is still missing: run pip install '$MOTO_SPEC'" >&2; exit 1; }
fi

# The version matrix (scripts/test.sh): MariaDB 11.8 LTS (Debian 13's packages), run with
# its own loader and libraries from a cache directory; the machine's apt sources and
# installed packages are not touched. Downloaded once (~60 MB), then reused.
MARIADB_11_8_DIR="${STAGEHAND_MARIADB_11_8_DIR:-${HOME}/.cache/stagehand/mariadb-11.8}"
if [ "${1:-}" = "--matrix" ] && ! "${MARIADB_11_8_DIR}/bin/mariadbd" --version 2>/dev/null | grep -q ' 11\.8\.'; then
  echo "== fetching MariaDB 11.8 into ${MARIADB_11_8_DIR} (the tests' second server version)"
  $SUDO bash "$(dirname "$0")/mariadb-11.8.sh" "$MARIADB_11_8_DIR" >/dev/null
fi

# A production S3 server for the storage round trip (tests/it/storage_roundtrip.rs):
# Garage, built from crates.io once (about 10 minutes on 2 cores; it needs a C compiler
# for its bundled LMDB and SQLite) into a cache directory the test harness looks in.
GARAGE_VERSION=2.5.0
GARAGE_ROOT="${STAGEHAND_GARAGE_ROOT:-${HOME}/.cache/stagehand/garage-${GARAGE_VERSION}}"
if [ "${1:-}" = "--matrix" ] && ! "${GARAGE_ROOT}/bin/garage" --version 2>/dev/null | grep -q "${GARAGE_VERSION}"; then
  echo "== building Garage ${GARAGE_VERSION} into ${GARAGE_ROOT} (an S3 server for the tests; about 10 minutes)"
  if ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends build-essential </dev/null
  fi
  cargo install garage --version "${GARAGE_VERSION}" --locked --root "${GARAGE_ROOT}" --quiet
fi
