"""Self-describing checkpoints: enough to resume training or to decode with nothing else.

A run's checkpoint holds its TrainState, the model, optimizer, scheduler and scaler states, the RNG
states, the vocabulary and the configs. `run_checkpoint` builds it, `save_run` writes it (usually on
a BackgroundWriter's thread), `restore_run` loads it back into a run.

A checkpoint written at a report inside an epoch (TrainState.partial: how far the epoch's batch plan got,
its augmentation stream, its loss sums so far) is format 2, so that code reading only format 1, which
would restart that epoch from its first batch with the weights of its middle, refuses it. Epoch
checkpoints stay format 1, and checkpoints written before `report_every` existed load as they are.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .config import TrainConfig
from .run_metrics import BestEpoch, RunMetrics, best_epoch_of

FORMAT = "h2s-search checkpoint"
FORMAT_VERSION = 2       # the newest format this code reads
EPOCH_FORMAT, INSIDE_EPOCH_FORMAT = 1, 2  # what save() stamps: see the module's docstring
BEST, LAST = "best_checkpoint.pt", "last_checkpoint.pt"


class CheckpointError(ValueError):
    """The file is missing, unreadable or not one of ours."""


def save(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    version = INSIDE_EPOCH_FORMAT if state.get("partial") is not None else EPOCH_FORMAT
    torch.save({"format": FORMAT, "format_version": version, "h2s_version": __version__,
                "torch_version": str(torch.__version__), **state}, tmp)
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise CheckpointError(f"not an h2s-search checkpoint: {path} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"not an h2s-search checkpoint: {path}")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer h2s-search (format {state['format_version']})")
    return state


def describe(state: dict) -> dict:
    """The human-readable part of a checkpoint (no tensors)."""
    keys = ("h2s_version", "torch_version", "epoch", "best_epoch", "best_val_loss", "clips", "fingerprint",
            "params", "model_config", "train_config", "device")
    out = {k: state.get(k) for k in keys}
    partial = state.get("partial")
    out["inside_epoch"] = None if partial is None else {"epoch": partial["epoch"], "batches": partial["batches"]}
    return out


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint, so a resumed run goes on exactly where it was."""

    epoch: int = 0                  # last finished epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0             # epochs since the last improvement (early-stopping patience)
    history: list[dict] = field(default_factory=list)
    clips: int = 0                  # train clips seen over the finished epochs
    reports: list[dict] = field(default_factory=list)  # where steps are clips: every report so far
    partial: dict | None = None     # a checkpoint inside an epoch: where it stands (how2sign.epoch.Position)

    KEYS = ("epoch", "best_val_loss", "best_epoch", "bad_epochs", "history")  # in every checkpoint
    LATER_KEYS = ("clips", "reports", "partial")  # absent from checkpoints written before report_every

    def end_epoch(self, record: dict, min_delta: float, clips: int = 0) -> bool:
        """Append the epoch's record (its `clips` train clips seen); returns whether it improved on the best."""
        self.history.append(record)
        self.epoch, self.partial = record["epoch"], None
        self.clips += clips
        improved = record["val_loss"] < self.best_val_loss - min_delta
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs = record["val_loss"], record["epoch"], 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def best(self) -> BestEpoch | None:
        return best_epoch_of(self.history, self.best_epoch)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": [dict(h) for h in self.history], "clips": self.clips,
                "reports": [dict(r) for r in self.reports], "partial": self.partial}

    @classmethod
    def from_checkpoint(cls, ck: dict) -> TrainState:
        later = {k: ck[k] for k in cls.LATER_KEYS if ck.get(k) is not None}
        return cls(**{k: ck[k] for k in cls.KEYS}, **later)


def run_checkpoint(meta: dict, state: TrainState, vocab: list[str], model, opt, sched, scaler,
                   device: torch.device) -> dict:
    """The checkpoint of a run, as CPU copies: training may go on while a writer thread saves it.

    meta holds params, device, fingerprint, train_config and model_config.
    """
    rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {**meta, **state.to_dict(), "vocab": list(vocab), "model": cpu_copy(model.state_dict()),
            "optimizer": cpu_copy(opt.state_dict()), "scheduler": cpu_copy(sched.state_dict()),
            "scaler": cpu_copy(scaler.state_dict()), "rng_torch": torch.get_rng_state(), "rng_cuda": rng_cuda}


def cpu_copy(obj, _seen: dict | None = None):
    """Tensors copied to the CPU (views of one storage stay shared, as in the original), containers rebuilt."""
    seen = {} if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.shape, obj.stride(), obj.dtype)
        if key not in seen:
            seen[key] = obj.detach().to("cpu", copy=True)
        return seen[key]
    if isinstance(obj, dict):
        return type(obj)((k, cpu_copy(v, seen)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v, seen) for v in obj)
    return obj


def save_run(out_dir: Path, ck: dict, *, best: bool, metrics: RunMetrics) -> None:
    """The last checkpoint, the best one when this epoch improved, then metrics.json; each atomically."""
    out = Path(out_dir)
    save(out / LAST, ck)
    if best:
        _copy_atomically(out / LAST, out / BEST, ck)
    metrics.write(out)


def _copy_atomically(src: Path, dst: Path, ck: dict) -> None:
    # A hard link costs no second write; LAST is later replaced by a new file, never rewritten in place,
    # so the link keeps this epoch's bytes. Where links are not supported, write the file again.
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
    except OSError:
        save(dst, ck)
        return
    os.replace(tmp, dst)


def restore_run(path: Path, *, model, opt, sched, scaler, device: torch.device, fingerprint: str,
                train_config: dict) -> TrainState:
    """Load a checkpoint of the same experiment into the run's objects; returns its TrainState."""
    ck = load(path, map_location=device)
    if ck.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path} was trained on different data (fingerprint differs)")
    if not same_config(ck["train_config"], train_config):
        raise CheckpointError(f"{path} was trained with a different TrainConfig")
    model.load_state_dict(ck["model"])
    kinds = [(g.get("fused"), g.get("foreach")) for g in opt.param_groups]
    opt.load_state_dict(ck["optimizer"])
    _keep_optimizer_kind(opt, kinds)
    sched.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng_torch"].cpu())
    if device.type == "cuda" and ck.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ck["rng_cuda"].cpu(), device)
    return TrainState.from_checkpoint(ck)


def same_config(saved: dict, current: dict) -> bool:
    """A checkpoint's TrainConfig is this run's: a field added since it was written (report_every) counts as
    its default, which is what that run ran with."""
    return {**TrainConfig().to_dict(), **saved} == current


def _keep_optimizer_kind(opt, kinds: list) -> None:
    # load_state_dict takes the fused/foreach flags of the run that saved the file, which may have run
    # on another device; keep the implementation chosen for this device, with its step counters where
    # it expects them (fused: on the parameters' device; otherwise on the CPU).
    for group, (fused, foreach) in zip(opt.param_groups, kinds, strict=True):
        group["fused"], group["foreach"] = fused, foreach
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                opt.state[p]["step"] = step.to(p.device, torch.float32) if fused else step.cpu()


class BackgroundWriter:
    """Runs write jobs on one thread, at most one in flight: training goes on while a checkpoint is saved.

    A job's error is raised in the training thread by the next submit() or wait(). Every file is
    written atomically, so a kill at any moment leaves the previous complete files in place.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn, *args, **kwargs) -> None:
        self.wait()
        if not self.enabled:
            fn(*args, **kwargs)
            return
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), name="h2s-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except BaseException as exc:  # handed to the training thread
            self._error = exc

    def wait(self, raise_errors: bool = True) -> None:
        """Block until the write in flight (if any) is on disk."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_errors:
            raise error
