"""The contract with Optuna's internals (search/storage/_optuna.py): the exact shape of every private name
the adapter relies on, the exceptions it recognises (each provoked for real), the tested version range,
and that no other module reaches a private Optuna name. Run first after an Optuna upgrade; `.ci/run` also
runs this file against the oldest Optuna in the tested range.

It imports only optuna and search.storage (no torch), so that a bare environment with another Optuna
version can run it: `python -m pytest --confcutdir=tests/search tests/search/test_optuna_adapter.py`.
"""

from __future__ import annotations

import ast
import inspect
import pickle
import re
import subprocess
import sys
import threading
import tomllib
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.storage import _optuna as adapter
from search.storage import open_storage, reconnecting_methods

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _params(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'a.db'}"


# --------------------------------------------------------------------------- the version range
def test_pyproject_pins_the_tested_range_and_the_installed_optuna_is_in_it():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(Requirement(d).specifier for d in deps if Requirement(d).name == "optuna")
    (first_major, first_minor), (last_major, last_minor) = adapter.TESTED_OPTUNA[0], adapter.TESTED_OPTUNA[-1]
    assert spec == SpecifierSet(f">={first_major}.{first_minor},<{last_major}.{last_minor + 1}")
    assert adapter.version_note(optuna.__version__) is None, (
        f"Optuna {optuna.__version__} is not in TESTED_OPTUNA: run this file; if it passes, add the version "
        "to TESTED_OPTUNA and pyproject.toml")


@pytest.mark.parametrize("version, outside", [("5.0.0", False), ("5.1.3", False), ("5.1.0rc1", False),
                                              ("5.2.0", True), ("4.9.0", True), ("6.0.0", True), ("dev", True)])
def test_a_version_outside_the_tested_range_gets_one_line(version, outside):
    note = adapter.version_note(version)
    assert (note is not None) == outside
    if outside:
        assert "\n" not in note and f"Optuna {version}" in note and "5.0 and 5.1" in note
        assert "optuna>=5.0,<5.2" in note


def test_the_version_line_is_said_once_per_process(tmp_path):
    code = ("import optuna; optuna.__version__ = '5.2.0'\n"
            "import importlib, search.storage as s\n"
            "import search.storage._optuna\n"
            f"st = s.open_storage('sqlite:///{tmp_path / 'v.db'}', heartbeat=False, cache=True)\n"
            "importlib.import_module('search.storage._optuna'); s.FleetCachedStorage\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Optuna 5.2.0 is installed"), res.stderr


# --------------------------------------------------------------------------- the cached storage
def test_optunas_cached_storage_has_the_shape_the_adapter_relies_on(sqlite_url):
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    info = _StudyInfo()
    assert (info.trials, info.unfinished_trial_ids, info.last_finished_trial_id) == ({}, set(), -1)
    rdb = RDBStorage(sqlite_url)
    cached = _CachedStorage(rdb)
    assert cached._backend is rdb and isinstance(cached._lock, type(threading.Lock()))
    assert cached._studies == {} and cached._trial_id_to_study_id_and_number == {}
    assert _params(_CachedStorage._get_cached_trial) == [("self", inspect.Parameter.empty),
                                                         ("trial_id", inspect.Parameter.empty)]
    assert [n for n, _ in _params(_CachedStorage._add_trials_to_cache)] == ["self", "study_id", "trials"]
    assert [n for n, _ in _params(_CachedStorage._read_trials_from_remote_storage)] == ["self", "study_id"]
    assert isinstance(pickle.loads(pickle.dumps(cached))._lock, type(threading.Lock()))
    rdb.engine.dispose()


def test_the_cached_storage_base_sees_what_optuna_cached(sqlite_url):
    """Optuna's re-read goes through `refresh`; the study's cache reads as `StudyInfo` says."""

    class Counting(adapter.CachedStorageBase):
        refreshed = 0

        def refresh(self, study_id):
            self.refreshed += 1
            super().refresh(study_id)

    rdb = RDBStorage(sqlite_url)
    storage = Counting(rdb)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    running = study.ask()
    before = storage.refreshed
    trials = study.get_trials()
    assert storage.refreshed == before + 1 and len(trials) == 4
    sid, rid = adapter.study_id_of(study), adapter.trial_id_of(running)
    info = storage.study_info(sid)
    assert info.unfinished_trial_ids == {rid} and sorted(info.trials) == [0, 1, 2, 3]
    assert info.last_finished_trial_id == max(adapter.trial_id_of(t) for t in trials[:3])
    assert storage.trial_location(rid) == (sid, 3) and storage.trial_location(10 ** 6) is None
    assert storage.cached_trial(rid) is None  # running: not final
    assert storage.cached_trial(adapter.trial_id_of(trials[0])).state == TrialState.COMPLETE
    assert storage.backend is rdb and storage.study_info(sid + 99) is None
    with storage.lock:
        pass
    rdb.engine.dispose()


def test_a_backend_is_called_privately_only_where_the_adapter_retries():
    """Optuna's cached storage and fail_stale_trials call private methods of a backend: each must retry a
    lost connection, so the adapter spells each one; a new one in an upgrade fails here."""
    from optuna.storages import _cached_storage, _heartbeat

    called = set(re.findall(r"self\._backend\.(_\w+)\(", inspect.getsource(_cached_storage)))
    assert called == set(adapter.BACKEND_PRIVATE_CALLS)
    assert re.findall(r"storage\.(_\w+)\(", inspect.getsource(_heartbeat.fail_stale_trials)) == [
        "_get_stale_trial_ids"]
    retried = set(reconnecting_methods(adapter.RDBStorageBase))
    assert set(adapter.BACKEND_PRIVATE_CALLS) <= retried
    for name in adapter.BACKEND_PRIVATE_CALLS:
        assert _params(getattr(adapter.RDBStorageBase, name)) == _params(getattr(RDBStorage, name)), name


# --------------------------------------------------------------------------- the RDB storage
def test_rdb_storage_private_steps_have_the_signatures_overridden():
    from optuna.storages._rdb.storage import _create_scoped_session

    assert [n for n, _ in _params(RDBStorage._get_prepared_new_trial)] == [
        "self", "study_id", "template_trial", "session"]
    assert [n for n, _ in _params(RDBStorage._set_trial_attr_without_commit)] == [
        "self", "session", "model_cls", "trial_id", "key", "value"]
    assert _params(_create_scoped_session) == [("scoped_session", inspect.Parameter.empty),
                                               ("ignore_integrity_error", False)]


@pytest.fixture
def most_connections_at_once():
    """Counts the connections checked out of every SQLAlchemy pool at once; `()` gives the peak and resets."""
    import sqlalchemy
    from sqlalchemy.pool import Pool

    now, peak = [0], [0]

    def out(*_):
        now[0] += 1
        peak[0] = max(peak[0], now[0])

    def back(*_):
        now[0] -= 1

    sqlalchemy.event.listen(Pool, "checkout", out)
    sqlalchemy.event.listen(Pool, "checkin", back)

    def read() -> int:
        most, peak[0] = peak[0], now[0]
        return most

    yield read
    sqlalchemy.event.remove(Pool, "checkout", out)
    sqlalchemy.event.remove(Pool, "checkin", back)


def test_opening_set_up_tables_holds_one_connection_at_a_time_where_optunas_check_holds_two(
        sqlite_url, most_connections_at_once):
    """Optuna's schema check reads the revision on a second connection inside a transaction on the first (behind
    a transaction pooler: two server connections at once per storage opening); `check_schema` reads it alone
    and leaves only tables at another revision to Optuna's check. Setting up an empty database's tables still
    holds two (Optuna's alembic setup), once."""
    assert [n for n, _ in _params(RDBStorage.__init__)][:4] == ["self", "url", "engine_kwargs",
                                                                 "skip_compatibility_check"]
    manager = RDBStorage(sqlite_url)._version_manager
    for name in ("get_current_version", "get_head_version", "check_table_schema_compatibility"):
        assert callable(getattr(manager, name)), name
    manager.engine.dispose()
    most_connections_at_once()
    plain = RDBStorage(sqlite_url)
    assert most_connections_at_once() == 2
    ours = open_storage(sqlite_url, heartbeat=False)
    assert most_connections_at_once() == 1
    assert not ours.skip_compatibility_check
    for s in (plain, ours):
        s.engine.dispose()


def test_every_storage_call_retries_a_lost_connection_with_optunas_signature():
    from search.storage import FleetBackend, ReconnectingRDBStorage

    public = {n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
    public -= {"remove_session", "check_trial_is_updatable"}  # no database
    public |= {"record_heartbeat"}
    ours = {n for n in dir(FleetBackend) if not n.startswith("_")} - {"limit_new_trials"}  # no database
    retried = set(reconnecting_methods(ReconnectingRDBStorage))
    assert public | ours | set(adapter.BACKEND_PRIVATE_CALLS) <= retried, sorted((public | ours) - retried)
    for name in public:
        assert _params(getattr(ReconnectingRDBStorage, name)) == _params(getattr(RDBStorage, name)), name


def test_the_rdb_hooks_run_where_optuna_does_the_steps(sqlite_url):
    seen: list[tuple] = []

    class Hooked(adapter.RDBStorageBase):
        def check_new_trial(self, study_id, template_trial, session):
            seen.append(("new", template_trial is None))

        def write_trial_attrs(self, session, model, trial_id, attrs):
            seen.append((model.__tablename__, dict(attrs)))
            super().write_trial_attrs(session, model, trial_id, attrs)

    storage = Hooked(sqlite_url)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.5}, user_attrs={"a": 1})
    trial = study.ask()
    trial.set_user_attr("b", 2)
    assert seen[0] == ("new", False) and ("trial_user_attributes", {"a": 1}) in seen
    assert ("trial_system_attributes", {"fixed_params": {"x": 0.5}}) in seen
    assert seen[-1] == ("trial_user_attributes", {"b": 2})
    storage.create_new_trial(adapter.study_id_of(study))
    assert seen[-1] == ("new", True)
    assert storage.get_trial(adapter.trial_id_of(trial)).user_attrs == {"a": 1, "b": 2}
    with storage.session() as session:
        assert session.query(adapter.models.TrialModel).count() == 2
    storage.engine.dispose()


def test_the_orm_models_have_the_tables_and_columns_the_narrow_read_uses():
    m = adapter.models
    tables = {model.__tablename__: set(model.__table__.c.keys()) for model in (
        m.TrialModel, m.TrialParamModel, m.TrialIntermediateValueModel, m.TrialUserAttributeModel,
        m.TrialSystemAttributeModel, m.TrialValueModel, m.StudyUserAttributeModel)}
    assert tables == {
        "trials": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
        "trial_params": {"param_id", "trial_id", "param_name", "param_value", "distribution_json"},
        "trial_intermediate_values": {"trial_intermediate_value_id", "trial_id", "step", "intermediate_value",
                                      "intermediate_value_type"},
        "trial_user_attributes": {"trial_user_attribute_id", "trial_id", "key", "value_json"},
        "trial_system_attributes": {"trial_system_attribute_id", "trial_id", "key", "value_json"},
        "trial_values": {"trial_value_id", "trial_id", "objective", "value", "value_type"},
        "study_user_attributes": {"study_user_attribute_id", "study_id", "key", "value_json"}}
    assert adapter.TRIAL_START.expression.name == "datetime_start"
    assert adapter.TRIAL_COMPLETE.expression.name == "datetime_complete"
    for name in ("intermediate_value_to_stored_repr", "stored_repr_to_intermediate_value",
                 "TrialIntermediateValueType"):
        assert hasattr(m.TrialIntermediateValueModel, name), name
    assert hasattr(m.TrialValueModel, "stored_repr_to_value") and hasattr(m.TrialValueModel, "TrialValueType")
    assert _params(m.TrialModel.find_or_raise_by_id)[:2] == [("trial_id", inspect.Parameter.empty),
                                                             ("session", inspect.Parameter.empty)]


def test_stored_times_are_naive_utc_and_read_as_local_time(sqlite_url):
    from search.storage._narrow import local_time

    storage = open_storage(sqlite_url, heartbeat=False)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: 1.0, n_trials=1)
    with storage.session() as session:
        start, complete = session.query(adapter.TRIAL_START, adapter.TRIAL_COMPLETE).one()
    frozen = study.trials[0]
    assert start.tzinfo is None and local_time(start) == frozen.datetime_start
    assert local_time(complete) == frozen.datetime_complete
    storage.engine.dispose()


# --------------------------------------------------------------------------- Study, Trial, pruner
def test_private_attributes_of_study_and_trial():
    study = optuna.create_study(study_name="p")
    trial = study.ask()
    trial.set_user_attr("k", 1)
    storage = adapter.study_storage(study)
    sid = storage.get_study_id_from_name("p")
    assert adapter.study_id_of(study) == sid and trial.storage is storage
    assert adapter.trial_id_of(trial) == storage.get_trial_id_from_study_id_trial_number(sid, 0)
    assert adapter.frozen_trial_of(trial).user_attrs == {"k": 1}
    study.tell(trial, 1.0)
    assert adapter.trial_id_of(study.trials[0]) == adapter.trial_id_of(trial)
    assert adapter.backend_of(storage) is None  # in-memory: no cache around it


def test_a_study_puts_optunas_cache_around_an_rdb_storage(sqlite_url):
    rdb = RDBStorage(sqlite_url)
    study = optuna.create_study(storage=rdb)
    assert adapter.backend_of(adapter.study_storage(study)) is rdb
    rdb.engine.dispose()


def _replay(pruner, name: str, n: int = 40) -> list:
    """A study replayed 6 trials at a time, each reporting 9 steps; every prune decision."""
    study = optuna.create_study(study_name=name, pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        study.enqueue_trial({"x": (i * 7 % n) / n})
    decisions, live, started = [], [], 0
    while started < n or live:
        while len(live) < 6 and started < n:
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
            if pruned or step == 9:
                study.tell(t, state=TrialState.PRUNED) if pruned else study.tell(t, t.params["x"])
                live.remove(entry)
    return decisions


def test_our_hyperband_decides_and_brackets_as_optunas():
    """HyperbandPruner only remembers each trial's bracket: the same brackets, the same decisions as
    Optuna's, including when one pruner is handed a second study."""

    def make(cls):
        return cls(min_resource=1, max_resource=9, reduction_factor=3)

    reference = make(optuna.pruners.HyperbandPruner)
    assert reference._pruners == [] and _params(reference._get_bracket_id) == [
        ("study", inspect.Parameter.empty), ("trial", inspect.Parameter.empty)]
    ours = make(adapter.HyperbandPruner)
    for name in ("first", "second"):
        expected = _replay(make(optuna.pruners.HyperbandPruner), name)
        assert sum(p for *_, p in expected) >= 3 and _replay(ours, name) == expected
        reference = make(optuna.pruners.HyperbandPruner)
        reference._try_initialization(None)  # a fixed max_resource: the brackets need no study
        assert len(reference._pruners) == 3
        study = SimpleNamespace(study_name=name)
        assert [ours.bracket_of(study, SimpleNamespace(number=i)) for i in range(200)] == [
            reference._get_bracket_id(study, SimpleNamespace(number=i)) for i in range(200)]


def test_retry_history_is_where_optunas_retry_callback_lists_the_retried_trials():
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.system_attrs[adapter.RETRY_HISTORY] == [0]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]


def test_enqueued_params_are_where_enqueue_trial_keeps_them_and_a_retry_carries_them():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.5, "seed": 3})
    study.ask()  # takes it: the params are still only the enqueued ones until a suggest reads them
    assert adapter.enqueued_params(study.trials[0]) == {"x": 1.5, "seed": 3}
    study.tell(0, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    assert study.trials[1].state == TrialState.WAITING
    assert adapter.enqueued_params(study.trials[1]) == {"x": 1.5, "seed": 3}
    assert adapter.enqueued_params(optuna.create_study().ask().study.trials[0]) == {}


# --------------------------------------------------------------------------- "finished under us"
def test_a_write_to_a_finished_trial_is_recognised_by_type():
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError) as caught:
        adapter.study_storage(study).set_trial_user_attr(adapter.trial_id_of(trial), "k", 1)
    assert adapter.finished_elsewhere(caught.value)


def test_optunas_cannot_tell_a_finished_trial_is_recognised():
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(ValueError) as caught:
        study.tell(trial, 1.0)
    assert str(caught.value).startswith("Cannot tell a FAIL trial")
    assert adapter.finished_elsewhere(caught.value)
    assert not adapter.finished_elsewhere(ValueError("Cannot cast"))


def test_optunas_should_not_reach_after_a_trial_failed_under_us_is_recognised():
    """The objective succeeds, but another process failed the trial meanwhile: study.optimize ends in
    Optuna's AssertionError("Should not reach."), raised while its ValueError("Cannot tell a ...") goes by."""
    study = optuna.create_study()

    def objective(trial):
        adapter.study_storage(study).set_trial_state_values(adapter.trial_id_of(trial), TrialState.FAIL)
        return 1.0

    with warnings.catch_warnings(), pytest.raises(AssertionError) as caught:
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=1)
    assert str(caught.value) == "Should not reach."
    assert adapter.finished_elsewhere(caught.value.__context__)
    assert adapter.finished_elsewhere(caught.value)
    assert not adapter.finished_elsewhere(AssertionError("x > 0"))


@pytest.mark.parametrize("revision", ["older", "unknown"])
def test_optunas_refusal_of_another_versions_tables_is_recognised(sqlite_url, revision):
    """Optuna's schema check, when a storage opens on tables another Optuna set up (an older known revision:
    "upgrade the storage"; an unknown one: "update optuna"), raises a bare RuntimeError that only its text
    tells apart; no module but the adapter spells that text."""
    import sqlalchemy

    first = RDBStorage(sqlite_url)
    older = first._version_manager.get_all_versions()[-1]  # the oldest revision this Optuna knows
    with first.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :v"),
                     {"v": older if revision == "older" else "h2s-no-such-revision"})
    first.engine.dispose()
    with pytest.raises(RuntimeError) as caught:
        RDBStorage(sqlite_url)
    assert adapter.incompatible_schema(caught.value), caught.value
    assert not adapter.incompatible_schema(RuntimeError("something else")), caught.value
    assert not adapter.incompatible_schema(ValueError(str(caught.value)))
    spelled = [p for p in ROOT.glob("search/**/*.py") if adapter._SCHEMA_REFUSAL in p.read_text()]
    assert spelled == [ROOT / "search" / "storage" / "_optuna.py"]


# --------------------------------------------------------------------------- a smoke of our storage
def test_our_storage_runs_a_pruned_study_and_pickles(sqlite_url):
    """What the contract is for, end to end on SQLite: the fleet cache's narrow reads and one-statement
    writes, the budget, Hyperband and enqueueing, and a copy by pickle (as `start` and the suite use)."""
    from search.storage import BudgetSpent, set_user_attrs

    storage = open_storage(sqlite_url, heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="smoke", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=adapter.HyperbandPruner(min_resource=1, max_resource=4))
    study.set_user_attr("n", 7)
    storage.limit_new_trials("n")
    study.enqueue_trial({"x": 0.5}, user_attrs={"anchor": True})

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        set_user_attrs(trial, {"host": "h", "seed": trial.number})
        for step in range(1, 5):
            trial.report(x + 1 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=6)
    with pytest.raises(BudgetSpent):
        study.optimize(objective, n_trials=3)  # the 7th goes in, the 8th is refused
    trials = study.get_trials()
    assert len(trials) == 7 and trials[0].params == {"x": 0.5} and trials[0].user_attrs["anchor"] is True
    assert all(t.user_attrs["seed"] == t.number for t in trials) and all(t.state.is_finished() for t in trials)
    copy = pickle.loads(pickle.dumps(storage))
    again = optuna.load_study(study_name="smoke", storage=copy)
    assert [(t.number, t.state, t.params, t.intermediate_values, t.user_attrs) for t in again.trials] == [
        (t.number, t.state, t.params, t.intermediate_values, t.user_attrs) for t in trials]
    for s in (storage, copy):
        s.backend.engine.dispose()


# --------------------------------------------------------------------------- nobody else reaches in
def _optuna_private_names() -> set[str]:
    """Private names on the Optuna objects the service handles: storages, study, trials, pruner, models."""
    from optuna.storages._cached_storage import _CachedStorage

    study = optuna.create_study(pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9))
    trial = study.ask()
    study.tell(trial, 1.0)
    running = study.ask()
    rdb = RDBStorage("sqlite:///:memory:")
    objects = [study, running, study.trials[0], rdb, _CachedStorage(rdb), study.pruner, adapter.models.TrialModel]
    names = set()
    for obj in objects:
        names |= {n for n in set(dir(obj)) | set(getattr(obj, "__dict__", {})) if n.startswith("_")}
    return {n for n in names if not n.startswith("__")}


def test_no_module_but_the_adapter_reaches_a_private_optuna_name():
    """The issue's grep (`optuna.x._y` or `._name` in search/), made exact: no module of search/ or
    benchmarks/ except search/storage/_optuna.py imports from a private Optuna module or a private name
    from Optuna, or reads a private attribute that Optuna's objects have."""
    private = _optuna_private_names()
    assert {"_storage", "_study_id", "_trial_id", "_backend", "_get_bracket_id", "_pruners"} <= private
    found = []
    for path in sorted([*ROOT.glob("search/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        if path == ROOT / "search" / "storage" / "_optuna.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
                if any(part.startswith("_") for part in node.module.split(".")) or any(
                        a.name.startswith("_") for a in node.names):
                    found.append(f"{where} from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names
                          if a.name.startswith("optuna.") and "._" in a.name]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{where} .{node.attr}")
    assert found == [], found
