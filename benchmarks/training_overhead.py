"""Training overhead: `train()`'s step throughput divided by a plain PyTorch loop's.

Both train the same SignTranslator (same TrainConfig, same seed, so the same initial weights) on the
same batches: each epoch's plan is `Batcher.plan` with the per-epoch RNG stream `train()` uses. The
plain loop gets its batches pre-built by `Batcher.make` before the clock starts and runs only
forward + cross-entropy + backward + clip_grad_norm_ + AdamW step (+ the cosine schedule per epoch).
`train()` builds its batches inside its loop, as it always does. A check confirms they compute the
same thing: their per-epoch training losses must agree.

On a small machine shared with other processes, run-to-run noise (10-30 %) dwarfs a 3 % target, so
the verdict uses a paired decomposition in which every comparison is made within the same moment:
  (a) loop overhead: inside real train() runs, `should_stop` (called before every batch) timestamps
      each step from batch start to the next batch's start, and a timing wrapper around
      `how2sign.train.train_step` measures the optimisation step within it; what remains is train()'s
      own per-step cost (batch assembly from the cache, loss bookkeeping, the loop). Share of
      interval spent in train_step = S;
  (b) step parity: `train_step` (GradScaler, clipping, optimizer from make_optimizer) and the plain
      step run alternately on twin models, batch by batch; median per-batch time ratio = P;
  train() / plain throughput = S x P.
Also printed, as direct cross-checks with their noise: throughput from whole alternating runs, by
train()'s own metrics.json `seconds` / `frames_per_second` (median of per-round ratios) and by
per-step medians over rounds; and the full epoch wall time with validation and checkpoint writes.
Epoch 1 of every run is dropped as warm-up.

A small model (d_model 128, 2+2 layers, feed-forward 512) keeps the measurement about overhead; both
loops use the same torch thread count (default 1, see --threads). Target (DESIGN section 8): >= 0.97.

    python benchmarks/training_overhead.py [--quick] [--threads N]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import header, make_corpus, median, parse_args, run_main, say, verdict, workdir

import how2sign.train as train_module
from how2sign.batches import Batcher, TrainData
from how2sign.config import TrainConfig
from how2sign.model import SignTranslator
from how2sign.train import make_optimizer, train
from how2sign.vocab import PAD_ID

TARGET = 0.97


def plans(data: TrainData, cfg: TrainConfig) -> list[list]:
    """Each epoch's pre-built batches, from the same plan train() draws for that epoch."""
    batcher = Batcher(data.train, data.vocab, cfg)
    everything = np.arange(len(data.train))
    out = []
    for epoch in range(1, cfg.epochs + 1):
        plan = batcher.plan(everything, shuffle=True, rng=np.random.default_rng([cfg.seed, epoch]))
        out.append([batcher.make(idx) for idx in plan])
    return out


def new_model(data: TrainData, cfg: TrainConfig) -> SignTranslator:
    torch.manual_seed(cfg.seed)  # as train() does before building its model
    return SignTranslator(cfg.model_config(data.input_dim, len(data.vocab)))


def plain_step(model, opt, b, cfg: TrainConfig) -> torch.Tensor:
    logits = model(b.src, b.src_pad, b.tgt_in)
    loss = F.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=cfg.label_smoothing)  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.detach()


def plain_loop(data: TrainData, cfg: TrainConfig, batches: list[list]) -> list[dict]:
    """The reference: a textbook PyTorch loop over pre-built batches. Per epoch: frames, seconds, loss,
    and each step's time from batch start to the next batch's start."""
    model = new_model(data, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    history = []
    for epoch_batches in batches:
        model.train()
        losses, weights, frames, stamps = [], [], 0, []
        t0 = time.perf_counter()
        for b in epoch_batches:
            stamps.append(time.perf_counter())
            losses.append(plain_step(model, opt, b, cfg))
            weights.append(int(b.tgt_out.ne(PAD_ID).sum()))
            frames += b.frames
        seconds = time.perf_counter() - t0
        sched.step()
        loss = float((torch.stack(losses) * torch.tensor(weights)).sum() / sum(weights))
        history.append({"frames": frames, "seconds": seconds, "train_loss": loss, "steps": list(np.diff(stamps))})
    return history


def library_run(data: TrainData, cfg: TrainConfig, out: Path, n_batches: list[int]) -> tuple[list[dict], list[float]]:
    """train() as `h2s-search train` runs it. Per epoch: frames, seconds (its own), loss; each step's
    interval (batch start to the next batch's start: `should_stop` is called before every batch) and
    the train_step time inside it; and the wall time of each whole epoch (with validation,
    checkpoints and metrics.json)."""
    stamps = [time.perf_counter()]
    calls: list[float] = []
    step_seconds: list[float] = []

    def should_stop() -> bool:  # train() asks once per epoch, then before every batch
        calls.append(time.perf_counter())
        return False

    real_step = train_module.train_step

    def timed_step(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_step(*args, **kwargs)
        finally:
            step_seconds.append(time.perf_counter() - t0)

    train_module.train_step = timed_step  # train() looks the name up at each call
    try:
        result = train(cfg, data, out, device="cpu", should_stop=should_stop,
                       on_epoch=lambda _rec: stamps.append(time.perf_counter()))  # fmt: skip
    finally:
        train_module.train_step = real_step
    hist = [{"frames": h["frames_per_second"] * h["seconds"], "seconds": h["seconds"],
             "train_loss": h["train_loss"]} for h in result.history]  # fmt: skip
    at = done = 0
    for h, n in zip(hist, n_batches, strict=True):  # per epoch: 1 call, then one before each of n batches
        h["steps"] = list(np.diff(calls[at + 1 : at + 1 + n]))  # batch j: start(j) .. start(j + 1)
        h["inner"] = step_seconds[done : done + n - 1]  # train_step of the same n - 1 batches
        at, done = at + 1 + n, done + n
    assert at == len(calls) and done == len(step_seconds), (at, len(calls), done, len(step_seconds))
    return hist, list(np.diff(stamps))


def step_parity(data: TrainData, cfg: TrainConfig, batches: list[list]) -> np.ndarray:
    """Per batch: plain step time / train_step time, the two run back to back (order alternating) on
    twin models over the same batches."""
    lib_model, ref_model = new_model(data, cfg), new_model(data, cfg)
    lib_opt, _ = make_optimizer(lib_model, cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # what train() builds on a CPU
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lib_model.train()
    ref_model.train()
    cpu = torch.device("cpu")
    ratios = []
    for k, b in enumerate(b for epoch in batches for b in epoch):
        times = {}
        for which in (("lib", "ref") if k % 2 == 0 else ("ref", "lib")):
            t0 = time.perf_counter()
            if which == "lib":
                train_module.train_step(lib_model, lib_opt, scaler, b, cfg, cpu, None)
            else:
                plain_step(ref_model, ref_opt, b, cfg)
            times[which] = time.perf_counter() - t0
        if k >= len(batches[0]):  # the first epoch's batches warm both up
            ratios.append(times["ref"] / times["lib"])
    return np.array(ratios)


def throughput(history: list[dict]) -> float:
    """Frames per second over epochs 2.. (epoch 1 is warm-up)."""
    timed = history[1:] or history
    return sum(h["frames"] for h in timed) / sum(h["seconds"] for h in timed)


def timed(history: list[dict], key: str) -> np.ndarray:
    """Per-step seconds of epochs 2.. (epoch 1 is warm-up), in plan order."""
    return np.array([t for h in (history[1:] or history) for t in h[key]])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads for both loops (default 1; 0: torch's "
        "own choice). Two-thread OpenMP on a small machine shared with other processes is many times slower "
        "and far noisier, so one thread is the default."))  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    header("training_overhead", args.quick)
    n_train, epochs, rounds = (150, 2, 2) if args.quick else (600, 3, 6)
    cfg = TrainConfig(d_model=128, nhead=4, encoder_layers=2, decoder_layers=2, dim_feedforward=512,
                      batch_size=32, epochs=epochs, patience=epochs, seed=0)  # fmt: skip
    with workdir(args.keep) as tmp:
        root = make_corpus(tmp / "corpus", train=n_train, val=40, seed=0)
        data = TrainData.load(root)
        batches = plans(data, cfg)
        per_epoch = [len(e) for e in batches]
        frames = sum(b.frames for e in batches for b in e)
        # Frames of the steps the per-step timings cover: epochs 2.., every batch but each epoch's last.
        step_frames = sum(b.frames for e in (batches[1:] or batches) for b in e[:-1])
        say(f"{len(data.train)} train clips, {per_epoch[0]} batches/epoch of {cfg.batch_size}, "
            f"{frames // epochs} real frames/epoch; model d_model {cfg.d_model}, "
            f"{cfg.encoder_layers}+{cfg.decoder_layers} layers, ff {cfg.dim_feedforward}; {epochs} epochs per run "
            f"(epoch 1 is warm-up), {rounds} rounds alternating train() and the plain loop")
        lib, ref, ratios, walls, lib_steps, ref_steps, shares = [], [], [], [], [], [], []
        lib_hist = ref_hist = None
        for r in range(rounds):
            order = ("train", "plain") if r % 2 == 0 else ("plain", "train")
            for what in order:
                if what == "train":
                    lib_hist, wall = library_run(data, cfg, tmp / f"run-{r}", per_epoch)
                    lib.append(throughput(lib_hist))
                    lib_steps.append(timed(lib_hist, "steps"))
                    shares.append(timed(lib_hist, "inner").sum() / lib_steps[-1].sum())
                    walls.append(throughput([{**h, "seconds": w} for h, w in zip(lib_hist, wall, strict=True)]))
                else:
                    ref_hist = plain_loop(data, cfg, batches)
                    ref.append(throughput(ref_hist))
                    ref_steps.append(timed(ref_hist, "steps"))
            ratios.append(lib[-1] / ref[-1])
            say(f"round {r + 1}/{rounds} ({' then '.join(order)}): train() {lib[-1]:,.0f} frames/s, "
                f"plain loop {ref[-1]:,.0f} frames/s, ratio {ratios[-1]:.3f}; train_step's share of train()'s "
                f"step intervals {shares[-1]:.4f}")
        parity = step_parity(data, cfg, batches)

    same = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(lib_hist, ref_hist, strict=True))
    A, B = np.stack(lib_steps), np.stack(ref_steps)  # (rounds, steps): the same batches, step by step
    share, par = median(shares), float(np.median(parity))
    paired = share * par
    say("")
    say(f"same computation: per-epoch train loss train() {[round(h['train_loss'], 5) for h in lib_hist]}, "
        f"plain {[round(h['train_loss'], 5) for h in ref_hist]} (max difference {same:.1e})")
    say("paired decomposition (the verdict):")
    say(f"  (a) share of train()'s step intervals spent in train_step : {share:.4f} (median of {rounds} runs; "
        f"{min(shares):.4f} .. {max(shares):.4f}); train()'s own per-step cost "
        f"{1000 * (1 - share) * A.sum(axis=1).mean() / A.shape[1]:.2f} ms of a "
        f"{1000 * A.sum(axis=1).mean() / A.shape[1]:.0f} ms step")
    say(f"  (b) plain step time / train_step time, back to back         : {par:.4f} (median of {len(parity)} "
        f"pairs; quartiles {np.percentile(parity, 25):.3f} .. {np.percentile(parity, 75):.3f})")
    say(f"  train() / plain loop throughput = (a) x (b)                  : {paired:.4f}")
    say("direct cross-checks (whole runs alternating; noisy on a shared machine):")
    say(f"  metrics.json: train() {median(lib):,.0f} frames/s, plain {median(ref):,.0f} frames/s; median of "
        f"per-round ratios {median(ratios):.4f} (rounds {min(ratios):.3f} .. {max(ratios):.3f})")
    say(f"  per-step medians over rounds ({A.shape[1]} steps): train() {step_frames / np.median(A, axis=0).sum():,.0f} "
        f"frames/s, plain {step_frames / np.median(B, axis=0).sum():,.0f} frames/s, ratio "
        f"{np.median(B, axis=0).sum() / np.median(A, axis=0).sum():.4f}")
    say(f"  train() full epochs incl. validation + checkpoints + metrics.json: {median(walls):,.0f} frames/s")
    verdict("train() step throughput / plain PyTorch loop (paired)", paired, TARGET, at_least=True)


if __name__ == "__main__":
    run_main(main)
