"""Read a trial's training curves the way the researcher's notes do, and say what they show.

The notes diagnosed V1-V3 by eye: validation loss stopped improving after about 8 epochs while train
loss kept falling (overfitting, "train/val gap 0.81"), and V2's learning rate collapsed to 1e-8 by
epoch 7. `diagnose(history)` makes those two readings mechanical, from the per-epoch records that
`how2sign.train` writes to metrics.json (epoch, train_loss, val_loss, lr, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .records import TrialRecord

__all__ = ["COLLAPSE_RATIO", "Diagnosis", "diagnose"]

# Validation loss within this fraction of its minimum counts as "not improving any more": a plateau
# of 4.15, 4.14, 4.145 stopped improving at the first 4.15, not at the noise-level minimum.
PLATEAU_TOLERANCE = 0.005
# Train loss must fall by this fraction after the plateau starts to call it overfitting, and the gap
# must widen by at least this much (absolute, in nats).
TRAIN_FALL = 0.01
GAP_WIDENING = 0.02
# At least this many epochs after the plateau starts: one bad epoch is noise, not a trend.
MIN_EPOCHS_AFTER = 2
# The learning rate collapsed when it fell this far below its starting value and below the schedule's
# own floor (a cosine schedule reaching its lr_min on purpose is not a collapse).
COLLAPSE_RATIO = 1e-3


@dataclass(frozen=True)
class Diagnosis:
    epochs: int
    best_epoch: int | None          # epoch of the lowest validation loss
    plateau_epoch: int | None       # first epoch within tolerance of that lowest loss
    overfit_epoch: int | None       # validation stopped improving after it while train loss kept falling
    final_gap: float | None         # val_loss - train_loss at the last epoch
    lr_collapsed: bool
    lr_collapse_epoch: int | None   # first epoch at the collapsed (lowest) learning rate
    lr_lowest: float | None
    still_improving: bool           # the plateau (if any) began too recently to judge

    def text(self, pruned: bool = False) -> str:
        """One line, as the notes would put it: "overfitting from epoch 8, gap 0.81"."""
        if self.epochs == 0:
            return "pruned before the first epoch ended" if pruned else "no epoch finished"
        gap = "" if self.final_gap is None else f", gap {self.final_gap:.2f}"
        if self.overfit_epoch is not None:
            parts = [f"overfitting from epoch {self.overfit_epoch}{gap}"]
        elif self.still_improving:
            parts = [f"{'pruned after' if pruned else 'still improving at'} epoch {self.epochs}"
                     f"{' while still improving' if pruned else ''}{gap}"]
        else:
            parts = [f"validation loss flat from epoch {self.plateau_epoch}, no overfitting{gap}"]
        if pruned and not self.still_improving:
            parts.insert(0, f"pruned after epoch {self.epochs}")
        if self.lr_collapsed:
            parts.append(f"learning rate collapsed to {self.lr_lowest:.0e} by epoch {self.lr_collapse_epoch}")
        return "; ".join(parts)

    def record(self, pruned: bool = False) -> TrialRecord:
        """What the diagnosis adds to a trial's record."""
        return TrialRecord(overfit_epoch=self.overfit_epoch, final_gap=self.final_gap,
                           lr_collapsed=self.lr_collapsed, diagnosis=self.text(pruned))

    def attrs(self, pruned: bool = False) -> dict:
        """The same as stored user attributes (docs/architecture.md lists them)."""
        return self.record(pruned).attrs()


def diagnose(history: list[dict], lr_min: float | None = None) -> Diagnosis:
    """Diagnose one run from its per-epoch records (sorted by epoch; non-finite losses are skipped).

    lr_min: the schedule's intended floor, when known; the LR must fall below it to count as collapsed.
    """
    recs = [h for h in sorted(history, key=lambda h: h["epoch"])
            if _finite(h.get("val_loss")) and _finite(h.get("train_loss"))]
    if not recs:
        return Diagnosis(epochs=0, best_epoch=None, plateau_epoch=None, overfit_epoch=None, final_gap=None,
                         lr_collapsed=False, lr_collapse_epoch=None, lr_lowest=None, still_improving=False)
    val = [h["val_loss"] for h in recs]
    train = [h["train_loss"] for h in recs]
    lowest, last = min(val), len(recs) - 1
    b = val.index(lowest)
    # The plateau starts at the first epoch within tolerance of the minimum.
    i = next(k for k, v in enumerate(val) if v <= lowest + PLATEAU_TOLERANCE * abs(lowest))
    train_fell = min(train[i + 1:], default=train[i]) < train[i] - TRAIN_FALL * abs(train[i])
    gap_at_plateau, final_gap = val[i] - train[i], val[-1] - train[-1]
    # Overfitting: validation flat or rising for a while (not at its minimum at the end), train still
    # falling, and the gap between them widening.
    overfit = (last - i >= MIN_EPOCHS_AFTER and val[-1] > lowest and train_fell
               and final_gap - gap_at_plateau > GAP_WIDENING)
    collapsed, collapse_epoch, lr_lowest = _lr_collapse(recs, lr_min)
    return Diagnosis(
        epochs=recs[-1]["epoch"], best_epoch=recs[b]["epoch"], plateau_epoch=recs[i]["epoch"],
        overfit_epoch=recs[i]["epoch"] if overfit else None, final_gap=final_gap,
        lr_collapsed=collapsed, lr_collapse_epoch=collapse_epoch, lr_lowest=lr_lowest,
        still_improving=not overfit and last - b < MIN_EPOCHS_AFTER,
    )


def _lr_collapse(recs: list[dict], lr_min: float | None) -> tuple[bool, int | None, float | None]:
    """(collapsed, first epoch at the lowest learning rate, the lowest learning rate)."""
    lrs = [(h["epoch"], h["lr"]) for h in recs if _finite(h.get("lr"))]
    if not lrs:
        return False, None, None
    low_epoch, low = min(lrs, key=lambda x: (x[1], x[0]))
    eps = 1e-9  # 1e-4 * 1e-3 is 1.0000000000000001e-07 in floating point
    collapsed = low <= lrs[0][1] * COLLAPSE_RATIO * (1 + eps) and (lr_min is None or low < lr_min * (1 - eps))
    return collapsed, low_epoch if collapsed else None, low


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
