"""Legal values of a setting, stated once and applied by both the code that uses it and TrainConfig.

Plain Python (no numpy, no torch): `features` (numpy only) and `config` both import it. Every rule
is an interval or a set of choices, so a numeric range is legal exactly when both of its ends are.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


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
