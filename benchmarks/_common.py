"""Shared helpers for the benchmark scripts: arguments, temp folders, medians, PASS/FAIL lines.

Every benchmark prints ratios measured within one run, so its verdict holds on a
noisy shared machine; absolute times are printed for information only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def parse_args(description: str, extra=None) -> argparse.Namespace:
    """`--quick` (a smoke-test size, under a minute) plus whatever `extra(parser)` adds."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test (< 60 s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    if extra is not None:
        extra(p)
    return p.parse_args()


@contextlib.contextmanager
def workdir(keep: bool = False, prefix: str = "h2s-bench-") -> Iterator[Path]:
    """A temporary folder (under $H2S_BENCH_TMP, else the system temp dir), removed afterwards."""
    base = os.environ.get("H2S_BENCH_TMP") or None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def make_corpus(root: Path, *, train: int, val: int, test: int = 0, seed: int = 0) -> Path:
    """The built-in synthetic corpus (How2Sign's on-disk format) at `root`."""
    from how2sign.synthetic import write_corpus

    t0 = time.perf_counter()
    write_corpus(root, train=train, val=val, test=test, seed=seed)
    say(f"synthetic corpus: train={train} val={val} test={test} seed={seed} written in "
        f"{time.perf_counter() - t0:.1f}s at {root}")
    return root


def how2sign_like_lengths(n: int, seed: int = 0, median: float = 140.0, sigma: float = 0.5,
                          lo: int = 20, hi: int = 600) -> np.ndarray:  # fmt: skip
    """n clip lengths ~ lognormal(log(median), sigma), redrawn until inside [lo, hi]."""
    rng = np.random.default_rng(seed)
    out = np.exp(rng.normal(np.log(median), sigma, n))
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = np.exp(rng.normal(np.log(median), sigma, int(bad.sum())))
        bad = (out < lo) | (out > hi)
    return np.round(out).astype(np.int64)


def median(values) -> float:
    return float(statistics.median(values))


def say(msg: str) -> None:
    print(msg, flush=True)


def header(name: str, quick: bool) -> None:
    import platform

    import torch

    say(f"== {name}{' (--quick)' if quick else ''}: python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}")


def verdict(name: str, value: float, target: float, *, at_least: bool, unit: str = "") -> bool:
    """Print the final `PASS`/`FAIL` line of one target and return whether it passed."""
    ok = value >= target if at_least else value <= target
    op = ">=" if at_least else "<="
    say(f"{'PASS' if ok else 'FAIL'} {name}: {value:.4g}{unit} (target {op} {target:g}{unit})")
    return ok


def run_main(main) -> None:
    """Exit 0 whatever the verdicts; a crash still exits non-zero with its traceback."""
    main()
    sys.exit(0)


def bench_study(name: str, *, n_trials: int, epochs: int, anchor: bool) -> object:
    """The tiny study (search.tiny_study) as the storage and fleet benchmarks run it: batch size searched
    too, Hyperband from epoch 1, TPE; parsed into a StudySpec."""
    import tomllib

    from search.spec import parse
    from search.tiny_study import TINY_ANCHOR, TINY_SPACE, tiny_study_toml

    text = tiny_study_toml(name, n_trials=n_trials, epochs=epochs,
                           space=TINY_SPACE + '\nbatch_size = { type = "categorical", choices = [8, 16] }',
                           anchor={**TINY_ANCHOR, "batch_size": 8} if anchor else None,
                           pruner='type = "hyperband"\nmin_resource = 1\nreduction_factor = 3',
                           sampler='type = "tpe"\nseed = 0\nn_startup_trials = 6')
    return parse(tomllib.loads(text), f"benchmarks ({name})")
