"""The items of a map job going up, for :mod:`poold.client`: an NDJSON upload
(:class:`poold._http.Upload`) fed by a background thread that pulls them from the iterable
while results come back, never more than ``window`` items ahead of the results the caller has
taken: an endless generator is consumed lazily and the client holds a bounded window, not the
input. If the iterable raises at item k, the upload ends with a ``Poold-Upload-Error``
trailer: poold runs items 0..k-1 and then fails the job with that reason, and the result
iterator (:class:`poold._jobs.IMapIterator`) yields those k results before it raises the
iterable's exception, as ``Pool.imap`` does.

poold answers an upload only when it ends, so the job's id is found while it runs by the
``metadata`` mark its line 1 carries (``GET /v1/jobs``, newest first).
"""

import json
import threading
import time
import uuid

from ._http import Upload
from .errors import PooldError

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
#: Inputs that never make the upload wait, sent in slices (and not paced: see
#: ``poold.client``).
SEQUENCES = (list, tuple, range)


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
        if not isinstance(iterable, SEQUENCES):  # only an iterator can keep the upload waiting
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
                if isinstance(iterable, SEQUENCES):
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
