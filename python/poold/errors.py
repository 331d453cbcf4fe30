"""Exceptions of the client: an item that raised in a worker comes back as its own exception
type when the client can rebuild it (else :class:`RemoteError`), chained to a
:class:`RemoteTraceback` as ``multiprocessing.Pool`` does; :class:`PooldError` is for the
service itself (HTTP errors, a job that ended early)."""

import base64
import builtins
import multiprocessing.pool
import pickle


class PooldError(Exception):
    """poold answered with an error, could not be reached, or a job ended without all its
    results. ``status`` and ``code`` are the HTTP status and the problem document's ``code``."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class RemoteTraceback(multiprocessing.pool.RemoteTraceback):
    """The ``__cause__`` of every remote item error: the worker's traceback as text, like
    ``multiprocessing.pool.RemoteTraceback`` (of which it is a subclass). Also names the item:
    ``index`` in the job ``job_id``."""

    def __init__(self, tb, index=None, job_id=None):
        super().__init__(f'\n"""\n{tb.rstrip()}\n"""' if tb else "(no remote traceback)")
        self.index = index
        self.job_id = job_id


class RemoteError(Exception):
    """An item raised an exception in a worker whose type the client cannot rebuild: a
    custom exception under the ``json`` codec, or errors that are not Python's (``timeout``,
    ``worker_exited``, ``out_of_memory``).

    ``type_name``, ``message`` and ``traceback`` (text, may be None) are the remote
    exception's; ``index`` is the item's index in the job and ``job_id`` the job.
    """

    def __init__(self, type_name, message, traceback=None, index=None, job_id=None):
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.index = index
        self.job_id = job_id

    def __str__(self):
        where = f" (item {self.index})" if self.index is not None else ""
        return f"{self.type_name}: {self.message}{where}"

    def __reduce__(self):
        return (
            type(self),
            (self.type_name, self.message, self.traceback, self.index, self.job_id),
        )


#: Never rebuilt: raised from an iterator's ``__next__`` they would end a ``for`` loop over
#: ``imap`` quietly instead of reporting the item.
_NOT_REBUILT = (StopIteration, StopAsyncIteration)


def _by_name(type_name, message):
    """A built-in exception of that name with ``message``, or None."""
    cls = getattr(builtins, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, _NOT_REBUILT):
        return None
    try:
        return cls(message)
    except Exception:  # a built-in whose constructor wants other arguments
        return None


def _unpickled(pickled):
    """The exception a pickle-codec worker sent, or None if it cannot be rebuilt here (its
    class is not importable on this side, say)."""
    try:
        exc = pickle.loads(base64.b64decode(pickled))
    except Exception:
        return None
    if not isinstance(exc, Exception) or isinstance(exc, _NOT_REBUILT):
        return None
    return exc


def remote_exception(error, index=None, job_id=None):
    """The exception to raise for an item's ``{"type","message","traceback","pickle"?}`` error:
    its own type when it can be rebuilt, else :class:`RemoteError`; ``__cause__`` is its
    :class:`RemoteTraceback`. ``pickle`` is trusted only because the caller asked for it (a
    pool with ``codec="pickle"`` passes it on; others drop it)."""
    type_name = str(error.get("type") or "Exception")
    message = str(error.get("message", ""))
    tb = error.get("traceback")
    exc = None
    if error.get("pickle"):
        exc = _unpickled(error["pickle"])
    if exc is None:
        exc = _by_name(type_name, message)
    if exc is None:
        exc = RemoteError(type_name, message, tb, index, job_id)
    exc.__cause__ = RemoteTraceback(tb, index, job_id)
    return exc
