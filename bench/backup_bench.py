#!/usr/bin/env python3
"""Backup benchmark: stagehand vs mariadb-backup on the same ~2 GB sysbench data, in one
run, idle and under `sysbench oltp_read_write --threads=2`, plus `cp -r` of the datadir
as the physical limit. Writes the figures to docs/BENCHMARKS.md (and raw JSON beside).

    python3 bench/backup_bench.py [--dir /tmp/stagehand-bench] [--table-size 1000000]

Needs: mariadb-server, mariadb-backup, sysbench (apt-get install), a release build.
Each run starts with the page cache dropped, so every tool reads from disk.
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SH = ROOT / "target/release/stagehand"
PROBE = ROOT / "target/release/examples/commit_probe"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def start_server(base: Path):
    data, sock = base / "data", base / "mysqld.sock"
    opts = ["--no-defaults", f"--datadir={data}", "--user=root", "--innodb-buffer-pool-size=1G",
            "--innodb-log-file-size=512M", "--log-bin=binlog", "--server-id=1", "--max-connections=200",
            f"--tmpdir={base}"]
    if not data.exists():
        run(["mariadb-install-db", *opts[:2], "--user=root", "--auth-root-authentication-method=normal",
             "--skip-test-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = subprocess.Popen(["mariadbd", *opts, f"--socket={sock}", "--skip-networking",
                            f"--log-error={base}/server.err", f"--pid-file={base}/mysqld.pid"])
    for _ in range(600):
        if subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SELECT 1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return srv, data, sock
        if srv.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit("the server did not start; see " + str(base / "server.err"))


def sql(sock, q):
    return subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-N", "-e", q],
                          check=True, capture_output=True, text=True).stdout.strip()


def sysbench(sock, tables, size, *extra):
    return ["sysbench", "oltp_read_write", "--db-driver=mysql", f"--mysql-socket={sock}", "--mysql-user=root",
            "--mysql-db=sbtest", f"--tables={tables}", f"--table-size={size}", *extra]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measured(cmd, env=None):
    """Runs cmd; returns wall seconds, CPU seconds, max RSS MiB, exit code."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = []
    for line in p.stderr:
        err.append(line.decode(errors="replace"))
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write("".join(err[-30:]))
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "max_rss_mib": round(ru.ru_maxrss / 1024, 1), "exit": code}


SB_LINE = re.compile(r"\[ (\d+)s \].*?tps: ([\d.]+).*?lat \(ms,95%\): ([\d.]+)")


def settle(below: float = 1.5, most_s: float = 180):
    """The previous row's load must not count against the next: waits until the 1-minute
    load average is below `below` (at most `most_s` seconds)."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - t0 < most_s:
        time.sleep(5)


def drop_caches():
    """Every tool starts from a cold page cache (needs root; skipped otherwise)."""
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], stderr=subprocess.DEVNULL)


def one_backup(name, cmd, sock, target, load, tables, size, data_bytes):
    shutil.rmtree(target, ignore_errors=True)
    drop_caches()
    sb = None
    if load:
        sb_log = open(target.parent / "sysbench.log", "w")
        sb = subprocess.Popen(sysbench(sock, tables, size, "--threads=2", "--time=3600", "--report-interval=1", "run"),
                              stdout=sb_log, stderr=subprocess.STDOUT)
        sb_t0 = time.monotonic()
        time.sleep(15)  # warm-up and baseline
    probe = subprocess.Popen([str(PROBE), "--socket", str(sock)], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    b0 = time.monotonic()
    res = measured(cmd)
    b1 = time.monotonic()
    time.sleep(1)
    probe.send_signal(signal.SIGTERM)
    res.update(json.loads(probe.stdout.read() or "{}"))
    if sb:
        time.sleep(5)
        sb.send_signal(signal.SIGTERM)
        sb.wait()
        sb_log.close()
        per_sec = [(int(m[1]), float(m[2]), float(m[3])) for m in SB_LINE.finditer((target.parent / "sysbench.log").read_text())]
        lo, hi = b0 - sb_t0, b1 - sb_t0
        base = [t for s, t, _ in per_sec if 3 <= s <= lo - 1]
        during = [(t, l) for s, t, l in per_sec if lo < s <= hi]
        res["tps_before"] = round(sum(base) / max(len(base), 1))
        res["tps_during"] = round(sum(t for t, _ in during) / max(len(during), 1))
        res["tps_min_second"] = round(min((t for t, _ in during), default=0))
        res["p95_ms_worst_second"] = max((l for _, l in during), default=0)
    manifest = target / "stagehand.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        res["stagehand_commit_blocked_ms"] = m["locks"]["commit_blocked_ms"]
        res["stagehand_holds_ms"] = m["locks"]["holds_ms"]
    res["mb_per_s"] = round(data_bytes / 1e6 / res["wall_s"], 1)
    res["name"], res["load"] = name, "sysbench 2 threads" if load else "idle"
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res), flush=True)
    shutil.rmtree(target, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-bench")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=1000000)
    ap.add_argument("--out", default=str(ROOT / "docs/BENCHMARKS.md"))
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand", "--example", "commit_probe"], cwd=ROOT)
    srv, data, sock = start_server(base)
    try:
        if sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'") != str(a.tables):
            sql(sock, "DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest")
            print("preparing sysbench data ...", flush=True)
            run(sysbench(sock, a.tables, a.table_size, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
        data_bytes = du(data)
        version = sql(sock, "SELECT VERSION()")
        target = base / "backup"
        tools = {
            "stagehand --parallel 1": [str(SH), "-q", "run", str(ROOT / "plans/full-backup.yaml"), "--state-dir", str(base / "state"),
                                       "--set", f"socket={sock}", "--set", "user=root", "--set", f"datadir={data}",
                                       "--set", f"target={target}", "--set", "prepare=false", "--set", "verify=false", "--set", "parallel=1"],
            "mariadb-backup --parallel 1": ["mariadb-backup", "--backup", f"--target-dir={target}", f"--socket={sock}", "--user=root", "--parallel=1"],
        }
        tools["stagehand --parallel 2"] = tools["stagehand --parallel 1"][:-1] + ["parallel=2"]
        tools["mariadb-backup --parallel 2"] = tools["mariadb-backup --parallel 1"][:-1] + ["--parallel=2"]
        results = []
        for load in (False, True):
            for name, cmd in tools.items():
                results.append(one_backup(name, cmd, sock, target, load, a.tables, a.table_size, data_bytes))
        results.append(one_backup("cp -r (physical limit, not consistent)", ["cp", "-r", str(data), str(target)], sock, target, False, a.tables, a.table_size, data_bytes))
        write_report(Path(a.out), results, data_bytes, version, a)
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"], stderr=subprocess.DEVNULL)
        srv.wait()


def write_report(out: Path, results, data_bytes, version, a):
    cols = ["name", "load", "wall_s", "mb_per_s", "cpu_s", "max_rss_mib", "max_commit_ms", "ms_in_slow_commits",
            "stagehand_commit_blocked_ms", "tps_before", "tps_during", "tps_min_second", "p95_ms_worst_second", "loadavg_1m", "exit"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    text = f"""# Benchmarks

## Hot backup: stagehand vs mariadb-backup (issue 3)

Command: `python3 bench/backup_bench.py --tables {a.tables} --table-size {a.table_size}`
(run on {time.strftime('%Y-%m-%d')}, {cpu} cores, MariaDB {version}; data {data_bytes / 1e9:.2f} GB of
sysbench tables, buffer pool 1 GiB, innodb_log_file_size 512 MiB, binlog on). Every row is
one backup of the same datadir in the same run, each started with a cold page cache
(`echo 3 > /proc/sys/vm/drop_caches`), so each tool reads the datadir from disk.

Columns: `wall_s` wall time; `mb_per_s` datadir bytes / wall time; `cpu_s` user+system CPU of
the tool; `max_rss_mib` its peak memory; `max_commit_ms` the longest single-row commit seen by
a probe committing every 2 ms during the backup (`examples/commit_probe.rs`: the same
measurement for every tool), `ms_in_slow_commits` the total time of its commits slower than
5 ms; `stagehand_commit_blocked_ms` BLOCK_COMMIT→END as stagehand measures it; `tps_before` /
`tps_during` sysbench oltp_read_write TPS in the 15 s before and during the backup,
`tps_min_second` the worst second, `p95_ms_worst_second` the highest per-second p95 latency,
`loadavg_1m` the machine's load average after the backup (anything above ~2 on this 2-core
machine means other work competed with the run and the row is noisy).
stagehand runs `plans/full-backup.yaml` with `prepare=false verify=false` (mariadb-backup does
not verify either).

{chr(10).join(lines)}

Raw results: `docs/benchmarks-backup.json`.
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    marker = "## Hot backup: stagehand vs mariadb-backup (issue 3)"
    before, _, ours = old.partition(marker)
    rest = before.replace("# Benchmarks\n", "").strip()
    # Sections after ours (other benchmarks, e.g. the storage pipeline) stay as they are.
    later = ours.find("\n## ")
    after = ours[later:].strip() if later >= 0 else ""
    out.write_text(
        text
        + ("\n" + rest + "\n" if rest else "")
        + ("\n" + after + "\n" if after else "")
    )
    (out.parent / "benchmarks-backup.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
