"""Self-supervised masked keypoint modelling: pretrain a PoseEncoder on the train split's keypoints.

About half of each clip's frames are hidden in spans of 4-8 frames, and in some other frames one whole
hand is hidden. Hidden keypoints are replaced by a learned mask token; the model (the same PoseEncoder
that translation uses, plus a linear head) predicts their x, y. The loss counts only hidden keypoints
that were visible in the source, weighted by visibility. AdamW with a cosine schedule.

Only the train split is learnt from; the val split's keypoints (never its sentences) measure the
masked-reconstruction error against linear interpolation across the hidden span. An encoder that does
not beat interpolation has learnt nothing, and the verdict says so.

    result = pretrain(PretrainConfig(epochs=20), root, out_dir)   # writes out_dir/encoder.pt
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .batches import subsample
from .data import PackedSplit, bucket_batches, load_split
from .device import amp_dtype, autocast, resolve_device
from .encoder_file import ENCODER_FILE, FeatureLayout, save_encoder
from .model import ModelConfig, PoseEncoder
from .progress import EpochProgress
from .rules import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    ConfigError,
    Rule,
    Settings,
    check_heads,
    check_lr,
    check_order,
    setting,
)

CHECKPOINT = "pretrain_checkpoint.pt"
VAL_MASK_SEED = 7919  # val masks are fixed, so epochs and runs are compared on the same hidden keypoints


@dataclass(frozen=True)
class PretrainConfig(Settings):
    # Encoder shape: V4's, so the result initialises V4 and the frozen-encoder study as it is.
    d_model: int = setting(256, AT_LEAST_ONE)
    nhead: int = setting(4, AT_LEAST_ONE)
    encoder_layers: int = setting(2, AT_LEAST_ONE)
    dim_feedforward: int = setting(1024, AT_LEAST_ONE)
    dropout: float = setting(0.1, UNIT)
    max_frames: int = setting(512, AT_LEAST_ONE)
    # Optimisation: AdamW, cosine lr -> lr_min over the epochs.
    batch_size: int = setting(64, AT_LEAST_ONE)
    lr: float = setting(5e-4, POSITIVE)
    lr_min: float = setting(1e-6, NON_NEGATIVE)
    weight_decay: float = setting(0.01, NON_NEGATIVE)
    grad_clip: float = setting(1.0, NON_NEGATIVE)
    epochs: int = setting(30, AT_LEAST_ONE)
    seed: int = setting(0, Rule(low=0, high=2**64 - 1))
    # Masking: this share of frames in spans of span_min..span_max frames; hand_drop of the remaining
    # frames lose one whole hand.
    mask_ratio: float = setting(0.5, UNIT)
    span_min: int = setting(4, AT_LEAST_ONE)
    span_max: int = setting(8, AT_LEAST_ONE)
    hand_drop: float = setting(0.15, UNIT)

    def check(self) -> None:
        check_heads(self.d_model, self.nhead)
        check_lr(self.lr, self.lr_min)
        check_order("span_min", self.span_min, "span_max", self.span_max)

    def model_config(self, input_dim: int) -> ModelConfig:
        # The encoder reads none of the decoder fields; they only need legal values.
        return ModelConfig(input_dim=input_dim, vocab_size=1, d_model=self.d_model, nhead=self.nhead,
                           encoder_layers=self.encoder_layers, decoder_layers=1,
                           dim_feedforward=self.dim_feedforward, dropout=self.dropout,
                           max_frames=self.max_frames, max_tokens=3)


# --------------------------------------------------------------------------- masking and the baseline
def make_mask(T: int, P: int, rng: np.random.Generator, cfg: PretrainConfig,
              hands: tuple[list[int], list[int]]) -> np.ndarray:
    """(T, P) bool, True where hidden: spans of whole frames up to ~mask_ratio of T, then hand drops."""
    frames = np.zeros(T, dtype=bool)
    target = round(cfg.mask_ratio * T)
    for _ in range(4 * T):  # bounded: spans may overlap
        if frames.sum() >= target:
            break
        n = min(int(rng.integers(cfg.span_min, cfg.span_max + 1)), T)
        s = int(rng.integers(0, T - n + 1))
        frames[s : s + n] = True
    mask = np.repeat(frames[:, None], P, axis=1)
    drop = ~frames & (rng.random(T) < cfg.hand_drop)
    side = rng.integers(0, 2, size=T)
    for which, points in enumerate(hands):
        rows = np.flatnonzero(drop & (side == which))
        if points and rows.size:
            mask[np.ix_(rows, points)] = True
    return mask


def interpolate(clip: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T, P, 3), (T, P) -> (T, P, 2): hidden x, y linearly interpolated from the nearest frames where the
    point is shown and visible (held at the clip's ends; 0, the shoulder centre, when never shown)."""
    out = clip[..., :2].copy()
    t = np.arange(clip.shape[0])
    for p in np.flatnonzero(mask.any(axis=0)):
        hidden = mask[:, p]
        known = ~hidden & (clip[:, p, 2] > 0)
        for c in (0, 1):
            out[hidden, p, c] = np.interp(t[hidden], t[known], clip[known, p, c]) if known.any() else 0.0
    return out


def squared_error(pred: np.ndarray | torch.Tensor, clip, mask) -> tuple[float, float]:
    """(sum of squared x, y distances, weight) over hidden keypoints, weighted by source visibility."""
    w = mask * clip[..., 2]
    err = ((pred - clip[..., :2]) ** 2).sum(-1)
    return float((err * w).sum()), float(w.sum())


# --------------------------------------------------------------------------- model
class MaskedPoseModel(nn.Module):
    """PoseEncoder + a learned mask token (one per point and channel) + a linear x, y head."""

    def __init__(self, cfg: ModelConfig, points: int):
        super().__init__()
        self.encoder = PoseEncoder(cfg)
        self.mask_token = nn.Parameter(torch.randn(points, 3) * 0.02)
        self.head = nn.Linear(cfg.d_model, points * 2)

    def forward(self, src: torch.Tensor, mask: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # src (B, T, P, 3), mask (B, T, P) True where hidden, pad (B, T) -> predicted x, y (B, T, P, 2)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(src.dtype), src)
        memory = self.encoder(x.flatten(2), pad)
        return self.head(memory).view(*src.shape[:3], 2)


def masked_loss(pred: torch.Tensor, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Only hidden keypoints that the source shows count, weighted by visibility; padding has mask False.
    w = mask.float() * src[..., 2]
    err = ((pred.float() - src[..., :2]) ** 2).sum(-1)
    return (err * w).sum() / w.sum().clamp_min(1.0)


@dataclass
class MaskedBatch:
    src: torch.Tensor   # (B, T, P, 3)
    mask: torch.Tensor  # (B, T, P) bool
    pad: torch.Tensor   # (B, T) bool

    def to(self, device: torch.device) -> MaskedBatch:
        return MaskedBatch(self.src.to(device), self.mask.to(device), self.pad.to(device))


def collate(clips: list[np.ndarray], masks: list[np.ndarray]) -> MaskedBatch:
    T, P = max(len(c) for c in clips), clips[0].shape[1]
    src = np.zeros((len(clips), T, P, 3), dtype=np.float32)
    mask = np.zeros((len(clips), T, P), dtype=bool)
    pad = np.ones((len(clips), T), dtype=bool)
    for b, (c, m) in enumerate(zip(clips, masks, strict=True)):
        src[b, : len(c)], mask[b, : len(c)], pad[b, : len(c)] = c, m, False
    return MaskedBatch(torch.from_numpy(src), torch.from_numpy(mask), torch.from_numpy(pad))


class MaskedData:
    """Clips of one split, subsampled to max_frames, with masks drawn per call (train) or fixed (val)."""

    def __init__(self, split: PackedSplit, cfg: PretrainConfig, layout: FeatureLayout, fixed_seed: int | None):
        self.split, self.cfg, self.hands = split, cfg, layout.hand_points()
        self.lengths = np.minimum(split.lengths, cfg.max_frames)
        self.fixed = None
        if fixed_seed is not None:
            self.fixed = [make_mask(int(n), split.num_points, np.random.default_rng([fixed_seed, i]), cfg, self.hands)
                          for i, n in enumerate(self.lengths)]

    def clip(self, i: int) -> np.ndarray:
        return subsample(self.split.clip(i), self.cfg.max_frames)

    def batch(self, idx: list[int], rng: np.random.Generator | None) -> MaskedBatch:
        clips = [self.clip(i) for i in idx]
        masks = [self.fixed[i] if self.fixed is not None else
                 make_mask(len(c), c.shape[1], rng, self.cfg, self.hands) for i, c in zip(idx, clips, strict=True)]
        return collate(clips, masks)

    def interpolation_error(self) -> float:
        total, weight = 0.0, 0.0
        for i in range(len(self.split)):
            c = self.clip(i)
            e, w = squared_error(interpolate(c, self.fixed[i]), c, self.fixed[i])
            total, weight = total + e, weight + w
        return total / max(weight, 1e-9)


@torch.no_grad()
def reconstruction_error(model: MaskedPoseModel, val: MaskedData, device: torch.device, dtype) -> float:
    model.eval()
    total, weight = 0.0, 0.0
    for idx in bucket_batches(val.lengths, val.cfg.batch_size, shuffle=False):
        b = val.batch(idx, None).to(device)
        with autocast(device, dtype):
            pred = model(b.src, b.mask, b.pad)
        e, w = squared_error(pred.float(), b.src, b.mask)
        total, weight = total + e, weight + w
    return total / max(weight, 1e-9)


# --------------------------------------------------------------------------- the run
@dataclass
class PretrainResult:
    out_dir: str
    encoder: str
    epochs_run: int
    best_epoch: int
    val_error: float          # masked-reconstruction error on val at the best epoch (squared shoulder widths)
    interpolation_error: float
    beats_interpolation: bool
    verdict: str
    params: int
    seconds: float
    device: str
    resumed_from_epoch: int | None
    interrupted: bool
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_line(val_error: float, interp: float) -> str:
    if math.isfinite(val_error) and val_error < interp:
        return (f"the encoder beats linear interpolation across the masked spans: val error {val_error:.4f} "
                f"against {interp:.4f} ({interp / max(val_error, 1e-12):.2f}x lower)")
    return (f"the encoder does NOT beat linear interpolation across the masked spans (val error {val_error:.4f} "
            f"against {interp:.4f}): it has learnt nothing about motion that interpolation does not already "
            "give, so do not expect it to help translation; train longer or on more clips")


class _Run:
    """Everything one pretraining run holds: model, optimiser, data, state; save and restore."""

    def __init__(self, cfg: PretrainConfig, root: Path, out: Path, device: str, amp: str):
        self.cfg, self.out = cfg, out
        self.dev = resolve_device(device)
        self.dtype = amp_dtype(self.dev, amp)
        train_split = load_split(root, "train")
        self.layout = FeatureLayout(tuple(int(p) for p in train_split.points))
        self.fingerprint = train_split.fingerprint  # identifies what the encoder learnt from
        self.train = MaskedData(train_split, cfg, self.layout, None)
        self.val = MaskedData(load_split(root, "val"), cfg, self.layout, VAL_MASK_SEED)
        torch.manual_seed(cfg.seed)
        self.model_cfg = cfg.model_config(self.layout.input_dim)
        self.model = MaskedPoseModel(self.model_cfg, train_split.num_points).to(self.dev)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.dtype == torch.float16)
        self.state = {"epoch": 0, "best_epoch": 0, "best_val_error": math.inf, "history": []}
        self.interp = self.val.interpolation_error()

    def restore(self, path: Path) -> int | None:
        if not path.exists():
            return None
        ck = checkpoint.load(path, map_location=self.dev)
        if ck.get("kind") != "pretrain":
            raise checkpoint.CheckpointError(f"{path} is not a pretraining checkpoint")
        if ck["fingerprint"] != self.fingerprint:
            raise checkpoint.CheckpointError(f"{path} was pretrained on different data (train fingerprint differs)")
        if ck["pretrain_config"] != self.cfg.to_dict():
            raise checkpoint.CheckpointError(f"{path} was pretrained with a different PretrainConfig")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_torch"])
        self.state = {k: ck[k] for k in self.state}
        return self.state["epoch"]

    def save(self, improved: bool, interrupted: bool = False) -> None:
        ck = {"kind": "pretrain", "pretrain_config": self.cfg.to_dict(), "fingerprint": self.fingerprint,
              **self.state, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
              "rng_torch": torch.get_rng_state()}
        checkpoint.save(self.out / CHECKPOINT, ck)
        if improved:
            info = {"epoch": self.state["epoch"], "val_error": self.state["best_val_error"],
                    "interpolation_error": self.interp, "pretrain_config": self.cfg.to_dict()}
            save_encoder(self.out / ENCODER_FILE, self.model.encoder, self.model_cfg, self.layout,
                         self.fingerprint, info)
        self.write_metrics()

    def write_metrics(self) -> None:
        best = self.state["best_val_error"]
        doc = {"pretrain_config": self.cfg.to_dict(), "params": self.params, "device": str(self.dev),
               "fingerprint": self.fingerprint, "best_epoch": self.state["best_epoch"], "best_val_error": best,
               "interpolation_error": self.interp, "beats_interpolation": bool(best < self.interp),
               "verdict": verdict_line(best, self.interp), "epochs": self.state["history"]}
        tmp = self.out / f".metrics.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.out / "metrics.json")

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.encoder.parameters())

    def epoch(self, epoch: int, should_stop, bar) -> float | None:
        """One pass over the train split; the mean loss, or None when stopped half-way."""
        rng = np.random.default_rng([self.cfg.seed, epoch])  # per-epoch stream: resume replays it exactly
        plan = bucket_batches(self.train.lengths, self.cfg.batch_size, shuffle=True, rng=rng)
        self.model.train()
        bar.start_epoch(epoch, len(plan))
        losses, weights = [], []
        for idx in plan:
            if should_stop and should_stop():
                return None
            b = self.train.batch(idx, rng).to(self.dev)
            with autocast(self.dev, self.dtype):
                pred = self.model(b.src, b.mask, b.pad)
            loss = masked_loss(pred, b.src, b.mask)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            losses.append(loss.detach())
            weights.append(float(b.mask.sum()))
            bar.advance()
        return float((torch.stack(losses).float().cpu() * torch.tensor(weights)).sum() / max(sum(weights), 1.0))


def pretrain(cfg: PretrainConfig, root: Path, out_dir: Path, *, device: str = "auto", amp: str = "auto",
             resume: bool = False, should_stop: Callable[[], bool] | None = None,
             on_epoch: Callable[[dict], None] | None = None, progress: bool = False) -> PretrainResult:
    """Pretrain for cfg.epochs (or until should_stop); resume=True continues OUT/pretrain_checkpoint.pt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, Path(root), out, device, amp)
    resumed = run.restore(out / CHECKPOINT) if resume else None
    t0, interrupted = time.perf_counter(), False
    bar = EpochProgress(progress, cfg.epochs, run.state["epoch"], label="pretrain epochs")
    try:
        for epoch in range(run.state["epoch"] + 1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            train_loss = run.epoch(epoch, should_stop, bar)
            if train_loss is None:
                interrupted = True
                break  # a half epoch is not checkpointed: resume restarts it
            if not math.isfinite(train_loss):
                raise ConfigError(f"pretraining loss is {train_loss} at epoch {epoch}; lower lr")
            val_error = reconstruction_error(run.model, run.val, run.dev, run.dtype)
            rec = {"epoch": epoch, "train_loss": train_loss, "val_error": val_error,
                   "interpolation_error": run.interp, "lr": run.opt.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - t_epoch}
            run.sched.step()
            improved = val_error < run.state["best_val_error"]
            run.state["history"].append(rec)
            run.state["epoch"] = epoch
            if improved:
                run.state.update(best_epoch=epoch, best_val_error=val_error)
            run.save(improved)
            bar.end_epoch(f"loss {rec['train_loss']:.4f}  val {rec['val_error']:.4f}  "
                          f"interpolation {rec['interpolation_error']:.4f}")
            if on_epoch:
                on_epoch(rec)
    finally:
        bar.close()
    best = run.state["best_val_error"]
    return PretrainResult(str(out), str(out / ENCODER_FILE), run.state["epoch"], run.state["best_epoch"], best,
                          run.interp, bool(best < run.interp), verdict_line(best, run.interp), run.params,
                          time.perf_counter() - t0, str(run.dev), resumed, interrupted, run.state["history"])
