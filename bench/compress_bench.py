#!/usr/bin/env python3
"""Compression level and throughput (issue 15): the `compress` step against `tar | zstd
-T<cores>` at the same level on the same backup, on two data sets: sysbench's tables
(random digit strings, the worst case) and "shop" tables that look like an application's
(names, e-mail addresses, dates, amounts, statuses, short notes, JSON attributes, a few
secondary indexes). Each level is timed from a cold page cache, tools alternating; the
ratio is data ÷ stored bytes.

    python3 bench/compress_bench.py --seed-from /tmp/stagehand-hash-bench/data [--levels 1,3,6,9] [--shop-rows 3000000]

Writes docs/benchmarks-compress.json and prints a Markdown table (pasted into
docs/BENCHMARKS.md with the reading). Needs what bench/backup_bench.py needs, and zstd.
"""
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, SH, run, start_server, sql, du, settle, drop_caches  # noqa: E402

WORDS = ("order delivered shipped returned pending paid refund customer account premium basic gift card "
         "coupon express standard warehouse berlin paris london madrid rome vienna oslo lisbon dublin "
         "prague warsaw red blue green black white small medium large cotton steel wood glass").split()


def shop_schema(rows: int) -> str:
    """SQL creating `shop` with `rows` orders and a customer table, from the Sequence engine."""
    pick = lambda n: "ELT(1 + FLOOR(RAND() * %d), %s)" % (n, ", ".join(f"'{w}'" for w in WORDS[:n]))
    note = "CONCAT_WS(' ', " + ", ".join([pick(len(WORDS))] * 6) + ")"
    return f"""
DROP DATABASE IF EXISTS shop; CREATE DATABASE shop; USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(80), email VARCHAR(120), city VARCHAR(40),
  created_at DATETIME, tier VARCHAR(16), KEY (email), KEY (city)) ENGINE=InnoDB;
INSERT INTO customers SELECT seq, CONCAT(UCASE(LEFT({pick(20)}, 1)), {pick(30)}, ' ', {pick(40)}),
  CONCAT('user', seq, '@', {pick(8)}, '.example.com'), {pick(30)},
  TIMESTAMP('2020-01-01') + INTERVAL FLOOR(RAND() * 157680000) SECOND, {pick(12)}
  FROM seq_1_to_{max(rows // 10, 1)};
CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT, created_at DATETIME, status VARCHAR(16),
  amount DECIMAL(10,2), currency CHAR(3), note VARCHAR(255), attrs JSON, KEY (customer_id),
  KEY (created_at), KEY (status)) ENGINE=InnoDB;
INSERT INTO orders SELECT seq, 1 + FLOOR(RAND() * {max(rows // 10, 1)}),
  TIMESTAMP('2022-01-01') + INTERVAL seq * 20 SECOND, {pick(6)}, ROUND(RAND() * RAND() * 900 + 1, 2),
  ELT(1 + FLOOR(RAND() * 3), 'EUR', 'USD', 'GBP'), {note},
  JSON_OBJECT('color', {pick(len(WORDS))}, 'size', ELT(1 + FLOOR(RAND() * 3), 'S', 'M', 'L'),
              'gift', RAND() < 0.1, 'items', 1 + FLOOR(RAND() * 5))
  FROM seq_1_to_{rows};
"""


def timed(cmd, shell=False):
    settle()
    drop_caches()
    load = round(os.getloadavg()[0], 2)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, shell=shell, executable="/bin/bash" if shell else None,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return {"wall_s": round(time.monotonic() - t0, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "loadavg_before": load, "exit": code}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-compress-bench")
    ap.add_argument("--seed-from", required=True, help="a shut-down datadir of sysbench data to copy")
    ap.add_argument("--levels", default="1,3,6,9")
    ap.add_argument("--shop-rows", type=int, default=3000000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-compress.json"))
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "data").exists():
        run(["cp", "-a", a.seed_from, str(base / "data")])
    srv, data, sock = start_server(base)
    try:
        if sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='shop'") != "2":
            print("creating the shop tables ...", flush=True)
            subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot"], input=shop_schema(a.shop_rows),
                           text=True, check=True)
        version = sql(sock, "SELECT VERSION()")
        full = base / "backup"
        shutil.rmtree(full, ignore_errors=True)
        run([str(SH), "-q", "run", str(ROOT / "plans/full-backup.yaml"), "--state-dir", str(base / "state"),
             "--set", f"socket={sock}", "--set", "user=root", "--set", f"datadir={data}", "--set", f"target={full}",
             "--set", "prepare=false", "--set", "verify=false"], stdout=subprocess.DEVNULL)
    finally:
        sql(sock, "SHUTDOWN")
        srv.wait()
    rows = []
    for name, keep, drop in (("sysbench", "sbtest", "shop"), ("shop", "shop", "sbtest")):
        # The backup without the other data set (files and manifest entries): the rest
        # (system tablespace, logs, system tables) is the same in both.
        only = base / f"backup-{name}"
        shutil.rmtree(only, ignore_errors=True)
        shutil.copytree(full, only)
        shutil.rmtree(only / drop)
        m = json.loads((only / "stagehand.json").read_text())
        m["files"] = [f for f in m["files"] if not f["path"].startswith(drop + "/")]
        (only / "stagehand.json").write_text(json.dumps(m))
        data_bytes = sum(f["size"] for f in m["files"])
        for level in [int(x) for x in a.levels.split(",")]:
            work = base / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(only, work)
            plan = base / "compress.yaml"
            plan.write_text(f"version: 1\nname: bench-compress\nsteps:\n  - id: compress\n    uses: compress\n"
                            f"    with: {{dir: \"{work}\", level: {level}, parallel: {a.parallel}}}\n")
            r = timed([str(SH), "-q", "run", str(plan), "--state-dir", str(base / "state")])
            stored = sum(f.stat().st_size for f in work.rglob("*.zst"))
            r.update(data=name, level=level, tool=f"stagehand compress, parallel {a.parallel}",
                     data_bytes=data_bytes, stored_bytes=stored, ratio=round(data_bytes / max(stored, 1), 2))
            rows.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(work, ignore_errors=True)
            out = base / "peer.tar.zst"
            r = timed(f"tar -C {only} -cf - . | zstd -q -T{os.cpu_count()} -{level} -o {out}", shell=True)
            stored = out.stat().st_size
            r.update(data=name, level=level, tool=f"tar | zstd -T{os.cpu_count()}", data_bytes=data_bytes,
                     stored_bytes=stored, ratio=round(data_bytes / max(stored, 1), 2))
            rows.append(r)
            print(json.dumps(r), flush=True)
            out.unlink()
    summary = {"mariadb_version": version, "cores": os.cpu_count(), "parallel": a.parallel,
               "shop_rows": a.shop_rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(a.out).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    print("| data | level | tool | data MB | stored MB | ratio | wall s | MB/s | CPU s | load before | exit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['level']} | {r['tool']} | {r['data_bytes'] / 1e6:.0f} | {r['stored_bytes'] / 1e6:.0f} | "
              f"{r['ratio']} | {r['wall_s']} | {r['data_bytes'] / 1e6 / r['wall_s']:.0f} | {r['cpu_s']} | "
              f"{r['loadavg_before']} | {r['exit']} |")


if __name__ == "__main__":
    main()
