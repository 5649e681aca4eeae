"""The search service on real SQLite files with real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.spec import load_spec
from search.study import build_pruner, create_or_load, load_stored

ATTRS = {"anchor", "params", "epochs_run", "best_epoch", "train_loss", "val_loss", "gap", "device", "host",
         "seconds", "frames_per_second", "resumed_from_epoch", "fail_reason", "checkpoint", "seed", "h2s_version",
         "torch_version", "optuna_version"}
QUALITY = {"bleu", "chrf", "vocab_coverage", "repetition_rate", "verdict"}


def cli(*args, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, env=env, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def trials(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_start_runs_the_study_and_records_everything(corpus, write_study, tmp_path):
    study = write_study(n_trials=3, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    res = cli("start", "--study", study, "--storage", url, "--data", corpus, cwd=tmp_path)
    assert "anchor v4 enqueued" in res.stdout and "anchor v4: trial 0 complete" in res.stdout
    assert "best: trial" in res.stdout
    ts = trials(url, "tiny")
    assert len(ts) == 3 and all(t.state == TrialState.COMPLETE for t in ts)
    anchor = [t for t in ts if t.user_attrs["anchor"]]
    assert len(anchor) == 1 and anchor[0].params == {"d_model": 32, "dropout": 0.1, "lr": 1e-3}
    assert anchor[0].user_attrs["anchor_name"] == "v4"
    for t in ts:
        assert set(t.user_attrs) >= ATTRS | QUALITY, set(ATTRS | QUALITY) - set(t.user_attrs)
        assert t.user_attrs["epochs_run"] == 2 and t.user_attrs["params"] > 0
        assert sorted(t.intermediate_values) == [1, 2]
        assert Path(t.user_attrs["checkpoint"], "best_checkpoint.pt").exists()
        assert t.user_attrs["val_loss"] == pytest.approx(t.value)
    stored = optuna.load_study(study_name="tiny", storage=url).user_attrs
    assert stored["spec"]["name"] == "tiny" and len(stored["fingerprint"]) == 64

    # A second start loads the study: no second anchor; --n-trials raises the budget.
    res = cli("start", "--study", study, "--storage", url, "--data", corpus, "--n-trials", 4, cwd=tmp_path)
    assert "loaded" in res.stdout and "enqueued" not in res.stdout
    ts = trials(url, "tiny")
    assert len(ts) == 4 and sum(t.user_attrs["anchor"] for t in ts) == 1

    status = json.loads(cli("status", "--study", "tiny", "--storage", url, "--json", cwd=tmp_path).stdout)
    assert status["states"] == {"COMPLETE": 4} and status["anchor"]["number"] == 0 and status["budget"] == 4
    best = json.loads(cli("best", "--study", "tiny", "--storage", url, "--json", cwd=tmp_path).stdout)
    assert best["best"][0]["val_loss"] == min(t.value for t in ts)
    table = cli("status", "--study", "tiny", "--storage", url, cwd=tmp_path).stdout
    assert "complete" in table and "anchor v4" in table

    # reproduce re-runs a trial from its record; on CPU the loss matches within 1e-3.
    rep = json.loads(cli("reproduce", "--study", "tiny", "--trial", 1, "--storage", url, "--data", corpus,
                         "--json", cwd=tmp_path).stdout)
    assert rep["difference"] < 1e-3


def test_two_concurrent_starts_on_sqlite_share_one_study(corpus, write_study, tmp_path):
    study = write_study(n_trials=4, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "search.cli", "start", "--study", str(study), "--storage", url, "--data",
           str(corpus)]
    procs = [subprocess.Popen(cmd + (["--workers", "2"] if i == 0 else []), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "database is locked" not in "".join(o + e for o, e in outs)
    ts = trials(url, "tiny")
    assert sorted(t.number for t in ts) == [0, 1, 2, 3]  # exactly the budget, no duplicates
    assert all(t.state == TrialState.COMPLETE for t in ts)
    assert sum(bool(t.user_attrs.get("anchor")) for t in ts) == 1
    assert sum("enqueued" in o for o, _ in outs) == 1


def test_nan_and_out_of_memory_fail_their_trials_and_the_worker_goes_on(corpus, write_study, tmp_path):
    space = """
d_model = { type = "categorical", choices = [16, 32] }
dim_feedforward = { type = "categorical", choices = [64, 1099511627776] }
lr = { type = "float", low = 1e-4, high = 1e12, log = true }
"""
    study_file = write_study(n_trials=3, epochs=2, anchor=False, space=space)
    url = f"sqlite:///{tmp_path / 's.db'}"
    from how2sign.batches import TrainData

    spec = load_spec(str(study_file))
    o = create_or_load(url, spec, TrainData.load(corpus).fingerprint)
    o.study.enqueue_trial({"d_model": 32, "dim_feedforward": 64, "lr": 1e12})  # diverges: NaN loss
    # A feed-forward layer that cannot be allocated: the allocator's out-of-memory error.
    o.study.enqueue_trial({"d_model": 32, "dim_feedforward": 1099511627776, "lr": 1e-3})
    o.study.enqueue_trial({"d_model": 32, "dim_feedforward": 64, "lr": 1e-3})
    res = cli("worker", "--study", "tiny", "--storage", url, "--data", corpus, "--device", "cpu", cwd=tmp_path)
    assert "ran 3 trial(s)" in res.stderr and "trial 1: failed: out of memory" in res.stderr
    ts = trials(url, "tiny")
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "NonFiniteLoss" in ts[0].user_attrs["fail_reason"]
    assert ts[1].user_attrs["fail_reason"].startswith("out of memory")
    assert ts[2].user_attrs["fail_reason"] is None


def test_pruning_and_early_stopping(corpus, write_study, tmp_path):
    hb = 'type = "hyperband"\nmin_resource = 1\nreduction_factor = 3'
    spec = load_spec(str(write_study("hb", n_trials=8, epochs=6, pruner=hb)))
    pruner = build_pruner(spec)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == 6
    url = f"sqlite:///{tmp_path / 's.db'}"
    cli("start", "--study", spec.source, "--storage", url, "--data", corpus, cwd=tmp_path)
    ts = trials(url, "hb")
    pruned = [t for t in ts if t.state == TrialState.PRUNED]
    assert len(ts) == 8 and pruned, [t.state for t in ts]
    for t in pruned:  # a pruned trial still records what it learned
        assert t.user_attrs["epochs_run"] < 6 and t.user_attrs["val_loss"] is not None
    # Early stopping (nothing counts as an improvement) ends a trial as COMPLETE.
    es = write_study("es", n_trials=1, epochs=6, extra="", anchor=True)
    es.write_text(es.read_text().replace("patience = 10", "patience = 1\nmin_delta = 100.0"))
    cli("start", "--study", es, "--storage", url, "--data", corpus, cwd=tmp_path)
    (t,) = trials(url, "es")
    assert t.state == TrialState.COMPLETE and t.user_attrs["epochs_run"] == 2


def test_multi_objective_with_gap_constraint(corpus, write_study, tmp_path):
    extra = '\n[constraint]\nmax_gap = 0.5\n'
    path = write_study("mo", n_trials=2, epochs=2, extra=extra)
    path.write_text(path.read_text().replace('n_trials = 2', 'n_trials = 2\ndirections = ["minimize", "minimize"]\n'
                                             'metrics = ["val_loss", "params"]'))
    url = f"sqlite:///{tmp_path / 's.db'}"
    res = cli("start", "--study", path, "--storage", url, "--data", corpus, cwd=tmp_path)
    ts = trials(url, "mo")
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in ts)
    assert all(t.values[1] == t.user_attrs["params"] for t in ts)
    assert all(t.constraints == {"gap": pytest.approx(t.user_attrs["gap"] - 0.5)} for t in ts)
    assert "best" in res.stdout


def test_worker_bad_inputs_leave_the_study_untouched(corpus, write_study, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = write_study(n_trials=1, epochs=1)
    cli("start", "--study", study, "--storage", url, "--data", corpus, cwd=tmp_path)
    before = [(t.number, t.state, t.user_attrs) for t in trials(url, "tiny")]

    def one_line_error(res, *needles):
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and all(n in line for n in needles), res.stderr

    one_line_error(cli("worker", "--study", "nope", "--storage", url, "--data", corpus, cwd=tmp_path, check=False),
                   "no study 'nope'", "tiny")
    other = tmp_path / "other"
    from how2sign.synthetic import write_corpus

    write_corpus(other, train=20, val=6, test=6, seed=9)
    one_line_error(cli("worker", "--study", "tiny", "--storage", url, "--data", other, cwd=tmp_path, check=False),
                   "fingerprint")
    one_line_error(cli("start", "--study", study, "--storage", url, "--data", other, cwd=tmp_path, check=False),
                   "fingerprint")
    one_line_error(cli("start", "--study", "nope", "--storage", url, cwd=tmp_path, check=False), "no study file")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[space\n")
    one_line_error(cli("start", "--study", bad, "--storage", url, cwd=tmp_path, check=False), "malformed TOML")
    bad.write_text(study.read_text().replace("[pruner]", "colour = 1\n[pruner]"))
    one_line_error(cli("start", "--study", bad, "--storage", url, cwd=tmp_path, check=False), "unknown key 'colour'")
    one_line_error(cli("status", "--study", "tiny", "--storage", "redis://u:pw@h/0", cwd=tmp_path, check=False),
                   "unknown storage scheme")
    res = cli("status", "--study", "tiny", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/x", cwd=tmp_path,
              check=False)
    one_line_error(res, "cannot reach the database", "bob:***@")
    assert "hunter2" not in res.stderr + res.stdout
    after = [(t.number, t.state, t.user_attrs) for t in trials(url, "tiny")]
    assert after == before


def test_stored_definition_wins_over_local_files(corpus, write_study, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = write_study(n_trials=1, epochs=1)
    from how2sign.batches import TrainData

    create_or_load(url, load_spec(str(study)), TrainData.load(corpus).fingerprint)
    study.write_text(study.read_text().replace("epochs = 1", "epochs = 9"))  # a drifted local copy
    assert load_stored(url, "tiny").spec.base_config().epochs == 1
