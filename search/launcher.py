"""`start`: create or load the study, then run local worker processes and watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from how2sign.device import (
    device_total_bytes,
    estimate_trial_bytes,
    mps_available,
    trials_that_fit,
    visible_gpus,
)
from how2sign.jobs import DataChoice, choose_data

from .errors import UserError
from .pretrained import ensure_encoder
from .spec import StudySpec, load_spec
from .storage import parse_url, resolve_url
from .study import Opened, create_or_load
from .summary import summarize


@dataclass
class StartResult:
    study: str
    url: str
    created: bool
    anchor_enqueued: bool
    data: str
    workers: int
    seconds: float
    summary: dict
    exit_codes: list[int]


def worker_command(study: str, url: str, data: Path, device: str, index: int | None, checkpoint_dir: Path | None,
                   artifact_dir: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "search.cli", "worker", "--study", study, "--storage", url, "--data", str(data),
           "--device", device]
    if index is not None:
        cmd += ["--worker-index", str(index)]
    if checkpoint_dir:
        cmd += ["--checkpoint-dir", str(checkpoint_dir)]
    if artifact_dir:
        cmd += ["--artifact-dir", str(artifact_dir)]
    return cmd


def die_with_parent():
    """A preexec_fn (Linux; None elsewhere): the worker gets SIGTERM when `start` dies, even by SIGKILL.

    Workers run in their own session, so a closed terminal's SIGHUP or a SIGKILL of `start` would leave
    them spending the study's budget unseen. SIGTERM makes a worker end its trial cleanly and exit.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # `start` died before the line above: nobody will send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


# Workers per accelerator when nothing is asked for: one small-model trial leaves a card mostly idle
# (host-side work, small kernels), and more than a few multiply per-process context memory; the memory cap
# below lowers it where trials are large. The measurements behind it: benchmarks/README.md (gpu.py).
DEFAULT_WORKERS_PER_DEVICE = 4
# Workers on a CPU-only machine, one thread each: a small model gains little from a second intra-op thread
# and much from a second process (measured in benchmarks/README.md). At most 4, SQLite's limit.
CPU_DEFAULT_WORKERS = 4


def _device_list(devices: str) -> list[str]:
    devs = [d.strip() for d in devices.split(",") if d.strip()]
    if not devs:
        raise UserError("--devices is empty; give a list like cuda:0,cuda:1")
    return devs


def plan_devices(workers: int | None, devices: str | None, workers_per_device: int | None, gpu_count: int,
                 mps: bool, cpus: int = 1) -> list[str]:
    """The device of each local worker, in start order.

    - `--devices LIST`: each entry gets K workers (K = --workers-per-device, default 1, so a list like
      cuda,cuda,cuda keeps meaning three workers); with --workers N, N workers go round the list instead.
    - GPUs visible: K workers per GPU (default DEFAULT_WORKERS_PER_DEVICE), or --workers N spread round
      robin over cuda:0, cuda:1, ...
    - Apple MPS: one device, K workers (or N).
    - CPU only: one single-threaded worker per core (`cpus`), at most CPU_DEFAULT_WORKERS; one core: one
      'auto' worker. --workers N -> N cpu workers; K counts as N there.
    --workers 0 only creates the study."""
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    if workers_per_device is not None and workers_per_device < 1:
        raise UserError(f"--workers-per-device must be >= 1, got {workers_per_device}")
    if workers == 0:
        return []  # only create the study (workers attach elsewhere)
    if devices:
        pool, k = _device_list(devices), workers_per_device or 1
    elif gpu_count > 0:
        pool, k = [f"cuda:{i}" for i in range(gpu_count)], workers_per_device or DEFAULT_WORKERS_PER_DEVICE
    elif mps:
        pool, k = ["mps"], workers_per_device or DEFAULT_WORKERS_PER_DEVICE
    else:
        n = workers if workers is not None else (workers_per_device or min(max(cpus, 1), CPU_DEFAULT_WORKERS))
        return ["cpu" if n > 1 else "auto"] * n
    n = workers if workers is not None else k * len(pool)
    return [pool[i % len(pool)] for i in range(n)]  # round robin: cuda:0, cuda:1, ..., cuda:0, ...


SQLITE_MAX_WORKERS = 4


def sqlite_limit(devs: list[str], url: str, *, asked: bool, say) -> list[str]:
    """More than 4 workers on one SQLite file contend for its lock: an explicit request for more is an
    error; the default plan (K per GPU on a many-GPU machine) is cut to the first 4, which the round
    robin order spreads over the GPUs."""
    if parse_url(url).backend != "sqlite" or len(devs) <= SQLITE_MAX_WORKERS:
        return devs
    if asked:
        raise UserError(f"{len(devs)} workers on SQLite will contend for one file lock; use PostgreSQL "
                        f"(--storage postgresql://...) for more than {SQLITE_MAX_WORKERS} workers")
    say(f"{SQLITE_MAX_WORKERS} workers, not {len(devs)}: SQLite serialises writers; use PostgreSQL "
        "(--storage postgresql://...) for more")
    return devs[:SQLITE_MAX_WORKERS]


def worst_config(spec):
    """The study's base config with every numeric searched value at its largest: the trial that needs
    the most memory (bigger is never smaller in any term of estimate_trial_bytes)."""
    from how2sign.config import TrainConfig

    raw = dict(spec.train)
    for p in spec.space:
        numeric = [v for v in p.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        if numeric and p.name in TrainConfig.field_types():
            raw[p.name] = int(max(numeric)) if p.type == "int" else max(numeric)
    return TrainConfig.from_dict(raw, f"{spec.source}: largest config")


def cap_by_memory(devs: list[str], trial_bytes: int, total_bytes) -> tuple[list[str], list[str]]:
    """Drop workers from any accelerator that cannot hold that many trials of `trial_bytes` at once.
    `total_bytes(device)` gives a device's memory (None: no cap). Returns (kept devices, one note per
    capped device)."""
    kept, notes, seen = [], [], {}
    for d in devs:
        seen.setdefault(d, 0)
        seen[d] += 1
    allowed = {d: trials_that_fit(n, trial_bytes, total_bytes(d)) for d, n in seen.items()}
    for d, n in seen.items():
        if allowed[d] < n:
            notes.append(f"{d}: {allowed[d]} worker(s), not {n}: the study's largest trial needs about "
                         f"{trial_bytes / 2**30:.1f} GiB of the device's {total_bytes(d) / 2**30:.1f} GiB")
    for d in devs:
        if allowed[d] > 0:
            kept.append(d)
            allowed[d] -= 1
    return kept, notes


def memory_capped(devs: list[str], spec, data) -> tuple[list[str], list[str]]:
    """cap_by_memory for this study on this data; activations count 2 bytes on CUDA (bf16 autocast)."""
    accelerators = [d for d in devs if d.startswith(("cuda", "mps"))]
    if not accelerators:
        return devs, []
    cfg = worst_config(spec)
    width = 2 if all(d.startswith("cuda") for d in accelerators) else 4
    need = estimate_trial_bytes(cfg, data.input_dim, len(data.vocab), activation_bytes=width)
    return cap_by_memory(devs, need, device_total_bytes)


def worker_env(devs: list[str]) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu_workers = sum(not d.startswith(("cuda", "mps")) for d in devs)
    if cpu_workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))  # no oversubscription
    return env


@dataclass
class Plan:
    """What `start` will do, decided before any data is packed or any study is touched."""

    spec: StudySpec
    choice: DataChoice
    url: str
    devices: list[str]  # one entry per local worker


def plan(study: str, *, storage: str | None, data: Path | None, workers: int | None, devices: str | None,
         workers_per_device: int | None, say=print) -> Plan:
    """The study file, the data, the storage and each local worker's device; bad input fails here."""
    spec = load_spec(study)
    devs = plan_devices(workers, devices, workers_per_device, visible_gpus(), mps_available(), os.cpu_count() or 1)
    choice = choose_data(data)
    say(choice.describe())
    if choice.synthetic and spec.demo:
        spec = spec.with_demo()
        say(f"using the [demo] budget of {spec.source.split(' (')[0]}: {spec.n_trials} trials, "
            f"{spec.base_config().epochs} epochs each")
    spec = ensure_encoder(spec, choice, say=say)  # pretrained-encoder arms: checked or built before the study
    url = resolve_url(storage)
    asked = workers is not None or bool(devices) or workers_per_device is not None
    return Plan(spec, choice, url, sqlite_limit(devs, url, asked=asked, say=say))


def prepare(p: Plan, n_trials: int | None, say=print) -> tuple[Opened, list[str]]:
    """Pack the data once (before the workers), cap the workers by memory, create or load the study."""
    from how2sign.batches import TrainData

    train_data = TrainData.load(p.choice.root)
    devs, notes = memory_capped(p.devices, p.spec, train_data)
    for note in notes:
        say(note)
    opened = create_or_load(p.url, p.spec, train_data.fingerprint, str(p.choice.root), n_trials)
    say(f"study {opened.spec.name!r} {'created' if opened.created else 'loaded'} in {parse_url(p.url).masked}"
        + (f"; anchor {opened.spec.anchor_name} enqueued" if opened.anchor_enqueued else ""))
    return opened, devs


def spawn_workers(opened: Opened, p: Plan, devs: list[str], checkpoint_dir: Path | None,
                  artifact_dir: Path | None, say=print) -> list[subprocess.Popen]:
    """One `worker` process per device entry. No --worker-index: the study numbers its workers, so `start`
    on several machines never repeats a sampler seed."""
    env = worker_env(devs)
    procs = [subprocess.Popen(worker_command(opened.spec.name, p.url, p.choice.root, d, None, checkpoint_dir,
                                             artifact_dir),
                              stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent(),
                              start_new_session=True)  # a terminal Ctrl-C reaches us once; we forward it
             for d in devs]
    if procs:
        say(f"{len(procs)} worker(s) on {', '.join(devs)}; Ctrl-C ends their trials cleanly (recorded as "
            "interrupted) and stops them; SIGTERM puts their trials back in the queue to resume elsewhere")
    else:
        say(f"no local workers; attach some with: h2s-search worker --study {opened.spec.name} "
            f"--storage {parse_url(p.url).masked}")
    return procs


def forwarded_signals() -> list[signal.Signals]:
    """What `start` passes on to its workers: Ctrl-C, and the signals that take a machine away (see
    worker.StopFlag). SIGUSR2 only while nobody else handles it here: under submitit it is the job's advance
    warning, which submitit's own handler turns into a checkpoint and requeue of the Slurm job."""
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1]
    return sigs + ([signal.SIGUSR2] if signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL else [])


def supervise(opened: Opened, procs: list[subprocess.Popen], progress=None) -> list[int]:
    """Wait for the workers, forwarding our signals to them (`forwarded_signals`); returns their exit codes."""

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in forwarded_signals()}
    try:
        while any(proc.poll() is None for proc in procs):
            if progress:
                progress(summarize(opened.study))
            time.sleep(1.0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return [proc.returncode for proc in procs]


def start(study: str, *, storage: str | None, data: Path | None, n_trials: int | None, workers: int | None,
          devices: str | None, checkpoint_dir: Path | None, say=print, progress=None,
          artifact_dir: Path | None = None, workers_per_device: int | None = None) -> StartResult:
    """Plan, prepare the study, run the local workers until they are done, and summarise."""
    p = plan(study, storage=storage, data=data, workers=workers, devices=devices,
             workers_per_device=workers_per_device, say=say)
    opened, devs = prepare(p, n_trials, say)
    t0 = time.perf_counter()
    codes = supervise(opened, spawn_workers(opened, p, devs, checkpoint_dir, artifact_dir, say), progress)
    summary = summarize(opened.study)
    if progress:
        progress(summary)
    return StartResult(opened.spec.name, parse_url(p.url).masked, opened.created, opened.anchor_enqueued,
                       str(p.choice.root), len(devs), time.perf_counter() - t0, summary, codes)
