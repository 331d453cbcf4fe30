"""Serve Python functions as a poold worker: ``python -m poold.worker mymodule time builtins:int``.

poold starts this program once per pool slot (``poold serve --worker-command "python3 -m
poold.worker mymodule"``) and talks to it in the JSON-lines worker protocol, version 1
(``docs/worker-protocol.md``): a ``hello`` naming the functions, their docs and the codecs it
accepts, then one ``result`` per ``task``, in order.

What it owns:

- **Which functions.** Exactly what its command line lists, nothing else: a module (a name,
  or the path of a ``.py`` file) serves its public functions, and ``module:qualname`` serves
  that one callable (``builtins:int``, ``os.path:join``); each is advertised as
  ``module:qualname``, with aliases (see :mod:`poold._targets`). Their signature and
  docstring become the docs of ``GET /v1/functions``.
- **Codecs.** ``json`` always. ``pickle`` only with ``--allow-pickle``: items, kwargs values
  and values are base64 pickles, and unpickling runs code, so without the flag a pickle task
  is refused item by item (and poold refuses pickle jobs with 422 ``unsupported_codec``).
- **Stdout.** Stdout belongs to the protocol. Before any user code runs, the protocol keeps a
  private copy of file descriptor 1 and fd 1 is pointed at stderr, so nothing else (prints at
  import time, C extensions, child processes) can corrupt it. While tasks run, ``sys.stdout``
  captures what a function prints; it is sent as that item's ``log`` (poold keeps 64 KiB of
  it). Output to stderr goes to poold's log.
- **Item errors.** An exception raised by a function is that item's error, with its type name,
  message and formatted traceback (and, in pickle tasks, the pickled exception, so that the
  client can raise it with its own type); the worker keeps serving. ``SystemExit`` and
  ``KeyboardInterrupt`` are not caught: the worker exits and poold replaces it.
- **Initializer.** ``--initializer mymodule:init --initargs '[1, 2]'`` calls ``init(1, 2)``
  once per worker process before it says hello, like ``Pool(initializer=, initargs=)``. If it
  raises, the worker exits with status 1 (poold restarts it with a back-off and shows the
  error in ``/readyz``).

The loop is kept cheap on purpose (one JSON parse per task, one write per result, nothing
per item but the call when nothing is printed): with one-item chunks its per-message cost is
what poold's throughput is made of.
"""

import argparse
import base64
import io
import itertools
import json
import json.scanner
import os
import pickle
import sys
import traceback

from ._targets import Served, resolve

#: The protocol major version this worker speaks.
PROTOCOL_VERSION = 1

#: The most log text a worker sends for one item (poold keeps 64 KiB of it); the rest is cut.
MAX_LOG_CHARS = 1024 * 1024
LOG_TRUNCATED = "\n…[truncated]"

#: Pickle protocol of values and errors sent back (every Python 3.8+ reads it).
PICKLE_PROTOCOL = 5

#: One encoder for every result line: ``json.dumps`` with options builds a new one per call.
_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
#: ``_encoder.encode`` without its Python wrappers (which cost as much as the encoding of a
#: short result line): the C encoder it uses, called directly, where there is one.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _encode(message):
    """``_encoder.encode(message)``: TypeError or ValueError for what JSON cannot hold."""
    if _c_make_encoder is None:
        return _encoder.encode(message)
    encode = _c_make_encoder(
        {}, _encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return "".join(encode(message, 0))

#: The C scanner behind ``json.loads``, called directly: ``loads`` costs more than the parse
#: itself on a short task line (encoding detection, a whitespace regex, two calls).
_scan = json.scanner.make_scanner(json.JSONDecoder())


def _decode_task(line):
    """The JSON document of one task line (bytes); ``ValueError`` if it is not one."""
    try:
        return _scan(line.decode(), 0)[0]
    except (StopIteration, UnicodeDecodeError):
        return json.loads(line)  # raises the error that says why


class _LogCapture(io.TextIOBase):
    """``sys.stdout`` while tasks run: keeps what functions print, up to a bound per item.
    ``parts`` is non-empty exactly when the current item printed something."""

    def __init__(self, limit=MAX_LOG_CHARS):
        super().__init__()
        self.parts = []
        self._limit = self._room = limit
        self._truncated = False

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        n = len(text)
        if n > self._room:
            self._truncated = True
            text = text[: self._room]
        if text:
            self.parts.append(text)
            self._room -= len(text)
        return n

    def take(self):
        """What the item printed; the capture starts afresh for the next one."""
        text = "".join(self.parts)
        if self._truncated:
            text += LOG_TRUNCATED
        self.parts.clear()
        self._room = self._limit
        self._truncated = False
        return text


def _traceback(exc):
    """The formatted traceback, starting in the user's function (this module's frames cut)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error(exc, pickled=False):
    error = {"type": type(exc).__name__, "message": str(exc), "traceback": _traceback(exc)}
    if pickled:
        try:
            error["pickle"] = base64.b64encode(pickle.dumps(exc, PICKLE_PROTOCOL)).decode("ascii")
        except Exception:
            pass  # the client falls back to the type's name
    return error


class Worker:
    """Runs tasks: ``run(task)`` returns the ``result`` line for it, as bytes."""

    def __init__(self, served, allow_pickle, capture):
        self.table = served.table
        self.codecs = ["json", "pickle"] if allow_pickle else ["json"]
        self.capture = capture

    def run(self, task):
        function = self.table.get(task.get("function"))
        kwargs = task.get("kwargs") or {}
        star = bool(task.get("star", False))
        codec = task.get("codec") or "json"
        items = task["items"]
        if function is None:
            refusal = LookupError(f"this worker serves no function {task.get('function')!r}")
        elif codec not in self.codecs:
            refusal = PermissionError(
                f"this worker does not accept the {codec!r} codec"
                + (" (start it with --allow-pickle)" if codec == "pickle" else "")
            )
        else:
            refusal = None
        short = False
        if refusal is not None:
            results = [{"error": _error(refusal)} for _ in items]
        elif codec == "pickle":
            results = self._run_pickled(function, items, star, kwargs)
        else:
            results, short = self._run_json(function, items, star, kwargs)
        # The short form `values` when every item succeeded and printed nothing.
        message = {"type": "result", "id": task["id"], ("values" if short else "results"): results}
        try:
            text = _encode(message)
        except (TypeError, ValueError):
            if short:
                results = [{"value": v} for v in results]
                message = {"type": "result", "id": task["id"], "results": results}
            _drop_unsendable(results)
            text = _encode(message)
        return text.encode() + b"\n"

    def _run_json(self, function, items, star, kwargs):
        """The items' outcomes: ``(values, True)`` in the short form (every item succeeded and
        printed nothing), else ``(entries, False)``."""
        if star or kwargs:
            return self._outcomes(function, items, star, kwargs, []), False
        # The common case, as cheap as a loop can be; it stops at an item that raises or
        # prints, and the rest go one outcome at a time. No item runs twice.
        values = []
        append = values.append
        printed = self.capture.parts
        failure = None
        try:
            for item in items:
                append(function(item))
                if printed:
                    break
        except Exception as e:
            failure = e
        if failure is None and not printed and len(values) == len(items):
            return values, True
        # Stopped at an item that raised (`failure`) or printed (its value is the last one).
        entries = [{"value": v} for v in values]
        if failure is not None:
            entries.append({"error": _error(failure)})
        if printed:
            entries[-1]["log"] = self.capture.take()
        return self._outcomes(function, items, star, kwargs, entries), False

    def _outcomes(self, function, items, star, kwargs, results):
        """Outcome entries for ``items``, appended to ``results`` (the entries of the first
        items, which already ran)."""
        append = results.append
        printed = self.capture.parts
        for item in itertools.islice(items, len(results), None):
            try:
                if star:
                    if type(item) is not list:
                        raise TypeError(
                            "star=true needs each item to be an array of arguments, "
                            f"got {json.dumps(item)}"
                        )
                    entry = {"value": function(*item, **kwargs)}
                else:
                    entry = {"value": function(item, **kwargs)}
            except Exception as e:
                entry = {"error": _error(e)}
            if printed:
                entry["log"] = self.capture.take()
            append(entry)
        return results

    def _run_pickled(self, function, items, star, kwargs):
        loads, dumps, encode, decode = pickle.loads, pickle.dumps, base64.b64encode, base64.b64decode
        try:
            kwargs = {k: loads(decode(v)) for k, v in kwargs.items()}
        except Exception as e:
            return [{"error": _error(e, True)} for _ in items]
        results = []
        append = results.append
        printed = self.capture.parts
        for item in items:
            try:
                args = loads(decode(item))
                value = function(*args, **kwargs) if star else function(args, **kwargs)
                entry = {"value": encode(dumps(value, PICKLE_PROTOCOL)).decode("ascii")}
            except Exception as e:
                entry = {"error": _error(e, True)}
            if printed:
                entry["log"] = self.capture.take()
            append(entry)
        return results


def _drop_unsendable(results):
    """Turn each value JSON cannot hold into a ``TypeError`` item error (the rare path, taken
    only when the whole message failed to encode)."""
    for entry in results:
        if "value" not in entry:
            continue
        try:
            _encode(entry["value"])
        except (TypeError, ValueError) as e:
            del entry["value"]
            entry["error"] = {
                "type": "TypeError",
                "message": f"the result cannot be sent as JSON: {e} (codec='pickle' can send it)",
                "traceback": None,
            }


def serve(worker, served, protocol_out, tasks_in):
    """Say hello, then answer every task on ``tasks_in`` (binary lines) in order until it
    closes."""
    hello = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "pid": os.getpid(),
        "functions": served.hello_functions(),
        "codecs": worker.codecs,
    }
    protocol_out.write(json.dumps(hello).encode() + b"\n")
    protocol_out.flush()
    write, flush, run = protocol_out.write, protocol_out.flush, worker.run
    for line in tasks_in:
        try:
            task = _decode_task(line)
            if task.get("type") != "task":
                print(f"poold.worker: skipping a {task.get('type')!r} message", file=sys.stderr)
                continue
        except (ValueError, AttributeError) as e:
            print(f"poold.worker: skipping a line that is not a task: {e}", file=sys.stderr)
            continue
        write(run(task))
        flush()


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m poold.worker",
        description="Serve Python functions to poold (worker protocol v1): the public functions "
        "of each MODULE listed, and each MODULE:QUALNAME callable. Nothing else can be called.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a module (pkg.mod, or the path of a .py file): its public functions; or "
        "module:qualname: that one callable (e.g. builtins:int). Functions of the first "
        "module can also be called by their bare names.",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept the pickle codec (jobs sent with codec='pickle'). Unpickling runs code: "
        "anyone who can submit jobs to poold can then run code on this worker.",
    )
    parser.add_argument(
        "--initializer",
        help="called once per worker process before it serves: mod:func, or func of the first module",
    )
    parser.add_argument(
        "--initargs",
        default="[]",
        help="JSON array of positional arguments for the initializer (default [])",
    )
    args = parser.parse_args(argv)
    try:
        args.initargs = json.loads(args.initargs)
    except ValueError as e:
        parser.error(f"--initargs is not JSON: {e}")
    if not isinstance(args.initargs, list):
        parser.error("--initargs must be a JSON array")
    return args


def main(argv=None):
    args = _parse_args(argv)
    # Take stdout for the protocol before any user code runs; fd 1 becomes stderr.
    sys.stdout.flush()
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    served = Served(args.targets)
    if not served.listing:
        print(f"poold.worker: {' '.join(args.targets)} serves no function", file=sys.stderr)
    if args.initializer:
        try:
            resolve(args.initializer, served.first_module)(*args.initargs)
        except Exception:
            traceback.print_exc()
            print("poold.worker: the initializer failed; exiting", file=sys.stderr)
            return 1
    capture = _LogCapture()
    sys.stdout = capture
    worker = Worker(served, args.allow_pickle, capture)
    try:
        serve(worker, served, protocol_out, sys.stdin.buffer)
    except BrokenPipeError:
        pass  # poold is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
