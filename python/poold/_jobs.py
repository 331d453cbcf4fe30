"""A map job's results coming back, for :class:`poold.Pool`: :class:`IMapIterator` reads
them as they are recorded (server-sent events, :class:`poold._sse.EventStream`) while its
items are still being uploaded (:mod:`poold._upload`), and :class:`AsyncResult` is what the
``*_async`` forms return.
"""

import json
import multiprocessing
import threading

from ._sse import EventStream
from .errors import PooldError, remote_exception


class IMapIterator:
    """What ``imap``/``imap_unordered`` return: results as they stream in over SSE.

    ``len()`` is the number of items when the input has a length (``tqdm`` shows a total);
    without one it raises ``TypeError``. An item error raises from ``next()`` at that item
    (its own exception type when it can be rebuilt, with the remote traceback as
    ``__cause__``); iterating on continues with the next ones, as with ``Pool``. If the input
    raised at item k, its exception is raised after the results of items 0..k-1.
    ``logs`` maps item index to what the function printed for it (filled as results arrive);
    ``reconnects`` counts event-stream reconnections; ``window`` is how many items the upload
    may be ahead of the results taken.
    """

    def __init__(self, pool, job, submission, codec, length, ordered):
        self.job_id = job["id"]
        self.logs = {}
        self._pool = pool
        self._submission = submission
        self.window = submission.window if submission is not None else None
        self._decode = codec.value if codec.pickled else None
        self._keep_pickle = codec.pickled
        self._length = length
        query = {"order": "index" if ordered else "completion"}
        self._stream = EventStream(pool._http, f"/v1/jobs/{self.job_id}/events", query)
        self._batches = None
        #: The results read and not yet taken: plain values, or result entries (dicts).
        self._batch = []
        self._plain = True
        self._pos = 0
        self._ended = False

    def __len__(self):
        if self._length is None:
            raise TypeError("the input of this imap has no len()")
        return self._length

    def __iter__(self):
        return self

    @property
    def reconnects(self):
        return self._stream.reconnects

    def __next__(self):
        try:
            item = self._batch[self._pos]
        except IndexError:
            self._fill()
            return self.__next__()
        self._pos += 1
        submission = self._submission
        if submission is not None:  # took(), inlined: this runs once per result
            submission.consumed += 1
            if submission.waiting:
                submission.took(0)
        if not self._plain:
            if "error" in item:
                error = item["error"]
                if not self._keep_pickle:
                    error.pop("pickle", None)
                raise remote_exception(error, item["index"], self.job_id)
            item = item.get("value")
        return item if self._decode is None else self._decode(item)

    next = __next__

    def all(self):
        """Every remaining value, in order (what ``map`` returns): runs of plain values are
        taken a block at a time, the rest item by item (an item error raises)."""
        out = []
        while True:
            if self._pos >= len(self._batch):
                try:
                    self._fill()
                except StopIteration:
                    return out
                continue
            if self._plain and self._decode is None:
                taken = self._batch[self._pos :]
                out.extend(taken)
                self._pos = len(self._batch)
                if self._submission is not None:
                    self._submission.took(len(taken))
            else:
                out.append(next(self))

    def _fill(self):
        if self._ended:
            raise StopIteration
        if self._batches is None:
            self._batches = self._stream.batches()
        for kind, data in self._batches:
            if kind == "values" or kind == "result":
                self._batch, self._pos, self._plain = data, 0, kind == "values"
                return
            if kind == "log":
                entry = json.loads(data)
                self.logs[entry["index"]] = entry["log"]
            elif kind == "end":
                self._end(json.loads(data))
        raise PooldError(f"the event stream of job {self.job_id} ended without its end")

    def _end(self, job):
        self._ended = True
        self._stream.close()
        self._pool._finished(self.job_id)
        if job["status"] == "completed":
            raise StopIteration
        # The upload thread notes the input's error (or its own) before poold hears of it.
        submission = self._submission
        if submission is not None and submission.input_error is not None:
            raise submission.input_error[1]
        if submission is not None and submission.failure is not None:
            raise submission.failure
        raise ended_early(job)

    def close(self):
        """Stop reading (for a loop left early): close the event stream; ``next()`` then ends
        the iteration. The job goes on unless the pool is terminated."""
        self._ended = True
        self._batch, self._pos = [], 0
        self._stream.close()

    def __del__(self):
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()

    def _drop_connection(self):
        """Test hook: cut the event stream's connection as a network failure would."""
        self._stream.drop()


def ended_early(job):
    why = f": {job['error']}" if job.get("error") else ""
    total = job["total"] if job.get("total") is not None else "its"
    return PooldError(f"job {job['id']} ended {job['status']} with {job['done']} of {total} results{why}")


class AsyncResult:
    """What ``apply_async``/``map_async``/``starmap_async`` return, like
    ``multiprocessing.pool.AsyncResult``: ``get(timeout)``, ``wait``, ``ready``,
    ``successful``; ``callback`` or ``error_callback`` is called on a thread of its own.
    ``job_id`` names the job; ``logs`` maps item index to what the function printed for it
    (filled when the result is ready)."""

    def __init__(self, pool, job_id, collect, callback=None, error_callback=None):
        self.job_id = job_id
        self.logs = {}
        self._callback = callback
        self._error_callback = error_callback
        self._ready = threading.Event()
        self._value = None
        self._error = None
        self._close_connection = pool._http.close  # the thread's own kept-alive one
        thread = threading.Thread(
            target=self._run, args=(collect,), daemon=True, name=f"poold-{job_id}"
        )
        pool._track(thread)
        thread.start()

    def _run(self, collect):
        try:
            try:
                self._value = collect(self.logs)
            except Exception as e:
                self._error = e
                if self._error_callback is not None:
                    self._error_callback(e)
            else:
                if self._callback is not None:
                    self._callback(self._value)
        finally:
            self._close_connection()
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
