"""Serve Python functions as a poold worker: ``python -m poold.worker mymodule time builtins:int``.

poold starts this program once per pool slot (``poold serve --worker-command "python3 -m
poold.worker mymodule"``) and talks to it in the JSON-lines worker protocol, version 1
(``docs/worker-protocol.md``): a ``hello`` naming the functions, their docs and the codecs it
accepts, then one ``result`` per ``task``, in order.

What it owns:

- **Which functions.** Exactly what its command line lists, nothing else: a module (a name,
  or the path of a ``.py`` file) serves its public functions — names not starting with ``_``,
  defined in that module (or in its C accelerator ``_module``), not imported into it — and
  ``module:qualname`` serves that one callable (``builtins:int``, ``os.path:join``). Each is
  advertised as ``module:qualname``, with aliases for the other names a client may send: the
  bare name of a function of the *first* module listed, and where the callable really lives
  when that differs (``posixpath:join``), which is what :class:`poold.Pool` sends for a
  function object. Their signature and docstring become the docs of ``GET /v1/functions``.
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

The loop is kept cheap on purpose (one ``json.loads`` per task, one write per result, nothing
per item but the call when nothing is printed): with one-item chunks its per-message cost is
what poold's throughput is made of.
"""

import argparse
import base64
import importlib
import importlib.util
import inspect
import io
import json
import os
import pickle
import sys
import traceback

#: The protocol major version this worker speaks.
PROTOCOL_VERSION = 1

#: The most log text a worker sends for one item (poold keeps 64 KiB of it); the rest is cut.
MAX_LOG_CHARS = 1024 * 1024
LOG_TRUNCATED = "\n…[truncated]"

#: Pickle protocol of values and errors sent back (every Python 3.8+ reads it).
PICKLE_PROTOCOL = 5

#: One encoder for every result line: ``json.dumps`` with options builds a new one per call.
_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


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


def load_module(name):
    """Import ``name``: a module name (``pkg.mod``) or the path of a ``.py`` file."""
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(name)
        module_name = os.path.splitext(os.path.basename(path))[0]
        if module_name in sys.modules:
            return sys.modules[module_name]
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def public_functions(module):
    """The functions ``module`` defines whose names do not start with ``_``, by name. A C
    accelerator's functions count as the module's own (``operator.add`` lives in
    ``_operator``)."""
    own = (module.__name__, "_" + module.__name__.rpartition(".")[2])
    functions = {}
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) not in own:
            continue  # imported into the module, not defined there
        functions[name] = obj
    return functions


def identity(obj):
    """``module:qualname`` of a callable, as :class:`poold.Pool` names a function object;
    None when it has none."""
    module = getattr(obj, "__module__", None)
    owner = getattr(obj, "__self__", None)
    if module is None and isinstance(owner, type):
        module = owner.__module__  # a method of a built-in class: dict.fromkeys
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}:{qualname}"


def resolve(spec, first=None):
    """The callable named by ``mod:qualname`` (the module by name or ``.py`` path), or by a bare
    name of ``first``, the first module served."""
    if ":" in spec:
        module_name, _, qualname = spec.rpartition(":")
        owner = load_module(module_name)
    elif first is not None:
        owner, qualname = first, spec
    else:
        raise ValueError(f"{spec!r} is not module:qualname")
    obj = owner
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def describe(name, function):
    """``name(signature): docstring``, the doc poold shows for a function."""
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):
        signature = "(...)"
    doc = inspect.getdoc(function)
    return f"{name}{signature}: {doc}" if doc else f"{name}{signature}"


class Served:
    """What a worker serves: ``listing`` is name -> (callable, aliases) in the order of the
    command line; ``table`` maps every name and alias to its callable."""

    def __init__(self, targets):
        self.listing = {}
        self.first_module = None
        for target in targets:
            if ":" in target:
                self._add(target, resolve(target), [])
                continue
            module = load_module(target)
            first = self.first_module is None
            if first:
                self.first_module = module
            for name, function in public_functions(module).items():
                self._add(f"{module.__name__}:{name}", function, [name] if first else [])
        self.table = {}
        for name, (function, aliases) in self.listing.items():
            for key in [name, *aliases]:
                self.table.setdefault(key, function)

    def _add(self, name, function, aliases):
        real = identity(function)
        if real is not None and real != name:
            aliases = [*aliases, real]
        if name not in self.listing:
            self.listing[name] = (function, aliases)

    def hello_functions(self):
        out = []
        for name, (function, aliases) in self.listing.items():
            entry = {"name": name, "doc": describe(name.rpartition(":")[2], function)}
            if aliases:
                entry["aliases"] = aliases
            out.append(entry)
        return out


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
        if refusal is not None:
            results = [{"error": _error(refusal)} for _ in items]
        elif codec == "pickle":
            results = self._run_pickled(function, items, star, kwargs)
        else:
            results = self._run_json(function, items, star, kwargs)
        message = {"type": "result", "id": task["id"], "results": results}
        try:
            text = _encode(message)
        except (TypeError, ValueError):
            _drop_unsendable(results)
            text = _encode(message)
        return text.encode() + b"\n"

    def _run_json(self, function, items, star, kwargs):
        results = []
        append = results.append
        printed = self.capture.parts
        for item in items:
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
    loads, write, flush, run = json.loads, protocol_out.write, protocol_out.flush, worker.run
    for line in tasks_in:
        try:
            task = loads(line)
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
