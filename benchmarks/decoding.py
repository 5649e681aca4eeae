"""Decoding: incremental greedy / batched beam search against the full-recomputation algorithms they replaced.

Trains the demo anchor (V4 at the [demo] budget of studies/capacity.toml: 8 epochs, patience 3) on the
built-in synthetic corpus, then decodes the validation split (100 clips) with its best checkpoint:

  old  the previous algorithms (kept as references in tests/how2sign/test_decoding.py): every step
       recomputes the whole prefix; beam search one clip at a time; decoding up to max_tokens;
  new  how2sign.decoding: cached keys and values, all clips and beams as one batch, decoding up to the
       longest training target plus a margin (evaluate.decode_limit).

Prints old/new decode times for greedy and beam 4 (and new without the length cap, to separate the two
effects), checks that old and new choose the same tokens, and prints evaluation's share of a trial
(train + evaluate_checkpoint) with each. Torch threads: --threads (default 1, as other benchmarks).

    python benchmarks/decoding.py [--quick] [--threads N]
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
from _common import header, make_corpus, parse_args, run_main, say, workdir

REPO = Path(__file__).resolve().parent.parent


def references():
    """reference_greedy / reference_beam from the tests: the algorithms decoding.py replaced."""
    spec = importlib.util.spec_from_file_location("ref_decoding", REPO / "tests" / "how2sign" / "test_decoding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_greedy, mod.reference_beam


def old_translate(model, split, vocab, cfg, beam_size: int) -> list[str]:
    """evaluate.translate as it was: same batches, old algorithms, up to max_tokens."""
    from how2sign.batches import Batcher
    from how2sign.config import TrainConfig

    ref_greedy, ref_beam = references()
    batcher = Batcher(split, vocab, TrainConfig.from_dict({**cfg.to_dict(), "batch_size": 64}))
    out = [""] * len(split)
    for idx in batcher.plan(np.arange(len(split)), shuffle=False, rng=None):
        b = batcher.make(idx)
        if beam_size <= 1:
            ids = ref_greedy(model, b.src, b.src_pad, cfg.max_tokens)
        else:
            ids = ref_beam(model, b.src, b.src_pad, beam_size, cfg.max_tokens)
        for i, seq in zip(idx, ids, strict=True):
            out[i] = vocab.decode(seq)
    return out


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def compare_decoding(best: Path, root: Path) -> dict:
    from how2sign.config import TrainConfig
    from how2sign.data import load_split
    from how2sign.evaluate import decode_limit, load_model, translate

    model, vocab, state = load_model(best)
    cfg = TrainConfig.from_dict(state["train_config"])
    val = load_split(root, "val")
    t_limit, limit = timed(lambda: decode_limit(root, vocab, cfg))
    say(f"decode limit: {limit} ids (max_tokens {cfg.max_tokens}), computed in {t_limit * 1000:.0f} ms")
    times = {}
    for k, name in ((1, "greedy"), (4, "beam4")):
        t_old, old = timed(lambda k=k: old_translate(model, val, vocab, cfg, k))
        t_full, full = timed(lambda k=k: translate(model, val, vocab, cfg, beam_size=k))
        t_new, new = timed(lambda k=k: translate(model, val, vocab, cfg, beam_size=k, max_len=limit))
        same = sum(a == b for a, b in zip(old, full, strict=True))
        capped = sum(a == b for a, b in zip(old, new, strict=True))
        say(f"{name:6s}: old {t_old:7.2f}s  new uncapped {t_full:6.2f}s  new capped {t_new:6.2f}s  "
            f"speed-up {t_old / t_new:5.1f}x  (same hypotheses as old: {same}/{len(val)} uncapped, "
            f"{capped}/{len(val)} capped)")
        times[name] = (t_old, t_new)
    return times


def trial_share(best: Path, root: Path, t_train: float, times: dict) -> None:
    from how2sign.batches import Batcher
    from how2sign.config import TrainConfig
    from how2sign.data import load_split
    from how2sign.evaluate import evaluate_checkpoint, load_model
    from how2sign.train import evaluate_loss

    model, vocab, state = load_model(best)
    cfg = TrainConfig.from_dict(state["train_config"])
    t_loss, _ = timed(lambda: evaluate_loss(model, Batcher(load_split(root, "val"), vocab, cfg), torch.device("cpu")))
    t_eval, ev = timed(lambda: evaluate_checkpoint(best, root, "val"))
    t_eval_old = t_eval - times["greedy"][1] + times["greedy"][0]  # same evaluation, old greedy decode
    say(f"evaluate_checkpoint (greedy, as the worker runs it): new {t_eval:.2f}s, with the old decoding "
        f"about {t_eval_old:.2f}s; of which evaluate_loss {t_loss:.2f}s; BLEU {ev.bleu:.2f}")
    say(f"train {t_train:.1f}s: evaluation share of train + evaluate: old {t_eval_old / (t_train + t_eval_old):.1%}"
        f", new {t_eval / (t_train + t_eval):.1%}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--threads", type=int, default=1))
    torch.set_num_threads(args.threads)
    header("decoding", args.quick)
    from how2sign.batches import TrainData
    from how2sign.checkpoint import BEST
    from how2sign.presets import preset
    from how2sign.train import train

    with workdir(args.keep) as d:
        n = (80, 20) if args.quick else (800, 100)
        root = make_corpus(d / "h2s", train=n[0], val=n[1])
        cfg = preset("v4").with_sets(["epochs=1" if args.quick else "epochs=8", "patience=3"])
        t_train, _ = timed(lambda: train(cfg, TrainData.load(root), d / "run", device="cpu"))
        say(f"trained V4 for {cfg.epochs} epochs in {t_train:.1f}s")
        times = compare_decoding(d / "run" / BEST, root)
        trial_share(d / "run" / BEST, root, t_train, times)


if __name__ == "__main__":
    run_main(main)
