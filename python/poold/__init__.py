"""poold's Python SDK: a drop-in ``multiprocessing.Pool`` over HTTP, and a worker.

- ``poold.Pool(processes=None, *, url=None, token=None, codec="json")``: ``map``, ``imap``,
  ``imap_unordered``, ``starmap``, ``apply`` and their ``*_async`` forms, run by a poold
  service (:mod:`poold.client`).
- ``python -m poold.worker mymodule time builtins:int``: serve those functions to poold
  (:mod:`poold.worker`).

Standard library only.
"""

from ._jobs import AsyncResult, IMapIterator
from .client import Pool
from .errors import PooldError, RemoteError, RemoteTraceback

__all__ = ["AsyncResult", "IMapIterator", "Pool", "PooldError", "RemoteError", "RemoteTraceback"]
__version__ = "0.2.0"
