"""The packed cache (docs/architecture.md, section 1): one split parsed once into a memory-mapped float16 array.

Cache folder layout (default `<root>/h2s-packed/<split>/`, see `default_cache_dir`):

    features.f16   float16, C order, shape (total_frames, P, 3): normalised [x, y, visible] per point
    offsets.npy    int64 (N + 1,): clip i is features[offsets[i]:offsets[i + 1]]
    meta.json      clip names, video ids, sentences, fps, CSV rows, point selection, FEATURE_VERSION,
                   fingerprint, CSV mtime/size at pack time, and the pack summary

A cache is built in a sibling folder (`packing`: parallel and resumable) and renamed into place, so a
crash never leaves a half-written cache and two processes packing the same split at once both end up
with a valid one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from how2sign.data.errors import DataError
from how2sign.features import DEFAULT_POINTS, FEATURE_VERSION, check_points

META_FORMAT = 1
FEATURES_FILE, OFFSETS_FILE, META_FILE = "features.f16", "offsets.npy", "meta.json"
F16_MAX = 65000.0  # just under float16's largest finite value: features are clipped to it when packed


@dataclass
class PackSummary:
    """What packing a split found. `skipped` counts clips by reason (see release.SKIP_REASONS)."""

    split: str
    source: str  # "json" or "pose"
    rows: int  # data rows in the CSV
    packed: int
    frames: int  # total packed frames
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_clips: list[tuple[str, str]] = field(default_factory=list)  # (SENTENCE_NAME, reason)
    corrupt_files: int = 0  # corrupt JSON frame files (or .pose files) met

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped_clips"] = [list(x) for x in self.skipped_clips]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PackSummary:
        return cls(d["split"], d["source"], int(d["rows"]), int(d["packed"]), int(d["frames"]),
                   {str(k): int(v) for k, v in d["skipped"].items()},
                   [(str(n), str(r)) for n, r in d["skipped_clips"]], int(d["corrupt_files"]))  # fmt: skip

    def line(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        return (f"{self.split}: packed {self.packed} of {self.rows} clips ({self.frames} frames, {self.source}); "
                f"skipped {sum(self.skipped.values())} ({why}); {self.corrupt_files} corrupt files")  # fmt: skip


def compute_fingerprint(names: Iterable[str], sentences: Iterable[str], lengths: Iterable[int]) -> str:
    """Hex sha256 over (clip id, sentence, frame count) of every clip, in order."""
    h = hashlib.sha256()
    for name, sentence, n in zip(names, sentences, lengths, strict=True):
        h.update(json.dumps([name, sentence, int(n)], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


class PackedSplit:
    """A packed split, or a view on some of its clips (`subset`) sharing the same memmap.

    `features` and `offsets` are the whole cache file's arrays; `index[i]` is the file clip behind this
    view's clip i (arange for a full split). Use `clip(i)`, `lengths` and `starts` rather than slicing
    `features` by hand, so subsets work too.
    """

    def __init__(self, *, path: Path, split: str, features: np.memmap, offsets: np.ndarray, index: np.ndarray,
                 names: list[str], video_ids: list[str], sentences: list[str], fps: np.ndarray, rows: np.ndarray,
                 points: tuple[int, ...], summary: PackSummary, fingerprint: str | None = None):  # fmt: skip
        self.path, self.split, self.features, self.offsets, self.index = path, split, features, offsets, index
        self.names, self.video_ids, self.sentences = names, video_ids, sentences
        self.fps, self.rows, self.points, self.summary = fps, rows, points, summary
        self.starts = offsets[index]  # (N,) int64, first frame of each clip in `features`
        self.lengths = offsets[index + 1] - self.starts  # (N,) int64 frame counts
        self.fingerprint = fingerprint or compute_fingerprint(names, sentences, self.lengths)

    @property
    def num_points(self) -> int:
        return int(self.features.shape[1])

    @property
    def source(self) -> str:
        return self.summary.source

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"PackedSplit({self.split!r}, {len(self)} clips, {int(self.lengths.sum())} frames, {self.path})"

    def clip(self, i: int) -> np.ndarray:
        """(T, P, 3) float32 copy of clip i.

        Read with os.pread into a fresh buffer rather than by slicing the memmap: the bytes still come from
        the page cache that every worker on the host shares, but no file pages stay mapped into this
        process, so its resident memory does not grow with the dataset (benchmarks/memory.py).
        """
        s, n = int(self.starts[i]), int(self.lengths[i])
        f = self.features
        if not isinstance(f, np.memmap) or f.filename is None:
            return np.array(f[s : s + n], dtype=np.float32)
        row = f.strides[0]  # bytes per frame
        raw = os.pread(_reader(f.filename), n * row, f.offset + s * row)
        return np.frombuffer(raw, dtype=f.dtype).reshape(n, *f.shape[1:]).astype(np.float32)

    def subset(self, indices: Sequence[int] | np.ndarray) -> PackedSplit:
        """A view on the given clips (in the given order), sharing this split's memmap."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for {len(self)} clips")
        idx = idx % max(len(self), 1)
        return PackedSplit(path=self.path, split=self.split, features=self.features, offsets=self.offsets,
                           index=self.index[idx], names=[self.names[i] for i in idx],
                           video_ids=[self.video_ids[i] for i in idx], sentences=[self.sentences[i] for i in idx],
                           fps=self.fps[idx], rows=self.rows[idx], points=self.points, summary=self.summary)  # fmt: skip

    def summary_dict(self) -> dict:
        """The pack summary as plain JSON-able data (also for subsets: it describes the whole pack)."""
        return {**self.summary.to_dict(), "path": str(self.path), "fingerprint": self.fingerprint}


_readers: dict[tuple[int, str], int] = {}


def _reader(filename: str) -> int:
    """This process's read-only descriptor for a cache file (keyed by pid: a forked child opens its own)."""
    key = (os.getpid(), filename)
    fd = _readers.get(key)
    if fd is None:
        fd = _readers[key] = os.open(filename, os.O_RDONLY)
    return fd


def fingerprint_of(*splits: PackedSplit) -> str:
    """One hex sha256 identifying several splits together, in the given order."""
    h = hashlib.sha256()
    for s in splits:
        h.update(f"{s.split}:{s.fingerprint}\n".encode())
    return h.hexdigest()


def h2s_home() -> Path:
    return Path(os.environ.get("H2S_HOME") or Path.home() / ".cache" / "h2s-search")


def _cache_name(split: str, points: tuple[int, ...]) -> str:
    if points == tuple(DEFAULT_POINTS):
        return split
    return f"{split}-{hashlib.sha1(','.join(map(str, points)).encode()).hexdigest()[:8]}"


def cache_candidates(root: str | Path, split: str, points: Sequence[int] = DEFAULT_POINTS) -> list[Path]:
    """Where a cache may live: `<root>/h2s-packed/<split>/`, then
    `$H2S_HOME/packed/<sha1 of the absolute root, 12 hex>/<split>/`. A non-default point selection
    appends `-<8 hex>` to the folder name so selections never overwrite each other."""
    root, name = Path(root).resolve(), _cache_name(split, check_points(points))
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return [root / "h2s-packed" / name, h2s_home() / "packed" / digest / name]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def default_cache_dir(root: str | Path, split: str, points: Sequence[int] = DEFAULT_POINTS) -> Path:
    """The folder a new cache is written to: under the root when it is writable, else under $H2S_HOME."""
    local, home = cache_candidates(root, split, points)
    return local if _writable(local.parent) else home


def csv_stamp(path: Path) -> dict:
    """The split CSV's mtime and size, as a cache's meta.json records them at pack time and `open_cache`
    compares them (`stamp`): a changed CSV makes the cache stale."""
    st = path.stat()
    return {"csv_mtime_ns": st.st_mtime_ns, "csv_size": st.st_size}


def open_cache(path: Path, *, stamp: dict | None = None, points: Sequence[int] = DEFAULT_POINTS) -> PackedSplit | None:
    """The cache at `path` if it is complete and current (same format, FEATURE_VERSION, points and, when
    `stamp` is given, the same CSV mtime and size), else None."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if (meta["format"] != META_FORMAT or meta["feature_version"] != FEATURE_VERSION
                or tuple(meta["points"]) != tuple(points)):  # fmt: skip
            return None
        if stamp is not None and any(meta[k] != v for k, v in stamp.items()):
            return None
        offsets = np.load(path / OFFSETS_FILE)
        clips, p, total = meta["clips"], int(meta["num_points"]), int(meta["total_frames"])
        n = len(clips["names"])
        if offsets.shape != (n + 1,) or int(offsets[-1]) != total or n == 0:
            return None
        if (path / FEATURES_FILE).stat().st_size != total * p * 3 * 2:
            return None
        features = np.memmap(path / FEATURES_FILE, dtype=np.float16, mode="r", shape=(total, p, 3))
        return PackedSplit(path=path, split=meta["split"], features=features, offsets=offsets.astype(np.int64),
                           index=np.arange(n, dtype=np.int64), names=clips["names"], video_ids=clips["video_ids"],
                           sentences=clips["sentences"], fps=np.asarray(clips["fps"], dtype=np.float64),
                           rows=np.asarray(clips["rows"], dtype=np.int64), points=tuple(meta["points"]),
                           summary=PackSummary.from_dict(meta["summary"]), fingerprint=meta["fingerprint"])  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _publish(tmp: Path, target: Path, *, replace: bool, stamp: dict, points: tuple[int, ...]) -> None:
    """Move the finished temp folder into place; an existing valid cache wins unless `replace`."""
    for _ in range(10):
        try:
            os.rename(tmp, target)  # atomic; fails when target exists and is not empty
            return
        except OSError:
            if not target.exists():
                continue
        if not replace and open_cache(target, stamp=stamp, points=points) is not None:
            return  # another process published a current cache first
        trash = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(target, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)  # open memmaps of the old cache stay valid (POSIX)
    raise DataError(f"could not move the packed cache into place: {target}")
