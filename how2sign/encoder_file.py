"""The pose-encoder file (`encoder.pt`): what `h2s-search pretrain` writes and `encoder_init` reads.

One file holds a format tag, the encoder's shape, the feature layout it was trained on (points, channels,
normalisation), the fingerprint of the train split it saw, and the PoseEncoder state_dict. It is written
atomically. Reading also accepts a plain PyTorch state_dict of the same encoder, our own translation
checkpoints, and Lightning-style checkpoints whose keys carry `model.` or `encoder.` prefixes; those carry
no layout or fingerprint, so only the shapes that the tensors reveal can be checked.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .checkpoint import CheckpointError
from .features import FEATURE_VERSION, LEFT_HAND_OFFSET, NUM_HAND, RIGHT_HAND_OFFSET
from .model import ModelConfig

FORMAT = "h2s-search encoder"
FORMAT_VERSION = 1
ENCODER_FILE = "encoder.pt"
CHANNELS = ("x", "y", "visible")
NORMALISATION = f"shoulder-centred, shoulder-width scale (feature version {FEATURE_VERSION})"
SHAPE_KEYS = ("d_model", "nhead", "encoder_layers", "dim_feedforward")
# Prefixes tried, in order, to find a PoseEncoder's keys inside a bigger state_dict.
PREFIXES = ("", "encoder.", "model.encoder.", "model.", "module.encoder.", "module.")
_ANCHOR_KEY = "input_proj.0.weight"


class EncoderFileError(CheckpointError):
    """An encoder file that cannot initialise this model; the message names the file and the mismatch."""


@dataclass(frozen=True)
class FeatureLayout:
    points: tuple[int, ...]
    channels: tuple[str, ...] = CHANNELS
    normalisation: str = NORMALISATION

    @property
    def input_dim(self) -> int:
        return len(self.points) * len(self.channels)

    def hand_points(self) -> tuple[list[int], list[int]]:
        """Positions (in this layout) of the left-hand and right-hand points."""
        left = [i for i, p in enumerate(self.points) if LEFT_HAND_OFFSET <= p < LEFT_HAND_OFFSET + NUM_HAND]
        right = [i for i, p in enumerate(self.points) if RIGHT_HAND_OFFSET <= p < RIGHT_HAND_OFFSET + NUM_HAND]
        return left, right

    def to_dict(self) -> dict:
        return {"points": list(self.points), "channels": list(self.channels), "normalisation": self.normalisation}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureLayout:
        return cls(tuple(int(p) for p in d["points"]), tuple(d["channels"]), str(d["normalisation"]))


@dataclass
class EncoderFile:
    path: Path
    kind: str              # "h2s" (our format) or "state_dict" (plain, prefixed or Lightning)
    shape: dict            # SHAPE_KEYS plus input_dim; nhead is None when the file cannot tell
    layout: FeatureLayout | None
    fingerprint: str | None
    state_dict: dict
    info: dict             # pretraining summary (epochs, errors), empty for foreign files


def save_encoder(path: Path, encoder: torch.nn.Module, cfg: ModelConfig, layout: FeatureLayout,
                 fingerprint: str, info: dict | None = None) -> None:
    """Write atomically: a reader never sees half a file, even if this process dies mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "h2s_version": __version__,
           "config": {**{k: getattr(cfg, k) for k in SHAPE_KEYS}, "input_dim": cfg.input_dim,
                      "dropout": cfg.dropout, "max_frames": cfg.max_frames},
           "layout": layout.to_dict(), "fingerprint": fingerprint, "info": dict(info or {}), "state_dict": state}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_encoder(path: Path) -> EncoderFile:
    """Any accepted form -> EncoderFile; EncoderFileError for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(f"encoder file not found: {path}")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise EncoderFileError(f"{path}: not a readable encoder file ({type(exc).__name__})") from None
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise EncoderFileError(f"{path}: written by a newer h2s-search (format {doc['format_version']})")
        sd = doc["state_dict"]
        return EncoderFile(path, "h2s", {**shape_of(sd, path), **{k: doc["config"][k] for k in SHAPE_KEYS}},
                           FeatureLayout.from_dict(doc["layout"]), doc.get("fingerprint"), sd, doc.get("info", {}))
    sd = _tensor_dict(doc)
    if sd is None:
        raise EncoderFileError(f"{path}: neither an h2s-search encoder file nor a PyTorch state_dict")
    encoder_sd = strip_prefix(sd, path)
    shape = shape_of(encoder_sd, path)
    nhead = doc.get("model_config", {}).get("nhead") if isinstance(doc, dict) else None
    return EncoderFile(path, "state_dict", {**shape, "nhead": nhead}, None, None, encoder_sd, {})


def _tensor_dict(doc) -> dict | None:
    """The state_dict inside a plain dict, a Lightning checkpoint (`state_dict`) or ours (`model`)."""
    if not isinstance(doc, dict):
        return None
    for key in ("state_dict", "model"):
        inner = doc.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if doc and all(isinstance(v, torch.Tensor) for v in doc.values()):
        return doc
    return None


def strip_prefix(sd: dict, path: Path) -> dict:
    for prefix in PREFIXES:
        if prefix + _ANCHOR_KEY in sd:
            return {k[len(prefix):]: v for k, v in sd.items()
                    if k.startswith(prefix) and k[len(prefix):].startswith(("input_proj.", "transformer."))}
    raise EncoderFileError(f"{path}: no pose-encoder weights found (looked for {_ANCHOR_KEY!r} under prefixes "
                           f"{', '.join(repr(p) for p in PREFIXES if p)} or none)")


def shape_of(sd: dict, path: Path) -> dict:
    """The shapes a PoseEncoder state_dict reveals (attention heads are not among them)."""
    try:
        d_model, input_dim = sd[_ANCHOR_KEY].shape
        layers = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.layers.")}
        ff = int(sd["transformer.layers.0.linear1.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise EncoderFileError(f"{path}: incomplete pose-encoder weights ({exc})") from None
    return {"d_model": int(d_model), "input_dim": int(input_dim), "encoder_layers": len(layers),
            "dim_feedforward": ff, "nhead": None}


def check_encoder(ef: EncoderFile, cfg: ModelConfig, layout: FeatureLayout, fingerprint: str | None) -> None:
    """One line naming the first mismatch between the file and the model/data it should initialise."""
    where = str(ef.path)
    for key in SHAPE_KEYS:
        have = ef.shape.get(key)
        if have is not None and have != getattr(cfg, key):
            raise EncoderFileError(f"{where}: encoder {key} is {have}, but this model has {key}={getattr(cfg, key)} "
                                   f"(another architecture; set {key}={have} or pretrain a matching encoder)")
    if ef.layout is not None:
        for key in ("points", "channels", "normalisation"):
            if getattr(ef.layout, key) != getattr(layout, key):
                raise EncoderFileError(f"{where}: feature layout differs in {key} (the encoder was pretrained on "
                                       "other features; re-pack the data with its layout or pretrain again)")
    if ef.shape["input_dim"] != cfg.input_dim:
        raise EncoderFileError(f"{where}: encoder takes {ef.shape['input_dim']} input features, this data has "
                               f"{cfg.input_dim} (another feature layout)")
    if ef.fingerprint is not None and fingerprint is not None and ef.fingerprint != fingerprint:
        raise EncoderFileError(f"{where}: pretrained on another dataset (train fingerprint {ef.fingerprint[:12]}, "
                               f"this data {fingerprint[:12]})")


def describe(ef: EncoderFile) -> dict:
    return {"path": str(ef.path), "kind": ef.kind, "shape": ef.shape,
            "layout": ef.layout.to_dict() if ef.layout else None, "fingerprint": ef.fingerprint, **ef.info}
