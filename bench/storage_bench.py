#!/usr/bin/env python3
"""Storage pipeline benchmark (issue 4): a hot backup streamed to S3 with zstd, stagehand
(`plans/backup-to-s3.yaml`) vs `mariadb-backup --stream=mbstream | zstd | aws s3 cp -`, each
stage of stagehand's pipeline alone (copy, compress, upload), and the restore from the
repository (`plans/restore.yaml` vs `aws s3 cp - | zstd -d | mbstream -x && mariadb-backup
--prepare`). The S3 server is a `moto_server` on loopback. Writes the section "Storage
pipeline (issue 4)" of docs/BENCHMARKS.md and docs/benchmarks-storage.json.

    python3 bench/storage_bench.py [--dir /tmp/stagehand-storage-bench] [--tables 8] [--table-size 1000000]
                                   [--seed-from /tmp/stagehand-bench/data]

Needs what bench/backup_bench.py needs, plus moto_server, zstd, mbstream and the AWS CLI
(else a boto3 uploader/downloader reading stdin/writing stdout is used). Every run starts
with a cold page cache (as root). Peak RSS is sampled from /proc/<pid>/status (VmHWM) of
every process in the measured tree every 0.1 s; `stagehand` rows give the stagehand
process's own peak, not that of the mariadbd it starts to prepare or check.
"""
import argparse, json, os, shutil, socket, subprocess, sys, threading, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import ROOT, SH, run, start_server, sql, sysbench, du, drop_caches  # noqa: E402

KEY = "testing"
# The S3 server's credentials and region, set by start_moto / start_garage.
CREDS = {"key": KEY, "secret": KEY, "region": "us-east-1"}
S3ENV = {}


def _use_creds(key, secret, region):
    CREDS.update(key=key, secret=secret, region=region)
    S3ENV.clear()
    S3ENV.update({"STAGEHAND_S3_ACCESS_KEY_ID": key, "STAGEHAND_S3_SECRET_ACCESS_KEY": secret,
                  "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": region})


_use_creds(KEY, KEY, "us-east-1")


# ---------------------------------------------------------------------------------------
# measuring a process tree


def _tree(root: int):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            comm = s[s.index("(") + 1:s.rindex(")")]
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        kids.setdefault(ppid, []).append((int(d), comm))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c, comm in kids.get(p, []):
            out.append((c, comm))
            todo.append(c)
    return out


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


MOTO = {"pid": None}


def _cpu_s(pid):
    """User+system CPU seconds of a running process (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, TypeError):
        return 0.0


def measured(name, cmd, env=None, shell=False):
    """Runs cmd (a list, or a shell pipeline string); returns wall s, CPU s of the whole
    tree (rusage), peak RSS MiB of the root process and per command name, the exit code
    and, for stagehand, its JSON report (stdout)."""
    drop_caches()
    full_env = dict(os.environ, **S3ENV, **(env or {}))
    moto0 = _cpu_s(MOTO["pid"])
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, shell=shell, executable="/bin/bash" if shell else None, env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks, root_peak, done = {}, [0], threading.Event()

    def poll():
        while not done.is_set():
            root_peak[0] = max(root_peak[0], _hwm_kib(p.pid))
            for pid, comm in _tree(p.pid):
                peaks[comm] = max(peaks.get(comm, 0), _hwm_kib(pid))
            done.wait(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = [], []
    te = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
    te.start()
    out = p.stdout.read()
    te.join()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    th.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(b"".join(err[-40:]).decode(errors="replace"))
    res = {"name": name, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
           "root_peak_rss_mib": round(root_peak[0] / 1024, 1),
           "peak_rss_mib_by_process": {k: round(v / 1024, 1) for k, v in sorted(peaks.items()) if v},
           "s3_server_cpu_s": round(_cpu_s(MOTO["pid"]) - moto0, 2),
           "exit": code, "loadavg_1m": round(os.getloadavg()[0], 2)}
    if not shell and Path(cmd[0]).name == "stagehand":
        try:
            rep = json.loads(out)
            res["steps_ms"] = {s["id"]: s.get("duration_ms") for s in rep["steps"]}
            res["outputs"] = {s["id"]: s.get("outputs") for s in rep["steps"] if s.get("outputs")}
        except (ValueError, KeyError):
            res["stdout_tail"] = out[-2000:].decode(errors="replace")
    print(json.dumps(res), flush=True)
    return res


# ---------------------------------------------------------------------------------------
# S3


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait_for_port(port, what, log):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{what} did not start; see {log}")


def start_s3(kind, base: Path):
    """The S3 server the benchmark runs against: `moto` (moto_server, Python) or `garage`
    (Garage, a production S3 server, single node); (process, url)."""
    return start_garage(base) if kind == "garage" else start_moto(base)


def start_garage(base: Path):
    """A single-node Garage whose default key may create buckets; the binary where the
    tests find it (scripts/ensure-deps.sh builds it)."""
    home = Path.home() / ".cache/stagehand/garage-2.5.0/bin/garage"
    binary = os.environ.get("STAGEHAND_GARAGE_BIN") or (str(home) if home.is_file() else shutil.which("garage"))
    if not binary:
        sys.exit("garage not found: run `bash scripts/ensure-deps.sh --matrix` (builds Garage 2.5.0 into ~/.cache/stagehand)")
    d = base / "garage"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    port, rpc = _free_port(), _free_port()
    (d / "garage.toml").write_text(
        f'metadata_dir = "{d}/meta"\ndata_dir = "{d}/data"\ndb_engine = "sqlite"\nreplication_factor = 1\n'
        f'rpc_bind_addr = "127.0.0.1:{rpc}"\nrpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{os.urandom(32).hex()}"\n'
        f'[s3_api]\ns3_region = "garage"\napi_bind_addr = "127.0.0.1:{port}"\n')
    key, secret = "GK57a6e7d1c0ffee0000000002", os.urandom(32).hex()
    env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=key, GARAGE_DEFAULT_SECRET_KEY=secret,
               GARAGE_DEFAULT_BUCKET="default", RUST_LOG="warn")
    proc = subprocess.Popen([binary, "-c", str(d / "garage.toml"), "server", "--single-node", "--default-bucket"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "garage.log", "w"), env=env)
    _wait_for_port(port, "garage", d / "garage.log")
    _use_creds(key, secret, "garage")
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # the port opens before the default key and bucket exist
        try:
            s3(url).list_objects_v2(Bucket="default")
            break
        except Exception:
            time.sleep(0.2)
    return proc, url


def start_moto(base: Path):
    _use_creds(KEY, KEY, "us-east-1")
    port = _free_port()
    tmp = base / "moto-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=open(base / "moto.log", "w"), env=dict(os.environ, TMPDIR=str(tmp)))
    _wait_for_port(port, "moto_server", base / "moto.log")
    return moto, f"http://127.0.0.1:{port}"


def s3(url):
    import boto3
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=CREDS["key"],
                        aws_secret_access_key=CREDS["secret"], region_name=CREDS["region"])


def stored_bytes(url, bucket, prefix):
    c, total, n = s3(url), 0, 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            total += o["Size"]
            n += 1
    return total, n


def delete_prefix(url, bucket, prefix):
    c = s3(url)
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            c.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def upload_cmd(url, key):
    if shutil.which("aws"):
        return f"aws s3 cp - s3://{key} --endpoint-url {url} --only-show-errors", "aws s3 cp - (AWS CLI)"
    helper = f"{sys.executable} -c 'import boto3,sys; boto3.client(\"s3\",endpoint_url=\"{url}\").upload_fileobj(sys.stdin.buffer,*\"{key}\".split(\"/\",1))'"
    return helper, "boto3 upload_fileobj from stdin"


def download_cmd(url, key):
    if shutil.which("aws"):
        return f"aws s3 cp s3://{key} - --endpoint-url {url} --only-show-errors", "aws s3 cp … - (AWS CLI)"
    helper = f"{sys.executable} -c 'import boto3,sys; boto3.client(\"s3\",endpoint_url=\"{url}\").download_fileobj(*\"{key}\".split(\"/\",1),sys.stdout.buffer)'"
    return helper, "boto3 download_fileobj to stdout"


def download_single_get_cmd(url, key):
    """One plain GET streamed to stdout (boto3). moto_server answers the ranged GETs the
    AWS CLI sends for a large object in quadratic time (about 85 s for 900 MB here, vs 2 s
    for one plain GET), which real S3 does not; this keeps the baseline fair."""
    b, k = key.split("/", 1)
    code = (f"import boto3,sys,shutil; b=boto3.client('s3',endpoint_url='{url}').get_object(Bucket='{b}',Key='{k}')['Body']; "
            "shutil.copyfileobj(b, sys.stdout.buffer, 8<<20)")
    return f'{sys.executable} -c "{code}"', "boto3 get_object (one plain GET) to stdout"


# ---------------------------------------------------------------------------------------


def fresh(*dirs):
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def plan_file(base: Path, name: str, steps: str) -> Path:
    p = base / f"{name}.yaml"
    p.write_text(f"version: 1\nname: {name}\ndescription: storage benchmark stage\nsteps:\n{steps}")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/stagehand-storage-bench")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=1000000)
    ap.add_argument("--seed-from", help="copy this (shut down) datadir of the same sysbench data instead of preparing it")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs/BENCHMARKS.md"))
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    # The restore's check server wants its socket in a directory only we can enter.
    sockdir = base / "sock"
    sockdir.mkdir(mode=0o700, exist_ok=True)
    sockdir.chmod(0o700)
    if not a.no_build:
        run(["cargo", "build", "--release", "--locked", "-q", "--bin", "stagehand"], cwd=ROOT)
    if a.seed_from and not (base / "data").exists():
        run(["cp", "-a", a.seed_from, str(base / "data")])
    srv, data, sock = start_server(base)
    moto, url = start_moto(base)
    MOTO["pid"] = moto.pid
    st = str(base / "state")
    sh = [str(SH), "-q", "run", "--json", "--state-dir", st]
    P = str(a.parallel)
    results = {}
    try:
        if sql(sock, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'") != str(a.tables):
            sql(sock, "DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest")
            print("preparing sysbench data ...", flush=True)
            run(sysbench(sock, a.tables, a.table_size, "--threads=2", "prepare"), stdout=subprocess.DEVNULL)
        data_bytes = du(data)
        version = sql(sock, "SELECT VERSION()")
        s3(url).create_bucket(Bucket="bench")
        repo = ["--set", "repository=s3://bench/db", "--set", f"endpoint={url}", "--set", "path_style=true"]
        up, up_how = upload_cmd(url, "bench/mb.zst")
        down, down_how = download_cmd(url, "bench/mb.zst")
        spool, stage, mbtmp = base / "spool", base / "stage", base / "mb-tmp"

        # 1. streamed backups
        fresh(spool)
        cmd = sh + [str(ROOT / "plans/backup-to-s3.yaml"), "--set", f"socket={sock}", "--set", f"datadir={data}",
                    *repo, "--set", f"spool={spool}", "--set", f"parallel={P}", "--set", f"level={a.level}"]
        r = measured("stagehand backup-to-s3 (streamed)", cmd)
        r["stored_bytes"], r["objects"] = stored_bytes(url, "bench", "db/")
        r["cmd"] = " ".join(cmd)
        results["stream_stagehand"] = r

        fresh(mbtmp)
        mbtmp.mkdir()
        pipe = (f"set -o pipefail; mariadb-backup --backup --stream=mbstream --target-dir={mbtmp} --socket={sock} "
                f"--user=root --parallel={P} 2>{base}/mb-backup.log | zstd -q -T2 -{a.level} | {up}")
        r = measured("mariadb-backup --stream | zstd | upload", pipe, shell=True)
        r["stored_bytes"], r["objects"] = stored_bytes(url, "bench", "mb.zst")
        r["cmd"], r["upload_method"] = pipe, up_how
        results["stream_mariadb_backup"] = r

        # 2. each stage alone
        fresh(stage)
        cmd = sh + [str(ROOT / "plans/full-backup.yaml"), "--set", f"socket={sock}", "--set", "user=root",
                    "--set", f"datadir={data}", "--set", f"target={stage}", "--set", "prepare=false",
                    "--set", "verify=false", "--set", f"parallel={P}"]
        r = measured("stage alone: copy (full-backup.yaml, prepare=false verify=false)", cmd)
        r["cmd"], r["local_bytes"] = " ".join(cmd), du(stage)
        results["stage_copy"] = r

        cplan = plan_file(base, "bench-compress",
                          f"  - id: compress\n    uses: compress\n    with: {{dir: \"{stage}\", level: {a.level}, parallel: {P}}}\n")
        cmd = sh + [str(cplan)]
        r = measured("stage alone: compress (compress step, same dir)", cmd)
        r["cmd"], r["plan"], r["local_bytes"] = " ".join(cmd), cplan.read_text(), du(stage)
        results["stage_compress"] = r

        uplan = base / "bench-upload.yaml"
        uplan.write_text(
            "version: 1\nname: bench-upload\ndescription: storage benchmark stage\n"
            "params:\n  endpoint: {type: string, required: true}\n"
            "secrets:\n  ak: {env: STAGEHAND_S3_ACCESS_KEY_ID}\n  sk: {env: STAGEHAND_S3_SECRET_ACCESS_KEY}\n"
            f"steps:\n  - id: upload\n    uses: upload\n    with:\n      dir: \"{stage}\"\n      parallel: {P}\n"
            "      repository: {url: \"s3://bench/stage-upload\", endpoint: \"{{params.endpoint}}\", "
            "path_style: true, access_key_id: \"{{secrets.ak}}\", secret_access_key: \"{{secrets.sk}}\"}\n")
        cmd = sh + [str(uplan), "--set", f"endpoint={url}"]
        r = measured("stage alone: upload (upload step of the compressed dir, fresh prefix)", cmd)
        r["stored_bytes"], r["objects"] = stored_bytes(url, "bench", "stage-upload/")
        r["cmd"], r["plan"] = " ".join(cmd), uplan.read_text()
        results["stage_upload"] = r
        delete_prefix(url, "bench", "stage-upload/")
        fresh(stage, spool, mbtmp)

        # 3. restores
        wk, dd = base / "restore-work", base / "restore-data"
        fresh(wk, dd)
        cmd = sh + [str(ROOT / "plans/restore.yaml"), *repo, "--set", "id=latest", "--set", f"workdir={wk}",
                    "--set", f"datadir={dd}", "--set", f"check_socket={sockdir}/restore-check.sock"]
        r = measured("stagehand restore.yaml (fetch→decompress→prepare→copy_back→server→check)", cmd)
        r["cmd"] = " ".join(cmd)
        results["restore_stagehand"] = r
        fresh(wk, dd)

        mw = base / "restore-mb"
        for key, (dl, how) in (("restore_mariadb_backup", download_single_get_cmd(url, "bench/mb.zst")),
                               ("restore_mariadb_backup_awscli", (down, down_how))):
            fresh(mw)
            mw.mkdir()
            pipe = (f"set -o pipefail; {dl} | zstd -q -d | mbstream -x -C {mw} && "
                    f"mariadb-backup --prepare --target-dir={mw} 2>{base}/mb-prepare.log")
            r = measured(f"download ({how.split(' (')[0]}) | zstd -d | mbstream -x && mariadb-backup --prepare", pipe, shell=True)
            r["cmd"], r["download_method"] = pipe, how
            results[key] = r
            fresh(mw)

        write_report(Path(a.out), results, data_bytes, version, a, up_how)
    finally:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "SHUTDOWN"], stderr=subprocess.DEVNULL)
        srv.wait()
        moto.terminate()
        moto.wait()


def fmt_mib(b):
    return f"{b / 2**20:.0f} MiB"


def write_report(out: Path, R, data_bytes, version, a, up_how):
    s, m = R["stream_stagehand"], R["stream_mariadb_backup"]
    stages = {k: R[k]["wall_s"] for k in ("stage_copy", "stage_compress", "stage_upload")}
    slowest_k = max(stages, key=stages.get)
    ratio = s["wall_s"] / stages[slowest_k]
    rs, rm = R["restore_stagehand"], R["restore_mariadb_backup"]
    rs_to_prepare = sum(rs.get("steps_ms", {}).get(k) or 0 for k in ("fetch", "verify", "decompress", "prepare")) / 1000
    sh_rss = {k: R[k]["root_peak_rss_mib"] for k in R if "mariadb_backup" not in k}
    max_rss = max(sh_rss.values())
    summary = {
        "streamed_wall_s": s["wall_s"], "slowest_stage": slowest_k, "slowest_stage_wall_s": stages[slowest_k],
        "streamed_over_slowest_stage": round(ratio, 2), "target_streamed_met": ratio <= 1.15,
        "restore_stagehand_wall_s": rs["wall_s"], "restore_stagehand_fetch_to_prepare_s": round(rs_to_prepare, 2),
        "restore_mariadb_backup_wall_s": rm["wall_s"],
        "restore_mariadb_backup_awscli_wall_s": R["restore_mariadb_backup_awscli"]["wall_s"], "target_restore_met": rs["wall_s"] <= rm["wall_s"],
        "target_restore_met_fetch_to_prepare": rs_to_prepare <= rm["wall_s"],
        "stagehand_peak_rss_mib": max_rss, "target_rss_met": max_rss < 256,
        "data_bytes": data_bytes, "mariadb_version": version, "tables": a.tables, "table_size": a.table_size,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
    }
    (out.parent / "benchmarks-storage.json").write_text(json.dumps({"summary": summary, "runs": R}, indent=1))

    def row(label, r, extra=""):
        rss = r["peak_rss_mib_by_process"]
        rss_s = ", ".join(f"{k} {v}" for k, v in sorted(rss.items(), key=lambda kv: -kv[1])[:3])
        label = label.replace("|", "\\|")
        return (f"| {label} | {r['wall_s']} | {r['cpu_s']} | {r['root_peak_rss_mib']} | {rss_s} | "
                f"{fmt_mib(r['stored_bytes']) if 'stored_bytes' in r else ''} | {r.get('s3_server_cpu_s', r.get('moto_server_cpu_s'))} | {extra} | {r['loadavg_1m']} | {r['exit']} |")
    notes = {
        "stream_stagehand": f"{s.get('objects', '')} objects",
        "stream_mariadb_backup": f"1 object; CPU/RSS incl. zstd and {up_how.split(' (')[0]}",
        "stage_copy": f"local {fmt_mib(R['stage_copy']['local_bytes'])}",
        "stage_compress": f"local after {fmt_mib(R['stage_compress']['local_bytes'])}",
        "stage_upload": f"{R['stage_upload'].get('objects', '')} objects",
        "restore_stagehand": "steps ms: " + ", ".join(f"{k} {v}" for k, v in rs.get("steps_ms", {}).items() if v is not None),
        "restore_mariadb_backup": "no copy-back, no server start",
        "restore_mariadb_backup_awscli": "same, AWS CLI download: ranged GETs, slow on moto_server",
    }
    seed_note = f" --seed-from {a.seed_from}" if a.seed_from else ""
    hdr = ("| run | wall s | CPU s (tree) | peak RSS MiB (root process) | peak RSS MiB (largest processes) | stored | notes | load 1m | exit |\n"
           "|---|---|---|---|---|---|---|---|---|")
    print(json.dumps(summary, indent=1))
    yes = lambda b: "**met**" if b else "**not met**"
    rows = "\n".join(row(R[k]["name"], R[k], notes.get(k, "")) for k in R)
    text = f"""## Storage pipeline (issue 4)

Command: `python3 bench/storage_bench.py --tables {a.tables} --table-size {a.table_size}{seed_note}`
(run {summary['date']}, {summary['cores']} cores, MariaDB {version}; data
{data_bytes / 1e9:.2f} GB of sysbench tables, idle server; S3 = `moto_server` on loopback, bucket
`bench`; zstd level {a.level}, {a.parallel} files at once / `-T2`; each run starts with a cold page
cache). The exact commands and plans of every row are in `docs/benchmarks-storage.json`
(`runs.*.cmd`, `runs.*.plan`). Baseline upload: {up_how}.

`CPU s` is user+system of the whole process tree (rusage), `peak RSS (root)` the measured
process's own VmHWM sampled every 0.1 s (for stagehand rows: stagehand itself), the next
column the largest peaks by process name (for the restore they include the `mariadbd`
stagehand starts to prepare and to check). `load 1m` is the load average at the end of the
row (above ~2 on this 2-core machine: other work competed; the rows run back to back,
so the benchmark's own previous row adds to it). `moto_server CPU s` is the CPU the S3
server spent during the row, on the same 2 cores, not included in `CPU s`.

| run | wall s | CPU s (tree) | peak RSS MiB (root) | peak RSS MiB (largest processes) | stored | moto_server CPU s | notes | load 1m | exit |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Targets:

- streamed wall ≤ 1.15 × slowest stage alone: {s['wall_s']} s vs {stages[slowest_k]} s
  ({slowest_k.replace('stage_', '')}) = **{ratio:.2f}×**, {yes(ratio <= 1.15)}.
- restore no slower than mariadb-backup's path: {rs['wall_s']} s (whole plan, server start and
  check included; fetch→prepare {rs_to_prepare:.1f} s) vs {rm['wall_s']} s (one plain GET → prepare;
  {R['restore_mariadb_backup_awscli']['wall_s']} s with the AWS CLI's ranged download):
  whole plan {yes(rs['wall_s'] <= rm['wall_s'])}, like for like (up to prepare) {yes(rs_to_prepare <= rm['wall_s'])}.
- stagehand peak RSS < 256 MiB: {max_rss} MiB at most, {yes(max_rss < 256)}.
"""
    replace_section(out, "## Storage pipeline (issue 4)", text)


def replace_section(out: Path, marker: str, text: str):
    """Writes `text` as the section of `out` that starts with `marker` (moved to the end;
    the other sections stay as they are)."""
    old = out.read_text() if out.exists() else "# Benchmarks\n"
    if marker in old:
        head, tail = old.split(marker, 1)
        k = tail.find("\n## ")
        old = head.rstrip() + "\n\n" + (tail[k + 1:] if k >= 0 else "")
    out.write_text(old.rstrip() + "\n\n" + text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
