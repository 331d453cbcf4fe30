"""Streaming input: poold.Pool uploads an iterable while it is consumed, an iterator never more
than a window ahead of the results taken (a list or range whole at once); an input that raises
at item k yields the results of items 0..k-1 and then its exception, and the job fails on the
server with that reason."""

import itertools
import time
import unittest

import poold
import sdk_funcs
from poold_server import PooldServer

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None


def broken(good, error):
    """The items 0..good-1, then `error` raised."""
    yield from range(good)
    raise error


class StreamingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = PooldServer("sdk_funcs", workers=2)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.pool = poold.Pool(url=self.server.url)

    def tearDown(self):
        self.pool.terminate()

    def test_an_endless_generator_is_consumed_lazily_within_the_window(self):
        seen = {"taken": 0, "ahead": 0}

        def naturals():
            for x in itertools.count():
                seen["ahead"] = max(seen["ahead"], x - seen["taken"])
                yield x

        it = self.pool.imap(sdk_funcs.square, naturals(), chunksize=10)
        with self.assertRaises(TypeError):
            len(it)  # no length: tqdm shows a count without a total
        for i, value in enumerate(it):
            self.assertEqual(value, i * i)
            seen["taken"] = i + 1
            if seen["taken"] == 3 * it.window:
                break
        # The upload followed the results, never further ahead than the window (and did run
        # ahead of them: how far depends on how fast results come back, so on the machine's
        # load; a full window was seen, and 91% of one under a busy test run).
        self.assertGreaterEqual(seen["ahead"], it.window // 2)
        self.assertLessEqual(seen["ahead"], it.window + 1)
        job = self.pool.job(it.job_id)
        self.assertIsNone(job["total"])  # still uploading
        self.assertLessEqual(job["done"], 3 * it.window + it.window)
        self.pool.terminate()  # stops the upload and cancels the job
        self.assertEqual(self.pool.job(it.job_id)["status"], "cancelled")

    def test_a_list_or_range_is_uploaded_whole_without_waiting_for_results(self):
        for items in (range(30_000), list(range(30_000))):
            it = self.pool.imap(sdk_funcs.square, items, chunksize=100)
            self.assertEqual(it.window, len(items))  # more than an iterator's window
            # No result is taken, yet every item goes up and runs.
            job = self.server.get(f"/v1/jobs/{it.job_id}?wait=20")
            self.assertEqual(
                (job["status"], job["total"], job["done"]), ("completed", 30_000, 30_000)
            )
            self.assertEqual(list(it)[-1], 29_999**2)

    def test_an_input_that_raises_at_item_k_yields_items_before_it_then_raises(self):
        it = self.pool.imap(sdk_funcs.square, broken(5, KeyError("input broke")), chunksize=2)
        got = []
        with self.assertRaises(KeyError) as caught:
            for value in it:
                got.append(value)
        self.assertEqual(got, [0, 1, 4, 9, 16])
        self.assertEqual(caught.exception.args, ("input broke",))
        job = self.server.get(f"/v1/jobs/{it.job_id}")
        self.assertEqual((job["status"], job["done"], job["failed"]), ("failed", 5, 0))
        self.assertIn("item 5 of the input raised KeyError: 'input broke'", job["error"])
        results = self.server.get(f"/v1/jobs/{it.job_id}/results")["results"]
        self.assertEqual([r["value"] for r in results], got)

    def test_map_raises_the_inputs_error_and_unordered_yields_the_rest_first(self):
        with self.assertRaises(ZeroDivisionError):
            self.pool.map(sdk_funcs.square, broken(0, ZeroDivisionError("at once")))
        with self.assertRaises(TypeError):  # None is no tuple of arguments
            self.pool.starmap(sdk_funcs.add, (None if i == 3 else (i, i) for i in range(5)))
        it = self.pool.imap_unordered(sdk_funcs.slow_square, broken(7, OSError("gone")), chunksize=1)
        got = []
        with self.assertRaises(OSError):
            for value in it:
                got.append(value)
        self.assertEqual(sorted(got), [x * x for x in range(7)])

    def test_results_come_while_the_generator_waits_for_them(self):
        got = []

        def waits_for_its_results():
            for x in range(3):
                yield x
            # A generator fed by the results it caused (a crawler, say): it goes on only
            # once results 0..2 are in, so they must run while it waits.
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            yield from range(3, 6)

        for value in self.pool.imap(sdk_funcs.square, waits_for_its_results(), chunksize=1):
            got.append(value)
        self.assertEqual(got, [x * x for x in range(6)])

    def test_len_and_tqdm_see_the_total_of_a_sized_input(self):
        it = self.pool.imap(sdk_funcs.square, range(37))
        self.assertEqual(len(it), 37)
        if tqdm is not None:
            bar = tqdm(it, disable=True)
            self.assertEqual(bar.total, 37)
            self.assertEqual(list(bar), [x * x for x in range(37)])
        else:
            self.assertEqual(list(it), [x * x for x in range(37)])
        self.assertEqual(len(self.pool.imap_unordered(sdk_funcs.square, [1, 2, 3, 4, 5])), 5)
        self.assertEqual(len(self.pool.imap(sdk_funcs.square, {})), 0)
        self.assertEqual(list(self.pool.imap(sdk_funcs.square, [])), [])

    def test_a_big_input_streams_in_order_and_can_be_read_again(self):
        n = 30000
        squares = [x * x for x in range(n)]
        self.assertEqual(self.pool.map(sdk_funcs.square, (x for x in range(n))), squares)
        it = self.pool.imap(sdk_funcs.square, range(n), chunksize=500)
        self.assertEqual(list(it), squares)
        self.assertEqual(list(self.pool.results(it.job_id)), squares)
        self.assertEqual(sorted(self.pool.results(it.job_id, ordered=False)), squares)

if __name__ == "__main__":
    unittest.main()
