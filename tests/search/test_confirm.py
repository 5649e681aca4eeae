"""`confirm` on real studies: the confirmation study, its runs on val and test, every bad input, and the rule
that a search never decodes the test split."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from how2sign.data import csv_path
from search.confirm import confirmation_name
from search.tiny_study import tiny_study_toml

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def cli(*args, cwd: Path, check: bool = True, timeout: int = 300, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    res = subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, env=env, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def assert_refused(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    text = res.stderr.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith("error: "), text
    for n in needles:
        assert n in text, text


@pytest.fixture(scope="module")
def searched(tmp_path_factory, fleet_corpus):
    """A finished tiny search on SQLite: 4 trials of 2 epochs (the anchor and 3 random ones)."""
    home = tmp_path_factory.mktemp("searched")
    data = home / "data"
    shutil.copytree(fleet_corpus, data)
    (home / "tiny.toml").write_text(tiny_study_toml("tiny", n_trials=4, epochs=2))
    url = f"sqlite:///{home / 's.db'}"
    cli("start", "--study", home / "tiny.toml", "--storage", url, "--data", data, "--workers", 2, cwd=home)
    return home, data, url


@pytest.fixture
def search_copy(searched, tmp_path):
    """A private copy of the finished search (database, checkpoints, data), so a test may confirm in it."""
    home, _, _ = searched
    for name in ("s.db", "data"):
        (shutil.copytree if (home / name).is_dir() else shutil.copy)(home / name, tmp_path / name)
    return tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 's.db'}"


def confirmation(url: str, study: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=confirmation_name(study), storage=url)


def test_confirm_runs_every_config_and_seed_on_val_and_test_once(search_copy):
    home, data, url = search_copy
    res = cli("confirm", "--study", "tiny", "--top", 2, "--seeds", 2, "--storage", url, "--data", data,
              "--workers", 2, cwd=home)
    assert "created: 3 configurations x 2 seeds" in res.stdout, res.stdout
    search = optuna.load_study(study_name="tiny", storage=url)
    runs = confirmation(url).get_trials()
    assert len(runs) == 6 and all(t.state == TrialState.COMPLETE for t in runs), [t.state for t in runs]
    stored = confirmation(url).user_attrs["confirm"]
    seeds = stored["seeds"]
    assert len(seeds) == 2 and 0 not in seeds  # fresh: the search trained every trial with seed 0
    by_trial = {t.number: t for t in search.trials}
    ranked = sorted((t for t in search.trials if not t.user_attrs["anchor"]), key=lambda t: t.value)[:2]
    assert [c["trial"] for c in stored["configs"]] == [t.number for t in ranked] + [0]
    pairs = sorted((t.user_attrs["confirms_trial"], t.user_attrs["seed"]) for t in runs)
    assert pairs == sorted((c["trial"], s) for c in stored["configs"] for s in seeds)
    for t in runs:
        source = by_trial[t.user_attrs["confirms_trial"]]
        assert {k: v for k, v in t.params.items() if k != "seed"} == source.params
        assert t.params["seed"] == t.user_attrs["seed"]
        assert t.user_attrs["anchor"] is source.user_attrs["anchor"]
        assert t.user_attrs["epochs_run"] == 2 and sorted(t.intermediate_values) == [1, 2]  # full budget
        for key in ("test_bleu", "test_chrf", "test_loss", "bleu", "chrf", "val_loss"):
            assert isinstance(t.user_attrs[key], float), key
        lines = (Path(t.user_attrs["checkpoint"]) / "test_translations.csv").read_text().splitlines()
        assert len(lines) == 1 + 8 and lines[0] == "row,reference,hypothesis"  # every test clip
    from search.confirmation import build_confirmation

    c = build_confirmation(search, confirmation(url))
    assert [r.trial for r in c.rows] == [0] + [t.number for t in ranked]  # one row per config, the anchor first
    assert all(r.seeds_done == 2 for r in c.rows) and c.progress.done
    assert "anchor V4" in res.stdout and "expected best val_loss" in res.stdout  # the table and the curve
    # Running it again continues the same study: nothing is enqueued twice.
    res = cli("confirm", "--study", "tiny", "--top", 2, "--seeds", 2, "--storage", url, "--data", data,
              "--workers", 0, cwd=home)
    assert "loaded" in res.stdout and len(confirmation(url).get_trials()) == 6


def test_a_confirm_killed_while_enqueueing_enqueues_the_rest_once_when_run_again(tmp_path, monkeypatch):
    """The study and its plan were stored and 4 of the 9 runs enqueued (as the code before runs carried their
    seed did), then the process died: the next call enqueues exactly the 5 pairs without a trial, the one
    after it nothing."""
    import tomllib

    from search.confirm import confirmation_spec, ensure_confirmation
    from search.confirmation import confirmation_progress
    from search.records import ConfirmConfig, ConfirmPlan
    from search.spec import parse
    from search.storage import enqueued_params
    from search.study import Opened
    from search.tiny_study import TINY_ANCHOR

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = parse(tomllib.loads(tiny_study_toml("tiny")), "tiny")
    parent = Opened(optuna.create_study(study_name="tiny", storage=url), spec, "ab" * 32, False, False, url)
    configs = (ConfirmConfig(3, False, {"dropout": 0.1, "lr": 1e-3}), ConfirmConfig(5, False, {"dropout": 0.2, "lr": 2e-3}),
               ConfirmConfig(0, True, dict(TINY_ANCHOR)))
    plan = ConfirmPlan("tiny", 2, (1, 2, 3), configs)
    cspec = confirmation_spec(spec, plan, 4, "cd" * 32)
    real = optuna.Study.enqueue_trial

    def killed_after_four(self, params, user_attrs=None, **kw):
        if len(self.get_trials(deepcopy=False)) == 4:
            raise KeyboardInterrupt
        return real(self, params, user_attrs={k: v for k, v in (user_attrs or {}).items() if k != "seed"}, **kw)

    monkeypatch.setattr(optuna.Study, "enqueue_trial", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        ensure_confirmation(url, parent, cspec, plan)
    monkeypatch.setattr(optuna.Study, "enqueue_trial", real)
    progress = confirmation_progress(confirmation(url))
    assert (progress.waiting, progress.missing) == (4, 5)  # the old runs' seeds are read from their params
    opened, enqueued = ensure_confirmation(url, parent, cspec, plan)
    assert not opened.created and enqueued == 5
    runs = confirmation(url).get_trials()
    pairs = sorted((t.user_attrs["confirms_trial"], enqueued_params(t)["seed"]) for t in runs)
    assert pairs == sorted((c.trial, s) for c in configs for s in plan.seeds)  # every pair, once
    by_trial = {c.trial: c for c in configs}
    for t in runs:
        c = by_trial[t.user_attrs["confirms_trial"]]
        assert {k: v for k, v in enqueued_params(t).items() if k != "seed"} == c.params
        assert t.user_attrs["anchor"] is c.anchor and t.user_attrs.get("anchor_name") == ("v4" if c.anchor else None)
    assert ensure_confirmation(url, parent, cspec, plan)[1] == 0 and len(confirmation(url).get_trials()) == 9
    assert confirmation_progress(confirmation(url)).waiting == 9


def test_bad_inputs_are_one_line_and_change_nothing(search_copy, tmp_path_factory):
    home, data, url = search_copy
    for flag in ("--top", "--seeds", "--beam"):
        assert_refused(cli("confirm", "--study", "tiny", flag, 0, "--storage", url, "--data", data, cwd=home,
                           check=False), f"{flag} must be >= 1")
    other = tmp_path_factory.mktemp("other") / "data"
    from how2sign.synthetic import write_corpus

    write_corpus(other, train=20, val=6, test=6, seed=5)
    assert_refused(cli("confirm", "--study", "tiny", "--storage", url, "--data", other, cwd=home, check=False),
                   "fingerprint")
    no_test = home / "no-test"
    shutil.copytree(data, no_test)
    csv_path(no_test, "test").unlink()
    assert_refused(cli("confirm", "--study", "tiny", "--storage", url, "--data", no_test, cwd=home, check=False),
                   "no test split", str(csv_path(no_test, "test")))
    assert confirmation_name("tiny") not in [s.study_name for s in optuna.get_all_study_summaries(url)]

    cli("confirm", "--study", "tiny", "--top", 1, "--seeds", 1, "--storage", url, "--data", data, "--workers", 0,
        cwd=home)
    from search.records import StudyRecord

    assert StudyRecord.read(confirmation(url)).spec["confirm"]["beam"] == 4  # the default: beam search
    before = [(t.number, t.state, t.params) for t in confirmation(url).get_trials()]
    for args, needle, differ in ((("--top", 2, "--seeds", 1), "--top 1 there, 2 asked", 2),  # and so the trials
                                 (("--top", 1, "--seeds", 2), "seeds [1] there, [1, 2] now", 1),
                                 (("--top", 1, "--seeds", 1, "--beam", 1), "--beam 4 there, 1 asked", 1)):
        res = cli("confirm", "--study", "tiny", *args, "--storage", url, "--data", data, "--workers", 0, cwd=home,
                  check=False)
        assert_refused(res, "already exists", needle, "nothing was changed", "run confirm with the same --top")
        assert res.stderr.count(" there, ") == differ, res.stderr
    # The search gains a trial better than every other: the same flags now select other configs.
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    search = optuna.load_study(study_name="tiny", storage=url)
    had = [c["trial"] for c in confirmation(url).user_attrs["confirm"]["configs"]]
    search.add_trial(create_trial(state=TrialState.COMPLETE, value=1e-3, params={"dropout": 0.05, "lr": 1e-3},
                                  distributions={"dropout": FloatDistribution(0.0, 0.5),
                                                 "lr": FloatDistribution(1e-4, 3e-3, log=True)},
                                  user_attrs={"anchor": False, "seed": 0}))
    new = len(search.trials) - 1
    res = cli("confirm", "--study", "tiny", "--top", 1, "--seeds", 1, "--storage", url, "--data", data,
              "--workers", 0, cwd=home, check=False)
    assert_refused(res, "already exists", f"trials {had} there, {[new, 0]} now", "nothing was changed",
                   "the search has changed", f"h2s-search worker --study tiny.confirm --storage {url}")
    assert res.stderr.count(" there, ") == 1
    assert [(t.number, t.state, t.params) for t in confirmation(url).get_trials()] == before


def test_a_study_with_no_complete_trial_cannot_be_confirmed(tmp_path, fleet_corpus):
    data = tmp_path / "data"
    shutil.copytree(fleet_corpus, data)
    (tmp_path / "t.toml").write_text(tiny_study_toml("fresh", n_trials=2, epochs=1))
    url = f"sqlite:///{tmp_path / 's.db'}"
    cli("start", "--study", tmp_path / "t.toml", "--storage", url, "--data", data, "--workers", 0, cwd=tmp_path)
    assert_refused(cli("confirm", "--study", "fresh", "--storage", url, "--data", data, cwd=tmp_path, check=False),
                   "no COMPLETE trial")
    assert_refused(cli("confirm", "--study", "missing", "--storage", url, "--data", data, cwd=tmp_path,
                       check=False), "no study 'missing'")


def test_only_a_confirmation_run_decodes_the_test_split(search_copy):
    """What the evaluator is asked for: val in a search trial; val and then test in a confirmation run."""
    from how2sign.evaluate import evaluate_checkpoint
    from search.confirm import run_confirm
    from search.worker import WorkerSettings, run_worker

    home, data, url = search_copy
    asked: list[tuple[str, str]] = []

    def recording(study: str):
        def evaluate(path, root, split="val", **kw):
            asked.append((study, split))
            return evaluate_checkpoint(path, root, split, **kw)
        return evaluate

    optuna.load_study(study_name="tiny", storage=url).set_user_attr("n_trials", 5)  # one more search trial
    settings = WorkerSettings(study="tiny", storage=url, data_root=data, device="cpu", checkpoint_dir=home / "ck",
                              artifact_dir=home / "art")
    assert run_worker(settings, log=lambda _m: None, evaluate=recording("tiny")).ran == 1
    run_confirm("tiny", top=1, seeds=1, storage=url, data=data, workers=0, devices=None, workers_per_device=None,
                beam=1, checkpoint_dir=None, artifact_dir=None, say=lambda _m: None)
    settings = WorkerSettings(study="tiny.confirm", storage=url, data_root=data, device="cpu",
                              checkpoint_dir=home / "ck", artifact_dir=home / "art")
    assert run_worker(settings, log=lambda _m: None, evaluate=recording("tiny.confirm")).ran == 2
    assert asked == [("tiny", "val")] + [("tiny.confirm", "val"), ("tiny.confirm", "test")] * 2


def test_a_confirm_killed_before_its_selection_was_stored_is_completed_when_run_again(tmp_path):
    """The study was created and the process died before its attributes were all written (no selection, no
    run): the next call stores the definition and enqueues every run, the one after it nothing."""
    import tomllib

    from search.confirm import confirmation_spec, ensure_confirmation
    from search.records import ConfirmConfig, ConfirmPlan, StudyRecord
    from search.spec import parse
    from search.study import Opened
    from search.tiny_study import TINY_ANCHOR

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = parse(tomllib.loads(tiny_study_toml("tiny")), "tiny")
    parent = Opened(optuna.create_study(study_name="tiny", storage=url), spec, "ab" * 32, False, False, url)
    plan = ConfirmPlan("tiny", 1, (1, 2), (ConfirmConfig(3, False, {"dropout": 0.1, "lr": 1e-3}),
                                           ConfirmConfig(0, True, dict(TINY_ANCHOR))))
    cspec = confirmation_spec(spec, plan, 4, "cd" * 32)
    half = optuna.create_study(study_name=cspec.name, storage=url)
    half.set_user_attr("spec", cspec.raw)  # killed after the first attribute
    opened, enqueued = ensure_confirmation(url, parent, cspec, plan)
    assert not opened.created and enqueued == 4
    record = StudyRecord.read(confirmation(url))
    assert record.fingerprint == "ab" * 32 and record.confirm == plan.attr()
    assert ensure_confirmation(url, parent, cspec, plan)[1] == 0 and len(confirmation(url).get_trials()) == 4
