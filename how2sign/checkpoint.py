"""Self-describing checkpoints: enough to resume training or to decode with nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__

FORMAT = "h2s-search checkpoint"
FORMAT_VERSION = 1
BEST, LAST = "best_checkpoint.pt", "last_checkpoint.pt"


class CheckpointError(ValueError):
    """The file is missing, unreadable or not one of ours."""


def save(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "h2s_version": __version__,
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
    keys = ("h2s_version", "torch_version", "epoch", "best_epoch", "best_val_loss", "fingerprint",
            "params", "model_config", "train_config", "device")
    return {k: state.get(k) for k in keys}
