"""search.storage: URL options and pooler detection, pickling, no process-wide side effects, the study lock
through pgbouncer, and the worker cache (same prune decisions as uncached storage, exact trial states)."""

from __future__ import annotations

import pickle
import sqlite3
import threading
import warnings

import optuna
import pytest
from optuna.trial import TrialState

import search.storage as storage_pkg
from search.storage import (
    FleetCachedStorage,
    ReconnectingRDBStorage,
    StorageError,
    creation_lock,
    engine_kwargs,
    open_storage,
    parse_url,
    study_id_of,
    trial_id_of,
)


# --------------------------------------------------------------------------- the package
def test_public_names_are_exported_and_importable():
    for name in storage_pkg.__all__:
        assert getattr(storage_pkg, name) is not None, name
    assert ReconnectingRDBStorage.__module__ == "search.storage._rdb"
    # Only public names are lazy: nothing here exists for the benchmarks alone.
    assert all(not name.startswith("_") for name in storage_pkg._LAZY)


def test_the_cache_refuses_a_backend_without_the_fleet_contract(tmp_path):
    from search.storage import FleetBackend

    plain = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(TypeError, match="FleetBackend"):
        FleetCachedStorage(plain)
    ours = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat=False)
    assert isinstance(ours, FleetBackend) and not isinstance(plain, FleetBackend)
    FleetCachedStorage(ours)
    for s in (plain, ours):
        s.engine.dispose()


# --------------------------------------------------------------------------- URLs and the pooler
@pytest.mark.parametrize("url, pooler, sqlalchemy", [
    ("postgresql://u@db:5432/h2s", False, "postgresql+psycopg://u@db:5432/h2s"),
    ("postgresql://u@db:6432/h2s", True, "postgresql+psycopg://u@db:6432/h2s"),
    ("postgresql://u@db:6432/h2s?h2s_pooler=none", False, "postgresql+psycopg://u@db:6432/h2s"),
    ("postgresql://u:pw@db/h2s?sslmode=require&h2s_pooler=pgbouncer", True,
     "postgresql+psycopg://u:pw@db/h2s?sslmode=require"),
    ("mysql://root@db:6432/h2s", False, "mysql+pymysql://root@db:6432/h2s"),
])
def test_the_pooler_is_detected_or_declared_and_our_option_never_reaches_sqlalchemy(url, pooler, sqlalchemy):
    u = parse_url(url)
    assert (u.pooler, u.sqlalchemy) == (pooler, sqlalchemy)
    kw = engine_kwargs(u)
    if u.backend == "postgresql":
        assert kw["connect_args"]["prepare_threshold"] is None  # pgbouncer 1.18 cannot carry them
    assert (kw["pool_size"], kw["max_overflow"]) == ((1, 1) if pooler else (2, 2))


@pytest.mark.parametrize("url", ["postgresql://u@db/h2s?h2s_pooler=yes", "mysql://u@db/h2s?h2s_pooler=pgbouncer"])
def test_a_bad_pooler_option_is_one_clear_error(url):
    with pytest.raises(StorageError, match="h2s_pooler"):
        parse_url(url)


# --------------------------------------------------------------------------- Optuna's contract
def test_opening_a_storage_leaves_the_warning_filters_alone(tmp_path):
    before = list(warnings.filters)
    s = open_storage(f"sqlite:///{tmp_path / 'w.db'}", cache=True)
    assert warnings.filters == before
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # the user's own experimental calls still warn
        optuna.storages.fail_stale_trials(optuna.create_study(storage=s))


def test_sqlite_storage_unpickles_with_wal_and_begin_immediate(tmp_path):
    path = tmp_path / "p.db"
    for cached in (False, True):
        s = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{path}", cache=cached)))
        rdb = s.backend if cached else s
        assert type(rdb) is ReconnectingRDBStorage and (type(s) is FleetCachedStorage) == cached
        with rdb.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            conn.exec_driver_sql("SELECT count(*) FROM studies").scalar()  # a read, inside our transaction
            # BEGIN IMMEDIATE: even a reading transaction holds the write lock; nobody else may write now
            other = sqlite3.connect(path, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO version_info (version_info_id, schema_version, library_version) "
                              "VALUES (99, 0, 'x')")
            other.close()
        rdb.engine.dispose()


def test_sqlite_transactions_stay_begin_immediate_after_a_one_statement_write(tmp_path):
    """Reports and a running trial's new attributes are autocommitted single statements; the connection
    they used must come back to BEGIN IMMEDIATE transactions (not the sqlite3 module's own)."""
    import sqlalchemy

    path = tmp_path / "a.db"
    s = open_storage(f"sqlite:///{path}", heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="a", storage=s)
    trial = study.ask()
    trial.report(1.0, 1)
    trial.set_user_attr("host", "a")
    sent: list[str] = []
    sqlalchemy.event.listen(s.backend.engine, "after_cursor_execute", lambda *a: sent.append(a[2]))
    trial.report(0.5, 2)
    assert len(sent) == 1 and sent[0].startswith("INSERT")
    with s.backend.engine.begin() as conn:
        assert conn.connection.dbapi_connection.isolation_level is None
        conn.exec_driver_sql("SELECT count(*) FROM studies").scalar()
        other = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("INSERT INTO version_info (version_info_id, schema_version, library_version) "
                          "VALUES (99, 0, 'x')")
        other.close()
    assert "BEGIN IMMEDIATE" in sent
    study.tell(trial, 0.5)
    fresh = open_storage(f"sqlite:///{path}", heartbeat=False).get_trial(trial_id_of(trial))
    assert fresh.intermediate_values == {1: 1.0, 2: 0.5} and fresh.user_attrs == {"host": "a"}
    s.backend.engine.dispose()


def test_postgresql_storages_pickle(pg_db):
    for cached in (False, True):
        s = open_storage(pg_db.url, cache=cached)
        study = optuna.create_study(storage=s, study_name=f"p{cached}")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        back = pickle.loads(pickle.dumps(s))
        assert type(back) is type(s)
        assert len(optuna.load_study(study_name=f"p{cached}", storage=back).trials) == 2
        for x in (s, back):
            getattr(x, "backend", x).engine.dispose()


# --------------------------------------------------------------------------- the study lock through pgbouncer
def test_the_study_lock_excludes_through_transaction_pooling(pgb_db):
    assert parse_url(pgb_db.url).pooler
    order: list[str] = []
    held, release = threading.Event(), threading.Event()

    def first():
        with creation_lock(pgb_db.url, "s"):
            order.append("first in")
            held.set()
            release.wait(30)
            order.append("first out")

    def second():
        held.wait(30)
        with creation_lock(pgb_db.url, "s"):
            order.append("second in")

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start()
    b.start()
    held.wait(30)
    b.join(1.0)  # let the second try while the first holds the lock
    assert b.is_alive() and order == ["first in"]
    release.set()
    a.join(30)
    b.join(30)
    assert order == ["first in", "first out", "second in"]


def _lock_waits_in_server(pg_db) -> list[str]:
    """While one thread holds the study lock, what a second taker's session shows in pg_stat_activity
    (wait event type, query) for the advisory lock; then both are let through."""
    held, release = threading.Event(), threading.Event()

    def first():
        with creation_lock(pg_db.url, "s"):
            held.set()
            release.wait(30)

    def second():
        held.wait(30)
        with creation_lock(pg_db.url, "s"):
            pass

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start()
    b.start()
    held.wait(30)
    b.join(1.0)
    seen = [f"{kind} {query}" for kind, query in pg_db.admin(
        "SELECT wait_event_type, query FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
        (pg_db.name, "%advisory_xact_lock%"))]
    release.set()
    a.join(30)
    b.join(30)
    assert not b.is_alive()
    return seen


def test_the_benchmarks_lock_waited_for_in_the_server_is_a_documented_switch(pg_db, monkeypatch):
    """benchmarks/fleet.py's "-blocking" joins set LOCK_IN_SERVER_ENV: the waiter then blocks inside the
    server, as before issue 17; by default it polls and holds no lock wait there."""
    from search.storage import LOCK_IN_SERVER_ENV

    assert not any(s.startswith("Lock ") for s in _lock_waits_in_server(pg_db))
    monkeypatch.setenv(LOCK_IN_SERVER_ENV, "1")
    assert any(s.startswith("Lock ") and "pg_advisory_xact_lock(" in s for s in _lock_waits_in_server(pg_db))


# --------------------------------------------------------------------------- the cache
def _replay(storage, pruner, study_name: str, n: int = 24, parallel: int = 6, steps: int = 9) -> list:
    """A recorded study, replayed: `parallel` trials at a time, each reporting a value per step and asking
    the pruner. Returns every decision (trial number, step, pruned)."""
    study = optuna.create_study(study_name=study_name, storage=storage, pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        study.enqueue_trial({"x": (i * 7 % n) / n})
    decisions, live, started = [], [], 0
    while started < n or live:
        while len(live) < parallel and started < n:
            t = study.ask()
            t.suggest_float("x", 0, 1)
            live.append([t, 0])
            started += 1
        for entry in list(live):
            t, step = entry[0], entry[1] + 1
            entry[1] = step
            t.report(t.params["x"] + 1.0 / step, step)
            pruned = t.should_prune()
            decisions.append((t.number, step, pruned))
            if pruned:
                study.tell(t, state=TrialState.PRUNED)
                live.remove(entry)
            elif step == steps:
                study.tell(t, t.params["x"])
                live.remove(entry)
    return decisions


@pytest.mark.parametrize("make_pruner", [
    lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3),
    lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
], ids=["hyperband", "asha"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_cache_gives_the_same_prune_decisions_as_uncached_storage(backend, make_pruner, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("pg_db").url
    plain = open_storage(url, heartbeat=False)  # what Optuna itself does: _CachedStorage, every read fresh
    # A time-to-live longer than the test: every read after the first relies on the narrow refresh and
    # on this process's writes marking their trials.
    cached = open_storage(url, heartbeat=False, cache=True, ttl=3600)
    expected = _replay(plain, make_pruner(), "replay")
    optuna.delete_study(study_name="replay", storage=plain)  # Hyperband's brackets hash the study name
    got = _replay(cached, make_pruner(), "replay")
    assert sum(p for *_, p in expected) >= 3, "the replay should prune something"
    assert got == expected
    for s in (plain, cached):
        getattr(s, "backend", s).engine.dispose()


def test_other_workers_trials_states_reports_and_overwrites_are_exact_and_foreign_overwrites_lag(pg_db):
    mine = open_storage(pg_db.url, heartbeat=False, cache=True, ttl=3600)
    theirs = open_storage(pg_db.url, heartbeat=False)
    plain = optuna.storages.RDBStorage(pg_db.url.replace("postgresql://", "postgresql+psycopg://"))
    study = optuna.create_study(study_name="s", storage=mine)
    other = optuna.load_study(study_name="s", storage=theirs)
    study.enqueue_trial({"x": 0.5})
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]
    t = other.ask()  # another worker pops the enqueued trial, reports, and records an attribute
    t.suggest_float("x", 0, 1)
    t.set_user_attr("host", "a")
    assert [x.state for x in study.get_trials()] == [TrialState.RUNNING]  # states: exact
    t.report(1.0, 1)
    t.report(2.0, 2)
    t.suggest_float("y", 0, 1)
    t.storage.set_trial_system_attr(trial_id_of(t), "completed_rung_0", 2.0)
    got = study.get_trials()[0]
    assert got.intermediate_values == {1: 1.0, 2: 2.0}  # added rows: at once
    assert got.params == {"x": 0.5, "y": t.params["y"]} and got.system_attrs["completed_rung_0"] == 2.0
    t.set_user_attr("host", "b")  # our storage writes an overwrite as a new row: seen at once
    other.enqueue_trial({"x": 0.7})
    got = study.get_trials()
    assert [x.state for x in got] == [TrialState.RUNNING, TrialState.WAITING]  # new trials: at once
    assert got[0].user_attrs == {"host": "b"}
    plain.set_trial_user_attr(trial_id_of(t), "host", "c")  # plain Optuna updates in place: seen at the full read
    assert study.get_trials()[0].user_attrs == {"host": "b"}
    mine.invalidate(study_id_of(study))
    assert study.get_trials()[0].user_attrs == {"host": "c"}
    other.tell(t, 1.0)
    assert study.get_trials()[0].state == TrialState.COMPLETE and study.get_trials()[0].value == 1.0
    for s in (mine.backend, theirs, plain):
        s.engine.dispose()


def _news_sizes(storage) -> list[int]:
    """Wrap the backend's narrow read; returns the list its listing sizes are appended to."""
    sizes: list[int] = []
    real = storage.backend.narrow_read

    def spy(*args, **kwargs):
        listing, rows = real(*args, **kwargs)
        sizes.append(len(listing))
        return listing, rows

    storage.backend.narrow_read = spy
    return sizes


def test_a_read_lists_the_unfinished_and_new_trials_only_in_one_statement(tmp_path):
    s = open_storage(f"sqlite:///{tmp_path / 'n.db'}", heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="n", storage=s)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=40)
    running = [study.ask() for _ in range(3)]
    study.get_trials()  # warm: the first read is a full one
    sizes, statements = _news_sizes(s), []
    import sqlalchemy

    sqlalchemy.event.listen(s.backend.engine, "after_cursor_execute", lambda *a: statements.append(a[2]))
    got = study.get_trials()
    assert len(got) == 43 and [t.state for t in got[-3:]] == [TrialState.RUNNING] * 3
    selects = [x for x in statements if x.startswith("SELECT")]
    assert sizes == [3] and len(selects) == 1  # the 3 unfinished trials, not the 40 finished ones
    study.tell(running[0], 0.5)
    got = study.get_trials()
    assert got[40].state == TrialState.COMPLETE and got[40].value == 0.5
    assert len(got) == 43 and sizes[-1] == 2  # a finished trial is no longer listed
    s.backend.engine.dispose()


def test_a_trial_this_process_runs_is_read_from_the_cache_and_exact(tmp_path):
    """Its own trial changes only through the process running it: reading it costs no statement."""
    import sqlalchemy

    s = open_storage(f"sqlite:///{tmp_path / 'm.db'}", heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="m", storage=s)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    selects: list[str] = []
    sqlalchemy.event.listen(s.backend.engine, "after_cursor_execute",
                            lambda *a: selects.append(a[2]) if a[2].startswith("SELECT") else None)
    for step in range(1, 4):
        trial.report(1.0 / step, step)
        assert s.get_trial_system_attrs(trial_id_of(trial)) == ({"rung": 1} if step > 1 else {})
        s.set_trial_system_attr(trial_id_of(trial), "rung", 1)
    trial.set_user_attr("host", "a")
    got = s.get_trial(trial_id_of(trial))
    reads = [q for q in selects if "anon_1" in q or "trial_system_attributes.key" in q]
    assert reads == []  # no study read, no system-attribute query: a pruner's look at it is free
    assert got.params == {"x": x} and got.intermediate_values == {1: 1.0, 2: 0.5, 3: 1.0 / 3}
    assert got.system_attrs == {"rung": 1} and got.user_attrs == {"host": "a"}
    fresh = open_storage(f"sqlite:///{tmp_path / 'm.db'}", heartbeat=False).get_trial(trial_id_of(trial))
    assert (fresh.params, fresh.intermediate_values, fresh.system_attrs, fresh.user_attrs) == (
        got.params, got.intermediate_values, got.system_attrs, got.user_attrs)
    sent: list[str] = []
    sqlalchemy.event.listen(s.backend.engine, "after_cursor_execute",
                            lambda *a: sent.append(a[2]) if not a[2].startswith("BEGIN") else None)
    trial.report(0.25, 4)
    assert len(sent) == 1 and sent[0].startswith("INSERT")  # a report is one statement
    s.set_trial_user_attrs(trial_id_of(trial), {"gpu": "x", "seed": 1})
    assert len(sent) == 2 and sent[1].startswith("INSERT")  # new attributes of an own trial: one statement
    trial.set_user_attr("host", "b")  # an overwrite: the old row out, a new one in, one transaction
    assert len(sent) > 3 and any(q.startswith("DELETE") for q in sent[2:])
    assert s.get_trial(trial_id_of(trial)).user_attrs == {"host": "b", "gpu": "x", "seed": 1}
    s.set_trial_intermediate_value(trial_id_of(trial), 1, 5.0)  # a step again: Optuna's path overwrites it
    assert s.get_trial(trial_id_of(trial)).intermediate_values[1] == 5.0
    study.tell(trial, 0.1)
    assert s.get_trial(trial_id_of(trial)).state == TrialState.COMPLETE and study.trials[-1].value == 0.1
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        s.set_trial_intermediate_value(trial_id_of(trial), 4, 1.0)
    s.backend.engine.dispose()


def test_rows_and_trials_committed_out_of_id_order_are_still_read(pg_db):
    """A slower transaction commits a row with a lower id after a reader has seen a higher one: the reader
    asks for the skipped ids again, so it still gets the row (and the trial)."""
    import psycopg

    mine = open_storage(pg_db.url, heartbeat=False, cache=True, ttl=3600)
    theirs = open_storage(pg_db.url, heartbeat=False)
    study = optuna.create_study(study_name="o", storage=mine)
    other = optuna.load_study(study_name="o", storage=theirs)
    t = other.ask()
    study.get_trials()  # warm
    with psycopg.connect(pg_db.url, autocommit=True) as slow:  # takes its ids first, writes and commits last
        row = slow.execute("SELECT nextval('trial_user_attributes_trial_user_attribute_id_seq')").fetchone()[0]
        trial = slow.execute("SELECT nextval('trials_trial_id_seq')").fetchone()[0]
        t.set_user_attr("early", 2)  # a higher row id, committed first
        other.ask()  # a higher trial id, committed first
        got = study.get_trials()
        assert len(got) == 2 and got[0].user_attrs == {"early": 2}
        slow.execute("INSERT INTO trial_user_attributes (trial_user_attribute_id, trial_id, key, value_json) "
                     "VALUES (%s, %s, 'late', '1')", (row, trial_id_of(t)))
        slow.execute("INSERT INTO trials (trial_id, number, study_id, state, datetime_start) VALUES "
                     "(%s, 2, %s, 'RUNNING', now())", (trial, study_id_of(study)))
    got = study.get_trials()
    assert len(got) == 3 and got[0].user_attrs == {"early": 2, "late": 1}
    for s in (mine.backend, theirs):
        s.engine.dispose()


def test_study_look_ups_are_cached_and_own_writes_seen_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    s = open_storage(url, heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="l", storage=s)
    study.set_user_attr("a", 1)
    assert study.user_attrs == {"a": 1}
    calls = []
    real = s.backend.get_study_user_attrs
    s.backend.get_study_user_attrs = lambda sid: calls.append(sid) or real(sid)
    for _ in range(3):
        assert study.user_attrs == {"a": 1} and s.get_study_id_from_name("l") == study_id_of(study)
    assert calls == []  # served from the cache
    study.set_user_attr("a", 2)
    assert study.user_attrs == {"a": 2} and len(calls) == 1
    s.backend.engine.dispose()


def test_a_drivers_own_connection_error_counts_as_a_lost_connection():
    """SQLAlchemy lets psycopg's OperationalError through unwrapped when a pre-pinged connection cannot be
    replaced; the reconnecting storage must still wait it out."""
    import psycopg
    import pymysql

    from search.storage import is_disconnect

    assert is_disconnect(psycopg.OperationalError("database is not currently accepting connections"))
    assert is_disconnect(pymysql.err.OperationalError(2003, "Can't connect"))
    assert not is_disconnect(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_disconnect(ValueError("not a database error"))


_MUTATORS = {"append", "add", "clear", "discard", "extend", "insert", "pop", "popitem", "remove", "setdefault",
             "update"}


def _module_state_changes(path) -> list[str]:
    """Where a module's functions change a module-level name: `global`, item or attribute assignment,
    or a mutating method call on it; and module-level thread-locals."""
    import ast

    tree = ast.parse(path.read_text())
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    found = [f"{path.name}:{node.lineno} {ast.unparse(node.value)}" for node in tree.body
             if isinstance(node, ast.Assign) and "local(" in ast.unparse(node.value)]
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            base = None
            if isinstance(node, ast.Global):
                found.append(f"{path.name}:{node.lineno} global {', '.join(node.names)}")
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, (ast.Subscript, ast.Attribute)) and isinstance(t.value, ast.Name):
                        base = t.value.id
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS \
                    and isinstance(node.func.value, ast.Name):
                base = node.func.value.id
            if base in names:
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


def test_the_storage_package_keeps_no_module_level_mutable_state():
    """Per storage, not per process: what one storage (or one taking of the lock) keeps is its own, so
    two storages in one process, a pickled copy, or a forked child never share it."""
    from pathlib import Path

    folder = Path(storage_pkg.__file__).parent
    assert [change for path in sorted(folder.glob("*.py")) for change in _module_state_changes(path)] == []


def test_optunas_storage_internal_error_is_one_line(pg_db):
    """Optuna wraps a database error inside its own transactions (its schema check when a storage opens,
    every commit) in StorageInternalError: a lost connection reads as one, any other names the cause."""
    import sqlalchemy

    from search.storage import storage_errors

    u = parse_url(pg_db.url)
    storage = open_storage(pg_db.url, heartbeat=False)
    with (pytest.raises(StorageError, match=r"refused a storage call: .*no_such_table") as caught,
          storage_errors(u), storage.session() as session):
        session.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert "\n" not in str(caught.value)
    pg_db.admin(f'ALTER DATABASE "{pg_db.name}" WITH ALLOW_CONNECTIONS false')
    try:
        pg_db.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg_db.name,))
        with (pytest.raises(StorageError, match="cannot reach the database at postgresql://"),
              storage_errors(u), storage.session() as session):
            session.execute(sqlalchemy.text("SELECT 1"))
    finally:
        pg_db.admin(f'ALTER DATABASE "{pg_db.name}" WITH ALLOW_CONNECTIONS true')
        storage.engine.dispose()


def test_a_drivers_own_connection_error_that_sqlalchemy_let_through_is_one_line():
    """SQLAlchemy wraps a driver's errors, but not on every path: CI once saw psycopg's own
    OperationalError come out of a pre-ping's reconnect to a database that had stopped taking connections."""
    import psycopg

    from search.storage import storage_errors

    u = parse_url("postgresql://u:secret@db.example/x")
    with pytest.raises(StorageError, match="cannot reach the database at postgresql://u:\\*\\*\\*@db.example/x: "
                                           "connection failed") as caught, storage_errors(u):
        raise psycopg.OperationalError("connection failed: database \"x\" is not currently accepting connections")
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)
    with pytest.raises(ValueError), storage_errors(u):  # not the database's: left alone
        raise ValueError("a bug of ours")


def test_database_errors_outside_optunas_sessions_are_one_line_and_bugs_are_left_alone():
    """SQLAlchemy's DBAPIError where Optuna does not wrap it (creating the tables, alembic's version table), a
    connection the pool could not get in time, and Optuna's schema refusal are one line; nothing else is."""
    import sqlalchemy.exc

    from search.storage import storage_errors

    u = parse_url("postgresql://u:secret@db.example/x")
    denied = sqlalchemy.exc.ProgrammingError("CREATE TABLE studies ...", {}, Exception(
        "permission denied for schema public\nLINE 1: CREATE TABLE studies"))
    lost = sqlalchemy.exc.DatabaseError("SELECT 1", {}, Exception("server closed the connection"),
                                        connection_invalidated=True)
    pool = sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 1 reached, connection timed out")
    schema = RuntimeError("The runtime optuna version 5.1.0 is no longer compatible with the table schema (set "
                          "up by optuna 3.0.0). Please execute `$ optuna storage upgrade --storage $STORAGE_URL` "
                          "for upgrading the storage.")
    for exc, said in ((denied, "the database at postgresql://u:***@db.example/x refused a storage call: "
                               "permission denied for schema public"),
                      (lost, "cannot reach the database at postgresql://u:***@db.example/x: server closed"),
                      (pool, "cannot reach the database at postgresql://u:***@db.example/x: QueuePool limit"),
                      (schema, "cannot use the Optuna tables at postgresql://u:***@db.example/x: The runtime "
                               "optuna version 5.1.0 is no longer compatible")):
        with pytest.raises(StorageError) as caught, storage_errors(u):
            raise exc
        assert str(caught.value).startswith(said) and "\n" not in str(caught.value), caught.value
    for bug in (RuntimeError("a bug of ours"), KeyError("x"), sqlalchemy.exc.InvalidRequestError("misuse")):
        with pytest.raises(type(bug)), storage_errors(u):
            raise bug


def test_tables_of_another_optuna_version_are_one_line_when_the_storage_opens(tmp_path):
    """Optuna's schema check (a bare RuntimeError when a storage opens) through open_storage, as every
    command and a joining worker open it, and on the command line: one line, exit 2."""
    import sqlalchemy
    from typer.testing import CliRunner

    from search.cli import app

    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = optuna.storages.RDBStorage(url)
    with first.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v0.9.0.a'"))
    first.engine.dispose()
    with pytest.raises(StorageError, match=r"^cannot use the Optuna tables at sqlite:///.*old\.db: The runtime "
                                           r"optuna version .* is no longer compatible with the table schema"):
        open_storage(url, heartbeat=False)
    res = CliRunner().invoke(app, ["status", "--study", "capacity", "--storage", url])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use the Optuna tables"), res.stderr


def test_a_database_that_refuses_to_make_the_tables_is_one_line(pg_db):
    """A role that may not create tables in the database (PostgreSQL 15's default for schema public): the
    ProgrammingError of Optuna's create_all, outside its sessions, is one line naming what PostgreSQL said."""
    import uuid

    from conftest import pg_admin

    role = f"h2s_test_ro_{uuid.uuid4().hex[:8]}"
    pg_db.admin(f'CREATE ROLE "{role}" LOGIN')
    pg_admin("REVOKE CREATE ON SCHEMA public FROM PUBLIC", url=pg_db.url)  # PostgreSQL 15's default, made sure
    try:
        url = pg_db.url.replace("postgres@", f"{role}@")
        with pytest.raises(StorageError, match=r"refused a storage call: permission denied for schema public"):
            open_storage(url, heartbeat=False)
    finally:
        pg_db.admin(f'DROP ROLE IF EXISTS "{role}"')
