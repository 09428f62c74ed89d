#!/usr/bin/env python3
"""Binlog archive lag and point-in-time replay throughput (issue 17), on the same data in
one run:

  1. Archive lag under write load. A throwaway server (log-bin, server-id 1,
     gtid_strict_mode, binlog_format ROW) with sysbench oltp_write_only tables, one hot
     backup (plans/backup-to-s3.yaml) into a local repository, then rows of
     `sysbench oltp_write_only --threads=2 --time=60`: without the archiver (baseline),
     and with `plans/binlog-archive.yaml --set mode=follow` running at each
     `segment_max_age` given. During every row (baselines too, so they pay the same
     polling) the source's @@gtid_binlog_pos and the archive's end_state
     (`stagehand binlogs list --json`) are polled every --poll seconds; the lag of a
     transaction is the poll time its GTID is first seen in the archive minus the poll
     time it is first seen on the source. After sysbench the archiver is given time to
     catch up, then stopped with SIGTERM.

  2. Replay throughput over that archive, from the backup to the archive's end
     (--replay-rows):
     (a) plans/restore-pitr.yaml --set to=latest, with replay_method=pipe
         (mariadb-binlog | mariadb) and replay_method=sql_thread (replay_workers 4 and 0):
         the replay step's replay_seconds, transactions, bytes;
     (b) the server's SQL thread by hand: the backup restored with plans/restore-pitr.yaml
         --set to=<backup GTID> (replays nothing), that datadir copied, the segments
         decompressed and installed as relay logs (a synthetic ROTATE after each file's
         FORMAT_DESCRIPTION event, see docs/design/pitr.md §2.6), a server started on the
         copy, START SLAVE SQL_THREAD, timed until gtid_slave_pos is the archive's end;
         with slave_parallel_threads=4 (optimistic) and 0 (serial).
     Each method is checked exact: CHECKSUM TABLE of every sbtest table equal to the
     source's.

Every row records the 1-minute load average before and after it; before each row the
script waits (at most --quiet-wait s) for the load to drop to --quiet-load, and runs a row
again once if its load before was still above that (both attempts are kept in the JSON).

    python3 bench/pitr_bench.py [--dir /tmp/stagehand-pitr-bench] [--tables 4] [--table-size 100000]
        [--time 60] [--ages 30s,5s] [--snapshot /tmp/stagehand-pitr-snap]

Needs mariadb-server, mariadb-client, sysbench, zstd, and a release build
(target/release/stagehand; the script does not build it). Run from anywhere; plans are
given by their path in the repository. Writes docs/benchmarks-pitr.json (--out) and
prints the Markdown tables (`--render FILE` prints them again from a saved run).
"""
import argparse, json, os, shutil, signal, struct, subprocess, sys, threading, time, zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SH = ROOT / "target/release/stagehand"
PLANS = ROOT / "plans"  # --snapshot copies the binary and the plans and uses the copies


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def load1():
    return round(os.getloadavg()[0], 2)


def wait_quiet(a):
    t0 = time.monotonic()
    while load1() > a.quiet_load and time.monotonic() - t0 < a.quiet_wait:
        time.sleep(5)
    return round(time.monotonic() - t0)


# --- servers -------------------------------------------------------------------------

def mysql_cmd(sock):
    return ["mariadb", "--no-defaults", "-S", str(sock), "-uroot"]


def sql(sock, q):
    return subprocess.run(mysql_cmd(sock) + ["-N", "-B", "-e", q], check=True, capture_output=True,
                          text=True).stdout.strip()


def start_server(datadir: Path, sock: Path, log: Path, opts, install=False):
    """mariadbd as root (--user=root), no TCP, on datadir; waits until it answers."""
    base = ["--no-defaults", f"--datadir={datadir}", "--user=root"]
    if install:
        run(["mariadb-install-db", *base, "--auth-root-authentication-method=normal", "--skip-test-db"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = subprocess.Popen(["mariadbd", *base, f"--socket={sock}", "--skip-networking", f"--log-error={log}",
                            f"--pid-file={datadir}/bench.pid", *opts],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        if srv.poll() is not None:
            sys.exit(f"mariadbd on {datadir} exited ({srv.returncode}); see {log}")
        if subprocess.run(mysql_cmd(sock) + ["-e", "SELECT 1"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            return srv
        time.sleep(0.1)
    sys.exit(f"mariadbd on {datadir} did not start; see {log}")


def stop_server(srv, sock):
    if srv is None or srv.poll() is not None:
        return
    subprocess.run(mysql_cmd(sock) + ["-e", "SHUTDOWN"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv.wait(timeout=300)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()


def checksums(sock, tables):
    names = ", ".join(f"sbtest.sbtest{i}" for i in range(1, tables + 1))
    out = sql(sock, f"CHECKSUM TABLE {names}")
    return dict(line.split("\t") for line in out.splitlines())


def seq_of(pos: str, domain="0"):
    """The sequence number of `domain` in a GTID position (0 when absent)."""
    for g in (pos or "").split(","):
        parts = g.strip().split("-")
        if len(parts) == 3 and parts[0] == domain:
            return int(parts[2])
    return 0


def sysbench(sock, a, *extra):
    return ["sysbench", "oltp_write_only", "--db-driver=mysql", f"--mysql-socket={sock}", "--mysql-user=root",
            "--mysql-db=sbtest", f"--tables={a.tables}", f"--table-size={a.table_size}", *extra]


def archive_listing(repo):
    p = subprocess.run([str(SH), "binlogs", "list", str(repo), "--json"], capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return None


# --- 1. archive lag ------------------------------------------------------------------

class Poller:
    """Polls the source's @@gtid_binlog_pos and the archive's end_state, each on its own
    thread every `every` s; records, per sequence number, the first poll that saw it."""

    def __init__(self, sock, repo, every):
        self.sock, self.repo, self.every = sock, repo, every
        self.src, self.arch = {}, {}        # seq -> first time seen (time.time())
        self.src_max = self.arch_max = None
        self.stop = threading.Event()
        self.polls = {"source": 0, "archive": 0}
        self.threads = [threading.Thread(target=self._source, daemon=True),
                        threading.Thread(target=self._archive, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _record(self, seen, seq, t, last):
        if last is not None:
            for s in range(last + 1, seq + 1):
                seen[s] = t
        return seq if last is None else max(last, seq)

    def _source(self):
        cli = subprocess.Popen(mysql_cmd(self.sock) + ["--unbuffered", "-N", "-B"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        try:
            while not self.stop.is_set():
                t0 = time.time()
                cli.stdin.write("SELECT @@gtid_binlog_pos;\n")
                cli.stdin.flush()
                pos = cli.stdout.readline().strip()
                t = time.time()
                self.src_max = self._record(self.src, seq_of(pos), (t0 + t) / 2, self.src_max)
                self.polls["source"] += 1
                self.stop.wait(max(0, self.every - (time.time() - t0)))
        finally:
            cli.stdin.close()
            cli.wait()

    def _archive(self):
        while not self.stop.is_set():
            t0 = time.time()
            lst = archive_listing(self.repo)
            t = time.time()
            if lst is not None:
                self.arch_max = self._record(self.arch, seq_of(lst.get("end_state") or ""), (t0 + t) / 2, self.arch_max)
                self.polls["archive"] += 1
            self.stop.wait(max(0, self.every - (time.time() - t0)))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def archiver_cmd(a, base, sock, repo, age, mode="follow"):
    return [str(SH), "run", str(PLANS / "binlog-archive.yaml"), "--state-dir", str(base / "state"),
            "--set", f"repository={repo}", "--set", f"socket={sock}", "--set", "user=root",
            "--set", f"mode={mode}", "--set", f"segment_max_age={age}", "--set", f"server_id={a.server_id}"]


def wait_archived(repo, target_seq, timeout, proc=None):
    """Waits until the archive's end reaches target_seq; returns the seconds it took or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and (proc is None or proc.poll() is None):
        lst = archive_listing(repo)
        if lst and seq_of(lst.get("end_state") or "") >= target_seq:
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    return None


def cpu_s(pid):
    """User+system CPU seconds of a running process (and its reaped children)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def lag_row(name, age, rnd, a, base, sock, repo):
    res = {"row": name, "segment_max_age": age, "round": rnd}
    arch = None
    if age:
        log = open(base / f"archiver-{age}-{rnd}.log", "w")
        arch = subprocess.Popen(archiver_cmd(a, base, sock, repo, age), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        # Catch up on whatever the server logged while no archiver ran, before measuring.
        backlog = seq_of(sql(sock, "SELECT @@gtid_binlog_pos"))
        res["backlog_catch_up_s"] = wait_archived(repo, backlog, a.catch_up_timeout, arch)
        if arch.poll() is not None:
            res["archiver_exit"] = arch.returncode
            print(json.dumps(res), flush=True)
            return res
    res["waited_for_quiet_s"] = wait_quiet(a)  # after the catch-up, which loads the machine too
    res["loadavg_before"] = load1()
    poller = Poller(sock, repo, a.poll).start()
    time.sleep(2)
    t_start = time.time()
    seq_start = seq_of(sql(sock, "SELECT @@gtid_binlog_pos"))
    cpu0 = cpu_s(arch.pid) if arch else None
    sb = subprocess.run(sysbench(sock, a, "--threads=2", f"--time={a.time}", "--report-interval=10", "run"),
                        capture_output=True, text=True)
    t_end = time.time()
    seq_end = seq_of(sql(sock, "SELECT @@gtid_binlog_pos"))
    if arch and cpu0 is not None:
        res["archiver_cpu_s_during_sysbench"] = round(cpu_s(arch.pid) - cpu0, 2)
    res["loadavg_after_sysbench"] = load1()
    (base / f"sysbench-{name}-{rnd}.log").write_text(sb.stdout + sb.stderr)
    for line in sb.stdout.splitlines():
        line = line.strip()
        if line.startswith("transactions:"):
            res["tps"] = float(line.split("(")[1].split()[0])
            res["sysbench_transactions"] = int(line.split()[1])
        if line.startswith("95th percentile:"):
            res["sysbench_p95_ms"] = float(line.split()[-1])
    res["source_transactions"] = seq_end - seq_start
    if arch:
        caught = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.catch_up_timeout:
            if poller.arch_max is not None and poller.arch_max >= seq_end:
                caught = round(time.monotonic() - t0, 1)
                break
            time.sleep(0.5)
        res["caught_up_after_sysbench_s"] = caught
        time.sleep(a.poll * 2)
        arch.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            arch.wait(timeout=120)
        except subprocess.TimeoutExpired:
            arch.kill()
            arch.wait()
            res["archiver_killed"] = True
        res["archiver_stop_s"] = round(time.monotonic() - t0, 2)
        res["archiver_exit"] = arch.returncode
        log.close()
        if caught is None:  # what the SIGTERM uploaded still counts, with its later time
            time.sleep(a.poll * 2)
    else:
        time.sleep(a.poll * 2)
    poller.finish()
    res["polls"] = poller.polls
    if arch:
        lags = sorted(poller.arch[s] - poller.src[s] for s in range(seq_start + 1, seq_end + 1)
                      if s in poller.src and s in poller.arch)
        res["lag_transactions"] = len(lags)
        res["lag_missing"] = (seq_end - seq_start) - len(lags)
        for p in (50, 90, 99):
            v = pct(lags, p)
            res[f"lag_p{p}_s"] = None if v is None else round(v, 2)
        res["lag_max_s"] = round(lags[-1], 2) if lags else None
        res["lag_min_s"] = round(lags[0], 2) if lags else None
        # Lag over time: one (seconds since sysbench start, lag) sample per 1/20 of the run.
        step = max(1, len(range(seq_start + 1, seq_end + 1)) // 40)
        res["lag_samples"] = [(round(poller.src[s] - t_start, 1), round(poller.arch[s] - poller.src[s], 2))
                              for s in range(seq_start + 1, seq_end + 1, step) if s in poller.src and s in poller.arch]
    res["loadavg_1m"] = load1()
    print(json.dumps({k: v for k, v in res.items() if k != "lag_samples"}), flush=True)
    return res


# --- 2. replay -----------------------------------------------------------------------

def restore_pitr(base, repo, to, name, extra=()):
    """plans/restore-pitr.yaml into base/<name>-data; returns (report, wall seconds)."""
    work, data, sockdir = base / f"{name}-work", base / f"{name}-data", base / f"{name}-sock"
    for d in (work, data, sockdir):
        shutil.rmtree(d, ignore_errors=True)
    cmd = [str(SH), "run", str(PLANS / "restore-pitr.yaml"), "--json", "--state-dir", str(base / "state"),
           "--set", f"repository={repo}", "--set", f"to={to}", "--set", f"workdir={work}",
           "--set", f"datadir={data}", "--set", f"check_socket={sockdir}/check.sock", *extra]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = round(time.monotonic() - t0, 2)
    (base / f"{name}-restore.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    try:
        rep = json.loads(p.stdout)
    except json.JSONDecodeError:
        rep = None
    shutil.rmtree(work, ignore_errors=True)
    return rep, wall, p.returncode, data


def step_outputs(rep, sid):
    for st in (rep or {}).get("steps", []):
        if st.get("id") == sid:
            return st.get("outputs") or {}, st
    return {}, {}


def table_checks(datadir, base, name, tables, source_sums):
    sock = base / f"{name}.sock"
    srv = start_server(datadir, sock, base / f"{name}-check.err", ["--skip-log-bin", "--server-id=3"])
    try:
        sums = checksums(sock, tables)
        pos = sql(sock, "SELECT @@gtid_slave_pos")
    finally:
        stop_server(srv, sock)
    return {"checksums_equal": sums == source_sums, "gtid_slave_pos_after": pos,
            **({} if sums == source_sums else {"checksums": sums})}


def plan_row(a, base, repo, source_sums, end_state, method, workers, rnd):
    """plans/restore-pitr.yaml --set to=latest with replay_method (pipe: mariadb-binlog |
    mariadb; sql_thread: stagehand's relay-log replay with `workers`)."""
    if method == "pipe":
        res = {"method": "restore-pitr.yaml replay_method=pipe (mariadb-binlog \\| mariadb)", "threads": 1}
        extra = ["--set", "replay_method=pipe"]
    else:
        res = {"method": f"restore-pitr.yaml replay_method=sql_thread replay_workers={workers}", "threads": workers}
        extra = ["--set", "replay_method=sql_thread", "--set", f"replay_workers={workers}"]
    res["round"] = rnd
    res["waited_for_quiet_s"] = wait_quiet(a)
    res["loadavg_before"] = load1()
    name = f"plan-{method}{workers}"
    rep, wall, code, data = restore_pitr(base, repo, "latest", name, extra)
    res["loadavg_1m"] = load1()
    res["plan_wall_s"], res["exit"] = wall, code
    out, st = step_outputs(rep, "replay")
    res.update({k: out.get(k) for k in ("transactions", "bytes", "replay_seconds", "reached_gtid", "segments")})
    if st.get("error"):
        res["error"] = st.get("error")
    if code == 0 and out.get("replay_seconds"):
        res["apply_s"] = round(out["replay_seconds"], 2)
        res["trx_per_s"] = round(out["transactions"] / out["replay_seconds"])
        res["mb_per_s"] = round(out["bytes"] / 1e6 / out["replay_seconds"], 2)
        res["reached_end"] = out.get("reached_gtid") == end_state
        res.update(table_checks(data, base, name, a.tables, source_sums))
    shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(res), flush=True)
    return res


def make_relay(src: bytes, name: str) -> bytes:
    """A relay log file: the segment with a synthetic ROTATE (type 4, timestamp 0, flags
    0x20 ARTIFICIAL, body position u64=4 + the source's binlog name, CRC32) inserted
    right after its FORMAT_DESCRIPTION event (/tmp/pitr-exp/mkrelay.py; without it
    MariaDB 10.11 crashed with parallel workers, docs/design/pitr.md §2.6)."""
    assert src[:4] == b"\xfebin", "not a binlog file"
    fde_len = struct.unpack("<I", src[4 + 9:4 + 13])[0]
    body = struct.pack("<Q", 4) + name.encode()
    ev = struct.pack("<IBIIIH", 0, 4, 1, 19 + len(body) + 4, 0, 0x20) + body
    ev += struct.pack("<I", zlib.crc32(ev) & 0xFFFFFFFF)
    return src[:4 + fde_len] + ev + src[4 + fde_len:]


def sql_thread_row(a, base, repo, listing, restored0, backup_gtid, source_sums, threads, lsu, rnd):
    name = f"sqlthread{threads}{'-lsu' if lsu else ''}"
    res = {"method": f"by hand: SQL thread, slave_parallel_threads={threads}" + (" optimistic" if threads else " (serial)")
           + (", log_slave_updates=ON" if lsu else ""), "threads": threads, "log_slave_updates": lsu, "round": rnd}
    res["waited_for_quiet_s"] = wait_quiet(a)
    data = base / f"{name}-data"
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.monotonic()
    run(["cp", "-a", str(restored0), str(data)])
    for f in list(data.glob("relay*")) + list(data.glob("master.info")) + list(data.glob("relay-log.info")):
        f.unlink()
    segs = [s for s in listing["segments"]]
    index = []
    nbytes = ntrx = 0
    for i, s in enumerate(segs, 1):
        plain = subprocess.run(["zstd", "-d", "-c", str(repo / s["object"])], check=True, capture_output=True).stdout
        (data / f"relay.{i:06d}").write_bytes(make_relay(plain, s["source"]["binlog_file"]))
        index.append(f"./relay.{i:06d}")
        nbytes += s["size"]
        ntrx += s["groups"]
    (data / "relay.index").write_text("\n".join(index) + "\n")
    res["prepare_relay_s"] = round(time.monotonic() - t0, 2)
    res["segments"], res["bytes"], res["transactions"] = len(segs), nbytes, ntrx
    sock = base / f"{name}.sock"
    opts = ["--log-bin=pitr-replay-bin", "--gtid-strict-mode=1", "--server-id=2", "--relay-log=relay",
            "--skip-slave-start", f"--slave-parallel-threads={threads}", "--slave-parallel-mode=optimistic"]
    if lsu:
        opts.append("--log-slave-updates=ON")
    srv = start_server(data, sock, base / f"{name}.err", opts)
    end = listing["end_state"]
    try:
        sql(sock, "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=1, MASTER_USE_GTID=no, "
                  "RELAY_LOG_FILE='relay.000001', RELAY_LOG_POS=4; "
                  f"SET GLOBAL gtid_slave_pos='{backup_gtid}'")
        res["loadavg_before"] = load1()
        t0 = time.monotonic()
        sql(sock, "START SLAVE SQL_THREAD")
        status, last_check = {}, 0
        while True:
            if srv.poll() is not None:
                res["error"] = f"mariadbd exited ({srv.returncode}); see {base / (name + '.err')}"
                break
            pos = sql(sock, "SELECT @@gtid_slave_pos")
            if pos == end:
                res["apply_s"] = round(time.monotonic() - t0, 2)
                break
            if time.monotonic() - last_check > 2:
                last_check = time.monotonic()
                status = slave_status(sock)
                if status.get("Slave_SQL_Running") != "Yes" or status.get("Last_SQL_Errno", "0") != "0":
                    res["error"] = (f"Slave_SQL_Running={status.get('Slave_SQL_Running')} Last_SQL_Errno="
                                    f"{status.get('Last_SQL_Errno')} {status.get('Last_SQL_Error')} at {pos}")
                    break
            if time.monotonic() - t0 > a.replay_timeout:
                res["error"] = f"not at {end} after {a.replay_timeout} s (at {pos})"
                break
            time.sleep(0.05)
        res["loadavg_1m"] = load1()
        if srv.poll() is None:
            time.sleep(1)
            status = slave_status(sock)
            res["slave_sql_running"] = status.get("Slave_SQL_Running")
            res["last_sql_errno"] = status.get("Last_SQL_Errno")
            res["reached_gtid"] = sql(sock, "SELECT @@gtid_slave_pos")
            res["reached_end"] = res["reached_gtid"] == end
            retries = sql(sock, "SHOW GLOBAL STATUS LIKE 'Slave_retried_transactions'").split()
            res["slave_retried_transactions"] = int(retries[-1]) if retries else None
            sql(sock, "STOP SLAVE")
            sums = checksums(sock, a.tables)
            res["checksums_equal"] = sums == source_sums
            if sums != source_sums:
                res["checksums"] = sums
            sql(sock, "RESET SLAVE ALL")
    finally:
        stop_server(srv, sock)
    if res.get("apply_s"):
        res["trx_per_s"] = round(ntrx / res["apply_s"])
        res["mb_per_s"] = round(nbytes / 1e6 / res["apply_s"], 2)
    res["crashes_in_error_log"] = (base / f"{name}.err").read_text(errors="replace").count("got signal")
    shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(res), flush=True)
    return res


def slave_status(sock):
    out = subprocess.run(mysql_cmd(sock) + ["-e", "SHOW SLAVE STATUS\\G"], capture_output=True, text=True).stdout
    st = {}
    for line in out.splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            st[k.strip()] = v.strip()
    return st


# --- report --------------------------------------------------------------------------

def f(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def render(saved):
    print(json.dumps(saved["meta"]))
    head = ["row", "segment_max_age", "round", "sysbench TPS", "source trx", "lag p50 s", "lag p90 s", "lag p99 s",
            "lag max s", "archiver CPU s during sysbench", "caught up after sysbench s", "archiver exit", "load before",
            "loadavg_1m"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in saved["lag"]:
        print("| " + " | ".join(f(r.get(k)) for k in (
            "row", "segment_max_age", "round", "tps", "source_transactions", "lag_p50_s", "lag_p90_s", "lag_p99_s",
            "lag_max_s", "archiver_cpu_s_during_sysbench", "caught_up_after_sysbench_s", "archiver_exit", "loadavg_before", "loadavg_1m")) + " |")
    head = ["method", "round", "transactions", "MB (uncompressed binlog)", "apply s", "trx/s", "MB/s",
            "reached archive end", "CHECKSUM TABLE = source", "load before", "loadavg_1m", "error"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in saved["replay"]:
        print("| " + " | ".join([r["method"], f(r.get("round")), f(r.get("transactions")),
                                 f((r.get("bytes") or 0) / 1e6), f(r.get("apply_s")), f(r.get("trx_per_s")),
                                 f(r.get("mb_per_s")), f(r.get("reached_end")), f(r.get("checksums_equal")),
                                 f(r.get("loadavg_before")), f(r.get("loadavg_1m")), f(r.get("error"))]) + " |")
    for k in ("rerun_lag", "rerun_replay"):
        if saved.get(k):
            print(f"\n{k} (first attempts, load before above the limit): " +
                  json.dumps([{x: r.get(x) for x in ("row", "method", "segment_max_age", "loadavg_before")}
                              for r in saved[k]]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-pitr-bench")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--table-size", type=int, default=100000)
    ap.add_argument("--time", type=int, default=60, help="sysbench seconds per row")
    ap.add_argument("--ages", default="30s,5s", help="segment_max_age of the archiver rows")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (baseline, archiver rows...), order alternating")
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--server-id", type=int, default=4000000001)
    ap.add_argument("--catch-up-timeout", type=float, default=180)
    ap.add_argument("--replay-timeout", type=float, default=1800)
    ap.add_argument("--quiet-load", type=float, default=1.5)
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--replay-rows", default="pipe,plan4,plan0,manual4,manual0",
                    help="of pipe, plan4, plan0 (restore-pitr.yaml's methods), manual4, manual0, manual4-lsu "
                         "(relay logs installed by this script, log_slave_updates for -lsu)")
    ap.add_argument("--snapshot", metavar="DIR",
                    help="copy target/release/stagehand and plans/ here first and run the copies "
                         "(the working tree may change during a long run)")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-pitr.json"))
    ap.add_argument("--keep", action="store_true", help="keep --dir afterwards")
    ap.add_argument("--render", metavar="JSON")
    a = ap.parse_args()
    if a.render:
        render(json.loads(Path(a.render).read_text()))
        return
    global SH, PLANS
    if not SH.exists():
        sys.exit(f"{SH} is missing: cargo build --release first")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(SH.stat().st_mtime))
    if a.snapshot:
        snap = Path(a.snapshot)
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir(parents=True)
        shutil.copy2(SH, snap / "stagehand")
        shutil.copytree(ROOT / "plans", snap / "plans")
        SH, PLANS = snap / "stagehand", snap / "plans"
    base = Path(a.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    src_data, sock, repo = base / "source", base / "source.sock", base / "repo"
    srv = None
    saved = {"meta": {"command": "python3 bench/pitr_bench.py " + " ".join(sys.argv[1:]),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                      "git_head": head, "binary_built": built},
             "lag": [], "replay": [], "rerun_lag": [], "rerun_replay": []}

    def save():
        Path(a.out).write_text(json.dumps(saved, indent=1) + "\n")
    try:
        srv = start_server(src_data, sock, base / "source.err",
                           ["--log-bin=binlog", "--server-id=1", "--gtid-strict-mode=ON", "--binlog-format=ROW",
                            "--innodb-buffer-pool-size=1G", "--innodb-log-file-size=512M", "--max-connections=200",
                            f"--tmpdir={base}"], install=True)
        meta = saved["meta"]
        meta["mariadb"] = sql(sock, "SELECT VERSION()")
        sql(sock, "CREATE DATABASE sbtest")
        print(f"preparing sysbench data: {a.tables} x {a.table_size} rows ...", flush=True)
        run(sysbench(sock, a, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
        meta.update({"tables": a.tables, "table_size": a.table_size, "sysbench_time_s": a.time, "poll_s": a.poll,
                     "source_options": "log-bin, server-id=1, gtid_strict_mode=ON, binlog_format=ROW, "
                                       "innodb_buffer_pool_size=1G, innodb_log_file_size=512M"})
        t0 = time.monotonic()
        run([str(SH), "-q", "run", str(PLANS / "backup-to-s3.yaml"), "--state-dir", str(base / "state"),
             "--set", f"repository={repo}", "--set", f"socket={sock}", "--set", f"datadir={src_data}",
             "--set", "user=root", "--set", f"spool={base / 'spool'}"], cwd=ROOT, stdout=subprocess.DEVNULL)
        meta["backup_wall_s"] = round(time.monotonic() - t0, 1)
        backups = json.loads(subprocess.run([str(SH), "backups", "list", str(repo), "--json"], cwd=ROOT,
                                            capture_output=True, text=True).stdout)
        backup_gtid = backups[-1]["gtid_binlog_pos"]
        meta["backup_gtid"] = backup_gtid
        print(f"backup {backups[-1]['id']} at GTID {backup_gtid}", flush=True)
        save()

        # 1. lag, rows alternating per round.
        ages = [x for x in a.ages.split(",") if x]
        for rnd in range(1, a.rounds + 1):
            rows = [("baseline (no archiver)", None)] + [(f"archiver segment_max_age={g}", g) for g in ages]
            if rnd % 2 == 0:
                rows.reverse()
            if rnd == a.rounds and a.rounds == 1:
                rows.append(("baseline (no archiver)", None))  # B A.. B: a baseline on both sides
            for name, age in rows:
                for attempt in range(2):
                    r = lag_row(name, age, rnd, a, base, sock, repo)
                    if r.get("loadavg_before", 0) <= a.quiet_load or attempt == 1:
                        break
                    saved["rerun_lag"].append(r)
                    save()
                saved["lag"].append(r)
                save()

        # Make sure the archive holds everything: one catch-up run of the archiver.
        end_src = sql(sock, "SELECT @@gtid_binlog_pos")
        lst = archive_listing(repo)
        if not lst or lst.get("end_state") != end_src:
            p = subprocess.run(archiver_cmd(a, base, sock, repo, "5s", "catch_up"),
                               cwd=ROOT, capture_output=True, text=True)
            meta["final_catch_up_exit"] = p.returncode
            lst = archive_listing(repo)
        source_sums = checksums(sock, a.tables)
        meta["source_gtid_binlog_pos"] = end_src
        meta["source_checksums"] = source_sums
        meta["archive"] = {"end_state": lst.get("end_state"), "segments": len(lst["segments"]),
                           "transactions": sum(s["groups"] for s in lst["segments"]),
                           "bytes": sum(s["size"] for s in lst["segments"]),
                           "stored_bytes": sum(s["stored_bytes"] for s in lst["segments"]),
                           "gaps": lst.get("gaps")}
        meta["archive_equals_source"] = lst.get("end_state") == end_src
        save()
        stop_server(srv, sock)  # the replays run alone on the machine
        srv = None

        # 2. replay. The backup restored and rolled forward by nothing: the SQL thread's start.
        rep, wall, code, restored0 = restore_pitr(base, repo, backup_gtid, "base")
        out, st = step_outputs(rep, "replay")
        meta["restore_to_backup_gtid"] = {"exit": code, "wall_s": wall, "replay_outputs": out,
                                          "error": st.get("error") if st else None}
        save()
        if code != 0:
            print(f"restore to the backup's GTID failed (exit {code}); see {base}/base-restore.log", flush=True)
        # The pipe's server writes every replayed transaction to its binlog (it checks the
        # end position there); the SQL thread's does so only with log_slave_updates.
        known = {"pipe": ("plan", "pipe", 1, None), "plan4": ("plan", "sql_thread", 4, None),
                 "plan0": ("plan", "sql_thread", 0, None), "manual4": ("manual", None, 4, False),
                 "manual0": ("manual", None, 0, False), "manual4-lsu": ("manual", None, 4, True)}
        for key in a.replay_rows.split(","):
            kind, method, threads, lsu = known[key]
            for attempt in range(2):
                if kind == "plan":
                    r = plan_row(a, base, repo, source_sums, lst["end_state"], method, threads, 1)
                elif code == 0:
                    r = sql_thread_row(a, base, repo, lst, restored0, backup_gtid, source_sums, threads, lsu, 1)
                else:
                    r = {"method": f"SQL thread, slave_parallel_threads={threads}", "error": "no restored datadir"}
                if r.get("loadavg_before", 0) <= a.quiet_load or attempt == 1:
                    break
                saved["rerun_replay"].append(r)
                save()
            saved["replay"].append(r)
            save()
        render(saved)
    finally:
        stop_server(srv, sock)
        save()
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
            if a.snapshot:
                shutil.rmtree(a.snapshot, ignore_errors=True)


if __name__ == "__main__":
    main()
