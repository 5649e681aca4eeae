"""The study lock: one holder at a time across processes and machines, pooler-safe on PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator

from ._url import (
    StorageError,
    StorageURL,
    engine_kwargs,
    is_disconnect,
    parse_url,
    reconnect_seconds,
    resolve_url,
    storage_errors,
)

_log = logging.getLogger("h2s_search.storage")


@contextlib.contextmanager
def creation_lock(url: str | None, name: str, *, reconnect: bool = False) -> Iterator[None]:
    """A lock across processes and machines, held while a study is created and its anchor enqueued.

    PostgreSQL: a transaction-scoped advisory lock, held by keeping a transaction open on a connection of
    its own; unlike a session lock it works through a transaction-pooling pgbouncer, whose next
    transaction may run on another server connection. It is polled (`pg_try_advisory_xact_lock`), never
    waited for in the server, pooler or not: see `_poll` (and `wait_in_server`, kept for the benchmark's
    comparison only). The holder thus keeps one server connection and does its work (Optuna's storage,
    which commits) on another: behind a pooler with one server connection that work waits until the pooler
    gives up, and that is said in one line naming the floor of 2 (3 in an empty database: Optuna's first
    setup of its tables holds two connections at once). MySQL: GET_LOCK; SQLite: an flock on a file
    beside the database. Concurrent create_study and concurrent table creation both race without it. With
    `reconnect`, taking the lock waits out a lost database connection (a running worker), instead of
    failing at once (a command).
    """
    u = parse_url(resolve_url(url))
    if u.backend == "sqlite":
        with _file_lock(u):
            yield
        return
    key = int.from_bytes(hashlib.sha1(f"h2s-search:{name}".encode()).digest()[:8], "big", signed=True)
    conn = _acquire(u, key, reconnect)
    try:
        yield
    except Exception as exc:
        if u.backend == "postgresql" and _pooler_starved(exc):
            raise StorageError(f"{_POOLER_FLOOR} ({u.masked} said: {POOLER_WAIT_TIMEOUT})") from None
        raise
    finally:
        _release(u, conn, key)


# What pgbouncer says to a client it kept waiting for a server connection past its query_wait_timeout.
POOLER_WAIT_TIMEOUT = "query_wait_timeout"
_POOLER_FLOOR = ("the study lock's holder got no second server connection from the connection pooler: the lock keeps "
                 "one (its open transaction is the lock) and the work done under it needs one more, so a "
                 "transaction-pooling pgbouncer needs at least 2 server connections for this database "
                 "(default_pool_size, max_db_connections; 3 for the first study in an empty database, while "
                 "Optuna sets up its tables), one more for each other study created or joined at the same moment")


def _pooler_starved(exc: BaseException) -> bool:
    """Whether the work done under the lock failed because a pooler kept it waiting for a server connection
    until it gave up: below the floor (see _POOLER_FLOOR) it never gets one, since the lock pins the only one."""
    seen = 0
    while exc is not None and seen < 4:
        if POOLER_WAIT_TIMEOUT in str(getattr(exc, "orig", None) or exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def _file_lock(u: StorageURL) -> Iterator[None]:
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


def _acquire(u: StorageURL, key: int, reconnect: bool):
    engine = _lock_engine(u)
    try:
        return _connect_and_take(u, engine, key, reconnect)
    except BaseException:
        engine.dispose()
        raise


def _connect_and_take(u: StorageURL, engine, key: int, reconnect: bool):
    deadline, delay, attempt = time.monotonic() + (reconnect_seconds() if reconnect else 0.0), 0.2, 0
    while True:
        conn, attempt = None, attempt + 1
        try:
            conn = engine.connect()
            _take(u, conn, key)
            return conn
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


def _take(u: StorageURL, conn, key: int) -> None:
    import sqlalchemy

    if u.backend != "postgresql":
        got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 300)"), {"k": f"h2s:{key}"}).scalar()
        conn.commit()
        if got != 1:
            raise StorageError(f"timed out waiting for the study lock on {u.masked}")
        return
    (wait_in_server if os.environ.get(LOCK_IN_SERVER_ENV) == "1" else _poll)(conn, key)


# Polling backoff: the first retry after about POLL_FIRST seconds, growing by half each time to POLL_MOST,
# each pause drawn from 0.5x to 1.5x so that waiters that started together spread out.
POLL_FIRST, POLL_MOST = 0.01, 0.25


def _poll(conn, key: int) -> None:
    """Take the advisory lock without ever waiting for it inside the server.

    A waiter blocked in pg_advisory_xact_lock would hold a server connection the whole time; behind a
    transaction-pooling pgbouncer with P server connections, P blocked waiters leave the lock's holder none
    for the work it holds the lock for, and the fleet deadlocks (issue 17). A pooler may sit on any port and
    the URL need not say so, so this is done whatever the URL says: try, and while the lock is taken, end
    the transaction (handing the server connection back) and try again shortly. Once taken, the
    transaction stays open: the lock is ours until it ends (`_release`).
    """
    import sqlalchemy

    statement, pause = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)"), POLL_FIRST
    while not conn.execute(statement, {"k": key}).scalar():
        conn.rollback()
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 1.5, POLL_MOST)


# Set to 1 in a process, its PostgreSQL study lock is waited for inside the server (`wait_in_server`), as
# before issue 17. For benchmarks/fleet.py's "-blocking" join variants only, which measure what polling
# replaced; behind a transaction pooler it deadlocks the fleet, so never set it for a real one.
LOCK_IN_SERVER_ENV = "H2S_BENCH_LOCK_IN_SERVER"


def wait_in_server(conn, key: int) -> None:
    """Take the advisory lock by waiting for it inside the server (`pg_advisory_xact_lock`), holding a
    server connection for the whole wait: the lock before issue 17, used only under LOCK_IN_SERVER_ENV."""
    import sqlalchemy

    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _release(u: StorageURL, conn, key: int) -> None:
    import sqlalchemy

    try:
        if u.backend == "postgresql":
            conn.rollback()  # ends the transaction, and with it the lock; nothing else was written on it
        else:
            conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"h2s:{key}"})
            conn.commit()
    except Exception:
        # The lock belongs to the session: closing the connection for good is what releases it now.
        with contextlib.suppress(Exception):
            conn.invalidate()
    with contextlib.suppress(Exception):
        conn.close()
    conn.engine.dispose()


def _lock_engine(u: StorageURL):
    """An engine of the lock's own, with no pool, for one taking of the lock: the lock is taken only to
    create a study and when a worker joins (trials take none), so its connection is closed on release
    instead of being held open, one idle server connection per worker, for the worker's whole life.
    Made per taking, so nothing outlives it (a forked child never shares its socket).
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(u.sqlalchemy, poolclass=NullPool,
                                    connect_args=engine_kwargs(u).get("connect_args", {}))
