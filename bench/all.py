#!/usr/bin/env python3
"""Every row of issue 15 in one run: the hot copy at parallel 1, 2 and 4, the TPS the
application keeps during a backup, compression, the streamed backup to S3 (moto_server
and Garage), the restore to a started server, and, with --scale-seed, the same stages on
a larger data set. Each stage is its own script (run alone for more rounds); this one runs
them in turn on the same seed datadir, with the same release build, and prints one table
of stagehand against its peer with the target beside each ratio.

    python3 bench/all.py [--seed-from /tmp/stagehand-hash-bench/data] [--scale-seed /tmp/stagehand-scale/data]
                         [--rounds 2] [--out-dir /tmp/stagehand-bench-all]

The seed is a shut-down datadir with 8 sysbench tables of 1M rows; bench/hash_ab_bench.py
creates it in /tmp/stagehand-hash-bench/data when it is missing. The larger one is built
from it by bench/make_scale_seed.py. Every row starts from a cold page cache and waits
for a 1-minute load below 1.5, and prints the load beside it.
Writes the scripts' JSON files and summary.json / summary.md to --out-dir; nothing in
docs/ is changed (copy what you keep into docs/BENCHMARKS.md).

Needs what the scripts need: mariadb-server, mariadb-backup, sysbench, zstd, mbstream,
moto_server, the AWS CLI (or boto3), Garage (scripts/ensure-deps.sh --matrix) and cargo.
"""
import argparse, json, statistics, subprocess, sys, time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SH = ROOT / "target/release/stagehand"


def script(name, *args):
    """Runs bench/<name> with `args`; stops the whole run if it fails."""
    cmd = [sys.executable, str(BENCH / name), *map(str, args)]
    print(f"\n### {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"{name} failed; the rows before it are in the output directory")
    print(f"### {name}: {time.monotonic() - t0:.0f} s", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def copy_rows(path, size):
    """Hot copy to local disk: wall and CPU of stagehand against mariadb-backup per P."""
    rows = json.loads(path.read_text())["rows"]
    out = []
    for p in sorted({r["parallel"] for r in rows if r["part"] == "A"}):
        at = [r for r in rows if r["part"] == "A" and r["parallel"] == p and r["exit"] == 0
              and not r.get("superseded")]
        sh = [r for r in at if r["tool"] == "stagehand"]
        w, c = median(r["wall_s"] for r in sh), median(r["cpu_s"] for r in sh)
        load = [r["loadavg_before"] for r in at]
        for peer, label, target in (("mariadb-backup", f"hot copy, parallel {p}", "wall ≤ 0.8×, CPU ≤ 2×"),
                                    ("mariadb-backup+sync", "  the same ÷ mariadb-backup && sync (as durable)",
                                     "(for reference)")):
            mb = [r for r in at if r["tool"] == peer]
            if not mb:
                continue
            pw, pc = median(r["wall_s"] for r in mb), median(r["cpu_s"] for r in mb)
            out.append((label, size, f"{w} s, {c} CPU-s", f"{pw} s, {pc} CPU-s",
                        f"wall {ratio(w, pw)}×, CPU {ratio(c, pc)}×", target, load))
    return out


def load_rows(path, size):
    s = json.loads(path.read_text())
    runs, summ = s["runs"], s["summary"]
    keys = [k for k in summ if isinstance(summ[k], dict)]
    sh = next(k for k in keys if k.startswith("stagehand") and "max_rate" not in k)
    mb = next(k for k in keys if k.startswith("mariadb-backup"))
    kept = {k: ratio(summ[k]["median_tps_during"], summ[k]["median_tps_before"]) for k in keys}
    load = [r.get("loadavg_before") for r in runs]
    out = [("TPS kept during the backup (during ÷ before)", size, f"{kept[sh]}", f"{kept[mb]}",
            f"{ratio(kept[sh], kept[mb])}× the peer's", "≥ 1×", load)]
    for k in keys:
        if "max_rate" in k:
            out.append((f"  the same with {k.split(', ', 1)[1]}", size, f"{kept[k]}", f"{kept[mb]}",
                        f"{ratio(kept[k], kept[mb])}×", "(a knob)", load))
    return out


def compress_rows(path, size):
    runs = json.loads(path.read_text())["runs"]
    out = []
    for data in sorted({r["data"] for r in runs}):
        for level in sorted({r["level"] for r in runs if r["data"] == data}):
            at = [r for r in runs if r["data"] == data and r["level"] == level and r["exit"] == 0]
            sh = [r for r in at if r["tool"].startswith("stagehand")]
            cli = [r for r in at if not r["tool"].startswith("stagehand")]
            w, pw = median(r["wall_s"] for r in sh), median(r["wall_s"] for r in cli)
            size = f"{at[0]['data_bytes'] / 1e9:.2f} GB (all files)" if at else size
            out.append((f"compress, {data}, level {level}", size, f"{w} s", f"{pw} s",
                        f"{ratio(pw, w)}× the CLI's speed", "≥ 1×", [r["loadavg_before"] for r in at]))
    return out


def stream_rows(path, size, server):
    s = json.loads(path.read_text())
    summ, runs = s["summary"], s["runs"]
    sh, mb = summ["stagehand"], summ["mariadb-backup"]
    w, pw = round(sh["median_wall_s"], 2), round(mb["median_wall_s"], 2)
    load = [r["loadavg_before"] for r in runs]
    return [(f"streamed backup to S3 ({server}), parallel {summ['parallel']}", size,
             f"{w} s", f"{pw} s", f"{ratio(w, pw)}×", "≤ 1×", load),
            (f"  peak RSS of stagehand ({server})", size, f"{sh['max_root_peak_rss_mib']} MiB", "",
             "", "≤ 256 MiB", load)]


def restore_rows(path, size):
    s = json.loads(path.read_text())
    summ, runs = s["summary"], s["runs"]
    m = {k: round(v, 2) for k, v in summ["median_wall_s"].items()}
    load = [r.get("loadavg_before") for r in runs]
    mine = m.get("stagehand_move")
    rows = []
    # A peer row that failed (e.g. a full disk) has no median: its line is left out.
    for peer, label, target in (("peer_copy-back", "restore to a started server (move) ÷ --copy-back path", "≤ 0.7×"),
                                ("peer_move-back", "  the same ÷ --move-back path", "(for reference)")):
        if peer in m:
            rows.append((label, size, f"{mine} s", f"{m[peer]} s", f"{ratio(mine, m[peer])}×", target, load))
    return rows


def gb(seed):
    return f"{sum(f.stat().st_size for f in Path(seed).rglob('*.ibd')) / 1e9:.2f} GB"


def stages(seed, base, out, rounds, tables, tag):
    """Runs every stage on `seed`; the table rows."""
    size = gb(seed)
    rows = []
    copy_json = out / f"copy{tag}.json"
    script("hash_ab_bench.py", "--binary", f"stagehand={SH}", "--dir", base, "--tables", tables,
           "--rounds", rounds, "--json", copy_json, "--keep-data-under-gb", 1000, "--wait-load", 1.5,
           "--durable-peer")
    rows += copy_rows(copy_json, size)
    for server in ("moto", "garage"):
        j = out / f"stream-{server}{tag}.json"
        script("stream_bench.py", "--seed-from", seed, "--parallel", 4, "--rounds", rounds, "--s3", server, "--out", j,
               "--dir", f"/tmp/stagehand-stream-bench{tag}")
        rows += stream_rows(j, size, server)
    # Each size in its own directories: the scripts reuse a datadir copied there before.
    script("restore_bench.py", "--seed-from", seed, "--rounds", rounds, "--no-build", "--out", out / f"restore{tag}.md",
           "--dir", f"/tmp/stagehand-restore-bench{tag}")
    (out / f"restore{tag}.json").write_text((out / "benchmarks-restore.json").read_text())
    rows += restore_rows(out / f"restore{tag}.json", size)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-from", default="/tmp/stagehand-hash-bench/data")
    ap.add_argument("--scale-seed", help="a larger shut-down datadir (32 sysbench tables) for the scale rows")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out-dir", default="/tmp/stagehand-bench-all")
    ap.add_argument("--scale-only", action="store_true", help="only the --scale-seed rows")
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    seed = Path(a.seed_from)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # The copy rows run on the seed itself (hash_ab_bench prepares it when missing).
    rows = []
    if not a.scale_only:
        rows += stages(seed, seed.parent, out, a.rounds, 8, "")
        script("load_bench.py", "--seed-from", seed, "--rounds", a.rounds, "--out", out / "load.json")
        rows += load_rows(out / "load.json", gb(seed))
        script("compress_bench.py", "--seed-from", seed, "--levels", "1,3", "--out", out / "compress.json")
        rows += compress_rows(out / "compress.json", gb(seed))
    if a.scale_seed:
        scale = Path(a.scale_seed)
        rows += stages(scale, scale.parent, out, a.rounds, 32, "-scale")
    lines = [f"Command: `python3 bench/all.py --seed-from {a.seed_from}"
             + (f" --scale-seed {a.scale_seed}" if a.scale_seed else "")
             + (" --scale-only" if a.scale_only else "") + f" --rounds {a.rounds}` "
             f"({started} to {time.strftime('%H:%M UTC', time.gmtime())}, {a.rounds} rounds, medians).", "",
             "| stage | .ibd files | stagehand | peer | ratio | target | load before the rows |",
             "|---|---|---|---|---|---|---|"]
    for stage, size, s, p, r, t, load in rows:
        loads = [x for x in load if x is not None]
        lo = f"{min(loads)}–{max(loads)}" if loads else ""
        lines.append(f"| {stage} | {size} | {s} | {p} | {r} | {t} | {lo} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"started": started, "rows": rows}, indent=1))
    print("\n" + text)


if __name__ == "__main__":
    main()
