"""python/examples/client.py runs against poold serving python/examples/mathfuncs.py."""

import os
import subprocess
import sys
import unittest

from poold_server import PACKAGE_DIR, PooldServer

EXAMPLES = os.path.join(PACKAGE_DIR, "examples")


class ExamplesTest(unittest.TestCase):
    def test_client_example_runs(self):
        server = PooldServer("mathfuncs", extra_path=[EXAMPLES])
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([PACKAGE_DIR, EXAMPLES])
            run = subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "client.py"), server.url],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            server.stop()
        self.assertEqual(run.returncode, 0, run.stderr)
        lines = run.stdout.splitlines()
        self.assertEqual(lines[:3], ["Square: 100", "Cube: 1000", "Done!"])
        self.assertEqual(lines[3], str([x * x for x in range(10)]))
        self.assertEqual(lines[4], str([1 + 2 * c for c in range(5)]))
        self.assertEqual(lines[5], "sum of cubes: {}".format(sum(x**3 for x in range(100))))
        self.assertEqual(lines[6], str([x * x for x in range(8)]))


if __name__ == "__main__":
    unittest.main()
