"""Rules for a method's options (the fields of its frozen dataclass), checked when the method is made.

Options arrive from YAML (``method_options``, a variant's ``options``) and from ``--method-option k=v``,
so they can hold anything YAML can spell. Each method class declares ``option_rules``: field name → rule;
subclasses add to or replace their bases' rules (merged along the MRO). ``check(method)`` checks every
field's type from its annotation, then its rule, and raises ``ValueError`` with one line naming the
option, the bad value and the valid values — before any data or model work, instead of a failure deep
inside a build. A numeric option without a rule is refused by ``tests/test_validate.py``, so a new
method cannot forget its ranges.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (either end open-ended when None)."""

    lo: float | None = None
    hi: float | None = None

    def ok(self, v) -> bool:
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)

    def describe(self) -> str:
        if self.hi is None:
            return f">= {self.lo:g}"
        if self.lo is None:
            return f"<= {self.hi:g}"
        return f"{self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values."""

    values: tuple

    def ok(self, v) -> bool:
        return any(v == c and type(v) is type(c) for c in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(_spell(c) for c in self.values)


@dataclass(frozen=True)
class Accepted:
    """A value a predicate accepts, for open-ended sets too large to list (any ExMy format name);
    ``description`` says what is valid, e.g. the pattern and an example."""

    test: Callable[[object], bool]
    description: str

    def ok(self, v) -> bool:
        return bool(self.test(v))

    def describe(self) -> str:
        return self.description


def _spell(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


#: annotation (as written, ``from __future__ import annotations``) → (test, what it is)
TYPES = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v),
        "a list of strings",
    ),
    "bool | str": (lambda v: isinstance(v, (bool, str)), "true, false or a string"),
}


def type_name(annotation) -> str:
    """A field's annotation as written (a string under postponed evaluation, else the type's name)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def rules_of(cls) -> dict:
    """The option rules of a method class: its bases' first, each class's own over them."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("option_rules", {}))
    return out


def check(method) -> None:
    """Every option of ``method`` has its field's type and meets its rule; else ValueError, one line."""
    rules = rules_of(type(method))
    name = getattr(type(method), "name", "") or type(method).__name__
    for f in dataclasses.fields(method):
        v = getattr(method, f.name)
        typed = TYPES.get(type_name(f.type))
        rule = rules.get(f.name)
        if typed is not None and not typed[0](v):
            valid = (
                (f"{typed[1]} {rule.describe()}" if isinstance(rule, Range) else rule.describe()) if rule else typed[1]
            )
            raise ValueError(f"method {name}: option {f.name} = {v!r} is not {typed[1]}; valid: {valid}")
        if rule is not None and not rule.ok(v):
            valid = f"{typed[1]} {rule.describe()}" if typed and isinstance(rule, Range) else rule.describe()
            raise ValueError(f"method {name}: option {f.name} = {v!r}; valid: {valid}")
