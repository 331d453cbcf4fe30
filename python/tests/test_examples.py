"""The seed notes' examples (python/examples/) run with multiprocessing as they are and on
poold with only their import lines changed, and print the same."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from poold_server import PACKAGE_DIR, PooldServer

EXAMPLES = os.path.join(PACKAGE_DIR, "examples")
SCRIPTS = ["seed_process.py", "seed_pool.py", "seed_partial.py", "seed_imap_tqdm.py"]

#: The only change: the import lines.
IMPORTS = [
    (re.compile(r"^import multiprocessing$", re.M), "import poold as multiprocessing"),
    (re.compile(r"^from multiprocessing import ", re.M), "from poold import "),
]


def for_poold(source):
    changed = source
    for pattern, replacement in IMPORTS:
        changed = pattern.sub(replacement, changed)
    return changed


class ExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The workers serve the scripts themselves, as examples/README.md says.
        paths = [os.path.join(EXAMPLES, name) for name in SCRIPTS]
        cls.server = PooldServer(*paths, workers=2)
        cls.tmp = tempfile.mkdtemp(prefix="poold-examples-")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_script(self, path):
        env = dict(os.environ, PYTHONPATH=PACKAGE_DIR, POOLD_URL=self.server.url)
        env.pop("POOLD_API_TOKEN", None)
        run = subprocess.run(
            [sys.executable, path], env=env, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(run.returncode, 0, f"{path}:\n{run.stderr}")
        return run.stdout

    def test_each_seed_example_prints_the_same_on_poold_as_with_multiprocessing(self):
        for name in SCRIPTS:
            with self.subTest(name):
                original = os.path.join(EXAMPLES, name)
                with open(original, encoding="utf-8") as f:
                    source = f.read()
                ported = os.path.join(self.tmp, name)  # same name: same module for the worker
                with open(ported, "w", encoding="utf-8") as f:
                    f.write(for_poold(source))
                changed = [
                    (a, b)
                    for a, b in zip(source.splitlines(), for_poold(source).splitlines())
                    if a != b
                ]
                self.assertTrue(changed, "no import line to change")
                self.assertTrue(all("import" in a and "import" in b for a, b in changed), changed)

                local = self.run_script(original)
                remote = self.run_script(ported)
                self.assertTrue(local.strip(), f"{name} printed nothing")
                if name == "seed_process.py":
                    # Local children write to the terminal at the same time, so their lines
                    # may interleave; on poold each join() writes its process's output.
                    self.assertEqual(sorted(remote), sorted(local))
                    self.assertEqual(remote, "Square: 100\nCube: 1000\nDone!\n")
                else:
                    self.assertEqual(remote, local)


if __name__ == "__main__":
    unittest.main()
