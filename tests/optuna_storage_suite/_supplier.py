"""Optuna's StorageSupplier, rebuilt to hand out h2s-search's storages (see README.md in this folder).

Modes: sqlite, postgresql, pgbouncer, each plain (`ReconnectingRDBStorage`, which Optuna wraps in its own
`_CachedStorage` inside a Study) or cached_* (`FleetCachedStorage` around it, what our workers use).
H2S_SUITE_PLAIN=1 builds Optuna's own RDBStorage / _CachedStorage instead, to compare failures with.
PostgreSQL modes get a fresh database per test on $H2S_TEST_PG (direct) or $H2S_TEST_PGBOUNCER (through
pgbouncer in transaction mode, as `.ci/run` starts it) and skip when the server is not reachable.
"""

from __future__ import annotations

import functools
import os
import uuid
from contextlib import AbstractContextManager
from typing import Any

import pytest
from optuna.storages import RDBStorage, _CachedStorage
from optuna.testing.tempfile_pool import NamedTemporaryFilePool

from search.storage import FleetCachedStorage, ReconnectingRDBStorage, cache_seconds, engine_kwargs, parse_url

PG_ADMIN = os.environ.get("H2S_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PGBOUNCER = os.environ.get("H2S_TEST_PGBOUNCER", "postgresql://postgres@127.0.0.1:6432/postgres")
PLAIN = os.environ.get("H2S_SUITE_PLAIN") == "1"
SQLITE3_TIMEOUT = 300


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@functools.cache
def reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=3, prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


# Plain strings: Optuna's tests also feed these to itertools.product, where pytest.param would leak through.
STORAGE_MODES = [f"{c}{b}" for b in ("sqlite", "postgresql", "pgbouncer") for c in ("", "cached_")]
STORAGE_MODES_HEARTBEAT = STORAGE_MODES


def build(url: str, cached: bool, **kwargs: Any):
    """The storage under test for `url`: ours (as open_storage builds it), or Optuna's with H2S_SUITE_PLAIN=1."""
    u = parse_url(url)
    if PLAIN:
        connect = {"timeout": SQLITE3_TIMEOUT} if u.backend == "sqlite" else {"prepare_threshold": None}
        rdb = RDBStorage(u.sqlalchemy, engine_kwargs={"connect_args": connect}, **kwargs)
        return _CachedStorage(rdb) if cached else rdb
    rdb = ReconnectingRDBStorage(u.sqlalchemy, engine_kwargs=engine_kwargs(u), **kwargs)
    return FleetCachedStorage(rdb, cache_seconds()) if cached else rdb


class StorageSupplier(AbstractContextManager):
    def __init__(self, storage_specifier: str, **kwargs: Any) -> None:
        self.mode = storage_specifier
        self.extra_args = kwargs
        self.tempfile = None
        self.database: str | None = None
        self.storage = None
        if storage_specifier not in STORAGE_MODES:  # Optuna's own modes (inmemory, journal, grpc...)
            pytest.skip(f"mode {storage_specifier} is Optuna's, not h2s-search's")

    def __enter__(self):
        backend = self.mode.removeprefix("cached_")
        if backend == "sqlite":
            self.tempfile = NamedTemporaryFilePool().tempfile()
            url = f"sqlite:///{self.tempfile.name}"
        elif backend in ("postgresql", "pgbouncer"):
            self.database = f"h2s_suite_{uuid.uuid4().hex[:12]}"
            _admin(f'CREATE DATABASE "{self.database}"')
            base = PG_ADMIN if backend == "postgresql" else PGBOUNCER
            if not reachable(base):
                pytest.skip(f"{backend} not reachable at {base}")
            url = base.rsplit("/", 1)[0] + "/" + self.database
        else:
            raise AssertionError(f"unknown storage mode {self.mode}")
        self.storage = build(url, self.mode.startswith("cached_"), **self.extra_args)
        return self.storage

    def __exit__(self, *exc: Any) -> None:
        rdb = getattr(self.storage, "_backend", self.storage)
        if isinstance(rdb, RDBStorage):
            rdb.engine.dispose()
        if self.tempfile:
            self.tempfile.close()
        if self.database:
            _admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
