"""The objective and the worker loop: train, report, prune, record; OOM/NaN handling; resume; clean stop."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from how2sign import __version__
from how2sign.batches import TrainData
from how2sign.checkpoint import BEST, LAST, CheckpointError
from how2sign.device import describe, free_memory, resolve_device
from how2sign.evaluate import evaluate_checkpoint
from how2sign.train import NonFiniteLoss, train

from .artifacts import note_anchor, open_store, record_trial
from .space import config_from_trial
from .storage import heartbeat_settings, set_user_attrs
from .study import BudgetGate, FingerprintMismatch, Opened, load_stored

CHECKPOINT_ENV = "H2S_CHECKPOINTS"


class TrialFailed(Exception):
    """A trial that failed for a recorded reason (fail_reason); the worker goes on."""


@dataclass
class WorkerSettings:
    study: str
    storage: str | None
    data_root: Path
    device: str = "auto"
    n_trials: int | None = None          # this worker's own cap; None: until the study budget is spent
    checkpoint_dir: Path | None = None   # shared by the fleet; default ./h2s-checkpoints
    worker_index: int | None = 0         # None: the study hands out the next number (see load_stored)
    quiet: bool = False
    artifact_dir: Path | None = None     # artifact store, shared like checkpoints; default ./h2s-artifacts


def checkpoint_root(settings: WorkerSettings) -> Path:
    return Path(settings.checkpoint_dir or os.environ.get(CHECKPOINT_ENV) or "h2s-checkpoints").resolve()


class StopFlag:
    """SIGTERM / SIGHUP / Ctrl-C: finish the current trial cleanly, then leave. A second signal stops at once.

    SIGHUP (the terminal closed) is a request to stop like SIGTERM, not a reason to vanish mid-trial.
    """

    def __init__(self):
        self.set = False
        self.signal = ""

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def restore(self) -> None:
        """Give the caller back its own handlers (run_worker may be used as a library)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        self.signal = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.set


_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")  # CUDA/MPS, CPU allocator


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(t in text for t in _OOM_TEXT)


def retried_from(trial: optuna.Trial) -> int | None:
    """The number of the stale trial this one retries (set by RetryHeartbeatStaleTrialCallback)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna; silenced here only, not process-wide
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def make_objective(opened: Opened, data: TrainData, settings: WorkerSettings, gate: BudgetGate, stop: StopFlag,
                   log=print):
    spec = opened.spec
    device = resolve_device(settings.device)
    root = checkpoint_root(settings) / spec.name
    host = socket.gethostname()
    store = open_store(settings.artifact_dir)

    def objective(trial: optuna.Trial):
        gate.release()  # the trial exists now: other workers may create theirs
        gate.last_trial = trial.number
        t0 = time.perf_counter()
        attrs = trial.user_attrs
        out = root / f"trial-{trial.number:05d}"
        previous = attrs.get("checkpoint")  # inherited by a heartbeat retry from the dead trial
        set_user_attrs(trial, {**({} if "anchor" in attrs else {"anchor": False}), "checkpoint": str(out),
                               "host": host, "device": describe(device), "h2s_version": __version__,
                               "torch_version": str(torch.__version__), "optuna_version": optuna.__version__,
                               "resumed_from_epoch": None, "fail_reason": None})  # one transaction
        try:
            cfg = config_from_trial(trial, spec)
        except ValueError as exc:  # ConfigError, or enqueued params outside the space
            trial.set_user_attr("fail_reason", f"config: {exc}")
            raise TrialFailed(str(exc)) from None
        trial.set_user_attr("seed", cfg.seed)
        note_anchor(trial)  # the anchor is recognisable in the dashboard while it runs
        # The floor a cosine schedule reaches on purpose; below it a learning rate has collapsed (diagnosis).
        lr_floor = cfg.lr_min if cfg.scheduler == "cosine" else None

        resume = None
        if retried_from(trial) is not None and previous and (Path(previous) / LAST).exists():
            resume = _carry_over(Path(previous), out)
        state = {"best": math.inf}

        def report(epoch: int, val_loss: float) -> None:
            state["best"] = min(state["best"], val_loss)
            trial.set_user_attr("epochs_run", epoch)
            if spec.multi_objective:
                return  # Optuna cannot prune multi-objective studies
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val_loss {val_loss:.4f})")

        try:
            try:
                result = train(cfg, data, out, device=str(device), resume=resume or False, report=report,
                               should_stop=stop)
            except optuna.TrialPruned:
                _record_partial(trial, out, t0)
                record_trial(trial, out, store, lr_min=lr_floor, pruned=True, log=log)
                raise
        except (NonFiniteLoss, CheckpointError) as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise TrialFailed(str(exc)) from None
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            free_memory(device)
            trial.set_user_attr("fail_reason", f"out of memory: {str(exc).splitlines()[0][:200]}")
            raise TrialFailed("out of memory") from None
        _record_result(trial, result, t0)
        if result.interrupted:
            trial.set_user_attr("fail_reason", f"interrupted by {stop.signal or 'stop request'}")
            raise TrialFailed("interrupted")
        ev = evaluate_checkpoint(Path(out) / BEST, data.root, "val", device=str(device), criteria=spec.criteria)
        verdict = ev.verdict
        quality = {k: float(getattr(ev, k)) for k in ("bleu", "chrf", "vocab_coverage", "repetition_rate")}
        samples = [{"reference": r, "hypothesis": h}
                   for r, h in list(zip(ev.references, ev.hypotheses, strict=True))[:5]]
        set_user_attrs(trial, {**quality, "verdict": verdict, "samples": samples})
        record_trial(trial, out, store, history=result.history, lr_min=lr_floor,
                     samples=(ev.references, ev.hypotheses), log=log)
        if spec.max_gap is not None:
            trial.set_constraint("gap", result.gap - spec.max_gap)  # feasible when <= 0
        values = {"val_loss": result.best_val_loss, "params": float(result.params), "bleu": ev.bleu,
                  "chrf": ev.chrf, "gap": result.gap}
        log(f"trial {trial.number}: val_loss {result.best_val_loss:.4f} (epoch {result.best_epoch}/"
            f"{result.epochs_run}), gap {result.gap:.3f}, BLEU {ev.bleu:.2f}, {verdict}, {result.seconds:.0f}s")
        out_values = [values[m] for m in spec.metrics]
        return out_values[0] if len(out_values) == 1 else out_values

    return objective


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


def _record_result(trial, result, t0: float) -> None:
    values = {}
    for k, v in {"params": result.params, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                 "train_loss": result.train_loss, "val_loss": result.best_val_loss, "gap": result.gap,
                 "seconds": time.perf_counter() - t0, "frames_per_second": result.frames_per_second,
                 "resumed_from_epoch": result.resumed_from_epoch}.items():
        values[k] = _finite(v)
    set_user_attrs(trial, values)


def _record_partial(trial, out: Path, t0: float) -> None:
    """A pruned trial still records what it learned, from its metrics.json."""
    import json

    try:
        m = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    best = next((e for e in m["epochs"] if e["epoch"] == m["best_epoch"]), None)
    last = m["epochs"][-1] if m["epochs"] else {}
    vals = {"params": m.get("params"), "epochs_run": last.get("epoch"), "best_epoch": m.get("best_epoch"),
            "seconds": time.perf_counter() - t0,
            "frames_per_second": sum(e["frames_per_second"] for e in m["epochs"]) / max(len(m["epochs"]), 1)}
    if best:
        vals.update(train_loss=best["train_loss"], val_loss=best["val_loss"],
                    gap=best["val_loss"] - best["train_loss"])
    for k, v in vals.items():
        trial.set_user_attr(k, _finite(v))


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run_worker(settings: WorkerSettings, log=None) -> dict:
    """Attach to a stored study and run trials until its budget is spent, our cap is hit, or a stop signal."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    opened = load_stored(settings.storage, settings.study, worker_index=settings.worker_index)
    settings.worker_index = opened.worker_index
    data = TrainData.load(settings.data_root, min_freq=opened.spec.base_config().vocab_min_freq)
    if data.fingerprint != opened.fingerprint:
        raise FingerprintMismatch(
            f"data {settings.data_root} has fingerprint {data.fingerprint[:12]}, but study {settings.study!r} "
            f"was created on {opened.fingerprint[:12]}; every worker must use the same data")
    # Our own line per trial says why it failed; Optuna's would add a traceback each time.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stop = StopFlag()
    stop.install()
    try:
        gate = BudgetGate(opened)
        objective = make_objective(opened, data, settings, gate, stop, log)
        ran, waited = 0, False
        deadline = time.monotonic() + opened.spec.timeout if opened.spec.timeout else None
        while not stop() and (settings.n_trials is None or ran < settings.n_trials):
            if deadline and time.monotonic() > deadline:
                break
            if not gate.enter():
                # The budget is spent, but a trial still RUNNING may belong to a dead worker: stay until it
                # finishes, or goes stale and is re-queued (then we run the retry), so nothing is lost.
                running = gate.running()
                if not running:
                    break
                if not waited:
                    log(f"budget spent; waiting for trial(s) {', '.join(map(str, running))} to finish "
                        "(or to go stale and be retried here)")
                    waited = True
                _pause(heartbeat_settings()[0], stop)
                continue
            waited, gate.last_trial = False, None
            try:
                opened.study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
                ended = _ended_elsewhere(opened.study, gate.last_trial, exc)
                if ended is None:
                    raise
                log(f"trial {gate.last_trial} was marked {ended} while running here (its heartbeat lapsed, so "
                    "another worker failed it and re-queued a retry); going on")
                gate.last_trial = None  # said all there is to say about it
            finally:
                gate.release()
            ran += 1
            last = next((t for t in opened.study.get_trials(deepcopy=False) if t.number == gate.last_trial), None)
            if last is not None and last.state == TrialState.FAIL:
                log(f"trial {last.number}: failed: {last.user_attrs.get('fail_reason')}")
            elif last is not None and last.state == TrialState.PRUNED:
                log(f"trial {last.number}: pruned after epoch {last.user_attrs.get('epochs_run')}")
    finally:
        stop.restore()
    states = {}
    for t in opened.study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"ran": ran, "stopped": stop.signal or None, "states": states}


def _pause(seconds: float, stop: StopFlag) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(0.1)


def _ended_elsewhere(study, number: int | None, exc: BaseException) -> str | None:
    """The state of our trial if another process finished it under us (a stale heartbeat), else None."""
    if number is None or not (isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
                              or str(exc).startswith("Cannot tell a")):
        return None
    t = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return t.state.name if t is not None and t.state.is_finished() else None

