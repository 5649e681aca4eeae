"""Rungs finer than an epoch (report_every): the study file's units, the pruner's resources in them, a real
trial pruned inside its first epoch, and the learning curves of the report, the status views and the
trials' learning_curve.png artifact.

The rungs corpus (tests/conftest.py) has 48 train clips in six full batches of 8: with report_every = 12 a
trial reports at 12, 24, 36 clips inside an epoch and 48 at its end.
"""

from __future__ import annotations

import tomllib

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from how2sign import checkpoint
from how2sign.batches import TrainData
from how2sign.run_metrics import RunMetrics
from how2sign.train import train
from search import artifacts
from search.cli import app
from search.records import CLIPS, TrialRecord
from search.report import build_model, load_report_data
from search.space import config_from_trial
from search.spec import SpecError, find_study_file, load_spec, parse
from search.study import Opened, build_pruner, create_or_load
from search.summary import summarize
from search.tiny_study import TINY_ANCHOR, tiny_study_toml
from search.worker import TrialRunner, WorkerSettings, run_worker

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def capacity(**train) -> dict:
    raw = tomllib.loads(find_study_file("capacity").read_text())
    raw["train"].update(train)
    return raw


# --------------------------------------------------------------------------- the study file's units
@pytest.mark.parametrize("fixed, pruner, message", [
    ({"report_every": 8000}, {"min_resource": 1}, "min_resource = 1 counts epochs, but [train] report_every = 8000"),
    ({"report_every": 8000}, {"min_resource": 0.25}, "write it in clips (at least 8000, one report)"),
    ({}, {"min_resource": 0}, "min_resource must be > 0"),
    ({}, {"min_resource": "one"}, "min_resource must be int or float"),
    ({"report_every": 100}, {"type": "hyperband", "min_resource": 100, "max_resource": 30},
     "max_resource = 30 counts epochs"),
    ({"report_every": 100}, {"type": "median", "n_warmup_steps": 5}, "n_warmup_steps = 5 counts epochs"),
])
def test_a_study_file_that_mixes_units_is_refused_naming_file_and_key(fixed, pruner, message):
    raw = capacity(**fixed)
    raw["pruner"] = {"type": "asha", "reduction_factor": 3, **pruner}
    if raw["pruner"]["type"] != "asha":
        raw["pruner"].pop("reduction_factor")
    with pytest.raises(SpecError) as exc:
        parse(raw, "studies/capacity.toml")
    assert message in str(exc.value) and str(exc.value).startswith("studies/capacity.toml [pruner]: ")


def test_a_study_file_counting_clips_without_report_every_is_refused_but_a_stored_one_still_loads(tmp_path):
    path = tmp_path / "clips.toml"
    path.write_text(tiny_study_toml("clips", epochs=30, pruner='type = "asha"\nmin_resource = 8000'))
    with pytest.raises(SpecError) as exc:
        load_spec(str(path))
    assert str(exc.value) == (f"{path} [pruner]: min_resource = 8000 is more than the 30-epoch budget: with [train] "
                              "report_every = 0 the pruner counts epochs (set report_every to count train clips)")
    parse(tomllib.loads(path.read_text()), "study 'clips' in sqlite:///s.db")  # what a worker reads back
    path.write_text(tiny_study_toml("short", epochs=30, pruner='type = "asha"\nmin_resource = 3',
                                    extra="[demo.train]\nepochs = 2"))
    assert load_spec(str(path)).with_demo().base_config().epochs == 2  # a short demo budget is not refused


def test_resources_in_the_unit_of_the_steps_are_accepted():
    for fixed, pruner in (({"report_every": 8000}, {"min_resource": 8000}), ({}, {"min_resource": 0.25}),
                          ({"report_every": 100}, {"type": "median", "n_warmup_steps": 0, "interval_steps": 1})):
        raw = capacity(**fixed)
        raw["pruner"] = {"type": "asha", **pruner}
        parse(raw, "studies/capacity.toml")


def test_report_every_is_set_in_train_not_searched():
    raw = capacity()
    raw["space"]["report_every"] = {"type": "categorical", "choices": [0, 8000]}
    with pytest.raises(SpecError, match=r"\[space.report_every\]: report_every is how the study measures"):
        parse(raw, "studies/capacity.toml")


def test_start_refuses_mixed_units_in_one_line_with_exit_2(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text(tiny_study_toml("mixed", train={"report_every": 12}, pruner='type = "asha"\nmin_resource = 1'))
    res = CliRunner().invoke(app, ["start", "--study", str(path), "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    text = res.stderr.strip()
    assert res.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in res.output, res.output
    assert str(path) in text and "min_resource = 1 counts epochs" in text
    assert not (tmp_path / "s.db").exists()  # nothing stored


# --------------------------------------------------------------------------- the pruner's resources
def test_resources_written_in_epochs_become_clips_where_the_steps_are_clips():
    cap, fe = load_spec("capacity"), load_spec("frozen-encoder")
    assert build_pruner(cap)._min_resource == build_pruner(cap, 800)._min_resource == 1  # a quarter: epoch 1
    assert build_pruner(cap, 31_000)._min_resource == 7_750  # How2Sign: the first report, a quarter epoch
    hb = build_pruner(fe, 31_000)
    assert (hb._min_resource, hb._max_resource) == (7_750, 30 * 31_000)
    assert (build_pruner(fe, 800)._min_resource, build_pruner(fe, 800)._max_resource) == (1, 30)
    raw = capacity(report_every=8000)
    raw["pruner"] = {"type": "hyperband", "min_resource": 16_000}
    explicit = build_pruner(parse(raw, "c.toml"), 31_000)
    assert (explicit._min_resource, explicit._max_resource) == (16_000, 30 * 31_000)
    raw["pruner"] = {"type": "hyperband"}
    assert build_pruner(parse(raw, "c.toml"), 31_000)._min_resource == 8_000  # default: the first report
    raw = capacity()
    raw["pruner"] = {"type": "median", "n_warmup_steps": 2, "interval_steps": 1}
    median = build_pruner(parse(raw, "c.toml"), 31_000)
    assert (median._n_warmup_steps, median._interval_steps) == (62_000, 1)  # 1: every report, in either unit


# --------------------------------------------------------------------------- a real trial pruned inside epoch 1
def test_a_trial_reports_at_clip_counts_and_is_pruned_inside_its_first_epoch(rungs_corpus, tmp_path):
    text = tiny_study_toml("rungs", n_trials=3, epochs=1, train={"report_every": 12},
                           pruner='type = "asha"\nmin_resource = 12\nreduction_factor = 2')
    spec = parse(tomllib.loads(text), str(tmp_path / "rungs.toml"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    opened = create_or_load(url, spec, TrainData.load(rungs_corpus).fingerprint)
    opened.study.enqueue_trial({**TINY_ANCHOR, "dropout": 0.0})  # learns as the anchor does
    opened.study.enqueue_trial({"dropout": 0.0, "lr": 1e-4})     # ten times slower: behind after 12 clips
    run_worker(WorkerSettings(study="rungs", storage=url, data_root=rungs_corpus, device="cpu",
                              checkpoint_dir=tmp_path / "ck", artifact_dir=tmp_path / "art"), log=lambda _m: None)
    anchor, good, slow = optuna.load_study(study_name="rungs", storage=url).trials
    assert [t.state for t in (anchor, good, slow)] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(anchor.intermediate_values) == sorted(good.intermediate_values) == [12, 24, 36, 48]
    assert list(slow.intermediate_values) == [12] and slow.intermediate_values[12] > good.intermediate_values[12]
    r = TrialRecord.read(slow)
    assert r.step_unit == CLIPS and TrialRecord.read(anchor).step_unit == CLIPS
    assert r.epochs_run is None and r.val_loss is None and r.diagnosis == "pruned before the first epoch ended"
    last = checkpoint.load(tmp_path / "ck" / "rungs" / "trial-00002" / checkpoint.LAST)
    assert checkpoint.describe(last)["inside_epoch"] == {"epoch": 1, "batches": 2}  # 16 clips: the first report
    assert RunMetrics.load(tmp_path / "ck" / "rungs" / "trial-00002").report_curve() == \
        [(12, slow.intermediate_values[12])]
    assert (tmp_path / "ck" / "rungs" / "trial-00002" / "learning_curve.png").exists()  # its one report, drawn
    assert TrialRecord.read(good).val_loss == good.intermediate_values[48]  # the epoch's own: the whole split


def test_a_retried_trial_resumes_bit_exactly_from_its_dead_attempts_checkpoint_inside_an_epoch(rungs_corpus,
                                                                                               tmp_path):
    spec = parse(tomllib.loads(tiny_study_toml("retry", epochs=1, train={"report_every": 12}, anchor=None)),
                 str(tmp_path / "retry.toml"))
    data, params = TrainData.load(rungs_corpus), {"dropout": 0.1, "lr": 1e-3}
    cfg = config_from_trial(optuna.trial.FixedTrial(params), spec)
    whole = []
    full = train(cfg, data, tmp_path / "whole", device="cpu", report=lambda s, v, _p: whole.append((s, v)))
    dead, made = tmp_path / "ck" / "retry" / "trial-00000", []

    def killed(step, _val, _point):  # the dead attempt's worker vanishes after its report at 24 clips
        made.append(step)
        if len(made) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, dead, device="cpu", report=killed)
    # The study as the heartbeat callback leaves it: the dead attempt failed, its retry waiting with its attributes.
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.NopPruner())
    dists = {"dropout": FloatDistribution(0.0, 0.5), "lr": FloatDistribution(1e-4, 3e-3, log=True)}
    attrs = TrialRecord(checkpoint=str(dead), anchor=False).attrs()
    study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists, user_attrs=attrs))
    study.add_trial(create_trial(state=TrialState.WAITING, params=params, distributions=dists, user_attrs=attrs,
                                 system_attrs={"failed_trial": 0, "retry_history": [0]}))
    settings = WorkerSettings(study="retry", storage=None, data_root=rungs_corpus, device="cpu",
                              checkpoint_dir=tmp_path / "ck", artifact_dir=tmp_path / "art")
    runner = TrialRunner(Opened(study, spec, data.fingerprint, False, False, "sqlite://"), data, settings,
                         lambda: False, log=lambda _m: None)
    study.optimize(runner, n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE and TrialRecord.read(retry).resumed_from_epoch == 0
    assert sorted(retry.intermediate_values.items()) == whole[2:]  # from the checkpoint on, bit for bit
    assert retry.value == full.best_val_loss


# --------------------------------------------------------------------------- learning curves and status
LR = {"lr": FloatDistribution(1e-5, 1e-2, log=True)}


def add(study, state, curve: dict, clips: bool, **record):
    rec = TrialRecord(anchor=False, step_unit=CLIPS if clips else None, **record)
    study.add_trial(create_trial(state=state, params={"lr": 1e-3}, distributions=LR, user_attrs=rec.attrs(),
                                 values=[min(curve.values())] if state == TrialState.COMPLETE else None,
                                 intermediate_values=curve))


def test_the_learning_curves_show_train_clips_seen_when_the_steps_are_clips():
    study = optuna.create_study(direction="minimize")
    add(study, TrialState.COMPLETE, {7750: 4.0, 15500: 3.8, 31000: 3.5}, True)
    add(study, TrialState.PRUNED, {7750: 4.4}, True)
    fig, note = build_model(load_report_data(study))["intermediate"]
    assert fig.x.title == "train clips seen" and "steps are train clips seen" in note
    assert [s.x for s in fig.series] == [[7750, 15500, 31000], [7750]]
    study = optuna.create_study(direction="minimize")
    add(study, TrialState.COMPLETE, {1: 4.0, 2: 3.5}, False)
    fig, note = build_model(load_report_data(study))["intermediate"]
    assert fig.x.title == "epoch" and "clips" not in note


def test_a_study_that_changed_units_draws_the_clip_curves_and_says_what_it_left_out():
    study = optuna.create_study(direction="minimize")
    add(study, TrialState.COMPLETE, {1: 4.0, 2: 3.5}, False)
    add(study, TrialState.COMPLETE, {7750: 4.0, 31000: 3.4}, True)
    fig, note = build_model(load_report_data(study))["intermediate"]
    assert fig.x.title == "train clips seen" and [s.x for s in fig.series] == [[7750, 31000]]
    assert "1 trial(s) that reported per epoch are not drawn" in note


def test_a_multi_objective_trial_in_clips_draws_its_reports_from_metrics_json(tmp_path):
    reports = [{"step": 12, "epoch": 1, "clips": 16, "epoch_end": False, "val_clips": 64, "val_loss": 4.2},
               {"step": 48, "epoch": 1, "clips": 48, "epoch_end": True, "val_clips": 80, "val_loss": 4.0}]
    RunMetrics(best_epoch=1, best_val_loss=4.0, history=[{"epoch": 1, "train_loss": 4.5, "val_loss": 4.0}],
               reports=reports).write(tmp_path)
    study = optuna.create_study(directions=["minimize", "minimize"])
    rec = TrialRecord(checkpoint=str(tmp_path), step_unit=CLIPS, val_loss=4.0)
    study.add_trial(create_trial(state=TrialState.COMPLETE, params={"lr": 1e-3}, distributions=LR,
                                 values=[4.0, 1e6], user_attrs=rec.attrs()))
    (t,) = load_report_data(study).trials
    assert t.curve == [(12, 4.2), (48, 4.0)]


def test_the_learning_curve_artifact_of_a_clip_step_trial_is_drawn_against_train_clips_seen(tmp_path, monkeypatch):
    epochs = [{"epoch": e, "train_loss": t, "val_loss": v, "lr": lr} for e, t, v, lr in
              ((1, 4.6, 4.0, 1e-3), (2, 4.1, 3.7, 5e-4))]
    reports = [{"step": s, "epoch": 1 + (s > 48), "clips": s + 4 * (s % 48 > 0), "epoch_end": s % 48 == 0,
                "val_clips": 80 if s % 48 == 0 else 64, "val_loss": v}
               for s, v in ((12, 4.4), (24, 4.2), (36, 4.1), (48, 4.0), (60, 3.9), (72, 3.85), (84, 3.8), (96, 3.7))]
    run = tmp_path / "run"
    run.mkdir()
    RunMetrics(best_epoch=2, best_val_loss=3.7, history=epochs, reports=reports).write(run)
    drawn, draw = [], artifacts.curve_figure

    def spy(curve, title=""):  # what the artifact's figure is drawn from, and the figure itself
        drawn.append((curve, draw(curve, title)))
        return drawn[-1][1]

    monkeypatch.setattr(artifacts, "curve_figure", spy)
    trial = optuna.create_study(direction="minimize").ask()
    TrialRecord(checkpoint=str(run), step_unit=CLIPS).write(trial)
    artifacts.record_trial(trial, run, artifacts.open_store(tmp_path / "art"), log=pytest.fail)
    (curve, fig), = drawn
    assert curve.x_label == "train clips seen" and (run / "learning_curve.png").exists()
    assert [s for s, _ in curve.val] == [12, 24, 36, 48, 60, 72, 84, 96]  # every report, inside epochs too
    assert [s for s, _ in curve.inside] == [12, 24, 36, 60, 72, 84]
    assert curve.train == [(48, 4.6), (96, 4.1)] and curve.lr == [(48, 1e-3), (96, 5e-4)]  # at the epochs' ends
    assert curve.best == (96, 3.7)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "train clips seen"
    assert [list(line.get_xdata()) for line in ax.lines[:2]] == [[48, 96], [12, 24, 36, 48, 60, 72, 84, 96]]
    per_epoch = artifacts.learning_curve(epochs)  # a trial that reported per epoch: no reports in metrics.json
    assert per_epoch.x_label == "epoch" and per_epoch.val == [(1, 4.0), (2, 3.7)] and not per_epoch.inside
    assert artifacts.curve_figure(per_epoch).axes[0].get_xlabel() == "epoch"


def test_status_says_how_far_a_running_trial_is_in_its_own_unit():
    study = optuna.create_study(direction="minimize")
    for curve, clips in (({7750: 4.0, 15500: 3.9}, True), ({1: 4.0, 2: 3.9}, False)):
        t = study.ask()
        if clips:
            t.set_user_attr(TrialRecord.stored_name("step_unit"), CLIPS)
        for step, v in curve.items():
            t.report(v, step)
    running = {r["number"]: r for r in summarize(study)["running"]}
    assert (running[0]["epochs_run"], running[0]["clips_seen"]) == (None, 15500)
    assert (running[1]["epochs_run"], running[1]["clips_seen"]) == (2, None)
