#!/usr/bin/env bash
# (Kept in the repository, from the team's shared scripts, so that a fresh clone can run the
# version matrix on its own; scripts/ensure-deps.sh calls it.)
# MariaDB 11.8 LTS (Debian 13's packages) on this Debian 12 machine, for tests of a second
# server version. Downloads the server, mariadb-backup and client packages plus the
# Debian 13 C libraries they need through apt, with a private apt configuration (the
# machine's own apt sources and installed packages are not touched), unpacks them under
# DIR, and writes wrappers in DIR/bin that run each binary with Debian 13's loader and
# libraries. Idempotent: a second call only prints DIR/bin.
#
#   bin=$(../shared/scripts/mariadb-11.8.sh ~/.cache/stagehand/mariadb-11.8)
#   PATH=$bin:$PATH mariadbd --version      # 11.8.x
#   PATH=$bin:$PATH mariadb-install-db --no-defaults --datadir=... (as with 10.11)
#
# Needs: root (dpkg -x works without), apt-get, the machine's Debian mirror reachable.
set -euo pipefail
mkdir -p "${1:-$HOME/.cache/stagehand/mariadb-11.8}"
dir=$(cd "${1:-$HOME/.cache/stagehand/mariadb-11.8}" && pwd)
bin=$dir/bin
if [ -x "$bin/mariadbd" ] && "$bin/mariadbd" --version 2>/dev/null | grep -q ' 11\.8\.'; then
  echo "$bin"; exit 0
fi
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
# The Debian mirror this machine already uses, asked for the Debian 13 suite.
mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
[ -n "$mirror" ] || mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1)
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$dir/apt/sources.list"
A=(-o "Dir::Etc::sourcelist=$dir/apt/sources.list" -o "Dir::Etc::sourceparts=-"
   -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o "APT::Get::List-Cleanup=0")
apt-get "${A[@]}" -q update >&2
pkgs=(mariadb-server-core mariadb-backup mariadb-client-core mariadb-client libmariadb3 mariadb-common
      libaio1t64 libc6 libcrypt1 libgcc-s1 libnuma1 libpcre2-8-0 libssl3t64 libstdc++6 libsystemd0
      liburing2 zlib1g libedit2 libncurses6 libtinfo6 libcap2 libgcrypt20 liblz4-1 liblzma5 libzstd1
      libgpg-error0 libbsd0 libmd0)
(cd "$dir/apt/cache/archives" && apt-get "${A[@]}" -q download "${pkgs[@]}" >&2)
rm -rf "$dir/root" "$dir/base" "$bin"; mkdir -p "$dir/root" "$bin" "$dir/base/sbin" "$dir/base/share"
for d in "$dir"/apt/cache/archives/*.deb; do dpkg -x "$d" "$dir/root"; done
r=$dir/root
ld="$r/usr/lib64/ld-linux-x86-64.so.2 --library-path $r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu"
for b in mariadb-backup mariadb mbstream my_print_defaults mariadb-dump mariadb-binlog mariadb-admin; do
  p=$r/usr/bin/$b; [ -e "$p" ] || continue
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$ld" "$p" > "$bin/$b"
done
# mariadbd must read 11.8's error messages, not the installed 10.11 ones; --no-defaults stays first.
cat > "$bin/mariadbd" <<W
#!/bin/sh
if [ "\$1" = "--no-defaults" ]; then shift; set -- --no-defaults --lc-messages-dir=$r/usr/share/mariadb "\$@"; fi
exec $ld $r/usr/sbin/mariadbd "\$@"
W
chmod +x "$bin/mariadbd"; cp -p "$bin/mariadbd" "$dir/base/sbin/mariadbd"; ln -s "$bin" "$dir/base/bin"
ln -s "$r/usr/share/mariadb" "$dir/base/share/mariadb"
cat > "$bin/mariadb-install-db" <<W
#!/bin/sh
cd "$dir/base" && exec $r/usr/bin/mariadb-install-db "\$@" --basedir="$dir/base" --force --skip-name-resolve
W
chmod +x "$bin"/*
"$bin/mariadbd" --version >&2
echo "$bin"
