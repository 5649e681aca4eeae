"""Storage URL -> Optuna RDBStorage, with the settings a fleet needs, and password masking.

One factory (`open_storage`) and one place (`storage_errors`) that turns database errors into our
own `StorageError`, in the manner of optuna.storages.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import UserError

DEFAULT_URL = "sqlite:///h2s-search.db"
ENV = "H2S_STORAGE"
HEARTBEAT_INTERVAL = 10   # seconds between a running trial's heartbeats
GRACE_PERIOD = 40         # a trial silent this long is stale: failed, then retried
MAX_RETRY = 3
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
    kw = {}
    if heartbeat:
        # A killed worker's trial goes stale; the callback re-queues it, and the retry resumes from
        # the dead trial's last checkpoint (see search.worker).
        kw = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD,
              "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)}
    with storage_errors(u):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = RDBStorage(u.sqlalchemy, engine_kwargs=engine_kwargs(u), **kw)
        if u.backend == "sqlite":
            _serialise_sqlite(storage.engine)
        return storage


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
def creation_lock(url: str | None, name: str) -> Iterator[None]:
    """A lock across processes and machines, held while a study is created and its anchor enqueued.

    PostgreSQL: an advisory lock; MySQL: GET_LOCK; SQLite: an flock on a file beside the database.
    Concurrent create_study and concurrent table creation both race without it.
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
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha1(f"h2s-search:{name}".encode()).digest()[:8], "big", signed=True)
    with storage_errors(u):
        engine = sqlalchemy.create_engine(u.sqlalchemy, poolclass=NullPool,
                                          connect_args=engine_kwargs(u).get("connect_args", {}))
        conn = engine.connect()
    try:
        with storage_errors(u):
            if u.backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 300)"), {"k": f"h2s:{key}"}).scalar()
                if got != 1:
                    raise StorageError(f"timed out waiting for the study lock on {u.masked}")
            conn.commit()
        yield
    finally:
        try:
            if u.backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            else:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"h2s:{key}"})
            conn.commit()
        except Exception:
            pass
        conn.close()
        engine.dispose()
