"""poold's Python SDK: a drop-in ``multiprocessing.Pool`` over HTTP, and a worker.

- ``poold.Pool(url, token=None)``: ``map``, ``imap``, ``imap_unordered``, ``starmap``,
  ``apply`` and their ``*_async`` forms, run by a poold service (:mod:`poold.client`).
- ``python -m poold.worker mymodule``: serve a module's public functions to poold
  (:mod:`poold.worker`).

Standard library only.
"""

from .client import AsyncResult, IMapIterator, Pool
from .errors import PooldError, RemoteError

__all__ = ["AsyncResult", "IMapIterator", "Pool", "PooldError", "RemoteError"]
__version__ = "0.1.0"
