"""Pack: frame files per second packing a How2Sign-format OpenPose JSON release, old path vs new.

The release is written first: N train clips (default 1,000) with How2Sign-like lengths (lognormal,
median 140 frames, sigma 0.5, 20-600), one OpenPose 1.3 JSON file per frame in How2Sign's folder layout,
numbers written as OpenPose writes them (6 significant digits: "642.307", "0.909327", "0"), and the
release's defects: 2 % of rows without a keypoint folder, 0.5 % empty sentences, 0.5 % clips of 1-3
frames, 0.5 % of clips with one truncated (corrupt) file, 1 % of frames with "people": [].

Then the split is packed, page cache warm (the files were just written, and one untimed pass of the old
reader runs first), by:
  * old: `pack_split(json_reader="reference", workers=1)`: the per-frame reference reader that main
    packed with (json.loads and four np.asarray per frame), one process, main's default;
  * new, 1 process: `pack_split(workers=1)`: the fast reader (orjson, one float32 conversion per clip);
  * new, all cores: `pack_split()` (its default: one process per core).
Runs alternate (new-1, old, new-all, ...; medians). Every pack's files are compared byte for byte
(features.f16, offsets.npy, meta.json less its "created" time) with the old path's. Printed: frame
files per second for each, the per-core ratio new-1 / old (target >= 5x), the all-cores ratio, and the
projected time for How2Sign's 4.4 million frame files on this machine.

    python benchmarks/pack.py [--quick] [--clips N] [--reps R] [--profile]

--profile prints the top of a cProfile of one in-process pack by each path (where the time goes).
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import pstats
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import header, how2sign_like_lengths, median, parse_args, run_main, say, verdict, workdir

from how2sign.data import csv_path, json_dir, pack_split
from how2sign.data.fastjson import JSON_PARSERS

TARGET = 5.0
HOW2SIGN_FILES = 4_400_000
_COMPONENTS = (("pose_keypoints_2d", 25), ("face_keypoints_2d", 70), ("hand_left_keypoints_2d", 21),
               ("hand_right_keypoints_2d", 21))  # fmt: skip
_TEMPLATE = ('{"version":1.3,"people":[{"person_id":[-1],'
             + ",".join(f'"{k}":[' + ",".join(["%.6g"] * (3 * n)) + "]" for k, n in _COMPONENTS)
             + ',"pose_keypoints_3d":[],"face_keypoints_3d":[],"hand_left_keypoints_3d":[],'
             '"hand_right_keypoints_3d":[]}]}')  # fmt: skip
_EMPTY = '{"version":1.3,"people":[]}'
HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"
WORDS = ("and", "the", "you", "want", "to", "make", "sure", "that", "your", "hand", "is", "flat", "now",
         "we", "are", "going", "cut", "paint", "water", "slowly", "over", "it")  # fmt: skip


def clip_keypoints(rng: np.random.Generator, t: int) -> np.ndarray:
    """(T, 137, 3) pixel keypoints of a signer at 1280x720: a still body, moving hands, 8 % of points
    and the legs missing (0, 0, 0)."""
    base = np.c_[rng.uniform(380, 900, 137), rng.uniform(120, 700, 137)]
    base[2], base[5], base[1] = (540, 330), (740, 330), (640, 330)  # shoulders, neck
    drift = np.cumsum(rng.normal(0, 2.5, (t, 137, 2)), axis=0)
    drift[:, :25] *= 0.1  # the body moves little
    xy = np.clip(base + drift, 1, 1279)
    kp = np.concatenate([xy, rng.uniform(0.05, 1.0, (t, 137, 1))], axis=-1)
    missing = rng.random((t, 137)) < 0.08
    missing[:, [10, 11, 13, 14, *range(19, 25)]] = True
    kp[missing] = 0.0
    return kp


def _write_clip(folder: Path, kp: np.ndarray, empty: np.ndarray, corrupt_at: int) -> None:
    folder.mkdir(parents=True)
    prefix = os.path.join(folder, folder.name)
    for i, row in enumerate(kp.reshape(len(kp), -1).tolist()):
        text = _EMPTY if empty[i] else _TEMPLATE % tuple(row)
        if i == corrupt_at:
            text = text[: len(text) // 2]
        with open(f"{prefix}_{i:012d}_keypoints.json", "w", encoding="ascii") as f:
            f.write(text)


def write_release(root: Path, n: int, seed: int = 0) -> tuple[int, int]:
    """A How2Sign-format train split of n clips at root; returns (frame files, bytes written)."""
    rng = np.random.default_rng(seed)
    lengths = how2sign_like_lengths(n, seed=seed)
    kind = rng.choice(["ok", "gone", "blank", "short", "corrupt"], n, p=[0.965, 0.02, 0.005, 0.005, 0.005])
    rows, files, size = [HEADER], 0, 0
    jd = json_dir(root, "train")
    with ThreadPoolExecutor(4) as pool:
        jobs = []
        for i in range(n):
            vid = f"v{i // 8:05d}x{seed}"
            name = f"{vid}_{i % 8}-8-rgb_front"
            sentence = "" if kind[i] == "blank" else " ".join(rng.choice(WORDS, int(rng.integers(4, 15)))) + "."
            rows.append(f"{vid}\t{vid}-8-rgb_front\t{vid}_{i % 8}\t{name}\t{i:.2f}\t{i + 5:.2f}\t{sentence}")
            if kind[i] == "gone":
                continue
            t = int(rng.integers(1, 4)) if kind[i] == "short" else int(lengths[i])
            corrupt_at = int(rng.integers(t)) if kind[i] == "corrupt" else -1
            jobs.append(pool.submit(_write_clip, jd / name, clip_keypoints(rng, t), rng.random(t) < 0.01, corrupt_at))
            files += t
        for job in jobs:
            job.result()
    path = csv_path(root, "train")
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    size = sum(e.stat().st_size for d in os.scandir(jd) for e in os.scandir(d.path))
    return files, size


def digest(cache: Path) -> str:
    """sha256 over the cache's files, meta.json without its "created" time."""
    h = hashlib.sha256()
    for name in ("features.f16", "offsets.npy"):
        h.update((cache / name).read_bytes())
    meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    meta.pop("created")
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def pack_once(root: Path, out: Path, **kw) -> tuple[float, str]:
    t0 = time.perf_counter()
    split = pack_split(root, "train", out, force=True, progress=None, **kw)
    return time.perf_counter() - t0, digest(split.path)


def profile(root: Path, out: Path) -> None:
    for label, kw in (("old (reference reader)", {"json_reader": "reference"}), ("new (fast reader)", {})):
        prof = cProfile.Profile()
        prof.enable()
        pack_split(root, "train", out, force=True, progress=None, workers=1, **kw)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
        say(f"--- cProfile, {label}, 1 process (tottime order)")
        lines = buf.getvalue().splitlines()
        say("\n".join([next(x.strip() for x in lines if "function calls" in x)]
                      + [x for x in lines[6:] if x.strip()]))  # fmt: skip


def main() -> None:
    def extra(p):
        p.add_argument("--clips", type=int, default=None, help="train clips to write (default 1000; 150 with --quick)")
        p.add_argument("--reps", type=int, default=None, help="timed runs of each path (default 2; 1 with --quick)")
        p.add_argument("--profile", action="store_true", help="print a cProfile of each path")

    args = parse_args(__doc__.splitlines()[0], extra)
    header("pack", args.quick)
    n, reps = args.clips or (150 if args.quick else 1000), args.reps or (1 if args.quick else 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    say(f"JSON parsers: {JSON_PARSERS}; {cores} usable cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with workdir(args.keep, prefix="h2s-bench-pack-") as tmp:
        t0 = time.perf_counter()
        files, size = write_release(tmp / "release", n)
        say(f"wrote {n} clips, {files:,} frame files ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f}s")
        root = tmp / "release"
        if args.profile:
            profile(root, tmp / "profiled")
        pack_once(root, tmp / "warm", json_reader="reference", workers=1)  # warms the page cache
        runs: dict[str, list[float]] = {"old": [], "new-1": [], "new-all": []}
        digests = set()
        kwargs = {"old": {"json_reader": "reference", "workers": 1}, "new-1": {"workers": 1}, "new-all": {}}
        for r in range(reps):
            for what in ("new-1", "old", "new-all") if r % 2 == 0 else ("new-all", "old", "new-1"):
                seconds, d = pack_once(root, tmp / what, **kwargs[what])
                runs[what].append(seconds)
                digests.add(d)
                say(f"rep {r + 1}/{reps} {what:8s}: {seconds:6.2f}s  {files / seconds:9,.0f} files/s")
        same = len(digests) == 1
        say(f"packed output identical across all runs and paths: {same}")
        assert same, "the new path's cache differs from the reference's"
    rate = {k: files / median(v) for k, v in runs.items()}
    say("")
    for k, label in (("old", "old path, 1 process"), ("new-1", "new path, 1 process"),
                     ("new-all", f"new path, {cores} processes")):  # fmt: skip
        say(f"{label:24s}: {rate[k]:9,.0f} frame files/s  (median {median(runs[k]):.2f}s)")
    say(f"per core  (new 1 process / old) : {rate['new-1'] / rate['old']:.2f}x")
    say(f"all cores (new {cores} processes / old): {rate['new-all'] / rate['old']:.2f}x")
    for k, label in (("old", "old path"), ("new-all", f"new path, {cores} processes")):
        say(f"projected for {HOW2SIGN_FILES / 1e6:.1f}M frame files, {label}: {HOW2SIGN_FILES / rate[k] / 60:.1f} min")
    say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    verdict("packing per core, new / old (frame files/s)", rate["new-1"] / rate["old"], TARGET, at_least=True, unit="x")


if __name__ == "__main__":
    run_main(main)
