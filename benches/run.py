#!/usr/bin/env python3
"""poold against the local multiprocessing.Pool(2), side by side, in one run (issues 6, 11 and 13).

    cargo build --release && python3 benches/run.py            # full run, medians of 3
    python3 benches/run.py --quick                             # smoke run: 1 repetition, small sizes
    python3 benches/run.py --only 1,5 --reps 5                 # some workloads
    python3 benches/run.py --only 9-13 --python VENV/bin/python  # with a Ray column
    python3 benches/run.py --only 14-16                        # the cluster rows (PostgreSQL)

Each poold sample starts `target/release/poold serve` on a fresh temporary SQLite database
(2 workers running the SDK worker, `python -m poold.worker funcs`, or the built-in Rust worker
for the extra rows), waits until every worker is idle, and talks to it over loopback with a
keep-alive client (`rawhttp.py`) for workloads 1-8, or with `poold.Pool` for 9-13
(`sdk.py`). Each Pool sample uses a fresh `multiprocessing.Pool(2)` created before the clock
starts; with `--python`, 9-13 also run `ray.util.multiprocessing.Pool(2)` under that
interpreter (`ray_side.py`). Every side runs the same functions from `funcs.py`. Samples of
the sides alternate, and each figure is the median over the repetitions; ratios are taken
between medians of the same run. Workloads 14-16 run poold on PostgreSQL (a throwaway server
from Debian's binaries under /usr/lib/postgresql, started by the harness; skipped without
them): three nodes against one, PostgreSQL against SQLite, and a node's kill -9. See
benches/README.md for what each workload measures.
"""

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import platform
import pwd
import random
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import sdk  # noqa: E402
from funcs import FUNCTIONS, spin, square  # noqa: E402
from rawhttp import Http  # noqa: E402

# The real interpreter, never a pyenv shim (a shim costs ~135 ms per worker spawn).
PYTHON = os.path.realpath(sys.executable)
# The Python workers are the SDK's, serving funcs.py (found through PYTHONPATH).
WORKER_COMMAND = f"{shlex.quote(PYTHON)} -m poold.worker funcs"
WORKER_PATH = os.pathsep.join([os.path.join(ROOT, "python"), HERE])
FINISHED = ("completed", "failed", "cancelled")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The server


class Server:
    """One `poold serve`, by default on a fresh temporary SQLite database; stopped (and its
    files removed) on exit. `database` is another `--database` (a `postgres://` URL),
    `serve_args` more `poold serve` flags (`--node-name …`)."""

    def __init__(self, poold, worker="python", workers=2, database=None, serve_args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="poold-bench-")
        self.workers = workers
        self.database = database or os.path.join(self.dir.name, "poold.db")
        args = [poold, "serve", "--bind", "127.0.0.1:0", "--workers", str(workers),
                "--database", self.database,
                "--shutdown-grace", "0", "--kill-grace", "0.5", *serve_args]
        env = dict(os.environ)
        if worker == "python":
            args += ["--worker-command", WORKER_COMMAND]
            env["PYTHONPATH"] = WORKER_PATH
        self.log_path = os.path.join(self.dir.name, "poold.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log_file, env=env)
        try:
            line = self._first_line(30.0)
            prefix = "poold listening on http://"
            if not line.startswith(prefix):
                raise RuntimeError(f"unexpected first line {line!r}; log:\n{self.log_text()}")
            host, _, port = line[len(prefix):].strip().rpartition(":")
            self.host, self.port = host, int(port)
            self._wait_workers_idle(30.0)
        except BaseException:
            self.stop()
            raise

    def _first_line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"poold printed nothing in {timeout}s; log:\n{self.log_text()}")
        return self.proc.stdout.readline().decode()

    def _wait_workers_idle(self, timeout):
        """Until this node's workers are idle (on PostgreSQL, `/v1/pool` lists every node's);
        sets `node_id`, this node's id in `GET /v1/nodes`."""
        conn = self.http()
        deadline = time.monotonic() + timeout
        self.node_id = None
        try:
            while True:
                if self.node_id is None:
                    status, _, body = conn.request("GET", "/v1/nodes")
                    if status == 200:
                        address = f"{self.host}:{self.port}"
                        self.node_id = next((n["id"] for n in json.loads(body)["nodes"]
                                             if n["address"] == address), None)
                status, _, body = conn.request("GET", "/v1/pool")
                if status == 200 and self.node_id is not None:
                    pool = json.loads(body)
                    states = [w["state"] for w in pool["workers"] if w["node"] == self.node_id]
                    if len(states) == self.workers and all(s == "idle" for s in states):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers not idle in {timeout}s; log:\n{self.log_text()}")
                time.sleep(0.02)
        finally:
            conn.close()

    def db_bytes(self):
        """The SQLite database's bytes on disk: the file and its write-ahead log."""
        path = self.database
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode(errors="replace")

    def http(self, timeout=600.0):
        return Http(self.host, self.port, timeout)

    def pool(self):
        """GET /v1/pool."""
        conn = self.http()
        try:
            status, _, body = conn.request("GET", "/v1/pool")
            if status != 200:
                raise RuntimeError(f"GET /v1/pool: {status}")
            return json.loads(body)
        finally:
            conn.close()

    def proc_status(self):
        """VmRSS and VmHWM of the poold process, in bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value, _unit = line.split()
                    out[name[:-1]] = int(value) * 1024
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log_file.close()
        self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Postgres:
    """A throwaway PostgreSQL server for the cluster rows (14-16), as `tests/common/postgres.rs`
    starts one: Debian's binaries (`/usr/lib/postgresql/<highest version>/bin`), `initdb` into
    a temporary directory, `postgres` on a free loopback port, as `nobody` when run as root
    (PostgreSQL refuses root). fsync and full-page writes are off (nothing here must survive a
    power cut); commits still write their WAL to the OS, as SQLite's `synchronous = NORMAL`
    does. It runs in a session of its own (a Ctrl-C reaches the harness, which stops it) and
    dies with the harness if that is killed (parent-death signal). `stop()` removes it all."""

    ROOT = "/usr/lib/postgresql"

    @classmethod
    def bin_dir(cls):
        """The highest version's bin directory, or None without the server binaries."""
        try:
            names = os.listdir(cls.ROOT)
        except OSError:
            return None
        bins = sorted((int(n), os.path.join(cls.ROOT, n, "bin")) for n in names if n.isdigit())
        bins = [path for _, path in bins if os.path.isfile(os.path.join(path, "postgres"))]
        return bins[-1] if bins else None

    def __init__(self):
        self.bin = self.bin_dir()
        if self.bin is None:
            raise RuntimeError(f"no PostgreSQL server binaries under {self.ROOT}/*/bin")
        self.proc, self.databases = None, 0
        self.dir = tempfile.mkdtemp(prefix="poold-bench-pg-")
        try:
            self.user = {}
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
                self.user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            data = os.path.join(self.dir, "data")
            subprocess.run([os.path.join(self.bin, "initdb"), "--auth=trust", "--username=poold",
                            "--encoding=UTF8", "--no-sync", "-D", data],
                           cwd=self.dir, capture_output=True, check=True, timeout=120,
                           **self.user)
            self.port = free_port()
            with open(os.path.join(self.dir, "postgres.log"), "ab") as log_file:
                libc = ctypes.CDLL(None, use_errno=True)
                self.proc = subprocess.Popen(
                    [os.path.join(self.bin, "postgres"), "-D", data, "-p", str(self.port),
                     "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=300"],
                    cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=log_file, start_new_session=True,
                    # PR_SET_PDEATHSIG (1): SIGQUIT, PostgreSQL's immediate shutdown. It runs
                    # after the change of user, which would clear it.
                    preexec_fn=lambda: libc.prctl(1, int(signal.SIGQUIT), 0, 0, 0),
                    **self.user)
            deadline = time.monotonic() + 30
            while self.psql("postgres", "select 1", check=False).returncode != 0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; log:\n{self.log_text()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def url(self, name):
        return f"postgres://poold@127.0.0.1:{self.port}/{name}"

    def psql(self, database, sql, check=True):
        """Run `sql` with psql on `database` (a name or a URL): unaligned, tuples only."""
        url = database if "://" in database else self.url(database)
        out = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-q",
                              "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {out.stderr.strip()}")
        return out

    def query(self, database, sql):
        """The rows of `sql` (as lists of text fields, `|`-separated by psql)."""
        text = self.psql(database, sql).stdout
        return [line.split("|") for line in text.splitlines() if line]

    @contextlib.contextmanager
    def database(self):
        """A fresh, empty database as a `postgres://` URL; dropped afterwards (once the
        nodes using it are stopped, or by force)."""
        self.databases += 1
        name = f"bench_{self.databases}"
        self.psql("postgres", f"create database {name}")
        try:
            yield self.url(name)
        finally:
            self.psql("postgres", f"drop database if exists {name} with (force)", check=False)

    def log_text(self):
        try:
            with open(os.path.join(self.dir, "postgres.log"), "rb") as f:
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def submit(conn, job):
    """POST a job (a dict, or its JSON encoding) and return its id."""
    body = job if isinstance(job, bytes) else json.dumps(job).encode()
    status, _, response = conn.request("POST", "/v1/jobs", body)
    if status != 201:
        raise RuntimeError(f"POST /v1/jobs: {status} {response[:500]!r}")
    return json.loads(response)["id"]


def wait_finished(conn, job_id, timeout=600.0):
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = conn.request("GET", f"/v1/jobs/{job_id}?wait=60")
        job = json.loads(body)
        if status != 200:
            raise RuntimeError(f"GET /v1/jobs/{job_id}: {status} {job}")
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished in {timeout}s: {job}")


def check_completed(job, total):
    if job["status"] != "completed" or job["done"] != total or job["failed"]:
        raise RuntimeError(f"job did not complete cleanly: {job}")


# --------------------------------------------------------------------------------------------
# Samples: each returns one figure


def timed_job(server, body, total):
    """Seconds from POSTing `body` to `server` to the job being completed (every one of its
    `total` results committed): the POST, then `GET /v1/jobs/{id}?wait=60` long-polls."""
    conn = server.http()
    try:
        t0 = time.perf_counter()
        job_id = submit(conn, body)
        job = wait_finished(conn, job_id)
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    check_completed(job, total)
    return elapsed


def poold_map(poold, worker, function, items, chunksize, db_sizes=None, database=None):
    """Submit one job, return seconds from the POST to the job being completed (every result
    committed): the POST is sent, then `GET /v1/jobs/{id}?wait=60` long-polls to the end.
    With `db_sizes` (a list), the database's size on disk (file + WAL) once the job is
    completed is appended to it. `database`: a `--database` other than a temporary SQLite
    file."""
    job = {"function": function, "items": items}
    if chunksize is not None:
        job["chunksize"] = chunksize
    body = json.dumps(job).encode()
    with Server(poold, worker, database=database) as server:
        elapsed = timed_job(server, body, len(items))
        if db_sizes is not None:
            db_sizes.append(server.db_bytes())
    return elapsed


def pool_map(function, items, chunksize, how):
    """Seconds for a fresh Pool(2) (created before the clock) to map, every result in hand."""
    function = FUNCTIONS[function]
    with multiprocessing.Pool(2) as pool:
        pool.apply(square, (0,))  # both sides start with ready workers
        pool.apply(square, (0,))
        t0 = time.perf_counter()
        if how == "imap":
            for _ in pool.imap(function, items, chunksize=chunksize):
                pass
        else:
            pool.map(function, items)
        return time.perf_counter() - t0


def poold_latency(poold, samples):
    """Per sample: a 1-item `square` job is POSTed on one keep-alive connection, then
    `GET /v1/jobs/{id}/events` is opened on a second one; the latency runs from just before the
    POST is sent to the moment the `result` event has been read. Returns (total, post) lists."""
    totals, posts = [], []
    with Server(poold, "python") as server:
        api, events = server.http(30.0), server.http(30.0)
        for i in range(samples + 10):  # 10 warm-up samples
            body = json.dumps({"function": "square", "items": [i]}).encode()
            t0 = time.perf_counter()
            job_id = submit(api, body)
            t_post = time.perf_counter()
            status, _, pieces = events.stream("GET", f"/v1/jobs/{job_id}/events")
            if status != 200:
                raise RuntimeError(f"events: {status}")
            seen, t_result = b"", None
            for piece in pieces:  # read to the end of the stream so the connection is reused
                if t_result is None:
                    seen += piece
                    if b"event: result" in seen:
                        t_result = time.perf_counter()
            if t_result is None:
                raise RuntimeError(f"no result event for job {job_id}: {seen[-500:]!r}")
            if i >= 10:
                totals.append(t_result - t0)
                posts.append(t_post - t0)
        api.close()
        events.close()
    return totals, posts


def pool_latency(samples):
    """Per sample: `apply_async(square, (i,)).get()` on a warm Pool(2)."""
    out = []
    with multiprocessing.Pool(2) as pool:
        for i in range(samples + 10):
            t0 = time.perf_counter()
            pool.apply_async(square, (i,)).get()
            if i >= 10:
                out.append(time.perf_counter() - t0)
    return out


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def count_in_stream(pieces, token):
    """Count `token` in a streamed body without joining it (a token may straddle pieces)."""
    count, tail, keep = 0, b"", len(token) - 1
    for piece in pieces:
        data = tail + piece
        count += data.count(token)
        tail = data[-keep:] if keep else b""
    return count


def replay_server(poold, n):
    """A server holding one finished n-item `square` job (made by the Rust worker: how the job
    was computed does not matter to a replay). Returns (server, job id)."""
    server = Server(poold, "rust")
    try:
        conn = server.http()
        job_id = submit(conn, {"function": "square", "items": list(range(n))})
        check_completed(wait_finished(conn, job_id), n)
        conn.close()
    except BaseException:
        server.stop()
        raise
    return server, job_id


def replay(server, job_id, n, kind):
    """Seconds to read every result of the finished job: over SSE (`/events`, counting
    `result` events) or as NDJSON (`/results`, counting lines), request sent → stream ended."""
    conn = server.http()
    t0 = time.perf_counter()
    if kind == "sse":
        status, _, pieces = conn.stream("GET", f"/v1/jobs/{job_id}/events")
        count = count_in_stream(pieces, b"event: result\n")
    else:
        status, _, pieces = conn.stream("GET", f"/v1/jobs/{job_id}/results",
                                        {"Accept": "application/x-ndjson"})
        count = count_in_stream(pieces, b"\n")
    elapsed = time.perf_counter() - t0
    conn.close()
    if status != 200 or count != n:
        raise RuntimeError(f"{kind} replay: status {status}, {count} of {n} results")
    return elapsed


def _jobs_client(host, port, first, count, start, out):
    """One of the concurrent clients of workload 7 (a process of its own)."""
    conn = Http(host, port, 120.0)
    conn.request("GET", "/healthz")  # connect before the start signal
    start.wait(60)
    bodies = [json.dumps({"function": "square", "items": [first + k]}).encode()
              for k in range(count)]
    ids = [submit(conn, body) for body in bodies]
    for job_id in ids:
        check_completed(wait_finished(conn, job_id, 300.0), 1)
    out.put(time.perf_counter())
    conn.close()


def poold_many_jobs(poold, jobs, clients, database=None):
    """Seconds from the start signal until `clients` processes have each POSTed their share
    of `jobs` one-item jobs, back to back, and seen every one of them completed."""
    with Server(poold, "python", database=database) as server:
        ctx = multiprocessing.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        share = jobs // clients
        procs = [ctx.Process(target=_jobs_client,
                             args=(server.host, server.port, c * share, share, start, out))
                 for c in range(clients)]
        for p in procs:
            p.start()
        time.sleep(0.5)  # let every client connect
        t0 = time.perf_counter()
        start.set()
        ends = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(30)
            if p.exitcode != 0:
                raise RuntimeError(f"a client failed (exit {p.exitcode})")
        return max(ends) - t0, share * clients


def pool_many_jobs(jobs, clients):
    """The same shape on a local Pool(2): `clients` threads each `apply_async` their share,
    then `.get()` every one."""
    share = jobs // clients
    with multiprocessing.Pool(2) as pool:
        pool.apply(square, (0,))
        start = threading.Event()

        def client(first):
            start.wait()
            handles = [pool.apply_async(square, (first + k,)) for k in range(share)]
            for h in handles:
                h.get(300)

        threads = [threading.Thread(target=client, args=(c * share,)) for c in range(clients)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        start.set()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, share * clients


def poold_rss(poold, n):
    """RSS of poold while an n-item job is queued behind a busy pool: `--workers 1`, a
    `sleep(600)` job occupies the only worker, then the n-item `square` job (automatic
    chunksize) is POSTed; once it is accepted, VmRSS is sampled every 50 ms for 2 s (the
    largest sample is kept) and VmHWM (the peak since start, POST included) is read."""
    with Server(poold, "python", workers=1) as server:
        conn = server.http()
        submit(conn, {"function": "sleep", "items": [600]})
        body = json.dumps({"function": "square", "items": list(range(n))}).encode()
        deadline = time.monotonic() + 30
        while True:  # wait until the sleep runs
            _, _, pool = conn.request("GET", "/v1/pool")
            if json.loads(pool)["workers"][0]["state"] == "busy":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the sleep job never started")
            time.sleep(0.02)
        base = server.proc_status()
        job_id = submit(conn, body)
        rss = 0
        for _ in range(40):
            rss = max(rss, server.proc_status()["VmRSS"])
            time.sleep(0.05)
        status = server.proc_status()
        _, _, job = conn.request("GET", f"/v1/jobs/{job_id}")
        job = json.loads(job)
        if job["status"] in FINISHED or job["done"] > n // 10:
            raise RuntimeError(f"the big job was not queued: {job}")
        conn.close()
        return max(rss, status["VmRSS"]), status["VmHWM"], base["VmRSS"]


POOL_RSS_SCRIPT = """
import multiprocessing, sys
sys.path.insert(0, sys.argv[1])
from funcs import square
if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        pool.map(square, range(int(sys.argv[2])))
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) * 1024)
"""


def pool_rss(n):
    """Peak RSS (VmHWM) of a fresh Python parent that runs `Pool(2).map(square, range(n))`."""
    out = subprocess.run([PYTHON, "-c", POOL_RSS_SCRIPT, HERE, str(n)], capture_output=True,
                         text=True, timeout=300, check=True)
    return int(out.stdout.strip())


# --------------------------------------------------------------------------------------------
# Several nodes on one PostgreSQL (14-16)


def start_nodes(poold, url, nodes, workers, stack, stagger=0.0):
    """`nodes` nodes named bench-1, bench-2, … (the built-in worker, `workers` each) on the
    database at `url`, entered on `stack` (an ExitStack); returns them once the first lists
    them all alive. With `stagger`, each node after the first starts a random 0–`stagger`
    seconds after the one before (so that their heartbeats are out of step, as on machines
    started independently)."""
    servers = []
    for i in range(1, nodes + 1):
        if i > 1 and stagger:
            time.sleep(random.uniform(0, stagger))
        servers.append(stack.enter_context(Server(poold, "rust", workers, database=url,
                                                  serve_args=["--node-name", f"bench-{i}"])))
    conn = servers[0].http()
    deadline = time.monotonic() + 30
    try:
        while True:
            _, _, body = conn.request("GET", "/v1/nodes")
            ids = {n["id"] for n in json.loads(body)["nodes"] if n["state"] == "alive"}
            if ids >= {s.node_id for s in servers}:
                return servers
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every node alive in 30 s: {body[:1000]!r}")
            time.sleep(0.02)
    finally:
        conn.close()


def poold_cluster_map(poold, postgres, nodes, function, items, chunksize):
    """Seconds from the POST (on the first of `nodes` nodes, `--workers 1` each, on a fresh
    PostgreSQL database) to the job being completed, as `poold_map`."""
    body = json.dumps({"function": function, "items": items, "chunksize": chunksize}).encode()
    with postgres.database() as url, contextlib.ExitStack() as stack:
        first = start_nodes(poold, url, nodes, 1, stack)[0]
        return timed_job(first, body, len(items))


class NoClaimAtKill(Exception):
    """The victim of workload 16 held no claim once killed (it finished its chunks between
    the query and the kill): the sample measures nothing and is taken again."""


LEASE_S = 10.0  # poold's default --node-lease; its nodes heartbeat every third of it


def poold_kill_to_elsewhere(poold, postgres, items, seconds, attempts=3):
    """Three nodes (2 built-in workers each, the default `--node-lease`, started out of step)
    on a fresh database; `items` × `sleep(seconds)`, chunksize 1, POSTed on the first. Once
    the second node holds claims (`chunks.owner`, queried with psql), and a random 0–lease/3
    seconds later (a kill lands anywhere between two heartbeats), it gets SIGKILL; then the
    database is polled until no queued chunk is owned by it and at least one of the chunks it
    held is claimed by another node or done. Returns (seconds from the kill to its claims
    being released, to one of them running elsewhere, each read when the poll that saw it
    returned; and how old its last heartbeat was at the kill)."""
    for attempt in range(attempts):
        try:
            return _kill_to_elsewhere(poold, postgres, items, seconds)
        except NoClaimAtKill:
            log(f"    the victim held no claim at its kill (attempt {attempt + 1}); again")
    raise RuntimeError(f"the victim held no claim at its kill, {attempts} times")


def _kill_to_elsewhere(poold, postgres, items, seconds):
    job = {"function": "sleep", "items": [seconds] * items, "chunksize": 1}
    with postgres.database() as url, contextlib.ExitStack() as stack:
        first, victim, _ = start_nodes(poold, url, 3, 2, stack, stagger=LEASE_S / 3)
        conn = first.http()
        submit(conn, job)
        conn.close()
        claims = f"select start from chunks where state = 0 and owner = '{victim.node_id}'"
        deadline = time.monotonic() + 30
        while not postgres.query(url, claims):
            if time.monotonic() > deadline:
                raise RuntimeError("the victim claimed no chunk in 30 s")
            time.sleep(0.02)
        time.sleep(random.uniform(0, LEASE_S / 3))
        age = float(postgres.query(url, "select extract(epoch from now() - heartbeat_at) "
                                        f"from nodes where id = '{victim.node_id}'")[0][0])
        victim.proc.kill()
        killed = time.perf_counter()
        victim.proc.wait()
        held = [row[0] for row in postgres.query(url, claims)]
        if not held:
            raise NoClaimAtKill()
        poll = (f"select (select count(*) from chunks where state = 0"
                f"        and owner = '{victim.node_id}'),"
                f"       (select count(*) from chunks where start in ({', '.join(held)})"
                f"        and (state = 1 or (state = 0 and owner <> '{victim.node_id}')))")
        released = None
        while True:
            left, elsewhere = (int(x) for x in postgres.query(url, poll)[0])
            now = time.perf_counter() - killed
            if left == 0 and released is None:
                released = now
            if left == 0 and elsewhere > 0:
                return released, now, age
            if now > 60:
                raise RuntimeError(f"the victim's chunks not elsewhere 60 s after its kill "
                                   f"({left} still claimed); first node's log:\n"
                                   f"{first.log_text()}")
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Calibration, repetitions, the table


def calibrate_spin(target_s=0.0004):
    """Steps of `spin` that take ~target_s of CPU in this interpreter. CPU time of this thread
    (not wall time), so other programs competing for the CPUs do not shrink the item."""
    steps = 10000
    spin(steps)
    runs = []
    for _ in range(100):
        t0 = time.thread_time()
        spin(steps)
        runs.append(time.thread_time() - t0)
    return max(100, int(round(target_s / (statistics.median(runs) / steps))))


def reps_of(reps, *samplers):
    """Alternate the samplers `reps` times; return each one's list of results."""
    results = [[] for _ in samplers]
    for _ in range(reps):
        for i, sampler in enumerate(samplers):
            results[i].append(sampler())
    return results


class Skipped(Exception):
    """A workload that cannot run on this machine; the message says why."""


class Row:
    def __init__(self, workload, poold, pool, ratio, bar, unit, better, ray=None, result=None):
        self.workload, self.poold, self.pool, self.ratio = workload, poold, pool, ratio
        self.bar, self.unit, self.better = bar, unit, better  # bar = (must, target) on `better`
        self.ray = ray  # Ray Pool(2)'s figure (9-13 with --python); the ratio is then to it
        self.result = result  # a verdict given, e.g. "skipped"

    def verdict(self):
        if self.result is not None:
            return self.result
        if self.bar is None:
            return "info"
        value = self.ratio if self.better.startswith("ratio") else self.poold
        if value is None:
            return "n/a"
        must, target = self.bar
        ok = (lambda b: value >= b) if self.better.endswith("high") else (lambda b: value <= b)
        if target is not None and ok(target):
            return "PASS (target)"
        if must is None:  # reported; only a target to reach
            return "reported"
        return "PASS (must)" if ok(must) else "FAIL"

    def bars(self):
        if self.bar is None:
            return "—"
        must, target = self.bar
        op = "≥" if self.better.endswith("high") else "≤"
        unit = "×" if self.better.startswith("ratio") else f" {self.unit}"
        parts = [] if must is None else [f"must {op} {fmt(must)}{unit}"]
        if target is not None:
            parts.append(f"target {op} {fmt(target)}{unit}")
        return ", ".join(parts)


def fmt(x):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def print_table(rows):
    header = ["workload", "poold", "Pool(2)", "Ray Pool(2)", "ratio", "bars", "result"]
    cell = lambda x, unit: f"{fmt(x)} {unit}" if x is not None else "—"  # noqa: E731
    lines = [[r.workload, cell(r.poold, r.unit), cell(r.pool, r.unit), cell(r.ray, r.unit),
              f"{r.ratio:.3f}×" if r.ratio is not None else "—", r.bars(), r.verdict()]
             for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    def show(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |")
    show(header)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        show(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, sizes / 10")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--only", help="workload numbers, e.g. 1,5 or 9-13")
    parser.add_argument("--poold", default=os.path.join(ROOT, "target", "release", "poold"))
    parser.add_argument("--python", help="an interpreter that can import ray: adds "
                        "ray.util.multiprocessing.Pool(2) to workloads 9-13")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not os.access(args.poold, os.X_OK):
        sys.exit(f"{args.poold} not found: run `cargo build --release` first")
    reps = args.reps or (1 if args.quick else 3)
    scale = 10 if args.quick else 1
    only = set(range(1, 17))
    if args.only:
        only = set()
        for part in args.only.split(","):
            first, _, last = part.partition("-")
            only.update(range(int(first), int(last or first) + 1))
    ray_version = sdk.ray_available(args.python)
    if args.python and ray_version is None:
        sys.exit(f"{args.python} cannot import ray")
    ray_python = args.python if ray_version else None
    poold = args.poold
    rows, notes, raw = [], [], {}
    started = time.monotonic()

    def load():
        return " ".join(f"{x:.2f}" for x in os.getloadavg())

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"# poold vs multiprocessing.Pool(2) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# commit {commit}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"repetitions {reps}{', quick' if args.quick else ''}, load average at start {load()}"
          + (f", Ray {ray_version}" if ray_version else ", no Ray (--python)"))
    sys.stdout.flush()

    def throughput(num, label, function, items, chunksize, how, db_sizes=None):
        n = len(items)
        log(f"[{num}] {label}: {n} items …")
        py, pool, rust = reps_of(
            reps,
            lambda: poold_map(poold, "python", function, items, chunksize, db_sizes),
            lambda: pool_map(function, items, chunksize, how),
            lambda: poold_map(poold, "rust", function, items, chunksize))
        raw[label] = {"poold_python_s": py, "pool_s": pool, "poold_rust_s": rust}
        return n / statistics.median(py), n / statistics.median(pool), n / statistics.median(rust)

    def workload_1():
        n = 100_000 // scale
        py, pool, rust = throughput(1, f"1. {n:,} trivial, chunksize 1", "square",
                                    list(range(n)), 1, "imap")
        bar = (1.0, 1.5)
        rows.append(Row(f"1. {n:,} trivial, chunksize 1 (imap)", py, pool, py / pool, bar,
                        "items/s", "ratio-high"))
        rows.append(Row("   same, built-in Rust worker", rust, pool, rust / pool, bar,
                        "items/s", "ratio-high"))
    def workload_2():
        n = 1_000_000 // scale
        py, pool, rust = throughput(2, f"2. {n:,} trivial, chunksize 100", "square",
                                    list(range(n)), 100, "imap")
        bar = (0.5, 0.8)
        rows.append(Row(f"2. {n:,} trivial, chunksize 100 (imap)", py, pool, py / pool,
                        bar, "items/s", "ratio-high"))
        rows.append(Row("   same, built-in Rust worker", rust, pool, rust / pool, bar,
                        "items/s", "ratio-high"))
    def workload_3():
        n = 1_000_000 // scale
        sizes = []
        items = list(range(n))
        py, pool, rust = throughput(3, f"3. {n:,} trivial, automatic chunksize", "square",
                                    items, None, "map", sizes)
        bar = (0.25, 0.5)
        rows.append(Row(f"3. {n:,} trivial, auto chunksize (map)", py, pool, py / pool,
                        bar, "items/s", "ratio-high"))
        rows.append(Row("   same, built-in Rust worker", rust, pool, rust / pool, bar,
                        "items/s", "ratio-high"))
        # The JSON a user sent and got back: the items, and each result's value.
        json_bytes = len(json.dumps(items)) + len(json.dumps([x * x for x in items]))
        db = statistics.median(sizes)
        raw["3-db"] = {"db_bytes": sizes, "json_bytes": json_bytes}
        rows.append(Row("   database size after it (file + WAL)", db / 1e6, json_bytes / 1e6,
                        db / json_bytes, (None, 2.0), "MB", "ratio-low"))
        notes.append(f"3: the Pool column of the size row is the JSON of the items and of "
                     f"the results' values ({json_bytes:,} bytes); the ratio is database / JSON.")
    def workload_4():
        n = 10_000 // scale
        steps = calibrate_spin()
        log(f"[4] {n} × spin({steps}) …")
        items = [steps] * n
        py, pool = reps_of(reps, lambda: poold_map(poold, "python", "spin", items, None),
                           lambda: pool_map("spin", items, None, "map"))
        raw["4"] = {"spin_steps": steps, "poold_s": py, "pool_s": pool}
        py, pool = statistics.median(py), statistics.median(pool)
        rows.append(Row(f"4. {n:,} CPU-bound (~0.4 ms), auto chunksize: wall", py, pool,
                        py / pool, (1.1, 1.03), "s", "ratio-low"))
        notes.append(f"4: spin({steps}) is calibrated to 0.4 ms of CPU in the harness process; "
                     f"the Pool's wall time was {pool * 2 / n * 1000:.3f} ms per item per "
                     f"worker (wall × 2 / items; more than 0.4 when the CPUs are shared).")
    def workload_5():
        samples = 300 // scale
        log(f"[5] latency, {samples} samples × {reps} …")
        py, pool = reps_of(reps, lambda: poold_latency(poold, samples),
                           lambda: pool_latency(1000 // scale))
        p50 = statistics.median(percentile(t, 50) for t, _ in py) * 1000
        p99 = statistics.median(percentile(t, 99) for t, _ in py) * 1000
        post50 = statistics.median(percentile(p, 50) for _, p in py) * 1000
        pool50 = statistics.median(percentile(t, 50) for t in pool) * 1000
        pool99 = statistics.median(percentile(t, 99) for t in pool) * 1000
        raw["5"] = {"poold_p50_ms": p50, "poold_p99_ms": p99, "post_p50_ms": post50,
                    "pool_p50_ms": pool50, "pool_p99_ms": pool99}
        rows.append(Row("5. latency 1-item job, POST → result event, p50", p50, pool50,
                        None, (2.0, 1.0), "ms", "abs-low"))
        rows.append(Row("   same, p99", p99, pool99, None, (10.0, None), "ms", "abs-low"))
        notes.append(f"5: of the p50, POST → 201 took {post50:.3f} ms; Pool column is "
                     f"apply_async(square).get() on a warm Pool(2).")
    def workload_6():
        n = 1_000_000 // scale
        log(f"[6] replay of a finished {n:,}-item job …")
        server, job_id = replay_server(poold, n)
        try:
            sse, nd = reps_of(reps, lambda: replay(server, job_id, n, "sse"),
                              lambda: replay(server, job_id, n, "ndjson"))
        finally:
            server.stop()
        raw["6"] = {"sse_s": sse, "ndjson_s": nd}
        rows.append(Row(f"6. replay {n:,} results, SSE /events", n / statistics.median(sse),
                        None, None, (1_500_000, 3_000_000), "items/s", "abs-high"))
        rows.append(Row("   same, NDJSON /results", n / statistics.median(nd), None, None,
                        (1_500_000, 3_000_000), "items/s", "abs-high"))
    def workload_7():
        n = 10_000 // scale
        log(f"[7] {n:,} one-item jobs from 8 clients …")
        py, pool = reps_of(reps, lambda: poold_many_jobs(poold, n, 8),
                           lambda: pool_many_jobs(n, 8))
        done = py[0][1]
        py = done / statistics.median(t for t, _ in py)
        pool = done / statistics.median(t for t, _ in pool)
        raw["7"] = {"poold_jobs_s": py, "pool_jobs_s": pool}
        rows.append(Row(f"7. {done:,} one-item jobs, 8 concurrent clients", py, pool,
                        py / pool, (5000, 10_000), "jobs/s", "abs-high"))
    def workload_8():
        n = 1_000_000 // scale
        log(f"[8] RSS with {n:,} items queued …")
        py, pool = reps_of(reps, lambda: poold_rss(poold, n), lambda: pool_rss(n))
        mb = 1024 * 1024
        rss = statistics.median(r for r, _, _ in py) / mb
        hwm = statistics.median(h for _, h, _ in py) / mb
        idle = statistics.median(b for _, _, b in py) / mb
        pool = statistics.median(pool) / mb
        raw["8"] = {"rss_mb": rss, "hwm_mb": hwm, "idle_mb": idle, "pool_hwm_mb": pool}
        rows.append(Row(f"8. server RSS, {n:,} items queued (VmRSS)", rss, pool, rss / pool,
                        (25, None), "MB", "abs-low"))
        rows.append(Row("   same, peak incl. the POST (VmHWM)", hwm, pool, hwm / pool,
                        (45, None), "MB", "abs-low"))
        notes.append(f"8: poold VmRSS before the POST {idle:.1f} MB; Pool column is the "
                     f"VmHWM of a fresh Python parent running Pool(2).map(square, range(n)).")

    def on_server(sample, *args):
        """A sample on a fresh server with the SDK worker."""
        with Server(poold, "python") as server:
            return sample(server, *args)

    def cpu_note(number, samples):
        """Where the CPU went in poold's samples (medians): which side bounds the row."""
        part = {k: statistics.median(s[k] for s in samples)
                for k in ("client_cpu", "server_cpu", "workers_cpu")}
        notes.append(f"{number}: CPU per sample: client {part['client_cpu']:.2f} s, poold "
                     f"{part['server_cpu']:.2f} s, its workers {part['workers_cpu']:.2f} s")
        return part

    def sdk_throughput(number, label, workload, n, chunksize, bar, better="ratio-high"):
        log(f"[{number}] {label} …")
        samplers = [lambda: on_server(sdk.poold_sample, workload, n, chunksize),
                    lambda: sdk.pool_sample(workload, n, chunksize)]
        if ray_python:
            samplers.append(lambda: sdk.ray_sample(ray_python, workload, n, chunksize))
        got = reps_of(reps, *samplers)
        py = n / statistics.median(s["figure"] for s in got[0])
        pool = n / statistics.median(got[1])
        ray = n / statistics.median(got[2]) if ray_python else None
        raw[str(number)] = {"poold": got[0], "pool_s": got[1],
                            "ray_s": got[2] if ray_python else None}
        cpu_note(number, got[0])
        rows.append(Row(label, py, pool, py / ray if ray else None, bar, "items/s", better, ray))

    def workload_9():
        n = 200_000 // scale
        sdk_throughput(9, f"9. SDK map {n:,}, auto chunksize", "map", n, None, (1.0, None))

    def workload_10():
        n = 200_000 // scale
        sdk_throughput(10, f"10. SDK imap {n:,}, chunksize 1000", "imap", n, 1000, (1.0, None))

    def workload_11():
        n = 1_000_000 // scale
        log(f"[11] the SDK reads a finished {n:,}-item job …")
        server, job_id = replay_server(poold, n)
        try:
            got = reps_of(reps, lambda: sdk.poold_replay(server, job_id, n))[0]
        finally:
            server.stop()
        raw["11"] = got
        cpu_note(11, got)
        rows.append(Row(f"11. SDK reads a finished {n:,}-item job",
                        n / statistics.median(s["figure"] for s in got), None, None,
                        (500_000, None), "items/s", "abs-high"))

    def workload_12():
        n = 5_000 // scale
        sdk_throughput(12, f"12. SDK imap {n:,}, chunksize 1", "imap", n, 1, (10.0, None))

    def workload_13():
        calls = 300 // scale
        log(f"[13] apply round trip, {calls} calls × {reps} …")
        samplers = [lambda: on_server(sdk.poold_sample, "apply", calls),
                    lambda: sdk.pool_sample("apply", calls)]
        if ray_python:
            samplers.append(lambda: sdk.ray_sample(ray_python, "apply", calls))
        got = reps_of(reps, *samplers)
        py = statistics.median(sdk.percentile(s["figure"], 50) for s in got[0]) * 1000
        py99 = statistics.median(sdk.percentile(s["figure"], 99) for s in got[0]) * 1000
        pool = statistics.median(sdk.percentile(t, 50) for t in got[1]) * 1000
        ray = statistics.median(r["p50_ms"] for r in got[2]) if ray_python else None
        ray99 = statistics.median(r["p99_ms"] for r in got[2]) if ray_python else None
        raw["13"] = {"poold_p50_ms": py, "poold_p99_ms": py99, "pool_p50_ms": pool,
                     "ray_p50_ms": ray, "ray_p99_ms": ray99}
        rows.append(Row("13. SDK apply round trip, p50", py, pool, py / ray if ray else None,
                        (1.0, None), "ms", "ratio-low", ray))
        notes.append(f"13: p99 poold {py99:.2f} ms" + (f", Ray {ray99:.2f} ms" if ray else ""))

    pg = None

    def postgres():
        """The PostgreSQL server of 14-16, started on first use; Skipped without binaries."""
        nonlocal pg
        if pg is None:
            if Postgres.bin_dir() is None:
                raise Skipped(f"no PostgreSQL server binaries under {Postgres.ROOT}/*/bin "
                              f"(apt-get install postgresql)")
            log("starting a throwaway PostgreSQL …")
            pg = Postgres()
        return pg

    def on_postgres(sample, *args):
        """A sample on a fresh database of the PostgreSQL server."""
        with postgres().database() as url:
            return sample(*args, database=url)

    def workload_14():
        pg = postgres()
        n = 270 // scale
        items = [0.05] * n
        log(f"[14] {n} × sleep(0.05), chunksize 1: 1 node, then 3 nodes, on PostgreSQL …")
        one, three = reps_of(reps, lambda: poold_cluster_map(poold, pg, 1, "sleep", items, 1),
                             lambda: poold_cluster_map(poold, pg, 3, "sleep", items, 1))
        raw["14"] = {"one_node_s": one, "three_nodes_s": three}
        one, three = n / statistics.median(one), n / statistics.median(three)
        rows.append(Row(f"14. {n} × sleep(0.05), chunksize 1: 3 nodes × 1 worker", three, None,
                        three / one, (2.7, 2.9), "items/s", "ratio-high"))
        rows.append(Row("    same, 1 node × 1 worker", one, None, None, None, "items/s",
                        "ratio-high"))
        notes.append("14: ratio = 3 nodes / 1 node (each sample on a fresh PostgreSQL "
                     "database, built-in worker, `--workers 1` per node, the job POSTed on "
                     "the first node, timed to `completed`); 1 worker does at most 20 items/s.")

    def workload_15():
        postgres()
        n = 1_000_000 // scale
        items = list(range(n))
        log(f"[15] workload 2 ({n:,} trivial, chunksize 100) on PostgreSQL and on SQLite …")
        on_pg, on_sqlite = reps_of(
            reps, lambda: on_postgres(poold_map, poold, "python", "square", items, 100),
            lambda: poold_map(poold, "python", "square", items, 100))
        raw["15-map"] = {"postgres_s": on_pg, "sqlite_s": on_sqlite}
        on_pg, on_sqlite = n / statistics.median(on_pg), n / statistics.median(on_sqlite)
        rows.append(Row(f"15. workload 2 on PostgreSQL ({n:,}, chunksize 100)", on_pg, None,
                        on_pg / on_sqlite, (0.5, None), "items/s", "ratio-high"))
        rows.append(Row("    same on SQLite", on_sqlite, None, None, None, "items/s",
                        "ratio-high"))
        jobs = 10_000 // scale
        log(f"[15] workload 7 ({jobs:,} one-item jobs, 8 clients) on PostgreSQL and on SQLite …")
        on_pg, on_sqlite = reps_of(reps, lambda: on_postgres(poold_many_jobs, poold, jobs, 8),
                                   lambda: poold_many_jobs(poold, jobs, 8))
        done = on_pg[0][1]
        raw["15-jobs"] = {"postgres_s": [t for t, _ in on_pg],
                          "sqlite_s": [t for t, _ in on_sqlite]}
        on_pg = done / statistics.median(t for t, _ in on_pg)
        on_sqlite = done / statistics.median(t for t, _ in on_sqlite)
        rows.append(Row(f"15. workload 7 on PostgreSQL ({done:,} jobs, 8 clients)", on_pg,
                        None, on_pg / on_sqlite, (0.5, None), "jobs/s", "ratio-high"))
        rows.append(Row("    same on SQLite", on_sqlite, None, None, None, "jobs/s",
                        "ratio-high"))
        notes.append("15: one node, the SDK worker, as workloads 2 and 7; ratio = PostgreSQL "
                     "/ SQLite, samples alternating. PostgreSQL is a throwaway local server "
                     "with fsync=off and full_page_writes=off (commits still write their WAL "
                     "to the OS), on loopback TCP without TLS (it offers none); SQLite as poold always runs it (WAL, synchronous=NORMAL).")

    def workload_16():
        pg = postgres()
        items, seconds = 720, 0.5
        log(f"[16] kill -9 of one of 3 nodes under {items} × sleep({seconds}) …")
        got = reps_of(reps, lambda: poold_kill_to_elsewhere(poold, pg, items, seconds))[0]
        released, elsewhere, ages = ([sample[k] for sample in got] for k in range(3))
        raw["16"] = {"released_s": released, "elsewhere_s": elsewhere,
                     "heartbeat_age_at_kill_s": ages}
        rows.append(Row(f"16. kill -9 of a node → its chunks run elsewhere "
                        f"(lease {LEASE_S:.0f} s)", statistics.median(elsewhere), None, None,
                        (LEASE_S + 2, None), "s", "abs-low"))
        listed = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        notes.append(f"16: 3 nodes × 2 built-in workers, default --node-lease {LEASE_S:.0f} "
                     f"(heartbeat every {LEASE_S / 3:.1f} s); per sample, kill → chunks "
                     f"elsewhere {listed(elsewhere)} s, the victim's last heartbeat being "
                     f"{listed(ages)} s old at the kill; kill → its claims released (owner "
                     f"NULL) {statistics.median(released):.2f} s (median). Other nodes look "
                     f"for lost ones on their own heartbeats: a sample is lease − heartbeat "
                     f"age + up to {LEASE_S / 3:.1f} s.")

    workloads = [workload_1, workload_2, workload_3, workload_4, workload_5, workload_6,
                 workload_7, workload_8, workload_9, workload_10, workload_11, workload_12,
                 workload_13, workload_14, workload_15, workload_16]

    def on_sigterm(signum, _frame):
        """A SIGTERM unwinds the harness like a Ctrl-C, so that its servers and temporary
        files are removed."""
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Forked children (Pool workers, workload 7's clients) get the default action back at
    # once: `Pool.terminate()` stops its workers with SIGTERM while they may be blocked in a
    # semaphore's wait, where a Python-level handler does not reliably run (a worker once
    # outlived it there and the harness waited on it forever).
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        for number, workload in enumerate(workloads, 1):
            if number not in only:
                continue
            try:
                workload()
            except Skipped as e:
                log(f"[{number}] skipped: {e}")
                rows.append(Row(f"{number}. skipped: {e}", None, None, None, None, "",
                                "abs-high", result="skipped"))
            except Exception as e:  # report it, go on with the next workload
                import traceback
                traceback.print_exc()
                rows.append(Row(f"{number}. ERROR: {type(e).__name__}: {str(e)[:80]}", None,
                                None, None, None, "", "abs-high"))
    finally:
        if pg is not None:
            pg.stop()
        print()
        print_table(rows)
        print()
        for note in notes:
            print(f"- {note}")
        print(f"- wall time of this run {time.monotonic() - started:.0f} s; "
              f"load average at end {load()}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": [r.__dict__ for r in rows], "raw": raw}, f, indent=1)


if __name__ == "__main__":
    main()
