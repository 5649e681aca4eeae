"""RDBStorage that waits out a lost database connection, and keeps its SQLite guarantees when pickled."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from optuna.storages import RDBStorage

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

    def _serialise_if_sqlite(self) -> None:
        if _shared_sqlite(self.url):
            _serialise_sqlite(self.engine)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict) -> None:
        """Several user attributes in one transaction: one commit (one WAL flush) instead of one per key."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session, True) as session:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)

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
            return {name: session.query(func.max(pk)).scalar() or 0 for name, (_, pk) in _children().items()}

    def _trial_news(self, study_id: int, marks: dict[str, int]) -> tuple[list, dict[str, list], dict[str, int]]:
        """(trial id and state of every trial of the study, rows added since `marks` per table, new marks).

        Params, intermediate values and attributes are only ever added to a running trial (an attribute
        may also be overwritten in place: that is what FleetCachedStorage's periodic full read is for), so
        rows above the last mark are all that a reader needs besides the states. Each query is one index
        range scan; the sizes do not grow with the study, only with what happened since the last read.
        """
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        out: dict[str, list] = {}
        new_marks = dict(marks)
        with _create_scoped_session(self.scoped_session) as session:
            states = (session.query(models.TrialModel.trial_id, models.TrialModel.state)
                      .filter(models.TrialModel.study_id == study_id).all())
            for name, (model, pk) in _children().items():
                rows = (session.query(model).join(models.TrialModel, model.trial_id == models.TrialModel.trial_id)
                        .filter(models.TrialModel.study_id == study_id, pk > marks.get(name, 0))
                        .order_by(pk).all())
                out[name] = [_decode(name, r) for r in rows]
                if rows:
                    new_marks[name] = max(new_marks.get(name, 0), getattr(rows[-1], pk.key))
        return [(tid, state) for tid, state in states], out, new_marks


for _name in (*_RECONNECTING, "set_trial_user_attrs", "_trial_news", "_child_marks",
              "_trial_system_attrs"):
    setattr(ReconnectingRDBStorage, _name, _reconnecting(_name, getattr(ReconnectingRDBStorage, _name)))
del _name


def _children() -> dict:
    from optuna.storages._rdb import models

    return {"params": (models.TrialParamModel, models.TrialParamModel.param_id),
            "intermediate": (models.TrialIntermediateValueModel,
                             models.TrialIntermediateValueModel.trial_intermediate_value_id),
            "user": (models.TrialUserAttributeModel, models.TrialUserAttributeModel.trial_user_attribute_id),
            "system": (models.TrialSystemAttributeModel, models.TrialSystemAttributeModel.trial_system_attribute_id)}


def _decode(name: str, row) -> tuple:
    """(trial id, key, value[, distribution]) of one per-trial row, as FrozenTrial holds it."""
    import json

    from optuna import distributions
    from optuna.storages._rdb import models

    if name == "params":
        dist = distributions.json_to_distribution(row.distribution_json)
        return row.trial_id, row.param_name, dist.to_external_repr(row.param_value), dist
    if name == "intermediate":
        value = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
            row.intermediate_value, row.intermediate_value_type)
        return row.trial_id, row.step, value
    return row.trial_id, row.key, json.loads(row.value_json)


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
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped
