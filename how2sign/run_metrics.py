"""A run folder's metrics.json: its one writer and its one reader (RunMetrics), and the best-epoch losses.

metrics.json is rewritten atomically after every epoch, so a pruned, interrupted or killed run still
has one. Plain Python: the search service's report reads it without importing torch.

    {"params": 1234, "device": "cpu", "fingerprint": "...", "train_config": {...}, "model_config": {...},
     "best_epoch": 3, "best_val_loss": 4.1,
     "epochs": [{"epoch": 1, "train_loss": ..., "val_loss": ..., "lr": ..., "seconds": ...,
                 "frames_per_second": ...}, ...]}

`seconds` of an epoch is its optimisation loop (validation and checkpoints excluded).

Where a run's steps are train clips (how2sign.reporting), it also lists every report the hook saw, the
intermediate ones and each epoch's own, under a key the per-epoch readers never look at:

     "reports": [{"step": 8000, "epoch": 1, "clips": 8000, "epoch_end": false, "val_clips": 600,
                  "val_loss": ...}, ...]

Before the first epoch ends (a checkpoint inside it) best_epoch is 0 and best_val_loss null.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

METRICS = "metrics.json"


class MetricsError(ValueError):
    """metrics.json is missing, unreadable or not in the expected shape."""


@dataclass(frozen=True)
class BestEpoch:
    epoch: int
    train_loss: float
    val_loss: float

    @property
    def gap(self) -> float:
        """Validation minus train loss at the best epoch: how far the model overfits."""
        return self.val_loss - self.train_loss


def best_epoch_of(history: list[dict], best_epoch: int) -> BestEpoch | None:
    """The losses at the best epoch, from a run's per-epoch history; None before any epoch ended.

    The one definition of "train loss and gap at the best epoch", used by TrainResult, RunMetrics and
    evaluate_checkpoint.
    """
    rec = next((h for h in history if h["epoch"] == best_epoch), None)
    return BestEpoch(rec["epoch"], rec["train_loss"], rec["val_loss"]) if rec else None


@dataclass(frozen=True)
class RunMetrics:
    """What train() has recorded in a run folder so far."""

    best_epoch: int                 # 0 before the first epoch ends
    best_val_loss: float            # inf before the first epoch ends
    history: list[dict] = field(default_factory=list)  # one record per finished epoch, in order
    params: int | None = None       # trainable parameter count of the model
    device: str | None = None
    fingerprint: str | None = None  # of the train + val data
    train_config: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)
    reports: list[dict] = field(default_factory=list)  # where steps are clips: every report, in order

    @classmethod
    def load(cls, run_dir: Path) -> RunMetrics:
        """Read run_dir/metrics.json; MetricsError when it is missing, damaged or of another shape."""
        path = Path(run_dir) / METRICS
        try:
            doc = json.loads(path.read_text())
            best = doc["best_val_loss"]
            return cls(best_epoch=int(doc["best_epoch"]), best_val_loss=math.inf if best is None else float(best),
                       history=[dict(e) for e in doc["epochs"]], params=doc.get("params"),
                       device=doc.get("device"), fingerprint=doc.get("fingerprint"),
                       train_config=dict(doc.get("train_config") or {}),
                       model_config=dict(doc.get("model_config") or {}),
                       reports=[dict(r) for r in doc.get("reports") or []])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MetricsError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None

    @classmethod
    def read(cls, run_dir: Path | str | None) -> RunMetrics | None:
        """Like load, but None where there is no readable metrics.json (a trial that never ended an epoch)."""
        if not run_dir:
            return None
        try:
            return cls.load(Path(run_dir))
        except MetricsError:
            return None

    def write(self, run_dir: Path) -> None:
        """Atomically replace run_dir/metrics.json: a reader never sees half a file."""
        doc = {"params": self.params, "device": self.device, "fingerprint": self.fingerprint,
               "train_config": self.train_config, "model_config": self.model_config,
               "best_epoch": self.best_epoch,
               "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
               "epochs": self.history}
        if self.reports:
            doc["reports"] = self.reports
        tmp = Path(run_dir) / f".{METRICS}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, Path(run_dir) / METRICS)

    @property
    def epochs_run(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def best(self) -> BestEpoch | None:
        return best_epoch_of(self.history, self.best_epoch)

    @property
    def train_loss(self) -> float | None:
        """Train loss at the best epoch."""
        return self.best.train_loss if self.best else None

    @property
    def gap(self) -> float | None:
        """Validation minus train loss at the best epoch."""
        return self.best.gap if self.best else None

    @property
    def frames_per_second(self) -> float | None:
        """Real frames per second of the optimisation loops, over all epochs (as TrainResult's)."""
        seconds = sum(e["seconds"] for e in self.history)
        frames = sum(e["frames_per_second"] * e["seconds"] for e in self.history)
        return frames / seconds if seconds > 0 else None

    def val_curve(self) -> list[tuple[int, float]]:
        """(epoch, validation loss) of every epoch whose loss is finite."""
        return [(int(e["epoch"]), float(e["val_loss"])) for e in self.history if math.isfinite(e["val_loss"])]

    def report_curve(self) -> list[tuple[int, float]]:
        """(step, validation loss) of every report whose loss is finite: where steps are clips, the curve the
        pruner saw; [] where reports were per epoch (val_curve is that curve)."""
        return [(int(r["step"]), float(r["val_loss"])) for r in self.reports if math.isfinite(r["val_loss"])]
