"""From a packed split to padded tensors: the train/val data bundle and batch assembly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .data import PackedSplit, bucket_batches, fingerprint_of, load_split
from .features import augment
from .vocab import PAD_ID, Vocab


@dataclass
class Batch:
    src: torch.Tensor       # (B, T, F) float32 features
    src_pad: torch.Tensor   # (B, T) True where padded
    tgt_in: torch.Tensor    # (B, L) <bos> w1 .. wn
    tgt_out: torch.Tensor   # (B, L) w1 .. wn <eos>
    frames: int             # real (unpadded) frames
    indices: list[int]

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(self.src.to(device, non_blocking=nb), self.src_pad.to(device, non_blocking=nb),
                     self.tgt_in.to(device, non_blocking=nb), self.tgt_out.to(device, non_blocking=nb),
                     self.frames, self.indices)


@dataclass
class TrainData:
    """The train and validation splits of one dataset, with the vocabulary built on train."""

    root: Path
    train: PackedSplit
    val: PackedSplit
    vocab: Vocab

    @classmethod
    def load(cls, root: Path, vocab: Vocab | None = None, min_freq: int = 1) -> TrainData:
        train = load_split(root, "train")
        val = load_split(root, "val")
        return cls(Path(root), train, val, vocab or Vocab.build(train.sentences, min_freq=min_freq))

    @property
    def input_dim(self) -> int:
        return self.train.num_points * 3

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.train, self.val)


def subsample(clip: np.ndarray, max_frames: int) -> np.ndarray:
    """Keep at most max_frames frames, evenly spread over the clip."""
    if len(clip) <= max_frames:
        return clip
    keep = np.linspace(0, len(clip) - 1, max_frames).round().astype(np.int64)
    return clip[keep]


class Batcher:
    """Turns index lists into Batches; targets are encoded once up front."""

    def __init__(self, split: PackedSplit, vocab: Vocab, cfg: TrainConfig):
        self.split, self.cfg = split, cfg
        self.targets = [np.asarray(vocab.encode(s, cfg.max_tokens), dtype=np.int64) for s in split.sentences]
        self.aug = dict(frame_dropout=cfg.aug_frame_dropout, speed=cfg.aug_speed, noise=cfg.aug_noise,
                        rotate=cfg.aug_rotate, scale=cfg.aug_scale, shear=cfg.aug_shear)
        self.augmenting = any(v > 0 for v in self.aug.values())

    def plan(self, indices: np.ndarray, *, shuffle: bool, rng: np.random.Generator | None) -> list[list[int]]:
        """Length-bucketed batches over the given clip indices."""
        lengths = np.minimum(self.split.lengths[indices], self.cfg.max_frames)
        return [[int(indices[j]) for j in b] for b in bucket_batches(lengths, self.cfg.batch_size, shuffle=shuffle, rng=rng)]

    def make(self, idx: list[int], rng: np.random.Generator | None = None) -> Batch:
        clips = []
        for i in idx:
            clip = self.split.clip(i)  # (T, P, 3)
            if rng is not None and self.augmenting:
                clip = augment(clip, rng, **self.aug)
            clips.append(subsample(clip, self.cfg.max_frames))
        T = max(len(c) for c in clips)
        B, P = len(clips), clips[0].shape[1]
        src = np.zeros((B, T, P * 3), dtype=np.float32)
        pad = np.ones((B, T), dtype=bool)
        for b, c in enumerate(clips):
            src[b, : len(c)] = c.reshape(len(c), P * 3)
            pad[b, : len(c)] = False
        L = max(len(self.targets[i]) for i in idx)
        tgt = np.full((B, L), PAD_ID, dtype=np.int64)
        for b, i in enumerate(idx):
            tgt[b, : len(self.targets[i])] = self.targets[i]
        tgt_t = torch.from_numpy(tgt)
        return Batch(torch.from_numpy(src), torch.from_numpy(pad), tgt_t[:, :-1], tgt_t[:, 1:],
                     int(sum(len(c) for c in clips)), list(idx))
