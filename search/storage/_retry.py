"""The reconnect retry: a storage method that waits out a lost database connection.

A lost connection (a database restart, a failover, a dropped TCP link) is retried instead of killing the
worker or, worse, its heartbeat thread: Optuna's HeartbeatThread dies silently on an exception, and the
live trial would then be failed as stale.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._url import is_disconnect, mask_password, reconnect_seconds

_log = logging.getLogger("h2s_search.storage")


class RetryDepth(threading.local):
    """How deep this thread is in one storage's reconnecting calls (they call one another): only the
    outermost retries, so that an outage is waited out once, not once per level. One per storage."""

    n = 0


def reconnecting(fn: Callable | None = None, *, settled: Callable[..., bool] | None = None):
    """Decorate a storage method so that a lost database connection is retried for RECONNECT_SECONDS
    ($H2S_RECONNECT_SECONDS), on PostgreSQL and MySQL (SQLite has no connection to lose, and "database is
    locked" must surface).

    The storage provides `url` and `retry_depth` (a RetryDepth). `settled(storage, exc, *args, **kwargs)`
    says, after a retry failed with `exc`, that the first attempt did commit and only its answer was lost;
    the call then returns True. The decorated function carries `reconnects = True` (tests and benchmarks
    find the retried methods by it).

        @reconnecting
        def get_trial(self, trial_id): ...
    """
    if fn is None:
        return functools.partial(reconnecting, settled=settled)

    @functools.wraps(fn)
    def call(self, *args: Any, **kwargs: Any):
        depth = self.retry_depth
        if depth.n or self.url.startswith("sqlite"):
            return fn(self, *args, **kwargs)
        deadline, delay, retried = None, 0.2, False
        while True:
            depth.n = 1
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                depth.n = 0
                if retried and settled is not None and settled(self, exc, *args, **kwargs):
                    return True
                if not is_disconnect(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + reconnect_seconds()
                    _warn_lost(exc, deadline - now)
                if now >= deadline:
                    raise
                time.sleep(delay)
                delay, retried = min(delay * 2, 1.0), True
            finally:
                depth.n = 0

    call.reconnects = True
    return call


def _warn_lost(exc: BaseException, seconds: float) -> None:
    reason = mask_password(str(getattr(exc, "orig", None) or exc.__cause__ or exc))
    _log.warning("database connection lost (%s); retrying for up to %.0fs",
                 reason.splitlines()[0][:200] if reason else type(exc).__name__, seconds)


def reconnecting_methods(cls: type) -> list[str]:
    """The names of `cls`'s methods that retry a lost connection (decorated with `reconnecting`)."""
    return sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "reconnects", False))
