"""study.py in-process on SQLite: the budget gate and its admissions, the study record, the anchor."""

from __future__ import annotations

import tomllib

import optuna
import pytest

from search.records import StudyRecord, TrialRecord
from search.spec import parse
from search.storage import BudgetSpent
from search.study import BudgetGate, anchor_trials, create_or_load

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

STUDY = """
name = "gate"
n_trials = 2
[train]
d_model = 32
nhead = 4
epochs = 1
[space]
dropout = { type = "float", low = 0.0, high = 0.3 }
[anchor]
name = "v4"
params = { dropout = 0.1 }
"""


@pytest.fixture
def opened(tmp_path):
    spec = parse(tomllib.loads(STUDY), "gate.toml")
    return create_or_load(f"sqlite:///{tmp_path / 's.db'}", spec, "f" * 64, "the data")


def test_create_or_load_writes_the_study_record_and_enqueues_the_anchor_once(opened):
    r = StudyRecord.read(opened.study)
    assert (r.spec["name"], r.fingerprint, r.budget, r.data) == ("gate", "f" * 64, 2, "the data")
    assert r.h2s_version and r.optuna_version and "v4" in r.anchor_note
    again = create_or_load(opened.url, opened.spec, "f" * 64, n_trials=5)
    assert not again.created and not again.anchor_enqueued
    assert StudyRecord.read(again.study).budget == 5
    (anchor,) = anchor_trials(again.study)
    assert TrialRecord.read(anchor).anchor_name == "v4"


def test_the_gate_admits_exactly_the_budget(opened):
    gate = BudgetGate(opened)
    admitted = []
    for _ in range(3):
        if not gate.enter():
            break
        trial = opened.study.ask()  # what optimize does: create (or pop) the trial
        opened.study.tell(trial, 1.0)
        admitted.append(trial.number)
    assert admitted == [0, 1] and not gate.enter()


def test_the_stored_budget_wins_over_the_study_file(opened):
    StudyRecord(budget=1).write(opened.study)
    gate = BudgetGate(opened)
    assert gate.budget() == 1
    assert gate.enter()
    opened.study.tell(opened.study.ask(), 1.0)
    assert not gate.enter()


def test_the_storage_refuses_a_new_trial_beyond_the_budget_but_not_a_queued_one(opened):
    """The exact check: inside Optuna's trial creation, whatever the gate's cached view said."""
    BudgetGate(opened)  # limits new trials to the stored budget (2: the queued anchor and one more)
    study = opened.study
    study.tell(study.ask(), 1.0)  # pops the anchor
    study.tell(study.ask(), 2.0)  # creates trial 1
    with pytest.raises(BudgetSpent):
        study.ask()
    assert len(study.get_trials()) == 2
    study.enqueue_trial({"dropout": 0.2})  # asked for explicitly: never refused
    assert study.ask().number == 2
    StudyRecord(budget=5).write(study)  # a raised budget is seen at once
    assert study.ask().number == 3


def test_the_gate_needs_a_storage_that_limits_new_trials(opened):
    """The exact budget check is not optional: a storage without it is refused, not silently skipped."""
    from search.storage import TrialBudget, study_storage
    from search.study import Opened

    assert isinstance(study_storage(opened.study), TrialBudget)
    plain = Opened(optuna.create_study(), opened.spec, "f" * 64, False, False, "sqlite://")
    with pytest.raises(TypeError, match="TrialBudget, got InMemoryStorage"):
        BudgetGate(plain)


def test_the_anchor_is_recognised_from_its_record():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs=TrialRecord(anchor=True, anchor_name="v4").attrs())
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=2)
    assert [t.number for t in anchor_trials(study)] == [0]
