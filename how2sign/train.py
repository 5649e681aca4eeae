"""train(cfg, data, ...) -> TrainResult: the V4 recipe with early stopping and resumable checkpoints.

The search service prunes through the `report(epoch, val_loss)` hook (it may raise to stop the run)
and stops cleanly through `should_stop()`; nothing here knows about Optuna.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .batches import Batch, Batcher, TrainData
from .config import TrainConfig
from .device import amp_dtype, autocast, resolve_device
from .model import SignTranslator
from .vocab import PAD_ID

__all__ = ["NonFiniteLoss", "TrainConfig", "TrainResult", "train"]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    train_loss: float          # train loss at the best epoch
    gap: float                 # val - train at the best epoch
    epochs_run: int
    params: int
    stopped_early: bool
    interrupted: bool
    seconds: float
    frames_per_second: float
    device: str
    out_dir: str
    resumed_from_epoch: int | None
    history: list[dict] = field(default_factory=list)
    # Where this process's time went (resumed epochs excluded): the training loop, the validation loss,
    # and writing checkpoints and metrics.json.
    seconds_train: float = 0.0
    seconds_validate: float = 0.0
    seconds_checkpoint: float = 0.0

    @property
    def best_checkpoint(self) -> Path:
        return Path(self.out_dir) / checkpoint.BEST

    @property
    def last_checkpoint(self) -> Path:
        return Path(self.out_dir) / checkpoint.LAST

    def to_dict(self) -> dict:
        return asdict(self)


def token_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    # logits (B, L, V), target (B, L) -> mean cross-entropy over real tokens
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=PAD_ID,
                           label_smoothing=smoothing)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.total_epochs, eta_min=cfg.lr_min)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience)
    return opt, sched


@torch.no_grad()
def evaluate_loss(model: SignTranslator, batcher: Batcher, device: torch.device, dtype=None) -> float:
    """Token-level cross-entropy (no smoothing) over a whole split, in eval mode."""
    model.eval()
    total, tokens = 0.0, 0
    for idx in batcher.plan(np.arange(len(batcher.split)), shuffle=False, rng=None):
        b = batcher.make(idx).to(device)
        with autocast(device, dtype):
            logits = model(b.src, b.src_pad, b.tgt_in)
        n = int(b.tgt_out.ne(PAD_ID).sum())
        total += float(token_loss(logits, b.tgt_out)) * n
        tokens += n
    return total / max(tokens, 1)


def train_step(model, opt, scaler, b: Batch, cfg: TrainConfig, device, dtype) -> torch.Tensor:
    """One optimisation step; returns the unsmoothed token loss (a 0-d tensor, not synced)."""
    with autocast(device, dtype):
        logits = model(b.src, b.src_pad, b.tgt_in)
    loss = token_loss(logits, b.tgt_out, cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    if cfg.label_smoothing > 0:
        return token_loss(logits.detach(), b.tgt_out)
    return loss.detach()


def train(
    cfg: TrainConfig,
    data: TrainData,
    out_dir: Path,
    *,
    device: str = "auto",
    amp: str = "auto",
    resume: bool | Path = False,
    report: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train until the epoch budget, early stopping, or `should_stop()`.

    resume: True resumes from out_dir/last_checkpoint.pt when it exists; a path resumes from that file.
    report(epoch, val_loss) runs after each epoch's checkpoints are written; exceptions it raises propagate.
    on_epoch(record) gets each epoch's history record plus `seconds_validate`, before report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    dtype = amp_dtype(dev, amp)
    torch.manual_seed(cfg.seed)
    model = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab))).to(dev)
    opt, sched = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    train_batcher = Batcher(data.train, data.vocab, cfg)
    val_batcher = Batcher(data.val, data.vocab, cfg)
    fingerprint = data.fingerprint
    n_train = len(data.train)
    subset = np.sort(np.random.default_rng(cfg.seed).permutation(n_train)[: max(1, round(cfg.train_fraction * n_train))])

    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    resumed_from = None
    resume_path = Path(resume) if isinstance(resume, (str, Path)) else (out / checkpoint.LAST if resume else None)
    if resume_path is not None and resume_path.exists():
        ck = checkpoint.load(resume_path, map_location=dev)
        if ck.get("fingerprint") != fingerprint:
            raise checkpoint.CheckpointError(f"{resume_path} was trained on different data (fingerprint differs)")
        if ck["train_config"] != cfg.to_dict():
            raise checkpoint.CheckpointError(f"{resume_path} was trained with a different TrainConfig")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if "scaler" in ck and ck["scaler"]:
            scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_torch"])
        if dev.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"], dev)
        state = {k: ck[k] for k in state}
        resumed_from = state["epoch"]

    params = model.num_parameters()
    meta = {"params": params, "device": str(dev), "fingerprint": fingerprint,
            "train_config": cfg.to_dict(), "model_config": model.cfg.to_dict()}
    t_start, frames_done, train_seconds = time.perf_counter(), 0, 0.0
    validate_seconds = checkpoint_seconds = 0.0
    interrupted = stopped_early = False
    bar = _Progress(progress, cfg.total_epochs, state["epoch"])
    try:
        for epoch in range(state["epoch"] + 1, cfg.total_epochs + 1):
            if should_stop and should_stop():
                interrupted = True
                break
            finetuning = cfg.train_fraction < 1.0 and epoch > cfg.epochs
            if finetuning and epoch == cfg.epochs + 1:
                state["bad_epochs"] = 0  # patience restarts when fine-tuning on the full split begins
            indices = np.arange(n_train) if (cfg.train_fraction >= 1.0 or finetuning) else subset
            rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch stream: resume replays it exactly
            plan = train_batcher.plan(indices, shuffle=True, rng=rng)
            model.train()
            t0 = time.perf_counter()
            losses, weights, frames = [], [], 0
            bar.start_epoch(epoch, len(plan))
            for idx in plan:
                if should_stop and should_stop():
                    interrupted = True
                    break
                cpu_batch = train_batcher.make(idx, rng)
                weights.append(int(cpu_batch.tgt_out.ne(PAD_ID).sum()))  # counted on the CPU: no device sync
                b = cpu_batch.to(dev)
                losses.append(train_step(model, opt, scaler, b, cfg, dev, dtype))
                frames += b.frames
                bar.advance()
            if interrupted:
                break  # a half epoch is not checkpointed: resume restarts this epoch from the last one
            train_loss = float((torch.stack(losses).float().cpu() * torch.tensor(weights)).sum() / sum(weights))
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(f"train loss is {train_loss} at epoch {epoch}")
            seconds = time.perf_counter() - t0
            val_loss = evaluate_loss(model, val_batcher, dev, dtype)
            seconds_validate = time.perf_counter() - t0 - seconds
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"validation loss is {val_loss} at epoch {epoch}")
            lr = opt.param_groups[0]["lr"]
            sched.step() if cfg.scheduler == "cosine" else sched.step(val_loss)
            frames_done += frames
            train_seconds += seconds
            validate_seconds += seconds_validate
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                      "seconds": seconds, "frames_per_second": frames / max(seconds, 1e-9)}
            state["history"].append(record)
            state["epoch"] = epoch
            improved = val_loss < state["best_val_loss"] - cfg.min_delta
            if improved:
                state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            ck = {**meta, **state, "vocab": data.vocab.to_list(), "model": model.state_dict(),
                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                  "rng_torch": torch.get_rng_state(),
                  "rng_cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            t_ck = time.perf_counter()
            checkpoint.save(out / checkpoint.LAST, ck)
            if improved:
                checkpoint.save(out / checkpoint.BEST, ck)
            write_metrics(out, meta, state)
            checkpoint_seconds += time.perf_counter() - t_ck
            bar.end_epoch(record, state["best_val_loss"])
            if on_epoch:  # with this epoch's validation time, which metrics.json does not keep
                on_epoch({**record, "seconds_validate": seconds_validate})
            if report:
                report(epoch, val_loss)
            if state["bad_epochs"] >= cfg.patience and not (cfg.train_fraction < 1.0 and epoch == cfg.epochs):
                stopped_early = True
                break
    finally:
        bar.close()

    best = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
    train_at_best = best["train_loss"] if best else math.nan
    return TrainResult(
        best_val_loss=state["best_val_loss"], best_epoch=state["best_epoch"], train_loss=train_at_best,
        gap=state["best_val_loss"] - train_at_best if best else math.nan,
        epochs_run=state["epoch"], params=params, stopped_early=stopped_early, interrupted=interrupted,
        seconds=time.perf_counter() - t_start, frames_per_second=frames_done / max(train_seconds, 1e-9),
        device=str(dev), out_dir=str(out), resumed_from_epoch=resumed_from, history=state["history"],
        seconds_train=train_seconds, seconds_validate=validate_seconds, seconds_checkpoint=checkpoint_seconds,
    )


def write_metrics(out: Path, meta: dict, state: dict) -> None:
    doc = {**meta, "best_epoch": state["best_epoch"], "best_val_loss": state["best_val_loss"],
           "epochs": state["history"]}
    tmp = out / f".metrics.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / "metrics.json")


class _Progress:
    """A rich progress bar over epochs and the batches of the current epoch (no-op when disabled)."""

    def __init__(self, enabled: bool, total_epochs: int, done: int):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.p.start()
        self.epochs = self.p.add_task("epochs", total=total_epochs, completed=done, info="")
        self.batches = self.p.add_task("batches", total=1, info="")

    def start_epoch(self, epoch: int, n: int) -> None:
        if self.p:
            self.p.reset(self.batches, total=n, description=f"epoch {epoch}", info="")

    def advance(self) -> None:
        if self.p:
            self.p.advance(self.batches)

    def end_epoch(self, rec: dict, best: float) -> None:
        if self.p:
            self.p.update(self.epochs, advance=1, info=f"train {rec['train_loss']:.3f}  val {rec['val_loss']:.3f}  best {best:.3f}")

    def close(self) -> None:
        if self.p:
            self.p.stop()
