"""Training overhead: `train()`'s frames/s divided by a plain PyTorch loop's, at batch 16 and 64.

The plain loop is the reference a user would write: AdamW with fused=True where the device supports
it, every batch built and moved to the device before the clock starts (pre-staged), then forward +
cross-entropy + backward + clip_grad_norm_ + step, with the same autocast `train()` uses and one
loss read per epoch. `train()` runs as `h2s-search train` runs it: it builds, pins and copies its
batches inside its loop, validates and writes checkpoints between epochs. Both train the same model
(same TrainConfig and seed) on the same batches (each epoch's plan from the per-epoch RNG stream
`train()` draws, padded as `train()` pads on that device), and their per-epoch losses are printed
side by side as a check that they compute the same thing.

Throughput is real (unpadded) frames per second of the optimisation loops, over epochs 2.. (epoch 1
warms up); `train()`'s comes from its own history. Runs alternate (train() first, then the plain loop
first), and the verdict is the median of the per-round ratios. Target: >= 0.97. On a busy shared
CPU whole runs vary by tens of percent, so a paired per-step ratio is printed too (each batch: the
plain step and train()'s build + copy + train_step, back to back on twin models).

On a CPU a small model (d_model 128, 2+2 layers, ff 512) keeps the measurement about overhead, with
one torch thread by default; on an accelerator the V4 shape. `measure(device, batch_size)` is the
importable entry point (benchmarks/gpu.py calls it):

    python benchmarks/training_overhead.py [--quick] [--device cpu|cuda|mps] [--threads N]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import header, make_corpus, parse_args, run_main, say, verdict, workdir

from how2sign.batches import Batcher, TrainData
from how2sign.config import TrainConfig
from how2sign.device import amp_dtype, autocast, padding_multiples, resolve_device
from how2sign.model import SignTranslator
from how2sign.train import token_loss, train

TARGET = 0.97
SMALL = dict(d_model=128, nhead=4, encoder_layers=2, decoder_layers=2, dim_feedforward=512)


def fused_supported(dev: torch.device) -> bool:
    """Whether this torch build has a fused AdamW kernel for the device."""
    try:
        p = torch.nn.Parameter(torch.zeros(2, device=dev))
        p.grad = torch.zeros_like(p)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


def staged_batches(data: TrainData, cfg: TrainConfig, dev: torch.device) -> list[list]:
    """Each epoch's batches, from the plan train() draws for that epoch, already on the device."""
    batcher = Batcher(data.train, data.vocab, cfg, pad_to=padding_multiples(dev))
    everything = np.arange(len(data.train))
    out = []
    for epoch in range(1, cfg.epochs + 1):
        plan = batcher.plan(everything, shuffle=True, rng=np.random.default_rng([cfg.seed, epoch]))
        out.append([batcher.make(idx).to(dev) for idx in plan])
    _sync(dev)
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def plain_loop(data: TrainData, cfg: TrainConfig, batches: list[list], dev: torch.device) -> list[dict]:
    """The reference loop; per epoch: real frames, seconds, train loss."""
    torch.manual_seed(cfg.seed)  # as train() does before building its model: the same initial weights
    model = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab))).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=fused_supported(dev) or None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    dtype = amp_dtype(dev)
    history = []
    for epoch_batches in batches:
        model.train()
        losses, weights = [], []
        _sync(dev)
        t0 = time.perf_counter()
        for b in epoch_batches:
            with autocast(dev, dtype):
                logits = model(b.src, b.src_pad, b.tgt_in)
            loss = token_loss(logits, b.tgt_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
            weights.append(b.tokens)
        train_loss = float((torch.stack(losses).float().cpu() * torch.tensor(weights)).sum() / sum(weights))
        seconds = time.perf_counter() - t0
        sched.step()
        history.append({"frames": sum(b.frames for b in epoch_batches), "seconds": seconds, "train_loss": train_loss})
    return history


def paired_steps(data: TrainData, cfg: TrainConfig, dev: torch.device, steps: int = 12) -> float:
    """Median over batches of plain step time / train()'s per-batch work (build + copy + train_step),
    the two run back to back on twin models, order alternating: a ratio that holds on a busy machine
    where whole runs vary by tens of percent."""
    from how2sign.train import Run, train_step

    with workdir() as tmp:
        run = Run.build(cfg, data, tmp / "run", str(dev), "auto")
    plain = Run.build(cfg, data, tmp / "plain", str(dev), "auto")
    plain_opt = torch.optim.AdamW(plain.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=fused_supported(dev) or None)
    plan = run.train_batches.plan(np.arange(len(data.train)), shuffle=True, rng=np.random.default_rng(0))
    ratios = []
    for k, idx in enumerate((plan * (1 + steps // max(len(plan), 1)))[:steps]):
        staged, times = run.train_batches.make(idx).to(dev), {}
        for which in (("lib", "plain") if k % 2 == 0 else ("plain", "lib")):
            _sync(dev)
            t0 = time.perf_counter()
            if which == "lib":
                train_step(run.model, run.opt, run.scaler, run.train_batches.make(idx).to(dev), cfg, dev, run.dtype)
            else:
                with autocast(dev, plain.dtype):
                    loss = token_loss(plain.model(staged.src, staged.src_pad, staged.tgt_in), staged.tgt_out)
                plain_opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(plain.model.parameters(), cfg.grad_clip)
                plain_opt.step()
            _sync(dev)
            times[which] = time.perf_counter() - t0
        ratios.append(times["plain"] / times["lib"])
    return statistics.median(ratios[2:] or ratios)  # the first steps warm up


def throughput(history: list[dict]) -> float:
    """Frames per second over epochs 2.. (epoch 1 is warm-up)."""
    timed = history[1:] or history
    return sum(h["frames"] for h in timed) / sum(h["seconds"] for h in timed)


def measure(device: str = "cpu", batch_size: int = 64, *, root: Path | None = None, n_train: int = 600,
            epochs: int = 3, rounds: int = 3, model: dict | None = None) -> dict:
    """train() against the plain loop at one batch size; returns frames/s of both, the ratio and more.

    root: a corpus to reuse (else a synthetic one of n_train clips is written to a temporary folder).
    model: TrainConfig shape overrides (default: SMALL on the CPU, the V4 shape elsewhere).
    """
    dev = resolve_device(device)
    shape = model if model is not None else (SMALL if dev.type == "cpu" else {})
    cfg = TrainConfig(**shape, batch_size=batch_size, epochs=epochs, patience=epochs, seed=0)
    with workdir() as tmp:
        data = TrainData.load(root or make_corpus(tmp / "corpus", train=n_train, val=40, seed=0))
        batches = staged_batches(data, cfg, dev)
        lib, ref, ratios, result = [], [], [], None
        for r in range(rounds):
            for what in (("train", "plain") if r % 2 == 0 else ("plain", "train")):
                if what == "train":
                    result = train(cfg, data, tmp / f"run-{r}", device=str(dev))
                    lib.append([{"frames": h["frames_per_second"] * h["seconds"], **h} for h in result.history])
                else:
                    ref.append(plain_loop(data, cfg, batches, dev))
            ratios.append(throughput(lib[-1]) / throughput(ref[-1]))
        paired = paired_steps(data, cfg, dev)
    return {"device": str(dev), "device_name": _device_name(dev), "batch_size": batch_size,
            "batches_per_epoch": len(batches[0]), "frames_per_epoch": sum(b.frames for b in batches[0]),
            "train_fps": statistics.median(throughput(h) for h in lib),
            "plain_fps": statistics.median(throughput(h) for h in ref),
            "ratio": statistics.median(ratios), "ratios": ratios, "paired_step_ratio": paired, "fused_plain": fused_supported(dev),
            "train_losses": [h["train_loss"] for h in lib[-1]], "plain_losses": [h["train_loss"] for h in ref[-1]],
            "split": {k: getattr(result, k) for k in ("seconds", "seconds_train", "seconds_validate",
                                                      "seconds_checkpoint", "seconds_other")}}


def host_syncs(device: str = "cuda", batch_size: int = 16, *, root: Path | None = None, n_train: int = 120) -> dict | None:
    """Synchronising CUDA calls in one training epoch of train() (batches, steps, the loss read), counted
    by their innermost Python frame in the project or in torch; None off CUDA, where torch cannot tell.
    The target is one per epoch: the loss read at its end."""
    import traceback
    import warnings
    from collections import Counter

    import how2sign.train as tr

    dev = resolve_device(device)
    if dev.type != "cuda":
        return None
    cfg = TrainConfig(batch_size=batch_size, epochs=1, patience=1, seed=0)
    with workdir() as tmp:
        data = TrainData.load(root or make_corpus(tmp / "corpus", train=n_train, val=20, seed=0))
        run = tr.Run.build(cfg, data, tmp / "run", str(dev), "auto")
        tr.train_epoch(run, 1, cfg.phase(1), None, tr._Progress(False, 1, 0))  # warm-up: allocator, kernels
        counts: Counter = Counter()

        def note(*_args, **_kw):
            frames = [f for f in traceback.extract_stack()[:-1] if "how2sign" in f.filename or "torch" in f.filename]
            counts[f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"] += 1

        try:
            with warnings.catch_warnings():  # restores the warning machinery on the way out
                warnings.simplefilter("always")
                warnings.showwarning = note
                torch.cuda.set_sync_debug_mode("warn")
                tr.train_epoch(run, 2, cfg.phase(1), None, tr._Progress(False, 1, 0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return dict(counts)


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type


def report(m: dict) -> None:
    say(f"batch {m['batch_size']} on {m['device']} ({m['device_name']}): {m['batches_per_epoch']} batches, "
        f"{m['frames_per_epoch']:,} real frames per epoch; plain loop AdamW fused={m['fused_plain']}")
    say(f"  train() {m['train_fps']:,.0f} frames/s, plain loop {m['plain_fps']:,.0f} frames/s, ratio "
        f"{m['ratio']:.3f} (rounds {', '.join(f'{r:.3f}' for r in m['ratios'])})")
    say(f"  paired per-step ratio (plain step / train()'s build + copy + train_step, back to back): "
        f"{m['paired_step_ratio']:.3f}")
    say(f"  per-epoch train loss: train() {[round(v, 4) for v in m['train_losses']]}, "
        f"plain {[round(v, 4) for v in m['plain_losses']]}")
    s = m["split"]
    say(f"  last train() call: {s['seconds']:.2f}s = train {s['seconds_train']:.2f} + validate "
        f"{s['seconds_validate']:.2f} + checkpoint {s['seconds_checkpoint']:.2f} + other {s['seconds_other']:.2f}")


def main() -> None:
    def extra(p):
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
        p.add_argument("--syncs", action="store_true", help="also count host-device syncs in one epoch (CUDA)")
        p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU (default 1; 0: "
                       "torch's own choice). Two-thread OpenMP on a small shared machine is far slower and noisier.")

    args = parse_args(__doc__.splitlines()[0], extra=extra)
    if args.threads:
        torch.set_num_threads(args.threads)
    header("training_overhead", args.quick)
    n_train, epochs, rounds = (120, 2, 2) if args.quick else (600, 3, 3)
    with workdir(args.keep) as tmp:
        root = make_corpus(tmp / "corpus", train=n_train, val=40, seed=0)
        results = [measure(args.device, bs, root=root, epochs=epochs, rounds=rounds) for bs in (16, 64)]
    for m in results:
        report(m)
    if args.syncs:
        say(f"host syncs in one train() epoch (target: 1, the loss read): {host_syncs(args.device)}")
    for m in results:
        verdict(f"train() / plain fused loop on pre-staged batches, batch {m['batch_size']}", m["ratio"], TARGET,
                at_least=True)


if __name__ == "__main__":
    run_main(main)
