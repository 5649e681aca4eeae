"""How2Sign data: release reader, .pose reader, packed cache and length-bucketed batching.

The pieces live in `release` (CSV and keypoint sources; its per-frame JSON reader is the reference),
`fastjson` (the same JSON result, faster), `posefile` (.pose layouts), `cache` (the memory-mapped cache),
`packing` (building it: parallel, resumable) and `progress`; this package is their public face, plus
`bucket_batches`.

    split = load_split(root, "train")          # packs on first use, then memory-maps the cache
    for batch in bucket_batches(split.lengths, 64, shuffle=True, rng=np.random.default_rng(0)):
        clips = [split.clip(i) for i in batch]  # (T, P, 3) float32 each
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from how2sign.data.cache import (
    PackedSplit,
    PackSummary,
    cache_candidates,
    compute_fingerprint,
    default_cache_dir,
    fingerprint_of,
    h2s_home,
    open_cache,
)
from how2sign.data.errors import DataError
from how2sign.data.packing import default_workers, load_split, pack_split
from how2sign.data.posefile import read_pose_file
from how2sign.data.progress import LineProgress
from how2sign.data.release import (
    CSV_COLUMNS,
    MIN_FRAMES,
    SKIP_CORRUPT,
    SKIP_EMPTY_SENTENCE,
    SKIP_NO_KEYPOINTS,
    SKIP_REASONS,
    SKIP_TOO_SHORT,
    CsvRow,
    csv_path,
    detect_source,
    json_dir,
    pose_dir,
    read_csv,
    read_json_clip,
    read_json_frame,
)

__all__ = [
    "CSV_COLUMNS",
    "MIN_FRAMES",
    "SKIP_CORRUPT",
    "SKIP_EMPTY_SENTENCE",
    "SKIP_NO_KEYPOINTS",
    "SKIP_REASONS",
    "SKIP_TOO_SHORT",
    "CsvRow",
    "DataError",
    "LineProgress",
    "PackSummary",
    "PackedSplit",
    "bucket_batches",
    "cache_candidates",
    "compute_fingerprint",
    "csv_path",
    "default_cache_dir",
    "default_workers",
    "detect_source",
    "fingerprint_of",
    "h2s_home",
    "json_dir",
    "load_split",
    "open_cache",
    "pack_split",
    "padding_efficiency",
    "pose_dir",
    "read_csv",
    "read_json_clip",
    "read_json_frame",
    "read_pose_file",
]

# When shuffling, each clip's rank in length order moves by up to this many batch widths, so batch
# composition changes between epochs while neighbours in a batch stay close in length.
RANK_JITTER = 0.25


def bucket_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, *, shuffle: bool,
                   rng: np.random.Generator | None = None) -> list[list[int]]:  # fmt: skip
    """Length-bucketed batches of indices into `lengths`: every index exactly once.

    Clips are sorted by length and cut into runs of `batch_size`. With `shuffle`, ties are broken at
    random, each clip's rank is jittered by U(-RANK_JITTER, RANK_JITTER) x batch_size before cutting (so
    batches differ between epochs), and the order of the batches is shuffled. Deterministic for a given `rng` state; `rng=None` with `shuffle` uses fresh entropy.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    lens = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if lens.size == 0:
        return []
    if shuffle:
        rng = rng if rng is not None else np.random.default_rng()
        rank = np.empty(lens.size)
        rank[np.lexsort((rng.random(lens.size), lens))] = np.arange(lens.size)
        jitter = RANK_JITTER * batch_size
        order = np.argsort(rank + rng.uniform(-jitter, jitter, size=lens.size), kind="stable")
    else:
        order = np.argsort(lens, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, lens.size, batch_size)]
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: list[list[int]]) -> float:
    """Real frames / padded frames (batch size x longest clip, summed over batches); 1.0 is no padding."""
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    real = sum(int(lens[b].sum()) for b in batches if b)
    padded = sum(len(b) * int(lens[b].max()) for b in batches if b)
    return real / padded if padded else 1.0
