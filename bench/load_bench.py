#!/usr/bin/env python3
"""What the application keeps during a backup (issue 15): sysbench `oltp_read_write
--threads=2` runs throughout, and each row backs up the same data while it runs:
stagehand (`plans/full-backup.yaml`, no verify, no prepare) without and with `max_rate`,
and `mariadb-backup --backup`, at the same parallelism, rounds alternating. Reports the
TPS in the 15 s before and during the backup, the worst second, the backup's wall and CPU
time, and the load average before and after each row.

    python3 bench/load_bench.py --seed-from /tmp/stagehand-hash-bench/data [--rounds 2] [--max-rate 100MiB]

Writes docs/benchmarks-load.json and prints a Markdown table (pasted into
docs/BENCHMARKS.md with the reading). Needs what bench/backup_bench.py needs.
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, SH, run, start_server, sql, du, one_backup, settle  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-load-bench")
    ap.add_argument("--seed-from", required=True, help="a shut-down datadir of sysbench data (8 tables) to copy")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=1000000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-rate", default="100MiB")
    ap.add_argument("--settle", type=float, default=1.5, help="wait (at most 3 min) until the 1-minute load is below this before each row")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-load.json"))
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand", "--example", "commit_probe"], cwd=ROOT)
    if not (base / "data").exists():
        run(["cp", "-a", a.seed_from, str(base / "data")])
    srv, data, sock = start_server(base)
    target, P = base / "backup", str(a.parallel)
    stagehand = [str(SH), "-q", "run", str(ROOT / "plans/full-backup.yaml"), "--state-dir", str(base / "state"),
                 "--set", f"socket={sock}", "--set", "user=root", "--set", f"datadir={data}", "--set", f"target={target}",
                 "--set", "prepare=false", "--set", "verify=false", "--set", f"parallel={P}"]
    tools = {
        f"stagehand --parallel {P}": stagehand,
        f"stagehand --parallel {P}, max_rate {a.max_rate}": stagehand + ["--set", f"max_rate={a.max_rate}"],
        f"mariadb-backup --parallel {P}": ["mariadb-backup", "--backup", f"--target-dir={target}", f"--socket={sock}",
                                          "--user=root", f"--parallel={P}"],
    }
    rows = []
    try:
        data_bytes, version = du(data), sql(sock, "SELECT VERSION()")
        for rnd in range(a.rounds):
            for name, cmd in tools.items():
                settle(a.settle)
                before = round(os.getloadavg()[0], 2)
                r = one_backup(name, cmd, sock, target, True, a.tables, a.table_size, data_bytes)
                r.update(round=rnd, loadavg_before=before, cmd=" ".join(cmd))
                rows.append(r)
    finally:
        sql(sock, "SHUTDOWN")
        srv.wait()
    med = {}
    for r in rows:
        if r["exit"] == 0:
            med.setdefault(r["name"], []).append(r)
    summary = {k: {f"median_{f}": statistics.median(x[f] for x in v)
                   for f in ("wall_s", "cpu_s", "tps_before", "tps_during", "tps_min_second")} for k, v in med.items()}
    summary.update(data_bytes=data_bytes, mariadb_version=version, parallel=a.parallel, rounds=a.rounds,
                   cores=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    Path(a.out).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    print("| round | backup (sysbench oltp_read_write, 2 threads, throughout) | wall s | CPU s | TPS before | TPS during | "
          "during ÷ before | worst second | p95 ms, worst second | load before → after | exit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kept = r["tps_during"] / r["tps_before"] if r.get("tps_before") else 0
        print(f"| {r['round'] + 1} | {r['name']} | {r['wall_s']} | {r['cpu_s']} | {r['tps_before']} | {r['tps_during']} | "
              f"{kept:.2f} | {r['tps_min_second']} | {r['p95_ms_worst_second']} | {r['loadavg_before']} → {r['loadavg_1m']} | {r['exit']} |")


if __name__ == "__main__":
    main()
