"""The Python functions every side of the benchmark runs: poold's workers serve them
(`python -m poold.worker funcs`), and `benches/run.py` hands the same objects to the local
`multiprocessing.Pool` (and Ray's), so a ratio measures poold's overhead, not a different
function."""

import time


def square(x):
    """square(x): x * x (the trivial item)."""
    return x * x


def spin(n):
    """spin(n): a CPU-bound loop of n steps (run.py calibrates n to ~0.4 ms)."""
    total = 0
    for i in range(n):
        total += i * i
    return total & 0xFFFF


def sleep(seconds):
    """sleep(seconds): sleep, return seconds (keeps a worker busy in the RSS workload)."""
    time.sleep(seconds)
    return seconds


FUNCTIONS = {"square": square, "spin": spin, "sleep": sleep}
