#!/usr/bin/env python3
"""Streamed backup to S3 at a given parallelism (issue 15): `plans/backup-to-s3.yaml` run by
one or more stagehand builds, against `mariadb-backup --stream | zstd | upload`, on the
same idle server and `moto_server`, rounds alternating. Reports wall time, CPU and peak
RSS of stagehand itself (the target: ≤ 256 MiB at parallel 4) with the load average
before and after each row.

    python3 bench/stream_bench.py --seed-from /tmp/stagehand-hash-bench/data --parallel 4 \
        [--binary name=/path/to/stagehand ...] [--rounds 2]

Writes docs/benchmarks-stream.json and prints a Markdown table (pasted into
docs/BENCHMARKS.md by hand, with the reading).
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, SH, run, start_server, sql, du, settle  # noqa: E402
from storage_bench import MOTO, CREDS, measured, start_s3, s3, fresh, stored_bytes, delete_prefix, upload_cmd  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-stream-bench")
    ap.add_argument("--seed-from", required=True, help="a shut-down datadir of sysbench data to copy")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--s3", choices=["moto", "garage"], default="moto",
                    help="the S3 server both tools upload to: moto_server (Python) or Garage (a production server)")
    ap.add_argument("--settle", type=float, default=1.5, help="before each row, wait (at most 3 min) until the 1-minute load is below this")
    ap.add_argument("--binary", action="append", default=[], help="name=path of a stagehand build (default: this tree's release build)")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-stream.json"))
    a = ap.parse_args()
    binaries = [b.split("=", 1) for b in a.binary] or [["stagehand", str(SH)]]
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "data").exists():
        run(["cp", "-a", a.seed_from, str(base / "data")])
    srv, data, sock = start_server(base)
    moto, url = start_s3(a.s3, base)
    MOTO["pid"] = moto.pid
    P = str(a.parallel)
    runs = []
    try:
        data_bytes, version = du(data), sql(sock, "SELECT VERSION()")
        s3(url).create_bucket(Bucket="bench")
        spool, mbtmp = base / "spool", base / "mb-tmp"
        up, up_how = upload_cmd(url, "bench/mb.zst")
        for rnd in range(a.rounds):
            for name, binary in binaries:
                fresh(spool)
                cmd = [binary, "-q", "run", "--json", "--state-dir", str(base / "state"),
                       str(ROOT / "plans/backup-to-s3.yaml"), "--set", f"socket={sock}", "--set", f"datadir={data}",
                       "--set", "repository=s3://bench/db", "--set", f"endpoint={url}", "--set", "path_style=true", "--set", f"region={CREDS['region']}",
                       "--set", f"spool={spool}", "--set", f"parallel={P}"]
                settle(a.settle)
                before = round(os.getloadavg()[0], 2)
                r = measured(f"{name}: backup-to-s3.yaml, parallel {P}", cmd)
                r.update(round=rnd, key=name, loadavg_before=before, cmd=" ".join(cmd), s3_server=a.s3)
                r["stored_bytes"], r["objects"] = stored_bytes(url, "bench", "db/")
                runs.append(r)
                delete_prefix(url, "bench", "db/")
            fresh(mbtmp)
            mbtmp.mkdir()
            pipe = (f"set -o pipefail; mariadb-backup --backup --stream=mbstream --target-dir={mbtmp} --socket={sock} "
                    f"--user=root --parallel={P} 2>{base}/mb-backup.log | zstd -q -T2 -3 | {up}")
            settle(a.settle)
            before = round(os.getloadavg()[0], 2)
            r = measured(f"mariadb-backup --stream --parallel={P} | zstd -3 -T2 | upload", pipe, shell=True)
            r.update(round=rnd, key="mariadb-backup", loadavg_before=before, cmd=pipe, upload_method=up_how, s3_server=a.s3)
            r["stored_bytes"], r["objects"] = stored_bytes(url, "bench", "mb.zst")
            runs.append(r)
            fresh(mbtmp)
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"], stderr=subprocess.DEVNULL)
        srv.wait()
        moto.terminate()
        moto.wait()
    med = {}
    for r in runs:
        if r["exit"] == 0:
            med.setdefault(r["key"], []).append(r)
    summary = {k: {"median_wall_s": statistics.median(x["wall_s"] for x in v),
                   "median_cpu_s": statistics.median(x["cpu_s"] for x in v),
                   "max_root_peak_rss_mib": max(x["root_peak_rss_mib"] for x in v)} for k, v in med.items()}
    summary.update(data_bytes=data_bytes, mariadb_version=version, parallel=a.parallel, s3_server=a.s3, rounds=a.rounds,
                   cores=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    Path(a.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    print("| round | run | wall s | CPU s (tree) | peak RSS MiB (root) | stored | load before → after | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        name = r["name"].replace("|", "\\|")
        print(f"| {r['round'] + 1} | {name} | {r['wall_s']} | {r['cpu_s']} | {r['root_peak_rss_mib']} | "
              f"{r['stored_bytes'] / 2**20:.0f} MiB | {r['loadavg_before']} → {r['loadavg_1m']} | {r['exit']} |")


if __name__ == "__main__":
    main()
