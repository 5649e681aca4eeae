"""When train() reports a validation loss, what step it reports, and on which val clips.

`TrainConfig.report_every` sets it. A positive value reports every that many train clips; 0 (the default) is
automatic: once per epoch on a train split below AUTO_MIN_CLIPS clips (the built-in corpus: every result
there is what it always was), and four times per epoch above (How2Sign's ~31k clips: every 7,750).

* **Steps.** Where reports are per epoch the step is the epoch (1, 2, ...). Otherwise the step counts train
  clips seen since the run began, so rungs compare trials at equal data whatever their batch size: an
  intermediate report's step is the mark it reached (k x report_every, or k quarters of the train split),
  at the end of the first batch that reaches it (the model has then seen at most one batch more); an epoch's
  own report's step is the exact count of clips seen at its end. Plan B's subset epochs count the clips they
  train on. Every trial of a study has the same train split (the fingerprint fixes it), so they all count in
  the same unit, at the same marks.
* **Where.** A report at each mark reached inside an epoch (several marks inside one batch make one report),
  and one at every epoch's end; a mark reached by an epoch's last batch is that epoch's report.
* **Which val clips.** An epoch's own report is always the full val split (early stopping, the best
  checkpoint and the schedule read it). An intermediate report validates on a fixed subset of the val split
  when the whole split would cost more than VAL_SHARE of the training between two reports: validation is a
  forward pass, a training step costs about TRAIN_PASSES of them (forward, backward, optimizer), and both
  cost in proportion to frames, so the subset is the longest prefix of one seeded permutation of the val
  split whose frames stay within VAL_SHARE x TRAIN_PASSES x the interval's expected train frames (at least
  MIN_VAL_CLIPS clips). It depends only on the data and the interval, so every trial of a study validates
  on the same clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AUTO_MIN_CLIPS", "AUTO_REPORTS_PER_EPOCH", "MIN_VAL_CLIPS", "TRAIN_PASSES", "VAL_SHARE", "ReportPoint",
           "Schedule", "steps_in_clips", "val_subset"]

AUTO_MIN_CLIPS = 10_000      # report_every = 0: per epoch below this many train clips, AUTO_REPORTS_PER_EPOCH above
AUTO_REPORTS_PER_EPOCH = 4
VAL_SHARE = 0.10             # an intermediate validation may cost at most this share of its interval's training
TRAIN_PASSES = 3.0           # a training step's cost in forward passes (measured: benchmarks/rungs.py)
MIN_VAL_CLIPS = 64           # an intermediate validation's smallest subset: fewer clips are noise
SUBSET_SEED = 1729          # one permutation for every run: the subset is the study's, not a trial's


def steps_in_clips(report_every: int, train_clips: int) -> bool:
    """Whether a run with this setting on a train split of this size reports clips (else epochs)."""
    return report_every > 0 or train_clips >= AUTO_MIN_CLIPS


@dataclass(frozen=True)
class Schedule:
    """The marks of a run: every `num / den` train clips (a quarter of the split in automatic mode, exact, so
    the fourth mark is the epoch's end); num 0 reports per epoch only."""

    num: int
    den: int = 1

    @classmethod
    def of(cls, report_every: int, train_clips: int) -> Schedule:
        if report_every > 0:
            return cls(report_every)
        if steps_in_clips(report_every, train_clips):
            return cls(train_clips, AUTO_REPORTS_PER_EPOCH)
        return cls(0)

    @property
    def in_clips(self) -> bool:
        return self.num > 0

    @property
    def interval(self) -> float:
        """Train clips between two marks (inf when reports are per epoch)."""
        return self.num / self.den if self.num else math.inf

    def marks_reached(self, clips: int) -> int:
        """How many marks `clips` train clips reach."""
        return clips * self.den // self.num if self.num else 0

    def mark(self, k: int) -> int:
        """The k-th mark, in clips (rounded up: it is reached by the batch that passes it)."""
        return -(-k * self.num // self.den)


@dataclass(frozen=True)
class ReportPoint:
    """Where in a run a reported validation loss was measured: train()'s report hook's third argument."""

    step: int          # what the pruner sees (see the module's docstring): the epoch, or clips
    epoch: int         # the epoch it falls in: the one that just ended, for an epoch's own report
    clips: int         # train clips seen since the run began when it was measured (resumes included)
    epoch_end: bool    # the epoch's own report, on the full val split; else an intermediate one
    val_clips: int     # the val clips it was measured on
    in_clips: bool     # step counts clips (else epochs)

    def record(self, val_loss: float) -> dict:
        """The report as metrics.json's `reports` list keeps it."""
        return {"step": self.step, "epoch": self.epoch, "clips": self.clips, "epoch_end": self.epoch_end,
                "val_clips": self.val_clips, "val_loss": val_loss}

    def describe(self) -> str:
        """'epoch 3', or '8,000 clips (in epoch 1)' / '31,000 clips (end of epoch 1)'."""
        if not self.in_clips:
            return f"epoch {self.epoch}"
        return f"{self.step:,} clips ({'end of' if self.epoch_end else 'in'} epoch {self.epoch})"


def val_subset(schedule: Schedule, train_lengths: np.ndarray, val_lengths: np.ndarray) -> np.ndarray | None:
    """The val clips an intermediate report validates on, sorted; None: the whole split (see the docstring)."""
    n_val = len(val_lengths)
    if not schedule.in_clips or n_val == 0 or len(train_lengths) == 0:
        return None
    budget = VAL_SHARE * TRAIN_PASSES * schedule.interval * float(np.mean(train_lengths))
    if float(np.sum(val_lengths)) <= budget:
        return None
    order = np.random.default_rng(SUBSET_SEED).permutation(n_val)
    within = int(np.searchsorted(np.cumsum(val_lengths[order]), budget, side="right"))
    n = max(within, min(MIN_VAL_CLIPS, n_val))
    return None if n >= n_val else np.sort(order[:n])
