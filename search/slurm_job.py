"""Inside a Slurm job: what each task of `h2s-search slurm`'s array runs, and the job id a worker records.

`run_task` (submitit pickles it, with its `ArrayTask`, into the logs folder) runs this project's own
`start --json` for the study on what Slurm gave the task: `--workers-per-device K` on its GPUs (Slurm's
CUDA_VISIBLE_DEVICES), or one single-threaded CPU worker per CPU of the task. `slurm_job_id()` is what a
worker records beside `host`. search/slurm.py submits and cancels the arrays.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
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


def run_task(task: ArrayTask) -> dict:
    """One array task: `start` for the study on this task's devices; returns start's --json summary.

    A start that fails raises, so Slurm and submitit record the task as failed; its lines are in the log.
    """
    from .storage import mask_password

    with tempfile.TemporaryDirectory(prefix="h2s-slurm-") as tmp:
        path = Path(tmp) / "study.toml"
        path.write_text(task.study_file)
        cmd, env = start_command(task, path, os.environ)
        print(f"h2s-search slurm task {slurm_job_id()}: {mask_password(shlex.join(cmd))}", file=sys.stderr,
              flush=True)
        res = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"start exited with code {res.returncode}; its lines are above in this log")
    return json.loads(lines[-1])
