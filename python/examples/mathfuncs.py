"""The worker module of the examples: the functions of the seed notes' multiprocessing
examples. poold's workers serve it (run from this directory, or put it on PYTHONPATH):

    poold serve --worker-command "python3 -m poold.worker mathfuncs"

Its prints do not go to a terminal: each item's output is stored as that item's log.
"""


def print_square(num):
    """Print and return num * num."""
    print("Square: {}".format(num * num))
    return num * num


def print_cube(num):
    """Print and return num * num * num."""
    print("Cube: {}".format(num * num * num))
    return num * num * num


def square(x):
    """x * x."""
    return x * x


def cube(x):
    """x * x * x."""
    return x * x * x


def func(c, a=0, b=0):
    """a + b * c: call it as partial(func, a=1, b=2) over the c's."""
    return a + b * c
