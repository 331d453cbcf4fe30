"""Exceptions of the client: :class:`RemoteError` for an item that raised in a worker, and
:class:`PooldError` for the service itself (HTTP errors, a job that ended early)."""

import builtins


class PooldError(Exception):
    """poold answered with an error, could not be reached, or a job ended without all its
    results. ``status`` and ``code`` are the HTTP status and the problem document's ``code``."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class RemoteError(Exception):
    """An item raised an exception in a worker.

    ``type_name``, ``message`` and ``traceback`` (text, may be None) are the remote
    exception's; ``index`` is the item's index in the job and ``job_id`` the job. When the
    remote type is a built-in exception (``ValueError``, ``KeyError``, …) the instance raised
    is also an instance of that type, so ``except ValueError`` works as it does with
    ``multiprocessing.Pool``. Types that are not Python's (``timeout``, ``worker_exited``),
    and ``StopIteration`` (which would end a ``for`` loop over ``imap`` quietly), come as
    plain ``RemoteError``.
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
        text = f"{self.type_name}: {self.message}{where}"
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip("\n")
        return text

    def __reduce__(self):
        return (
            remote_error,
            (
                {"type": self.type_name, "message": self.message, "traceback": self.traceback},
                self.index,
                self.job_id,
            ),
        )


_classes = {}


def _class_for(type_name):
    cls = _classes.get(type_name)
    if cls is not None:
        return cls
    cls = RemoteError
    base = getattr(builtins, type_name, None)
    # Never a StopIteration: raised from an iterator's __next__ it would end the loop quietly.
    if (
        isinstance(base, type)
        and issubclass(base, Exception)
        and base not in (Exception, StopIteration, StopAsyncIteration)
    ):
        try:
            cls = type(type_name, (RemoteError, base), {"__module__": "poold.remote"})
        except TypeError:  # an incompatible layout
            cls = RemoteError
    _classes[type_name] = cls
    return cls


def remote_error(error, index=None, job_id=None):
    """The exception for an item's ``{"type","message","traceback"}`` error."""
    type_name = str(error.get("type") or "Exception")
    args = (type_name, str(error.get("message", "")), error.get("traceback"), index, job_id)
    try:
        return _class_for(type_name)(*args)
    except Exception:  # a built-in whose constructor will not take these arguments
        return RemoteError(*args)
