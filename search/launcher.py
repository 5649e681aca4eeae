"""`start`: create or load the study, then run local worker processes and watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from how2sign.jobs import choose_data

from .errors import UserError
from .spec import load_spec
from .storage import parse_url, resolve_url
from .study import create_or_load
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


def plan_devices(workers: int, devices: str | None) -> list[str]:
    if devices:
        devs = [d.strip() for d in devices.split(",") if d.strip()]
        if not devs:
            raise UserError("--devices is empty; give a list like cuda:0,cuda:1")
        return devs
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    return ["cpu" if workers > 1 else "auto"] * workers  # 0: only create the study (workers attach elsewhere)


def start(study: str, *, storage: str | None, data: Path | None, n_trials: int | None, workers: int,
          devices: str | None, checkpoint_dir: Path | None, say=print, progress=None,
          artifact_dir: Path | None = None) -> StartResult:
    spec = load_spec(study)
    choice = choose_data(data)
    say(choice.describe())
    if choice.synthetic and spec.demo:
        spec = spec.with_demo()
        say(f"using the [demo] budget of {spec.source.split(' (')[0]}: {spec.n_trials} trials, "
            f"{spec.base_config().epochs} epochs each")
    devs = plan_devices(workers, devices)
    url = resolve_url(storage)
    if parse_url(url).backend == "sqlite" and len(devs) > 4:
        raise UserError(f"{len(devs)} workers on SQLite will contend for one file lock; use PostgreSQL "
                        "(--storage postgresql://...) for more than 4 workers")
    from how2sign.batches import TrainData

    fingerprint = TrainData.load(choice.root).fingerprint  # packs the cache once, before the workers
    opened = create_or_load(url, spec, fingerprint, str(choice.root), n_trials)
    say(f"study {opened.spec.name!r} {'created' if opened.created else 'loaded'} in {parse_url(url).masked}"
        + (f"; anchor {opened.spec.anchor_name} enqueued" if opened.anchor_enqueued else ""))
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu_workers = sum(not d.startswith(("cuda", "mps")) for d in devs)
    if cpu_workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))  # no oversubscription
    # No --worker-index: the study numbers its workers, so `start` on several machines never repeats a seed.
    procs = [subprocess.Popen(worker_command(opened.spec.name, url, choice.root, d, None, checkpoint_dir, artifact_dir),
                              stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent(),
                              start_new_session=True)  # a terminal Ctrl-C reaches us once; we forward it
             for i, d in enumerate(devs)]
    if procs:
        say(f"{len(procs)} worker(s) on {', '.join(devs)}; Ctrl-C ends their trials cleanly "
            "(recorded as interrupted) and stops them")
    else:
        say(f"no local workers; attach some with: h2s-search worker --study {opened.spec.name} "
            f"--storage {parse_url(url).masked}")

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs):
            if progress:
                progress(summarize(opened.study))
            time.sleep(1.0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    summary = summarize(opened.study)
    if progress:
        progress(summary)
    return StartResult(opened.spec.name, parse_url(url).masked, opened.created, opened.anchor_enqueued,
                       str(choice.root), len(procs), time.perf_counter() - t0, summary,
                       [p.returncode for p in procs])
