"""Cache: one epoch read of the packed cache against re-parsing the split's OpenPose JSON.

  packed epoch : `PackedSplit.clip(i)` for every clip, plus `Batcher.make` over the bucketed training
                 plan (padded float32 tensors and targets, exactly what `train()` consumes);
  JSON epoch   : everything `pack_split` does except writing: read the CSV, find the keypoint source,
                 and for every row `read_clip` (parse each frame's JSON, count corrupt files, check
                 length, select and normalise points) and the float16 conversion.

Both read the synthetic corpus's train split with a warm page cache (one untimed pass of each first);
repetitions alternate JSON and packed and the ratio uses medians. Target: the
packed epoch is >= 50x faster.

    python benchmarks/cache.py [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import header, make_corpus, median, parse_args, run_main, say, verdict, workdir

from how2sign.batches import Batcher
from how2sign.config import TrainConfig
from how2sign.data import csv_path, detect_source, load_split, read_csv
from how2sign.data.cache import F16_MAX
from how2sign.data.release import read_clip
from how2sign.features import DEFAULT_POINTS
from how2sign.vocab import Vocab

TARGET = 50.0


def json_epoch(root: Path, split: str = "train") -> tuple[float, int, int]:
    """Parse the split from JSON as pack_split does (single process, its default), minus the writes.
    Returns (seconds, clips kept, frames kept)."""
    t0 = time.perf_counter()
    rows = read_csv(csv_path(root, split))
    source, folder = detect_source(root, split)
    points = tuple(DEFAULT_POINTS)
    kept = frames = 0
    for row in rows:
        res = read_clip(row, source=source, folder=folder, points=points)
        if res.reason is None:
            f16 = np.clip(res.features, -F16_MAX, F16_MAX).astype(np.float16)
            kept += 1
            frames += len(f16)
    return time.perf_counter() - t0, kept, frames


def packed_epoch(batcher: Batcher, epoch: int) -> tuple[float, float, int]:
    """(seconds for clip(i) over every clip, seconds for Batcher.make over the plan, frames batched)."""
    split = batcher.split
    t0 = time.perf_counter()
    for i in range(len(split)):
        split.clip(i)
    t1 = time.perf_counter()
    frames = 0
    plan = batcher.plan(np.arange(len(split)), shuffle=True, rng=np.random.default_rng([0, epoch]))
    for idx in plan:
        frames += batcher.make(idx).frames
    return t1 - t0, time.perf_counter() - t1, frames


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    header("cache", args.quick)
    n_train = 150 if args.quick else 800
    reps = 2 if args.quick else 4
    with workdir(args.keep) as tmp:
        root = make_corpus(tmp / "corpus", train=n_train, val=0, seed=0)
        t0 = time.perf_counter()
        split = load_split(root, "train")
        say(f"first use: packed {split} in {time.perf_counter() - t0:.1f}s (parse + write, once)")
        t0 = time.perf_counter()
        split = load_split(root, "train")
        say(f"later use: opened the cache in {1000 * (time.perf_counter() - t0):.1f} ms")
        batcher = Batcher(split, Vocab.build(split.sentences), TrainConfig())
        n_files = sum(1 for _ in (root / "sentence_level" / "train").rglob("*_keypoints.json"))
        say(f"{len(split)} clips, {int(split.lengths.sum())} frames, {n_files} JSON frame files")

        _, kept, frames = json_epoch(root)  # warm both, and check they cover the same data
        packed_epoch(batcher, 0)
        assert kept == len(split) and frames == int(split.lengths.sum()), (kept, frames)
        js, clips_s, make_s = [], [], []
        for r in range(reps):
            order = ("json", "packed") if r % 2 == 0 else ("packed", "json")
            for what in order:
                if what == "json":
                    js.append(json_epoch(root)[0])
                else:
                    a, b, f = packed_epoch(batcher, r + 1)
                    assert f == frames
                    clips_s.append(a)
                    make_s.append(b)
            say(f"rep {r + 1}/{reps}: JSON {js[-1]:.2f}s, packed clip() {1000 * clips_s[-1]:.1f} ms + "
                f"Batcher.make {1000 * make_s[-1]:.1f} ms")

    packed = [a + b for a, b in zip(clips_s, make_s, strict=True)]
    j, p = median(js), median(packed)
    say("")
    say(f"JSON re-parse epoch : {j:.3f} s  ({frames / j:,.0f} frames/s)")
    say(f"packed epoch        : {p * 1000:.1f} ms  (clip() {median(clips_s) * 1000:.1f} ms + Batcher.make "
        f"{median(make_s) * 1000:.1f} ms; {frames / p:,.0f} frames/s)")
    say(f"speed-up            : {j / p:.0f}x  (clip() alone: {j / median(clips_s):.0f}x)")
    verdict("packed cache epoch vs JSON re-parse (speed-up)", j / p, TARGET, at_least=True, unit="x")


if __name__ == "__main__":
    run_main(main)
