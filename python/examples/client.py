"""The seed notes' multiprocessing examples, with poold's workers instead of local processes.

Start poold with the example workers (from this directory):

    poold serve --worker-command "python3 -m poold.worker mathfuncs"

then run:  python3 client.py [URL]   (default http://127.0.0.1:8080; needs the `poold` package:
`pip install ./python`, or PYTHONPATH=python). tqdm is used when it is installed.
"""

import sys
from functools import partial

import poold

try:
    from tqdm import tqdm
except ImportError:  # no progress bar, same loop

    def tqdm(iterable, **kwargs):
        return iterable


# Imported only to name them: they run on poold's workers, which serve the same module.
from mathfuncs import cube, func, print_cube, print_square, square


def main(url):
    pool = poold.Pool(url)

    # Process(target=print_square, args=(10,)).start() ... join(): one call, then wait for it.
    p1 = pool.apply_async(print_square, (10,))
    p2 = pool.apply_async(print_cube, (10,))
    p1.wait()
    p2.wait()
    # What the functions printed is kept per item (here: item 0 of each call).
    print(p1.logs[0] + p2.logs[0] + "Done!")

    # map blocks until every result is in, in order.
    print(pool.map(square, range(10)))

    # partial fixes some arguments: they travel as the job's kwargs.
    cs = range(5)
    partial_func = partial(func, a=1, b=2)
    print(pool.map(partial_func, cs))

    # imap yields results in order as they arrive; len() is known, so tqdm shows a true bar.
    parameters = range(100)
    results = pool.imap(cube, parameters, chunksize=10)
    total = 0
    for result in tqdm(results):
        total += result
    print("sum of cubes:", total)

    pool.close()
    pool.join()

    # The pool as a context manager: leaving the block terminates it.
    with poold.Pool(url) as p:
        print(sorted(p.imap_unordered(square, range(8))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")
