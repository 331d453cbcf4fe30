"""Serve a module's public functions as a poold worker: ``python -m poold.worker mymodule``.

poold starts this program once per pool slot (``poold serve --worker-command "python3 -m
poold.worker mymodule"``) and talks to it in the JSON-lines worker protocol, version 1
(``docs/worker-protocol.md``): a ``hello`` naming the functions and their docs, then one
``result`` per ``task``, in order.

What it owns:

- **Which functions.** The public functions of the module: names not starting with ``_``,
  defined in that module (not imported into it). Their signature and docstring become the
  docs shown by ``GET /v1/functions``.
- **Stdout.** Stdout belongs to the protocol. Before any user code runs, the protocol keeps a
  private copy of file descriptor 1 and fd 1 is pointed at stderr, so nothing else (prints at
  import time, C extensions, child processes) can corrupt it. While a function runs on an
  item, ``sys.stdout`` is a buffer: what it prints is sent as that item's ``log`` (poold keeps
  64 KiB of it). Output to stderr goes to poold's log.
- **Item errors.** An exception raised by a function is that item's error, with its type name,
  message and formatted traceback; the worker keeps serving. ``SystemExit`` and
  ``KeyboardInterrupt`` are not caught: the worker exits and poold replaces it.
- **Initializer.** ``--initializer mymodule:init --initargs '[1, 2]'`` calls ``init(1, 2)``
  once per worker process before it says hello, like ``Pool(initializer=, initargs=)``. If it
  raises, the worker exits with status 1 (poold restarts it with a back-off and shows the
  error in ``/readyz``).
"""

import argparse
import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
import traceback

#: The protocol major version this worker speaks.
PROTOCOL_VERSION = 1

#: The most log text a worker sends for one item (poold keeps 64 KiB of it); the rest is cut.
MAX_LOG_CHARS = 1024 * 1024
LOG_TRUNCATED = "\n…[truncated]"


class _LogBuffer(io.StringIO):
    """``sys.stdout`` while a function runs: keeps what it prints, up to a bound."""

    def __init__(self, limit=MAX_LOG_CHARS):
        super().__init__()
        self._room = limit
        self.truncated = False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if len(text) > self._room:
            self.truncated = True
        kept = text[: self._room]
        if kept:
            super().write(kept)
            self._room -= len(kept)
        return len(text)

    def log(self):
        text = self.getvalue()
        return text + LOG_TRUNCATED if self.truncated else text


def load_module(name):
    """Import ``name``: a module name (``pkg.mod``) or the path of a ``.py`` file."""
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(name)
        module_name = os.path.splitext(os.path.basename(path))[0]
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
    """The functions ``module`` defines whose names do not start with ``_``, by name."""
    functions = {}
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported into the module, not defined there
        functions[name] = obj
    return functions


def describe(name, function):
    """``name(signature): docstring``, the doc poold shows for a function."""
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):
        signature = "(...)"
    doc = inspect.getdoc(function)
    return f"{name}{signature}: {doc}" if doc else f"{name}{signature}"


def resolve_initializer(spec, module):
    """``mod:func``, ``pkg.mod:func``, or a bare ``func`` of the served module."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        owner = module if module_name == module.__name__ else importlib.import_module(module_name)
    else:
        owner, attr = module, spec
    function = owner
    for part in attr.split("."):
        function = getattr(function, part)
    if not callable(function):
        raise TypeError(f"initializer {spec!r} is not callable")
    return function


def _error(exc, tb):
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }


def run_item(function, name, item, star, kwargs):
    """Run one item; return its result entry as JSON text (``{"value"}`` or ``{"error"}``,
    with ``"log"`` when the function printed something)."""
    buffer = _LogBuffer()
    saved = sys.stdout
    sys.stdout = buffer
    try:
        if function is None:
            raise LookupError(f"this worker has no function {name!r}")
        if star and not isinstance(item, list):
            raise TypeError(
                f"star=true needs each item to be an array of arguments, got {json.dumps(item)}"
            )
        args = item if star else [item]
        value = function(*args, **kwargs)
        try:
            entry = '{"value":' + json.dumps(value, allow_nan=False) + "}"
        except (TypeError, ValueError) as e:
            raise TypeError(f"the result of {name}() cannot be sent as JSON: {e}") from None
    except Exception as e:
        # Drop this frame: the traceback starts in the user's function.
        tb = e.__traceback__
        if tb is not None and tb.tb_next is not None and tb.tb_frame.f_code is run_item.__code__:
            tb = tb.tb_next
        entry = json.dumps({"error": _error(e, tb)})
    finally:
        sys.stdout = saved
    log = buffer.log()
    if log:
        entry = entry[:-1] + ',"log":' + json.dumps(log) + "}"
    return entry


def run_task(task, functions):
    name = task.get("function")
    function = functions.get(name)
    kwargs = task.get("kwargs") or {}
    star = bool(task.get("star", False))
    entries = [run_item(function, name, item, star, kwargs) for item in task["items"]]
    return '{"type":"result","id":%d,"results":[%s]}' % (task["id"], ",".join(entries))


def serve(functions, protocol_out, tasks_in):
    """Say hello, then answer every task on ``tasks_in`` in order until it closes."""
    hello = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "pid": os.getpid(),
        "functions": [{"name": n, "doc": describe(n, f)} for n, f in functions.items()],
    }
    protocol_out.write(json.dumps(hello) + "\n")
    protocol_out.flush()
    for line in tasks_in:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as e:
            print(f"poold.worker: skipping a line that is not JSON: {e}", file=sys.stderr)
            continue
        if message.get("type") != "task":
            print(f"poold.worker: skipping a {message.get('type')!r} message", file=sys.stderr)
            continue
        protocol_out.write(run_task(message, functions) + "\n")
        protocol_out.flush()


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m poold.worker",
        description="Serve a module's public functions to poold (worker protocol v1).",
    )
    parser.add_argument("module", help="module name (pkg.mod) or path of a .py file")
    parser.add_argument(
        "--initializer",
        help="called once per worker process before it serves: mod:func, or func of the module",
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
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    tasks_in = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="\n")

    module = load_module(args.module)
    functions = public_functions(module)
    if not functions:
        print(f"poold.worker: module {module.__name__} has no public functions", file=sys.stderr)
    if args.initializer:
        try:
            resolve_initializer(args.initializer, module)(*args.initargs)
        except Exception:
            traceback.print_exc()
            print("poold.worker: the initializer failed; exiting", file=sys.stderr)
            return 1
    try:
        serve(functions, protocol_out, tasks_in)
    except BrokenPipeError:
        pass  # poold is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
