"""Re-run a recorded trial: same params (through config_from_trial), same seed, same data."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna

from how2sign.batches import TrainData
from how2sign.jobs import choose_data
from how2sign.train import train

from .errors import UserError
from .records import TrialRecord
from .space import config_from_trial
from .study import FingerprintMismatch, load_stored


def reproduce(study: str, number: int, *, storage: str | None, data: Path | None, out_dir: Path | None = None,
              device: str = "cpu", say=print) -> dict:
    """data: --data, or None for the built-in corpus; `say(DataChoice)` is told which, once the trial is known."""
    opened = load_stored(storage, study, heartbeat=False)
    match = [t for t in opened.study.get_trials(deepcopy=False) if t.number == number]
    if not match:
        raise UserError(f"study {study!r} has no trial {number}")
    t = match[0]
    record = TrialRecord.read(t)
    recorded, epochs = record.val_loss, record.epochs_run
    if recorded is None or not epochs:
        raise UserError(f"trial {number} of {study!r} recorded no validation loss (state {t.state.name})")
    cfg = config_from_trial(optuna.trial.FixedTrial(t.params, number=number), opened.spec)
    choice = choose_data(data)
    say(choice)
    train_data = TrainData.load(choice.root, min_freq=cfg.vocab_min_freq)
    if train_data.fingerprint != opened.fingerprint:
        raise FingerprintMismatch(f"data {choice.root} is not the data study {study!r} was run on")
    done = {"epochs": 0}

    def on_epoch(rec: dict) -> None:
        done["epochs"] = rec["epoch"]

    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, train_data, out_dir or Path(tmp), device=device, on_epoch=on_epoch,
                       should_stop=lambda: done["epochs"] >= epochs)
    return {"trial": number, "params": t.params, "recorded_val_loss": recorded, "val_loss": result.best_val_loss,
            "difference": abs(result.best_val_loss - recorded), "epochs": result.epochs_run}
