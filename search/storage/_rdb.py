"""RDBStorage that waits out a lost database connection, and keeps its SQLite guarantees when pickled."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ._url import SQLITE_BUSY_TIMEOUT, is_disconnect, mask_password, reconnect_seconds

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


def _reconnecting(name: str, fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if getattr(_depth, "n", 0) or self.url.startswith("sqlite"):
            return fn(self, *args, **kwargs)  # SQLite has no connection to lose; "locked" must surface
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
                    reason = mask_password(str(getattr(exc, "orig", None) or exc.__cause__ or exc))
                    _log.warning("database connection lost (%s); retrying for up to %.0fs",
                                 reason.splitlines()[0][:200] if reason else type(exc).__name__, deadline - now)
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


class BudgetSpent(Exception):
    """No new trial was created: the study's budget of trials is spent (see `limit_new_trials`)."""


RETRY_HISTORY = "retry_history"  # Optuna's system attribute: the numbers of the trials a retry stands in for


class ReconnectingRDBStorage(RDBStorage):
    """RDBStorage whose calls wait out a lost database connection (see RECONNECT_SECONDS).

    On SQLite it makes every transaction BEGIN IMMEDIATE in WAL mode instead (see `_serialise_sqlite`);
    both survive pickling, which rebuilds the engine.
    """

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
        if _shared_sqlite(url):
            # SQLAlchemy, not the sqlite3 module, must own transactions for BEGIN IMMEDIATE to govern them.
            engine_kwargs = dict(engine_kwargs or {})
            engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT, **engine_kwargs.get("connect_args", {}),
                                             "isolation_level": None}
        super().__init__(url, engine_kwargs, *args, **kwargs)
        self._serialise_if_sqlite()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._serialise_if_sqlite()

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """A report in one statement and one round trip (`_add_if_running`), where Optuna sends three in a
        transaction: every epoch of every trial pays it. A trial that is not running, or a step already
        reported, takes Optuna's own path, which updates the value or raises Optuna's error."""
        from optuna.storages._rdb import models

        model = models.TrialIntermediateValueModel
        value, kind = model.intermediate_value_to_stored_repr(intermediate_value)
        if not self._add_if_running(model, trial_id, [{"step": step, "intermediate_value": value,
                                                       "intermediate_value_type": kind}]):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def _add_attrs(self, trial_id: int, attrs: dict[str, Any], *, user: bool) -> bool:
        """Attributes the trial does not have yet, in one statement (see `_add_if_running`); False, with
        nothing written, when the trial is not running or already has one of the keys. FleetCachedStorage
        calls it for the trials it runs, whose keys it knows; the other writes take `_replace_attrs`."""
        import json

        from optuna.storages._rdb import models

        model = models.TrialUserAttributeModel if user else models.TrialSystemAttributeModel
        return self._add_if_running(model, trial_id, [{"key": key, "value_json": json.dumps(value)}
                                                      for key, value in attrs.items()])

    def _add_if_running(self, model, trial_id: int, rows: list[dict[str, Any]]) -> bool:
        """Insert per-trial rows if the trial is RUNNING: one `INSERT … SELECT … WHERE state = 'RUNNING'`,
        autocommitted (no BEGIN and COMMIT round trips), so the check and the insert are one atomic
        statement. True when every row went in; False when none did: the trial is not running (or
        unknown), or a row's key is taken (the unique constraint refuses the whole statement)."""
        import sqlalchemy as sa
        from optuna.storages._rdb import models

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

    budget_attr: str | None = None

    def limit_new_trials(self, budget_attr: str | None) -> None:
        """From now on, create a new trial only while the study has room in its budget: the integer in its
        user attribute `budget_attr`, counted against every trial except those a retry stands in for.

        The check runs inside Optuna's trial creation, in the transaction that holds the study row's lock
        (FOR UPDATE; on SQLite, BEGIN IMMEDIATE), so the budget is exact across any number of workers
        without a lock of our own around each trial. Retries and enqueued trials (created from a template)
        are never refused: a retry takes its dead trial's place, and an enqueued trial was asked for.
        """
        self.budget_attr = budget_attr

    def _get_prepared_new_trial(self, study_id: int, template_trial, session):
        if template_trial is None and self.budget_attr is not None:
            self._check_budget(study_id, session)
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    def _check_budget(self, study_id: int, session) -> None:
        """search.study.budget_used's rule, in the creating transaction: all trials minus retried ones."""
        import json

        from optuna.storages._rdb import models
        from sqlalchemy import func

        user, trial, system = models.StudyUserAttributeModel, models.TrialModel, models.TrialSystemAttributeModel
        stored = session.query(user.value_json).filter(user.study_id == study_id,
                                                       user.key == self.budget_attr).scalar()
        if stored is None:
            return
        budget = int(json.loads(stored))
        total = session.query(func.count(trial.trial_id)).filter(trial.study_id == study_id).scalar()
        retried: set[int] = set()
        for (value,) in (session.query(system.value_json).join(trial, system.trial_id == trial.trial_id)
                         .filter(trial.study_id == study_id, system.key == RETRY_HISTORY)):
            retried.update(json.loads(value))
        if total - len(retried) >= budget:
            raise BudgetSpent(f"the study's budget of {budget} trials is spent")

    def _serialise_if_sqlite(self) -> None:
        if _shared_sqlite(self.url):
            _serialise_sqlite(self.engine)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict) -> None:
        """Several user attributes in one transaction: one commit (one WAL flush) instead of one per key."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session, True) as session:
            self._replace_attrs(session, models.TrialUserAttributeModel, trial_id, attrs)

    def _trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """One trial's system attributes in one query (a pruner's look at its own trial, every epoch)."""
        import json

        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        model = models.TrialSystemAttributeModel
        with _create_scoped_session(self.scoped_session) as session:
            rows = session.query(model.key, model.value_json).filter(model.trial_id == trial_id).all()
            if not rows:
                models.TrialModel.find_or_raise_by_id(trial_id, session)  # KeyError for an unknown trial
        return {key: json.loads(value) for key, value in rows}

    def _child_marks(self) -> dict[str, int]:
        """The highest row id of each per-trial table now: rows above it are news to a reader."""
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import func

        with _create_scoped_session(self.scoped_session) as session:
            return {name: session.query(func.max(_news_columns(name)[1])).scalar() or 0 for name in _NEWS}

    def _set_trial_attr_without_commit(self, session, model_cls, trial_id: int, key: str, value: Any) -> None:
        self._replace_attrs(session, model_cls, trial_id, {key: value})

    def _replace_attrs(self, session, model_cls, trial_id: int, attrs: dict[str, Any]) -> None:
        """Attributes are always new rows: an overwrite deletes the old row and inserts a new one.

        Optuna updates an existing attribute in place, which leaves no trace a reader could find short of
        re-reading the whole trial; a new row has a new row id, so every FleetCachedStorage sees the
        overwrite in its next narrow read (`_study_news`), exactly. Three statements for any number of keys.
        """
        import json

        from optuna.storages._rdb import models

        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        self.check_trial_is_updatable(trial_id, trial.state)
        session.query(model_cls).filter(model_cls.trial_id == trial_id, model_cls.key.in_(list(attrs))).delete(
            synchronize_session=False)
        session.add_all([model_cls(trial_id=trial_id, key=key, value_json=json.dumps(value))
                         for key, value in attrs.items()])
        session.flush()

    def _study_news(self, study_id: int, since: int, marks: dict[str, int], pending: dict[str, list[int]],
                    open_ids: Iterable[int]) -> tuple[list[tuple], dict[str, list[tuple]]]:
        """What changed in a study since a reader's last look, in one statement (one round trip, one snapshot).

        Returns (listing, rows). The listing has (trial id, number, state, start, complete) of the trials
        above `since`, in `open_ids` (the reader holds them as unfinished) or in `pending["trials"]`; a
        finished trial never changes again, so those are all a reader needs. `rows` has, per per-trial
        table ("params", "intermediate", "user", "system", "values"), the rows whose id is above
        `marks[table]` or in `pending[table]`, as (row id, trial id, key, value[, distribution]), in id order.
        Per-trial rows are only ever added (this storage writes an overwritten attribute as a new row), so
        these are all the changes. Every part is an index range scan or lookup whose size grows with what
        happened since the last look and with the running trials, not with the study.
        """
        params = {"study_id": study_id, "since": since, "ids_t": sorted(set(open_ids) | set(pending.get("trials", ())))}
        for name in _NEWS:
            params[f"mark_{name}"], params[f"ids_{name}"] = marks.get(name, 0), list(pending.get(name, ()))
        result = self._alone(self._news_statement(), params)  # one statement: one snapshot, no transaction
        listing: list[tuple] = []
        rows: dict[str, list[tuple]] = {name: [] for name in _NEWS}
        for kind, pk, trial_id, key, num, text, start, complete in result:
            if kind == 0:  # times stay as stored: the reader converts those of the trials that changed
                listing.append((trial_id, int(num), TrialState[key], start, complete))
            else:
                name = _NEWS[kind - 1]
                rows[name].append((pk, *_decode(name, trial_id, key, num, text)))
        return listing, rows

    def _news_statement(self):
        """The statement of `_study_news`, built once per dialect (its values are all bound parameters)."""
        dialect = self.engine.dialect.name
        if dialect not in _NEWS_STATEMENTS:
            _NEWS_STATEMENTS[dialect] = self._build_news_statement()
        return _NEWS_STATEMENTS[dialect]

    def _build_news_statement(self):
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        trial = models.TrialModel
        text, number = sa.String, sa.Float

        def typed(value, type_):
            return sa.cast(sa.null(), type_) if value is None else sa.cast(value, type_)

        def moment(column):  # not cast: SQLite would turn a stored timestamp into a number
            return sa.cast(sa.null(), sa.DateTime) if column is None else column

        def branch(kind, pk, trial_id, key, num, value, where, start=None, complete=None):
            return sa.select(sa.literal(kind, sa.Integer).label("kind"), pk.label("pk"), trial_id.label("trial_id"),
                             typed(key, text).label("k"), typed(num, number).label("num"),
                             typed(value, text).label("txt"), moment(start).label("ts1"),
                             moment(complete).label("ts2")).where(where)

        study, since = sa.bindparam("study_id", type_=sa.Integer), sa.bindparam("since", type_=sa.Integer)
        parts = [branch(0, trial.trial_id, trial.trial_id, trial.state, trial.number, None,
                        sa.and_(trial.study_id == study,
                                sa.or_(trial.trial_id > since, self._one_of(trial.trial_id, "ids_t"))),
                        trial._datetime_start_utc, trial._datetime_complete_utc)]
        for kind, name in enumerate(_NEWS, start=1):
            model, pk, key, num, value = _news_columns(name)
            parts.append(branch(kind, pk, model.trial_id, key, num, value, sa.and_(
                model.trial_id == trial.trial_id, trial.study_id == study,
                sa.or_(pk > sa.bindparam(f"mark_{name}", type_=sa.Integer), self._one_of(pk, f"ids_{name}")))))
        union = sa.union_all(*parts).subquery()
        return sa.select(union).order_by(union.c.kind, union.c.pk)

    def _one_of(self, column, name: str):
        """`column IN :name`; on PostgreSQL one array parameter (`= ANY(:name)`), not one placeholder per id."""
        import sqlalchemy

        if self.engine.dialect.name != "postgresql":
            return column.in_(sqlalchemy.bindparam(name, expanding=True))
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sqlalchemy.any_(sqlalchemy.bindparam(name, type_=ARRAY(sqlalchemy.Integer)))


for _name in (*_RECONNECTING, "set_trial_user_attrs", "_study_news", "_child_marks",
              "_trial_system_attrs", "_add_attrs"):
    setattr(ReconnectingRDBStorage, _name, _reconnecting(_name, getattr(ReconnectingRDBStorage, _name)))
del _name


_NEWS = ("params", "intermediate", "user", "system", "values")  # the per-trial tables, in news kind order
_NEWS_STATEMENTS: dict[str, Any] = {}  # dialect name -> the statement of ReconnectingRDBStorage._study_news


def _news_columns(name: str) -> tuple:
    """(model, row id, key column, number column, text column) of one per-trial table."""
    from optuna.storages._rdb import models

    if name == "params":
        m = models.TrialParamModel
        return m, m.param_id, m.param_name, m.param_value, m.distribution_json
    if name == "intermediate":
        m = models.TrialIntermediateValueModel
        return m, m.trial_intermediate_value_id, m.step, m.intermediate_value, m.intermediate_value_type
    if name == "values":
        m = models.TrialValueModel
        return m, m.trial_value_id, m.objective, m.value, m.value_type
    m = models.TrialUserAttributeModel if name == "user" else models.TrialSystemAttributeModel
    pk = m.trial_user_attribute_id if name == "user" else m.trial_system_attribute_id
    return m, pk, m.key, None, m.value_json


def _decode(name: str, trial_id: int, key: str, num: float | None, text: str | None) -> tuple:
    """(trial id, key, value[, distribution]) of one per-trial row, as FrozenTrial holds it."""
    import json

    from optuna import distributions
    from optuna.storages._rdb import models

    if name == "params":
        dist = distributions.json_to_distribution(text)
        return trial_id, key, dist.to_external_repr(num), dist
    if name == "intermediate":
        kind = models.TrialIntermediateValueModel.TrialIntermediateValueType[text]
        return trial_id, int(key), models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(num, kind)
    if name == "values":
        kind = models.TrialValueModel.TrialValueType[text]
        return trial_id, int(key), models.TrialValueModel.stored_repr_to_value(num, kind)
    return trial_id, key, json.loads(text)


def _local(utc):
    """A stored (naive UTC) datetime as Optuna's FrozenTrial holds it: naive local time."""
    import datetime

    if utc is None:
        return None
    if isinstance(utc, str):  # SQLite inside a UNION: the column's type is not known to the driver
        utc = datetime.datetime.fromisoformat(utc)
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def _shared_sqlite(url: str) -> bool:
    """A SQLite file other processes may open (not an in-memory database, private to its connection)."""
    if not url.startswith("sqlite"):
        return False
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return bool(path) and not path.startswith(":memory:") and "mode=memory" not in path


def _reconnecting_class() -> type[ReconnectingRDBStorage]:
    """The class open_storage builds (kept for benchmarks/storage.py, which times its methods)."""
    return ReconnectingRDBStorage


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
