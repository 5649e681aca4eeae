"""Padding: real frames / all frames (batch x longest clip) over the batches training actually uses.

The batches come from `Batcher.plan` (length-bucketed `bucket_batches`, shuffled per epoch with the
same per-epoch RNG stream that `train()` uses), for
  * the synthetic corpus's train split (packed through the real cache), and
  * a How2Sign-sized split of 31k clips with a How2Sign-like length distribution: lognormal with a
    median of 140 frames (sigma 0.5), redrawn outside 20-600 frames,
at batch sizes 32, 64 and 128. Unbucketed batching (a random permutation cut into batches) is shown
for comparison. Clips longer than TrainConfig.max_frames are subsampled, so lengths are capped there
as `Batcher.plan` does. Target: >= 0.90.

    python benchmarks/padding.py [--quick]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import header, how2sign_like_lengths, make_corpus, parse_args, run_main, say, verdict, workdir

from how2sign.batches import Batcher
from how2sign.config import TrainConfig
from how2sign.data import PackedSplit, PackSummary, load_split, padding_efficiency
from how2sign.features import DEFAULT_POINTS
from how2sign.vocab import Vocab

TARGET = 0.90
BATCH_SIZES = (32, 64, 128)


def lengths_only_split(lengths: np.ndarray) -> PackedSplit:
    """A PackedSplit with the given clip lengths and no feature data (Batcher.plan reads only lengths)."""
    n = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    features = np.zeros((0, len(DEFAULT_POINTS), 3), dtype=np.float16)
    names = [f"clip{i:06d}" for i in range(n)]
    return PackedSplit(path=Path("."), split="train", features=features, offsets=offsets,
                       index=np.arange(n, dtype=np.int64), names=names, video_ids=names,
                       sentences=["and that ought to do it ."] * n, fps=np.full(n, 24.0), rows=np.arange(n),
                       points=tuple(DEFAULT_POINTS), summary=PackSummary("train", "json", n, n, int(offsets[-1])),
                       fingerprint="none")  # fmt: skip


def measure(split: PackedSplit, batch_size: int, epochs: int, seed: int = 0) -> dict[str, float]:
    """Mean padding efficiency of `epochs` shuffled training plans, the unshuffled (validation) plan and
    random unbucketed batches, all over the same clips."""
    cfg = TrainConfig(batch_size=batch_size, seed=seed)
    batcher = Batcher(split, Vocab.build(split.sentences[:100]), cfg)
    capped = np.minimum(split.lengths, cfg.max_frames)
    everything = np.arange(len(split))
    bucketed, random_ = [], []
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch])  # the stream train() uses for this epoch's plan
        plan = batcher.plan(everything, shuffle=True, rng=rng)
        assert sorted(i for b in plan for i in b) == everything.tolist(), "plan must cover every clip once"
        bucketed.append(padding_efficiency(capped, plan))
        perm = np.random.default_rng([cfg.seed, epoch, 1]).permutation(len(split))
        random_.append(padding_efficiency(capped, [perm[i : i + batch_size].tolist()
                                                   for i in range(0, len(split), batch_size)]))  # fmt: skip
    ordered = padding_efficiency(capped, batcher.plan(everything, shuffle=False, rng=None))
    return {"bucketed": float(np.mean(bucketed)), "bucketed_min": float(np.min(bucketed)),
            "sorted": ordered, "random": float(np.mean(random_)),
            "batches": len(batcher.plan(everything, shuffle=False, rng=None))}


def describe(name: str, lengths: np.ndarray) -> None:
    p = np.percentile(lengths, [0, 5, 50, 95, 100])
    say(f"{name}: {len(lengths)} clips, frames min {p[0]:.0f} / p5 {p[1]:.0f} / median {p[2]:.0f} / "
        f"p95 {p[3]:.0f} / max {p[4]:.0f}, mean {lengths.mean():.1f}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    header("padding", args.quick)
    n_synth = 200 if args.quick else 800
    n_h2s = 5000 if args.quick else 31000
    epochs = 3 if args.quick else 10
    results: dict[str, dict[int, dict]] = {}
    with workdir(args.keep) as tmp:
        root = make_corpus(tmp / "corpus", train=n_synth, val=0, seed=0)
        synth = load_split(root, "train")
        datasets = {f"synthetic train ({len(synth)} clips)": synth,
                    f"How2Sign-like ({n_h2s} clips)": lengths_only_split(how2sign_like_lengths(n_h2s))}
        for name, split in datasets.items():
            describe(name, np.asarray(split.lengths))
            results[name] = {bs: measure(split, bs, epochs) for bs in BATCH_SIZES}

    say(f"\nreal frames / padded frames (bucketed: mean over {epochs} shuffled epochs of Batcher.plan)")
    say(f"{'dataset':<32} {'batch':>5} {'batches':>7} {'bucketed':>9} {'worst ep':>9} {'sorted':>7} "
        f"{'random':>7} {'vs random':>9}")
    for name, by_bs in results.items():
        for bs, r in by_bs.items():
            say(f"{name:<32} {bs:>5} {r['batches']:>7} {r['bucketed']:>9.4f} {r['bucketed_min']:>9.4f} "
                f"{r['sorted']:>7.4f} {r['random']:>7.4f} {r['bucketed'] / r['random']:>8.2f}x")
    say("")
    for name, by_bs in results.items():
        for bs, r in by_bs.items():
            verdict(f"padding efficiency, {name}, batch {bs}", r["bucketed"], TARGET, at_least=True)


if __name__ == "__main__":
    run_main(main)
