"""From a packed split to padded tensors: the train/val data bundle and batch assembly."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
    tokens: int = 0         # real target tokens (not PAD in tgt_out), counted on the host
    rng_state: dict | None = None  # the augmentation stream just after this batch was made (Batcher.batches)

    def to(self, device: torch.device) -> Batch:
        # From pinned memory (Batcher(pin=True)) the copies are asynchronous; from pageable memory
        # non_blocking changes nothing.
        nb = device.type == "cuda"
        return replace(self, src=self.src.to(device, non_blocking=nb), src_pad=self.src_pad.to(device, non_blocking=nb),
                       tgt_in=self.tgt_in.to(device, non_blocking=nb), tgt_out=self.tgt_out.to(device, non_blocking=nb))


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


def round_up(n: int, multiple: int, cap: int) -> int:
    """n rounded up to a multiple, but not past cap (nor below n)."""
    return max(n, min(-(-n // multiple) * multiple, cap))


class Batcher:
    """Turns index lists into Batches; targets are encoded once up front.

    pad_to = (frames, tokens): the padded clip length and target length are rounded up to these
    multiples (capped at max_frames and max_tokens - 1), so an accelerator sees few distinct shapes and
    reuses its kernels and cached graphs. Padding is masked, so results are the same up to rounding;
    (1, 1) pads to the longest clip and sentence only. pin puts the tensors in page-locked memory, from
    which copies to a CUDA device are asynchronous.
    """

    def __init__(self, split: PackedSplit, vocab: Vocab, cfg: TrainConfig, *, pad_to: tuple[int, int] = (1, 1),
                 pin: bool = False):
        self.split, self.cfg, self.pad_to, self.pin = split, cfg, pad_to, pin
        self.targets = [np.asarray(vocab.encode(s, cfg.max_tokens), dtype=np.int64) for s in split.sentences]
        self.aug = dict(frame_dropout=cfg.aug_frame_dropout, speed=cfg.aug_speed, noise=cfg.aug_noise,
                        rotate=cfg.aug_rotate, scale=cfg.aug_scale, shear=cfg.aug_shear)
        self.augmenting = any(v > 0 for v in self.aug.values())

    def plan(self, indices: np.ndarray, *, shuffle: bool, rng: np.random.Generator | None) -> list[list[int]]:
        """Length-bucketed batches over the given clip indices."""
        lengths = np.minimum(self.split.lengths[indices], self.cfg.max_frames)
        return [[int(indices[j]) for j in b] for b in bucket_batches(lengths, self.cfg.batch_size, shuffle=shuffle, rng=rng)]

    def make(self, idx: list[int], rng: np.random.Generator | None = None) -> Batch:
        src, pad, frames = self.sources(idx, rng)
        L = 1 + round_up(max(len(self.targets[i]) for i in idx) - 1, self.pad_to[1], self.cfg.max_tokens - 1)
        tgt = np.full((len(idx), L), PAD_ID, dtype=np.int64)
        for b, i in enumerate(idx):
            tgt[b, : len(self.targets[i])] = self.targets[i]
        tensors = [src, pad, torch.from_numpy(tgt)]
        if self.pin:
            tensors = [t.pin_memory() for t in tensors]
        src_t, pad_t, tgt_t = tensors
        return Batch(src_t, pad_t, tgt_t[:, :-1], tgt_t[:, 1:], frames, list(idx), int((tgt[:, 1:] != PAD_ID).sum()))

    def sources(self, idx: list[int], rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(src (B, T, F) features, src_pad (B, T) True where padded, real frames) for the clips idx."""
        clips = []
        for i in idx:
            clip = self.split.clip(i)  # (T, P, 3)
            if rng is not None and self.augmenting:
                clip = augment(clip, rng, **self.aug)
            clips.append(subsample(clip, self.cfg.max_frames))
        T = round_up(max(len(c) for c in clips), self.pad_to[0], self.cfg.max_frames)
        B, P = len(clips), clips[0].shape[1]
        src = np.zeros((B, T, P * 3), dtype=np.float32)
        pad = np.ones((B, T), dtype=bool)
        for b, c in enumerate(clips):
            src[b, : len(c)] = c.reshape(len(c), P * 3)
            pad[b, : len(c)] = False
        return torch.from_numpy(src), torch.from_numpy(pad), int(sum(len(c) for c in clips))

    def batches(self, plan: list[list[int]], rng: np.random.Generator | None = None, *,
                prefetch: bool = False) -> Iterator[Batch]:
        """The plan's batches in order. With prefetch, a helper thread builds the next batch while the
        caller works on this one: the same batches, with the augmentation RNG drawn in the same order
        (one thread makes them all, in plan order). Each batch carries the RNG's state just after it was
        made (a checkpoint after it resumes the stream from there, whatever was built ahead). Close the
        iterator when leaving it early."""
        if not prefetch:
            yield from (self._made(idx, rng) for idx in plan)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="h2s-batches") as pool:
            ahead = pool.submit(self._made, plan[0], rng) if plan else None
            for k in range(len(plan)):
                current = ahead.result()
                ahead = pool.submit(self._made, plan[k + 1], rng) if k + 1 < len(plan) else None
                yield current

    def _made(self, idx: list[int], rng: np.random.Generator | None) -> Batch:
        batch = self.make(idx, rng)
        batch.rng_state = rng.bit_generator.state if rng is not None else None
        return batch
