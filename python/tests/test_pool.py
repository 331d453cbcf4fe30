"""poold.Pool against the real poold with ``python -m poold.worker sdk_funcs`` workers,
compared with a local ``multiprocessing.Pool`` running the same functions: results, item
errors, logs, the worker's initializer, and close/join/terminate.

Run: ``POOLD_BIN=target/release/poold PYTHONPATH=python python3 -m unittest discover -s
python/tests -v`` (``cargo test --release`` runs it through ``tests/python_sdk.rs``).
"""

import functools
import multiprocessing
import multiprocessing.pool
import os
import shutil
import tempfile
import unittest

import poold
import sdk_funcs
from poold_server import PooldServer

WORKERS = 2


class PoolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="poold-sdk-pids-")
        cls.pid_file = os.path.join(cls.tmp, "pids.txt")
        cls.server = PooldServer(
            "sdk_funcs",
            workers=WORKERS,
            initializer="sdk_funcs:init_worker",
            initargs=[cls.pid_file, "hello"],
        )
        cls.local = multiprocessing.Pool(WORKERS)

    @classmethod
    def tearDownClass(cls):
        cls.local.terminate()
        cls.local.join()
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.pool = poold.Pool(url=self.server.url)

    def tearDown(self):
        self.pool.terminate()

    # ---- same results as multiprocessing.Pool ----

    def test_map_equals_local_pool(self):
        xs = list(range(50))
        self.assertEqual(self.pool.map(sdk_funcs.square, xs), self.local.map(sdk_funcs.square, xs))
        self.assertEqual(
            self.pool.map(sdk_funcs.cube, xs, chunksize=7),
            self.local.map(sdk_funcs.cube, xs, chunksize=7),
        )
        cube = functools.partial(sdk_funcs.power, exp=3)
        self.assertEqual(self.pool.map(cube, xs), self.local.map(cube, xs))
        self.assertEqual(self.pool.map("square", [1, 2, 3]), [1, 4, 9])  # a bare name
        self.assertEqual(self.pool.map("sdk_funcs:square", [4]), [16])
        self.assertEqual(self.pool.map(sdk_funcs.square, []), [])

    def test_imap_equals_local_pool(self):
        xs = list(range(40))
        remote = list(self.pool.imap(sdk_funcs.square, xs, chunksize=3))
        self.assertEqual(remote, list(self.local.imap(sdk_funcs.square, xs, chunksize=3)))
        positional = functools.partial(sdk_funcs.add, 100)  # a partial with positional args
        self.assertEqual(
            list(self.pool.imap(positional, xs)), list(self.local.imap(positional, xs))
        )

    def test_imap_unordered_equals_local_pool_as_a_multiset(self):
        xs = list(range(40))
        remote = list(self.pool.imap_unordered(sdk_funcs.slow_square, xs, chunksize=1))
        local = list(self.local.imap_unordered(sdk_funcs.slow_square, xs, chunksize=1))
        self.assertEqual(len(remote), len(xs))
        self.assertEqual(sorted(remote), sorted(local))

    def test_starmap_equals_local_pool(self):
        pairs = [(i, 10 * i) for i in range(30)]
        self.assertEqual(
            self.pool.starmap(sdk_funcs.add, pairs), self.local.starmap(sdk_funcs.add, pairs)
        )
        async_result = self.pool.starmap_async(sdk_funcs.add, pairs, chunksize=4)
        self.assertEqual(async_result.get(timeout=60), self.local.starmap(sdk_funcs.add, pairs))

    def test_json_turns_tuples_into_lists(self):
        self.assertEqual(self.pool.map(sdk_funcs.pair, [1, 2]), [[1, -1], [2, -2]])
        with self.assertRaises(TypeError) as caught:  # a set cannot be sent as JSON
            self.pool.map(sdk_funcs.mirror, [1, {2}])
        self.assertIn("set", str(caught.exception))

    # ---- apply and the async forms ----

    def test_apply_and_async_results_with_callbacks(self):
        self.assertEqual(self.pool.apply(sdk_funcs.add, (2, 3)), 5)
        self.assertEqual(self.pool.apply(sdk_funcs.power, (2,), {"exp": 10}), 1024)

        got = []
        result = self.pool.apply_async(sdk_funcs.square, (7,), callback=got.append)
        self.assertEqual(result.get(timeout=60), 49)
        self.assertTrue(result.ready())
        self.assertTrue(result.successful())
        self.assertEqual(got, [49])

        got = []
        result = self.pool.map_async(sdk_funcs.square, range(10), callback=got.append)
        result.wait(60)
        self.assertEqual(got, [[x * x for x in range(10)]])

        errors = []
        result = self.pool.map_async(
            sdk_funcs.fail_on_three, range(5), error_callback=errors.append
        )
        result.wait(60)
        self.assertTrue(result.ready())
        self.assertFalse(result.successful())
        self.assertEqual(len(errors), 1)
        self.assertIs(type(errors[0]), ValueError)
        with self.assertRaises(ValueError) as caught:
            result.get()
        self.assertIs(caught.exception, errors[0])

    def test_get_times_out_like_pool(self):
        result = self.pool.apply_async(sdk_funcs.slow_square, (3,))
        try:
            result.get(timeout=0.0001)
        except multiprocessing.TimeoutError:
            pass  # not ready yet: the expected case
        self.assertEqual(result.get(timeout=60), 9)

    # ---- remote errors ----

    def test_remote_exception_reraises_as_its_own_type_chained_to_the_remote_traceback(self):
        with self.assertRaises(ValueError) as caught:
            self.pool.map(sdk_funcs.fail_on_three, range(6))
        with self.assertRaises(ValueError) as local:
            self.local.map(sdk_funcs.fail_on_three, range(6))
        error, expected = caught.exception, local.exception
        self.assertIs(type(error), type(expected))
        self.assertEqual(error.args, expected.args)
        cause = error.__cause__
        self.assertIsInstance(cause, multiprocessing.pool.RemoteTraceback)  # as with Pool
        self.assertIsInstance(expected.__cause__, multiprocessing.pool.RemoteTraceback)
        self.assertEqual((cause.index, cause.job_id is not None), (3, True))
        for text in (cause.tb, str(cause)):
            self.assertIn("Traceback (most recent call last)", text)
            self.assertIn("sdk_funcs.py", text)
            self.assertIn("in fail_on_three", text)
            self.assertIn('raise ValueError(f"three is not allowed (got {x})")', text)
            self.assertIn("ValueError: three is not allowed (got 3)", text)
        self.assertNotIn("poold/worker.py", cause.tb)  # the worker's own frames are cut

        with self.assertRaises(KeyError) as key:
            self.pool.apply(sdk_funcs.key_error, ("b",))
        self.assertIs(type(key.exception), KeyError)
        self.assertIn("in key_error", key.exception.__cause__.tb)

        with self.assertRaises(RuntimeError) as runtime:
            self.pool.apply(sdk_funcs.raise_runtime, (7,))
        self.assertEqual(str(runtime.exception), "runtime failure 7")

    def test_a_type_the_client_cannot_rebuild_is_a_remote_error(self):
        # Under the json codec only the type's name travels: sdk_funcs.Custom is not a
        # built-in, so it comes as a RemoteError (the pickle codec rebuilds it, test_codecs).
        with self.assertRaises(poold.RemoteError) as caught:
            self.pool.map(sdk_funcs.raise_custom, [5])
        error = caught.exception
        self.assertEqual((error.type_name, error.index), ("Custom", 0))
        self.assertEqual(error.message, str(sdk_funcs.Custom(5, "custom failure")))
        self.assertIn("in raise_custom", error.__cause__.tb)
        self.assertEqual(error.traceback.strip(), error.__cause__.tb.strip('\n"'))

    def test_imap_raises_at_the_failing_item_and_goes_on(self):
        it = self.pool.imap(sdk_funcs.fail_on_three, range(6), chunksize=2)
        self.assertEqual([next(it), next(it), next(it)], [0, 1, 2])
        with self.assertRaises(ValueError):
            next(it)
        self.assertEqual(list(it), [4, 5])

    def test_a_remote_stop_iteration_does_not_end_imap_quietly(self):
        it = self.pool.imap(sdk_funcs.stop_on_two, range(4))
        with self.assertRaises(poold.RemoteError) as caught:
            list(it)
        self.assertEqual((caught.exception.type_name, caught.exception.index), ("StopIteration", 2))
        self.assertEqual(list(it), [3])

    # ---- item logs ----

    def test_prints_land_in_item_logs(self):
        xs = list(range(6))
        it = self.pool.imap(sdk_funcs.noisy, xs, chunksize=2)
        self.assertEqual(list(it), [x + 1 for x in xs])  # prints did not corrupt the protocol
        expected = {x: f"noisy {x}\nsecond line\n" for x in xs}
        self.assertEqual(it.logs, expected)  # from SSE `log` events
        stored = self.server.get(f"/v1/jobs/{it.job_id}/results")["results"]
        self.assertEqual({r["index"]: r["log"] for r in stored}, expected)

        result = self.pool.map_async(sdk_funcs.noisy, xs)
        self.assertEqual(result.get(60), [x + 1 for x in xs])
        self.assertEqual(result.logs, expected)

        # Writes to file descriptor 1 go to poold's log, not into the protocol.
        self.assertEqual(self.pool.map(sdk_funcs.raw_stdout, xs), xs)

    # ---- the worker ----

    def test_functions_and_their_docs_are_the_modules_public_functions(self):
        functions = self.pool.functions()
        self.assertEqual(functions["sdk_funcs:square"], "square(x): Return x * x.")
        self.assertEqual(functions["sdk_funcs:cube"], "cube(x)")
        self.assertTrue(functions["sdk_funcs:power"].startswith("power(x, exp=2): x ** exp"))
        self.assertNotIn("sdk_funcs:_private_helper", functions)
        self.assertNotIn("sdk_funcs:sqrt", functions)  # imported, not defined in the module
        self.assertNotIn("math:sqrt", functions)
        self.assertNotIn("sdk_funcs:Point", functions)  # a class, not a function

    def test_initializer_runs_once_per_worker(self):
        seen = self.pool.map(sdk_funcs.whoami, range(40), chunksize=1)
        for pid, calls, greeting in seen:
            self.assertEqual((calls, greeting), (1, "hello"), f"worker {pid}")
        with open(self.pid_file) as f:
            initialized = [int(line) for line in f.read().split()]
        self.assertEqual(len(initialized), len(set(initialized)), initialized)
        pool_pids = {w["pid"] for w in self.server.get("/v1/pool")["workers"]}
        self.assertEqual(len(pool_pids), WORKERS)
        self.assertLessEqual(pool_pids, set(initialized))
        self.assertLessEqual({pid for pid, _, _ in seen}, set(initialized))

    # ---- streaming ----

    def test_imap_resumes_after_a_dropped_connection_without_gap_or_duplicate(self):
        xs = list(range(60))
        it = self.pool.imap(sdk_funcs.slow_square, xs, chunksize=1)
        got = [next(it) for _ in range(5)]
        it._drop_connection()
        got += [next(it) for _ in range(20)]
        it._drop_connection()
        got += list(it)
        self.assertEqual(got, [x * x for x in xs])
        self.assertGreaterEqual(it.reconnects, 2)

        it = self.pool.imap_unordered(sdk_funcs.slow_square, xs, chunksize=1)
        got = [next(it) for _ in range(7)]
        it._drop_connection()
        got += list(it)
        self.assertEqual(sorted(got), [x * x for x in xs])
        self.assertGreaterEqual(it.reconnects, 1)

    # ---- lifecycle ----

    def test_close_join_and_terminate(self):
        pool = poold.Pool(url=self.server.url)
        result = pool.map_async(sdk_funcs.square, range(10))
        with self.assertRaises(ValueError):
            pool.join()  # still running
        pool.close()
        with self.assertRaises(ValueError):
            pool.map(sdk_funcs.square, [1])
        pool.join()
        self.assertEqual(result.get(0), [x * x for x in range(10)])

        pool = poold.Pool(url=self.server.url)
        slow = pool.map_async(sdk_funcs.slow_square, range(400), chunksize=1)
        pool.terminate()
        pool.join()
        self.assertEqual(pool.job(slow.job_id)["status"], "cancelled")
        with self.assertRaises(poold.PooldError):
            slow.get(60)

    def test_context_manager_terminates(self):
        with poold.Pool(url=self.server.url) as pool:
            self.assertEqual(pool.map(sdk_funcs.square, range(3)), [0, 1, 4])
            pending = pool.map_async(sdk_funcs.slow_square, range(400), chunksize=1)
        self.assertEqual(pool.job(pending.job_id)["status"], "cancelled")
        with self.assertRaises(ValueError):
            pool.map(sdk_funcs.square, [1])


if __name__ == "__main__":
    unittest.main()
