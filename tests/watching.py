"""A test's background watcher: polls something in a daemon thread while a fleet or an array runs."""

from __future__ import annotations

import contextlib
import threading


class Poller:
    """Calls `poll()` every `every` s in a daemon thread, inside `session()`, from entering the with block
    until leaving it; `polls` counts the calls."""

    def __init__(self, every: float):
        self.every, self.polls = every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def session(self):
        """What the polls share for the whole watch (a connection); nothing by default."""
        return contextlib.nullcontext()

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self):
        with self.session():
            while not self._stop.is_set():
                self.poll()
                self.polls += 1
                self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
