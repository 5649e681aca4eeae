"""Inside a Slurm job: what each task of `h2s-search slurm`'s array runs, and the job id a worker records.

`TaskRun` (submitit pickles it, with its `ArrayTask`, into the logs folder) runs this project's own
`start --json` for the study on what Slurm gave the task: `--workers-per-device K` on its GPUs (Slurm's
CUDA_VISIBLE_DEVICES), or one single-threaded CPU worker per CPU of the task. At Slurm's advance warning
(SIGUSR2, `--warning-seconds` before the time limit, or at a preemption) submitit calls its `checkpoint`:
start is told to stop (SIGTERM: its workers end their trials as preempted, back in the queue at once from
their last checkpoint), and the task is re-queued to run start again. `slurm_job_id()` and
`slurm_restart_count()` are what a worker records beside `host`. search/slurm.py submits and cancels the arrays.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def slurm_job_id(env=None) -> str | None:
    """This process's Slurm job: "<array>_<task>" in an array task (as squeue and scancel write it), else
    "<job>"; None outside Slurm."""
    env = os.environ if env is None else env
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def slurm_restart_count(env=None) -> int | None:
    """How many times Slurm re-queued this process's job so far (SLURM_RESTART_COUNT: 0 on its first run); None
    outside Slurm. With slurm_job_id it tells a task's runs apart."""
    env = os.environ if env is None else env
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_ARRAY_JOB_ID")):
        return None
    try:
        return int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return None


@dataclass(frozen=True)
class ArrayTask:
    """What every task of the array runs; submitit pickles it into the logs folder."""

    study: str                   # the study's name
    study_file: str              # the study file's text, so that a node needs no copy of the file
    url: str                     # the storage URL, password included: the workers need it
    data: str | None
    gpus: int                    # GPUs per task; 0: CPU workers
    workers_per_device: int | None
    checkpoint_dir: str | None
    artifact_dir: str | None
    warning_seconds: int = 120   # the advance warning; start gets all but the last 10 s of it to stop


def start_command(task: ArrayTask, study_path: Path, env) -> tuple[list[str], dict]:
    """`h2s-search start --json` for the study on this task's devices, and its environment.

    GPUs: Slurm's CUDA_VISIBLE_DEVICES are the GPUs start sees; K workers on each. CPU: one
    single-threaded worker per CPU Slurm gave the task, and no GPU (a node's unallocated GPUs are
    someone else's).
    """
    cmd = [sys.executable, "-m", "search.cli", "start", "--study", str(study_path), "--storage", task.url, "--json"]
    for flag, value in (("--data", task.data), ("--checkpoint-dir", task.checkpoint_dir),
                        ("--artifact-dir", task.artifact_dir)):
        if value:
            cmd += [flag, value]
    env = {**env, "PYTHONUNBUFFERED": "1"}
    if task.gpus:
        if task.workers_per_device:
            cmd += ["--workers-per-device", str(task.workers_per_device)]
        return cmd, env
    cpus = int(env.get("SLURM_CPUS_PER_TASK") or 0) or len(os.sched_getaffinity(0))
    cmd += ["--devices", "cpu", "--workers", str(cpus)]
    return cmd, {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _say(text: str) -> None:
    """One line of the task's own in its log (stderr), beside start's."""
    print(f"h2s-search slurm task {slurm_job_id()}: {text}", file=sys.stderr, flush=True)


class TaskRun:
    """One array task: `start` for the study on this task's devices; returns start's --json summary.

    A start that fails raises, so Slurm and submitit record the task as failed; its lines are in the log.
    `checkpoint` makes it checkpointable: submitit re-queues a timed-out task only when it is.
    """

    def __init__(self):
        self._start: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {}  # a running start is this process's own, never pickled

    def __setstate__(self, _state: dict) -> None:
        self._start = None

    def __call__(self, task: ArrayTask) -> dict:
        from .storage import mask_password

        with tempfile.TemporaryDirectory(prefix="h2s-slurm-") as tmp:
            path = Path(tmp) / "study.toml"
            path.write_text(task.study_file)
            cmd, env = start_command(task, path, os.environ)
            restarts = slurm_restart_count() or 0
            _say((f"(run {restarts + 1}, re-queued): " if restarts else "") + mask_password(shlex.join(cmd)))
            with open(Path(tmp) / "start.json", "w+") as out:
                self._start = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, text=True)
                # Polled, not wait(): a blocking wait holds the Popen's lock, and `checkpoint` (submitit's
                # signal handler, run here in this thread) must be able to wait for start itself.
                while (code := self._start.poll()) is None:
                    time.sleep(0.2)
                out.seek(0)
                lines = out.read().strip().splitlines()
        if code != 0 or not lines:
            raise RuntimeError(f"start exited with code {code}; its lines are above in this log")
        return json.loads(lines[-1])

    def checkpoint(self, task: ArrayTask):
        """submitit's hook at the advance warning or a preemption: stop start and its workers (SIGTERM: their
        trials are preempted, back in the queue from their last checkpoint, and cost no budget), waiting
        for them while the warning lasts; then what submitit re-queues: this task again."""
        from submitit.helpers import DelayedSubmission

        start = self._start
        if start is not None and start.poll() is None:
            t0 = time.monotonic()
            _say("Slurm's warning; stopping start (its trials go back in the queue)")
            start.send_signal(signal.SIGTERM)
            try:
                start.wait(timeout=max(5, task.warning_seconds - 10))
                _say(f"start stopped in {time.monotonic() - t0:.1f}s; re-queueing this task")
            except subprocess.TimeoutExpired:
                _say(f"start still running after {time.monotonic() - t0:.0f}s; re-queueing anyway")
        return DelayedSubmission(TaskRun(), task)
