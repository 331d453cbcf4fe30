"""A job's server-sent events, read and resumed: :class:`EventStream`, for
:class:`poold._jobs.IMapIterator`.

The reader parses whole blocks of events with one regular expression and decodes a block's
results with one ``json.loads``, never line by line: a reader that calls ``readline`` per line
is slower than poold sends (~40k results/s against ~1M).
"""

import http.client
import itertools
import json
import re
import socket
import time

from ._http import problem_error
from .errors import PooldError

#: An event stream that says nothing for this long is taken as dropped (poold sends a
#: keep-alive comment every 15 s).
STREAM_READ_TIMEOUT = 60.0
#: Reconnect attempts in a row, without an event in between, before giving up.
STREAM_MAX_RETRIES = 8
#: Bytes asked of an event stream per read.
READ_SIZE = 1 << 18

# poold writes each event as `event: NAME\n`, `id: N\n` (results only), `data: JSON\n`, then a
# blank line, and comments (`:\n\n`) to keep the stream alive. Most blocks are results; the
# others (progress, log, end, comments, and anything in another layout) are found by
# `_OTHER` and read one by one, the runs of results between them by one `findall` each. A
# result whose item printed something comes right after its `log` event and is read with it.
_OTHER = re.compile(rb"\n\n(?!event: result\n)(?=[^\n])")
_PLAIN_VALUE = re.compile(rb'data: \{"index":\d+,"value":([^\n]*)\}\n\n')
_RESULT_DATA = re.compile(rb"data: ([^\n]*)\n\n")


def _parse_block(block):
    """(event, id, data) of one event block, in any layout SSE allows."""
    event, id_, data = b"message", None, []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            event = value
        elif field == b"data":
            data.append(value)
        elif field == b"id":
            id_ = value
    return event, id_, b"\n".join(data)


def _results(data, start, end):
    """The results of a run of result events, data[start:end]: ``("values", [value, …])``
    when every one is a plain value (no error, no log), else ``("result", [dict, …])``."""
    blocks = data.count(b"\n\n", start, end)
    values = _PLAIN_VALUE.findall(data, start, end)
    if len(values) == blocks:
        return "values", json.loads(b"[" + b",".join(values) + b"]")
    return "result", json.loads(b"[" + b",".join(_RESULT_DATA.findall(data, start, end)) + b"]")


def _last_id(data, start, end):
    at = data.rfind(b"\nid: ", start, end) + 5
    return int(data[at : data.index(b"\n", at)])


class EventStream:
    """One job's event stream. :meth:`batches` yields every event once, runs of results as
    ``("values", [value, …])`` (plain values) or ``("result", [result, …])``, other events as
    ``(name, data)`` (``data`` is the JSON text): when the connection drops (or goes silent) it reconnects with
    ``Last-Event-ID`` set to the last result it read, so poold goes on with no gap and no
    duplicate."""

    def __init__(self, http_, path, query):
        self._http = http_
        self._path = path
        self._query = query
        self.last_id = None
        #: How many times the stream was reopened after a drop.
        self.reconnects = 0
        self._conn = None
        self._sock = None
        self._response = None

    def _open(self):
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id is not None:
            extra["Last-Event-ID"] = str(self.last_id)
        conn = self._http.connection(STREAM_READ_TIMEOUT)
        try:
            conn.connect()
            self._sock = conn.sock
            conn.request("GET", self._http.path(self._path, self._query), headers=self._http.headers(extra))
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status != 200:
            payload = response.read()
            conn.close()
            raise problem_error("GET", self._path, response.status, payload)
        self._conn, self._response = conn, response

    def drop(self):
        """Cut the connection as a network failure would (the next read fails or ends)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        if self._conn is not None:
            self._conn.close()
        self._conn = self._sock = self._response = None

    def batches(self):
        failures = 0
        while True:
            if self._response is None:
                try:
                    self._open()
                except PooldError as e:
                    if e.status is not None and e.status < 500:
                        raise
                    failures += 1
                    if failures > STREAM_MAX_RETRIES:
                        raise
                    time.sleep(min(0.1 * 2**failures, 5.0))
                    continue
                except (OSError, http.client.HTTPException) as e:
                    failures += 1
                    if failures > STREAM_MAX_RETRIES:
                        raise PooldError(f"event stream of {self._path}: {e}") from e
                    time.sleep(min(0.1 * 2**failures, 5.0))
                    continue
            try:
                for batch in self._read():
                    failures = 0
                    yield batch
                    if batch[0] == "end":
                        self.close()
                        return
            except (OSError, http.client.HTTPException, ValueError):
                pass  # dropped mid-event: reconnect below
            # The stream ended without `end`: the connection dropped.
            self.close()
            self.reconnects += 1
            failures += 1
            if failures > STREAM_MAX_RETRIES:
                raise PooldError(f"event stream of {self._path} keeps dropping")

    def _read(self):
        """Parse events until the connection ends, a block of complete events at a time."""
        read = self._response.read1
        rest = b""
        while True:
            data = read(READ_SIZE)
            if not data:
                return
            data = rest + data if rest else data
            end = data.rfind(b"\n\n") + 2
            if end < 2:
                rest = data
                continue
            rest = data[end:]
            at = 0  # the start of the next block not yet read
            first = [] if data.startswith(b"event: result\n") else [0]
            others = (m.end() for m in _OTHER.finditer(data, 0, end))
            for start in itertools.chain(first, others):
                if start < at:
                    continue  # inside a block already read (a log's result)
                if start > at:
                    self.last_id = _last_id(data, at, start)
                    yield _results(data, at, start)
                at = data.index(b"\n\n", start) + 2
                name, id_, payload = _parse_block(data[start : at - 2])
                if name == b"log" and data.startswith(b"event: result\n", at):
                    yield "log", payload
                    start, at = at, data.index(b"\n\n", at) + 2
                    name, id_, payload = _parse_block(data[start : at - 2])
                if name == b"result":
                    self.last_id = int(id_)
                    yield "result", [json.loads(payload)]
                elif name != b"message" or payload:
                    yield name.decode(), payload
            if at < end:
                self.last_id = _last_id(data, at, end)
                yield _results(data, at, end)
