"""A translation model's encoder from a pretrained file: load, freeze, learning-rate groups, cached outputs.

`train()` calls three things from here:

    digest = apply_encoder_init(model, cfg, data)          # load cfg.encoder_init, freeze when asked
    opt = AdamW(param_groups(model, cfg), ...)              # the encoder at lr x encoder_lr_scale
    train_b, val_b = encoder_outputs(model, cfg, dev, dtype, train_b, val_b)

A frozen encoder is excluded from the optimizer and pinned to eval mode (no dropout), so its weights stay
bit-identical and its outputs are a pure function of the clip. When no augmentation changes the clips
either, `encoder_outputs` computes each clip's output once and hands batches of those outputs to the
decoder: a decoder-only trial never runs the encoder again. The outputs are kept per process, keyed by
the encoder's weights, its heads, the split and max_frames, so the next trial of a worker with the same
frozen encoder reuses them, within a memory budget ($H2S_ENCODER_CACHE_MB, default 2048; 0 disables).
"""

from __future__ import annotations

import hashlib
import os
import types
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .batches import Batcher, TrainData, round_up
from .config import TrainConfig
from .device import autocast
from .encoder_file import EncoderFileError, FeatureLayout, check_encoder, file_hash, read_encoder
from .model import SignTranslator

CACHE_ENV = "H2S_ENCODER_CACHE_MB"
DEFAULT_CACHE_MB = 2048
_SHARED: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()  # per process: reused across trials


def layout_of(data: TrainData) -> FeatureLayout:
    return FeatureLayout(tuple(int(p) for p in data.train.points))


def apply_encoder_init(model: SignTranslator, cfg: TrainConfig, data: TrainData) -> str | None:
    """Load cfg.encoder_init into model.encoder (checked against model and data), then freeze when asked.

    Returns the encoder file's sha256, or None without a file.
    """
    digest = None
    if cfg.encoder_init:
        ef = read_encoder(cfg.encoder_init)
        check_encoder(ef, model.cfg, layout_of(data), data.train.fingerprint)
        try:
            model.encoder.load_state_dict(ef.state_dict)
        except RuntimeError as exc:
            raise EncoderFileError(f"{ef.path}: weights do not fit this encoder "
                                   f"({str(exc).splitlines()[-1].strip()[:160]})") from None
        digest = file_hash(ef.path)
    if cfg.freeze_encoder:
        freeze(model.encoder)
    return digest


def freeze(encoder: nn.Module) -> None:
    """No gradients, and eval mode for good: model.train() must not switch a frozen encoder's dropout on."""
    encoder.requires_grad_(False)
    encoder.train = types.MethodType(_always_eval, encoder)
    encoder.eval()


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters; the encoder in its own group at lr x encoder_lr_scale when that is not 1."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    encoder = getattr(model, "encoder", None)
    if cfg.encoder_lr_scale == 1.0 or encoder is None:
        return [{"params": trainable}]
    enc_ids = {id(p) for p in encoder.parameters()}
    groups = [{"params": [p for p in trainable if id(p) not in enc_ids]}]
    enc = [p for p in trainable if id(p) in enc_ids]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale})
    return groups


def cache_budget_bytes() -> int:
    try:
        return int(float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_MB)) * 2**20)
    except ValueError:
        return DEFAULT_CACHE_MB * 2**20


def encoder_outputs(model: SignTranslator, cfg: TrainConfig, device: torch.device, dtype,
                    *batchers: Batcher) -> tuple:
    """The batchers unchanged, or, for a frozen encoder without augmentation, batchers of cached outputs.

    In the cached case the model's `encode` becomes the identity for the rest of this run: the batches'
    `src` already is the encoder's output (B, T, D).
    """
    if not cfg.freeze_encoder or any(b.augmenting for b in batchers):
        return batchers
    need = sum(int(np.minimum(b.split.lengths, cfg.max_frames).sum()) for b in batchers) * cfg.d_model * 4
    budget = cache_budget_bytes()
    if need > budget:
        return batchers
    weights = _weights_key(model)
    cached = []
    for b in batchers:
        key = (weights, model.cfg.nhead, b.split.split, b.split.fingerprint, cfg.max_frames, str(device), str(dtype))
        if key not in _SHARED:
            _evict(budget - need)
            _SHARED[key] = _compute(model, b, device, dtype)
        _SHARED.move_to_end(key)
        cached.append(CachedBatcher(b, _SHARED[key]))
    model.encode = _passthrough  # instance attribute: only this model, only this run
    return tuple(cached)


def _passthrough(src: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
    return src


def _weights_key(model: SignTranslator) -> str:
    h = hashlib.sha256()
    for name, t in model.encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _evict(keep_bytes: int) -> None:
    """Drop the least recently used outputs until at most keep_bytes remain."""
    def size() -> int:
        return sum(sum(t.numel() * t.element_size() for t in v) for v in _SHARED.values())

    while _SHARED and size() > max(keep_bytes, 0):
        _SHARED.popitem(last=False)


@torch.no_grad()
def _compute(model: SignTranslator, batcher: Batcher, device: torch.device, dtype) -> list[torch.Tensor]:
    """Each clip's encoder output (T_i, D), float32 on the CPU, from length-bucketed batches."""
    out: list[torch.Tensor | None] = [None] * len(batcher.split)
    model.encoder.eval()
    for idx in batcher.plan(np.arange(len(batcher.split)), shuffle=False, rng=None):
        b = batcher.make(idx).to(device)
        with autocast(device, dtype):
            memory = model.encoder(b.src, b.src_pad)  # (B, T, D)
        memory = memory.float().cpu()
        real = (~b.src_pad).sum(1).tolist()
        for j, i in enumerate(idx):
            out[i] = memory[j, : real[j]].clone()
    return out  # type: ignore[return-value]


class CachedBatcher(Batcher):
    """A Batcher whose batches carry cached encoder outputs (B, T, D) as `src`; targets as its base's."""

    def __init__(self, base: Batcher, memory: list[torch.Tensor]):
        vars(self).update(vars(base))
        self.memory, self.augmenting = memory, False

    def sources(self, idx: list[int], rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        mems = [self.memory[i] for i in idx]
        T = round_up(max(len(m) for m in mems), self.pad_to[0], self.cfg.max_frames)
        src = torch.zeros(len(idx), T, mems[0].shape[1])
        pad = torch.ones(len(idx), T, dtype=torch.bool)
        for b, m in enumerate(mems):
            src[b, : len(m)] = m
            pad[b, : len(m)] = False
        return src, pad, int(sum(len(m) for m in mems))
