"""HTTP plumbing of the client: JSON requests and a resuming server-sent-events reader.

Used only by :mod:`poold.client`. Standard library only (``http.client``): one connection per
request, so one :class:`Http` can be shared by threads.
"""

import http.client
import json
import socket
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


class Http:
    def __init__(self, url, token=None, timeout=30.0):
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"poold url must be http:// or https://, got {url!r}")
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._base = parts.path.rstrip("/")
        self.url = f"{parts.scheme}://{parts.netloc}{self._base}"
        self._token = token
        self.timeout = timeout

    def connection(self, timeout):
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

    def request(self, method, path, body=None, query=None, timeout=None):
        """Send a request and return the decoded JSON body (None when empty). HTTP errors
        raise :class:`PooldError` with the problem document's ``code`` and ``detail``."""
        data = None
        extra = {}
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            extra["Content-Type"] = "application/json"
        attempts = GET_ATTEMPTS if method == "GET" else 1
        for attempt in range(attempts):
            conn = self.connection(timeout or self.timeout)
            try:
                conn.request(method, self.path(path, query), body=data, headers=self.headers(extra))
                response = conn.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException) as e:
                if attempt + 1 == attempts:
                    raise PooldError(f"{method} {path}: {e}") from e
                time.sleep(0.2 * 2**attempt)
            finally:
                conn.close()
        if response.status >= 400:
            raise problem_error(method, path, response.status, payload)
        return json.loads(payload) if payload else None


def problem_error(method, path, status, payload):
    try:
        problem = json.loads(payload)
        detail, code = problem.get("detail") or problem.get("title"), problem.get("code")
    except ValueError:
        detail, code = payload.decode(errors="replace").strip(), None
    return PooldError(f"{method} {path}: {status} {detail}", status=status, code=code)


class Event:
    __slots__ = ("event", "id", "data")

    def __init__(self, event, id, data):
        self.event, self.id, self.data = event, id, data

    def json(self):
        return json.loads(self.data)


class EventStream:
    """One job's event stream. :meth:`events` yields every event once: when the connection
    drops (or goes silent) it reconnects with ``Last-Event-ID`` set to the last event id it
    saw, so poold goes on with no gap and no duplicate."""

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

    def events(self):
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
                for event in self._read():
                    failures = 0
                    if event.id is not None:
                        self.last_id = int(event.id)
                    yield event
                    if event.event == "end":
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
        """Parse server-sent events until the connection ends."""
        response = self._response
        event, id_, data = None, None, []
        while True:
            raw = response.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data or event:
                    yield Event(event or "message", id_, "\n".join(data))
                event, id_, data = None, None, []
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                id_ = value
