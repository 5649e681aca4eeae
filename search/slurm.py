"""`slurm`: a study's workers as one Slurm job array, submitted through submitit.

`submit` creates or loads the study once, exactly as `start --workers 0` does, then submits one array of
`--jobs` tasks with submitit (`AutoExecutor`, `update_parameters`, `map_array`). Every task runs `TaskRun`
(pickled by submitit into the logs folder), which runs this project's own `start` for the study on what
Slurm gave the task: `--workers-per-device K` on its GPUs (Slurm's CUDA_VISIBLE_DEVICES), or one
single-threaded CPU worker per allocated CPU. The array's id is recorded on the study
(`StudyRecord.slurm_arrays`), so `cancel` ends exactly that study's arrays. What a task runs, and the
`slurm_job_id` workers record beside `host`, are in search/slurm_job.py. README, "Run on a Slurm cluster".
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .records import StudyRecord
from .slurm_job import ArrayTask, TaskRun

DEFAULT_LOGS = "h2s-slurm-logs"
# --time: HH:MM:SS or D-HH:MM:SS; also the form scontrol prints a partition's DefaultTime/MaxTime in.
TIME_FORMAT = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
MEM_FORMAT = re.compile(r"^[1-9]\d*[KMGT]?$", re.IGNORECASE)  # sbatch --mem: a size, default unit MB
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "scancel", "scontrol")
# A cancelled task is gone once its processes are: SIGTERM, then SIGKILL after slurm.conf's KillWait
# (30 s by default), then the node's clean-up.
CANCEL_WAIT_S = 300.0
# Slurm's advance warning: SIGUSR2 this many seconds before a task's time limit (sbatch --signal=USR2@S,
# sent up to a minute early). The workers end their trials at once, back in the queue from their last
# checkpoint, and submitit re-queues the task. Slurm takes sig_time up to 65535.
DEFAULT_WARNING_S = 120
MAX_WARNING_S = 65535


@dataclass(frozen=True)
class SlurmRequest:
    """`h2s-search slurm`'s flags. gpus_per_job 0: CPU tasks; None: the default stated at each field."""

    study: str
    storage: str | None = None
    jobs: int | None = None                 # array tasks
    data: Path | None = None                # the same path on every node; None: the built-in synthetic corpus
    n_trials: int | None = None             # the study's budget, as start --n-trials
    gpus_per_job: int = 0
    workers_per_device: int | None = None   # per GPU; None: start's default (4, capped by memory)
    partition: str | None = None            # None: the cluster's default partition
    time: str | None = None                 # HH:MM:SS; None: the partition's DefaultTime, else its MaxTime
    account: str | None = None
    mem: str | None = None                  # sbatch --mem, e.g. 16G
    cpus_per_task: int | None = None        # None: one per GPU worker, or 1 for a CPU task
    logs: Path | None = None                # submitit's folder (shared); None: ./h2s-slurm-logs
    setup: tuple[str, ...] = ()             # shell lines run in the sbatch script before the task
    checkpoint_dir: Path | None = None      # None: start's default, resolved in the job's folder (this one)
    artifact_dir: Path | None = None
    dry_run: bool = False
    warning_seconds: int = DEFAULT_WARNING_S  # SIGUSR2 this long before the time limit


def check(req: SlurmRequest) -> None:
    """Every flag value that cannot work, as one UserError naming the flag."""
    if req.jobs is None:
        raise UserError("--jobs N is required: the number of array tasks to submit")
    for flag, value, least in (("--jobs", req.jobs, 1), ("--gpus-per-job", req.gpus_per_job, 0),
                               ("--workers-per-device", req.workers_per_device, 1),
                               ("--cpus-per-task", req.cpus_per_task, 1), ("--n-trials", req.n_trials, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    if req.time is not None:
        time_minutes(req.time)
    if not 1 <= req.warning_seconds <= MAX_WARNING_S:
        raise UserError(f"--warning-seconds must be between 1 and {MAX_WARNING_S}, got {req.warning_seconds}")
    if req.mem is not None and not MEM_FORMAT.match(req.mem):
        raise UserError(f"--mem must be a size like 16G or 4000M, got {req.mem!r}")
    if any("\n" in line for line in req.setup):
        raise UserError("--setup takes one shell line per flag; repeat --setup for more lines")


def _minutes(text: str) -> int | None:
    m = TIME_FORMAT.match(text.strip())
    if not m:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return math.ceil((days * 24 + hours) * 60 + minutes + seconds / 60)


def time_minutes(text: str) -> int:
    """--time HH:MM:SS (or D-HH:MM:SS) in whole minutes for submitit's timeout_min, rounded up as Slurm
    rounds a limit with seconds."""
    minutes = _minutes(text)
    if minutes is None:
        raise UserError(f"--time must be HH:MM:SS (or D-HH:MM:SS), got {text!r}")
    if minutes < 1:
        raise UserError(f"--time must be longer than zero, got {text!r}")
    return minutes


def server_url(storage: str | None) -> str:
    """The storage URL every node connects to: a database server; a SQLite file is one machine's."""
    from .storage import parse_url, resolve_url

    url = resolve_url(storage)
    if parse_url(url).backend == "sqlite":
        raise UserError(f"--storage {parse_url(url).masked} is a SQLite file; Slurm nodes need a database "
                        "server they all reach: --storage postgresql://... (or mysql://...)")
    return url


def require_slurm() -> None:
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise UserError(f"no Slurm on this machine: {', '.join(missing)} not found on PATH; run h2s-search "
                        "slurm on the cluster's login node")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        require_slurm()
        raise


def _said(res: subprocess.CompletedProcess) -> str:
    """Slurm's reason for a refusal: its first error line, else its last line."""
    lines = [line.strip() for line in (res.stderr + res.stdout).splitlines() if line.strip()]
    line = next((li for li in lines if "error" in li.lower()), lines[-1] if lines else f"exit code {res.returncode}")
    return line.removeprefix("sbatch: ").removeprefix("error: ")


def slurm_command(argv: list[str]) -> str:
    """Run a Slurm client command; its stdout. A refusal is one UserError line with Slurm's own words."""
    res = _run(argv)
    if res.returncode != 0:
        raise UserError(f"{argv[0]}: {_said(res)}")
    return res.stdout


def sbatch_test(script: str) -> str:
    """`sbatch --test-only` on the script: when and where Slurm would start it, submitting nothing. A
    refusal (partition, CPUs, GPUs, time limit) is one UserError line, before the study is touched."""
    with tempfile.NamedTemporaryFile("w", prefix="h2s-sbatch-", suffix=".sh") as f:
        f.write(script)
        f.flush()
        res = _run(["sbatch", "--test-only", f.name])
    if res.returncode != 0:
        raise UserError(f"sbatch refuses this array: {_said(res)}")
    lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
    return lines[-1].removeprefix("sbatch: ") if lines else "accepted"


def partition_minutes(partition: str | None) -> int:
    """The limit a job without --time gets: the partition's DefaultTime, else its MaxTime. submitit always
    writes a --time (5 minutes unless told), so the partition's own default is read here."""
    out = slurm_command(["scontrol", "show", "partition", "--oneliner", *([partition] if partition else [])])
    rows = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines() if line.strip()]
    row = next((r for r in rows if partition or r.get("Default") == "YES"), None)
    if row is None:
        raise UserError("this cluster has no default partition; give --partition P")
    for key in ("DefaultTime", "MaxTime"):
        minutes = _minutes(row.get(key, "NONE"))
        if minutes:
            return minutes
    raise UserError(f"partition {row.get('PartitionName', partition)} sets no time limit; give --time HH:MM:SS")


def task_cpus(req: SlurmRequest) -> int:
    """CPUs per task: as asked; else one per GPU worker (its host-side work), or 1 for a CPU task."""
    if req.cpus_per_task:
        return req.cpus_per_task
    if req.gpus_per_job:
        from .launcher import DEFAULT_WORKERS_PER_DEVICE

        return req.gpus_per_job * (req.workers_per_device or DEFAULT_WORKERS_PER_DEVICE)
    return 1


def check_warning(req: SlurmRequest, minutes: int) -> None:
    """The advance warning must come inside the time limit, or every task would be told to stop at once."""
    if req.warning_seconds >= minutes * 60:
        raise UserError(f"--warning-seconds {req.warning_seconds} is not shorter than the time limit of "
                        f"{minutes} min; give a longer --time or a shorter --warning-seconds")


def parameters(req: SlurmRequest, study_name: str, minutes: int) -> dict:
    """submitit's update_parameters for one task of the array (None: not set; AutoExecutor drops it).

    slurm_signal_delay_s is the advance warning (#SBATCH --signal=USR2@S): submitit's handler in the task
    calls TaskRun.checkpoint, then re-queues the task (a time-out at most submitit's max_num_timeout, 3,
    times; a preemption always)."""
    return {"name": f"h2s-{study_name}", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": task_cpus(req),
            "gpus_per_node": req.gpus_per_job or None, "timeout_min": minutes,
            "slurm_signal_delay_s": req.warning_seconds,
            "slurm_partition": req.partition, "slurm_account": req.account, "slurm_mem": req.mem,
            "slurm_setup": list(req.setup) or None}


def make_executor(folder: Path, params: dict):
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:  # submitit found no srun
        raise UserError(f"no Slurm on this machine: {exc}") from None
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor, tasks: int) -> str:
    """The sbatch script `map_array` submits for `tasks` tasks, without submitting it.

    submitit has no public dry run. This calls the function its SlurmExecutor writes every sbatch file
    with (and checks update_parameters against), `submitit.slurm.slurm._make_sbatch_string`, with the
    executor's public `parameters` and `folder`, plus what map_array adds: map_count (one task is a plain
    job, no array) and the `_submitit_command_str` command line. tests/search/test_slurm.py compares the
    result with the file submitit submitted.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    command = executor._executor._submitit_command_str
    return _make_sbatch_string(command=command, folder=executor.folder, map_count=tasks if tasks > 1 else None,
                               **executor.parameters)


# --------------------------------------------------------------------------- submit
@dataclass(frozen=True)
class Submission:
    study: str
    url: str            # masked
    job_id: str         # the array's job id ("" for a dry run)
    tasks: int
    logs: Path
    script: str         # the sbatch script: submitted, or (dry run) the one that would be
    dry_run: bool
    minutes: int


def prepare_study(req: SlurmRequest, url: str, say) -> str:
    """Create or load the study once, as `start --workers 0` does; its name. The one call of start here."""
    from .launcher import start

    return start(req.study, storage=url, data=req.data, n_trials=req.n_trials, workers=0, devices=None,
                 checkpoint_dir=req.checkpoint_dir, say=say, artifact_dir=req.artifact_dir).study


def _absolute(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None


def submit(req: SlurmRequest, say=print) -> Submission:
    """Create or load the study, then submit one array of req.jobs tasks (or, dry run, only show it).

    Slurm checks the script (`sbatch --test-only`) before the study is created or loaded."""
    from .spec import find_study_file, load_spec
    from .storage import parse_url

    check(req)
    url = server_url(req.storage)
    require_slurm()
    spec = load_spec(req.study)
    minutes = time_minutes(req.time) if req.time else partition_minutes(req.partition)
    check_warning(req, minutes)
    logs = Path(req.logs or DEFAULT_LOGS).resolve()
    executor = make_executor(logs, parameters(req, spec.name, minutes))
    script = sbatch_script(executor, req.jobs)
    say(f"sbatch --test-only: {sbatch_test(script)}")
    if req.dry_run:
        return Submission(spec.name, parse_url(url).masked, "", req.jobs, logs, script, True, minutes)
    name = prepare_study(req, url, say)
    task = ArrayTask(name, find_study_file(req.study).read_text(), url, _absolute(req.data), req.gpus_per_job,
                     req.workers_per_device, _absolute(req.checkpoint_dir), _absolute(req.artifact_dir),
                     req.warning_seconds)
    private_folder(logs, say)
    jobs = submit_array(executor, task, req.jobs)
    job_id = jobs[0].job_id.split("_")[0]
    record_array(url, name, job_id)
    script = (logs / f"{job_id}_submission.sh").read_text()
    return Submission(name, parse_url(url).masked, job_id, req.jobs, logs, script, False, minutes)


def private_folder(logs: Path, say) -> None:
    """The logs folder holds the pickled task, storage URL and password included: a new one is made
    readable by its owner only (the nodes run the tasks as that user); an open one is pointed out."""
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    if logs.stat().st_mode & 0o077:
        say(f"note: {logs} is readable by others, and the tasks pickled there carry the storage URL with its "
            f"password; chmod 700 {logs}")


def submit_array(executor, task: ArrayTask, n: int) -> list:
    """map_array over n copies of the task; sbatch's refusal (partition, account, limits) as one line."""
    from submitit.core.utils import FailedJobError

    try:
        return executor.map_array(TaskRun(), [task] * n)
    except (FailedJobError, subprocess.CalledProcessError) as exc:
        said = [line for line in str(exc).splitlines() if "error" in line.lower()] or str(exc).splitlines()
        raise UserError(f"sbatch refused the array: {said[-1].strip()}") from None


def record_array(url: str, name: str, job_id: str) -> None:
    """Add the array to the study's record, which `cancel` reads."""
    from .study import load_stored

    study = load_stored(url, name, heartbeat=False).study
    arrays = StudyRecord.read(study).slurm_arrays or []
    StudyRecord(slurm_arrays=[*arrays, job_id]).write(study)


def submission_lines(s: Submission, storage_given: bool) -> list[str]:
    """What `h2s-search slurm` prints after submitting: the job id and how to watch."""
    storage_flag = f" --storage {s.url}" if storage_given else ""
    if s.dry_run:
        return [s.script.rstrip("\n")]
    array = f"array {s.job_id} ({s.tasks} tasks)" if s.tasks > 1 else f"job {s.job_id}"
    log = f"{s.job_id}_<task>_0_log.err" if s.tasks > 1 else f"{s.job_id}_0_log.err"
    return [f"submitted Slurm {array} for study {s.study!r} in {s.url}; time limit {s.minutes} min per task",
            f"  queue:  squeue -j {s.job_id}",
            f"  trials: h2s-search status --study {s.study}{storage_flag} --watch",
            f"  logs:   {s.logs}/{log} (start and its workers; submitit's own lines in _log.out)",
            f"  cancel: h2s-search slurm --study {s.study}{storage_flag} --cancel"]


# --------------------------------------------------------------------------- cancel
@dataclass(frozen=True)
class SlurmTask:
    array: str    # the array's job id (a plain job's own id)
    id: str       # "<array>_<task>", or the job id
    state: str    # PENDING, RUNNING, COMPLETING, ...
    node: str


def active_tasks(arrays: list[str]) -> list[SlurmTask]:
    """The tasks of these arrays that Slurm has not finished (squeue's default states), one per task."""
    if not arrays:
        return []
    try:
        out = slurm_command(["squeue", "--noheader", "--array", "--format=%F|%i|%T|%N", "--jobs", ",".join(arrays)])
    except UserError as exc:
        if "Invalid job id" in str(exc):  # every one of them has ended and left slurmctld's memory
            return []
        raise
    return [SlurmTask(*line.split("|", 3)) for line in out.splitlines() if line.count("|") == 3]


@dataclass(frozen=True)
class Cancelled:
    study: str
    tasks: list[SlurmTask]           # as they were when cancelled
    seconds: float                   # until squeue showed none of them
    remaining: list[SlurmTask] = field(default_factory=list)  # still there after CANCEL_WAIT_S
    running_trials: list[int] = field(default_factory=list)   # trials of theirs still RUNNING after


def stored_name(study: str) -> str:
    """--study as given to submit: a study file's path names the study inside it; a name is itself."""
    from .spec import load_spec

    return load_spec(study).name if study.endswith(".toml") or "/" in study else study


def cancel(study: str, storage: str | None, wait_s: float = CANCEL_WAIT_S) -> Cancelled:
    """scancel the study's arrays that are pending or running, and wait until Slurm shows none of them."""
    from optuna.trial import TrialState

    from .records import TrialRecord
    from .study import load_stored

    require_slurm()
    opened = load_stored(storage, stored_name(study), heartbeat=False)
    arrays = [str(a) for a in StudyRecord.read(opened.study).slurm_arrays or []]
    tasks = active_tasks(arrays)
    if not tasks:
        raise UserError(f"study {opened.spec.name!r} has no Slurm job pending or running to cancel"
                        + (f" (submitted: {', '.join(arrays)}; all have ended)" if arrays else
                           " (h2s-search slurm has not submitted any for it)"))
    t0 = time.monotonic()
    slurm_command(["scancel", *sorted({t.array for t in tasks})])
    while (left := active_tasks(arrays)) and time.monotonic() - t0 < wait_s:
        time.sleep(0.5)
    ids = {t.id for t in tasks}
    running = [t.number for t in opened.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if TrialRecord.read(t).slurm_job_id in ids]
    return Cancelled(opened.spec.name, tasks, time.monotonic() - t0, left, running)


def cancel_lines(c: Cancelled) -> list[str]:
    by_array: dict[str, list[SlurmTask]] = {}
    for t in c.tasks:
        by_array.setdefault(t.array, []).append(t)
    lines = []
    for array, tasks in by_array.items():
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(Counter(t.state for t in tasks).items()))
        lines.append(f"cancelled Slurm array {array} of study {c.study!r}: {len(tasks)} task(s) ({states})")
    lines.append(f"Slurm shows none of them after {c.seconds:.1f}s" if not c.remaining else
                 f"still in Slurm after {c.seconds:.0f}s: {', '.join(f'{t.id} {t.state}' for t in c.remaining)}")
    if c.running_trials:
        lines.append(f"trial(s) {', '.join(map(str, c.running_trials))} still show RUNNING; the heartbeat fails "
                     "and re-queues them within the grace period")
    return lines

