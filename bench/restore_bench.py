#!/usr/bin/env python3
"""Restore from S3 to a started server (issue 15): `plans/restore.yaml` against the whole
mariadb-backup path on the same data, S3 server and machine, rounds alternating tools.

The peer's path is what a user runs to get a server back: one GET | zstd -d | mbstream -x,
`mariadb-backup --prepare`, `--copy-back` (or `--move-back`), then mariadbd started on
the datadir and the same check query stagehand's plan runs, then a shutdown. stagehand's
row is the whole restore plan (fetch decompressing as it downloads → prepare → copy_back →
server → check), with `copy_back=move` (the plan's default) and `copy_back=copy`.

    python3 bench/restore_bench.py --seed-from /tmp/stagehand-hash-bench/data [--rounds 2]

Each row starts with a cold guest page cache; the load average before and after each row
is recorded. Writes the section "Restore to a started server (issue 15)" of
docs/BENCHMARKS.md and docs/benchmarks-restore.json. Needs what bench/storage_bench.py
needs.
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, SH, run, start_server, sql, du, settle  # noqa: E402
from storage_bench import MOTO, S3ENV, replace_section, measured, start_moto, s3, fresh, download_single_get_cmd, upload_cmd  # noqa: E402

CHECK = ("SELECT COUNT(*) FROM information_schema.tables WHERE engine IS NOT NULL AND table_schema "
         "NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')")


def start_and_check(datadir: Path, sock: Path) -> str:
    """Shell: start mariadbd on datadir, wait for the check query, shut it down."""
    return (f"mariadbd --no-defaults --datadir={datadir} --socket={sock} --skip-networking --user=root "
            f"--log-error={datadir}.err --pid-file={datadir}.pid & pid=$!; "
            f"for i in $(seq 3000); do mariadb --no-defaults -S {sock} -uroot -N -e \"{CHECK}\" "
            f">/dev/null 2>&1 && break; kill -0 $pid || exit 1; sleep 0.1; done; "
            f"mariadb --no-defaults -S {sock} -uroot -e SHUTDOWN && wait $pid")


def row(name, cmd, shell=False, below=1.5):
    settle(below)
    load_before = round(os.getloadavg()[0], 2)
    r = measured(name, cmd, shell=shell)
    r["loadavg_before"] = load_before
    r["cmd"] = cmd if shell else " ".join(cmd)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-restore-bench")
    ap.add_argument("--seed-from", required=True, help="a shut-down datadir of sysbench data to copy")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=1.5, help="before each row, wait (at most 3 min) until the 1-minute load is below this")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs/BENCHMARKS.md"))
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    sockdir = base / "sock"
    sockdir.mkdir(mode=0o700, exist_ok=True)
    sockdir.chmod(0o700)
    if not a.no_build:
        run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand"], cwd=ROOT)
    if not (base / "data").exists():
        run(["cp", "-a", a.seed_from, str(base / "data")])
    srv, data, sock = start_server(base)
    moto, url = start_moto(base)
    MOTO["pid"] = moto.pid
    sh = [str(SH), "-q", "run", "--json", "--state-dir", str(base / "state")]
    P = str(a.parallel)
    runs = []
    try:
        data_bytes, version = du(data), sql(sock, "SELECT VERSION()")
        s3(url).create_bucket(Bucket="bench")
        repo = ["--set", "repository=s3://bench/db", "--set", f"endpoint={url}", "--set", "path_style=true"]
        # One backup each, the same data (the server is idle).
        spool, mbtmp = base / "spool", base / "mb-tmp"
        fresh(spool, mbtmp)
        mbtmp.mkdir()
        run(sh + [str(ROOT / "plans/backup-to-s3.yaml"), "--set", f"socket={sock}", "--set", f"datadir={data}",
                  *repo, "--set", f"spool={spool}", "--set", f"parallel={P}"], stdout=subprocess.DEVNULL,
            env=dict(os.environ, **S3ENV))
        up, _ = upload_cmd(url, "bench/mb.zst")
        run(f"set -o pipefail; mariadb-backup --backup --stream=mbstream --target-dir={mbtmp} --socket={sock} "
            f"--user=root --parallel={P} 2>{base}/mb-backup.log | zstd -q -T2 -3 | {up}",
            shell=True, executable="/bin/bash", env=dict(os.environ, **S3ENV))
        fresh(spool, mbtmp)
        # The source server is stopped: the restores have the machine to themselves.
        sql(sock, "SHUTDOWN")
        srv.wait()
        dl, dl_how = download_single_get_cmd(url, "bench/mb.zst")
        wk, dd, mw, md = base / "restore-work", base / "restore-data", base / "mb-work", base / "mb-data"
        for rnd in range(a.rounds):
            for mode in ("move", "copy"):
                fresh(wk, dd)
                cmd = sh + [str(ROOT / "plans/restore.yaml"), *repo, "--set", "id=latest", "--set", f"workdir={wk}",
                            "--set", f"datadir={dd}", "--set", f"copy_back={mode}",
                            "--set", f"check_socket={sockdir}/restore-check.sock"]
                r = row(f"stagehand restore.yaml, copy_back={mode}", cmd, below=a.settle)
                r.update(round=rnd, key=f"stagehand_{mode}")
                runs.append(r)
                fresh(wk, dd)
            for verb in ("copy-back", "move-back"):
                fresh(mw, md)
                mw.mkdir()
                pipe = (f"set -o pipefail; {dl} | zstd -q -d | mbstream -x -C {mw} && "
                        f"mariadb-backup --prepare --target-dir={mw} 2>{base}/mb-prepare.log && "
                        f"mariadb-backup --{verb} --target-dir={mw} --datadir={md} 2>{base}/mb-{verb}.log && "
                        + start_and_check(md, sockdir / "mb-check.sock"))
                r = row(f"GET | zstd -d | mbstream -x; --prepare; --{verb}; mariadbd start + check", pipe, shell=True, below=a.settle)
                r.update(round=rnd, key=f"peer_{verb}", download_method=dl_how)
                runs.append(r)
                fresh(mw, md)
        write_report(Path(a.out), runs, data_bytes, version, a)
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"],
                       stderr=subprocess.DEVNULL)
        srv.wait()
        moto.terminate()
        moto.wait()


def write_report(out: Path, runs, data_bytes, version, a):
    by = {}
    for r in runs:
        if r["exit"] == 0:
            by.setdefault(r["key"], []).append(r["wall_s"])
    med = {k: statistics.median(v) for k, v in by.items()}
    ratios = {f"{s}/{p}": round(med[s] / med[p], 2)
              for s in ("stagehand_move", "stagehand_copy") for p in ("peer_copy-back", "peer_move-back")
              if s in med and p in med}
    summary = {"median_wall_s": med, "ratios": ratios, "data_bytes": data_bytes, "mariadb_version": version,
               "rounds": a.rounds, "parallel": a.parallel, "cores": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out.parent / "benchmarks-restore.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))

    def line(r):
        steps = r.get("steps_ms") or {}
        notes = ", ".join(f"{k} {v / 1000:.1f}" for k, v in steps.items() if v) if steps else ""
        rss = r["peak_rss_mib_by_process"]
        rss_s = ", ".join(f"{k} {v}" for k, v in sorted(rss.items(), key=lambda kv: -kv[1])[:2])
        name = r["name"].replace("|", "\\|")
        return (f"| {r['round'] + 1} | {name} | {r['wall_s']} | {r['cpu_s']} | {rss_s} | {notes} | "
                f"{r['loadavg_before']} → {r['loadavg_1m']} | {r['exit']} |")

    rows = "\n".join(line(r) for r in runs)
    rat = "\n".join(f"- {k.replace('/', ' ÷ ')}: **{v}×**" for k, v in ratios.items())
    text = f"""## Restore to a started server (issue 15)

Command: `python3 bench/restore_bench.py --seed-from {a.seed_from} --rounds {a.rounds}`
(run {summary['date']}, {summary['cores']} cores, MariaDB {version}; {data_bytes / 1e9:.2f} GB datadir of
sysbench tables; one backup each, taken by `plans/backup-to-s3.yaml` and by
`mariadb-backup --stream | zstd -3 -T2 | upload`, stored in the same `moto_server` on loopback;
the source server is stopped before the restores; rows alternate, each from a cold guest page
cache). Every row ends with a server started on the restored datadir, the same check query,
and a shutdown. Steps are in seconds. `load` is the 1-minute load average before → after the row.

| round | run | wall s | CPU s (tree) | peak RSS MiB (largest processes) | steps s | load | exit |
|---|---|---|---|---|---|---|---|
{rows}

Medians (wall): stagehand ÷ peer

{rat}

The target of issue 15 is ≤ 0.7× the peer's whole path.
"""
    replace_section(out, "## Restore to a started server (issue 15)", text)


if __name__ == "__main__":
    main()
