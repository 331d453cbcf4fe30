"""Functions the Python SDK tests run both on poold (served by ``python -m poold.worker
sdk_funcs``) and on a local ``multiprocessing.Pool``, to compare the two."""

import dataclasses
import os
import sys
import threading
import time
from math import sqrt  # imported, not defined here: must not be served

_INIT = {"calls": 0, "greeting": None}


def square(x):
    """Return x * x."""
    return x * x


def cube(x):
    return x * x * x


def power(x, exp=2):
    """x ** exp; use with functools.partial(power, exp=3)."""
    return x**exp


def add(a, b):
    return a + b


def pair(x):
    """A tuple result: a list under the json codec, a tuple under pickle."""
    return (x, -x)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def mirror(value):
    """Returns what it was given, with its type: tuples, sets, dataclasses (pickle codec)."""
    return value


def shift(point, dx=0):
    """A dataclass in, a dataclass out."""
    return Point(point.x + dx, point.y)


def describe(*args, **kwargs):
    """The type names of its arguments, to check what a worker was given."""
    return [type(a).__name__ for a in args] + sorted(f"{k}={type(v).__name__}" for k, v in kwargs.items())


class Custom(Exception):
    """An exception type of this module: the client rebuilds it from a pickle."""

    def __init__(self, code, why):
        super().__init__(code, why)
        self.code = code


def raise_custom(x):
    raise Custom(x, "custom failure")


def make_lock(_):
    """A result no codec can send."""
    return threading.Lock()


def raise_runtime(x):
    raise RuntimeError(f"runtime failure {x}")


def sleep_square(x):
    time.sleep(0.05)
    return x * x


def slow_square(x):
    time.sleep(0.02)
    return x * x


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"three is not allowed (got {x})")
    return x


def stop_on_two(x):
    if x == 2:
        raise StopIteration("two")
    return x


def key_error(key):
    return {"a": 1}[key]


def noisy(x):
    print(f"noisy {x}")
    print("second line", file=sys.stdout)
    return x + 1


def raw_stdout(x):
    """Writes straight to file descriptor 1: must not corrupt the protocol."""
    os.write(1, b"raw write to fd 1\n")
    return x


def whoami(_):
    """The worker's pid, how many times its initializer ran, and what it was given."""
    return [os.getpid(), _INIT["calls"], _INIT["greeting"]]


def init_worker(pid_file, greeting):
    """Initializer: records this process's pid in pid_file (one line per call)."""
    _INIT["calls"] += 1
    _INIT["greeting"] = greeting
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()}\n")


def _private_helper(x):
    return x
