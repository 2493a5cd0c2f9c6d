"""Rules for config values: each takes a value or raises :class:`Mismatch` saying what it expected.

The building blocks of the table in config_validation.py (and of checks of other modules): they accept exactly what
the Config getters accept (numeric strings of line-based configs, integral floats where ``config.int`` takes them,
``0``/``1`` for bools), so a rule never refuses a value its reader would use.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence


class Mismatch(Exception):
    """A value a rule does not take; `entry` is the path inside a dict value (e.g. ``["betas"]``)."""

    def __init__(self, expected: str, value: Any, entry: str = "", note: Optional[str] = None):
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.entry = entry
        self.note = note  # a complete explanation that replaces "must be <expected>, got <value>"

    def inside(self, entry: str) -> Mismatch:
        """The same mismatch, seen from the enclosing dict."""
        self.entry = entry + self.entry
        return self


Rule = Callable[[Any], None]  # raises Mismatch for a value it does not take


# ---- value parsing, as the Config getters do it ------------------------------------------------------------------


def parse_bool(value: Any) -> Optional[bool]:
    """The bool a config value stands for (also 0 / 1 and 'true' / 'false' strings); None where it stands for none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0", "none"):
            return False
    if value is None:
        return False
    return None


def as_int(value: Any, *, floats: bool = True, strings: bool = True) -> Optional[int]:
    """The int `value` stands for, as ``config.int`` reads it; None for anything else (bools included).

    `floats` / `strings`: whether the reader converts integral floats / numeric strings (``config.int`` does; a
    value inside a dict that goes to its user unconverted must be a real int).
    """
    if isinstance(value, bool):
        return None  # True is an int to Python, never to a config reader
    if isinstance(value, int):
        return value
    if floats and isinstance(value, float) and value.is_integer():
        return int(value)
    if strings and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def as_number(value: Any, *, strings: bool = True) -> Optional[float]:
    """The float `value` stands for, as ``config.float`` reads it; None for anything else (bools, NaN included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif strings and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


def _range_text(minimum: Optional[float], maximum: Optional[float], *, above: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" {'>' if above else '>='} {minimum:g}"
    if maximum is not None:
        return f" <= {maximum:g}"
    return ""


# ---- rules -------------------------------------------------------------------------------------------------------


def integer(
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    *,
    also: Sequence[int] = (),
    also_text: str = "",
    floats: bool = True,
    strings: bool = True,
) -> Rule:
    """An int in [minimum, maximum]; `also` lists special values outside the range (``max_seqs = -1``)."""
    expected = "an integer" + _range_text(minimum, maximum) + also_text

    def check(value: Any) -> None:
        number = as_int(value, floats=floats, strings=strings)
        if number is None:
            raise Mismatch(expected, value)
        if number in also:
            return
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise Mismatch(expected, value)

    check.expected = expected  # type: ignore[attr-defined]
    return check


def number(
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    above: Optional[float] = None,
    strings: bool = True,
) -> Rule:
    """A number >= minimum (or > above) and <= maximum."""
    if above is not None:
        expected = "a number" + _range_text(above, None, above=True)
    else:
        expected = "a number" + _range_text(minimum, maximum)

    def check(value: Any) -> None:
        parsed = as_number(value, strings=strings)
        if parsed is None:
            raise Mismatch(expected, value)
        if (minimum is not None and parsed < minimum) or (maximum is not None and parsed > maximum):
            raise Mismatch(expected, value)
        if above is not None and parsed <= above:
            raise Mismatch(expected, value)

    check.expected = expected  # type: ignore[attr-defined]
    return check


def boolean(*, strict: bool = False) -> Rule:
    """True / False (unless `strict`, also 0 / 1 and 'true' / 'false', as ``config.bool`` reads them)."""

    def check(value: Any) -> None:
        if (not isinstance(value, bool)) if strict else parse_bool(value) is None:
            raise Mismatch("True or False", value)

    check.expected = "True or False"  # type: ignore[attr-defined]
    return check


def one_of(*choices: str) -> Rule:
    """One of the given strings."""
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any) -> None:
        if not isinstance(value, str) or value not in choices:
            raise Mismatch(expected, value)

    check.expected = expected  # type: ignore[attr-defined]
    return check


def text() -> Rule:
    """A string."""

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise Mismatch("a string", value)

    check.expected = "a string"  # type: ignore[attr-defined]
    return check


def path() -> Rule:
    """A file name: a string or a path object."""

    def check(value: Any) -> None:
        if not isinstance(value, (str, os.PathLike)):
            raise Mismatch("a file name (string)", value)

    check.expected = "a file name (string)"  # type: ignore[attr-defined]
    return check


def function() -> Rule:
    """A function or class (anything callable)."""

    def check(value: Any) -> None:
        if not callable(value):
            raise Mismatch("a function", value)

    check.expected = "a function"  # type: ignore[attr-defined]
    return check


def any_of(*rules: Rule, expected: Optional[str] = None) -> Rule:
    """A value that one of the rules takes; a mismatch inside a dict rule is reported from there."""
    description = expected or " or ".join(getattr(r, "expected", "?") for r in rules)

    def check(value: Any) -> None:
        deepest: Optional[Mismatch] = None
        for rule in rules:
            try:
                rule(value)
                return
            except Mismatch as mismatch:
                if mismatch.entry and deepest is None:
                    deepest = mismatch  # the value has the right shape, one of its entries is wrong
        raise deepest or Mismatch(description, value)

    check.expected = description  # type: ignore[attr-defined]
    return check


def list_of(rule: Rule, *, what: str, non_empty: bool = False) -> Rule:
    """A list or tuple whose items the rule takes; `what` names the items (plural)."""
    expected = f"a {'non-empty ' if non_empty else ''}list of {what}"

    def check(value: Any) -> None:
        if not isinstance(value, (list, tuple)) or (non_empty and not value):
            raise Mismatch(expected, value)
        for i, item in enumerate(value):
            try:
                rule(item)
            except Mismatch as mismatch:
                raise mismatch.inside(f"[{i}]") from None

    check.expected = expected  # type: ignore[attr-defined]
    return check


def dict_of(value_rule: Rule, *, key_rule: Optional[Rule] = None, non_empty: bool = False, what: str = "") -> Rule:
    """A dict whose values (and keys) the rules take."""
    expected = f"a {'non-empty ' if non_empty else ''}dict {what or '{key: ' + describe(value_rule) + '}'}"

    def check(value: Any) -> None:
        if not isinstance(value, dict) or (non_empty and not value):
            raise Mismatch(expected, value)
        for key, item in value.items():
            if key_rule is not None:
                try:
                    key_rule(key)
                except Mismatch as mismatch:
                    note = f"has the key {key!r} ({type(key).__name__}), which must be {mismatch.expected}"
                    raise Mismatch(expected, value, note=note) from None
            try:
                value_rule(item)
            except Mismatch as mismatch:
                raise mismatch.inside(f"[{key!r}]") from None

    check.expected = expected  # type: ignore[attr-defined]
    return check


def options(entries: Dict[str, Rule], *, required: Iterable[str] = (), closed: bool = True, what: str = "") -> Rule:
    """A dict of named options: each entry present is checked; `closed` refuses names not listed."""
    required = tuple(required)
    expected = what or f"a dict with entries {', '.join(entries)}"

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise Mismatch(expected, value)
        for name in required:
            if name not in value:
                raise Mismatch(expected, value, note=f"needs the entry {name!r}, got {value!r}")
        unknown = sorted(str(k) for k in value if k not in entries) if closed else []
        if unknown:
            raise Mismatch(
                expected, value, note=f"has unknown entries {unknown}; valid: {', '.join(entries)}; got {value!r}"
            )
        for name, item in value.items():
            rule = entries.get(name)
            if rule is None or item is None:
                continue
            try:
                rule(item)
            except Mismatch as mismatch:
                raise mismatch.inside(f"[{name!r}]") from None

    check.expected = expected  # type: ignore[attr-defined]
    return check


def describe(rule: Rule) -> str:
    """What the rule expects, for messages of the rules built from it."""
    return getattr(rule, "expected", "values")


def per_data_key(rule: Rule, per_key: Optional[Rule] = None) -> Rule:
    """``batch_size`` / ``min_seq_length``: one value for every data key, or a dict {data key: value}."""
    per_key = per_key or rule
    return any_of(
        rule,
        dict_of(per_key, key_rule=text(), non_empty=True, what="{data key: " + describe(per_key) + "}"),
        expected=f"{describe(rule)}, or a dict {{data key: {describe(rule)}}}",
    )
