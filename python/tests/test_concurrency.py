"""``Pool(processes=N)``: at most N chunks of each of the pool's jobs run at once on poold
(the job field ``max_concurrency``), read from ``GET /v1/pool`` while the job runs."""

import collections
import time
import unittest

import poold
import sdk_funcs
from poold_server import PooldServer

WORKERS = 3


class ProcessesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = PooldServer("sdk_funcs", workers=WORKERS)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def most_busy_at_once(self, pool, items=36):
        """Run sleep_square over `items` one-item chunks; the most workers seen on the job."""
        result = pool.map_async(sdk_funcs.sleep_square, range(items), chunksize=1)
        most, samples = 0, 0
        while not result.ready():
            workers = self.server.get("/v1/pool")["workers"]
            most = max(most, sum(1 for w in workers if w["job_id"] == result.job_id))
            samples += 1
            time.sleep(0.005)
        self.assertEqual(result.get(0), [x * x for x in range(items)])
        self.assertGreater(samples, 10)
        return most, pool.job(result.job_id)

    def test_processes_caps_the_chunks_running_at_once(self):
        for processes in (1, 2):
            with self.subTest(processes=processes):
                with poold.Pool(processes, url=self.server.url) as pool:
                    most, job = self.most_busy_at_once(pool)
                self.assertEqual(job["max_concurrency"], processes)
                self.assertEqual(most, processes)

    def test_without_processes_every_worker_runs_the_job(self):
        with poold.Pool(url=self.server.url) as pool:
            most, job = self.most_busy_at_once(pool)
        self.assertIsNone(job["max_concurrency"])
        self.assertEqual(most, WORKERS)

    def test_a_capped_job_leaves_the_other_workers_to_other_jobs(self):
        with poold.Pool(1, url=self.server.url) as capped, poold.Pool(url=self.server.url) as free:
            slow = capped.map_async(sdk_funcs.sleep_square, range(30), chunksize=1)
            fast = free.map_async(sdk_funcs.sleep_square, range(8), chunksize=1)
            together = 0
            while not fast.ready():
                on = collections.Counter(w["job_id"] for w in self.server.get("/v1/pool")["workers"])
                self.assertLessEqual(on[slow.job_id], 1)
                together += on[slow.job_id] == 1 and on[fast.job_id] >= 1
                time.sleep(0.005)
            self.assertGreater(together, 0, "the two jobs never ran side by side")
            self.assertEqual(fast.get(0), [x * x for x in range(8)])
            self.assertEqual(slow.get(60), [x * x for x in range(30)])

if __name__ == "__main__":
    unittest.main()
