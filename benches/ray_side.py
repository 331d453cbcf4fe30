"""The Ray side of the issue-13 workloads (run by `benches/sdk.py` with the interpreter given
to `run.py --python`, one process per sample, so that Ray's daemons never run during poold's
samples): `ray.util.multiprocessing.Pool(2)` runs the same `funcs.square` as poold.Pool.

    /path/to/venv/bin/python benches/ray_side.py WORKLOAD N [CHUNKSIZE]

prints one JSON object: {"wall_s": …} (for `apply`: {"p50_ms": …, "p99_ms": …}).
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ray  # noqa: E402
from ray.util.multiprocessing import Pool  # noqa: E402

from funcs import square  # noqa: E402


def main():
    workload, n = sys.argv[1], int(sys.argv[2])
    chunksize = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "auto" else None
    # Ray's workers import `funcs` by reference: they inherit PYTHONPATH from this process.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")] if p
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        pool = Pool(2)
        pool.map(square, range(100))  # both sides start with ready workers
        for i in range(20):
            pool.apply(square, (i,))
        if workload == "apply":
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                pool.apply(square, (i,))
                times.append(time.perf_counter() - t0)
            times.sort()
            out = {"p50_ms": statistics.median(times) * 1000,
                   "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1000}
        else:
            t0 = time.perf_counter()
            if workload == "map":
                values = pool.map(square, range(n)) if chunksize is None else pool.map(square, range(n), chunksize)
                count = len(values)
            else:
                count = sum(1 for _ in pool.imap(square, range(n), chunksize=chunksize or 1))
            out = {"wall_s": time.perf_counter() - t0}
            if count != n:
                raise RuntimeError(f"{count} of {n} results")
        pool.close()
        pool.join()
    finally:
        ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
