"""Memory: peak resident memory of a training epoch on a How2Sign-sized packed cache / a 1k-clip cache.

Two packed caches are written straight as arrays in the cache's own format (features.f16, offsets.npy,
meta.json with the CSV stamp, beside a matching split CSV), so no JSON is parsed and
`TrainData.load` opens them exactly as it opens a cache it packed itself:
  * big:   31k train clips, lengths ~ lognormal (median 140 frames, 20-600), about 2.2 GB of float16;
  * small: 1k train clips, same distribution;
both with the same 200-clip val split. Each measurement is a fresh subprocess that loads the data and
runs `train()` (a tiny model: the point is the data path) for the first N batches of epoch 1's
shuffled, bucketed plan (N = 15 batches of 64, stopped through `should_stop`), so the clips it reads
are spread over the whole dataset; the child reports its own VmHWM (peak RSS) from /proc/self/status.
Big and small runs alternate; the ratio uses medians. Target: <= 1.2.

Also shown: RSS split into anonymous and file-backed (memory-mapped cache pages), what a pass over
every clip does to the file-backed part, and two workers on one host reading the same cache
(Rss vs Pss from /proc/PID/smaps_rollup: the cache pages are shared, so Pss counts them half each).

    python benchmarks/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import header, how2sign_like_lengths, median, parse_args, run_main, say, verdict, workdir

TARGET = 1.2
STEPS, BATCH, MAX_FRAMES = 15, 64, 64
WORDS = [f"w{i}" for i in range(500)]  # both caches reach the whole word list, so vocabularies match


# ---------------------------------------------------------------------------------------------------
# Writing a packed cache directly


def write_packed_split(root: Path, split: str, lengths: np.ndarray, seed: int) -> Path:
    """A split CSV plus its packed cache at the default location, as pack_split would leave them."""
    from how2sign.data import PackSummary, cache_candidates, compute_fingerprint, csv_path
    from how2sign.data.cache import FEATURES_FILE, META_FILE, META_FORMAT, OFFSETS_FILE, csv_stamp
    from how2sign.features import DEFAULT_POINTS, FEATURE_VERSION

    rng = np.random.default_rng(seed)
    n = len(lengths)
    names = [f"v{seed}_{i:06d}-8-rgb_front" for i in range(n)]
    sentences = [" ".join(rng.choice(WORDS, int(k))) + "." for k in rng.integers(5, 16, n)]
    csv_file = csv_path(root, split)
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_file, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
                    "END_REALIGNED", "SENTENCE"])  # fmt: skip
        for i, (name, sentence) in enumerate(zip(names, sentences, strict=True)):
            w.writerow([f"v{seed}", f"v{seed}-8-rgb_front", f"v{seed}_{i}", name, "0.00", "1.00", sentence])
    target = cache_candidates(root, split)[0]
    target.mkdir(parents=True)
    points = tuple(DEFAULT_POINTS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    row_values = len(points) * 3
    block = rng.normal(0, 1, (1 << 16, row_values)).astype(np.float16)  # 64k frames (~30 MB), tiled
    block[:, 2::3] = 1.0  # the visibility channel
    with open(target / FEATURES_FILE, "wb") as f:
        done = 0
        while done < total:
            k = min(len(block), total - done)
            block[:k].tofile(f)
            done += k
        f.flush()
        os.fsync(f.fileno())  # a real cache was written long before training: its pages are clean
    np.save(target / OFFSETS_FILE, offsets)
    meta = {
        "format": META_FORMAT, "feature_version": FEATURE_VERSION, "split": split, "points": list(points),
        "num_points": len(points), "total_frames": total, "dtype": "float16",
        "fingerprint": compute_fingerprint(names, sentences, lengths),
        "clips": {"names": names, "video_ids": [f"v{seed}"] * n, "sentences": sentences,
                  "fps": [24.0] * n, "rows": list(range(n))},
        "summary": PackSummary(split, "json", n, n, total).to_dict(), "created": "benchmark",
        **csv_stamp(csv_file), "root": str(root.resolve()), "csv": str(csv_file),
    }  # fmt: skip
    (target / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return target


def write_dataset(root: Path, n_train: int, val_lengths: np.ndarray) -> int:
    """Train (n_train How2Sign-like clips) and val splits; returns the features file size in bytes."""
    path = write_packed_split(root, "train", how2sign_like_lengths(n_train, seed=1), seed=1)
    write_packed_split(root, "val", val_lengths, seed=2)
    from how2sign.batches import TrainData  # check the library opens it as a current cache (no re-pack)

    data = TrainData.load(root)
    assert len(data.train) == n_train and data.train.path == path, data.train
    return (path / "features.f16").stat().st_size


# ---------------------------------------------------------------------------------------------------
# The child: one training run in a fresh process


def status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def child(args: argparse.Namespace) -> None:
    import torch

    from how2sign.batches import Batcher, TrainData
    from how2sign.config import TrainConfig
    from how2sign.train import train
    from search.tiny_study import TINY_TRAIN

    torch.set_num_threads(1)
    root = Path(args.child)
    report: dict = {"start": status()}
    data = TrainData.load(root)
    report["loaded"] = status()
    # max_frames caps the model's sequence length (clips are still read whole, then subsampled), so the
    # attention activations stay small and alike in every batch and the peak is about the data path.
    cfg = TrainConfig(**{**TINY_TRAIN, "nhead": 4, "batch_size": BATCH, "epochs": 1, "patience": 1,
                         "max_frames": MAX_FRAMES})  # the tiny study's model with 4 heads, as measured
    # The clips these steps read: the first STEPS batches of epoch 1's plan, as train() draws it.
    plan = Batcher(data.train, data.vocab, cfg).plan(np.arange(len(data.train)), shuffle=True,
                                                     rng=np.random.default_rng([cfg.seed, 1]))[: args.steps]
    clips = np.array(sorted(i for b in plan for i in b))
    report["clips_read"] = len(clips)
    report["clip_span"] = [int(clips.min()), int(clips.max()), len(data.train)]
    calls = {"n": 0, "peak_anon": 0}

    def should_stop() -> bool:  # called once before the epoch, then before every batch
        calls["n"] += 1
        calls["peak_anon"] = max(calls["peak_anon"], status()["RssAnon"])
        return calls["n"] > args.steps + 1

    t0 = time.perf_counter()
    result = train(cfg, data, root.parent / f"out-{os.getpid()}", device="cpu", should_stop=should_stop)
    report["seconds"] = time.perf_counter() - t0
    report["steps"] = calls["n"] - 2
    report["interrupted"] = result.interrupted
    report["trained"] = status()
    report["cache_rss"] = cache_maps(os.getpid(), raw=True).get("Rss", 0)
    report["peak_anon"] = max(calls["peak_anon"], report["trained"]["RssAnon"])
    if args.scan:  # what a whole epoch does to the mapping: every clip read once
        for i in range(len(data.train)):
            data.train.clip(i)
        report["scanned"] = status()
    print("REPORT " + json.dumps(report), flush=True)
    if args.hold:
        sys.stdin.readline()  # the parent reads our smaps_rollup meanwhile


def spawn(root: Path, *, steps: int, scan: bool = False, hold: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(root), "--steps", str(steps)]
    cmd += ["--scan"] if scan else []
    cmd += ["--hold"] if hold else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def read_report(p: subprocess.Popen) -> dict:
    for line in p.stdout:
        if line.startswith("REPORT "):
            return json.loads(line[7:])
    p.wait()
    raise RuntimeError(f"child exited with {p.returncode} before reporting")


def run_child(root: Path, *, steps: int, scan: bool = False) -> dict:
    p = spawn(root, steps=steps, scan=scan)
    rep = read_report(p)
    p.stdin.close()
    if p.wait() != 0:
        raise RuntimeError(f"child exited with {p.returncode}")
    return rep


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


def cache_maps(pid: int, raw: bool = False):
    """Rss / Pss of the features.f16 mapping(s) in /proc/PID/smaps (a dict with `raw`, else a line)."""
    totals: dict[str, int] = {}
    inside = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split()[0] if line.strip() else ""
                if "-" in first and not first.endswith(":"):
                    inside = line.rstrip().endswith("features.f16")
                elif inside and first.rstrip(":") in ("Rss", "Pss"):
                    totals[first.rstrip(":")] = totals.get(first.rstrip(":"), 0) + int(line.split()[1]) * 1024
    except OSError:
        return {} if raw else "n/a"
    if raw:
        return totals
    return ", ".join(f"{k} {mb(v)}" for k, v in totals.items()) or "none"


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: (
        p.add_argument("--child", help=argparse.SUPPRESS), p.add_argument("--steps", type=int, default=STEPS,
                                                                        help=argparse.SUPPRESS),
        p.add_argument("--scan", action="store_true", help=argparse.SUPPRESS),
        p.add_argument("--hold", action="store_true", help=argparse.SUPPRESS),
        ))  # fmt: skip
    if args.child:
        child(args)
        return
    header("memory", args.quick)
    n_big, reps = (4000, 1) if args.quick else (31000, 2)
    n_small = 1000
    val_lengths = how2sign_like_lengths(200, seed=3)
    with workdir(args.keep) as tmp:
        need = int(n_big * 160 * 76 * 3 * 2 * 1.1)
        free = shutil.disk_usage(tmp).free
        say(f"disk: {mb(free)} free at {tmp}, the big cache needs about {mb(need)}")
        if free < need + 2**30:
            raise SystemExit(f"not enough disk space at {tmp} (set H2S_BENCH_TMP to a roomier folder)")
        t0 = time.perf_counter()
        big, small = tmp / "big", tmp / "small"
        size_big = write_dataset(big, n_big, val_lengths)
        size_small = write_dataset(small, n_small, val_lengths)
        say(f"wrote packed caches in {time.perf_counter() - t0:.0f}s: big {n_big} clips ({mb(size_big)} features), "
            f"small {n_small} clips ({mb(size_small)})")

        runs: dict[str, list[dict]] = {"big": [], "small": []}
        schedule = []
        for r in range(reps):
            schedule += [("big", "small") if r % 2 == 0 else ("small", "big")]
        for pair_ in schedule:
            for which in pair_:
                rep = run_child(big if which == "big" else small, steps=STEPS)
                runs[which].append(rep)
                t = rep["trained"]
                say(f"{which:>12}: peak RSS {mb(t['VmHWM'])} (after loading the data {mb(rep['loaded']['VmHWM'])}); "
                    f"peak anon {mb(rep['peak_anon'])}; at the end anon {mb(t['RssAnon'])} + file-backed "
                    f"{mb(t['RssFile'])}; {rep['steps']} steps read {rep['clips_read']} clips spread over "
                    f"#{rep['clip_span'][0]}..#{rep['clip_span'][1]} of {rep['clip_span'][2]}, {rep['seconds']:.1f}s")
                assert rep["steps"] == STEPS and rep["interrupted"], rep

        scan = None
        if not args.quick:
            scan = run_child(big, steps=STEPS, scan=True)

        # Two workers on one host, same cache, same clips: the cache's pages are shared.
        procs = [spawn(big, steps=STEPS, hold=True) for _ in range(2)]
        two = []
        try:
            reports = [read_report(p) for p in procs]
            two = [(p.pid, smaps_rollup(p.pid), cache_maps(p.pid)) for p in procs]
            assert all(r["steps"] == STEPS for r in reports)
        finally:
            for p in procs:
                with contextlib.suppress(OSError):
                    p.stdin.write("\n")
                    p.stdin.close()
                p.wait()

    def med(which: str, key) -> float:
        return median([key(r) for r in runs[which]])

    peak = {k: med(k, lambda r: r["trained"]["VmHWM"]) for k in runs if runs[k]}
    anon = {k: med(k, lambda r: r["peak_anon"]) for k in runs if runs[k]}
    files = {k: med(k, lambda r: r["trained"]["RssFile"]) for k in runs if runs[k]}
    loaded = {k: med(k, lambda r: r["loaded"]["VmHWM"]) for k in runs if runs[k]}
    say("")
    say(f"big = {n_big} clips ({mb(size_big)}), small = {n_small} clips ({mb(size_small)}); medians of {reps} run(s)")
    say(f"{'':<22} {'peak RSS':>10} {'after load':>10} {'peak anon':>10} {'file-backed':>11}")
    for k in peak:
        say(f"{k:<22} {mb(peak[k]):>10} {mb(loaded[k]):>10} {mb(anon[k]):>10} {mb(files[k]):>11}")
    ratio = peak["big"] / peak["small"]
    say(f"ratio big/small: peak RSS {ratio:.3f}; peak anonymous memory {anon['big'] / anon['small']:.3f}; "
        f"file-backed pages mapped at the end {files['big'] / files['small']:.2f}")
    cache_rss = {k: med(k, lambda r: r["cache_rss"]) for k in runs if runs[k]}
    read = size_big / n_big * runs["big"][0]["clips_read"]
    say(f"  {STEPS} steps read {runs['big'][0]['clips_read']} clips (~{mb(read)} of features), yet "
        f"{mb(cache_rss['big'])} of the big cache ({100 * cache_rss['big'] / size_big:.0f}% of features.f16, "
        f"{cache_rss['big'] / read:.0f}x what was read) is mapped into the process's RSS (small: {mb(cache_rss['small'])}, "
        f"{100 * cache_rss['small'] / size_small:.0f}% of its file): clip() reads with os.pread, so the page "
        f"cache stays shared and out of the process")
    if scan is not None:
        s = scan["scanned"]
        say(f"after reading every clip of the big cache once (a whole epoch's reads): RSS {mb(s['VmRSS'])} = "
            f"anon {mb(s['RssAnon'])} + file-backed {mb(s['RssFile'])}; peak RSS / small's "
            f"{s['VmHWM'] / peak['small']:.2f}, anon / small's {s['RssAnon'] / anon['small']:.3f}. The file-backed "
            f"part is the page cache mapped into the process: shared between workers and reclaimable.")
    if two:
        say("two workers training on the big cache at once (/proc/PID/smaps_rollup):")
        for pid, roll, maps in two:
            if roll:
                say(f"  pid {pid}: Rss {mb(roll.get('Rss', 0))}, Pss {mb(roll.get('Pss', 0))} "
                    f"(Pss_Anon {mb(roll.get('Pss_Anon', 0))}, Pss_File {mb(roll.get('Pss_File', 0))}), "
                    f"Shared {mb(roll.get('Shared_Clean', 0) + roll.get('Shared_Dirty', 0))}, "
                    f"Private {mb(roll.get('Private_Clean', 0) + roll.get('Private_Dirty', 0))}; "
                    f"features.f16 mapping: {maps}")
            else:
                say(f"  pid {pid}: smaps_rollup not available")
    verdict(f"peak RSS, {n_big}-clip cache / {n_small}-clip cache", ratio, TARGET, at_least=False)


if __name__ == "__main__":
    run_main(main)
