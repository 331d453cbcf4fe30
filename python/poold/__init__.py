"""poold's Python SDK: a drop-in ``multiprocessing.Pool`` over HTTP, and a worker.

- ``poold.Pool(processes=None, *, url=None, token=None, codec="json")``: ``map``, ``imap``,
  ``imap_unordered``, ``starmap``, ``apply`` and their ``*_async`` forms, run by a poold
  service (:mod:`poold.client`).
- ``poold.Process(target=f, args=(x,))``: ``multiprocessing.Process``'s shape for one call
  (:mod:`poold.process`).
- ``python -m poold.worker mymodule time builtins:int``: serve those functions to poold
  (:mod:`poold.worker`).

Standard library only.
"""

from ._jobs import AsyncResult, IMapIterator
from .client import Pool
from .errors import PooldError, RemoteError, RemoteTraceback
from .process import Process

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "Pool",
    "PooldError",
    "Process",
    "RemoteError",
    "RemoteTraceback",
]
__version__ = "0.2.0"
