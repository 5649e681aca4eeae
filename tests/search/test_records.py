"""The record schema: TrialRecord and StudyRecord, and that no other module spells a stored attribute name."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest

from search.records import UNSET, StudyRecord, TrialRecord, stored_names, study_stored_names

ROOT = Path(__file__).resolve().parents[2]


def test_trial_record_writes_set_fields_under_their_stored_names():
    record = TrialRecord(n_params=123, val_loss=math.nan, gap=math.inf, verdict="learning", fail_reason=None)
    assert record.attrs() == {"params": 123, "val_loss": None, "gap": None, "verdict": "learning",
                              "fail_reason": None}
    assert record.bleu is UNSET and record.get("bleu") is None
    study = optuna.create_study()
    trial = study.ask()
    record.write(trial)
    TrialRecord(bleu=1.5).write(trial)  # a later write leaves the earlier fields alone
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert frozen.user_attrs == {**record.attrs(), "bleu": 1.5}
    back = TrialRecord.read(frozen)
    assert (back.n_params, back.val_loss, back.bleu, back.chrf) == (123, None, 1.5, None)


def test_study_record_round_trip_stores_the_budget_as_n_trials():
    study = optuna.create_study()
    StudyRecord(spec={"name": "x"}, fingerprint="ab" * 32, budget=7, data="corpus").write(study)
    assert study.user_attrs == {"spec": {"name": "x"}, "fingerprint": "ab" * 32, "n_trials": 7, "data": "corpus"}
    StudyRecord(budget=9).write(study)
    r = StudyRecord.read(study)
    assert (r.spec, r.budget, r.data, r.anchor_note) == ({"name": "x"}, 9, "corpus", None)


def test_stored_names_are_unique_and_keep_the_documented_names():
    names = stored_names()
    assert len(set(names)) == len(names)
    assert {"params", "epochs_run", "seconds", "seconds_train", "seconds_validate", "seconds_evaluate",
            "seconds_other", "fail_reason", "anchor", "confirms_trial", "test_bleu", "test_chrf",
            "test_loss", "seed"} <= set(names)
    assert "n_params" not in names
    assert set(study_stored_names()) == {"spec", "fingerprint", "n_trials", "data", "h2s_version",
                                         "optuna_version", "anchor_note", "slurm_arrays", "confirm"}


# Access to user attributes by a literal name, anywhere: user_attrs["x"], user_attrs.get("x"), set_user_attr("x".
LITERAL_ACCESS = re.compile(r"""(user_attrs\s*(\.get\s*\(|\[)|set_user_attr\s*\(|user_attrs\s*=\s*\{)\s*['"]""")


_NAMES = "|".join(sorted(map(re.escape, {*stored_names(), *study_stored_names()}), key=len, reverse=True))
QUOTED_NAME = re.compile(rf"""['"]({_NAMES})['"]""")


def spells_a_name(line: str) -> bool:
    return bool(LITERAL_ACCESS.search(line) or ("attr" in line.lower() and QUOTED_NAME.search(line)))


def offending_lines() -> list[str]:
    """Lines outside records.py that spell a stored attribute name where user attributes are handled."""
    bad = []
    for path in sorted([*ROOT.joinpath("search").rglob("*.py"), *ROOT.joinpath("how2sign").rglob("*.py")]):
        if path.name == "records.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if spells_a_name(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return bad


def test_only_records_py_spells_the_stored_attribute_names():
    assert offending_lines() == []


@pytest.mark.parametrize("line", ['x = t.user_attrs.get("val_loss")', "t.user_attrs['anchor']",
                                  'trial.set_user_attr("epochs_run", 3)', 'set_user_attrs(trial, {"bleu": b})',
                                  'study.enqueue_trial(p, user_attrs={"anchor": True})'])
def test_the_spelling_check_catches_literal_attribute_access(line):
    assert spells_a_name(line)


def test_the_spelling_check_lets_other_strings_be():
    assert not spells_a_name('METRICS = ("val_loss", "params", "bleu", "chrf", "gap")')
