"""Name → method class. Methods register themselves with ``@register("name")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


#: display order of method families (``Method.family``); unknown families sort last
FAMILIES = ("baseline", "fp8-own", "fp8-optim", "torchao", "te", "zero", "dp")


def method_names() -> list[str]:
    _load_all()

    def key(item):
        fam = getattr(item[1], "family", "")
        return FAMILIES.index(fam) if fam in FAMILIES else len(FAMILIES)

    return [name for name, _ in sorted(_REGISTRY.items(), key=key)]


def get_method(name: str, **options) -> Method:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[name]
    try:
        return cls(**options)
    except TypeError as e:
        valid = ", ".join(f.name for f in _fields(cls)) or "(none)"
        raise ValueError(f"bad options for method {name!r}: {e}; valid options: {valid}") from None


def _fields(cls):
    import dataclasses

    return dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else []


def _load_all() -> None:
    # Importing the package imports every method module, which registers them.
    import methods  # noqa: F401
