"""The worker's answers to tasks, without poold: which items go in the short form (``values``)
and which as outcome entries, and that no item runs twice when the loop changes form."""

import io
import json
import sys
import unittest

from poold import worker


CALLS = []


def f(x):
    CALLS.append(x)
    if x == 3:
        print("three")
    if x == 5:
        raise ValueError("five")
    if x == 7:
        return {1, 2}  # JSON cannot hold a set
    return x * 2


class _Served:
    table = {"f": f}


class WorkerAnswers(unittest.TestCase):
    def run_task(self, items, **fields):
        capture = worker._LogCapture()
        saved, sys.stdout = sys.stdout, capture
        try:
            line = worker.Worker(_Served(), False, capture).run(
                {"type": "task", "id": 1, "function": "f", "items": items, **fields}
            )
        finally:
            sys.stdout = saved
        self.assertTrue(line.endswith(b"\n"))
        return json.loads(line)

    def setUp(self):
        CALLS.clear()

    def test_all_clean_items_are_sent_as_values(self):
        self.assertEqual(self.run_task([0, 1, 2]), {"type": "result", "id": 1, "values": [0, 2, 4]})
        self.assertEqual(CALLS, [0, 1, 2])

    def test_an_item_that_raises_or_prints_turns_the_answer_into_outcomes_each_run_once(self):
        message = self.run_task(list(range(7)))
        self.assertNotIn("values", message)
        results = message["results"]
        self.assertEqual(CALLS, list(range(7)))
        self.assertEqual([r.get("value") for r in results], [0, 2, 4, 6, 8, None, 12])
        self.assertEqual(results[3]["log"], "three\n")
        self.assertEqual(results[5]["error"]["type"], "ValueError")
        self.assertIn("five", results[5]["error"]["traceback"])
        self.assertNotIn("log", results[4])

    def test_the_first_item_raising_and_the_next_printing(self):
        results = self.run_task([5, 3])["results"]
        self.assertEqual(CALLS, [5, 3])
        self.assertEqual(results[0]["error"]["message"], "five")
        self.assertEqual(results[1], {"value": 6, "log": "three\n"})

    def test_a_value_json_cannot_hold_fails_alone(self):
        results = self.run_task([6, 7])["results"]
        self.assertEqual(results[0], {"value": 12})
        self.assertEqual(results[1]["error"]["type"], "TypeError")

    def test_kwargs_and_star_take_the_outcome_form(self):
        results = self.run_task([[1]], star=True)["results"]
        self.assertEqual(results, [{"value": 2}])


if __name__ == "__main__":
    unittest.main()
