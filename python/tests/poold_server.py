"""Test fixture: the real poold binary (``POOLD_BIN``) on a free loopback port, with a
temporary SQLite file and ``python -m poold.worker <targets…>`` as its workers.

Like ``tests/common/mod.rs`` on the Rust side: poold is started with ``--bind 127.0.0.1:0``
and its first stdout line, ``poold listening on <url>``, gives the address.
"""

import json
import os
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(HERE)  # python/: holds the poold package
START_TIMEOUT = 20.0


class PooldServer:
    def __init__(
        self, *targets, workers=2, initializer=None, initargs=None, extra_path=(), allow_pickle=False
    ):
        binary = os.environ.get("POOLD_BIN")
        if not binary:
            raise RuntimeError(
                "POOLD_BIN is not set: point it at the poold binary "
                "(`cargo build --release` makes target/release/poold; `cargo test --release` sets it)"
            )
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"POOLD_BIN={binary!r} is not an executable file")
        self.dir = tempfile.mkdtemp(prefix="poold-sdk-test-")
        command = [sys.executable, "-m", "poold.worker", *targets]
        if allow_pickle:
            command.append("--allow-pickle")
        if initializer:
            command += ["--initializer", initializer, "--initargs", json.dumps(initargs or [])]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [PACKAGE_DIR, HERE, *extra_path, env.get("PYTHONPATH", "")] if p
        )
        env.setdefault("POOLD_LOG", "info")
        self.log_path = os.path.join(self.dir, "poold.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                binary,
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--database",
                os.path.join(self.dir, "poold.db"),
                "--workers",
                str(workers),
                "--worker-command",
                " ".join(shlex.quote(word) for word in command),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=self.dir,
        )
        try:
            self.url = self._read_url()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _read_url(self):
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        line = b""
        deadline = time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"poold did not say where it listens; log:\n{self.log_text()}")
            byte = os.read(self.process.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError(f"poold exited at start; log:\n{self.log_text()}")
            line += byte
        selector.close()
        prefix = "poold listening on "
        text = line.decode().strip()
        if not text.startswith(prefix):
            raise RuntimeError(f"unexpected first line {text!r}; log:\n{self.log_text()}")
        return text[len(prefix) :]

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"poold not ready in time; log:\n{self.log_text()}")
            time.sleep(0.05)

    def get(self, path):
        """GET a JSON document from poold."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process.stdout.close()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
