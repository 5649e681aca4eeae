"""TrialRunner and run_worker with stand-ins for train() and evaluate_checkpoint(), through the runner's seams.

Each test runs trials on an in-memory or SQLite study in-process: no training, no subprocess.
"""

from __future__ import annotations

import math
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from how2sign.run_metrics import RunMetrics
from how2sign.train import Ending, NonFiniteLoss, TrainResult
from search.records import TrialRecord
from search.spec import parse
from search.study import Opened
from search.worker import TrialFailed, TrialRunner, WorkerSettings

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

PARTS = ("seconds_train", "seconds_validate", "seconds_evaluate", "seconds_other")


def spec_for(tmp_path: Path, *, multi: bool = False, epochs: int = 3, space: str = ""):
    objective = ('directions = ["minimize", "minimize"]\nmetrics = ["val_loss", "params"]' if multi
                 else 'direction = "minimize"')
    text = f"""
name = "unit"
n_trials = 4
{objective}
[train]
d_model = 32
nhead = 4
epochs = {epochs}
[space]
dropout = {{ type = "float", low = 0.0, high = 0.3 }}
{space}
"""
    return parse(tomllib.loads(text), str(tmp_path / "unit.toml"))


class FakeTraining:
    """train() as the worker sees it: metrics.json, on_epoch and report each epoch, then a TrainResult."""

    def __init__(self, fail: BaseException | None = None, fail_at: int = 1, epoch_sleep: float = 0.002):
        self.fail, self.fail_at, self.epoch_sleep = fail, fail_at, epoch_sleep
        self.epochs_run_seen: list = []  # the trial's stored epochs_run when each epoch was reported

    def __call__(self, cfg, data, out, *, device="cpu", resume=False, report=None, on_epoch=None,
                 should_stop=None, times=None, **_):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {"best_epoch": 0, "best_val_loss": math.inf, "history": []}
        train_s = val_s = 0.0
        for epoch in range(1, cfg.total_epochs + 1):
            t0 = time.perf_counter()
            time.sleep(self.epoch_sleep)
            if self.fail is not None and epoch == self.fail_at:
                raise self.fail
            t1 = time.perf_counter()
            val = 3.0 + cfg.dropout + 1.0 / epoch
            rec = {"epoch": epoch, "train_loss": val - 0.1, "val_loss": val, "lr": cfg.lr, "seconds": t1 - t0,
                   "seconds_validate": time.perf_counter() - t1, "frames_per_second": 100.0}
            train_s, val_s = train_s + rec["seconds"], val_s + rec.pop("seconds_validate")
            if times is not None:  # what train() fills in as it goes
                times.train, times.validate = train_s, val_s
            state["history"].append(rec)
            if val < state["best_val_loss"]:
                state.update(best_epoch=epoch, best_val_loss=val)
            RunMetrics(params=1234, device="cpu", **state).write(out)
            on_epoch and on_epoch(rec)
            if report:
                report(epoch, val)
        best = state["history"][state["best_epoch"] - 1]
        return TrainResult(best_val_loss=best["val_loss"], best_epoch=best["epoch"], train_loss=best["train_loss"],
                           gap=0.1, epochs_run=cfg.total_epochs, params=1234, ending=Ending.BUDGET,
                           seconds=train_s + val_s, frames_per_second=100.0, device="cpu",
                           out_dir=str(out), resumed_from_epoch=None, history=state["history"],
                           seconds_train=train_s, seconds_validate=val_s)


def fake_evaluate(path, root, split="val", **_):
    time.sleep(0.002)
    refs = ["a b c", "d e"]
    return SimpleNamespace(bleu=12.5, chrf=30.0, vocab_coverage=0.5, repetition_rate=0.0, verdict="learning",
                           references=refs, hypotheses=refs)


def make_runner(tmp_path, spec, train, study=None, pruner=None):
    study = study or optuna.create_study(directions=list(spec.directions), pruner=pruner)
    opened = Opened(study, spec, "f" * 64, False, False, "sqlite://")
    settings = WorkerSettings(study=spec.name, storage=None, data_root=tmp_path, device="cpu",
                              checkpoint_dir=tmp_path / "ck", artifact_dir=tmp_path / "art")
    runner = TrialRunner(opened, SimpleNamespace(root=tmp_path), settings, lambda: False, log=lambda _m: None,
                         train=train, evaluate=fake_evaluate)
    return study, runner


def assert_time_adds_up(t) -> None:
    r = TrialRecord.read(t)
    assert all(getattr(r, p) is not None for p in PARTS), t.user_attrs
    assert sum(getattr(r, p) for p in PARTS) == pytest.approx(r.seconds, rel=1e-9, abs=1e-9)
    assert r.seconds_train > 0 and r.seconds_other >= 0


def test_a_complete_trial_records_results_and_where_its_time_went(tmp_path):
    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining())
    study.optimize(runner, n_trials=1)
    (t,) = study.trials
    r = TrialRecord.read(t)
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(r.val_loss)
    assert (r.n_params, r.epochs_run, r.best_epoch, r.bleu, r.verdict) == (1234, 3, 3, 12.5, "learning")
    assert r.anchor is False and r.fail_reason is None and r.diagnosis and r.checkpoint.endswith("trial-00000")
    assert t.user_attrs["params"] == 1234  # the stored name of n_params
    assert r.seconds_evaluate > 0
    assert_time_adds_up(t)


def test_a_pruned_trial_records_its_time_split_too(tmp_path):
    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining(), pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    study.optimize(runner, n_trials=1)
    (t,) = study.trials
    r = TrialRecord.read(t)
    assert t.state == TrialState.PRUNED and r.epochs_run == 1 and r.val_loss is not None
    assert r.seconds_evaluate == 0.0 and r.diagnosis.startswith("pruned")
    assert_time_adds_up(t)


def test_the_anchor_is_never_pruned_but_still_reports_its_curve(tmp_path):
    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining(), pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    study.enqueue_trial(spec.anchor_params, user_attrs=TrialRecord(anchor=True, anchor_name="v4").attrs())
    study.optimize(runner, n_trials=2)
    anchor, other = study.trials
    assert TrialRecord.read(anchor).anchor is True and anchor.state == TrialState.COMPLETE
    assert sorted(anchor.intermediate_values) == [1, 2, 3]  # the pruner still sees the anchor's curve
    assert other.state == TrialState.PRUNED  # the same pruner prunes any other trial


def test_single_objective_writes_one_thing_per_epoch_and_multi_objective_writes_epochs_run(tmp_path):
    seen = []

    class Watching(FakeTraining):
        def __call__(self, cfg, data, out, *, report=None, **kw):
            def watch(epoch, val):
                report(epoch, val)
                seen.append(TrialRecord.read(current[0]).epochs_run)

            return super().__call__(cfg, data, out, report=watch, **kw)

    current = []
    for multi, expected in ((False, [None, None, None]), (True, [1, 2, 3])):
        seen.clear()
        spec = spec_for(tmp_path, multi=multi)
        study, runner = make_runner(tmp_path, spec, Watching())
        study.optimize(lambda trial, run=runner: current.append(trial) or run(trial), n_trials=1)
        current.clear()
        assert seen == expected, multi
        (t,) = study.trials
        assert t.state == TrialState.COMPLETE and TrialRecord.read(t).epochs_run == 3
        assert sorted(t.intermediate_values) == ([] if multi else [1, 2, 3])


@pytest.mark.parametrize("error, reason", [
    (ValueError("speed must be in [0, 1), got 1.5"), "config: speed must be in [0, 1), got 1.5"),
    (NonFiniteLoss("train loss is nan at epoch 2"), "NonFiniteLoss: train loss is nan at epoch 2"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory: CUDA out of memory."),
])
def test_errors_inside_training_fail_only_that_trial(tmp_path, error, reason):
    spec = spec_for(tmp_path)
    failing = FakeTraining(fail=error, fail_at=2)
    study, runner = make_runner(tmp_path, spec, failing)
    study.optimize(runner, n_trials=1, catch=(TrialFailed,))
    runner.train_fn = FakeTraining()  # the worker goes on: the next trial runs as usual
    study.optimize(runner, n_trials=1, catch=(TrialFailed,))
    failed, ok = study.trials
    assert failed.state == TrialState.FAIL and ok.state == TrialState.COMPLETE
    assert TrialRecord.read(failed).fail_reason.startswith(reason)
    assert TrialRecord.read(ok).fail_reason is None
    assert_time_adds_up(failed)


def test_an_unknown_runtime_error_is_not_swallowed(tmp_path):
    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining(fail=RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        study.optimize(runner, n_trials=1, catch=(TrialFailed,))


def test_a_config_the_space_cannot_build_fails_with_a_reason(tmp_path):
    spec = spec_for(tmp_path, space='d_model = { type = "categorical", choices = [30, 32] }')
    study, runner = make_runner(tmp_path, spec, FakeTraining())
    study.enqueue_trial({"d_model": 30, "dropout": 0.1})  # 4 heads do not divide 30
    study.enqueue_trial({"d_model": 32, "dropout": 0.1})
    study.optimize(runner, n_trials=2, catch=(TrialFailed,))
    failed, ok = study.trials
    assert failed.state == TrialState.FAIL and TrialRecord.read(failed).fail_reason.startswith("config: ")
    assert ok.state == TrialState.COMPLETE


def test_the_runner_notes_which_trial_it_runs(tmp_path):
    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining())
    assert runner.current is None
    study.optimize(runner, n_trials=2)
    assert runner.current == 1


def test_a_trial_looked_up_by_number_costs_no_study_read(tmp_path):
    """retried_from, the end-of-trial line and _ended_elsewhere look up one trial: the worker's own or a
    finished one comes from the fleet cache, not from a re-read of the whole study."""
    import sqlalchemy

    from search.storage import open_storage
    from search.worker import retried_from, trial_by_number

    s = open_storage(f"sqlite:///{tmp_path / 'n.db'}", heartbeat=False, cache=True, ttl=3600)
    study = optuna.create_study(study_name="n", storage=s)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    trial = study.ask()
    sent: list[str] = []
    sqlalchemy.event.listen(s._backend.engine, "after_cursor_execute", lambda *a: sent.append(a[2]))
    assert trial_by_number(study, 0).state == TrialState.COMPLETE
    assert trial_by_number(study, trial.number).state == TrialState.RUNNING
    assert retried_from(trial) is None
    assert sent == []
    assert trial_by_number(study, 99) is None
    s._backend.engine.dispose()


def test_run_worker_returns_a_result_and_leaves_the_settings_alone(tmp_path, corpus):
    from how2sign.batches import TrainData
    from search.study import create_or_load
    from search.worker import WorkerResult, run_worker

    spec = spec_for(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_load(url, spec, TrainData.load(corpus).fingerprint, n_trials=2)
    settings = WorkerSettings(study="unit", storage=url, data_root=corpus, device="cpu", worker_index=None,
                              checkpoint_dir=tmp_path / "ck", artifact_dir=tmp_path / "art")
    joined, logs = [], []
    res = run_worker(settings, log=logs.append, joined=joined.append, train=FakeTraining(), evaluate=fake_evaluate)
    assert isinstance(res, WorkerResult) and res.ran == 2
    assert res.states == {"COMPLETE": 2} and res.stopped is None
    assert joined == [0] and res.worker_index == 0 and settings.worker_index is None


def test_status_shows_where_the_time_went(tmp_path):
    from rich.console import Console

    from search.summary import summarize
    from search.views import status_view

    spec = spec_for(tmp_path)
    study, runner = make_runner(tmp_path, spec, FakeTraining())
    study.optimize(runner, n_trials=2)
    s = summarize(study)
    t = s["time"]
    recs = [TrialRecord.read(x) for x in study.trials]
    assert t["trials"] == 2 and t["seconds"] == pytest.approx(sum(r.seconds for r in recs))
    assert t["train"] == pytest.approx(sum(r.seconds_train for r in recs))
    assert sum(t["shares"].values()) == pytest.approx(1.0)
    assert all(k in s["best"][0] for k in PARTS)
    console = Console(record=True, width=200)
    console.print(status_view(s))
    line = next(x for x in console.export_text().splitlines() if x.startswith("time: "))
    assert "in 2 finished trial(s): train " in line and "validate" in line and "other" in line


class StoppedAfter(FakeTraining):
    """train() that honours should_stop after `epochs` epochs, as the real one does: an interrupted result."""

    def __init__(self, epochs: int, stop):
        super().__init__()
        self.epochs, self.stop = epochs, stop

    def __call__(self, cfg, data, out, **kw):
        result = super().__call__(cfg.replace({"epochs": self.epochs}), data, out, **kw)
        import signal

        self.stop._handle(signal.Signals[self.stop.signal], None)  # the signal arrives during the next epoch
        return TrainResult(**{**result.__dict__, "ending": Ending.INTERRUPTED})


@pytest.mark.parametrize("signame, preempted", [("SIGTERM", True), ("SIGUSR1", True), ("SIGHUP", True),
                                               ("SIGINT", False)])
def test_a_preempting_signal_puts_the_trial_back_and_ctrl_c_fails_it(tmp_path, signame, preempted):
    from search.study import budget_used
    from search.worker import StopFlag, _run_one

    spec = spec_for(tmp_path, epochs=5)
    stop = StopFlag()
    stop.signal = signame
    study, runner = make_runner(tmp_path, spec, None)
    runner.stop, runner.train_fn = stop, StoppedAfter(2, stop)
    logs: list[str] = []
    assert _run_one(study, runner, logs.append)
    assert stop.preempted is preempted
    first = study.trials[0]
    assert first.state == TrialState.FAIL and TrialRecord.read(first).epochs_run == 2
    reason = TrialRecord.read(first).fail_reason
    if preempted:
        assert reason.startswith(f"preempted by {signame}") and "back in the queue" in logs[0]
        at = datetime.fromisoformat(TrialRecord.read(first).preempted_at)  # when the signal came, in UTC
        assert at.utcoffset() == timedelta(0) and timedelta(0) <= datetime.now(UTC) - at < timedelta(minutes=1)
        (retry,) = study.trials[1:]
        assert retry.state == TrialState.WAITING and retry.params == first.params
        assert retry.system_attrs["retry_history"] == [0] and retry.user_attrs["checkpoint"].endswith("trial-00000")
        assert budget_used(study) == (1, 1)  # the retry stands in for the preempted trial
        runner.stop, runner.train_fn = StopFlag(), FakeTraining()
        assert _run_one(study, runner, logs.append)  # the retry's own record: not preempted (yet)
        assert study.trials[1].state == TrialState.COMPLETE and TrialRecord.read(study.trials[1]).preempted_at is None
    else:
        assert reason == "interrupted by SIGINT" and len(study.trials) == 1
        assert TrialRecord.read(first).preempted_at is None
        assert budget_used(study) == (1, 0)


def test_repeated_preempting_signals_change_nothing_and_a_second_ctrl_c_stops_at_once():
    import signal

    from search.worker import StopFlag

    stop = StopFlag()
    stop._handle(signal.SIGTERM, None)
    first = stop.at
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP):  # Slurm's double SIGTERM, ...
        stop._handle(sig, None)
    assert stop() and stop.preempted and stop.signal == "SIGTERM" and stop.at == first
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    person = StopFlag()
    person._handle(signal.SIGINT, None)
    assert person() and not person.preempted
    with pytest.raises(KeyboardInterrupt):
        person._handle(signal.SIGINT, None)
