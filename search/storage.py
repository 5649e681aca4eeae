"""Storage URL -> Optuna RDBStorage, with the settings a fleet needs, and password masking.

One factory (`open_storage`) and one place (`storage_errors`) that turns database errors into our
own `StorageError`, in the manner of optuna.storages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import UserError

DEFAULT_URL = "sqlite:///h2s-search.db"
ENV = "H2S_STORAGE"
HEARTBEAT_INTERVAL = 10   # seconds between a running trial's heartbeats ($H2S_HEARTBEAT_INTERVAL)
GRACE_PERIOD = 40         # a trial silent this long is stale: failed, then retried ($H2S_GRACE_PERIOD)
MAX_RETRY = 3
RECONNECT_SECONDS = 300   # how long a storage call keeps retrying while the database is unreachable
SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock instead of failing

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql",
            "mariadb": "mysql+pymysql"}
_KNOWN = ("sqlite", "postgresql", "mysql")
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)", re.I)


class StorageError(UserError):
    """A storage URL that cannot be used; the message has the password masked."""


def mask_password(text: str) -> str:
    """Replace the password in every URL inside `text` with ***."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def resolve_url(url: str | None) -> str:
    """--storage, then $H2S_STORAGE, then sqlite:///h2s-search.db in the current folder."""
    return url or os.environ.get(ENV) or DEFAULT_URL


@dataclass(frozen=True)
class StorageURL:
    given: str        # as the user wrote it
    sqlalchemy: str   # with an explicit driver

    @property
    def backend(self) -> str:
        return self.sqlalchemy.split(":", 1)[0].split("+", 1)[0]

    @property
    def masked(self) -> str:
        return mask_password(self.given)


def parse_url(url: str) -> StorageURL:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StorageError(f"storage URL {mask_password(url)!r} has no scheme; use sqlite:///FILE, "
                           "postgresql://USER@HOST/DB or mysql://USER@HOST/DB")
    base = scheme.split("+", 1)[0].lower()
    if base in _DRIVERS and "+" not in scheme:
        scheme = _DRIVERS[base]
    base = _DRIVERS.get(base, base).split("+", 1)[0]
    if base not in _KNOWN:
        raise StorageError(f"unknown storage scheme {scheme.split('+')[0]!r} in {mask_password(url)}; "
                           "use sqlite:///FILE, postgresql://... or mysql://...")
    return StorageURL(url, f"{scheme}://{rest}")


def engine_kwargs(u: StorageURL) -> dict:
    if u.backend == "sqlite":
        # A busy timeout lets a few local processes share the file instead of "database is locked".
        # isolation_level=None hands transaction control to SQLAlchemy, so `_serialise_sqlite` can
        # make every transaction BEGIN IMMEDIATE.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}
    # Small, bounded pool per process; pre-ping survives a database restart; recycle beats idle timeouts.
    kw = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 300, "pool_timeout": 60}
    if u.backend == "postgresql" or u.backend == "mysql":
        kw["connect_args"] = {"connect_timeout": 10}
    return kw


@contextlib.contextmanager
def storage_errors(u: StorageURL) -> Iterator[None]:
    """Database and driver errors become one masked line."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"bad storage URL {u.masked}: {mask_password(str(exc))}") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"no database driver for {u.masked}; pip install 'h2s-search[postgres]' or "
                           "'h2s-search[mysql]'") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
        raise StorageError(f"cannot reach the database at {u.masked}: {mask_password(reason)}") from None
    except ImportError:
        raise StorageError(f"no database driver for {u.masked}; pip install "
                           "'h2s-search[postgres]' or 'h2s-search[mysql]'") from None


def open_storage(url: str | None = None, *, heartbeat: bool = True):
    """The one factory: URL (or $H2S_STORAGE, or the default SQLite file) -> optuna RDBStorage."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    u = parse_url(resolve_url(url))
    # The heartbeat and the retry callback are "experimental" in Optuna; we rely on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kw = {}
    if heartbeat:
        # A killed worker's trial goes stale; the callback re-queues it, and the retry resumes from
        # the dead trial's last checkpoint (see search.worker).
        interval, grace = heartbeat_settings()
        kw = {"heartbeat_interval": interval, "grace_period": grace,
              "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)}
    with storage_errors(u):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Opening checks the URL once, failing fast; afterwards PostgreSQL/MySQL calls ride out a restart.
        cls = RDBStorage if u.backend == "sqlite" else _reconnecting_class()
        storage = cls(u.sqlalchemy, engine_kwargs=engine_kwargs(u), **kw)
        if u.backend == "sqlite":
            _serialise_sqlite(storage.engine)
        return storage


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: $H2S_HEARTBEAT_INTERVAL / $H2S_GRACE_PERIOD or the defaults.

    Every worker of a study should use the same values; tests shorten them to seconds.
    """
    values = []
    for env, default in (("H2S_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL), ("H2S_GRACE_PERIOD", GRACE_PERIOD)):
        raw = os.environ.get(env, "").strip()
        try:
            v = int(raw) if raw else default
        except ValueError:
            raise StorageError(f"${env} must be a whole number of seconds, got {raw!r}") from None
        if v < 1:
            raise StorageError(f"${env} must be >= 1, got {v}")
        values.append(v)
    interval, grace = values
    if grace <= interval:
        raise StorageError(f"the grace period ({grace}s) must be longer than the heartbeat interval ({interval}s)")
    return interval, grace


def reconnect_seconds() -> float:
    raw = os.environ.get("H2S_RECONNECT_SECONDS", "").strip()
    try:
        return float(raw) if raw else RECONNECT_SECONDS
    except ValueError:
        raise StorageError(f"$H2S_RECONNECT_SECONDS must be a number of seconds, got {raw!r}") from None


_log = logging.getLogger("h2s_search.storage")

# RDBStorage methods that talk to the database. Wrapped so that a lost connection (a database restart,
# a failover, a dropped TCP link) is retried instead of killing the worker or, worse, its heartbeat thread:
# HeartbeatThread dies silently on an exception, and the live trial would then be failed as stale.
_RECONNECTING = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    # the private ones Optuna's _CachedStorage calls on its backend
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
)
_depth = threading.local()  # only the outermost storage call retries (they call one another)


def is_disconnect(exc: BaseException) -> bool:
    """A connection-level database error (worth retrying), possibly wrapped in Optuna's StorageInternalError."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def _reconnecting(name: str, fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if getattr(_depth, "n", 0):
            return fn(self, *args, **kwargs)
        deadline, delay, retried = None, 0.2, False
        while True:
            _depth.n = 1
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                _depth.n = 0
                if retried and name == "set_trial_state_values" and _already_set(self, args, kwargs, exc):
                    return True  # our first attempt committed; only its answer was lost
                if not is_disconnect(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + reconnect_seconds()
                    _log.warning("database connection lost (%s); retrying for up to %.0fs",
                                 mask_password(str(getattr(exc, "orig", None) or exc.__cause__ or exc)).splitlines()[0][:200],
                                 deadline - now)
                if now >= deadline:
                    raise
                time.sleep(delay)
                delay, retried = min(delay * 2, 1.0), True
            finally:
                _depth.n = 0

    return call


def _already_set(storage, args, kwargs, exc) -> bool:
    import optuna

    if not isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return False
    trial_id = args[0] if args else kwargs["trial_id"]
    state = args[1] if len(args) > 1 else kwargs.get("state")
    return storage.get_trial(trial_id).state == state


@functools.cache
def _reconnecting_class():
    from optuna.storages import RDBStorage

    ns = {name: _reconnecting(name, getattr(RDBStorage, name)) for name in _RECONNECTING}
    if hasattr(RDBStorage, "_set_trial_attr_without_commit"):
        ns["set_trial_user_attrs"] = _reconnecting("set_trial_user_attrs", _set_trial_user_attrs)
    ns["__doc__"] = "RDBStorage whose calls wait out a lost database connection (see RECONNECT_SECONDS)."
    ns["__module__"] = __name__
    return type("ReconnectingRDBStorage", (RDBStorage,), ns)


def _set_trial_user_attrs(self, trial_id: int, attrs: dict) -> None:
    """Several user attributes in one transaction: one commit (one WAL flush) instead of one per key."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(self.scoped_session, True) as session:
        for key, value in attrs.items():
            self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def set_user_attrs(trial, attrs: dict) -> None:
    """trial.set_user_attr for each item, in one database transaction where the storage allows it.

    A trial records about twenty attributes when it starts and ends; on PostgreSQL/MySQL each would
    otherwise be its own transaction and commit. Other storages (SQLite, FixedTrial) set them one by one.
    """
    backend = getattr(getattr(trial, "storage", None), "_backend", None)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if not attrs or not hasattr(backend, "set_trial_user_attrs") or cached is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    backend.set_trial_user_attrs(trial._trial_id, attrs)
    cached.user_attrs.update(attrs)  # what Trial.set_user_attr does after writing, so trial.user_attrs agrees


def _serialise_sqlite(engine) -> None:
    """Take SQLite's write lock at the start of every transaction.

    SQLite has no row locks, so two processes could both read a WAITING trial and both start it (an
    enqueued anchor would run twice). BEGIN IMMEDIATE makes read-then-write atomic; the busy timeout
    makes the other processes wait their turn rather than fail with "database is locked".
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped


@contextlib.contextmanager
def creation_lock(url: str | None, name: str, *, reconnect: bool = False) -> Iterator[None]:
    """A lock across processes and machines, held while a study is created and its anchor enqueued.

    PostgreSQL: an advisory lock; MySQL: GET_LOCK; SQLite: an flock on a file beside the database.
    Concurrent create_study and concurrent table creation both race without it. With `reconnect`, taking
    the lock waits out a lost database connection (a running worker), instead of failing at once (a command).
    """
    import hashlib

    u = parse_url(resolve_url(url))
    if u.backend == "sqlite":
        path = u.sqlalchemy.split(":///", 1)[1] if ":///" in u.sqlalchemy else ""
        if not path or path == ":memory:":
            yield
            return
        import fcntl

        with open(f"{path}.h2s-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return

    import sqlalchemy

    key = int.from_bytes(hashlib.sha1(f"h2s-search:{name}".encode()).digest()[:8], "big", signed=True)
    engine = _lock_engine(u)
    deadline, delay, attempt = time.monotonic() + (reconnect_seconds() if reconnect else 0.0), 0.2, 0
    while True:
        conn, attempt = None, attempt + 1
        try:
            conn = engine.connect()
            if u.backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 300)"), {"k": f"h2s:{key}"}).scalar()
                if got != 1:
                    raise StorageError(f"timed out waiting for the study lock on {u.masked}")
            conn.commit()
            break
        except Exception as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            # A pooled connection may have died with a database restart: one more try is always allowed.
            if not (is_disconnect(exc) and (attempt == 1 or time.monotonic() < deadline)):
                with storage_errors(u):
                    raise
                raise
            _log.warning("database unreachable while taking the study lock; retrying")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        try:
            if u.backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            else:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"h2s:{key}"})
            conn.commit()
        except Exception:
            # The lock belongs to the session: closing the connection for good is what releases it now.
            with contextlib.suppress(Exception):
                conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()


_lock_engines: dict[tuple[int, str], object] = {}


def _lock_engine(u: StorageURL):
    """One small engine per process and database for the study lock.

    Its connection is kept between trials: a new PostgreSQL connection forks a server process, which is
    too dear to pay on every trial's admission. Keyed by pid, so a forked child never shares a socket.
    """
    import sqlalchemy

    key = (os.getpid(), u.sqlalchemy)
    engine = _lock_engines.get(key)
    if engine is None:
        engine = sqlalchemy.create_engine(u.sqlalchemy, pool_size=1, max_overflow=1, pool_recycle=300,
                                          connect_args=engine_kwargs(u).get("connect_args", {}))
        _lock_engines[key] = engine
    return engine
