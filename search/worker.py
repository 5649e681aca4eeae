"""The worker: a loop that admits trials against the study's budget, and the runner that carries each one out.

A trial runs in six steps (TrialRunner: begin, config, resume, train, evaluate, finish). Pruning, an
out-of-memory error, a NaN loss or a config error inside a trial end that trial with a reason; the worker
goes on. A stop signal finishes the current trial cleanly. docs/architecture.md describes the flow.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import optuna
import torch
from optuna.trial import TrialState

from how2sign import __version__
from how2sign.batches import TrainData
from how2sign.checkpoint import BEST, LAST, CheckpointError
from how2sign.config import TrainConfig
from how2sign.device import describe, free_memory, resolve_device
from how2sign.evaluate import evaluate_checkpoint
from how2sign.jobs import choose_data
from how2sign.reporting import ReportPoint
from how2sign.run_metrics import RunMetrics
from how2sign.train import NonFiniteLoss, TrainResult, TrainTimes, train

from .artifacts import note_anchor, open_store, record_trial
from .confirm import test_split
from .paths import UnsafePath, inside
from .pretrained import check_study_encoder
from .records import CLIPS, UNSET, TrialRecord
from .slurm_job import slurm_job_id, slurm_restart_count
from .space import config_from_trial
from .storage import BudgetSpent, finished_elsewhere, heartbeat_settings, study_id_of, study_storage
from .study import BudgetGate, FingerprintMismatch, Opened, build_pruner, load_stored

CHECKPOINT_ENV = "H2S_CHECKPOINTS"


class TrialFailed(Exception):
    """A trial that failed for a recorded reason (fail_reason); the worker goes on."""


class TrialPreempted(TrialFailed):
    """The machine is being taken away: the trial ends FAIL and goes straight back to the queue as a retry
    that resumes from its last checkpoint and takes its place in the budget (see `requeue`)."""


@dataclass
class WorkerSettings:
    study: str
    storage: str | None
    data_root: Path | None               # None: the built-in synthetic corpus
    device: str = "auto"
    n_trials: int | None = None          # this worker's own cap; None: until the study budget is spent
    checkpoint_dir: Path | None = None   # shared by the fleet; default ./h2s-checkpoints
    worker_index: int | None = 0         # None: the study hands out the next number (see load_stored)
    quiet: bool = False
    artifact_dir: Path | None = None     # artifact store, shared like checkpoints; default ./h2s-artifacts


@dataclass(frozen=True)
class WorkerResult:
    """What run_worker did: trials it ran, the signal that stopped it, the study's trials by state."""

    ran: int
    stopped: str | None
    states: dict[str, int]
    worker_index: int  # this worker's number in the study (the study's own when settings left it None)


def checkpoint_root(settings: WorkerSettings) -> Path:
    return Path(settings.checkpoint_dir or os.environ.get(CHECKPOINT_ENV) or "h2s-checkpoints").resolve()


SETTLE_S = 2.0  # a second look at a spent budget before leaving (_trial_loop)


class StopFlag:
    """A signal ends the current trial after its current batch, then the worker leaves; a second Ctrl-C stops
    at once. What becomes of the trial depends on who sent it:

    - SIGINT (Ctrl-C, a person at a terminal): the trial ends FAIL "interrupted by SIGINT" and counts;
    - PREEMPTING signals (the machine is being taken away: Slurm's time limit, preemption or scancel, its
      advance warning, `docker stop`, a closed terminal, SIGKILL of `start`, which sends SIGTERM): the
      trial is preempted, back in the queue at once, resumed from its checkpoint and not counted. Repeats
      change nothing: Slurm sends SIGTERM twice at a time limit and `start` forwards what its workers got
      already; the machine's own SIGKILL ends a worker that takes too long.
    """

    PREEMPTING = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.set = False
        self.signal = ""
        self.at: str | None = None  # when the first signal came (ISO 8601, UTC): a preempted trial's preempted_at

    @property
    def preempted(self) -> bool:
        return self.set and self.signal != signal.SIGINT.name

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, *self.PREEMPTING)}

    def restore(self) -> None:
        """Give the caller back its own handlers (run_worker may be used as a library)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.set:
            if signum == signal.SIGINT:  # a person pressing Ctrl-C again: stop now
                raise KeyboardInterrupt
            return
        self.set = True
        self.signal = signal.Signals(signum).name
        self.at = datetime.now(UTC).isoformat(timespec="milliseconds")

    def __call__(self) -> bool:
        return self.set


_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")  # CUDA/MPS, CPU allocator


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(t in text for t in _OOM_TEXT)


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    """One trial of the study, through the storage's trial look-up: a trial this worker runs or a finished
    one costs no statement with the fleet cache, where scanning `study.get_trials()` re-reads the study."""
    storage = study_storage(study)
    try:
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id_of(study), number))
    except KeyError:
        return None


def retried_from(trial: optuna.Trial) -> int | None:
    """The number of the stale trial this one retries (set by RetryHeartbeatStaleTrialCallback)."""
    frozen = trial_by_number(trial.study, trial.number)
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna; silenced here only, not process-wide
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


@dataclass
class Clock:
    """Where one trial's time went in this process; the four parts add up to `seconds`."""

    t0: float = field(default_factory=time.perf_counter)
    times: TrainTimes = field(default_factory=TrainTimes)  # train() fills it as it goes, pruned or not
    evaluate: float = 0.0

    def split(self) -> dict[str, float]:
        """The trial's time so far and its parts, as TrialRecord fields."""
        seconds = time.perf_counter() - self.t0
        train, validate = self.times.train, self.times.validate
        return {"seconds": seconds, "seconds_train": train, "seconds_validate": validate,
                "seconds_evaluate": self.evaluate, "seconds_other": seconds - train - validate - self.evaluate}

    def record(self) -> TrialRecord:
        return TrialRecord(**self.split())


@dataclass
class TrialRun:
    """One trial as the runner carries it through its steps."""

    trial: optuna.Trial
    out: Path                    # this attempt's run folder
    previous: str | None         # the run folder a heartbeat retry inherited from the dead attempt
    clock: Clock
    cfg: TrainConfig | None = None

    @property
    def lr_floor(self) -> float | None:
        """The floor a cosine schedule reaches on purpose; below it a learning rate has collapsed (diagnosis)."""
        return self.cfg.lr_min if self.cfg is not None and self.cfg.scheduler == "cosine" else None


class TrialRunner:
    """The objective Optuna calls: one trial in six steps, begin, config, resume, train, evaluate, finish.

    `train` and `evaluate` default to how2sign's train() and evaluate_checkpoint(); tests and benchmarks pass
    stand-ins with the same signatures. `current` is the number of the trial it runs (or ran last).
    """

    def __init__(self, opened: Opened, data: TrainData, settings: WorkerSettings, stop: Callable[[], bool],
                 log=print, *, train: Callable[..., TrainResult] = train, evaluate: Callable = evaluate_checkpoint):
        self.spec = opened.spec
        self.data = data
        self.stop = stop
        self.log = log
        self.device = resolve_device(settings.device)
        self.root = inside(checkpoint_root(settings), self.spec.name)
        self.host = socket.gethostname()
        self.store = open_store(settings.artifact_dir)
        self.train_fn, self.evaluate_fn = train, evaluate
        self.current: int | None = None
        self.preempted: int | None = None  # the trial that ended preempted, for `_run_one` to re-queue

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        run = self.begin(trial)
        run.cfg = self.config(run)
        result = self.train(run, self.resume(run))
        val, test = self.evaluate(run, result)
        return self.finish(run, result, val, test)

    def begin(self, trial: optuna.Trial) -> TrialRun:
        """Note which trial this is; record who runs it."""
        self.current = trial.number
        clock = Clock()
        stored = TrialRecord.read(trial)  # a heartbeat retry inherits the dead trial's attributes
        run = TrialRun(trial, inside(self.root, f"trial-{trial.number:05d}"), stored.checkpoint, clock)
        job = slurm_job_id()  # absent outside Slurm; a retry outside Slurm clears the one it inherited
        runs = slurm_restart_count() if job else (None if stored.slurm_restart_count is not None else UNSET)
        TrialRecord(anchor=False if stored.anchor is None else UNSET, checkpoint=str(run.out), host=self.host,
                    slurm_job_id=job or (None if stored.slurm_job_id else UNSET), slurm_restart_count=runs,
                    device=describe(self.device), h2s_version=__version__, torch_version=str(torch.__version__),
                    optuna_version=optuna.__version__, resumed_from_epoch=None, fail_reason=None,
                    preempted_at=None if stored.preempted_at else UNSET).write(trial)
        return run

    def config(self, run: TrialRun) -> TrainConfig:
        try:
            cfg = config_from_trial(run.trial, self.spec)
        except ValueError as exc:  # ConfigError, or enqueued params outside the space
            self.fail(run, f"config: {exc}")
        TrialRecord(seed=cfg.seed).write(run.trial)
        note_anchor(run.trial)  # the anchor is recognisable in the dashboard while it runs
        return cfg

    def resume(self, run: TrialRun) -> Path | None:
        """A heartbeat retry continues from the dead attempt's last checkpoint."""
        if retried_from(run.trial) is None or not run.previous:
            return None
        try:  # the dead attempt's folder, as the database says: it must be one of this study's
            previous = inside(self.root, run.previous)
        except UnsafePath:
            self.log(f"trial {run.trial.number}: not resuming from {run.previous}: outside {self.root}")
            return None
        return _carry_over(previous, run.out) if (previous / LAST).exists() else None

    def train(self, run: TrialRun, resume: Path | None) -> TrainResult:
        """Train; pruning records what was learned; OOM, NaN and config errors fail the trial."""
        try:
            result = self.train_fn(run.cfg, self.data, run.out, device=str(self.device), resume=resume or False,
                                   report=self._reporter(run), times=run.clock.times, should_stop=self.stop)
        except optuna.TrialPruned:
            _record_partial(run)
            record_trial(run.trial, run.out, self.store, lr_min=run.lr_floor, pruned=True, log=self.log)
            run.clock.record().write(run.trial)
            raise
        except (NonFiniteLoss, CheckpointError) as exc:
            self.fail(run, f"{type(exc).__name__}: {exc}")
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            free_memory(self.device)
            self.fail(run, f"out of memory: {str(exc).splitlines()[0][:200]}")
        except ValueError as exc:  # ConfigError, or a value only the training code rejects
            self.fail(run, f"config: {exc}")
        if result.interrupted:
            by = getattr(self.stop, "signal", "") or "stop request"
            if getattr(self.stop, "preempted", False):
                self.fail(run, f"preempted by {by}: back in the queue, to resume from its last checkpoint",
                          result, preempted=True)
            self.fail(run, f"interrupted by {by}", result)
        return result

    def _reporter(self, run: TrialRun) -> Callable[..., None]:
        """train()'s report hook: one storage write per report (the intermediate value).

        The step is the epoch, or train clips seen (how2sign.reporting); a trial whose steps are clips says so
        once, in `step_unit`, for the report and the dashboard. Stand-ins that report per epoch may leave
        `point` out. The anchor is never pruned: it is the reference every other trial is read against, so
        it runs to its own early stop like the hand-run V4 did (its curve still feeds the pruner's rungs).
        """
        trial, multi = run.trial, self.spec.multi_objective
        anchor = TrialRecord.read(trial).anchor is True
        said = []

        def report(step: int, val_loss: float, point: ReportPoint | None = None) -> None:
            point = point or ReportPoint(step, step, 0, True, 0, False)
            if point.in_clips and not said:
                TrialRecord(step_unit=CLIPS).write(trial)
                said.append(True)
            if multi:  # Optuna cannot prune multi-objective studies: epochs_run is their progress
                if point.epoch_end:
                    TrialRecord(epochs_run=point.epoch).write(trial)
                return
            trial.report(val_loss, step)
            if not anchor and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {point.describe()} (val_loss {val_loss:.4f})")

        return report

    def evaluate(self, run: TrialRun, result: TrainResult):
        """(val evaluation, test evaluation or None). Only a confirmation study's runs decode the test split;
        a search never touches it."""
        t0 = time.perf_counter()
        kw = {"device": str(self.device), "criteria": self.spec.criteria}
        if self.spec.is_confirmation:
            kw["beam_size"] = self.spec.confirm["beam"]
        try:
            # The best epoch's validation loss is the one train() measured: no second pass over the split.
            val = self.evaluate_fn(run.out / BEST, self.data.root, "val", val_loss=result.best_val_loss, **kw)
            test = self.evaluate_fn(run.out / BEST, self.data.root, "test", **kw) if self.spec.is_confirmation else None
            return val, test
        finally:
            run.clock.evaluate = time.perf_counter() - t0

    def finish(self, run: TrialRun, result: TrainResult, ev, test=None) -> float | list[float]:
        """Record the result, the diagnosis and the artifacts, then the time split; return the objective value(s)."""
        trial = run.trial
        samples = [{"reference": r, "hypothesis": h}
                   for r, h in list(zip(ev.references, ev.hypotheses, strict=True))[:5]]
        scores = {} if test is None else {"test_bleu": float(test.bleu), "test_chrf": float(test.chrf),
                                           "test_loss": float(test.val_loss)}
        _result_record(result, bleu=float(ev.bleu), chrf=float(ev.chrf), vocab_coverage=float(ev.vocab_coverage),
                       repetition_rate=float(ev.repetition_rate), verdict=ev.verdict, samples=samples,
                       **scores).write(trial)
        record_trial(trial, run.out, self.store, history=result.history, lr_min=run.lr_floor,
                     samples=(ev.references, ev.hypotheses), log=self.log,
                     test=None if test is None else (test.references, test.hypotheses))
        run.clock.record().write(trial)
        if self.spec.max_gap is not None:
            trial.set_constraint("gap", result.gap - self.spec.max_gap)  # feasible when <= 0
        values = {"val_loss": result.best_val_loss, "params": float(result.params), "bleu": ev.bleu,
                  "chrf": ev.chrf, "gap": result.gap}
        self.log(f"trial {trial.number}: val_loss {result.best_val_loss:.4f} (epoch {result.best_epoch}/"
                 f"{result.epochs_run}), gap {result.gap:.3f}, BLEU {ev.bleu:.2f}, {ev.verdict}, "
                 f"{result.seconds:.0f}s")
        out_values = [values[m] for m in self.spec.metrics]
        return out_values[0] if len(out_values) == 1 else out_values

    def fail(self, run: TrialRun, reason: str, result: TrainResult | None = None, *,
             preempted: bool = False) -> NoReturn:
        """End the trial as FAIL, recording the reason, what training measured and where the time went;
        a preempted one is re-queued once Optuna has recorded it (`_run_one`)."""
        base = TrialRecord() if result is None else _result_record(result)
        at = getattr(self.stop, "at", None) if preempted else UNSET  # when the preempting signal came
        replace(base, fail_reason=reason, preempted_at=at, **run.clock.split()).write(run.trial)
        if preempted:
            self.preempted = run.trial.number
            raise TrialPreempted(reason) from None
        raise TrialFailed(reason) from None


def _carry_over(previous: Path, out: Path) -> Path:
    """Copy a dead attempt's checkpoints into this attempt's folder; returns the checkpoint to resume from.

    The retry then owns a complete run folder: its best checkpoint exists even if no later epoch improves
    on it (the evaluation reads it), and a retry killed before its first epoch still leaves a resumable
    last checkpoint for the next retry.
    """
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if previous.resolve() != out.resolve():
        for name in (LAST, BEST, "metrics.json"):
            if (previous / name).exists():
                tmp = out / f".{name}.{os.getpid()}.tmp"
                shutil.copyfile(previous / name, tmp)
                os.replace(tmp, out / name)
    return out / LAST


def _result_record(result: TrainResult, **more) -> TrialRecord:
    """What training measured, as the trial records it (non-finite values are stored as null)."""
    return TrialRecord(n_params=result.params, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                       train_loss=result.train_loss, val_loss=result.best_val_loss, gap=result.gap,
                       frames_per_second=result.frames_per_second, resumed_from_epoch=result.resumed_from_epoch,
                       **more)


def _record_partial(run: TrialRun) -> None:
    """A pruned trial still records what it learned, from its metrics.json."""
    m = RunMetrics.read(run.out)
    if m is None:
        return
    best = m.best
    losses = {} if best is None else {"train_loss": best.train_loss, "val_loss": best.val_loss, "gap": best.gap}
    TrialRecord(n_params=m.params, epochs_run=m.epochs_run or None, best_epoch=m.best_epoch,
                frames_per_second=m.frames_per_second, **losses).write(run.trial)


def run_worker(settings: WorkerSettings, log=None, *, joined: Callable[[int], None] | None = None,
               train: Callable[..., TrainResult] = train, evaluate: Callable = evaluate_checkpoint) -> WorkerResult:
    """Attach to a stored study and run trials until its budget is spent, our cap is hit, or a stop signal.

    `settings` is left as it is: the worker number the study handed out goes to `joined(number)` as soon
    as it is known, and is in the result. `train` and `evaluate` are the runner's seams (see TrialRunner).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    opened = load_stored(settings.storage, settings.study, worker_index=settings.worker_index)
    if joined is not None:
        joined(opened.worker_index)
    data = _worker_data(settings, opened, log)
    opened.study.pruner = build_pruner(opened.spec, len(data.train))  # its resources in the steps' unit
    stop = StopFlag()
    stop.install()
    try:
        runner = TrialRunner(opened, data, settings, stop, log, train=train, evaluate=evaluate)
        ran = _trial_loop(opened, runner, BudgetGate(opened), settings.n_trials, stop, log)
    finally:
        stop.restore()
    states: dict[str, int] = {}
    for t in opened.study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return WorkerResult(ran=ran, stopped=stop.signal or None, states=states, worker_index=opened.worker_index)


def _worker_data(settings: WorkerSettings, opened: Opened, log) -> TrainData:
    """The worker's data, once the study is known to exist: --data, else the built-in corpus (written now
    if it is not there yet); refused unless it is the data the study was created on."""
    choice = choose_data(settings.data_root)
    log(choice.describe())
    data = TrainData.load(choice.root, min_freq=opened.spec.base_config().vocab_min_freq)
    if data.fingerprint != opened.fingerprint:
        raise FingerprintMismatch(
            f"data {choice.root} has fingerprint {data.fingerprint[:12]}, but study {settings.study!r} "
            f"was created on {opened.fingerprint[:12]}; every worker must use the same data")
    check_study_encoder(opened.spec, choice.root)  # a missing encoder file: refused before any trial
    if opened.spec.is_confirmation:  # its runs are scored on the test split: the same one everywhere
        test = test_split(choice.root, f"study {settings.study!r}")
        if test.fingerprint != opened.spec.confirm["test_fingerprint"]:
            raise FingerprintMismatch(f"the test split of {choice.root} has fingerprint {test.fingerprint[:12]}, but "
                                      f"study {settings.study!r} is scored on {opened.spec.confirm['test_fingerprint'][:12]}")
    return data


def _trial_loop(opened: Opened, runner: TrialRunner, gate: BudgetGate, cap: int | None, stop: StopFlag,
                log) -> int:
    """Admit and run trials one at a time; returns how many ran here."""
    ran, waited, looked_again = 0, False, False
    deadline = time.monotonic() + opened.spec.timeout if opened.spec.timeout else None
    while not stop() and (cap is None or ran < cap):
        if deadline and time.monotonic() > deadline:
            break
        if not gate.enter():
            # The budget is spent, but a trial still RUNNING may belong to a dead worker: stay until it
            # finishes, or goes stale and is re-queued (then we run the retry), so nothing is lost.
            running = gate.running()
            if not running:
                if looked_again:
                    break
                # One more look before leaving: a preempted trial is FAIL for a moment before its WAITING
                # retry is added (worker.requeue), and a single look could fall in that moment.
                looked_again = True
                _pause(SETTLE_S, stop)
                continue
            if not waited:
                log(f"budget spent; waiting for trial(s) {', '.join(map(str, running))} to finish "
                    "(or to go stale and be retried here)")
                waited = True
            _pause(heartbeat_settings()[0], stop)
            continue
        waited = looked_again = False
        ran += _run_one(opened.study, runner, log)
    return ran


def _run_one(study: optuna.Study, runner: TrialRunner, log) -> bool:
    """One trial through study.optimize, then one line on how it ended if it did not complete.

    False when no trial started: another worker took the budget's last place first (BudgetSpent).
    """
    runner.current = runner.preempted = None
    try:
        study.optimize(runner, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
    except BudgetSpent:
        return False
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, AssertionError) as exc:
        ended = _ended_elsewhere(study, runner.current, exc)
        if ended is None:
            raise
        log(f"trial {runner.current} was marked {ended} while running here (its heartbeat lapsed, so "
            "another worker failed it and re-queued a retry); going on")
        return True  # said all there is to say about it
    last = None if runner.current is None else trial_by_number(study, runner.current)
    if last is not None and last.number == runner.preempted and last.state == TrialState.FAIL:
        requeue(study, last)
        record = TrialRecord.read(last)
        log(f"trial {last.number}: {record.fail_reason} (epoch {record.epochs_run or 0})")
        return True
    if last is not None and last.state == TrialState.FAIL:
        log(f"trial {last.number}: failed: {TrialRecord.read(last).fail_reason}")
    elif last is not None and last.state == TrialState.PRUNED:
        log(f"trial {last.number}: pruned {_pruned_where(last)}")
    return True


def _pruned_where(trial: optuna.trial.FrozenTrial) -> str:
    """"after epoch 3", or inside an epoch where the steps count clips: "at 7,750 train clips (epoch 1)"."""
    record = TrialRecord.read(trial)
    if record.step_unit == CLIPS and trial.intermediate_values:
        return f"at {max(trial.intermediate_values):,} train clips (epoch {(record.epochs_run or 0) + 1})"
    return f"after epoch {record.epochs_run or max(trial.intermediate_values, default=0)}"


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """Put a preempted trial straight back in the queue: the path a killed worker's trial takes once its
    heartbeat goes stale (RetryHeartbeatStaleTrialCallback), only at once. The retry is a WAITING copy of the
    trial (parameters, attributes, retry history); it resumes from the trial's last checkpoint and stands in
    for it in the budget. Preemptions are not capped like stale retries: each one keeps its progress."""
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna; silenced here only
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, failed)


def _pause(seconds: float, stop: StopFlag) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(0.1)


def _ended_elsewhere(study, number: int | None, exc: BaseException) -> str | None:
    """The state of our trial if another process finished it under us (a stale heartbeat), else None.

    Which exceptions say so is Optuna's business: search.storage.finished_elsewhere knows.
    """
    if number is None or not finished_elsewhere(exc):
        return None
    t = trial_by_number(study, number)
    return t.state.name if t is not None and t.state.is_finished() else None
