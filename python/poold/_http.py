"""HTTP plumbing of the client: JSON requests on kept-alive connections, NDJSON uploads, and a
resuming server-sent-events reader. Used by :mod:`poold.client` and :mod:`poold._jobs`.

Standard library only. Requests reuse one connection per thread (so one :class:`Http` can be
shared by threads) and read responses with a lean HTTP/1.1 reader (:class:`_Kept`):
``http.client`` parses every response's headers with the ``email`` package, which takes about
as long as poold takes to answer a small request, and ``apply`` is two such round trips.
Uploads and event streams, whose cost is their body, use ``http.client`` on connections of
their own. The event reader parses whole blocks of events with one regular expression and
decodes a block's results with one ``json.loads``, never line by line: a reader that calls
``readline`` per line is slower than poold sends (~40k results/s against ~1M).
"""

import http.client
import itertools
import json
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse

from .errors import PooldError

#: An event stream that says nothing for this long is taken as dropped (poold sends a
#: keep-alive comment every 15 s).
STREAM_READ_TIMEOUT = 60.0
#: Reconnect attempts in a row, without an event in between, before giving up.
STREAM_MAX_RETRIES = 8
#: Attempts for an idempotent request that fails to connect or is cut.
GET_ATTEMPTS = 3
#: Bytes asked of an event stream per read.
READ_SIZE = 1 << 18
#: The trailer field that stops an upload whose input failed (poold fails the job with it).
UPLOAD_ERROR_TRAILER = "Poold-Upload-Error"

# A kept-alive connection that the server closed while idle fails like this on reuse.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Http:
    def __init__(self, url, token=None, timeout=30.0):
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"poold url must be http:// or https://, got {url!r}")
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        self._base = parts.path.rstrip("/")
        self.url = f"{parts.scheme}://{parts.netloc}{self._base}"
        self._token = token
        self.timeout = timeout
        self._local = threading.local()

    def connection(self, timeout):
        """A new connection (for a stream or an upload, which keep it to themselves)."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._netloc, timeout=timeout)

    def headers(self, extra=None):
        headers = {"Accept": "application/json", "User-Agent": "poold-python"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if extra:
            headers.update(extra)
        return headers

    def path(self, path, query=None):
        path = self._base + path
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return path

    def _kept(self):
        """This thread's kept-alive connection, and whether it was used before."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _Kept(self._address, self._https, self.timeout)
            return conn, False
        return conn, True

    def close(self):
        """Close this thread's kept-alive connection (a later request opens another)."""
        self._drop()

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method, path, body=None, query=None, timeout=None):
        """Send a request and return the decoded JSON body (None when empty). HTTP errors
        raise :class:`PooldError` with the problem document's ``code`` and ``detail``."""
        extra = {"Host": self._netloc, "Connection": "keep-alive"}
        data = b""
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            extra["Content-Type"] = "application/json"
            extra["Content-Length"] = str(len(data))
        elif method != "GET":
            extra["Content-Length"] = "0"
        lines = [f"{method} {self.path(path, query)} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers(extra).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        attempts = GET_ATTEMPTS if method == "GET" else 1
        attempt = 0
        while True:
            reused = False
            try:
                conn, reused = self._kept()
                status, payload, keep = conn.round_trip(head + data, timeout or self.timeout)
            except (OSError, http.client.HTTPException, ValueError) as e:
                self._drop()
                if reused and isinstance(e, _STALE):
                    continue  # the server had closed it: the request never reached it
                attempt += 1
                if attempt >= attempts:
                    raise PooldError(f"{method} {path}: {e}") from e
                time.sleep(0.2 * 2**attempt)
                continue
            if not keep:
                self._drop()
            break
        if status >= 400:
            raise problem_error(method, path, status, payload)
        return json.loads(payload) if payload else None


class _Kept:
    """One kept-alive connection and the least of HTTP/1.1 a JSON round trip needs: the
    request in one write (``TCP_NODELAY``), the status line, the three headers that frame the
    body, and the body (``Content-Length``, chunked, or up to the close)."""

    _LIMIT = 65536

    def __init__(self, address, https, timeout):
        self._sock = self._file = None
        sock = socket.create_connection(address, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address[0])
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self):
        for part in (self._file, self._sock):
            if part is not None:
                part.close()

    # Kept-alive connections outlive requests by design: close one when its pool (or thread)
    # lets go of it.
    __del__ = close

    def round_trip(self, request, timeout):
        """Send ``request`` (bytes); return (status, body, whether the connection stays)."""
        self._sock.settimeout(timeout)
        self._sock.sendall(request)
        readline = self._file.readline
        line = readline(self._LIMIT)
        if not line:
            raise http.client.RemoteDisconnected("the connection closed before the answer")
        version, status = line.split(None, 2)[:2]
        status = int(status)
        length, chunked, keep = None, False, version != b"HTTP/1.0"
        while True:
            header = readline(self._LIMIT)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep = value == b"keep-alive" or (keep and value != b"close")
        if chunked:
            return status, self._chunked(), keep
        if length is None:
            return status, self._file.read(), False
        body = self._file.read(length)
        if len(body) != length:
            raise http.client.IncompleteRead(body, length - len(body))
        return status, body, keep

    def _chunked(self):
        parts = []
        while True:
            size = int(self._file.readline(self._LIMIT).split(b";")[0], 16)
            if size == 0:
                while self._file.readline(self._LIMIT) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                return b"".join(parts)
            parts.append(self._file.read(size))
            self._file.readline(self._LIMIT)


def problem_error(method, path, status, payload):
    try:
        problem = json.loads(payload)
        detail, code = problem.get("detail") or problem.get("title"), problem.get("code")
    except ValueError:
        detail, code = payload.decode(errors="replace").strip(), None
    return PooldError(f"{method} {path}: {status} {detail}", status=status, code=code)


class Upload:
    """``POST /v1/jobs`` with an NDJSON body sent as it is produced (chunked): line 1 is the
    job, then one item per line. poold stores the job when line 1 arrives and answers when the
    body ends, or at once with a problem; :meth:`answered` tells whether it has."""

    def __init__(self, http_, first_line, timeout):
        self._conn = http_.connection(timeout)
        self._conn.putrequest("POST", http_.path("/v1/jobs"), skip_accept_encoding=True)
        extra = {
            "Content-Type": "application/x-ndjson",
            "Transfer-Encoding": "chunked",
            "Trailer": UPLOAD_ERROR_TRAILER,
        }
        for name, value in http_.headers(extra).items():
            self._conn.putheader(name, value)
        self._conn.endheaders()
        self.send(first_line + b"\n")

    def send(self, data):
        """Send bytes of the body (whole lines)."""
        self._conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    def answered(self):
        """Whether poold has answered already (before the body ended: a problem)."""
        sock = self._conn.sock
        return sock is None or bool(select.select([sock], [], [], 0)[0])

    def finish(self):
        """End the body; return poold's answer, the job (or raise its problem)."""
        self._conn.send(b"0\r\n\r\n")
        return self.answer()

    def stop(self, reason):
        """End the body with :data:`UPLOAD_ERROR_TRAILER`: the items sent run, then poold fails
        the job with ``reason``. Its answer comes only then, so it is not waited for."""
        text = reason.encode("ascii", "backslashreplace")
        text = bytes(b if 0x20 <= b < 0x7F else 0x20 for b in text)[:1000]
        try:
            self._conn.send(b"0\r\n%s: %s\r\n\r\n" % (UPLOAD_ERROR_TRAILER.encode(), text))
        finally:
            self.close()

    def answer(self):
        response = self._conn.getresponse()
        payload = response.read()
        self.close()
        if response.status >= 400:
            raise problem_error("POST", "/v1/jobs", response.status, payload)
        return json.loads(payload)

    def close(self):
        self._conn.close()


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
