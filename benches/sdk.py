"""The workloads of issue 13, for `run.py`: `poold.Pool` as a new user runs it — the SDK client
in this process, `python -m poold.worker funcs` as poold's 2 workers — side by side with
`ray.util.multiprocessing.Pool(2)` (when `run.py --python` names an interpreter that can
import `ray`) and the local `multiprocessing.Pool(2)`, all running `funcs.square`.

Each poold sample also reads CPU time: this process's (the client: upload and reader
threads), poold's, and its workers', from `/proc`, to tell which side bounds a row.
"""

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))

import poold  # noqa: E402

from funcs import square  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _cpu(server):
    workers = [w["pid"] for w in server.pool()["workers"] if w["pid"]]
    return (time.process_time(), cpu_seconds(server.proc.pid), sum(map(cpu_seconds, workers)))


def _run(pool, workload, n, chunksize):
    """Run one workload; its figure: seconds, or for `apply` the per-call latencies."""
    if workload == "apply":
        for i in range(20):  # warm: connections open
            pool.apply(square, (i,))
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            pool.apply(square, (i,))
            times.append(time.perf_counter() - t0)
        return times
    t0 = time.perf_counter()
    if workload == "map":
        count = len(pool.map(square, range(n)))
    else:
        count = sum(1 for _ in pool.imap(square, range(n), chunksize=chunksize))
    elapsed = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"{count} of {n} results")
    return elapsed


def poold_sample(server, workload, n, chunksize=None):
    """One sample on a fresh server: {"figure", "client_cpu", "server_cpu", "workers_cpu"}."""
    pool = poold.Pool(url=f"http://{server.host}:{server.port}")
    try:
        before = _cpu(server)
        figure = _run(pool, workload, n, chunksize)
        after = _cpu(server)
    finally:
        pool.terminate()
    client, poold_cpu, workers = (a - b for a, b in zip(after, before))
    return {"figure": figure, "client_cpu": client, "server_cpu": poold_cpu, "workers_cpu": workers}


def pool_sample(workload, n, chunksize=None):
    """The same on a fresh local multiprocessing.Pool(2), warmed before the clock starts."""
    with multiprocessing.Pool(2) as pool:
        pool.apply(square, (0,))
        pool.apply(square, (0,))
        return _run(pool, workload, n, chunksize)


def poold_replay(server, job_id, n):
    """Seconds to read every result of a finished n-item job through the SDK (`Pool.results`)."""
    pool = poold.Pool(url=f"http://{server.host}:{server.port}")
    before = _cpu(server)
    t0 = time.perf_counter()
    count = sum(1 for _ in pool.results(job_id))
    elapsed = time.perf_counter() - t0
    after = _cpu(server)
    if count != n:
        raise RuntimeError(f"replay: {count} of {n} results")
    client, poold_cpu, _ = (a - b for a, b in zip(after, before))
    return {"figure": elapsed, "client_cpu": client, "server_cpu": poold_cpu, "workers_cpu": 0.0}


def ray_sample(python, workload, n, chunksize=None):
    """One sample of ray.util.multiprocessing.Pool(2) in a process of its own (`ray_side.py`
    run by `python`), or None without one."""
    if python is None:
        return None
    args = [python, os.path.join(HERE, "ray_side.py"), workload, str(n), str(chunksize or "auto")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"ray_side.py failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if workload == "apply":
        return result
    return result["wall_s"]


def ray_available(python):
    """Whether `python` can import ray (and its version, for the table's header)."""
    if python is None:
        return None
    out = subprocess.run([python, "-c", "import ray; print(ray.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def median(values):
    return statistics.median(values)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
