"""One epoch's optimisation pass: it may pause at a report inside the epoch, and resume from a checkpoint there.

An epoch's batch plan and augmentation stream come from np.random.default_rng([seed, epoch]), so the rest of
an epoch replays exactly from any batch boundary, given what a checkpoint there keeps (`Position`): how far
the plan got, the stream's state just after the last batch done, the per-batch losses and token counts so
far, and the epoch's frames and seconds. Training steps never wait on the device: the losses stay on it
until a report inside the epoch (which validates, so it waits anyway) or the epoch's end reads them.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .batches import Batch
from .config import TrainConfig
from .device import autocast
from .reporting import Schedule
from .vocab import PAD_ID

__all__ = ["EpochPass", "NonFiniteLoss", "Outcome", "Position", "token_loss", "train_step"]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def token_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    # logits (B, L, V), target (B, L) -> mean cross-entropy over real tokens
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=PAD_ID,
                           label_smoothing=smoothing)


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


@dataclass
class Position:
    """Where an unfinished epoch stands: TrainState.partial in a checkpoint inside it (as `to_dict`)."""

    epoch: int
    batches: int = 0                   # batches of the epoch's plan done
    clips: int = 0                     # train clips in them
    frames: int = 0                    # real frames in them
    seconds: float = 0.0               # optimisation time spent on them, over every process that ran them
    losses: torch.Tensor | None = None  # (batches,) float32 per-batch token losses, on the CPU
    weights: list[int] = field(default_factory=list)  # real target tokens per batch
    rng: dict | None = None            # the epoch's stream just after the last batch done (bit_generator.state)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "clips": self.clips, "frames": self.frames,
                "seconds": self.seconds, "losses": self.losses, "weights": list(self.weights), "rng": self.rng}

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        losses = d["losses"].cpu() if d["losses"] is not None else None
        return cls(int(d["epoch"]), int(d["batches"]), int(d["clips"]), int(d["frames"]), float(d["seconds"]),
                   losses, [int(w) for w in d["weights"]], d["rng"])


class Outcome(enum.Enum):
    MARK = "a mark inside the epoch"   # report, then call train() again
    END = "the end of the epoch"
    STOPPED = "should_stop()"


class EpochPass:
    """The optimisation pass over one epoch's batch plan, from its start or from a Position.

    run: a how2sign.train.Run (model, opt, scaler, cfg, dev, dtype, train_batches, prefetch); `indices` the
    clips of this epoch (the whole split, or Plan B's subset); `clips_before` the train clips the run saw
    before this epoch, so `seen` counts from the run's start and the schedule's marks are the run's.
    """

    def __init__(self, run, epoch: int, indices: np.ndarray, schedule: Schedule, clips_before: int,
                 resume: dict | None = None):
        self.run, self.epoch, self.schedule, self.clips_before = run, epoch, schedule, clips_before
        self.rng = np.random.default_rng([run.cfg.seed, epoch])  # per-epoch stream: resume replays it exactly
        self.plan = run.train_batches.plan(indices, shuffle=True, rng=self.rng)
        p = Position.from_dict(resume) if resume is not None else Position(epoch)
        if p.rng is not None:
            self.rng.bit_generator.state = p.rng
        self.k, self.clips, self.frames, self.seconds, self.rng_state = p.batches, p.clips, p.frames, p.seconds, p.rng
        self.read: torch.Tensor | None = p.losses  # losses already on the host, then those still on the device
        self.losses: list[torch.Tensor] = []
        self.weights = list(p.weights)
        self.mark = 0  # the mark the last MARK outcome reached, in clips
        self._batches = None

    @property
    def seen(self) -> int:
        """Train clips seen since the run began, through the last batch done."""
        return self.clips_before + self.clips

    def train(self, should_stop, bar) -> Outcome:
        """Train batches until one reaches a mark inside the epoch, the plan ends, or should_stop() says so."""
        run, t0 = self.run, time.perf_counter()
        run.model.train()
        if self._batches is None:
            self._batches = run.train_batches.batches(self.plan[self.k:], self.rng, prefetch=run.prefetch)
        try:
            while self.k < len(self.plan):
                if should_stop and should_stop():
                    self.close()
                    return Outcome.STOPPED
                reached = self._step(next(self._batches))
                bar.advance()
                if reached and self.k < len(self.plan):
                    return Outcome.MARK  # a mark reached by the epoch's last batch is the epoch's own report
            self.close()
            return Outcome.END
        except BaseException:
            self.close()
            raise
        finally:
            self.seconds += time.perf_counter() - t0

    def _step(self, cpu_batch: Batch) -> bool:
        """Train on one batch; whether it reached a mark (then self.mark is the highest it reached)."""
        run, before = self.run, self.seen
        b = cpu_batch.to(run.dev)
        self.losses.append(train_step(run.model, run.opt, run.scaler, b, run.cfg, run.dev, run.dtype))
        self.weights.append(cpu_batch.tokens)
        self.k, self.clips, self.frames = self.k + 1, self.clips + len(cpu_batch.indices), self.frames + b.frames
        self.rng_state = cpu_batch.rng_state
        reached = self.schedule.marks_reached(self.seen)
        if reached > self.schedule.marks_reached(before):
            self.mark = self.schedule.mark(reached)
            return True
        return False

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()

    def _host_losses(self) -> torch.Tensor:
        """Every per-batch loss so far, float32 on the CPU, in plan order (reads the device once)."""
        if self.losses:
            now = torch.stack(self.losses).float().cpu()
            self.read = now if self.read is None else torch.cat([self.read, now])
            self.losses = []
        return self.read

    def position(self) -> dict:
        """Where the epoch stands, for a checkpoint at this mark."""
        return Position(self.epoch, self.k, self.clips, self.frames, self.seconds, self._host_losses(),
                        list(self.weights), self.rng_state).to_dict()

    def result(self) -> tuple[float, int, float]:
        """(train loss, real frames, seconds) of the finished epoch."""
        t0 = time.perf_counter()
        losses = self._host_losses()  # the same float32 values in the same order, however many reads it took
        train_loss = float((losses * torch.tensor(self.weights)).sum() / sum(self.weights))
        self.seconds += time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"train loss is {train_loss} at epoch {self.epoch}")
        return train_loss, self.frames, self.seconds
