"""``poold.Process``: ``multiprocessing.Process``'s shape for one call run on a poold worker,
so that code written as ``Process(target=f, args=(x,)).start() … join()`` runs unchanged but
for the import line.

``start()`` submits ``target(*args, **kwargs)`` as a one-item job through a pool made from
``POOLD_URL``/``POOLD_API_TOKEN`` (see :class:`poold.Pool`); ``join()`` waits for it, then
writes what the function printed to this process's stdout (a local child would have written
it to the same terminal) and, if it raised, the remote traceback to stderr with ``exitcode``
1, as a child process that dies of an exception does.
"""

import itertools
import sys
import threading

from .client import Pool

_counter = itertools.count(1)
_shared = {}
_shared_lock = threading.Lock()


def _default_pool():
    with _shared_lock:
        if "pool" not in _shared:
            _shared["pool"] = Pool()
        return _shared["pool"]


class Process:
    """``Process(group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None)``:
    ``start``, ``join(timeout)``, ``is_alive``, ``exitcode``, ``name``; ``run()`` calls the
    target here, as ``multiprocessing.Process.run`` does. ``job_id`` names the job once
    started."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        if group is not None:
            raise ValueError("group must be None")
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name or f"Process-{next(_counter)}"
        self.daemon = bool(daemon)
        self.job_id = None
        self._result = None
        self._exitcode = None

    def __repr__(self):
        return f"<poold.Process name={self.name!r} exitcode={self._exitcode}>"

    def run(self):
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self):
        if self._result is not None or self._exitcode is not None:
            raise AssertionError("cannot start a process twice")
        if self._target is None:
            self._exitcode = 0
            return
        self._result = _default_pool().apply_async(self._target, self._args, self._kwargs)
        self.job_id = self._result.job_id

    def is_alive(self):
        return self._result is not None and self._exitcode is None and not self._result.ready()

    @property
    def exitcode(self):
        return self._exitcode

    def join(self, timeout=None):
        if self._result is None and self._exitcode is None:
            raise AssertionError("can only join a started process")
        if self._exitcode is not None:
            return
        self._result.wait(timeout)
        if not self._result.ready():
            return
        if self._result.logs.get(0):
            sys.stdout.write(self._result.logs[0])
            sys.stdout.flush()
        if self._result.successful():
            self._exitcode = 0
            return
        self._exitcode = 1
        try:
            self._result.get()
        except Exception as e:
            cause = e.__cause__
            text = getattr(cause, "tb", None) or ""
            print(f"Process {self.name}:{text}\n{type(e).__name__}: {e}", file=sys.stderr)
