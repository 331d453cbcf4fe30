"""What a call looks like on the wire: the function's name, and items, kwargs and values under
the job's codec. Used by :mod:`poold.client` and :mod:`poold._jobs`.

- A function object is named ``module:qualname`` (``time:sleep``, ``builtins:int``), the way
  the worker (:mod:`poold.worker`) lists what it serves; a function of the script being run
  (``__main__``) is named after that script's module, which the worker serves as
  ``python -m poold.worker script.py``. ``functools.partial`` objects are taken apart: their
  keywords become the job's ``kwargs``, their positional arguments go before each item.
- ``json``: items and values are JSON (tuples come back as lists).
- ``pickle``: each item is a JSON string holding a base64 pickle (with ``star``, of the tuple of
  positional arguments), each kwargs value too, and values come back the same way.
"""

import base64
import functools
import inspect
import json
import os
import pickle
import sys

CODECS = ("json", "pickle")

#: Pickle protocol of what the client sends (every Python 3.8+ reads it).
PICKLE_PROTOCOL = 5

#: One encoder for every item: ``json.dumps`` with options builds a new one per call.
_encode_json = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_NUMBERS = {int, float}


def _main_module_name():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name  # python -m pkg.mod
    path = getattr(main, "__file__", None)
    if path:
        return os.path.splitext(os.path.basename(path))[0]
    return None


def function_name(func):
    """The name a job gives ``func``: a string as it is; a callable as ``module:qualname``."""
    if isinstance(func, str):
        if not func:
            raise ValueError("the function name is empty")
        return func
    owner = getattr(func, "__self__", None)
    if owner is not None and not (inspect.ismodule(owner) or isinstance(owner, type)):
        raise TypeError(
            f"cannot send {func!r}: it is bound to an object, and poold workers call functions "
            "by name (module:qualname); pass a module-level function"
        )
    module = getattr(func, "__module__", None)
    if module is None and isinstance(owner, type):
        module = owner.__module__  # a method of a built-in class: dict.fromkeys
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"cannot name the remote function for {func!r}: pass 'module:qualname'")
    if "<" in qualname:
        raise TypeError(
            f"cannot send {qualname} of {module}: poold workers call functions by name "
            "(module:qualname), so define it at module level (as pickling would need too)"
        )
    if module == "__main__":
        module = _main_module_name()
        if module is None:
            raise TypeError(
                f"cannot name {qualname}: it is defined in an interactive session; put it in a "
                "module the workers serve"
            )
    return f"{module}:{qualname}"


def take_apart(func, kwargs=None):
    """``(func, prefix, kwargs)``: a ``functools.partial`` unwrapped into the function, the
    positional arguments that go before each item, and the keyword arguments."""
    kwargs = dict(kwargs or {})
    prefix = ()
    while isinstance(func, functools.partial):
        prefix = tuple(func.args) + prefix
        kwargs = {**func.keywords, **kwargs}
        func = func.func
    return func, prefix, kwargs


class Codec:
    """Encodes a job's items and kwargs and decodes its values, for one codec and one call
    shape (``star``, a partial's positional ``prefix``). ``item(x)`` is one item as one NDJSON
    line (bytes, no newline); it raises when the item cannot be sent (a value JSON cannot
    hold, say), which is then the input's error at that item."""

    def __init__(self, name, star, prefix):
        if name not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {name!r}")
        self.name = name
        self.pickled = name == "pickle"
        #: The job's `star`: a partial's positional arguments need the items spread too.
        self.star = star or bool(prefix)
        self.item = self._item_encoder(star, prefix)

    def _item_encoder(self, star, prefix):
        if star:
            def args_of(item):
                return prefix + tuple(item)
        elif prefix:
            def args_of(item):
                return prefix + (item,)
        else:
            args_of = None
        if self.pickled:
            dumps, b64 = pickle.dumps, base64.b64encode
            if args_of is None:
                return lambda item: b'"' + b64(dumps(item, PICKLE_PROTOCOL)) + b'"'
            return lambda item: b'"' + b64(dumps(args_of(item), PICKLE_PROTOCOL)) + b'"'
        if args_of is None:
            return lambda item: _encode_json(item).encode()
        return lambda item: _encode_json(list(args_of(item))).encode()

    def lines(self, items):
        """Many items as NDJSON lines at once (bytes, no final newline), or None when this
        fast path does not apply: plain numbers under the json codec (``range`` inputs), which
        one ``json`` call encodes with no comma inside an item."""
        if self.pickled or self.star or not set(map(type, items)) <= _NUMBERS:
            return None
        try:
            return _encode_json(list(items))[1:-1].replace(",", "\n").encode()
        except ValueError:  # NaN or infinity: the item-by-item path names it
            return None

    def kwargs(self, kwargs):
        if not self.pickled:
            return kwargs
        return {k: _pickle(v) for k, v in kwargs.items()}

    def value(self, value):
        """A result's value as the function returned it."""
        if self.pickled:
            return pickle.loads(base64.b64decode(value))
        return value


def _pickle(value):
    return base64.b64encode(pickle.dumps(value, PICKLE_PROTOCOL)).decode("ascii")
