"""The seed notes' partial example: fix some arguments with functools.partial, map over the
rest. It runs with multiprocessing as it is, and on poold's workers with the import line
changed to `from poold import Pool` (see README.md). (The seed's own version calls
`pool.map(partial_func, c = cs)`, which multiprocessing refuses too; this one maps over cs.)"""

from multiprocessing import Pool
from functools import partial


# 需要重复执行的函数
def func(c, a, b):
    return a + b * c


if __name__ == "__main__":
    pool = Pool(4)

    # 作为每次执行的输入的参数迭代器
    cs = range(10)  # iterable[, chunksize]
    partial_func = partial(func, a = 1, b = 2)
    print(pool.map(partial_func, cs))
    pool.close()
    pool.join()
