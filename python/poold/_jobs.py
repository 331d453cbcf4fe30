"""A map job in flight, for :class:`poold.Pool`: its items uploaded as they are produced
(:class:`Submission`), its results read as they are recorded (:class:`IMapIterator`), and the
``AsyncResult`` of the ``*_async`` forms.

The items go up as an NDJSON upload on a background thread that pulls them from the iterable
while results come back, never more than ``window`` items ahead of the results the caller has
taken: an endless generator is consumed lazily and the client holds a bounded window, not the
input. If the iterable raises at item k, the upload ends with a ``Poold-Upload-Error`` trailer:
poold runs items 0..k-1 and then fails the job with that reason, and the result iterator
yields those k results before it raises the iterable's exception, as ``Pool.imap`` does.

poold answers an upload only when it ends, so the job's id is found while it runs by the
``metadata`` mark its line 1 carries (``GET /v1/jobs``, newest first).
"""

import json
import multiprocessing
import threading
import time
import uuid

from ._http import EventStream, PooldError, Upload
from .errors import remote_exception

#: The metadata key that marks a job uploaded by this client, to find its id.
UPLOAD_MARK = "poold.upload"
#: An upload is sent in pieces of at most this many bytes…
SEND_BYTES = 1 << 16
#: …and a whole chunk waits at most about this long for more before it is sent (also while
#: the iterable makes the upload wait: a second thread sends it then).
SEND_AFTER = 0.002
#: Items of a list, tuple or range sent at a time.
SEQUENCE_SLICE = 4096
#: How long an upload's socket may block (poold reads as fast as it stores).
UPLOAD_TIMEOUT = 300.0
_FINISHED = ("completed", "failed", "cancelled")
#: Inputs that never make the upload wait, sent in slices.
_SEQUENCES = (list, tuple, range)


class Submission:
    """One job being uploaded: line 1 (``spec``, every field but ``items``) goes at once, the
    items of ``iterable`` from a background thread, encoded by ``codec.item``, at most
    ``window`` ahead of :attr:`consumed` (results the caller took)."""

    def __init__(self, http_, spec, iterable, codec, chunksize, window, timeout):
        self._http = http_
        self._timeout = timeout
        self.mark = uuid.uuid4().hex
        spec = dict(spec, metadata={UPLOAD_MARK: self.mark})
        self._upload = Upload(http_, json.dumps(spec).encode(), UPLOAD_TIMEOUT)
        self._wake = threading.Condition()
        self.window = window
        self._chunksize = chunksize
        #: Items taken from the iterable (by the upload thread), and results the caller has
        #: taken (by the caller).
        self._pulled = 0
        self.consumed = 0
        # Lines encoded and not sent yet, the upload's connection and what goes with them are
        # shared by the upload thread and the flusher: under this lock.
        self._lock = threading.Lock()
        self._pending = []
        self._pending_bytes = 0
        #: How many pending lines end on a chunk boundary (poold runs whole chunks only).
        self._complete = 0
        self._last_send = time.monotonic()
        #: When the upload thread called next() on the iterable (0 when it is not in it).
        self._in_next = 0.0
        #: The upload thread waits for room in the window.
        self.waiting = False
        self._stopping = False
        #: (index, exception) when the iterable raised at that item.
        self.input_error = None
        #: A PooldError when poold refused the upload or could not be reached.
        self.failure = None
        #: The job as poold answered at the end of the upload.
        self.answer = None
        self.done = threading.Event()
        threads = [(self._run, (iterable, codec), "poold-upload")]
        if not isinstance(iterable, _SEQUENCES):  # only an iterator can keep the upload waiting
            threads.append((self._flush_stuck, (), "poold-upload-flush"))
        for target, args, name in threads:
            threading.Thread(target=target, args=args, daemon=True, name=name).start()

    # ---- the caller's side ----

    def job(self):
        """The job, as soon as poold has stored it (raises what refused it)."""
        deadline = time.monotonic() + self._timeout
        delay = 0.001
        while True:
            self._check_answer()
            if self.failure is not None:
                raise self.failure
            if self.answer is not None:
                return self.answer
            for job in self._http.request("GET", "/v1/jobs", query={"limit": 50})["jobs"]:
                if (job.get("metadata") or {}).get(UPLOAD_MARK) == self.mark:
                    return job
            if time.monotonic() > deadline:
                raise PooldError("poold did not show the uploaded job in time")
            self.done.wait(delay)
            delay = min(2 * delay, 0.05)

    def took(self, count=1):
        """The caller took results: the upload may go as many items further."""
        self.consumed += count
        if self.waiting:
            with self._wake:
                self._wake.notify()

    def stop(self):
        """Send no more items (the pool is terminated): the upload ends with what was sent."""
        self._stopping = True
        with self._wake:
            self._wake.notify()

    # ---- the upload thread ----

    def _take_answer(self):
        """With the lock held: take poold's early answer (a problem) if it has sent one."""
        if self.failure is None and self.answer is None and not self.done.is_set():
            if self._upload.answered():
                try:
                    self._upload.answer()
                    self.failure = PooldError("poold answered the upload before it ended")
                except PooldError as e:
                    self.failure = e
                except OSError as e:
                    self.failure = PooldError(f"POST /v1/jobs: {e}")

    def _check_answer(self):
        with self._lock:
            self._take_answer()

    def _send(self, count):
        """With the lock: send the first ``count`` pending lines; False once poold has answered
        (refused the upload)."""
        self._take_answer()
        if self.failure is not None:
            return False
        lines = self._pending[:count]
        del self._pending[:count]
        self._pending_bytes = sum(map(len, self._pending)) if self._pending else 0
        self._complete = max(0, self._complete - count)
        self._upload.send(b"\n".join(lines) + b"\n")
        self._last_send = time.monotonic()
        return True

    def _room(self):
        """Wait until the window has room for one more item; False when told to stop."""
        if self._pulled - self.consumed < self.window:
            return not self._stopping
        with self._wake:
            self.waiting = True
            while self._pulled - self.consumed >= self.window and not self._stopping:
                self._wake.wait(0.05)
            self.waiting = False
        return not self._stopping

    def _run(self, iterable, codec):
        try:
            try:
                if isinstance(iterable, _SEQUENCES):
                    completed = self._feed_sequence(iterable, codec)
                else:
                    completed = self._feed_iterator(iter(iterable), codec.item)
                if not completed:
                    return
                with self._lock:
                    if self._pending and not self._send(len(self._pending)):
                        return
                    if self.input_error is not None:
                        index, e = self.input_error
                        self._upload.stop(f"item {index} of the input raised {type(e).__name__}: {e}")
                    else:
                        self.answer = self._upload.finish()
            except PooldError as e:
                self.failure = e
            except OSError as e:
                self._check_answer()
                if self.failure is None:
                    self.failure = PooldError(f"POST /v1/jobs (upload): {e}")
            except Exception as e:  # a bug here: say so rather than leave a broken upload
                failure = PooldError(f"the upload of the job's items failed: {e!r}")
                failure.__cause__ = e
                self.failure = failure
        finally:
            self._upload.close()
            self.done.set()

    def _feed_iterator(self, items, encode):
        """Pull items one at a time (the iterable may take its time: a second thread sends
        whole chunks while it does). False when poold refused the upload."""
        chunk = self._chunksize or 1
        pending = self._pending
        while True:
            if self._pulled - self.consumed >= self.window:
                with self._lock:
                    if pending and not self._send(len(pending)):
                        return False
            if not self._room():
                return True
            index = self._pulled
            self._in_next = time.monotonic()
            try:
                line = encode(next(items))
            except StopIteration:
                return True
            except Exception as e:
                self.input_error = (index, e)
                return True
            finally:
                self._in_next = 0.0
            self._pulled = index + 1
            with self._lock:
                pending.append(line)
                self._pending_bytes += len(line)
                boundary = self._pulled % chunk == 0
                if boundary:
                    self._complete = len(pending)
                if self._pending_bytes >= SEND_BYTES or (
                    boundary and time.monotonic() - self._last_send >= SEND_AFTER
                ):
                    if not self._send(len(pending)):
                        return False

    def _feed_sequence(self, items, codec):
        """A list, tuple or range never makes the upload wait: send it in slices, encoded a
        slice at a time when they are plain numbers. False when poold refused the upload."""
        at, total = 0, len(items)
        while at < total:
            if not self._room():
                return True
            room = self.window - (self._pulled - self.consumed)
            piece = items[at : at + max(1, min(SEQUENCE_SLICE, room))]
            data = codec.lines(piece)
            if data is None:
                lines = []
                for offset, item in enumerate(piece):
                    try:
                        lines.append(codec.item(item))
                    except Exception as e:
                        self.input_error = (at + offset, e)
                        break
                data = b"\n".join(lines)
                count = len(lines)
            else:
                count = len(piece)
            if count:
                with self._lock:
                    self._pending.append(data)
                    if not self._send(len(self._pending)):
                        return False
            self._pulled += count
            at += count
            if self.input_error is not None:
                return True
        return True

    def _flush_stuck(self):
        """While the iterable keeps the upload thread waiting for its next item, send the
        whole chunks it has encoded, so that they run meanwhile."""
        while not self.done.wait(SEND_AFTER):
            since = self._in_next
            if since and self._complete and time.monotonic() - since >= SEND_AFTER:
                with self._lock:
                    if self._complete and not self.done.is_set():
                        try:
                            self._send(self._complete)
                        except OSError:
                            pass  # the upload thread sees it on its next send


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
