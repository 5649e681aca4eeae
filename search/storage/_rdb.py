"""RDBStorage that waits out a lost database connection, enforces the study budget where trials are made,
writes a running trial's rows in one statement, offers the fleet cache its narrow read, and keeps its
SQLite guarantees when pickled."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from . import _narrow
from ._contract import NARROW_TABLES
from ._optuna import RETRY_HISTORY, RDBStorageBase, models
from ._retry import reconnecting
from ._url import SQLITE_BUSY_TIMEOUT


class BudgetSpent(Exception):
    """No new trial was created: the study's budget of trials is spent (see `limit_new_trials`)."""


def _state_already_set(storage: ReconnectingRDBStorage, exc: BaseException, trial_id: int, state: TrialState,
                       values=None) -> bool:
    """After a lost connection, a retried set_trial_state_values refused as finished: did our first attempt
    commit (only its answer was lost)?"""
    return isinstance(exc, UpdateFinishedTrialError) and storage.get_trial(trial_id).state == state


class ReconnectingRDBStorage(RDBStorageBase):
    """RDBStorage whose calls wait out a lost database connection (see RECONNECT_SECONDS): every method
    that talks to the database is `@reconnecting`, here or in RDBStorageBase.

    It is FleetCachedStorage's backend (search.storage._contract.FleetBackend). On SQLite it makes every
    transaction BEGIN IMMEDIATE in WAL mode instead (see `_serialise_sqlite`); both survive pickling,
    which rebuilds the engine.
    """

    budget_attr: str | None = None

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
        if _shared_sqlite(url):
            # SQLAlchemy, not the sqlite3 module, must own transactions for BEGIN IMMEDIATE to govern them.
            engine_kwargs = dict(engine_kwargs or {})
            engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT, **engine_kwargs.get("connect_args", {}),
                                             "isolation_level": None}
        self.narrow_statement = None  # built at the first narrow read, for this storage's SQL dialect
        super().__init__(url, engine_kwargs, *args, **kwargs)
        self._serialise_if_sqlite()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["narrow_statement"] = None
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._serialise_if_sqlite()

    def _serialise_if_sqlite(self) -> None:
        if _shared_sqlite(self.url):
            _serialise_sqlite(self.engine)

    # ------------------------------------------------------------------ Optuna's storage calls, retried
    @reconnecting
    def create_new_study(self, directions, study_name=None):
        return super().create_new_study(directions, study_name)

    @reconnecting
    def delete_study(self, study_id):
        return super().delete_study(study_id)

    @reconnecting
    def set_study_user_attr(self, study_id, key, value):
        return super().set_study_user_attr(study_id, key, value)

    @reconnecting
    def set_study_system_attr(self, study_id, key, value):
        return super().set_study_system_attr(study_id, key, value)

    @reconnecting
    def get_study_id_from_name(self, study_name):
        return super().get_study_id_from_name(study_name)

    @reconnecting
    def get_study_name_from_id(self, study_id):
        return super().get_study_name_from_id(study_id)

    @reconnecting
    def get_study_directions(self, study_id):
        return super().get_study_directions(study_id)

    @reconnecting
    def get_study_user_attrs(self, study_id):
        return super().get_study_user_attrs(study_id)

    @reconnecting
    def get_study_system_attrs(self, study_id):
        return super().get_study_system_attrs(study_id)

    @reconnecting
    def get_all_studies(self):
        return super().get_all_studies()

    @reconnecting
    def create_new_trial(self, study_id, template_trial=None):
        return super().create_new_trial(study_id, template_trial)

    @reconnecting
    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution):
        return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

    @reconnecting
    def get_trial_id_from_study_id_trial_number(self, study_id, trial_number):
        return super().get_trial_id_from_study_id_trial_number(study_id, trial_number)

    @reconnecting
    def get_trial_number_from_id(self, trial_id):
        return super().get_trial_number_from_id(trial_id)

    @reconnecting
    def get_trial_param(self, trial_id, param_name):
        return super().get_trial_param(trial_id, param_name)

    @reconnecting
    def get_trial_params(self, trial_id):
        return super().get_trial_params(trial_id)

    @reconnecting
    def get_trial_user_attrs(self, trial_id):
        return super().get_trial_user_attrs(trial_id)

    @reconnecting(settled=_state_already_set)
    def set_trial_state_values(self, trial_id, state, values=None):
        return super().set_trial_state_values(trial_id, state, values)

    @reconnecting
    def set_trial_user_attr(self, trial_id, key, value):
        return super().set_trial_user_attr(trial_id, key, value)

    @reconnecting
    def set_trial_system_attr(self, trial_id, key, value):
        return super().set_trial_system_attr(trial_id, key, value)

    @reconnecting
    def get_trial(self, trial_id):
        return super().get_trial(trial_id)

    @reconnecting
    def get_all_trials(self, study_id, deepcopy=True, states=None):
        return super().get_all_trials(study_id, deepcopy, states)

    @reconnecting
    def get_n_trials(self, study_id, state=None):
        return super().get_n_trials(study_id, state)

    @reconnecting
    def get_best_trial(self, study_id):
        return super().get_best_trial(study_id)

    @reconnecting
    def record_heartbeat(self, trial_id):
        return super().record_heartbeat(trial_id)

    # ------------------------------------------------------------------ writes of a running trial
    @reconnecting
    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """A report in one statement and one round trip (`_add_if_running`), where Optuna sends three in a
        transaction: every epoch of every trial pays it. A trial that is not running, or a step already
        reported, takes Optuna's own path, which updates the value or raises Optuna's error."""
        model = models.TrialIntermediateValueModel
        value, kind = model.intermediate_value_to_stored_repr(intermediate_value)
        if not self._add_if_running(model, trial_id, [{"step": step, "intermediate_value": value,
                                                       "intermediate_value_type": kind}]):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    @reconnecting
    def add_trial_attrs(self, trial_id: int, attrs: dict[str, Any], *, user: bool) -> bool:
        """Attributes the trial does not have yet, in one statement (see `_add_if_running`); False, with
        nothing written, when the trial is not running or already has one of the keys. FleetCachedStorage
        calls it for the trials it runs, whose keys it knows; the other writes take `write_trial_attrs`."""
        model = models.TrialUserAttributeModel if user else models.TrialSystemAttributeModel
        return self._add_if_running(model, trial_id, [{"key": key, "value_json": json.dumps(value)}
                                                      for key, value in attrs.items()])

    def _add_if_running(self, model, trial_id: int, rows: list[dict[str, Any]]) -> bool:
        """Insert per-trial rows if the trial is RUNNING: one `INSERT … SELECT … WHERE state = 'RUNNING'`,
        autocommitted (no BEGIN and COMMIT round trips), so the check and the insert are one atomic
        statement. True when every row went in; False when none did: the trial is not running (or
        unknown), or a row's key is taken (the unique constraint refuses the whole statement)."""
        trial, table = models.TrialModel, model.__table__
        columns = ["trial_id", *rows[0]]
        selects = [sa.select(sa.literal(trial_id, sa.Integer),
                             *[sa.literal(row[c], table.c[c].type) for c in columns[1:]]).where(
            trial.trial_id == trial_id, trial.state == TrialState.RUNNING) for row in rows]
        source = selects[0] if len(selects) == 1 else sa.union_all(*selects)
        # preserve_rowcount: SQLAlchemy keeps an INSERT's row count only when asked to
        insert = sa.insert(table).from_select(columns, source).execution_options(preserve_rowcount=True)
        try:
            return self._alone(insert) == len(rows)
        except sa.exc.IntegrityError:
            return False

    def _alone(self, statement, params: dict[str, Any] | None = None):
        """Run one statement on its own, autocommitted: no BEGIN and COMMIT round trips (and on SQLite no
        write lock, see `_serialise_sqlite`). Returns its rows, or for a write its row count."""
        with self.engine.connect() as conn:
            result = conn.execution_options(isolation_level="AUTOCOMMIT").execute(statement, params)
            return result.all() if result.returns_rows else result.rowcount

    @reconnecting
    def set_trial_user_attrs(self, trial_id: int, attrs: dict) -> None:
        """Several user attributes in one transaction: one commit (one WAL flush) instead of one per key."""
        with self.session(ignore_integrity_error=True) as session:
            self.write_trial_attrs(session, models.TrialUserAttributeModel, trial_id, attrs)

    def write_trial_attrs(self, session, model, trial_id: int, attrs: dict[str, Any]) -> None:
        """Attributes are always new rows: an overwrite deletes the old row and inserts a new one.

        Optuna updates an existing attribute in place, which leaves no trace a reader could find short of
        re-reading the whole trial; a new row has a new row id, so every FleetCachedStorage sees the
        overwrite in its next narrow read, exactly. Three statements for any number of keys.
        """
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        self.check_trial_is_updatable(trial_id, trial.state)
        session.query(model).filter(model.trial_id == trial_id, model.key.in_(list(attrs))).delete(
            synchronize_session=False)
        session.add_all([model(trial_id=trial_id, key=key, value_json=json.dumps(value))
                         for key, value in attrs.items()])
        session.flush()

    # ------------------------------------------------------------------ the budget
    def limit_new_trials(self, budget_attr: str | None) -> None:
        """From now on, create a new trial only while the study has room in its budget: the integer in its
        user attribute `budget_attr`, counted against every trial except those a retry stands in for.

        The check runs inside Optuna's trial creation, in the transaction that holds the study row's lock
        (FOR UPDATE; on SQLite, BEGIN IMMEDIATE), so the budget is exact across any number of workers
        without a lock of our own around each trial. Retries and enqueued trials (created from a template)
        are never refused: a retry takes its dead trial's place, and an enqueued trial was asked for.
        """
        self.budget_attr = budget_attr

    def check_new_trial(self, study_id: int, template_trial, session) -> None:
        if template_trial is None and self.budget_attr is not None:
            self._check_budget(study_id, session)

    def _check_budget(self, study_id: int, session) -> None:
        """search.study.budget_used's rule, in the creating transaction: all trials minus retried ones."""
        user, trial, system = models.StudyUserAttributeModel, models.TrialModel, models.TrialSystemAttributeModel
        stored = session.query(user.value_json).filter(user.study_id == study_id,
                                                       user.key == self.budget_attr).scalar()
        if stored is None:
            return
        budget = int(json.loads(stored))
        total = session.query(sa.func.count(trial.trial_id)).filter(trial.study_id == study_id).scalar()
        retried: set[int] = set()
        for (value,) in (session.query(system.value_json).join(trial, system.trial_id == trial.trial_id)
                         .filter(trial.study_id == study_id, system.key == RETRY_HISTORY)):
            retried.update(json.loads(value))
        if total - len(retried) >= budget:
            raise BudgetSpent(f"the study's budget of {budget} trials is spent")

    # ------------------------------------------------------------------ reads for the fleet cache
    @reconnecting
    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """One trial's system attributes in one query where Optuna sends two (a pruner's look at its own
        trial, every epoch); KeyError for an unknown trial, as Optuna."""
        model = models.TrialSystemAttributeModel
        with self.session() as session:
            rows = session.query(model.key, model.value_json).filter(model.trial_id == trial_id).all()
            if not rows:
                models.TrialModel.find_or_raise_by_id(trial_id, session)
        return {key: json.loads(value) for key, value in rows}

    @reconnecting
    def row_marks(self) -> dict[str, int]:
        """The highest row id of each per-trial table now: rows above it are news to a reader."""
        with self.session() as session:
            return {name: session.query(sa.func.max(_narrow.columns(name)[1])).scalar() or 0
                    for name in NARROW_TABLES}

    @reconnecting
    def narrow_read(self, study_id: int, since: int, marks: dict[str, int], pending: dict[str, list[int]],
                    open_ids: Iterable[int]) -> tuple[list[tuple], dict[str, list[tuple]]]:
        """What changed in a study since a reader's last look, in one statement (one round trip, one
        snapshot); see FleetBackend.narrow_read for what it returns.

        A finished trial never changes again, and per-trial rows are only ever added (`write_trial_attrs`
        writes an overwrite as a new row), so these are all the changes. Every part is an index range scan
        or lookup whose size grows with what happened since the last look and with the running trials,
        not with the study.
        """
        params = {"study_id": study_id, "since": since, "ids_t": sorted(set(open_ids) | set(pending.get("trials", ())))}
        for name in NARROW_TABLES:
            params[f"mark_{name}"], params[f"ids_{name}"] = marks.get(name, 0), list(pending.get(name, ()))
        if self.narrow_statement is None:
            self.narrow_statement = _narrow.statement(self.engine.dialect.name)
        listing: list[tuple] = []
        rows: dict[str, list[tuple]] = {name: [] for name in NARROW_TABLES}
        for kind, pk, trial_id, key, num, text, start, complete in self._alone(self.narrow_statement, params):
            if kind == 0:  # times stay as stored: the reader converts those of the trials that changed
                listing.append((trial_id, int(num), TrialState[key], start, complete))
            else:
                name = NARROW_TABLES[kind - 1]
                rows[name].append((pk, *_narrow.decode(name, trial_id, key, num, text)))
        return listing, rows


def _shared_sqlite(url: str) -> bool:
    """A SQLite file other processes may open (not an in-memory database, private to its connection)."""
    if not url.startswith("sqlite"):
        return False
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return bool(path) and not path.startswith(":memory:") and "mode=memory" not in path


def _serialise_sqlite(engine) -> None:
    """Take SQLite's write lock at the start of every transaction.

    SQLite has no row locks, so two processes could both read a WAITING trial and both start it (an
    enqueued anchor would run twice). BEGIN IMMEDIATE makes read-then-write atomic; the busy timeout
    makes the other processes wait their turn rather than fail with "database is locked".
    """
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        # An AUTOCOMMIT connection (a one-statement read or insert) runs its statement on its own: SQLite
        # makes a single statement atomic, and SQLAlchemy would never commit a transaction begun here.
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return
        # SQLAlchemy hands a connection back from AUTOCOMMIT by setting the sqlite3 module's legacy
        # isolation level (""), under which the module opens transactions of its own: ours own them again.
        dbapi = conn.connection.dbapi_connection
        if dbapi.isolation_level is not None:
            dbapi.isolation_level = None  # no transaction is open here, so the implied COMMIT is a no-op
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped
