"""GPU: the figures a GPU user feels, in one run that fits one 8-minute call on a lent card.

Prints the device's name, then:
  (a) train() frames/s / a plain loop (AdamW fused where the device has it, the same autocast,
      batches built and moved to the device before the clock starts), at batch 16 and 64; epoch 1
      of each is dropped as warm-up. Uses benchmarks/training_overhead.py's `measure(device,
      batch_size)` when that module has one, else the loop here;
  (b) a warm worker's trial wall time / its training-loop time: `run_worker` in this process on the
      demo study, the first trial dropped as warm-up; the loop time is the trial's `seconds_train`
      attribute where the worker records one, else the sum of train()'s per-epoch training seconds;
  (c) the demo study (capacity's [demo] budget on the built-in corpus) with 1, 2, 4 and 8 worker
      processes on the one device: wall time, trials ended per hour, mean GPU utilisation sampled
      every 0.5 s through pynvml or nvidia-smi. Each run stops after --run-seconds (trials that
      ended by then are counted), so the whole script stays inside its call;
  (d) V4 seconds per epoch on a How2Sign-sized packed split: 31k clips with lognormal lengths around
      140 frames, written straight into the packed format by benchmarks/memory.py's writer.

Everything also runs on a CPU, and --quick shrinks every part to CPU size (a few minutes on two
cores): smaller corpora and models, 1-2 workers, 2 trials of 2 epochs. Targets (issue 8): (a) >= 0.97,
(b) non-training share <= 20% on a GPU (25% on a CPU), (d) <= 8 s per epoch on an H100.

    python benchmarks/gpu.py [--quick] [--device auto|cuda|cpu|mps] [--parts abcd] [--workers 1,2,4,8]
                             [--run-seconds S] [--clips N]
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import header, how2sign_like_lengths, parse_args, run_main, say, verdict, workdir

WORDS_VOCAB_CLIPS = 2000  # the train split of part (a): enough steps per epoch at batch 64


def options(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default auto)")
    p.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    p.add_argument("--workers", help="worker counts of part (c) (default 1,2,4,8; --quick 1,2)")
    p.add_argument("--run-seconds", type=float, help="cap on each part (c) run (default 70; --quick 150)")
    p.add_argument("--clips", type=int, help="train clips of part (d) (default 31000; --quick 400)")


# --------------------------------------------------------------------------- devices
def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Utilisation:
    """Mean GPU utilisation (%) over a with-block, sampled every 0.5 s; None on a CPU or without tools."""

    def __init__(self, device):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._read = self._reader() if device.type == "cuda" else None

    def _reader(self):
        index = self.device.index or 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # pynvml absent, or no driver it can talk to: try nvidia-smi
            pass
        if not shutil.which("nvidia-smi"):
            return None
        cmd = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        return lambda: float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip())

    def _loop(self):
        while not self._stop.wait(0.5):
            with contextlib.suppress(ValueError, OSError, subprocess.SubprocessError):
                self.samples.append(self._read())

    def __enter__(self):
        if self._read:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._read:
            self._thread.join()

    @property
    def mean(self) -> str:
        return f"{statistics.fmean(self.samples):.0f}%" if self.samples else "n/a"


# --------------------------------------------------------------------------- (a) train() vs a plain loop
def packed_corpus(root: Path, n_train: int, n_val: int) -> Path:
    """How2Sign-like clip lengths written straight into the packed format (benchmarks/memory.py)."""
    from memory import write_packed_split

    t0 = time.perf_counter()
    write_packed_split(root, "train", how2sign_like_lengths(n_train, seed=1), seed=1)
    write_packed_split(root, "val", how2sign_like_lengths(n_val, seed=2), seed=2)
    say(f"packed corpus: {n_train} train + {n_val} val clips written in {time.perf_counter() - t0:.1f}s at {root}")
    return root


def fps(history: list[dict]) -> float:
    """Frames per second of train()'s training loop over epochs 2.. (epoch 1 is warm-up)."""
    warm = history[1:] or history
    return sum(h["frames_per_second"] * h["seconds"] for h in warm) / sum(h["seconds"] for h in warm)


def plain_fps(data, cfg, device) -> float:
    """The reference loop: fused AdamW where available, the same autocast as train(), pre-staged batches."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from how2sign.batches import Batcher
    from how2sign.device import amp_dtype, autocast
    from how2sign.model import SignTranslator
    from how2sign.vocab import PAD_ID

    batcher = Batcher(data.train, data.vocab, cfg)
    everything = np.arange(len(data.train))
    epochs = [[batcher.make(i).to(device) for i in batcher.plan(everything, shuffle=True,
                                                               rng=np.random.default_rng([cfg.seed, e]))]
              for e in range(1, cfg.epochs + 1)]  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab))).to(device)
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device in this torch
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype, rates = amp_dtype(device), []
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    for batches in epochs:
        model.train()
        sync(device)
        t0, frames = time.perf_counter(), 0
        for b in batches:
            with autocast(device, dtype):
                logits = model(b.src, b.src_pad, b.tgt_in)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), b.tgt_out.flatten(), ignore_index=PAD_ID)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            frames += b.frames
        float(loss)  # one read per epoch, as train() does
        sync(device)
        rates.append(frames / (time.perf_counter() - t0))
    warm = rates[1:] or rates
    return statistics.fmean(warm)


def part_a(args, device, tmp: Path) -> None:
    import training_overhead

    say("\n(a) train() frames/s / a plain loop with fused AdamW on pre-staged batches")
    if hasattr(training_overhead, "measure"):
        accepted = inspect.signature(training_overhead.measure).parameters
        small = {"n_train": 200, "rounds": 1} if args.quick else {}
        for bs in (16, 64):
            m = training_overhead.measure(str(device), bs, **{k: v for k, v in small.items() if k in accepted})
            say(f"  batch {bs}: train() {m['train_fps']:,.0f} frames/s, plain loop {m['plain_fps']:,.0f} frames/s "
                f"(training_overhead.measure; fused AdamW in the plain loop: {m.get('fused_plain')})")
            verdict(f"(a) train() / plain loop at batch {bs}", m["ratio"], 0.97, at_least=True)
        return
    from how2sign.batches import TrainData
    from how2sign.config import TrainConfig
    from how2sign.train import train

    data = TrainData.load(packed_corpus(tmp / "a", 150 if args.quick else WORDS_VOCAB_CLIPS, 40))
    shape = dict(d_model=64, dim_feedforward=128) if args.quick else {}  # V4's shape on a card
    for bs in (16, 64):
        cfg = TrainConfig(batch_size=bs, epochs=3 if args.quick else 4, patience=10, **shape)
        lib = fps(train(cfg, data, tmp / f"a{bs}", device=str(device)).history)
        plain = plain_fps(data, cfg, device)
        say(f"  batch {bs}: train() {lib:,.0f} frames/s, plain loop {plain:,.0f} frames/s")
        verdict(f"(a) train() / plain loop at batch {bs}", lib / plain, 0.97, at_least=True)


# --------------------------------------------------------------------------- (b) and (c): the worker path
def demo_spec(args, name: str, trials: int | None = None):
    """capacity's [demo] study as `start` runs it on the built-in corpus; --quick: 2 epochs, tiny shapes,
    no anchor (V4's shape would dominate a CPU run)."""
    from search.spec import load_spec, parse

    raw = json.loads(json.dumps(load_spec("capacity").with_demo().raw))
    raw["name"] = name
    if trials:
        raw["n_trials"] = trials
    if args.quick:
        raw.pop("anchor", None)
        raw["train"].update(epochs=2, patience=2, max_tokens=32)
        raw["space"].update(d_model={"type": "categorical", "choices": [32]},
                            dim_feedforward={"type": "categorical", "choices": [64]},
                            encoder_layers={"type": "int", "low": 1, "high": 1},
                            decoder_layers={"type": "int", "low": 1, "high": 1},
                            batch_size={"type": "categorical", "choices": [16, 32]})  # fmt: skip
    return parse(raw, f"benchmark study {name!r} (capacity [demo])")


def demo_corpus(tmp: Path) -> Path:
    """The built-in corpus `start` writes on first use, in a private $H2S_HOME."""
    os.environ["H2S_HOME"] = str(tmp / "home")
    from how2sign.synthetic import ensure_default_corpus

    t0 = time.perf_counter()
    root, _ = ensure_default_corpus()
    say(f"built-in corpus at {root} ({time.perf_counter() - t0:.1f}s)")
    return root


def open_study(spec, url: str, root: Path):
    from how2sign.batches import TrainData
    from search.study import create_or_load

    return create_or_load(url, spec, TrainData.load(root).fingerprint, str(root)).study


def loop_seconds_recorder(calls: list[float | None]):
    """Wrap train() where the worker looks it up: record each call's training-loop seconds."""
    import how2sign.train as train_module
    import search.worker as worker_module

    real = train_module.train

    def timed(*a, **kw):
        calls.append(None)  # a pruned or failed trial raises out of train(): no history to read
        result = real(*a, **kw)
        calls[-1] = sum(h["seconds"] for h in result.history)
        return result

    patched = [m for m in (train_module, worker_module) if getattr(m, "train", None) is real]
    for m in patched:
        m.train = timed
    return lambda: [setattr(m, "train", real) for m in patched]


def part_b(args, device, tmp: Path, root: Path) -> None:
    from search.worker import WorkerSettings, run_worker

    say("\n(b) a warm worker's trial wall time / its training-loop time")
    url = f"sqlite:///{tmp / 'b.db'}"
    spec = demo_spec(args, "warm", trials=3 if args.quick else 5)
    study = open_study(spec, url, root)
    calls: list[float | None] = []
    restore = loop_seconds_recorder(calls)
    try:
        run_worker(WorkerSettings(study=spec.name, storage=url, data_root=root, device=str(device),
                                  checkpoint_dir=tmp / "ck-b", artifact_dir=tmp / "art", quiet=True), log=lambda m: None)  # fmt: skip
    finally:
        restore()
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    shares = []
    for i, t in enumerate(trials):
        wall, loop = t.user_attrs.get("seconds"), t.user_attrs.get("seconds_train")
        source = "seconds_train"
        if loop is None and len(calls) == len(trials):
            loop, source = calls[i], "train() history"
        if wall is None or not loop:
            continue
        say(f"  trial {t.number} {t.state.name}: {t.user_attrs.get('epochs_run')} epochs, wall {wall:.1f}s, "
            f"training loop {loop:.1f}s ({source}){' (warm-up, dropped)' if i == 0 else ''}")
        if i:
            shares.append(1 - loop / wall)
    if shares:
        share = statistics.fmean(shares)
        say(f"  wall / training loop: {1 / (1 - share):.2f}; non-training share {share:.1%}")
        verdict("(b) non-training share of a warm trial", share, 0.20 if device.type == "cuda" else 0.25,
                at_least=False)


def run_workers(spec, url: str, root: Path, device, n: int, cap: float, ck: Path) -> tuple[float, int, str]:
    """n worker processes on `device` until the budget is spent or `cap` seconds; (seconds, trials ended, util)."""
    from optuna.trial import TrialState

    from search.launcher import worker_command, worker_env

    study = open_study(spec, url, root)
    devs = [str(device)] * n
    env = worker_env(devs)
    t0 = time.perf_counter()
    with Utilisation(device) as util:
        procs = [subprocess.Popen(worker_command(spec.name, url, root, d, None, ck, ck / "art"), env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True) for d in devs]  # fmt: skip
        while any(p.poll() is None for p in procs) and time.perf_counter() - t0 < cap:
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        for p in procs:
            if p.poll() is None:
                p.terminate()  # the running trial ends FAIL "interrupted"; not counted below
        for p in procs:
            p.wait()
    ended = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return seconds, len(ended), util.mean


def part_c(args, device, tmp: Path, root: Path) -> None:
    counts = [int(x) for x in (args.workers or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    cap = args.run_seconds or (150.0 if args.quick else 70.0)
    trials = 2 if args.quick else None
    say(f"\n(c) the demo study with {counts} workers on {device} (each run capped at {cap:.0f}s)")
    rates = {}
    for n in counts:
        spec = demo_spec(args, f"demo-{n}", trials=max(trials, n) if trials else None)
        seconds, ended, util = run_workers(spec, f"sqlite:///{tmp / f'c{n}.db'}", root, device, n, cap,
                                           tmp / f"ck-c{n}")  # fmt: skip
        rates[n] = ended / seconds * 3600
        done = "all" if ended >= spec.n_trials else "cap reached,"
        say(f"  {n} worker(s): {done} {ended}/{spec.n_trials} trials ended in {seconds:.0f}s, "
            f"{rates[n]:.0f} trials/hour, GPU utilisation {util}")
    base = rates.get(counts[0]) or float("nan")
    say("  trials/hour relative to " + f"{counts[0]} worker(s): "
        + ", ".join(f"{n}: {r / base:.2f}x" for n, r in rates.items()))


# --------------------------------------------------------------------------- (d) a How2Sign-sized epoch
def part_d(args, device, tmp: Path) -> None:
    from how2sign.batches import TrainData
    from how2sign.presets import preset
    from how2sign.train import train

    clips = args.clips or (400 if args.quick else 31000)
    say(f"\n(d) V4 seconds per epoch on a How2Sign-sized packed split ({clips} clips, lognormal ~140 frames)")
    data = TrainData.load(packed_corpus(tmp / "d", clips, 200))
    cfg = preset("v4").replace({"epochs": 2, "patience": 10}, "benchmarks/gpu.py")
    res = train(cfg, data, tmp / "d-run", device=str(device))
    for i, h in enumerate(res.history, 1):
        say(f"  epoch {i}: {h['seconds']:.1f}s training, {h['frames_per_second']:,.0f} frames/s"
            + (" (warm-up)" if i == 1 else ""))
    if device.type == "cuda" and clips >= 31000:
        verdict("(d) V4 seconds per How2Sign-sized epoch", res.history[-1]["seconds"], 8.0, at_least=False)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory.py, training_overhead.py
    from how2sign.device import resolve_device

    device = resolve_device(args.device)
    header("gpu", args.quick)
    say(f"device: {device} = {device_name(device)}")
    with workdir(args.keep) as tmp:
        t0 = time.perf_counter()
        if "a" in args.parts:
            part_a(args, device, tmp)
        root = demo_corpus(tmp) if {"b", "c"} & set(args.parts) else None
        if "b" in args.parts:
            part_b(args, device, tmp, root)
        if "c" in args.parts:
            part_c(args, device, tmp, root)
        if "d" in args.parts:
            part_d(args, device, tmp)
        say(f"\nwhole run: {time.perf_counter() - t0:.0f}s on {device_name(device)}")


if __name__ == "__main__":
    run_main(main)
