#!/usr/bin/env python3
"""Builds the scale data set of issue 15: the 2 GB sysbench seed (8 tables of 1M rows,
made by bench/hash_ab_bench.py) grown to 32 tables. Tables 9–32 are copies of tables
1–8, imported as transportable tablespaces, which is minutes instead of the hour
sysbench would need. The result is a shut-down datadir for bench/all.py --scale-seed.

    python3 bench/make_scale_seed.py [--seed-from /tmp/stagehand-hash-bench/data] \
        [--dir /tmp/stagehand-scale] [--tables 32]

Needs: mariadb-server, root; ~8 GB free on the disk of --dir.
"""
import argparse, shutil, subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import run, start_server, sql, du  # noqa: E402


def copy_table(sock, data, src, dst):
    """sbtest<dst> becomes a copy of sbtest<src> (same definition, same rows)."""
    sql(sock, f"DROP TABLE IF EXISTS sbtest.sbtest{dst}; CREATE TABLE sbtest.sbtest{dst} LIKE sbtest.sbtest{src};"
              f" ALTER TABLE sbtest.sbtest{dst} DISCARD TABLESPACE")
    # FOR EXPORT holds the table's lock only while this one client session lives: copy
    # the files from within it (`system`), then unlock.
    db = data / "sbtest"
    script = (f"FLUSH TABLES sbtest.sbtest{src} FOR EXPORT;\n"
              f"system cp {db}/sbtest{src}.ibd {db}/sbtest{dst}.ibd\n"
              f"system cp {db}/sbtest{src}.cfg {db}/sbtest{dst}.cfg\n"
              "UNLOCK TABLES;\n")
    run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot"], input=script, text=True)
    sql(sock, f"ALTER TABLE sbtest.sbtest{dst} IMPORT TABLESPACE")
    (db / f"sbtest{dst}.cfg").unlink(missing_ok=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-from", default="/tmp/stagehand-hash-bench/data")
    ap.add_argument("--dir", default="/tmp/stagehand-scale")
    ap.add_argument("--tables", type=int, default=32)
    a = ap.parse_args()
    seed, base = Path(a.seed_from), Path(a.dir)
    if not (seed / "sbtest").is_dir():
        sys.exit(f"{seed} has no sbtest database: run bench/hash_ab_bench.py once to make it")
    if base.exists():
        sys.exit(f"{base} exists: remove it first")
    base.mkdir(parents=True)
    run(["cp", "-a", str(seed), str(base / "data")])
    srv, data, sock = start_server(base)
    try:
        have = int(sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'"))
        for dst in range(have + 1, a.tables + 1):
            copy_table(sock, data, (dst - 1) % have + 1, dst)
            print(f"# sbtest{dst}: copied", flush=True)
        sql(sock, "SET GLOBAL innodb_max_dirty_pages_pct=0")
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"],
                       stderr=subprocess.DEVNULL)
        srv.wait()
    ibd = sum(f.stat().st_size for f in (data / "sbtest").glob("*.ibd"))
    print(f"# {data}: {a.tables} tables, {ibd / 1e9:.2f} GB of .ibd files, {du(data) / 1e9:.2f} GB in all")
    shutil.rmtree(base / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
