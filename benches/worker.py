"""A minimal poold worker in the Python standard library: JSON lines on stdin/stdout, as in
docs/worker-protocol.md, serving the functions of `funcs.py`.

    poold serve --worker-command "/path/to/python3 benches/worker.py"

One task line in, one result line out, flushed at once (poold waits for it). Logs go to stderr.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from funcs import FUNCTIONS  # noqa: E402


def error(e):
    return {"error": {"type": type(e).__name__, "message": str(e), "traceback": None}}


def main():
    out = sys.stdout.buffer
    hello = {
        "type": "hello",
        "protocol": 1,
        "pid": os.getpid(),
        "functions": [{"name": n, "doc": f.__doc__ or ""} for n, f in FUNCTIONS.items()],
    }
    out.write(json.dumps(hello).encode() + b"\n")
    out.flush()
    loads, dumps = json.loads, json.dumps
    for line in sys.stdin.buffer:
        task = loads(line)
        func = FUNCTIONS.get(task["function"])
        kwargs = task.get("kwargs") or {}
        star = task.get("star")
        results = []
        append = results.append
        for item in task["items"]:
            try:
                if func is None:
                    raise NameError(f"unknown function {task['function']!r}")
                value = func(*item, **kwargs) if star else func(item, **kwargs)
                append({"value": value})
            except Exception as e:  # an item error is an outcome, not a crash
                append(error(e))
        out.write(dumps({"type": "result", "id": task["id"], "results": results}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
