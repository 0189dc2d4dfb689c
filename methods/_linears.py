"""Which linears an FP8 engine converts: every ``nn.Linear`` whose qualified name matches none of the
``keep_high_precision`` patterns (fnmatch). The default keeps the output head in high precision, as
fp8bench's own FP8 methods do (their option has the same name and meaning); embeddings and norms are not
linears and are never converted.
"""

from __future__ import annotations

import fnmatch

from torch import nn

DEFAULT_KEEP: tuple[str, ...] = ("lm_head",)


def keeps_high_precision(fqn: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) for p in patterns)


def linears_to_convert(model: nn.Module, patterns) -> list[str]:
    """Qualified names of the plain ``nn.Linear`` modules to convert, in module order."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and not keeps_high_precision(n, patterns)]


def replace_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
