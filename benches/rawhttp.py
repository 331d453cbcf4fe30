"""A small HTTP/1.1 keep-alive client on a bare socket (standard library only).

`http.client` parses every response's headers with the `email` package, which costs tens of
microseconds per request in the client: at tens of thousands of requests per second on a
2-core machine that would measure the client, not the server. This client sends one request
at a time on one persistent connection, reads `Content-Length` and chunked bodies, and can
stream a chunked body piece by piece (server-sent events, NDJSON) without decoding it further.
"""

import socket


class HttpError(Exception):
    pass


class Http:
    def __init__(self, host, port, timeout=120.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""

    def _recv(self):
        data = self.sock.recv(262144)
        if not data:
            self.close()
            raise HttpError("the server closed the connection")
        return data

    def _send(self, method, path, body, headers):
        if self.sock is None:
            self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head = (head + "\r\n").encode("latin-1")
        if body is not None and len(body) < 65536:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            if body is not None:
                self.sock.sendall(body)

    def _head(self):
        i = self.buf.find(b"\r\n\r\n")
        while i < 0:
            self.buf += self._recv()
            i = self.buf.find(b"\r\n\r\n")
        lines = self.buf[:i].decode("latin-1").split("\r\n")
        self.buf = self.buf[i + 4 :]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _body_pieces(self, headers):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            yield from self._chunks()
            return
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        yield body

    def _chunks(self):
        """Decode a chunked body, yielding each chunk's data (bytes)."""
        buf, pos, recv = self.buf, 0, self._recv
        while True:
            i = buf.find(b"\r\n", pos)
            while i < 0:
                buf, pos = buf[pos:] + recv(), 0
                i = buf.find(b"\r\n")
            size = int(buf[pos:i].split(b";", 1)[0], 16)
            pos = i + 2
            if size == 0:  # last chunk, then trailers up to an empty line
                while True:
                    i = buf.find(b"\r\n", pos)
                    while i < 0:
                        buf, pos = buf[pos:] + recv(), 0
                        i = buf.find(b"\r\n")
                    empty, pos = i == pos, i + 2
                    if empty:
                        self.buf = buf[pos:]
                        return
            end = pos + size
            while len(buf) < end + 2:
                buf, end, pos = buf[pos:] + recv(), end - pos, 0
            yield buf[pos:end]
            pos = end + 2

    def request(self, method, path, body=None, headers=None):
        """Send a request and read the whole response: (status, headers, body bytes)."""
        self._send(method, path, body, headers)
        status, response_headers = self._head()
        return status, response_headers, b"".join(self._body_pieces(response_headers))

    def stream(self, method, path, headers=None):
        """Send a request; return (status, headers, iterator over body pieces). Read the
        iterator to its end before the next request on this connection."""
        self._send(method, path, None, headers)
        status, response_headers = self._head()
        return status, response_headers, self._body_pieces(response_headers)
