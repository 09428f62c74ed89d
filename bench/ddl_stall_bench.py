#!/usr/bin/env python3
"""DDL and MyISAM stalls during a hot backup (issue 14), side by side on the same data in
one run:

  (a) stagehand plans/full-backup.yaml (BLOCK_DDL held through the whole copy),
  (b) stagehand docs/examples/full-backup-innodb-under-start.yaml (InnoDB copied under
      START, `reconcile` under BLOCK_DDL),
  (c) mariadb-backup --backup,

each backup run while `examples/ddl_probe.rs` does, every 50 ms and each on its own
connection, a CREATE+DROP TABLE, a MyISAM one-row INSERT and an InnoDB one-row commit.
Rounds alternate a, b, c, a, b, c, ...; every backup starts with a cold page cache.
Writes docs/benchmarks-ddl-stall.json and prints a Markdown table.

    python3 bench/ddl_stall_bench.py [--dir /tmp/stagehand-ddl-bench] [--tables 8] [--table-size 500000]

Needs what bench/backup_bench.py needs (mariadb-server, mariadb-backup, sysbench, cargo);
reuses its server and data helpers.
"""
import argparse, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_bench as bb  # noqa: E402

ROOT = bb.ROOT
SH = ROOT / "target/release/stagehand"
PROBE = ROOT / "target/release/examples/ddl_probe"


def one_backup(tool, rnd, cmd, sock, target, a):
    shutil.rmtree(target, ignore_errors=True)
    stop = target.parent / "probe.stop"
    stop.unlink(missing_ok=True)
    time.sleep(a.settle)
    waited = time.monotonic()
    while os.getloadavg()[0] > a.quiet_load and time.monotonic() - waited < a.quiet_wait:
        time.sleep(5)  # other work on the machine: wait for it (at most --quiet-wait)
    waited = round(time.monotonic() - waited)
    bb.drop_caches()
    load_before = round(os.getloadavg()[0], 2)
    probe = subprocess.Popen([str(PROBE), "--socket", str(sock), "--interval-ms", "50", "--stop-file", str(stop)],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    res = {"tool": tool, "round": rnd}
    res.update(bb.measured(cmd))
    time.sleep(1)
    stop.touch()
    try:
        out, _ = probe.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        probe.send_signal(signal.SIGTERM)
        out, _ = probe.communicate()
    res["probe"] = json.loads(out or "{}")
    for c in ("ddl", "myisam", "innodb"):
        p = res["probe"].get(c, {})
        res[f"{c}_worst_ms"] = p.get("worst_ms")
        res[f"{c}_p99_ms"] = p.get("p99_ms")
    manifest = target / "stagehand.json"
    if manifest.exists():
        locks = json.loads(manifest.read_text()).get("locks", {})
        res["locks"] = locks
        holds = locks.get("holds_ms", {})
        res["block_ddl_ms"] = holds.get("block_ddl")
        res["block_commit_ms"] = holds.get("block_commit")
        res["ddl_blocked_ms"] = locks.get("ddl_blocked_ms")
        res["commit_blocked_ms"] = locks.get("commit_blocked_ms")
    res["waited_for_quiet_s"] = waited
    res["loadavg_before"] = load_before
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res), flush=True)
    shutil.rmtree(target, ignore_errors=True)
    return res


COLS = ["tool", "round", "wall_s", "ddl_worst_ms", "ddl_p99_ms", "myisam_worst_ms", "myisam_p99_ms",
        "innodb_worst_ms", "innodb_p99_ms", "block_ddl_ms", "block_commit_ms", "ddl_blocked_ms",
        "loadavg_before", "loadavg_1m", "exit"]


def table(results):
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    for r in results:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in COLS) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-ddl-bench")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=500000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2, help="copy threads, for every tool")
    ap.add_argument("--settle", type=float, default=20, help="seconds of quiet before each backup")
    ap.add_argument("--quiet-load", type=float, default=1.5,
                    help="before each backup, wait until the 1-minute load average is at most this ...")
    ap.add_argument("--quiet-wait", type=float, default=300, help="... for at most this many seconds")
    ap.add_argument("--max-load", type=float, default=2.5,
                    help="a row whose 1-minute load average is above this is run again (kept in the JSON)")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-ddl-stall.json"))
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    bb.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand", "--example", "ddl_probe"], cwd=ROOT)
    srv, data, sock = bb.start_server(base)
    try:
        if bb.sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'") != str(a.tables):
            bb.sql(sock, "DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest")
            print("preparing sysbench data ...", flush=True)
            bb.run(bb.sysbench(sock, a.tables, a.table_size, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
        data_bytes = bb.du(data)
        version = bb.sql(sock, "SELECT VERSION()")
        target = base / "backup"

        def stagehand(plan):
            return [str(SH), "-q", "run", str(ROOT / plan), "--state-dir", str(base / "state"),
                    "--set", f"socket={sock}", "--set", "user=root", "--set", f"datadir={data}",
                    "--set", f"target={target}", "--set", "prepare=false", "--set", "verify=false",
                    "--set", f"parallel={a.parallel}"]
        tools = {
            "(a) stagehand full-backup.yaml": stagehand("plans/full-backup.yaml"),
            "(b) stagehand full-backup-innodb-under-start.yaml": stagehand("docs/examples/full-backup-innodb-under-start.yaml"),
            "(c) mariadb-backup --backup": ["mariadb-backup", "--backup", f"--target-dir={target}", f"--socket={sock}",
                                            "--user=root", f"--parallel={a.parallel}"],
        }
        results, noisy = [], []
        meta = {"command": "python3 bench/ddl_stall_bench.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                "mariadb": version, "datadir_bytes": data_bytes, "tables": a.tables, "table_size": a.table_size,
                "parallel": a.parallel, "probe_interval_ms": 50}

        def save():  # after every row, so an interrupted run keeps what it measured
            Path(a.out).write_text(json.dumps({"meta": meta, "results": results,
                                               "rerun_for_load_above_%s" % a.max_load: noisy}, indent=1) + "\n")
        for rnd in range(1, a.rounds + 1):
            for name, cmd in tools.items():
                for _ in range(a.retries + 1):
                    r = one_backup(name, rnd, cmd, sock, target, a)
                    if r["loadavg_1m"] <= a.max_load:
                        break
                    noisy.append(r)
                    save()
                results.append(r)
                save()
        print(json.dumps(meta))
        print(table(results))
        if noisy:
            print("\nrows run again (load above %s):" % a.max_load)
            print(table(noisy))
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"], stderr=subprocess.DEVNULL)
        srv.wait()


if __name__ == "__main__":
    main()
