"""train(cfg, data, ...) -> TrainResult: the V4 recipe with early stopping and resumable checkpoints.

The search service prunes through the `report(step, val_loss, point)` hook (it may raise to stop the run)
and stops cleanly through `should_stop()`; nothing here knows about Optuna. Reports come once per epoch,
or where `report_every` asks (how2sign.reporting) also inside epochs, each with a checkpoint a resumed run
continues from exactly (how2sign.epoch).

A training step never waits on the device: losses stay on it until one read per epoch (and one per report
inside it), target tokens are counted on the host, and on CUDA batches come from pinned memory, built one
ahead on a helper thread, with the fused AdamW (foreach on the CPU). Checkpoints are written on a background
thread.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .batches import Batcher, TrainData
from .checkpoint import TrainState
from .config import Phase, TrainConfig
from .device import adamw_options, amp_dtype, autocast, padding_multiples, resolve_device
from .encoder_init import apply_encoder_init, encoder_outputs, param_groups
from .epoch import EpochPass, NonFiniteLoss, Outcome, token_loss, train_step
from .model import SignTranslator
from .progress import EpochProgress
from .reporting import ReportPoint, Schedule, val_subset
from .run_metrics import RunMetrics

__all__ = ["Ending", "NonFiniteLoss", "ReportPoint", "TrainConfig", "TrainResult", "TrainTimes", "token_loss",
           "train", "train_step"]


@dataclass
class TrainTimes:
    """Seconds train() has spent so far, by kind. Pass one in to read them even when train() raises
    (a pruned run); the rest of train()'s wall time (setup, resume, callbacks) is `other`."""

    train: float = 0.0       # optimisation loops, with the one loss read per epoch
    validate: float = 0.0    # validation loss, at the epochs' ends and at reports inside them
    checkpoint: float = 0.0  # checkpoint snapshots and metrics.json, waiting for the writer thread

    @contextlib.contextmanager
    def clock(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, kind, getattr(self, kind) + time.perf_counter() - t0)


class Ending(enum.Enum):
    """How a train() call ended."""

    BUDGET = "epoch budget"           # every epoch of the budget ran
    EARLY_STOP = "early stopping"     # patience ran out
    INTERRUPTED = "interrupted"       # should_stop() asked; batches since the last checkpoint were not kept


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    train_loss: float          # train loss at the best epoch
    gap: float                 # val - train at the best epoch
    epochs_run: int
    params: int
    ending: Ending
    seconds: float             # wall time of train()
    frames_per_second: float
    device: str
    out_dir: str
    resumed_from_epoch: int | None  # finished epochs of the checkpoint it resumed from (0: one inside epoch 1)
    history: list[dict] = field(default_factory=list)
    # Where `seconds` went (keyword-only: stand-ins built by tests and benchmarks may leave them out).
    seconds_train: float = field(default=0.0, kw_only=True)       # optimisation loops
    seconds_validate: float = field(default=0.0, kw_only=True)    # validation loss
    seconds_checkpoint: float = field(default=0.0, kw_only=True)  # checkpoints + metrics.json, as waited for
    clips: int = field(default=0, kw_only=True)                   # train clips seen, from the run's start to its last checkpoint
    resumed_from_clips: int | None = field(default=None, kw_only=True)  # ... at the checkpoint resumed from

    @property
    def stopped_early(self) -> bool:
        return self.ending is Ending.EARLY_STOP

    @property
    def interrupted(self) -> bool:
        return self.ending is Ending.INTERRUPTED

    @property
    def seconds_other(self) -> float:
        """Setup, resume, callbacks: the rest of `seconds`."""
        return max(0.0, self.seconds - self.seconds_train - self.seconds_validate - self.seconds_checkpoint)

    @property
    def best_checkpoint(self) -> Path:
        return Path(self.out_dir) / checkpoint.BEST

    @property
    def last_checkpoint(self) -> Path:
        return Path(self.out_dir) / checkpoint.LAST

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device | None = None):
    kind = adamw_options(torch.device(device)) if device is not None else {}
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.total_epochs, eta_min=cfg.lr_min)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience)
    return opt, sched


@torch.no_grad()
def evaluate_loss(model: SignTranslator, batcher: Batcher, device: torch.device, dtype=None, *,
                  prefetch: bool = False, indices: np.ndarray | None = None) -> float:
    """Token-level cross-entropy (no smoothing) over a whole split (or its clips `indices`), in eval mode;
    one device read."""
    model.eval()
    losses, counts = [], []
    plan = batcher.plan(np.arange(len(batcher.split)) if indices is None else indices, shuffle=False, rng=None)
    with contextlib.closing(batcher.batches(plan, prefetch=prefetch)) as batches:
        for cpu_batch in batches:
            b = cpu_batch.to(device)
            with autocast(device, dtype):
                logits = model(b.src, b.src_pad, b.tgt_in)
            losses.append(token_loss(logits, b.tgt_out))
            counts.append(cpu_batch.tokens)
    total = 0.0
    for loss, n in zip(torch.stack(losses).cpu().tolist() if losses else [], counts, strict=True):
        total += loss * n  # per batch, in order: the same float arithmetic as reading each loss at once
    return total / max(sum(counts), 1)


@dataclass
class Run:
    """Everything one train() call works with."""

    cfg: TrainConfig
    out: Path
    dev: torch.device
    dtype: torch.dtype | None
    model: SignTranslator
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    train_batches: Batcher
    val_batches: Batcher
    subset: np.ndarray     # the Plan-B train_fraction of the train split
    meta: dict             # params, device, fingerprint, configs: in every checkpoint and metrics.json
    vocab: list[str]
    prefetch: bool         # build the next batch on a helper thread (see _prefetches)
    schedule: Schedule     # where the run reports (how2sign.reporting)
    val_subset: np.ndarray | None  # the val clips of a report inside an epoch; None: the whole split
    frames: int = 0        # real frames trained on by this call, over its finished epochs
    loop_seconds: float = 0.0

    @classmethod
    def build(cls, cfg: TrainConfig, data: TrainData, out: Path, device: str, amp: str) -> Run:
        out.mkdir(parents=True, exist_ok=True)
        dev = resolve_device(device)
        dtype = amp_dtype(dev, amp)
        torch.manual_seed(cfg.seed)
        model = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab))).to(dev)
        apply_encoder_init(model, cfg, data)  # a pretrained encoder: load, check, freeze (how2sign.encoder_init)
        opt, sched = make_optimizer(model, cfg, dev)
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
        pad_to, pin = padding_multiples(dev), dev.type == "cuda"
        n_train = len(data.train)
        subset = np.random.default_rng(cfg.seed).permutation(n_train)[: max(1, round(cfg.train_fraction * n_train))]
        subset = np.sort(subset)
        meta = {"params": model.trainable_parameters(), "device": str(dev), "fingerprint": data.fingerprint,
                "train_config": cfg.to_dict(), "model_config": model.cfg.to_dict()}
        batchers = (Batcher(data.train, data.vocab, cfg, pad_to=pad_to, pin=pin),
                    Batcher(data.val, data.vocab, cfg, pad_to=pad_to, pin=pin))
        # A frozen encoder's outputs are computed once and reused: batches then carry them, not keypoints.
        train_batches, val_batches = encoder_outputs(model, cfg, dev, dtype, *batchers)
        schedule = Schedule.of(cfg.report_every, n_train)
        return cls(cfg, out, dev, dtype, model, opt, sched, scaler, train_batches, val_batches, subset, meta,
                   data.vocab.to_list(), _prefetches(dev), schedule,
                   val_subset(schedule, data.train.lengths, data.val.lengths))

    def indices(self, phase: Phase) -> np.ndarray:
        """The train clips of an epoch in this phase: the whole split, or Plan B's subset."""
        return np.arange(len(self.train_batches.split)) if phase.full_split else self.subset

    def point(self, epoch: int, clips: int, mark: int | None = None) -> ReportPoint:
        """A report's point: inside the epoch at `mark` (on the val subset), or the epoch's own (mark None)."""
        n_val = len(self.val_batches.split)
        if mark is not None:
            return ReportPoint(mark, epoch, clips, False, n_val if self.val_subset is None else len(self.val_subset),
                               True)
        in_clips = self.schedule.in_clips
        return ReportPoint(clips if in_clips else epoch, epoch, clips, True, n_val, in_clips)

    def resume(self, resume: bool | str | Path) -> TrainState:
        """True: from out/last_checkpoint.pt when it exists; a path: from that file."""
        path = Path(resume) if isinstance(resume, str | Path) else (self.out / checkpoint.LAST if resume else None)
        if path is None or not path.exists():
            return TrainState()
        return checkpoint.restore_run(path, model=self.model, opt=self.opt, sched=self.sched, scaler=self.scaler,
                                      device=self.dev, fingerprint=self.meta["fingerprint"],
                                      train_config=self.meta["train_config"])


def _prefetches(dev: torch.device) -> bool:
    # On an accelerator the host builds the next batch while the device computes. On the CPU the
    # helper thread competes with torch's own threads for the same cores (measured in
    # benchmarks/training_overhead.py); the batches are the same either way.
    return dev.type != "cpu"


def validate(run: Run, epoch: int, indices: np.ndarray | None = None) -> float:
    val_loss = evaluate_loss(run.model, run.val_batches, run.dev, run.dtype, prefetch=run.prefetch, indices=indices)
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(f"validation loss is {val_loss} at epoch {epoch}")
    return val_loss


def end_epoch(run: Run, epoch: int, loop: tuple[float, int, float], val_loss: float) -> dict:
    """Step the schedule; the epoch's record (as metrics.json stores it)."""
    train_loss, frames, seconds = loop
    lr = run.opt.param_groups[0]["lr"]
    run.sched.step() if run.cfg.scheduler == "cosine" else run.sched.step(val_loss)
    run.frames += frames
    run.loop_seconds += seconds
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "seconds": seconds,
            "frames_per_second": frames / max(seconds, 1e-9)}


def save_checkpoints(run: Run, state: TrainState, improved: bool, writer: checkpoint.BackgroundWriter) -> None:
    """Snapshot on this thread (CPU copies), write on the writer's."""
    ck = checkpoint.run_checkpoint(run.meta, state, run.vocab, run.model, run.opt, run.sched, run.scaler, run.dev)
    metrics = RunMetrics(**run.meta, best_epoch=state.best_epoch, best_val_loss=state.best_val_loss,
                         history=[dict(h) for h in state.history], reports=[dict(r) for r in state.reports])
    writer.submit(checkpoint.save_run, run.out, ck, best=improved, metrics=metrics)


@dataclass
class Hooks:
    """train()'s callbacks (see train)."""

    report: Callable[[int, float, ReportPoint], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_epoch: Callable[[dict], None] | None = None

    def stop(self) -> bool:
        return bool(self.should_stop and self.should_stop())


def report_hook(report: Callable | None) -> Callable[[int, float, ReportPoint], None] | None:
    """report(step, val_loss, point) as train() calls it; a script's report(epoch, val_loss), the hook's
    shape before reports came inside epochs, gets the two values it takes."""
    if report is None:
        return None
    try:
        signature = inspect.signature(report)
    except (TypeError, ValueError):  # no signature to read (a builtin): called as it is
        return report
    try:
        signature.bind(0, 0.0, None)
        return report
    except TypeError:
        signature.bind(0, 0.0)  # neither shape: the TypeError says what it takes
        return lambda step, val_loss, _point: report(step, val_loss)


def train(cfg: TrainConfig, data: TrainData, out_dir: Path, *, device: str = "auto", amp: str = "auto",
          resume: bool | Path = False, report: Callable[[int, float, ReportPoint], None] | None = None,
          should_stop: Callable[[], bool] | None = None, on_epoch: Callable[[dict], None] | None = None,
          progress: bool = False, times: TrainTimes | None = None) -> TrainResult:
    """Train until the epoch budget, early stopping, or `should_stop()`.

    resume: True resumes from out_dir/last_checkpoint.pt when it exists; a path resumes from that file,
    which may be a checkpoint inside an epoch.
    report(step, val_loss, point) runs at every report (how2sign.reporting: step is the epoch, or train clips
    seen; point says where; a report(epoch, val_loss) of two arguments gets those two), once its checkpoint
    is handed to the writer thread; train() waits for that write before it returns or lets an exception
    (report's included) through.
    times: filled in as the run goes (see TrainTimes).
    """
    t_start, times = time.perf_counter(), (times if times is not None else TrainTimes())
    run = Run.build(cfg, data, Path(out_dir), device, amp)
    state = run.resume(resume)
    resumed = state.epoch > 0 or state.partial is not None  # a checkpoint ends an epoch or sits inside one
    resumed_from = (state.epoch, state.clips + (state.partial or {}).get("clips", 0)) if resumed else None
    writer, bar = checkpoint.BackgroundWriter(), EpochProgress(progress, cfg.total_epochs, state.epoch)
    try:
        ending = _epochs(run, state, writer, bar, times, Hooks(report_hook(report), should_stop, on_epoch))
    except BaseException:
        with times.clock("checkpoint"):
            writer.wait(raise_errors=False)  # the epoch's files are on disk before the error leaves
        raise
    finally:
        bar.close()
    with times.clock("checkpoint"):
        writer.wait()
    return _result(run, state, times, time.perf_counter() - t_start, ending, resumed_from)


def _epochs(run: Run, state: TrainState, writer: checkpoint.BackgroundWriter, bar: EpochProgress,
            times: TrainTimes, hooks: Hooks) -> Ending:
    """The epoch loop, from where the restored state stands; returns how it ended."""
    cfg = run.cfg
    for epoch in range(state.partial["epoch"] if state.partial else state.epoch + 1, cfg.total_epochs + 1):
        phase = cfg.phase(epoch)
        if phase.reset_patience:
            state.bad_epochs = 0  # at the epoch's start, so again when resuming inside it: the same 0
        if hooks.stop():
            return Ending.INTERRUPTED
        with times.clock("train"):
            ep = EpochPass(run, epoch, run.indices(phase), run.schedule, state.clips, state.partial)
        bar.start_epoch(epoch, len(ep.plan), ep.k)
        loop = _pass(run, state, ep, writer, bar, times, hooks)
        if loop is None:
            return Ending.INTERRUPTED  # resume goes on from the last checkpoint, at an epoch's end or inside one
        with times.clock("validate"):
            val_loss = validate(run, epoch)
        record = end_epoch(run, epoch, loop, val_loss)
        improved = state.end_epoch(record, cfg.min_delta, ep.clips)
        point = run.point(epoch, state.clips)
        if point.in_clips:
            state.reports.append(point.record(val_loss))
        with times.clock("checkpoint"):
            save_checkpoints(run, state, improved, writer)
        bar.end_epoch(f"train {record['train_loss']:.3f}  val {record['val_loss']:.3f}  best {state.best_val_loss:.3f}")
        if hooks.on_epoch:
            hooks.on_epoch(record)
        if hooks.report:
            hooks.report(point.step, val_loss, point)
        if state.bad_epochs >= cfg.patience and phase.may_stop_early:
            return Ending.EARLY_STOP
    return Ending.BUDGET


def _pass(run: Run, state: TrainState, ep: EpochPass, writer: checkpoint.BackgroundWriter, bar: EpochProgress,
          times: TrainTimes, hooks: Hooks) -> tuple[float, int, float] | None:
    """Train the epoch, reporting at every mark inside it: (train loss, real frames, seconds), None when stopped."""
    try:
        while True:
            with times.clock("train"):
                outcome = ep.train(hooks.should_stop, bar)
                if outcome is Outcome.END:
                    return ep.result()
            if outcome is Outcome.STOPPED:
                return None
            _report_inside(run, state, ep, writer, times, hooks)
    finally:
        ep.close()


def _report_inside(run: Run, state: TrainState, ep: EpochPass, writer: checkpoint.BackgroundWriter,
                   times: TrainTimes, hooks: Hooks) -> None:
    """A report at a mark inside the epoch: validate (on the val subset), checkpoint where the epoch stands,
    then call the hook."""
    with times.clock("validate"):
        val_loss = validate(run, ep.epoch, run.val_subset)
    point = run.point(ep.epoch, ep.seen, ep.mark)
    state.reports.append(point.record(val_loss))
    with times.clock("checkpoint"):
        state.partial = ep.position()
        save_checkpoints(run, state, False, writer)
    if hooks.report:
        hooks.report(point.step, val_loss, point)


def _result(run: Run, state: TrainState, times: TrainTimes, seconds: float, ending: Ending,
            resumed_from: tuple[int, int] | None) -> TrainResult:
    best = state.best
    return TrainResult(
        best_val_loss=state.best_val_loss, best_epoch=state.best_epoch,
        train_loss=best.train_loss if best else math.nan, gap=best.gap if best else math.nan,
        epochs_run=state.epoch, params=run.meta["params"], ending=ending, seconds=seconds,
        seconds_train=times.train, seconds_validate=times.validate, seconds_checkpoint=times.checkpoint,
        frames_per_second=run.frames / max(run.loop_seconds, 1e-9), device=str(run.dev), out_dir=str(run.out),
        resumed_from_epoch=resumed_from[0] if resumed_from else None, history=state.history,
        clips=state.clips + (state.partial or {}).get("clips", 0),
        resumed_from_clips=resumed_from[1] if resumed_from else None,
    )
