"""Legal values of settings, and the one mechanism every config uses to apply them.

Plain Python (no numpy, no torch): `features` (numpy only) and every config module import it.

* `Rule`: an interval or a set of choices, so a numeric range is legal exactly when both of its ends are.
  The code that uses a setting applies the same rule (`features.AUGMENT_RULES`), so a config it accepts
  never fails there.
* `Settings`: the base of the frozen config dataclasses (TrainConfig, PretrainConfig, ModelConfig). Each
  field is declared with `setting(default, rule)`, the rule next to the field; rules across fields go in
  `check()`. It offers the one type check (`check_value`), the one `--set key=value` parser
  (`with_sets`) and `replace`/`from_dict`, and every error is a `ConfigError` that reads
  "<where>: <key> must be ..., got ...".
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

ALLOWED_HEADS = (1, 2, 4, 8, 16)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key (and where it came from)."""


@dataclass(frozen=True)
class Rule:
    """low/high bound the value (None: unbounded); *_open excludes the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    text: bool = False  # any string (a path); the type check has already refused non-strings

    def admits(self, value) -> bool:
        return self.problem(value) is None

    def problem(self, value) -> str | None:
        """None when the value is legal, else `must be <rule>, got <value>`."""
        if self.text:
            return None if isinstance(value, str) else f"must be text, got {value!r}"
        if self.choices:
            return None if value in self.choices else f"must be one of {self.choices}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return f"must be a finite number {self.describe()}, got {value!r}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value}" if too_low or too_high else None

    def describe(self) -> str:
        if self.text:
            return "any text"
        if self.choices:
            return f"one of {self.choices}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any finite number"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


AT_LEAST_ONE = Rule(low=1)
NON_NEGATIVE = Rule(low=0)
POSITIVE = Rule(low=0, low_open=True)
UNIT = Rule(low=0, high=1, high_open=True)  # [0, 1): a probability or a relative amount below 100 %
ANY_TEXT = Rule(text=True)
FLAG = Rule(choices=(False, True))


# Rules across fields. Their errors read like a field's ("<key> must be ..., got <value>", naming the other
# field's value), and `Settings.replace`/`from_dict` prefix them with where the values came from, as they do
# a field's.
def check_heads(d_model: int, heads: int, key: str = "nhead") -> None:
    """d_model must split evenly over the attention heads; `key` is the field that holds `heads`."""
    if d_model < 1 or heads < 1 or d_model % heads:
        legal = [h for h in ALLOWED_HEADS if d_model > 0 and d_model % h == 0]
        hint = f"legal {key} for d_model={d_model}: {legal}" if legal else f"no allowed head count {ALLOWED_HEADS} divides it"
        raise ConfigError(f"{key} must divide d_model={d_model} ({hint}), got {heads}")


def check_lr(lr: float, lr_min: float) -> None:
    """A schedule from lr down to lr_min (each field's own rule keeps lr > 0 and lr_min >= 0)."""
    if lr_min > lr:
        raise ConfigError(f"lr_min must be <= lr={lr}, got {lr_min}")


def check_order(low_key: str, low, high_key: str, high) -> None:
    """A range given by two fields: `high_key` may not be below `low_key`."""
    if high < low:
        raise ConfigError(f"{high_key} must be >= {low_key}={low}, got {high}")


def setting(default: Any = dataclasses.MISSING, rule: Rule = Rule()) -> Any:
    """A config field with its legal values beside it: `dropout: float = setting(0.3, UNIT)`."""
    return dataclasses.field(default=default, metadata={"rule": rule})


class Settings:
    """The base of a frozen config dataclass whose fields are declared with `setting`.

    Construction checks every field's rule, then `check()` (rules across fields). Values from files and
    the command line go through `check_value` (type, then rule) so an error names where they came from.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = f.metadata["rule"].problem(getattr(self, f.name))
            if problem:
                raise ConfigError(f"{f.name} {problem}")
        self.check()

    def check(self) -> None:
        """Rules across fields (d_model divisible by nhead, lr_min <= lr, ...); none by default."""

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        return {f.name: f.metadata["rule"] for f in fields(cls)}

    @classmethod
    def field_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}

    @classmethod
    def check_value(cls, key: str, value, where: str = "config"):
        """`value` checked for field `key` alone (type, then rule); returns it coerced (int -> float).

        Rules across fields are not checked here: a whole config checks them (`base.replace({key: value})`).
        """
        types_ = cls.field_types()
        if key not in types_:
            raise ConfigError(f"{where}: unknown {cls.__name__} key {key!r} (known: {', '.join(types_)})")
        value = coerce(key, value, types_[key], where)
        problem = cls.rules()[key].problem(value)
        if problem:
            raise ConfigError(f"{where}: {key} {problem}")
        return value

    @classmethod
    def from_dict(cls, values: dict, where: str = "config"):
        """A config from a mapping (a file's table, a checkpoint's dict); each value is checked."""
        checked = {key: cls.check_value(key, value, where) for key, value in values.items()}
        with _across_fields(where):
            return cls(**checked)

    def replace(self, values: dict, where: str = "config"):
        """A copy with `values` applied; each value is checked against the field's type and rule."""
        checked = {key: self.check_value(key, value, where) for key, value in values.items()}
        with _across_fields(where):
            return dataclasses.replace(self, **checked)

    def with_sets(self, assignments: list[str], where: str = "--set"):
        """Apply `key=value` strings from the command line."""
        types_ = self.field_types()
        values = {}
        for item in assignments:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"{where}: expected key=value, got {item!r}")
            if key not in types_:
                raise ConfigError(f"{where}: unknown {type(self).__name__} key {key!r} (known: {', '.join(types_)})")
            values[key] = parse_text(key, text.strip(), types_[key], where)
        return self.replace(values, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _across_fields(where: str):
    """A rule across fields broken while building a config from checked values: the same "<where>: " as a
    field's error."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _plain(typ):
    """`int | None` -> int: the type a value from a file must have."""
    if isinstance(typ, types.UnionType):
        return next(t for t in typing.get_args(typ) if t is not type(None))
    return typ


def coerce(key: str, value, typ: type, where: str):
    """Check a value from a file against the field type; ints are accepted for floats."""
    typ = _plain(typ)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {value!r}")
    return value


def parse_text(key: str, text: str, typ: type, where: str):
    """A `--set` value's text as the field's type."""
    typ = _plain(typ)
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return typ(text)
    except ValueError:
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {text!r}") from None
