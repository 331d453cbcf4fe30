"""The client's HTTP details against a stand-in server (no poold needed): the bearer token,
and problem documents turned into PooldError."""

import http.server
import json
import threading
import unittest

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
        self.assertEqual(poold.Pool(self.url, token="s3cret").functions(), {"f": "f(x)"})
        self.assertEqual(poold.Pool(self.url + "/").functions(), {"f": "f(x)"})
        self.assertEqual(
            _Handler.seen,
            [("/v1/functions", "Bearer s3cret"), ("/v1/functions", None)],
        )

    def test_problem_documents_raise_poold_error_with_status_and_code(self):
        with self.assertRaises(poold.PooldError) as caught:
            poold.Pool(self.url).job("42")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "job_not_found"))
        self.assertIn("no job 42", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
