"""Progress of a pack as plain lines: clips done, clips per second and the time left.

`pack_split(progress=...)` takes any `(done, total)` callable; the command line draws a rich bar on a
terminal and uses `LineProgress` otherwise, and `load_split` (packing on first use inside `train`,
`start`, ...) reports with `LineProgress` on stderr once packing has run for a few seconds. The first
call may start above 0: a resumed pack counts the clips packed before.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """"45 s", "12 min 5 s", "3 h 20 min"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Rate:
    """Clips per second and the time left, from the clips done since the first call (so the clips of
    an earlier, interrupted pack do not inflate the rate)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start: tuple[float, int] | None = None

    def update(self, done: int, total: int) -> tuple[float | None, float | None]:
        """(clips per second, seconds left); None where not yet known."""
        now = self.clock()
        if self.start is None:
            self.start = (now, done)
        t0, d0 = self.start
        if now <= t0 or done <= d0:
            return None, None
        rate = (done - d0) / (now - t0)
        return rate, (total - done) / rate


class LineProgress:
    """`(done, total)` -> one line every `every` seconds on `stream`, the first once packing has run
    `after` seconds (0: at once), and a last line at the end when any line was printed."""

    def __init__(self, label: str, stream: TextIO | None = None, *, every: float = 5.0, after: float = 5.0,
                 clock=time.monotonic):  # fmt: skip
        self.label, self.stream, self.every, self.clock = label, stream, every, clock
        self.rate = Rate(clock)
        self.began = clock()
        self.next_line = self.began + after
        self.printed = False

    def __call__(self, done: int, total: int) -> None:
        rate, left = self.rate.update(done, total)
        now = self.clock()
        finished = done >= total
        if (finished and not self.printed) or (not finished and now < self.next_line):
            return  # a pack that finishes before its first line is due says nothing
        resumed = self.rate.start[1] if self.rate.start else 0
        self.next_line = now + self.every
        self.printed = True
        line = f"packing {self.label}: {done:,} of {total:,} clips ({100 * done / max(total, 1):.0f} %)"
        if resumed:
            line += f", {resumed:,} from an interrupted pack"
        if rate is not None:
            line += f", {rate:,.0f} clips/s" + (f", {duration(left)} left" if done < total else "")
        print(line, file=self.stream or sys.stderr, flush=True)
