"""The encoder arms of a study that searches a categorical parameter named `encoder`: each arm's trials
compared at an equal epoch budget, with `random-frozen` as the control (docs/architecture.md)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..arms import ARM_NAMES, ARMS, CONTROL_ARM, ENCODER_PARAM
from .data import ReportData, TrialInfo

__all__ = ["CONTROL_ARM", "ENCODER_PARAM", "ArmRow", "ArmsComparison", "encoder_arms"]

# The arm the verdict weighs against the control: what pretraining adds to a frozen encoder.
PRETRAINED_FROZEN = next(a.name for a in ARMS if a.pretrained and a.frozen)


@dataclass(frozen=True)
class ArmRow:
    arm: str
    control: bool
    trials: int                     # every trial of the arm, whatever its state
    complete: int                   # the ones compared: they ran the whole epoch budget
    best_val_loss: float | None
    mean_val_loss: float | None
    median_val_loss: float | None
    best_bleu: float | None
    mean_bleu: float | None
    seconds_per_trial: float | None  # mean over complete trials
    seconds_per_epoch: float | None  # mean over every trial that recorded its time and epochs

    @property
    def label(self) -> str:
        return f"{self.arm} (control)" if self.control else self.arm


@dataclass(frozen=True)
class ArmsComparison:
    rows: list[ArmRow]
    epochs: int | None              # the most epochs a complete trial ran: the budget every arm had
    verdict: str                    # pretrained-frozen against the control, in plain words


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _arm_row(arm: str, trials: list[TrialInfo]) -> ArmRow:
    complete = [t for t in trials if t.state == "COMPLETE"]
    losses = [t.val_loss for t in complete if t.val_loss is not None]
    bleus = [t.record.bleu for t in complete if t.record.bleu is not None]
    per_trial = [t.record.seconds for t in complete if t.record.seconds is not None]
    per_epoch = [t.record.seconds / t.record.epochs_run for t in trials
                 if t.record.seconds is not None and t.record.epochs_run]
    return ArmRow(arm=arm, control=arm == CONTROL_ARM, trials=len(trials), complete=len(complete),
                  best_val_loss=min(losses) if losses else None, mean_val_loss=_mean(losses),
                  median_val_loss=statistics.median(losses) if losses else None,
                  best_bleu=max(bleus) if bleus else None, mean_bleu=_mean(bleus),
                  seconds_per_trial=_mean(per_trial), seconds_per_epoch=_mean(per_epoch))


def _verdict(rows: list[ArmRow]) -> str:
    by_arm = {r.arm: r for r in rows}
    pre, control = by_arm.get(PRETRAINED_FROZEN), by_arm.get(CONTROL_ARM)
    if pre is None or control is None or pre.best_val_loss is None or control.best_val_loss is None:
        return "No verdict yet: the pretrained-frozen arm and the random-frozen control both need a complete trial."
    if pre.best_val_loss < control.best_val_loss:
        return (f"The pretrained frozen encoder beats the random frozen control (best val loss "
                f"{pre.best_val_loss:.4f} against {control.best_val_loss:.4f}): pretraining taught it something.")
    return (f"The pretrained frozen encoder does not beat the random frozen control (best val loss "
            f"{pre.best_val_loss:.4f} against {control.best_val_loss:.4f}): here, pretraining taught it nothing "
            "the decoder can use.")


def encoder_arms(d: ReportData) -> ArmsComparison | None:
    """Per arm of the `encoder` parameter; None when the study does not search one."""
    dim = next((x for x in d.dimensions if x.name == ENCODER_PARAM and x.kind == "categorical"), None)
    seen = {t.params[ENCODER_PARAM] for t in d.trials if ENCODER_PARAM in t.params}
    if dim is None and not seen:
        return None
    known = [*(dim.choices if dim else ()), *sorted(seen, key=str)]
    arms = [a for a in ARM_NAMES if a in known] + [a for a in dict.fromkeys(known) if a not in ARM_NAMES]
    rows = [_arm_row(str(a), [t for t in d.trials if t.params.get(ENCODER_PARAM) == a]) for a in arms]
    epochs = [t.record.epochs_run for t in d.trials if t.state == "COMPLETE" and t.record.epochs_run]
    return ArmsComparison(rows, max(epochs) if epochs else None, _verdict(rows))
