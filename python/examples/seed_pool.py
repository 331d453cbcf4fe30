"""The seed notes' Pool example: a pool of 3 processes, close/join, and the pool as a context
manager. It runs with multiprocessing as it is, and on poold's workers with the import lines
changed to `import poold as multiprocessing` and `from poold import Pool` (see README.md)."""

# 导入进程模块
import multiprocessing
from multiprocessing import Pool


def square(x):
    return x * x


if __name__ == "__main__":
    # 最多允许3个进程同时运行
    pool = multiprocessing.Pool(processes = 3)
    print(pool.map(square, range(10)))
    pool.close()
    pool.join()

    num_workers = 2
    # 进程池作为上下文管理器
    with Pool(num_workers) as p:
        print(p.map(square, range(5)))
