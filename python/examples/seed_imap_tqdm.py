"""The seed notes' imap + tqdm example: results in order as they come, with a progress bar.
It runs with multiprocessing as it is, and on poold's workers with the import line changed to
`from poold import Pool` (see README.md). tqdm is used when it is installed."""

from multiprocessing import Pool

try:
    from tqdm import tqdm
except ImportError:  # no progress bar, same loop
    def tqdm(iterable):
        return iterable


# 需要重复执行的函数
def func(*args, **kargs):
    return sum(args)


if __name__ == "__main__":
    pool = Pool(4)

    # 作为每次执行的输入的参数迭代器
    parameters = range(20)  # iterable[, chunksize]

    results = pool.imap(func, parameters)

    for result in tqdm(results):
        print(result)

    pool.close()
    pool.join()
