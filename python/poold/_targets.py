"""What a worker serves (for :mod:`poold.worker`): the modules and ``module:qualname``
callables its command line lists, under the names a client sends, and their docs.

A module serves its public functions — names not starting with ``_``, defined in that module
(or in its C accelerator ``_module``: ``operator.add`` lives in ``_operator``), not imported
into it. Each callable is listed as ``module:qualname`` and answers to aliases too: the bare
name of a function of the *first* module listed, and where it really lives when that differs
from how it was listed (``os.path:join`` is ``posixpath:join``), which is how
:class:`poold.Pool` names a function object. Nothing else can be called.
"""

import importlib
import importlib.util
import inspect
import os
import sys


def load_module(name):
    """Import ``name``: a module name (``pkg.mod``) or the path of a ``.py`` file."""
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(name)
        module_name = os.path.splitext(os.path.basename(path))[0]
        if module_name in sys.modules:
            return sys.modules[module_name]
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def public_functions(module):
    """The functions ``module`` defines whose names do not start with ``_``, by name. A C
    accelerator's functions count as the module's own (``operator.add`` lives in
    ``_operator``)."""
    own = (module.__name__, "_" + module.__name__.rpartition(".")[2])
    functions = {}
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) not in own:
            continue  # imported into the module, not defined there
        functions[name] = obj
    return functions


def identity(obj):
    """``module:qualname`` of a callable, as :class:`poold.Pool` names a function object;
    None when it has none."""
    module = getattr(obj, "__module__", None)
    owner = getattr(obj, "__self__", None)
    if module is None and isinstance(owner, type):
        module = owner.__module__  # a method of a built-in class: dict.fromkeys
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}:{qualname}"


def resolve(spec, first=None):
    """The callable named by ``mod:qualname`` (the module by name or ``.py`` path), or by a bare
    name of ``first``, the first module served."""
    if ":" in spec:
        module_name, _, qualname = spec.rpartition(":")
        owner = load_module(module_name)
    elif first is not None:
        owner, qualname = first, spec
    else:
        raise ValueError(f"{spec!r} is not module:qualname")
    obj = owner
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def describe(name, function):
    """``name(signature): docstring``, the doc poold shows for a function."""
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):
        signature = "(...)"
    doc = inspect.getdoc(function)
    return f"{name}{signature}: {doc}" if doc else f"{name}{signature}"


class Served:
    """What a worker serves: ``listing`` is name -> (callable, aliases) in the order of the
    command line; ``table`` maps every name and alias to its callable."""

    def __init__(self, targets):
        self.listing = {}
        self.first_module = None
        for target in targets:
            if ":" in target:
                self._add(target, resolve(target), [])
                continue
            module = load_module(target)
            first = self.first_module is None
            if first:
                self.first_module = module
            for name, function in public_functions(module).items():
                self._add(f"{module.__name__}:{name}", function, [name] if first else [])
        self.table = {}
        for name, (function, aliases) in self.listing.items():
            for key in [name, *aliases]:
                self.table.setdefault(key, function)

    def _add(self, name, function, aliases):
        real = identity(function)
        if real is not None and real != name:
            aliases = [*aliases, real]
        if name not in self.listing:
            self.listing[name] = (function, aliases)

    def hello_functions(self):
        out = []
        for name, (function, aliases) in self.listing.items():
            entry = {"name": name, "doc": describe(name.rpartition(":")[2], function)}
            if aliases:
                entry["aliases"] = aliases
            out.append(entry)
        return out
