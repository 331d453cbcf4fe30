"""``poold.Pool``: ``multiprocessing.Pool``'s API, with a poold service as its workers.

Each call is one map job:

- ``map``/``imap``/``imap_unordered``/``starmap`` and the async forms upload the iterable as
  NDJSON while it is consumed, and read results as they are recorded over server-sent events
  (``?order=completion`` for unordered), resuming after a dropped connection
  (:mod:`poold._upload`, :mod:`poold._jobs`, :mod:`poold._sse`). ``map`` is
  ``list(imap(...))`` taken a block at a time: it raises the first item error, in index order.
- ``apply``/``apply_async`` send a one-item JSON job and wait for its result
  (``GET /v1/jobs/{id}/results?wait=``).

Functions travel by name, ``module:qualname``; items and values as JSON or, with
``codec="pickle"``, as pickles (:mod:`poold._codec`). Remote item errors raise as their own
type with the remote traceback as ``__cause__`` (:mod:`poold.errors`).

``close``/``join``/``terminate`` apply to the jobs *this* ``Pool`` object submitted; they
never close poold's pool for other clients. ``terminate`` (and leaving a ``with`` block)
cancels this object's unfinished jobs.
"""

import json
import os
import threading
import weakref

from ._codec import CODECS, Codec, function_name, take_apart
from ._http import Http
from ._jobs import AsyncResult, IMapIterator, ended_early
from ._upload import SEQUENCES, Submission
from .errors import PooldError, remote_exception

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

#: Where poold is when neither ``url`` nor ``POOLD_URL`` says (as for the ``poold`` CLI).
DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds each long-poll asks poold to wait (``?wait=``) before asking again.
_LONG_POLL = 30
#: poold's automatic chunksize is capped at this (``Pool.map``'s rule otherwise).
_MAX_AUTO_CHUNKSIZE = 1000
#: poold's chunksize for an upload that names none (its length is unknown).
_STREAM_CHUNKSIZE = 100
#: The upload of an iterator runs at most this many items ahead of the results taken (or 8
#: chunks per worker, if more). A list, tuple or range is in memory already: it is sent whole,
#: never paced (pacing it would only make the run wait on round trips, see ``_iterator``).
_MIN_WINDOW = 4096
_FINISHED = ("completed", "failed", "cancelled")


def _length(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None


class Pool:
    """A ``multiprocessing.Pool`` whose workers are a poold service.

    ``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, *, url=None,
    token=None, codec="json", timeout=30.0)``:

    - ``url`` defaults to ``$POOLD_URL``, then ``http://127.0.0.1:8080``; ``token`` (sent as
      ``Authorization: Bearer``) to ``$POOLD_API_TOKEN``.
    - ``processes=N`` caps how many chunks of each of this pool's jobs run at once on the
      server (the job field ``max_concurrency``); ``None`` uses every worker poold has.
    - ``initializer`` and ``maxtasksperchild`` belong to the workers, which the server's
      operator starts: ``python -m poold.worker ... --initializer`` and ``poold serve
      --max-tasks-per-worker``. Passing them here raises ``ValueError``.
    - ``codec="pickle"`` sends items and kwargs as pickles and gets values back as pickles, so
      any picklable value round-trips (the workers must run with ``--allow-pickle``).
    - ``timeout`` bounds each HTTP request (long-polls add their wait to it).
    """

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        url=None,
        token=None,
        codec="json",
        timeout=30.0,
    ):
        if isinstance(processes, str):
            raise TypeError(
                "the first argument of poold.Pool is processes, as for multiprocessing.Pool: "
                "pass the service as url=... (or set POOLD_URL)"
            )
        if processes is not None:
            if isinstance(processes, bool) or not isinstance(processes, int):
                raise TypeError(f"processes must be an int or None, got {processes!r}")
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if initializer is not None:
            raise ValueError(
                "poold.Pool cannot run an initializer in poold's workers: start the workers "
                "with it instead, `python -m poold.worker MODULE --initializer mod:func "
                "--initargs JSON` (see python/README.md)"
            )
        if maxtasksperchild is not None:
            raise ValueError(
                "poold.Pool cannot set maxtasksperchild: poold's workers are replaced after N "
                "chunks when the server runs with `poold serve --max-tasks-per-worker N`"
            )
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        url = url or os.environ.get("POOLD_URL") or DEFAULT_URL
        if token is None:
            token = os.environ.get("POOLD_API_TOKEN") or None
        self._http = Http(url, token, timeout)
        self.url = self._http.url
        self.processes = processes
        self.codec = codec
        self._state = _RUN
        self._lock = threading.Lock()
        self._jobs = {}  # id -> finished? for the jobs this object submitted
        self._submissions = weakref.WeakSet()
        self._threads = []
        self._size = None

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
        """Stop this object's uploads, cancel its unfinished jobs and submit no more
        (``Pool.terminate``)."""
        self._state = _TERMINATE
        with self._lock:
            unfinished = [id_ for id_, done in self._jobs.items() if not done]
            submissions = list(self._submissions)
        for submission in submissions:
            submission.stop()
        for id_ in unfinished:
            try:
                self._http.request("POST", f"/v1/jobs/{id_}/cancel")
            except PooldError as e:
                if e.status != 404:  # a job deleted meanwhile needs no cancelling
                    raise
        self._http.close()

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
        self._http.close()

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    # ---- the Pool API ----

    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` on a worker; its result."""
        job_id, codec = self._submit_one(func, args, kwds)
        return self._collect_one(job_id, codec, {})

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        job_id, codec = self._submit_one(func, args, kwds)
        collect = lambda logs: self._collect_one(job_id, codec, logs)  # noqa: E731
        return AsyncResult(self, job_id, collect, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        """``[func(x) for x in iterable]`` on the workers, in order. Raises the first item
        error (by index), or the iterable's own exception."""
        return self.imap(func, iterable, chunksize).all()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._async(self._iterator(func, iterable, chunksize, False, True), callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        """``[func(*args) for args in iterable]`` on the workers, in order."""
        return self._iterator(func, iterable, chunksize, True, True).all()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._async(self._iterator(func, iterable, chunksize, True, True), callback, error_callback)

    def imap(self, func, iterable, chunksize=None):
        """An iterator of ``func(x)`` in order, yielding each result as soon as it and those
        before it are done, while the iterable is still being uploaded."""
        return self._iterator(func, iterable, chunksize, False, True)

    def imap_unordered(self, func, iterable, chunksize=None):
        """Like :meth:`imap`, in the order results complete."""
        return self._iterator(func, iterable, chunksize, False, False)

    # ---- beyond Pool ----

    def functions(self):
        """The functions the workers serve: ``{name: doc}``."""
        listing = self._http.request("GET", "/v1/functions")
        return {f["name"]: f.get("doc", "") for f in listing["functions"]}

    def job(self, job_id):
        """The job as poold shows it (``GET /v1/jobs/{id}``)."""
        return self._http.request("GET", f"/v1/jobs/{job_id}")

    def results(self, job_id, ordered=True):
        """The results of a job submitted earlier (by any client), as an ``imap`` iterator:
        in index order (or completion order), as they are recorded, until the job ends. A
        ``pickle`` job's values are unpickled only by a pool made with ``codec="pickle"``."""
        job = self.job(job_id)
        codec = Codec(job.get("codec", "json"), False, ())
        if codec.pickled and not self.codec == "pickle":
            raise ValueError(
                f"job {job_id} uses the pickle codec: read it with poold.Pool(codec='pickle')"
            )
        return IMapIterator(self, job, None, codec, job["total"], ordered)

    # ---- internals ----

    def _pool_size(self):
        if self._size is None:
            self._size = self._http.request("GET", "/v1/pool")["size"]
        return self._size

    def _spec(self, func, star, kwargs):
        """The job's fields but items, and its codec."""
        func, prefix, kwargs = take_apart(func, kwargs)
        codec = Codec(self.codec, star, prefix)
        spec = {"function": function_name(func), "star": codec.star, "kwargs": codec.kwargs(kwargs)}
        if codec.pickled:
            spec["codec"] = codec.name
        if self.processes is not None:
            spec["max_concurrency"] = self.processes
        return spec, codec

    def _iterator(self, func, iterable, chunksize, star, ordered):
        self._check_running()
        spec, codec = self._spec(func, star, None)
        length = _length(iterable)
        if chunksize is not None:
            if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
                raise ValueError(f"chunksize must be an int of 1 or more, got {chunksize!r}")
        elif length is not None:  # Pool.map's rule, as poold applies it to JSON bodies
            chunks = 4 * self._pool_size()
            chunksize = max(1, min(_MAX_AUTO_CHUNKSIZE, -(-length // chunks)))
        if chunksize is not None:
            spec["chunksize"] = chunksize
        per_chunk = chunksize or _STREAM_CHUNKSIZE
        window = max(_MIN_WINDOW, 8 * self._pool_size() * per_chunk)
        if isinstance(iterable, SEQUENCES):
            # Nothing to keep lazy, so no window: with one, each window's worth of items waits
            # for the results of the one before (upload, store, dispatch, results over SSE),
            # a round trip per window that a run of a list would only wait on.
            window = max(window, length)
        submission = Submission(
            self._http, spec, iterable, codec, per_chunk, window, self._http.timeout
        )
        try:
            job = submission.job()
        except BaseException:
            submission.stop()
            raise
        with self._lock:
            self._jobs[job["id"]] = job["status"] in _FINISHED
            self._submissions.add(submission)
        return IMapIterator(self, job, submission, codec, length, ordered)

    def _async(self, iterator, callback, error_callback):
        def collect(logs):
            values = iterator.all()
            logs.update(iterator.logs)
            return values

        return AsyncResult(self, iterator.job_id, collect, callback, error_callback)

    def _submit_one(self, func, args, kwds):
        """A one-item job for ``func(*args, **kwds)`` (a JSON body: its id comes at once)."""
        self._check_running()
        spec, codec = self._spec(func, True, kwds)
        spec["items"] = [json.loads(codec.item(tuple(args)))]
        spec["chunksize"] = 1
        job = self._http.request("POST", "/v1/jobs", spec)
        with self._lock:
            self._jobs[job["id"]] = job["status"] in _FINISHED
        return job["id"], codec

    def _collect_one(self, job_id, codec, logs):
        """Wait for the one-item job and return its value (or raise its error)."""
        while True:
            page = self._http.request(
                "GET",
                f"/v1/jobs/{job_id}/results",
                query={"wait": _LONG_POLL, "limit": 1},
                timeout=self._http.timeout + _LONG_POLL,
            )
            if page["results"]:
                self._finished(job_id)
                result = page["results"][0]
                if "log" in result:
                    logs[0] = result["log"]
                if "error" in result:
                    error = result["error"]
                    if not codec.pickled:
                        error.pop("pickle", None)
                    raise remote_exception(error, 0, job_id)
                return codec.value(result.get("value"))
            job = self.job(job_id)
            if job["status"] in _FINISHED:
                self._finished(job_id)
                raise ended_early(job)

    def _track(self, thread):
        with self._lock:
            self._threads.append(thread)

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
