"""Storage URL -> Optuna storage, with the settings a fleet needs, and password masking.

In the manner of optuna.storages: the public names live here, the machinery in private modules.

* `open_storage(url)` is the one factory. It returns a `ReconnectingRDBStorage` (an RDBStorage whose
  calls wait out a lost database connection), or with `cache=True` that storage behind a
  `FleetCachedStorage` (reads that do not grow with the number of running trials); `FleetBackend` is
  the contract between the two, and `TrialBudget` what both offer the budget gate.
* `creation_lock(url, name)` is the study lock (creating a study, a worker joining); it never waits
  inside the database, so it works through any transaction-pooling pgbouncer, declared or not, that has
  2 server connections for the database (its holder keeps one and works on another;
  `$H2S_BENCH_LOCK_IN_SERVER=1`, `LOCK_IN_SERVER_ENV`, restores the old wait in the server for
  benchmarks/fleet.py's comparison only). Trials
  need no lock of ours: `limit_new_trials` makes Optuna's own trial creation refuse (`BudgetSpent`) a
  trial beyond the study's budget.
* `storage_errors` turns database errors into our own one-line `StorageError`.
* `_optuna.py` is the one module that reaches into Optuna's private internals; what the rest of the
  service needs of them is exported here: `HyperbandPruner`, `study_storage`, `study_id_of`,
  `trial_id_of`, `enqueued_params`, `finished_elsewhere`, `RETRY_HISTORY`, `TESTED_OPTUNA`.

Behind pgbouncer (port 6432, or `?h2s_pooler=pgbouncer` in the URL; `?h2s_pooler=none` says there is
none) each process keeps a pool of 1 connection plus 1 overflow. psycopg's automatic prepared statements,
which pgbouncer 1.18 cannot carry, are always off.
"""

from __future__ import annotations

import warnings

from ._lock import LOCK_IN_SERVER_ENV, creation_lock
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
    "CACHE_SECONDS", "DEFAULT_URL", "ENV", "GRACE_PERIOD", "HEARTBEAT_INTERVAL", "LOCK_IN_SERVER_ENV", "MAX_RETRY",
    "POOLER_OPTION",
    "POOLER_PORT", "RECONNECT_SECONDS", "RETRY_HISTORY", "SQLITE_BUSY_TIMEOUT", "TESTED_OPTUNA", "BudgetSpent",
    "FleetBackend", "FleetCachedStorage", "HyperbandPruner", "ReconnectingRDBStorage", "StorageError",
    "StorageURL", "TrialBudget", "cache_seconds", "creation_lock", "engine_kwargs", "enqueued_params",
    "finished_elsewhere", "heartbeat_settings", "is_disconnect", "mask_password", "open_storage", "parse_url",
    "reconnect_seconds", "reconnecting_methods", "resolve_url", "set_user_attrs", "storage_errors", "study_id_of",
    "study_storage", "trial_id_of",
]
# Importing optuna is slow next to the rest of a command's start: these load on first use, so that
# `h2s-search --help` and URL parsing stay quick.
_LAZY = {"ReconnectingRDBStorage": "_rdb", "BudgetSpent": "_rdb", "FleetCachedStorage": "_cache",
         "FleetBackend": "_contract", "TrialBudget": "_contract", "reconnecting_methods": "_retry",
         **{name: "_optuna" for name in ("RETRY_HISTORY", "TESTED_OPTUNA", "HyperbandPruner", "enqueued_params",
                                         "finished_elsewhere", "study_id_of", "study_storage", "trial_id_of")}}


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
    otherwise be its own transaction and commit. Other trials and storages (FixedTrial, in-memory) set
    them one by one.
    """
    import optuna

    from ._contract import UserAttrsWriter
    from ._optuna import backend_of, frozen_trial_of, trial_id_of

    target = None
    if isinstance(trial, optuna.Trial):
        # A FleetCachedStorage, or ours inside the cache Optuna puts around an RDBStorage it is given.
        target = next((s for s in (trial.storage, backend_of(trial.storage)) if isinstance(s, UserAttrsWriter)), None)
    if not attrs or target is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    target.set_trial_user_attrs(trial_id_of(trial), attrs)
    frozen_trial_of(trial).user_attrs.update(attrs)  # what Trial.set_user_attr does after writing
