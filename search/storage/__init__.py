"""Storage URL -> Optuna storage, with the settings a fleet needs, and password masking.

In the manner of optuna.storages: the public names live here, the machinery in private modules.

* `open_storage(url)` is the one factory. It returns a `ReconnectingRDBStorage` (an RDBStorage whose
  calls wait out a lost database connection), or with `cache=True` that storage behind a
  `FleetCachedStorage` (reads that do not grow with the number of running trials).
* `creation_lock(url, name)` is the study lock (creating a study, a worker joining); it works through a
  transaction-pooling pgbouncer. Trials need no lock of ours: `limit_new_trials` makes Optuna's own
  trial creation refuse (`BudgetSpent`) a trial beyond the study's budget.
* `storage_errors` turns database errors into our own one-line `StorageError`.

Behind pgbouncer (port 6432, or `?h2s_pooler=pgbouncer` in the URL; `?h2s_pooler=none` says there is
none) each process keeps a pool of 1 connection plus 1 overflow. psycopg's automatic prepared statements,
which pgbouncer 1.18 cannot carry, are always off.
"""

from __future__ import annotations

import warnings

from ._lock import creation_lock
from ._url import (
    CACHE_SECONDS,
    DEFAULT_URL,
    ENV,
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    MAX_RETRY,
    POOLER_OPTION,
    POOLER_PORT,
    RECONNECT_SECONDS,
    SQLITE_BUSY_TIMEOUT,
    StorageError,
    StorageURL,
    cache_seconds,
    engine_kwargs,
    heartbeat_settings,
    is_disconnect,
    mask_password,
    parse_url,
    reconnect_seconds,
    resolve_url,
    storage_errors,
)

__all__ = [
    "CACHE_SECONDS", "DEFAULT_URL", "ENV", "GRACE_PERIOD", "HEARTBEAT_INTERVAL", "MAX_RETRY", "POOLER_OPTION",
    "POOLER_PORT", "RECONNECT_SECONDS", "RETRY_HISTORY", "SQLITE_BUSY_TIMEOUT", "BudgetSpent", "FleetCachedStorage",
    "ReconnectingRDBStorage", "StorageError", "StorageURL", "cache_seconds", "creation_lock", "engine_kwargs",
    "heartbeat_settings",
    "is_disconnect", "mask_password", "open_storage", "parse_url", "reconnect_seconds", "resolve_url",
    "set_user_attrs", "storage_errors",
]
# Importing optuna takes a second: the classes (and the private names benchmarks/storage.py times) load
# on first use, so that `h2s-search --help` and URL parsing stay quick.
_LAZY = {"ReconnectingRDBStorage": "_rdb", "BudgetSpent": "_rdb", "RETRY_HISTORY": "_rdb", "FleetCachedStorage": "_cache",
         "_RECONNECTING": "_rdb", "_reconnecting_class": "_rdb", "_serialise_sqlite": "_rdb"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_storage(url: str | None = None, *, heartbeat: bool = True, cache: bool = False,
                 ttl: float | None = None):
    """The one factory: URL (or $H2S_STORAGE, or the default SQLite file) -> storage.

    cache: wrap it in a FleetCachedStorage: reads see new trials, states and added rows at once, and
    re-read running trials in full at most every `ttl` seconds (default $H2S_CACHE_SECONDS, else
    CACHE_SECONDS; 0: every read is Optuna's full read).
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from ._cache import FleetCachedStorage
    from ._rdb import ReconnectingRDBStorage

    u = parse_url(resolve_url(url))
    ttl = cache_seconds() if ttl is None else ttl
    interval, grace = heartbeat_settings() if heartbeat else (None, None)
    with storage_errors(u):
        # Once, here, for every process that opens a study: errors only. A worker says in one line of its own
        # why a trial failed, where Optuna would log a warning with a traceback; commands print their own.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with warnings.catch_warnings():
            # The heartbeat and the retry callback are "experimental" in Optuna; we rely on them on purpose.
            # Silenced here only: the caller's own warning filters stay as they were.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kw = {}
            if heartbeat:
                # A killed worker's trial goes stale; the callback re-queues it, and the retry resumes from
                # the dead trial's last checkpoint (see search.worker).
                kw = {"heartbeat_interval": interval, "grace_period": grace,
                      "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)}
            # Opening checks the URL once, failing fast; afterwards PostgreSQL/MySQL calls ride out a restart.
            storage = ReconnectingRDBStorage(u.sqlalchemy, engine_kwargs=engine_kwargs(u), **kw)
    return FleetCachedStorage(storage, ttl) if cache else storage


def set_user_attrs(trial, attrs: dict) -> None:
    """trial.set_user_attr for each item, in one database transaction where the storage allows it.

    A trial records about twenty attributes when it starts and ends; on PostgreSQL/MySQL each would
    otherwise be its own transaction and commit. Other storages (FixedTrial, in-memory) set them one by one.
    """
    storage = getattr(trial, "storage", None)
    target = storage if hasattr(storage, "set_trial_user_attrs") else getattr(storage, "_backend", None)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if not attrs or not hasattr(target, "set_trial_user_attrs") or cached is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    target.set_trial_user_attrs(trial._trial_id, attrs)
    cached.user_attrs.update(attrs)  # what Trial.set_user_attr does after writing, so trial.user_attrs agrees
