"""The client's HTTP details and its constructor against a stand-in server (no poold needed):
the bearer token, problem documents turned into PooldError, and ``Pool(...)`` built like
``multiprocessing.Pool`` with the service from ``POOLD_URL``/``POOLD_API_TOKEN``."""

import http.server
import json
import os
import socket
import threading
import unittest
from unittest import mock

import poold


class _Handler(http.server.BaseHTTPRequestHandler):
    seen = []

    def do_GET(self):
        _Handler.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/v1/functions":
            body, status, kind = {"functions": [{"name": "f", "doc": "f(x)"}]}, 200, "application/json"
        else:
            body = {"type": "about:blank", "title": "Not Found", "status": 404,
                    "detail": "no job 42", "code": "job_not_found"}
            status, kind = 404, "application/problem+json"
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class HttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()
        cls.url = "http://127.0.0.1:%d" % cls.server.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        _Handler.seen.clear()

    def test_token_is_sent_as_bearer_authorization(self):
        self.assertEqual(poold.Pool(url=self.url, token="s3cret").functions(), {"f": "f(x)"})
        self.assertEqual(poold.Pool(url=self.url + "/").functions(), {"f": "f(x)"})
        self.assertEqual(
            _Handler.seen,
            [("/v1/functions", "Bearer s3cret"), ("/v1/functions", None)],
        )

    def test_problem_documents_raise_poold_error_with_status_and_code(self):
        with self.assertRaises(poold.PooldError) as caught:
            poold.Pool(url=self.url).job("42")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "job_not_found"))
        self.assertIn("no job 42", str(caught.exception))

    def test_a_service_that_cannot_be_reached_is_a_poold_error(self):
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with self.assertRaises(poold.PooldError) as caught:
            poold.Pool(url=f"http://127.0.0.1:{port}").functions()
        self.assertIsNone(caught.exception.status)
        self.assertIn("GET /v1/functions", str(caught.exception))

    def test_url_and_token_come_from_the_environment(self):
        with mock.patch.dict(os.environ, {"POOLD_URL": self.url, "POOLD_API_TOKEN": "from-env"}):
            pool = poold.Pool()
            self.assertEqual(pool.url, self.url)
            self.assertEqual(pool.functions(), {"f": "f(x)"})
            poold.Pool(token="given").functions()  # an argument wins over the environment
        self.assertEqual(
            _Handler.seen, [("/v1/functions", "Bearer from-env"), ("/v1/functions", "Bearer given")]
        )
        with mock.patch.dict(os.environ, {"POOLD_URL": "", "POOLD_API_TOKEN": ""}):
            pool = poold.Pool()
        self.assertEqual((pool.url, pool.processes, pool.codec), ("http://127.0.0.1:8080", None, "json"))


class ConstructorTest(unittest.TestCase):
    """``poold.Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, *,
    url=None, token=None, codec="json")``: the arguments are checked like Pool's."""

    def test_processes_is_the_first_argument_as_for_pool(self):
        self.assertEqual(poold.Pool(4).processes, 4)
        self.assertEqual(poold.Pool(processes=1).processes, 1)
        for bad in (0, -1):
            with self.assertRaises(ValueError) as caught:
                poold.Pool(bad)
            self.assertEqual(str(caught.exception), "Number of processes must be at least 1")
        with self.assertRaises(TypeError) as caught:
            poold.Pool("http://127.0.0.1:8080")
        self.assertIn("url=", str(caught.exception))
        with self.assertRaises(TypeError):
            poold.Pool(2.5)

    def test_what_belongs_to_the_workers_is_refused_with_where_to_set_it(self):
        with self.assertRaises(ValueError) as caught:
            poold.Pool(2, print, ("hello",))
        self.assertIn("--initializer", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            poold.Pool(maxtasksperchild=10)
        self.assertIn("--max-tasks-per-worker", str(caught.exception))
        with self.assertRaises(ValueError):
            poold.Pool(codec="marshal")
        self.assertEqual(poold.Pool(codec="pickle").codec, "pickle")

    def test_functions_are_named_module_qualname(self):
        import functools
        import time

        from poold._codec import function_name, take_apart

        self.assertEqual(function_name(time.sleep), "time:sleep")
        self.assertEqual(function_name(int), "builtins:int")
        self.assertEqual(function_name(os.path.join), "posixpath:join")
        self.assertEqual(function_name(dict.fromkeys), "builtins:dict.fromkeys")
        self.assertEqual(function_name("square"), "square")
        func, prefix, kwargs = take_apart(functools.partial(functools.partial(pow, 2), mod=5))
        self.assertEqual((function_name(func), prefix, kwargs), ("builtins:pow", (2,), {"mod": 5}))
        def nested(x):
            return x

        # No name a worker could serve: a lambda, a nested function, methods bound to objects.
        for unnamed in (lambda x: x, nested, "abc".upper, unittest.TestCase().id):
            with self.assertRaises(TypeError):
                function_name(unnamed)


if __name__ == "__main__":
    unittest.main()
