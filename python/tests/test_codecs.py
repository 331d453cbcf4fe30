"""Functions by module path and the pickle codec, against the real poold: the worker serves
exactly what its command line lists (``sdk_funcs time builtins:int``), and with
``--allow-pickle`` any picklable value round-trips; without it a pickle job is refused (422)
and the worker never unpickles."""

import base64
import dataclasses
import datetime
import fractions
import functools
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import unittest

import poold
import sdk_funcs
from poold_server import HERE, PACKAGE_DIR, PooldServer

TARGETS = ("sdk_funcs", "time", "builtins:int")


class FunctionsAndPickleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = PooldServer(*TARGETS, workers=2, allow_pickle=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.pool = poold.Pool(url=self.server.url)
        self.pickled = poold.Pool(url=self.server.url, codec="pickle")

    def tearDown(self):
        self.pool.terminate()
        self.pickled.terminate()

    def test_listed_modules_and_callables_are_served_by_qualified_name(self):
        self.assertEqual(self.pool.map(time.sleep, [0, 0.01]), [None, None])
        self.assertEqual(self.pool.map(int, ["7", " 8 "]), [7, 8])
        self.assertEqual(self.pool.starmap(int, [("ff", 16), ("11", 2)]), [255, 3])
        self.assertIsInstance(self.pool.apply(time.time), float)
        self.assertEqual(self.pool.map("time:sleep", [0]), [None])
        listing = self.server.get("/v1/functions")
        names = {f["name"]: f.get("aliases", []) for f in listing["functions"]}
        self.assertEqual(names["builtins:int"], [])
        self.assertEqual(names["time:sleep"], [])  # bare names: the first module's only
        self.assertEqual(names["sdk_funcs:square"], ["square"])
        self.assertEqual(listing["codecs"], ["json", "pickle"])

    def test_anything_not_listed_is_refused(self):
        for func in (math.sqrt, os.getcwd, float, sdk_funcs.sqrt, "sleep", "sdk_funcs:_private_helper"):
            with self.subTest(func):
                with self.assertRaises(poold.PooldError) as caught:
                    self.pool.map(func, [1])
                self.assertEqual((caught.exception.status, caught.exception.code), (422, "unknown_function"))
        with self.assertRaises(poold.PooldError) as caught:
            self.pool.apply(eval, ("1 + 1",))
        self.assertEqual(caught.exception.code, "unknown_function")

    def test_values_round_trip_with_their_types_under_pickle(self):
        values = [
            (1, 2),
            {3, 4},
            frozenset({5}),
            sdk_funcs.Point(1, 2),
            datetime.datetime(2026, 11, 26, 12, 30),
            fractions.Fraction(1, 3),
            b"bytes",
            {"nested": [(1, {2})]},
            float("nan"),
        ]
        got = self.pickled.map(sdk_funcs.mirror, values)
        self.assertEqual([type(v) for v in got], [type(v) for v in values])
        self.assertEqual(got[:-1], values[:-1])
        self.assertTrue(math.isnan(got[-1]))
        self.assertEqual(self.pickled.map(sdk_funcs.pair, [1, 2]), [(1, -1), (2, -2)])
        self.assertEqual(list(self.pickled.imap(sdk_funcs.mirror, iter(values[:3]))), values[:3])

    def test_starmap_kwargs_and_partials_are_pickled_too(self):
        point = sdk_funcs.Point(1, 2)
        self.assertEqual(
            self.pickled.starmap(sdk_funcs.shift, [(point, 1), (point, 5)]),
            [sdk_funcs.Point(2, 2), sdk_funcs.Point(6, 2)],
        )
        shift_by_3 = functools.partial(sdk_funcs.shift, dx=3)
        self.assertEqual(self.pickled.map(shift_by_3, [point]), [sdk_funcs.Point(4, 2)])
        self.assertEqual(
            self.pickled.apply(sdk_funcs.describe, ((1, 2), {3}), {"p": point}),
            ["tuple", "set", "p=Point"],
        )
        with_prefix = functools.partial(sdk_funcs.describe, point)
        self.assertEqual(self.pickled.map(with_prefix, [(1,)]), [["Point", "tuple"]])

    def test_the_server_stores_pickles_as_opaque_strings(self):
        it = self.pickled.imap(sdk_funcs.pair, [3])
        self.assertEqual(list(it), [(3, -3)])
        job = self.server.get(f"/v1/jobs/{it.job_id}")
        self.assertEqual(job["codec"], "pickle")
        value = self.server.get(f"/v1/jobs/{it.job_id}/results")["results"][0]["value"]
        self.assertEqual(pickle.loads(base64.b64decode(value)), (3, -3))

    def test_a_custom_exception_is_rebuilt_as_its_own_type_under_pickle(self):
        with self.assertRaises(sdk_funcs.Custom) as caught:
            self.pickled.map(sdk_funcs.raise_custom, [41])
        error = caught.exception
        self.assertEqual((error.code, error.args), (41, (41, "custom failure")))
        self.assertIn("in raise_custom", error.__cause__.tb)
        self.assertEqual(error.__cause__.index, 0)
        # A result that cannot be pickled is that item's error, and the worker goes on.
        with self.assertRaises(TypeError) as caught:
            self.pickled.apply(sdk_funcs.make_lock, (1,))
        self.assertIn("pickle", str(caught.exception))
        self.assertEqual(self.pickled.map(sdk_funcs.mirror, [1, 2]), [1, 2])


class WithoutPickleTest(unittest.TestCase):
    """A worker started without --allow-pickle: poold refuses pickle jobs, and the worker
    itself never unpickles even when handed a pickle task."""

    @classmethod
    def setUpClass(cls):
        cls.server = PooldServer("sdk_funcs", workers=1)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_a_pickle_job_is_a_422_unsupported_codec(self):
        pool = poold.Pool(url=self.server.url, codec="pickle")
        for call in (
            lambda: pool.map(sdk_funcs.square, [1, 2]),
            lambda: pool.apply(sdk_funcs.square, (1,)),
        ):
            with self.assertRaises(poold.PooldError) as caught:
                call()
            self.assertEqual((caught.exception.status, caught.exception.code), (422, "unsupported_codec"))
            self.assertIn("--allow-pickle", str(caught.exception))
        self.assertEqual(self.server.get("/v1/functions")["codecs"], ["json"])
        pool.terminate()

    def test_the_worker_refuses_pickle_items_without_unpickling_them(self):
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "unpickled")
            # Unpickling this would create the marker file.
            payload = base64.b64encode(pickle.dumps(_Opens(marker))).decode()
            task = {"type": "task", "id": 1, "function": "square", "kwargs": {}, "star": False,
                    "items": [payload, payload], "codec": "pickle"}
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_DIR, HERE]))
            run = subprocess.run(
                [sys.executable, "-m", "poold.worker", "sdk_funcs"],
                input=json.dumps(task) + "\n", capture_output=True, text=True, env=env, timeout=60,
            )
            hello, result = [json.loads(line) for line in run.stdout.splitlines()]
            self.assertEqual(hello["codecs"], ["json"])
            errors = [entry["error"] for entry in result["results"]]
            self.assertEqual([e["type"] for e in errors], ["PermissionError", "PermissionError"])
            self.assertIn("--allow-pickle", errors[0]["message"])
            self.assertFalse(os.path.exists(marker))


@dataclasses.dataclass
class _Opens:
    """Pickles as a call to open(path, "w"): unpickling it creates the file."""

    path: str

    def __reduce__(self):
        return (open, (self.path, "w"))


if __name__ == "__main__":
    unittest.main()
