"""HTTP plumbing of the client: JSON requests on kept-alive connections and NDJSON uploads
(the event-stream reader is :mod:`poold._sse`). Used by :mod:`poold.client`,
:mod:`poold._upload` and :mod:`poold._jobs`.

Standard library only. Requests reuse one connection per thread (so one :class:`Http` can be
shared by threads) and read responses with a lean HTTP/1.1 reader (:class:`_Kept`):
``http.client`` parses every response's headers with the ``email`` package, which takes about
as long as poold takes to answer a small request, and ``apply`` is two such round trips.
Uploads and event streams, whose cost is their body, use ``http.client`` on connections of
their own.
"""

import http.client
import json
import select
import socket
import ssl
import threading
import time
import urllib.parse

from .errors import PooldError

#: Attempts for an idempotent request that fails to connect or is cut.
GET_ATTEMPTS = 3
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
