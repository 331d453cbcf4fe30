"""``poold.Pool``: the ``multiprocessing.Pool`` API over poold's HTTP API.

Each call submits one map job (``POST /v1/jobs``) and reads its results back:

- ``map``/``starmap``/``apply`` and their ``*_async`` forms wait for the job to finish
  (``GET /v1/jobs/{id}?wait=``) and read its results in pages (``GET /v1/jobs/{id}/results``);
  the async forms do that on a thread, as ``Pool`` does, and call ``callback`` or
  ``error_callback`` there.
- ``imap``/``imap_unordered`` stream results as they are recorded, over server-sent events
  (``GET /v1/jobs/{id}/events``, ``?order=completion`` for unordered), resuming after a
  dropped connection with ``Last-Event-ID`` (see :class:`poold._http.EventStream`).

Functions are named by string or by a function object (its ``__name__``; the worker must
serve a function of that name). ``functools.partial`` objects work: their keywords become
the job's ``kwargs`` and their positional arguments go before each item. Items and results
travel as JSON: tuples come back as lists.

``close``/``join``/``terminate`` apply to the jobs *this* ``Pool`` object submitted; they
never close poold's pool for other clients. ``terminate`` (and leaving a ``with`` block)
cancels this object's unfinished jobs.
"""

import functools
import multiprocessing
import threading

from ._http import EventStream, Http
from .errors import PooldError, remote_error

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

#: Seconds each long-poll asks poold to wait (``?wait=``) before asking again.
_LONG_POLL = 30
_PAGE = 10000
_FINISHED = ("completed", "failed", "cancelled")


def _function_name(func):
    if isinstance(func, str):
        return func
    name = getattr(func, "__name__", None)
    if not name:
        raise TypeError(f"cannot name the remote function for {func!r}: pass its name")
    return name


class Pool:
    """A ``multiprocessing.Pool`` whose workers are a poold service at ``url``.

    ``token`` is sent as ``Authorization: Bearer <token>``. ``timeout`` bounds each HTTP
    request (long-polls add their wait to it).
    """

    def __init__(self, url, token=None, *, timeout=30.0):
        self._http = Http(url, token, timeout)
        self.url = self._http.url
        self._state = _RUN
        self._lock = threading.Lock()
        self._jobs = {}  # id -> finished? for the jobs this object submitted
        self._threads = []

    def __repr__(self):
        return f"<poold.Pool url={self.url!r} state={self._state}>"

    # ---- context manager and lifecycle ----

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.terminate()
        except PooldError:
            if exc_type is None:
                raise  # else keep the exception that is already on its way out

    def close(self):
        """Submit no more jobs through this object (``Pool.close``)."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self):
        """Cancel this object's unfinished jobs and submit no more (``Pool.terminate``)."""
        self._state = _TERMINATE
        with self._lock:
            unfinished = [id_ for id_, done in self._jobs.items() if not done]
        for id_ in unfinished:
            try:
                self._http.request("POST", f"/v1/jobs/{id_}/cancel")
            except PooldError as e:
                if e.status != 404:  # a job deleted meanwhile needs no cancelling
                    raise

    def join(self):
        """Wait until every job this object submitted has finished (``Pool.join``; call
        ``close`` or ``terminate`` first)."""
        if self._state == _RUN:
            raise ValueError("Pool is still running: call close() or terminate() first")
        with self._lock:
            unfinished = [id_ for id_, done in self._jobs.items() if not done]
            threads = list(self._threads)
        for id_ in unfinished:
            self._wait_job(id_)
        for thread in threads:
            thread.join()

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    # ---- the Pool API ----

    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` on a worker; its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        job = self._submit(func, [list(args)], star=True, chunksize=1, kwargs=kwds)
        return AsyncResult(self, job, True, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        """``[func(x) for x in iterable]`` on the workers, in order. Raises the first item
        error (by index) as a :class:`poold.RemoteError`."""
        job = self._submit(func, iterable, star=False, chunksize=chunksize)
        return self._collect(job)

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        job = self._submit(func, iterable, star=False, chunksize=chunksize)
        return AsyncResult(self, job, False, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        """``[func(*args) for args in iterable]`` on the workers, in order."""
        job = self._submit(func, iterable, star=True, chunksize=chunksize)
        return self._collect(job)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        job = self._submit(func, iterable, star=True, chunksize=chunksize)
        return AsyncResult(self, job, False, callback, error_callback)

    def imap(self, func, iterable, chunksize=None):
        """An iterator of ``func(x)`` in order, yielding each result as soon as it and those
        before it are done. ``len()`` of it is the number of items (for ``tqdm``)."""
        job = self._submit(func, iterable, star=False, chunksize=chunksize)
        return IMapIterator(self, job, ordered=True)

    def imap_unordered(self, func, iterable, chunksize=None):
        """Like :meth:`imap`, in the order results complete."""
        job = self._submit(func, iterable, star=False, chunksize=chunksize)
        return IMapIterator(self, job, ordered=False)

    # ---- beyond Pool ----

    def functions(self):
        """The functions the workers serve: ``{name: doc}``."""
        listing = self._http.request("GET", "/v1/functions")
        return {f["name"]: f.get("doc", "") for f in listing["functions"]}

    def job(self, job_id):
        """The job as poold shows it (``GET /v1/jobs/{id}``)."""
        return self._http.request("GET", f"/v1/jobs/{job_id}")

    # ---- internals ----

    def _submit(self, func, iterable, star, chunksize, kwargs=None):
        self._check_running()
        kwargs = dict(kwargs or {})
        prefix = []
        while isinstance(func, functools.partial):
            prefix = list(func.args) + prefix
            kwargs = {**func.keywords, **kwargs}
            func = func.func
        if star:
            items = [prefix + list(args) for args in iterable]
        elif prefix:
            items, star = [prefix + [item] for item in iterable], True
        else:
            items = list(iterable)
        body = {"function": _function_name(func), "items": items, "star": star, "kwargs": kwargs}
        if chunksize is not None:
            if chunksize < 1:
                raise ValueError("chunksize must be 1 or more")
            body["chunksize"] = chunksize
        job = self._http.request("POST", "/v1/jobs", body)
        with self._lock:
            self._jobs[job["id"]] = job["status"] in _FINISHED
        return job

    def _finished(self, job_id):
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = True

    def _wait_job(self, job_id):
        while True:
            job = self._http.request(
                "GET",
                f"/v1/jobs/{job_id}",
                query={"wait": _LONG_POLL},
                timeout=self._http.timeout + _LONG_POLL,
            )
            if job["status"] in _FINISHED:
                self._finished(job_id)
                return job

    def _collect(self, job, logs=None):
        """Wait for the job, then return its values in order, or raise its first error."""
        job_id = job["id"]
        job = self._wait_job(job_id)
        values = [None] * job["total"]
        have = [False] * job["total"]
        first_error = None
        offset = 0
        while True:
            page = self._http.request(
                "GET", f"/v1/jobs/{job_id}/results", query={"offset": offset, "limit": _PAGE}
            )
            for result in page["results"]:
                index = result["index"]
                have[index] = True
                if logs is not None and "log" in result:
                    logs[index] = result["log"]
                if "error" in result:
                    if first_error is None:
                        first_error = remote_error(result["error"], index, job_id)
                else:
                    values[index] = result.get("value")
            offset = page.get("next_offset")
            if offset is None or not page["results"]:
                break
        if first_error is not None:
            raise first_error
        if job["status"] != "completed" or not all(have):
            raise _ended_early(job)
        return values


def _ended_early(job):
    why = f": {job['error']}" if job.get("error") else ""
    return PooldError(
        f"job {job['id']} ended {job['status']} with {job['done']} of {job['total']} results{why}"
    )


class AsyncResult:
    """What ``apply_async``/``map_async``/``starmap_async`` return, like
    ``multiprocessing.pool.AsyncResult``. ``job_id`` names the job; ``logs`` maps item index
    to what the function printed for it (filled when the result is ready)."""

    def __init__(self, pool, job, single, callback=None, error_callback=None):
        self.job_id = job["id"]
        self.logs = {}
        self._pool = pool
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._ready = threading.Event()
        self._value = None
        self._error = None
        thread = threading.Thread(target=self._run, args=(job,), daemon=True, name=f"poold-{self.job_id}")
        with pool._lock:
            pool._threads.append(thread)
        thread.start()

    def _run(self, job):
        try:
            try:
                values = self._pool._collect(job, self.logs)
            except Exception as e:
                self._error = e
                if self._error_callback is not None:
                    self._error_callback(e)
            else:
                self._value = values[0] if self._single else values
                if self._callback is not None:
                    self._callback(self._value)
        finally:
            self._ready.set()

    def ready(self):
        return self._ready.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout=None):
        self._ready.wait(timeout)

    def get(self, timeout=None):
        """The result; raises the remote error, or ``multiprocessing.TimeoutError`` when it
        is not ready within ``timeout`` seconds."""
        if not self._ready.wait(timeout):
            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class IMapIterator:
    """What ``imap``/``imap_unordered`` return: results as they stream in over SSE.

    ``len()`` is the number of items. An item error raises :class:`poold.RemoteError` from
    ``next()`` at that item; iterating on continues with the next ones, as with ``Pool``.
    ``logs`` maps item index to what the function printed for it (filled as results arrive),
    ``reconnects`` counts event-stream reconnections.
    """

    def __init__(self, pool, job, ordered):
        self.job_id = job["id"]
        self.logs = {}
        self._pool = pool
        self._total = job["total"]
        self._yielded = 0
        query = {"order": "index" if ordered else "completion"}
        self._stream = EventStream(pool._http, f"/v1/jobs/{self.job_id}/events", query)
        self._events = None

    def __len__(self):
        return self._total

    def __iter__(self):
        return self

    @property
    def reconnects(self):
        return self._stream.reconnects

    def __next__(self):
        if self._yielded >= self._total:
            self._done()
            raise StopIteration
        if self._events is None:
            self._events = self._stream.events()
        for event in self._events:
            if event.event == "log":
                data = event.json()
                self.logs[data["index"]] = data["log"]
            elif event.event == "result":
                data = event.json()
                self._yielded += 1
                if self._yielded >= self._total:
                    self._done()
                if "error" in data:
                    raise remote_error(data["error"], data["index"], self.job_id)
                return data.get("value")
            elif event.event == "end":
                self._stream.close()
                self._pool._finished(self.job_id)
                raise _ended_early(event.json())
        raise PooldError(f"the event stream of job {self.job_id} ended without its end")

    next = __next__

    def _done(self):
        self._stream.close()
        self._pool._finished(self.job_id)

    def _drop_connection(self):
        """Test hook: cut the event stream's connection as a network failure would."""
        self._stream.drop()
