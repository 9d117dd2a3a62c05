"""The one check of every number a user can type: flags, dotted overrides, TOML files.

A `Range` says what a setting accepts — an integer or any number, bounds (open or closed),
and, for limits that protect memory, why. `check(name, value, rule)` returns the value or
raises a `TinyGPTError` that names the setting, the value and what would be accepted:

    >>> check("train.batch_size", 0, Range(lo=1, integer=True))
    Traceback (most recent call last):
    ...
    tinygpt.core.errors.TinyGPTError: train.batch_size = 0 must be at least 1

Numbers are always finite here: `nan` and `inf` (which Python's float() and TOML both
accept) are refused, as is a bool where a number belongs. The config dataclasses declare a
`Range` per numeric field (`field(metadata=...)`, see `number`) and check them all in one
call (`check_fields`); command-line flags that are not settings use `arg(rule)` as their
argparse type. This module imports nothing heavy and knows nothing about what the numbers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tinygpt.core.errors import TinyGPTError

# Integers beyond this are refused everywhere: the largest a signed 64-bit integer (what
# torch and NumPy keep seeds, counts and sizes in) can hold.
INT_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """What a number may be: `integer`, within lo..hi (`lo_open`/`hi_open` exclude the
    bound), and `why` a limit is there (said in the error)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    why: str = ""
    hint: str = ""  # an example of a good value, said in the error

    def describe(self) -> str:
        """What is accepted, in words.

        >>> Range(lo=0, hi=1, hi_open=True).describe()
        'in [0, 1)'
        >>> Range(lo=1, hi=1024, integer=True).describe()
        'an integer from 1 to 1,024'
        """
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            if self.integer and not (self.lo_open or self.hi_open):
                return f"an integer from {_fmt(lo)} to {_fmt(hi)}"
            if self.lo_open and self.hi_open:
                return f"between {_fmt(lo)} and {_fmt(hi)} (exclusive)"
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{_fmt(lo)}, {_fmt(hi)}{right}"
        if lo is not None:
            if lo == 0 and self.lo_open:
                return "a positive number"
            if lo == 0 and not self.integer:
                return "not negative"
            return f"{'more than' if self.lo_open else 'at least'} {_fmt(lo)}"
        if hi is not None:
            return f"{'less than' if self.hi_open else 'at most'} {_fmt(hi)}"
        return "an integer" if self.integer else "a finite number"

    def allows(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))


COUNT = Range(lo=1, integer=True)  # how many of something: at least one
BATCH = Range(lo=1, hi=2**16, integer=True, why="one forward pass holds the whole batch")


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


def check(name: str, value: Any, rule: Range) -> Any:
    """`value` if it is a number `rule` accepts, else a TinyGPTError saying what is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if rule.integer else "a number"
        raise TinyGPTError(f"{name} = {value!r} must be {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TinyGPTError(f"{name} = {value} must be a finite number ({rule.describe()})")
    if rule.integer and not isinstance(value, int):
        raise TinyGPTError(f"{name} = {value!r} must be an integer ({rule.describe()})")
    if isinstance(value, int) and abs(value) > INT_LIMIT:
        raise TinyGPTError(f"{name} = {value} is too large ({rule.describe()})")
    if not rule.allows(value):
        hint = f", e.g. {rule.hint}" if rule.hint else ""
        raise TinyGPTError(f"{name} = {value!r} must {_violated(rule, value)}{hint}")
    return value


def _violated(rule: Range, value: float) -> str:
    """What `value` broke, as "be ..." words: the whole interval for fractions like [0, 1);
    for integers and sanity limits (a `why`), only the side it is on, so a batch size of 0
    reads "must be at least 1" rather than naming the largest batch size there is."""
    if rule.lo is not None and rule.hi is not None and not (rule.integer or rule.why):
        return "be " + rule.describe()
    below = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    if below:
        words = Range(lo=rule.lo, lo_open=rule.lo_open, integer=rule.integer).describe()
        return "not be negative" if words == "not negative" else "be " + words
    why = f" ({rule.why})" if rule.why else ""
    return "be " + Range(hi=rule.hi, hi_open=rule.hi_open).describe() + why


def parse(name: str, text: str, rule: Range) -> int | float:
    """A number typed as text (a flag's value), checked. Integers accept "1000" and "1e3"."""
    value = _number(text, rule.integer)
    if value is None:
        kind = "an integer" if rule.integer else "a number"
        raise TinyGPTError(f"{name} = {text!r} must be {kind}")
    return check(name, value, rule)


def _number(text: str, integer: bool) -> int | float | None:
    """`text` as an int (when `integer`; "1e3" counts) or a float; None if it is neither.
    Non-finite and fractional values come back as floats for `check` to refuse by name."""
    text = text.strip()
    try:
        return int(text) if integer else float(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if integer and math.isfinite(f) and f.is_integer() else f


def arg(rule: Range, name: str) -> Callable[[str], int | float]:
    """An argparse `type` for the flag `name` that checks with `rule`. A bad value raises a
    TinyGPTError, which argparse lets through, so the command line reports it like every
    other bad input: one line, exit status 2."""

    def convert(text: str) -> int | float:
        value = _number(text, rule.integer)
        if value is None:  # not a number at all: a usage error, reported by argparse
            raise argparse.ArgumentTypeError(
                f"invalid {'integer' if rule.integer else 'number'}: {text!r}"
            )
        return check(name, value, rule)

    convert.__name__ = "integer" if rule.integer else "number"
    return convert


def number(default: Any, **rule: Any) -> Any:
    """A dataclass field with a `Range` in its metadata: `batch_size: int = number(32, lo=1)`."""
    integer = rule.pop("integer", isinstance(default, int) and not isinstance(default, bool))
    return dataclasses.field(default=default, metadata={"range": Range(integer=integer, **rule)})


def check_fields(obj: Any, section: str) -> None:
    """Check every field of the dataclass `obj` that declares a `Range` (None is allowed for
    optional fields)."""
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("range")
        value = getattr(obj, f.name)
        if rule is not None and value is not None:
            check(f"{section}.{f.name}", value, rule)


def field_range(cls: type, name: str) -> Range:
    """The `Range` a dataclass declares for its field `name`."""
    for f in dataclasses.fields(cls):
        if f.name == name and "range" in f.metadata:
            return f.metadata["range"]
    raise KeyError(name)
