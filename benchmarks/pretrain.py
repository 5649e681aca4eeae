"""Pretrained pose encoder: what pretraining costs, whether it helps, and what a frozen encoder saves.

1. Pretraining cost: masked keypoint modelling on the built-in corpus's train split (small encoder),
   seconds per epoch, and the masked-reconstruction error on val against linear interpolation.
2. The four `encoder` arms of studies/frozen-encoder.toml (scratch, pretrained-frozen, random-frozen,
   pretrained-finetuned at 0.1x lr), over 3 seeds, at an equal epoch budget: best val loss, greedy
   BLEU on val, seconds per epoch. Same small model in every arm; only the encoder's start and
   freezing differ.
3. Decoder-only speed-up: a full V4 trial (d_model 256, 2+2 layers) against the same V4 model with a
   frozen encoder whose outputs are cached, and with a frozen encoder without the cache
   ($H2S_ENCODER_CACHE_MB=0), alternating in rounds. Median seconds per training epoch; target >= 3x
   fewer for the cached one.

    python benchmarks/pretrain.py [--quick] [--threads N] [--seeds N] [--part all|pretrain|speed]
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from _common import header, make_corpus, median, parse_args, run_main, say, verdict, workdir

ARMS = {
    "scratch": {},
    "pretrained-frozen": {"encoder_init": "{enc}", "freeze_encoder": True},
    "random-frozen": {"freeze_encoder": True},
    "pretrained-finetuned": {"encoder_init": "{enc}", "encoder_lr_scale": 0.1},
}
SMALL = dict(d_model=64, nhead=4, encoder_layers=2, decoder_layers=2, dim_feedforward=256, dropout=0.1,
             batch_size=16, lr=1e-3, lr_min=1e-5, patience=100, max_frames=256)


def pretrain_cost(root: Path, tmp: Path, epochs: int, lr: float) -> Path:
    from how2sign.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(d_model=64, nhead=4, encoder_layers=2, dim_feedforward=256, dropout=0.1,
                         batch_size=16, lr=lr, lr_min=1e-5, epochs=epochs, max_frames=256)
    r = pretrain(cfg, root, tmp / "pretrain", device="cpu")
    per_epoch = [h["seconds"] for h in r.history]
    say(f"pretraining: {r.epochs_run} epochs, {r.seconds:.1f}s in all, median {median(per_epoch):.2f}s/epoch, "
        f"{r.params:,} encoder parameters")
    curve = ", ".join(f"{h['val_error']:.4f}" for h in r.history)
    say(f"  val masked-reconstruction error per epoch: {curve}")
    say(f"  linear interpolation across the masked spans: {r.interpolation_error:.4f}")
    say(f"  verdict: {r.verdict}")
    return Path(r.encoder)


def arm_runs(root: Path, tmp: Path, encoder: Path, epochs: int, seeds: list[int]) -> dict:
    from how2sign.batches import TrainData
    from how2sign.config import TrainConfig
    from how2sign.evaluate import evaluate_checkpoint
    from how2sign.train import train

    data = TrainData.load(root)
    rows: dict[str, list[dict]] = {a: [] for a in ARMS}
    for seed in seeds:
        for arm, fields in ARMS.items():
            values = {k: (v.format(enc=encoder) if isinstance(v, str) else v) for k, v in fields.items()}
            cfg = TrainConfig(**SMALL, epochs=epochs, seed=seed).replace(values)
            out = tmp / f"{arm}-{seed}"
            t0 = time.perf_counter()
            r = train(cfg, data, out, device="cpu")
            wall = time.perf_counter() - t0
            ev = evaluate_checkpoint(r.best_checkpoint, root, "val", device="cpu")
            rows[arm].append({"val_loss": r.best_val_loss, "bleu": ev.bleu, "wall": wall,
                              "epoch_s": median([h["seconds"] for h in r.history]), "params": r.params})
            say(f"  seed {seed} {arm:21s} val_loss {r.best_val_loss:.4f}  BLEU {ev.bleu:5.2f}  "
                f"{wall:6.1f}s  ({r.params:,} trainable)")
    return rows


def _ms(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"


def summarise_arms(rows: dict, epochs: int, seeds: int) -> None:
    say(f"arms at {epochs} epochs, mean ± sd over {seeds} seeds:")
    say(f"  {'arm':21s} {'val loss':>17s} {'BLEU':>13s} {'s/epoch':>8s} {'s/trial':>8s}")
    for arm, rs in rows.items():
        say(f"  {arm:21s} {_ms([r['val_loss'] for r in rs], '.4f'):>17s} {_ms([r['bleu'] for r in rs], '.2f'):>13s} "
            f"{median([r['epoch_s'] for r in rs]):8.2f} {median([r['wall'] for r in rs]):8.1f}")
    base = statistics.fmean(r["val_loss"] for r in rows["scratch"])
    for arm in ("pretrained-frozen", "pretrained-finetuned"):
        d = statistics.fmean(r["val_loss"] for r in rows[arm]) - base
        control = statistics.fmean(r["val_loss"] for r in rows["random-frozen"])
        say(f"  {arm}: val loss {d:+.4f} against scratch; "
            f"{statistics.fmean(r['val_loss'] for r in rows[arm]) - control:+.4f} against the random-frozen control")


def how2sign_shaped(tmp: Path, train_n: int, val_n: int) -> Path:
    """Packed train/val splits with How2Sign-like clip lengths (median 140 frames; the built-in corpus's
    clips are ~43 frames) and 5-15-word sentences; random features: the cost does not depend on them."""
    from _common import how2sign_like_lengths
    from memory import write_packed_split

    root = tmp / "how2sign-shaped"
    write_packed_split(root, "train", how2sign_like_lengths(train_n, seed=1), seed=1)
    write_packed_split(root, "val", how2sign_like_lengths(val_n, seed=2), seed=2)
    return root


def speedup(root: Path, tmp: Path, epochs: int, rounds: int) -> float:
    """Full, cached and uncached-frozen runs alternate in each round, so all three meet the same load."""
    from how2sign.batches import TrainData
    from how2sign.config import TrainConfig
    from how2sign.train import train

    data = TrainData.load(root)
    v4 = TrainConfig(epochs=epochs, patience=100)  # V4's shape and recipe
    frozen = v4.replace({"freeze_encoder": True})
    runs = {"full V4 trial": (v4, None), "frozen encoder, cached outputs": (frozen, None),
            "frozen encoder, no cache": (frozen, "0")}
    per: dict[str, list[float]] = {n: [] for n in runs}
    wall: dict[str, list[float]] = {n: [] for n in runs}
    for k in range(rounds):
        for name, (cfg, env) in runs.items():
            os.environ["H2S_ENCODER_CACHE_MB"] = env or "2048"
            import how2sign.encoder_init as ei

            ei._SHARED.clear()  # every cached run pays for its own cache, as a worker's first trial does
            t0 = time.perf_counter()
            r = train(cfg, data, tmp / f"speed-{root.name}-{k}-{name.replace(' ', '-').replace(',', '')}",
                      device="cpu")
            wall[name].append(time.perf_counter() - t0)
            per[name].append(median([h["seconds"] for h in r.history]))
    os.environ.pop("H2S_ENCODER_CACHE_MB", None)
    for name in runs:
        say(f"  {name:32s} median {median(per[name]):6.2f}s per training epoch; median {median(wall[name]):6.1f}s "
            f"for {epochs} epochs in all (validation, checkpoints and the one-off cache included)")
    ratios = [f / c for f, c in zip(per["full V4 trial"], per["frozen encoder, cached outputs"], strict=True)]
    whole = [f / c for f, c in zip(wall["full V4 trial"], wall["frozen encoder, cached outputs"], strict=True)]
    nocache = [f / c for f, c in zip(per["full V4 trial"], per["frozen encoder, no cache"], strict=True)]
    say(f"  per-round ratios, full / cached: {', '.join(f'{x:.2f}' for x in ratios)}")
    say(f"  whole-run ratio (incl. cache build, validation, checkpoints): {median(whole):.2f}x")
    say(f"  frozen without the cache: {median(nocache):.2f}x fewer seconds per epoch")
    return median(ratios)


def main() -> None:
    def extra(p):
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
        p.add_argument("--seeds", type=int, default=3)
        p.add_argument("--pretrain-epochs", type=int, default=None, help="default 20 (--quick: 3)")
        p.add_argument("--pretrain-lr", type=float, default=1e-3)
        p.add_argument("--part", choices=("all", "pretrain", "speed"), default="all",
                       help="pretrain: pretraining cost and the arms; speed: the decoder-only speed-up")

    args = parse_args(__doc__.splitlines()[0], extra)
    torch.set_num_threads(args.threads)
    header("pretrain", args.quick)
    train_n, val_n, pre_epochs, epochs, v4_epochs, rounds = (60, 20, 3, 3, 2, 1) if args.quick else (300, 60, 20, 8, 3, 3)
    with workdir(args.keep) as tmp:
        os.environ["H2S_HOME"] = str(tmp / "home")
        root = make_corpus(tmp / "corpus", train=train_n, val=val_n)
        if args.part in ("all", "pretrain"):
            encoder = pretrain_cost(root, tmp, args.pretrain_epochs or pre_epochs, args.pretrain_lr)
            rows = arm_runs(root, tmp, encoder, epochs, list(range(args.seeds)))
            summarise_arms(rows, epochs, args.seeds)
        if args.part in ("all", "speed"):
            shaped = how2sign_shaped(tmp, train_n, val_n)
            for label, where in (("built-in corpus, ~43-frame clips", root), ("How2Sign-shaped clips", shaped)):
                say(f"decoder-only speed-up, {label} (V4 shape, CPU, {rounds} alternating rounds):")
                ratio = speedup(where, tmp, v4_epochs, rounds)
                verdict(f"cached decoder-only epoch vs full V4 epoch ({label})", ratio, 3.0, at_least=True,
                        unit="x")


if __name__ == "__main__":
    run_main(main)
