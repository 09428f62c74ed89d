#!/usr/bin/env python3
"""Hashing A/B benchmark: two stagehand builds (e.g. SHA-256 at 63496dc, BLAKE3 at HEAD)
and mariadb-backup on the same ~2 GB sysbench data, in one run, on an idle server.

    python3 bench/hash_ab_bench.py --binary sha256=/tmp/sh-sha256 --binary blake3=/tmp/sh-blake3 \
        [--dir /tmp/stagehand-hash-bench] [--tables 8] [--table-size 1000000] [--rounds 2] \
        [--parallel 1,2,4] [--json OUT]

Part A, hot copy: for each parallelism P and each round, every stagehand binary runs
plans/full-backup.yaml with prepare=false verify=false parallel=P, and mariadb-backup
--backup --parallel=P, in an order rotated so that a different tool goes first each round.
Part B, seal/verify/prepare: each stagehand binary runs the same plan with prepare=true
verify=true parallel=2; the step durations come from the run's report.json in its state
directory (`runs/<id>/report.json`, what `stagehand runs show --json` reads).

Every row starts with the page cache dropped and an empty target. CPU seconds and max RSS
are the process tree's (os.wait4), so they include what the tool starts and waits for
(the prepare step's mariadbd). Rows wait for a quiet machine (no CI processes, 1-minute
load below --wait-load); a row started above load 1.5 or ending above 2.0 is run again.

Needs: mariadb-server, mariadb-backup, sysbench, root (for drop_caches).
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, run, start_server, sql, sysbench, du  # noqa: E402

PLAN = ROOT / "plans/full-backup.yaml"
START_MAX, AFTER_MAX, MAX_ATTEMPTS = 1.5, 2.0, 3


def measured(cmd):
    """Runs cmd; returns wall seconds, CPU seconds (user+sys of the process and the children
    it waited for), max RSS MiB, exit code."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = []
    for line in p.stderr:
        err.append(line.decode(errors="replace"))
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    code = p.returncode
    if code != 0:
        sys.stderr.write("".join(err[-30:]))
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2),
            "max_rss_mib": round(ru.ru_maxrss / 1024, 1), "exit": code,
            "stderr_tail": "".join(err[-5:])[-1000:] if code != 0 else ""}


def drop_caches():
    """Every row starts from a cold page cache (needs root)."""
    r = subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("cannot drop the page cache (root needed): " + r.stderr.strip())


def load1():
    return round(os.getloadavg()[0], 2)


def other_work(own_pids):
    """Processes of other jobs that would compete with a measurement: the CI run (anything
    under /work/ci-clone, cargo, `it-*` test binaries, mariadbd servers under /tmp)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in own_pids:
            continue
        try:
            comm = Path(f"/proc/{d}/comm").read_text().strip()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if not cmd:
            continue
        exe0 = os.path.basename(cmd.split(" ", 1)[0])
        if ("/work/ci-clone" in cmd or comm == "cargo" or exe0 == "cargo" or comm.startswith("it-")
                or exe0.startswith("it-") or ("mariadbd" in cmd and "/tmp" in cmd)):
            found.append(f"{d} {cmd[:120]}")
    return found


def wait_quiet(own_pids, below, max_wait):
    t0, said = time.monotonic(), 0.0
    while True:
        busy, la = other_work(own_pids), load1()
        if not busy and la < below:
            return la
        waited = time.monotonic() - t0
        if waited > max_wait:
            sys.exit(f"the machine did not become quiet within {max_wait:.0f} s (load {la}; {len(busy)} other processes"
                     + (f", e.g. {busy[0]}" if busy else "") + ")")
        if waited - said >= 60 or said == 0.0:
            print(f"# waiting for a quiet machine: load {la}, {len(busy)} CI processes"
                  + (f" (e.g. {busy[0][:100]})" if busy else ""), flush=True)
            said = waited or 0.001
        time.sleep(5)


def stagehand_cmd(binary, base, state, sock, data, target, prepare, verify, parallel):
    return [binary, "-q", "run", str(PLAN), "--state-dir", str(state),
            "--set", f"socket={sock}", "--set", "user=root", "--set", f"datadir={data}",
            "--set", f"target={target}", "--set", f"prepare={'true' if prepare else 'false'}",
            "--set", f"verify={'true' if verify else 'false'}", "--set", f"parallel={parallel}"]


def run_report(state: Path):
    """The run's report.json (the only run in a fresh state directory)."""
    reports = sorted(state.glob("runs/*/report.json"))
    if len(reports) != 1:
        return None
    return json.loads(reports[0].read_text())


def step_seconds(report):
    out = {}
    if not report:
        return out
    for s in report.get("steps", []):
        if s.get("duration_ms") is not None:
            out[s["id"]] = round(s["duration_ms"] / 1000, 3)
    return out


def one_row(part, tool, parallel, rnd, cmd, target, state, own_pids, a):
    attempts = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        shutil.rmtree(target, ignore_errors=True)
        if state:
            shutil.rmtree(state, ignore_errors=True)
        wait_quiet(own_pids, a.wait_load, a.max_wait)
        drop_caches()
        la0 = load1()
        res = measured(cmd)
        la1 = load1()
        res.update({"part": part, "tool": tool, "parallel": parallel, "round": rnd, "attempt": attempt,
                    "loadavg_before": la0, "loadavg_after": la1})
        if state:
            rep = run_report(state)
            res["steps_s"] = step_seconds(rep)
            res["run_status"] = rep.get("status") if rep else None
            if rep:
                prep = next((s for s in rep["steps"] if s["id"] == "prepare"), None)
                if prep and isinstance(prep.get("outputs"), dict) and "seconds" in prep["outputs"]:
                    res["prepare_output_seconds"] = prep["outputs"]["seconds"]
                res["run_duration_s"] = round(rep["duration_ms"] / 1000, 3)
        manifest = target / "stagehand.json"
        if manifest.exists():
            try:
                m = json.loads(manifest.read_text())
                hashes = [f.get("hash") or f.get("sha256") or "" for f in m.get("files", [])]
                res["manifest_hash"] = sorted({"blake3" if h.startswith("blake3:") else "sha256" if len(h) == 64 else "?"
                                               for h in hashes})
                res["manifest_files"] = len(m.get("files", []))
            except (ValueError, KeyError):
                pass
        res["backup_bytes"] = du(target) if target.exists() else 0
        noisy = la0 > START_MAX or la1 > AFTER_MAX
        res["noisy"] = noisy
        if not res["stderr_tail"]:
            del res["stderr_tail"]
        print(json.dumps(res), flush=True)
        attempts.append(res)
        shutil.rmtree(target, ignore_errors=True)
        if not noisy:
            break
        print(f"# {part} {tool} P={parallel} round {rnd}: load {la0} before / {la1} after: running it again", flush=True)
    final = attempts[-1]
    final["attempts"] = len(attempts)
    for earlier in attempts[:-1]:
        earlier["superseded"] = True
    return attempts


def peers(a):
    return ["mariadb-backup"] + (["mariadb-backup+sync"] if a.durable_peer else [])


def median(xs):
    return round(statistics.median(xs), 2) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--dir", default="/tmp/stagehand-hash-bench")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=1000000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallel", default="1,2,4")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--durable-peer", action="store_true",
                    help="also run `mariadb-backup --backup … && sync`: the peer with the durability stagehand gives "
                         "(it syncs every file before its manifest; mariadb-backup leaves its copy in the page cache)")
    ap.add_argument("--wait-load", type=float, default=1.0,
                    help="each row waits until the 1-minute load is below this (and no CI process runs)")
    ap.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine before giving up")
    ap.add_argument("--keep-data-under-gb", type=float, default=5.0,
                    help="at the end, delete the data dir if it is larger than this")
    a = ap.parse_args()
    bins = {}
    for b in a.binary:
        name, _, path = b.partition("=")
        if not name or not path or not os.access(path, os.X_OK):
            sys.exit(f"--binary {b}: want NAME=PATH of an executable")
        bins[name] = path
    pars = [int(x) for x in a.parallel.split(",")]
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    own = {os.getpid()}
    srv, data, sock = start_server(base)
    own.add(srv.pid)
    results = []
    try:
        if sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'") != str(a.tables):
            sql(sock, "DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest")
            print("# preparing sysbench data ...", flush=True)
            t0 = time.monotonic()
            run(sysbench(sock, a.tables, a.table_size, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
            print(f"# prepared in {time.monotonic() - t0:.0f} s", flush=True)
        # Idle means idle: flush the dirty pages sysbench left before any row.
        sql(sock, "SET GLOBAL innodb_max_dirty_pages_pct=0")
        for _ in range(600):
            if sql(sock, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                         "WHERE VARIABLE_NAME='INNODB_BUFFER_POOL_PAGES_DIRTY'") == "0":
                break
            time.sleep(1)
        sql(sock, "SET GLOBAL innodb_max_dirty_pages_pct=DEFAULT")
        data_bytes = du(data)
        version = sql(sock, "SELECT VERSION()")
        mb_version = subprocess.run(["mariadb-backup", "--version"], capture_output=True, text=True)
        header = {"server": version, "data_bytes": data_bytes, "tables": a.tables, "table_size": a.table_size,
                  "binaries": bins, "mariadb_backup": (mb_version.stdout + mb_version.stderr).strip(),
                  "nproc": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        print("# " + json.dumps(header), flush=True)
        target = base / "backup"
        la = wait_quiet(own, a.wait_load, a.max_wait)
        print(f"# quiet: load {la}; measuring", flush=True)

        tools = list(bins) + peers(a)
        for pi, p in enumerate(pars):
            for rnd in range(1, a.rounds + 1):
                k = (rnd - 1 + pi) % len(tools)
                for tool in tools[k:] + tools[:k]:
                    if tool.startswith("mariadb-backup"):
                        cmd = ["mariadb-backup", "--backup", f"--target-dir={target}", f"--socket={sock}",
                               "--user=root", f"--parallel={p}"]
                        if tool.endswith("+sync"):
                            # `sync` with no argument: the whole page cache, as the datadir is idle
                            # and on the same file system this flushes the copy and nothing else.
                            cmd = ["sh", "-c", " ".join(cmd) + " && sync"]
                        state = None
                    else:
                        state = base / f"state-{tool}"
                        cmd = stagehand_cmd(bins[tool], base, state, sock, data, target, False, False, p)
                    results += one_row("A", tool, p, rnd, cmd, target, state, own, a)
        names = list(bins)
        for rnd in range(1, a.rounds + 1):
            k = (rnd - 1) % len(names)
            for tool in names[k:] + names[:k]:
                state = base / f"state-{tool}"
                cmd = stagehand_cmd(bins[tool], base, state, sock, data, target, True, True, 2)
                results += one_row("B", tool, 2, rnd, cmd, target, state, own, a)
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"],
                       stderr=subprocess.DEVNULL)
        srv.wait()
        for d in base.glob("state-*"):
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(base / "backup", ignore_errors=True)
        size = du(data) if data.exists() else 0
        if size > a.keep_data_under_gb * 1e9:
            shutil.rmtree(data, ignore_errors=True)
            print(f"# server stopped; data dir ({size / 1e9:.2f} GB) deleted", flush=True)
        else:
            print(f"# server stopped; data dir kept ({size / 1e9:.2f} GB): {data}", flush=True)
    report(results, header, bins, pars, a)


def report(results, header, bins, pars, a):
    final = [r for r in results if not r.get("superseded")]
    stepcols = ["copy_innodb", "copy_other", "seal", "verify", "prepare"]
    cols = ["part", "tool", "parallel", "round", "wall_s", "cpu_s", "max_rss_mib", *[f"{s}_s" for s in stepcols],
            "prepare_output_seconds", "loadavg_before", "loadavg_after", "exit", "attempts"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in final:
        row = []
        for c in cols:
            if c.endswith("_s") and c[:-2] in stepcols:
                v = r.get("steps_s", {}).get(c[:-2], "")
            else:
                v = r.get(c, "")
            row.append(str(v))
        lines.append("| " + " | ".join(row) + " |")
    print("\n" + "\n".join(lines) + "\n")

    summary = {"A": {}, "B": {}}
    print("Part A medians (wall_s / cpu_s):")
    for p in pars:
        med = {}
        for tool in list(bins) + peers(a):
            rows = [r for r in final if r["part"] == "A" and r["tool"] == tool and r["parallel"] == p and r["exit"] == 0]
            med[tool] = {"wall_s": median([r["wall_s"] for r in rows]), "cpu_s": median([r["cpu_s"] for r in rows]),
                         "max_rss_mib": median([r["max_rss_mib"] for r in rows]), "n": len(rows)}
        summary["A"][p] = med
        print(f"  P={p}: " + "; ".join(f"{t} {m['wall_s']} / {m['cpu_s']} (n={m['n']})" for t, m in med.items()))
    for p in pars:
        med = summary["A"][p]
        names = list(bins)
        if len(names) >= 2:
            x, y = names[-1], names[0]
            for metric in ("wall_s", "cpu_s"):
                def ratio(u, v):
                    return round(med[u][metric] / med[v][metric], 3) if med[u][metric] and med[v][metric] else None
                print(f"  P={p} {metric}: {x}/{y} = {ratio(x, y)}, "
                      + ", ".join(f"{x}/{peer} = {ratio(x, peer)}" for peer in peers(a)))
    print("Part B medians:")
    for tool in bins:
        rows = [r for r in final if r["part"] == "B" and r["tool"] == tool and r["exit"] == 0]
        m = {"wall_s": median([r["wall_s"] for r in rows]), "cpu_s": median([r["cpu_s"] for r in rows]),
             "n": len(rows), "prepare_output_seconds": median([r["prepare_output_seconds"] for r in rows if "prepare_output_seconds" in r])}
        for s in ("copy_innodb", "copy_other", "seal", "verify", "prepare"):
            m[f"{s}_s"] = median([r["steps_s"][s] for r in rows if s in r.get("steps_s", {})])
        summary["B"][tool] = m
        print(f"  {tool}: {json.dumps(m)}")
    if a.json_out:
        out = Path(a.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"header": header, "rows": results, "summary": summary, "table": lines}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
