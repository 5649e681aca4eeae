"""Storage URLs: parsing, our own URL option, password masking, engine settings, error translation."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from ..errors import UserError

DEFAULT_URL = "sqlite:///h2s-search.db"
ENV = "H2S_STORAGE"
HEARTBEAT_INTERVAL = 10   # seconds between a running trial's heartbeats ($H2S_HEARTBEAT_INTERVAL)
GRACE_PERIOD = 40         # a trial silent this long is stale: failed, then retried ($H2S_GRACE_PERIOD)
MAX_RETRY = 3
RECONNECT_SECONDS = 300   # how long a storage call keeps retrying while the database is unreachable
SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock instead of failing
CACHE_SECONDS = 900.0     # a worker re-reads running trials in full at most this often ($H2S_CACHE_SECONDS)
POOLER_PORT = 6432        # pgbouncer's customary port: taken as "behind a pooler" unless the URL says otherwise
POOLER_OPTION = "h2s_pooler"  # ?h2s_pooler=pgbouncer|none in the URL; stripped before SQLAlchemy sees it

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
    given: str           # as the user wrote it
    sqlalchemy: str      # with an explicit driver, and without our own option
    pooler: bool = False  # PostgreSQL behind a transaction-pooling pgbouncer

    @property
    def backend(self) -> str:
        return self.sqlalchemy.split(":", 1)[0].split("+", 1)[0]

    @property
    def masked(self) -> str:
        return mask_password(self.given)

    @property
    def sqlite_file(self) -> Path | None:
        """The database file of a SQLite URL; None for another backend or an in-memory database."""
        if self.backend != "sqlite" or ":///" not in self.sqlalchemy:
            return None
        path = self.sqlalchemy.split(":///", 1)[1].split("?", 1)[0]
        if not path or path.startswith(":memory:") or "mode=memory" in self.sqlalchemy:
            return None
        return Path(path)

    @property
    def missing_file(self) -> bool:
        """A SQLite file that does not exist: opening it would create an empty database."""
        return self.sqlite_file is not None and not self.sqlite_file.is_file()


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
    rest, pooler = _pooler_option(rest, url)
    if pooler is None:
        pooler = base == "postgresql" and _port(rest) == POOLER_PORT
    if pooler and base != "postgresql":
        raise StorageError(f"{POOLER_OPTION}=pgbouncer needs a postgresql:// URL, not {mask_password(url)}")
    return StorageURL(url, f"{scheme}://{rest}", pooler)


def _pooler_option(rest: str, url: str) -> tuple[str, bool | None]:
    """Take ?h2s_pooler=pgbouncer|none out of the URL: (URL without it, True/False, or None if absent)."""
    path, q, query = rest.partition("?")
    if not q:
        return rest, None
    pairs = parse_qsl(query, keep_blank_values=True)
    ours = [v for k, v in pairs if k == POOLER_OPTION]
    if not ours:
        return rest, None
    value = ours[-1].strip().lower()
    if value not in ("pgbouncer", "none"):
        raise StorageError(f"{POOLER_OPTION}={ours[-1]!r} in {mask_password(url)}: use pgbouncer or none")
    others = [(k, v) for k, v in pairs if k != POOLER_OPTION]
    return (f"{path}?{urlencode(others)}" if others else path), value == "pgbouncer"


def _port(rest: str) -> int | None:
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    m = re.search(r":(\d+)$", host)
    return int(m.group(1)) if m else None


def is_disconnect(exc: BaseException) -> bool:
    """A connection-level database error (worth retrying), possibly wrapped in Optuna's StorageInternalError."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or _driver_disconnect(exc):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


_DRIVERS_RAISING = ("psycopg", "psycopg2", "pymysql", "MySQLdb")


def _driver_disconnect(exc: BaseException) -> bool:
    """A driver's own (PEP 249) OperationalError or InterfaceError. SQLAlchemy wraps these, except when a
    connection it invalidated after a failed pre-ping cannot be replaced: then the driver's error comes
    through as it is (seen with a database that refuses new connections for a moment)."""
    return any(c.__name__ in ("OperationalError", "InterfaceError") and c.__module__.split(".")[0] in _DRIVERS_RAISING
               for c in type(exc).__mro__)


def engine_kwargs(u: StorageURL) -> dict:
    if u.backend == "sqlite":
        # A busy timeout lets a few local processes share the file instead of "database is locked".
        # isolation_level=None hands transaction control to SQLAlchemy, so the BEGIN IMMEDIATE listener
        # (see _rdb.py) governs every transaction.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}
    # Small, bounded pool per process; pre-ping survives a database restart; recycle beats idle timeouts.
    # Behind a pooler the pooler shares server connections among workers: one connection (and one spare
    # for the heartbeat thread) per process is all a worker needs.
    size = 1 if u.pooler else 2
    kw = {"pool_pre_ping": True, "pool_size": size, "max_overflow": size, "pool_recycle": 300, "pool_timeout": 60}
    kw["connect_args"] = {"connect_timeout": 10}
    if u.backend == "postgresql":
        # psycopg 3 prepares a statement after 5 uses, on one server connection; a transaction-pooling
        # pgbouncer (1.18) hands the next transaction another one, where "_pg3_0" exists or is missing.
        # Off everywhere, so that a pooler we did not detect still works.
        kw["connect_args"]["prepare_threshold"] = None
    return kw


@contextlib.contextmanager
def storage_errors(u: StorageURL) -> Iterator[None]:
    """Database and driver errors, and Optuna's refusal of the database's tables, become one masked line."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"bad storage URL {u.masked}: {mask_password(str(exc))}") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"no database driver for {u.masked}; pip install 'h2s-search[postgres]' or "
                           "'h2s-search[mysql]'") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise StorageError(f"cannot reach the database at {u.masked}: {_reason(exc)}") from None
    except ImportError:
        raise StorageError(f"no database driver for {u.masked}; pip install "
                           "'h2s-search[postgres]' or 'h2s-search[mysql]'") from None
    except Exception as exc:
        said = _database_said(u, exc)
        if said is None:
            raise
        raise said from None


def _database_said(u: StorageURL, exc: BaseException) -> StorageError | None:
    """What the database, its driver or Optuna's check of its tables said, as one line; None for an error of
    another kind (a bug of ours is left alone).

    Optuna wraps what the database said inside its own sessions in StorageInternalError (a failed commit);
    outside them (creating the tables, alembic's version table) SQLAlchemy's DBAPIError comes through as it
    is, and a driver's own error where SQLAlchemy let it through unwrapped. Optuna's schema check refuses
    tables set up by another Optuna with a bare RuntimeError, recognised by the adapter.
    """
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    from ._optuna import incompatible_schema

    cause = exc.__cause__ or exc if isinstance(exc, StorageInternalError) else exc
    if _driver_disconnect(exc) or (isinstance(exc, (StorageInternalError, sqlalchemy.exc.DBAPIError))
                                   and is_disconnect(exc)) or isinstance(exc, sqlalchemy.exc.TimeoutError):
        return StorageError(f"cannot reach the database at {u.masked}: {_reason(cause)}")
    if isinstance(exc, (StorageInternalError, sqlalchemy.exc.DBAPIError)):
        return StorageError(f"the database at {u.masked} refused a storage call: {_reason(cause)}")
    if incompatible_schema(exc):
        return StorageError(f"cannot use the Optuna tables at {u.masked}: {_reason(exc)}")
    return None


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (masked), else the error's type."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return mask_password(text.splitlines()[0] if text else type(exc).__name__)


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


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise StorageError(f"${env} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise StorageError(f"${env} must be >= 0, got {raw!r}")
    return value


def reconnect_seconds() -> float:
    return _seconds("H2S_RECONNECT_SECONDS", RECONNECT_SECONDS)


def cache_seconds() -> float:
    """How often a worker's cache re-reads running trials in full ($H2S_CACHE_SECONDS; 0: on every read)."""
    return _seconds("H2S_CACHE_SECONDS", CACHE_SECONDS)
