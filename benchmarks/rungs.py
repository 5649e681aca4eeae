"""Rungs inside epochs (report_every): what a report costs against the training between two reports.

Three measurements on the synthetic corpus, all ratios within one run, V4's shape (d_model 256, 2+2 layers,
feed-forward 1024, batch 32) on the CPU unless --small. The corpus's val split is 1/18 of its train split,
How2Sign's proportion (1,741 / 31,000):

  1. passes: seconds per real frame of a training step (train_step: forward, backward, clipping, AdamW)
     over those of a validation forward (evaluate_loss's work), on the same batches, alternating: what
     how2sign.reporting.TRAIN_PASSES (3.0) estimates.
  2. share: each report inside an epoch's validation seconds (read from TrainTimes at every report, in
     the hook) over the training seconds of report_every clips just before it (the interval's own speed),
     (a) at a quarter of the train split, the automatic setting's interval (How2Sign's 7,750 clips), where
     the whole val split is cheap enough and is used, and (b) at a sixth, where the val subset is used.
     Target (issue 19): <= ~10 % (VAL_SHARE).
  3. overhead: train() wall seconds with reports inside epochs / with one per epoch (report_every 0 on
     this split), same config; the epoch histories are checked equal.

    python benchmarks/rungs.py [--quick] [--small] [--train-clips N] [--threads N]
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch
from _common import header, make_corpus, parse_args, run_main, say, verdict, workdir

from how2sign.batches import Batcher, TrainData
from how2sign.config import TrainConfig
from how2sign.reporting import TRAIN_PASSES, VAL_SHARE, Schedule, val_subset
from how2sign.train import TrainTimes, evaluate_loss, make_optimizer, train, train_step

V4 = dict(d_model=256, nhead=4, encoder_layers=2, decoder_layers=2, dim_feedforward=1024, batch_size=32)
SMALL = dict(d_model=64, nhead=4, encoder_layers=1, decoder_layers=1, dim_feedforward=256, batch_size=16)
SHARE_TARGET = VAL_SHARE * 1.2  # "~10 %": VAL_SHARE, give or take the estimate


def extra(p) -> None:
    p.add_argument("--small", action="store_true", help="a small model instead of V4's shape")
    p.add_argument("--train-clips", type=int, default=1800, help="train clips written (val: 1/18 of them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def passes(data: TrainData, cfg: TrainConfig, rounds: int) -> float:
    """Training step seconds per frame / validation forward seconds per frame, median over rounds."""
    from how2sign.model import SignTranslator

    torch.manual_seed(cfg.seed)
    model = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab)))
    opt, _ = make_optimizer(model, cfg, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batcher = Batcher(data.train, data.vocab, cfg)
    plan = batcher.plan(np.arange(len(data.train)), shuffle=True, rng=np.random.default_rng(0))[:12]
    batches = [batcher.make(idx) for idx in plan]
    frames = sum(b.frames for b in batches)
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.train()
        for b in batches:
            train_step(model, opt, scaler, b, cfg, torch.device("cpu"), None)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate_loss(model, _Fixed(batcher, plan), torch.device("cpu"))
        t_val = time.perf_counter() - t0
        ratios.append((t_train / frames) / (t_val / frames))
    say(f"passes: a training step costs {statistics.median(ratios):.2f} validation forwards per frame "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; {len(batches)} batches, {frames} frames); "
        f"TRAIN_PASSES = {TRAIN_PASSES}")
    return statistics.median(ratios)


class _Fixed:
    """The same batches for evaluate_loss as the training side used (its plan over the given clips)."""

    def __init__(self, batcher: Batcher, plan: list[list[int]]):
        self.batcher, self.split, self._plan = batcher, batcher.split, plan

    def plan(self, _indices, *, shuffle, rng):
        return self._plan

    def batches(self, plan, rng=None, *, prefetch=False):
        return self.batcher.batches(plan, rng, prefetch=prefetch)


def shares(data: TrainData, cfg: TrainConfig, out) -> tuple[list[float], TrainTimes, list[dict], float]:
    """One train() run: (each report inside an epoch's validation seconds / the training seconds of
    report_every clips just before it, read from TrainTimes in the hook; its times, its history, wall)."""
    times, last, inside = TrainTimes(), {"train": 0.0, "validate": 0.0, "clips": 0}, []

    def hook(_step, _val, point) -> None:
        d_train, d_val = times.train - last["train"], times.validate - last["validate"]
        if not point.epoch_end:  # the interval's own training, at this moment's speed of the machine
            inside.append(d_val / (d_train * cfg.report_every / max(point.clips - last["clips"], 1)))
        last.update(train=times.train, validate=times.validate, clips=point.clips)

    t0 = time.perf_counter()
    r = train(cfg, data, out, device="cpu", report=hook, times=times)
    return inside, times, r.history, time.perf_counter() - t0


verdicts: list[tuple[str, float]] = []


def run_share(data: TrainData, cfg: TrainConfig, out, label: str) -> tuple[float, float, list[dict]]:
    """(median share, wall seconds, history) of one setting, printed with its verdict."""
    subset = val_subset(Schedule.of(cfg.report_every, len(data.train)), data.train.lengths, data.val.lengths)
    share, times, hist, wall = shares(data, cfg, out)
    used = f"{len(subset)} of {len(data.val)} val clips (the subset)" if subset is not None else \
        f"all {len(data.val)} val clips"
    verdicts.append((f"validation share of an interval, {label} of an epoch, {used}", statistics.median(share)))
    say(f"share ({label}, report_every = {cfg.report_every}, on {used}): median {statistics.median(share):.3f} over "
        f"{len(share)} reports inside epochs ({', '.join(f'{x:.3f}' for x in share)}); train {times.train:.1f} s, "
        f"validate {times.validate:.1f} s, checkpoints {times.checkpoint:.2f} s, wall {wall:.1f} s")
    return statistics.median(share), wall, hist


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra)
    torch.set_num_threads(args.threads)
    header("rungs", args.quick)
    n_train = 540 if args.quick else args.train_clips
    shape = SMALL if args.small or args.quick else V4
    with workdir(args.keep) as tmp:
        data = TrainData.load(make_corpus(tmp / "h2s", train=n_train, val=max(1, n_train // 18)))
        base = TrainConfig(**shape, epochs=1, lr=3e-4)
        ratio = passes(data, base, 2 if args.quick else 3)
        n = len(data.train)
        _, _, hist_q = run_share(data, dataclasses.replace(base, report_every=-(-n // 4)), tmp / "q", "a quarter")
        _, wall, hist = run_share(data, dataclasses.replace(base, report_every=-(-n // 6)), tmp / "s", "a sixth")
        t0 = time.perf_counter()
        plain = train(base, data, tmp / "plain", device="cpu")
        t_plain = time.perf_counter() - t0
        losses = [[(h["train_loss"], h["val_loss"]) for h in x] for x in (hist_q, hist, plain.history)]
        say(f"overhead: train() {wall:.1f} s with a report every sixth of an epoch, {t_plain:.1f} s with one per "
            f"epoch (ratio {wall / t_plain:.3f}); epoch histories equal: {losses[0] == losses[1] == losses[2]}")
        say(f"passes measured / TRAIN_PASSES: {ratio / TRAIN_PASSES:.2f} (above 1: validation is cheaper than "
            "estimated, so the subset is smaller than it could be)")
        for name, value in verdicts:
            verdict(name, value, SHARE_TARGET, at_least=False)


if __name__ == "__main__":
    run_main(main)
