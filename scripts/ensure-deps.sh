#!/usr/bin/env bash
# Installs what stagehand's demo and tests need on Debian 12, if it is missing:
# MariaDB 10.11 server and client, mariadb-backup (compatibility tests, benchmarks), zstd,
# openssl (a test certificate for STARTTLS) and the aiosmtpd SMTP server (notify tests).
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

APT_PACKAGES=(mariadb-server mariadb-backup mariadb-client zstd openssl)
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
