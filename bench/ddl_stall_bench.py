#!/usr/bin/env python3
"""DDL, MyISAM, Aria and InnoDB stalls during a hot backup (issue 14), side by side on the
same data in one run (each round in a rotated order: a b c, b c a, c a b, ...):

  (a) stagehand plans/full-backup.yaml (the default: everything copied under BACKUP STAGE
      START, a `catch_up` pass under START, BLOCK_DDL only for the `reconcile` step),
  (b) stagehand docs/examples/full-backup-hold-ddl.yaml (the old order: BLOCK_DDL held
      through the whole copy),
  (c) mariadb-backup --backup,

each backup run while `examples/ddl_probe.rs` does, every 50 ms and each on its own
connection, a CREATE+DROP TABLE, a MyISAM one-row INSERT, an Aria (TRANSACTIONAL=1) one-row
INSERT and an InnoDB one-row commit. Rounds alternate a, b, c, a, b, c, ...; every backup
starts with a cold page cache. Writes one run's JSON to --out (default
docs/benchmarks-ddl-stall.json, which in the repository holds several runs merged under
"runs": give --out a file of its own) and prints a Markdown table. For stagehand rows it also keeps the manifest's `locks` and, from the
run's report.json, each step's start and duration (which step held BLOCK_DDL how long).

    python3 bench/ddl_stall_bench.py [--dir /tmp/stagehand-ddl-bench] [--tables 8] [--table-size 500000]
        [--sysbench-tables 8]

With --no-probe the same backups run with the server idle: the tools' own wall and CPU
time, without the work the probe's statements add to the server (under (a) they run during
the copy, under (b) they wait for it).

With --sysbench-tables N < --tables, only sbtest1..N are made by `sysbench prepare`; the
others are copies of them (same rows) made with transportable tablespaces (FLUSH TABLES
... FOR EXPORT, copy the .ibd/.cfg, ALTER TABLE ... IMPORT TABLESPACE), which takes the
time of a file copy. Tables already there are kept, so a run on more tables reuses the
datadir of a run on fewer.

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


def last_run_steps(state: Path):
    """Each step's start, duration, status and scalar outputs, from the newest run's report.json."""
    reports = sorted((state / "runs").glob("*/report.json"), key=lambda f: f.stat().st_mtime)
    if not reports:
        return None
    rep = json.loads(reports[-1].read_text())
    steps = {"run_id": rep.get("run_id")}
    for st in rep.get("steps", []):
        outs = {k: v for k, v in (st.get("outputs") or {}).items() if isinstance(v, (int, float, str, bool))}
        steps[st["id"]] = {"started_at": st.get("started_at"), "duration_ms": st.get("duration_ms"),
                           "status": st.get("status"), "outputs": outs}
    return steps


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
    probe = None if a.no_probe else subprocess.Popen(
        [str(PROBE), "--socket", str(sock), "--interval-ms", "50", "--stop-file", str(stop)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    res = {"tool": tool, "round": rnd}
    res.update(bb.measured(cmd))
    time.sleep(1)
    stop.touch()
    out = None
    try:
        out, _ = probe.communicate(timeout=600) if probe else (None, None)
    except subprocess.TimeoutExpired:
        probe.send_signal(signal.SIGTERM)
        out, _ = probe.communicate()
    res["probe"] = json.loads(out or "{}")
    for c in ("ddl", "myisam", "aria", "innodb"):
        p = res["probe"].get(c, {})
        res[f"{c}_worst_ms"] = p.get("worst_ms")
        res[f"{c}_p99_ms"] = p.get("p99_ms")
    manifest = target / "stagehand.json"
    if manifest.exists():
        locks = json.loads(manifest.read_text()).get("locks", {})
        res["locks"] = locks
        holds = locks.get("holds_ms", {})
        res["start_ms"] = holds.get("start")
        res["flush_ms"] = holds.get("flush")
        res["block_ddl_ms"] = holds.get("block_ddl")
        res["block_commit_ms"] = holds.get("block_commit")
        res["ddl_blocked_ms"] = locks.get("ddl_blocked_ms")
        res["commit_blocked_ms"] = locks.get("commit_blocked_ms")
        res["steps"] = last_run_steps(target.parent / "state")
    res["waited_for_quiet_s"] = waited
    res["loadavg_before"] = load_before
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res), flush=True)
    shutil.rmtree(target, ignore_errors=True)
    return res


COLS = ["tool", "round", "wall_s", "ddl_worst_ms", "ddl_p99_ms", "myisam_worst_ms", "myisam_p99_ms",
        "aria_worst_ms", "aria_p99_ms", "innodb_worst_ms", "innodb_p99_ms", "start_ms", "flush_ms", "block_ddl_ms", "block_commit_ms", "ddl_blocked_ms",
        "commit_blocked_ms", "loadavg_before", "loadavg_1m", "exit"]


def table(results):
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    for r in results:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in COLS) + " |")
    return "\n".join(lines)


def doc_table(results):
    """The table of docs/BENCHMARKS.md: worst / p99 per probe class, lock holds, load."""
    def f(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v)
    head = ["tool", "round", "wall_s", "cpu_s", "DDL worst / p99 ms", "MyISAM worst / p99 ms", "Aria worst / p99 ms",
            "InnoDB worst / p99 ms", "start ms", "block_ddl ms", "block_commit ms", "ddl_blocked ms",
            "commit_blocked ms", "load before", "loadavg_1m", "exit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cls = [f"{f(r.get(c + '_worst_ms'))} / {f(r.get(c + '_p99_ms'))}" if r.get(c + "_worst_ms") is not None
               else "(no probe)" for c in ("ddl", "myisam", "aria", "innodb")]
        row = [r["tool"], str(r["round"]), f(r.get("wall_s")), f(r.get("cpu_s")), *cls,
               *(f(r.get(k)) for k in ("start_ms", "block_ddl_ms", "block_commit_ms", "ddl_blocked_ms",
                                       "commit_blocked_ms", "loadavg_before", "loadavg_1m", "exit"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _t(iso):
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def where_worst(r):
    """For a stagehand row: per probe class, the steps its worst sample overlapped (the sample
    ends at `worst_at` and lasted `worst_ms`), the background redo copy left out."""
    steps = r.get("steps") or {}
    out = {}
    for c in ("ddl", "myisam", "aria", "innodb"):
        p = (r.get("probe") or {}).get(c) or {}
        if not p.get("worst_at"):
            continue
        end = _t(p["worst_at"])
        start = end - p["worst_ms"] / 1000
        hit = []
        for sid, st in steps.items():
            if sid in ("run_id", "redo") or not isinstance(st, dict) or not st.get("started_at"):
                continue
            s0 = _t(st["started_at"])
            s1 = s0 + (st.get("duration_ms") or 0) / 1000
            if s0 <= end and s1 >= start:
                hit.append(sid)
        out[c] = {"worst_ms": p["worst_ms"], "from": p["worst_at"][11:23], "steps": hit or ["(before or after the run)"]}
    return out


def prepare_data(sock, data, a):
    def count():
        return int(bb.sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest' "
                                "AND TABLE_NAME REGEXP '^sbtest[0-9]+$'"))
    seed = min(a.sysbench_tables or a.tables, a.tables)
    have = count() if bb.sql(sock, "SHOW DATABASES LIKE 'sbtest'") else 0
    # Kept only when it is sbtest1..have with have <= tables (and the seeds are all there).
    names = [f"sbtest{i}" for i in range(1, have + 1)]
    ok = seed <= have <= a.tables and all(bb.sql(sock, f"SHOW TABLES FROM sbtest LIKE '{n}'") for n in names)
    if ok:
        rows = bb.sql(sock, "SELECT COUNT(*) FROM sbtest.sbtest1")
        ok = rows == str(a.table_size)
    if not ok:
        bb.sql(sock, "DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest")
        print(f"preparing sysbench data: {seed} tables ...", flush=True)
        bb.run(bb.sysbench(sock, seed, a.table_size, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
        have = seed
    for i in range(have + 1, a.tables + 1):
        src = f"sbtest{(i - 1) % seed + 1}"
        print(f"sbtest{i}: a copy of {src} (transportable tablespace) ...", flush=True)
        bb.sql(sock, f"CREATE TABLE sbtest.sbtest{i} LIKE sbtest.{src}; ALTER TABLE sbtest.sbtest{i} DISCARD TABLESPACE")
        d = data / "sbtest"
        try:
            # FOR EXPORT holds its lock only while its session lives: copy while it is open.
            cli = subprocess.Popen(["mariadb", "--no-defaults", "--unbuffered", "-S", str(sock), "-uroot", "-N"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            cli.stdin.write(f"FLUSH TABLES sbtest.{src} FOR EXPORT; SELECT 'exported';\n")
            cli.stdin.flush()
            if cli.stdout.readline().strip() != "exported":
                raise RuntimeError(f"FLUSH TABLES sbtest.{src} FOR EXPORT failed")
            for ext in ("ibd", "cfg"):
                shutil.copyfile(d / f"{src}.{ext}", d / f"sbtest{i}.{ext}")
            cli.communicate("UNLOCK TABLES;\n")
            bb.sql(sock, f"ALTER TABLE sbtest.sbtest{i} IMPORT TABLESPACE")
        except BaseException:
            bb.sql(sock, f"DROP TABLE IF EXISTS sbtest.sbtest{i}")  # not left half made for the next run
            raise
        finally:
            (d / f"sbtest{i}.cfg").unlink(missing_ok=True)
    if count() != a.tables:
        sys.exit(f"sbtest has {count()} tables, wanted {a.tables}")
    checkpoint(sock)


def checkpoint(sock):
    """Flushes every dirty page so InnoDB makes a checkpoint: the backups' redo logs then
    start after the set-up. Without it the IMPORTs above stay in the log since the last
    checkpoint, and a stagehand backup refuses to run (it cannot tell an import made
    before the backup from one made during the copy)."""
    pct = bb.sql(sock, "SELECT @@innodb_max_dirty_pages_pct")
    bb.sql(sock, "SET GLOBAL innodb_max_dirty_pages_pct=0")
    try:
        for _ in range(600):
            age = bb.sql(sock, "SHOW GLOBAL STATUS LIKE 'Innodb_checkpoint_age'").split()[-1]
            if int(age) < 1 << 20:
                return
            time.sleep(0.1)
        sys.exit("InnoDB made no checkpoint within 60 s")
    finally:
        bb.sql(sock, f"SET GLOBAL innodb_max_dirty_pages_pct={pct}")


def render(name, saved):
    print(f"\n## {name}" if name else "")
    print(json.dumps(saved["meta"]))
    print(doc_table(saved["results"]))
    for r in saved["results"]:
        if r.get("steps"):
            w = where_worst(r)
            print(f"{r['tool']} round {r['round']}: " + "; ".join(
                f"{c} {v['worst_ms']:.0f} ms ending {v['from']} during {'+'.join(v['steps'])}" for c, v in w.items()))
            lk = r["steps"].get("lock_ddl", {}).get("outputs", {})
            print(f"   lock_ddl acquire_ms {lk.get('acquire_ms')}; step ms: " + ", ".join(
                f"{k} {v.get('duration_ms')}" for k, v in r["steps"].items() if isinstance(v, dict)))
    for k, v in saved.items():
        if k.startswith("rerun_for_load") and v:
            print(f"\n{k}:\n" + doc_table(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-ddl-bench")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=500000)
    ap.add_argument("--sysbench-tables", type=int, default=None,
                    help="make only this many tables with sysbench prepare, the rest as copies of them")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2, help="copy threads, for every tool")
    ap.add_argument("--settle", type=float, default=20, help="seconds of quiet before each backup")
    ap.add_argument("--quiet-load", type=float, default=1.5,
                    help="before each backup, wait until the 1-minute load average is at most this ...")
    ap.add_argument("--quiet-wait", type=float, default=300, help="... for at most this many seconds")
    ap.add_argument("--max-load", type=float, default=2.5,
                    help="a row whose 1-minute load average is above this is run again (kept in the JSON)")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--no-probe", action="store_true",
                    help="run the backups without the probe: compares the tools' wall and CPU time alone")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-ddl-stall.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the docs/BENCHMARKS.md tables of a saved run")
    a = ap.parse_args()
    if a.render:
        saved = json.loads(Path(a.render).read_text())
        # docs/benchmarks-ddl-stall.json holds several runs under "runs"; a run's own --out is one run.
        for name, run in (saved["runs"].items() if "runs" in saved else [("", saved)]):
            render(name, run)
        return
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    bb.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand", "--example", "ddl_probe"], cwd=ROOT)
    srv, data, sock = bb.start_server(base)
    try:
        prepare_data(sock, data, a)
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
            "(b) stagehand full-backup-hold-ddl.yaml": stagehand("docs/examples/full-backup-hold-ddl.yaml"),
            "(c) mariadb-backup --backup": ["mariadb-backup", "--backup", f"--target-dir={target}", f"--socket={sock}",
                                            "--user=root", f"--parallel={a.parallel}"],
        }
        results, noisy = [], []
        meta = {"command": "python3 bench/ddl_stall_bench.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                "mariadb": version, "datadir_bytes": data_bytes, "tables": a.tables, "table_size": a.table_size,
                "parallel": a.parallel, "probe_interval_ms": None if a.no_probe else 50, "sysbench_tables": a.sysbench_tables,
                "table_files_bytes": bb.du(data / "sbtest")}

        def save():  # after every row, so an interrupted run keeps what it measured
            Path(a.out).write_text(json.dumps({"meta": meta, "results": results,
                                               "rerun_for_load_above_%s" % a.max_load: noisy}, indent=1) + "\n")
        names = list(tools)
        for rnd in range(1, a.rounds + 1):
            # Each round starts one tool later, so that no tool always follows the same
            # one (a backup pays for the file deletion and writeback of the one before).
            shift = (rnd - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                cmd = tools[name]
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
