"""Precision recipes, one module each, registered by name (see ``methods.base.Method``).

Importing this package imports every top-level module in it, which registers the methods they define;
a new recipe is a new file with an ``@register("name")`` class. ``python -m methods`` lists them and
whether each can run here.
"""

import importlib
import pkgutil

#: modules that define no method and are run with ``python -m`` (importing them here first would make
#: runpy warn); they are imported where used
_NOT_METHODS = {"memory", "memory_trace"}

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.ispkg and not _mod.name.startswith("_") and _mod.name not in _NOT_METHODS:
        importlib.import_module(f"{__name__}.{_mod.name}")

from methods.base import HParams, Method, RunContext, StepResult, Trainee  # noqa: E402
from methods.registry import get_method, method_names, register  # noqa: E402

__all__ = ["HParams", "Method", "RunContext", "StepResult", "Trainee", "get_method", "method_names", "register"]
