"""`h2s-search slurm` against a real Slurm: the machine's one-node cluster (`.ci/slurm` starts it) and its
PostgreSQL. Arrays are submitted for real; their tasks run `start` with this venv's python on this machine.

The tests that need the cluster skip, saying why, where no Slurm is up; the flag checks run everywhere.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from watching import Poller

from search.errors import UserError
from search.slurm import SlurmRequest, active_tasks, check, time_minutes
from search.slurm_job import ArrayTask, slurm_job_id, slurm_restart_count, start_command

STATES_UP = ("idle", "mixed", "allocated")


def slurm_down() -> str | None:
    """Why the one-node Slurm cannot take an array here, or None when it can."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (apt-get install slurm-wlm munge; .ci/slurm starts a one-node cluster)"
    res = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"Slurm is not running ({res.stderr.strip()}); .ci/slurm starts a one-node cluster"
    if not any(s.strip("*~#") in STATES_UP for s in res.stdout.split()):
        return f"no Slurm node is up (sinfo: {res.stdout.split()}); .ci/slurm starts one"
    return None


@pytest.fixture
def slurm() -> None:
    reason = slurm_down()
    if reason:
        pytest.skip(reason)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return value


def study_of(db, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db.url)


def submitted_id(stdout: str) -> str:
    """The array id from `submitted Slurm array 12 (2 tasks) ...`."""
    first = stdout.splitlines()[0].split()
    return first[first.index("array") + 1] if "array" in first else first[first.index("job") + 1]


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr, res.stderr
    assert all(w in lines[0] for w in words), lines[0]


# --------------------------------------------------------------------------- everywhere
def test_time_is_whole_minutes_rounded_up_and_bad_values_are_refused():
    assert time_minutes("00:30:00") == 30 and time_minutes("1-02:00:30") == 26 * 60 + 1
    assert time_minutes("00:00:01") == 1
    for bad in ("1:2", "90", "00:61:00", "00:00:00", "soon"):
        with pytest.raises(UserError, match="--time"):
            time_minutes(bad)
    for req, flag in ((SlurmRequest("s", jobs=0), "--jobs"), (SlurmRequest("s"), "--jobs"),
                      (SlurmRequest("s", jobs=1, mem="lots"), "--mem"),
                      (SlurmRequest("s", jobs=1, cpus_per_task=0), "--cpus-per-task")):
        with pytest.raises(UserError, match=flag):
            check(req)


def test_the_job_id_is_slurms_own_notation():
    assert slurm_job_id({"SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "15"}) == "12_3"
    assert slurm_job_id({"SLURM_JOB_ID": "15"}) == "15"
    assert slurm_job_id({}) is None
    assert slurm_restart_count({"SLURM_JOB_ID": "15", "SLURM_RESTART_COUNT": "2"}) == 2
    assert slurm_restart_count({"SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}) == 0  # its first run
    assert slurm_restart_count({"SLURM_RESTART_COUNT": "2"}) is None  # not inside a job


def test_a_cpu_task_runs_one_single_threaded_worker_per_cpu_and_no_gpu(tmp_path):
    task = ArrayTask("s", "", "postgresql://u@db/x", "/data", 0, None, "/ck", None)
    cmd, env = start_command(task, tmp_path / "s.toml", {"SLURM_CPUS_PER_TASK": "3", "CUDA_VISIBLE_DEVICES": "0"})
    assert cmd[cmd.index("--workers") + 1] == "3" and cmd[cmd.index("--devices") + 1] == "cpu"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    assert cmd[cmd.index("--data") + 1] == "/data" and "--artifact-dir" not in cmd
    gpu = ArrayTask("s", "", "postgresql://u@db/x", None, 2, 3, None, None)
    cmd, env = start_command(gpu, tmp_path / "s.toml", {"CUDA_VISIBLE_DEVICES": "4,5"})
    assert cmd[cmd.index("--workers-per-device") + 1] == "3" and "--workers" not in cmd
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5"  # the GPUs Slurm gave the task


def test_a_task_pickles_without_its_start_and_checkpoints_as_itself_again():
    import pickle

    from search.slurm import check_warning
    from search.slurm_job import TaskRun

    task = ArrayTask("s", "", "postgresql://u@db/x", None, 0, None, None, None, 60)
    run = TaskRun()
    run._start = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pickle.loads(pickle.dumps(run))._start is None
        t0 = time.monotonic()
        again = run.checkpoint(task)  # stops the running start (SIGTERM) and waits for it
        assert run._start.poll() is not None and time.monotonic() - t0 < 10
    finally:
        run._start.kill()
    assert isinstance(again.function, TaskRun) and again.args == (task,)
    check_warning(SlurmRequest("s", jobs=1, warning_seconds=60), minutes=2)
    with pytest.raises(UserError, match="--warning-seconds 120 is not shorter than the time limit of 2 min"):
        check_warning(SlurmRequest("s", jobs=1), minutes=2)
    with pytest.raises(UserError, match="--warning-seconds must be between 1 and 65535"):
        check(SlurmRequest("s", jobs=1, warning_seconds=0))


def test_bad_flags_are_one_line_and_exit_2(new_machine, fleet_study):
    m = new_machine("login")
    study = fleet_study("badflags")
    base = ("slurm", "--study", study, "--storage", "postgresql://postgres@127.0.0.1:5432/never_reached")
    one_line_error(m.cli(*base, "--jobs", "0", check=False), "--jobs", "0")
    one_line_error(m.cli(*base, "--jobs", "2", "--time", "2h", check=False), "--time", "2h")
    one_line_error(m.cli("slurm", "--study", study, "--storage", f"sqlite:///{m.dir / 's.db'}", "--jobs", "1",
                         check=False), "SQLite", "postgresql")
    no_slurm = {"PATH": str(m.dir)}  # python is started by its full path; sbatch and friends are not found
    one_line_error(m.cli(*base, "--jobs", "2", check=False, env=no_slurm), "no Slurm", "sbatch")


# --------------------------------------------------------------------------- on the real cluster
def test_two_array_tasks_of_cpu_workers_finish_the_budget_exactly(slurm, new_machine, fleet_study, pg_db):
    m = new_machine("login")
    study = fleet_study("slurm2", n_trials=4, epochs=2)
    flags = ("--study", study, "--storage", pg_db.url, "--data", m.data, "--jobs", "2", "--cpus-per-task", "1",
             "--time", "00:10:00", "--logs", m.dir / "logs", "--setup", "echo setup line ran")
    dry = m.cli("slurm", *flags, "--dry-run").stdout
    res = m.cli("slurm", *flags)
    array = submitted_id(res.stdout)
    assert f"squeue -j {array}" in res.stdout and "status --study slurm2" in res.stdout, res.stdout
    wait_until(lambda: not active_tasks([array]), 240, f"array {array} to finish")
    # --dry-run printed exactly the script submitit then submitted
    assert dry == (m.dir / "logs" / f"{array}_submission.sh").read_text().rstrip("\n") + "\n"
    assert (m.dir / "logs").stat().st_mode & 0o777 == 0o700  # the pickled tasks carry the storage URL
    s = study_of(pg_db, "slurm2")
    assert s.user_attrs["slurm_arrays"] == [array]
    trials = s.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    tasks = {t.user_attrs["slurm_job_id"] for t in trials}
    assert tasks and tasks <= {f"{array}_0", f"{array}_1"}, tasks
    assert {t.user_attrs["host"] for t in trials} == {socket.gethostname()}
    for i in (0, 1):  # each task's start saw the whole budget spent and its workers exit 0
        log = (m.dir / "logs" / f"{array}_{i}_0_log.err").read_text()
        assert "setup line ran" in (m.dir / "logs" / f"{array}_{i}_0_log.out").read_text()
        assert "--devices cpu --workers 1" in log and "study 'slurm2' loaded" in log, log
    print(f"array {array}: trials per task {sorted(t.user_attrs['slurm_job_id'] for t in trials)}")


def test_cancel_leaves_no_job_and_no_running_trial(slurm, new_machine, fleet_study, pg_db):
    m = new_machine("login")
    study = fleet_study("slurmcancel", n_trials=4, epochs=500)  # trials that outlast the test
    base = ("--study", study, "--storage", pg_db.url)
    array = submitted_id(m.cli("slurm", *base, "--data", m.data, "--jobs", "2", "--cpus-per-task", "1",
                               "--time", "00:10:00", "--logs", m.dir / "logs").stdout)
    running = wait_until(lambda: [t for t in study_of(pg_db, "slurmcancel").get_trials()
                                  if t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job_id")],
                         180, "a trial running in the array")
    status = json.loads(m.cli("status", "--study", "slurmcancel", "--storage", pg_db.url, "--json").stdout)
    assert {r["slurm_job_id"] for r in status["running"]} >= {t.user_attrs["slurm_job_id"] for t in running}
    assert "slurm job" in m.cli("status", "--study", "slurmcancel", "--storage", pg_db.url).stdout
    t0 = time.monotonic()
    res = m.cli("slurm", *base, "--cancel")
    seconds = time.monotonic() - t0
    assert f"cancelled Slurm array {array}" in res.stdout, res.stdout
    assert active_tasks([array]) == []
    after = study_of(pg_db, "slurmcancel").get_trials()
    assert not [t.number for t in after if t.state == TrialState.RUNNING], \
        [(t.number, t.state.name) for t in after]
    one_line_error(m.cli("slurm", *base, "--cancel", check=False), "no Slurm job", array)
    print(f"cancel took {seconds:.1f}s: {res.stdout.strip()}; trials after: "
          f"{[(t.number, t.state.name, t.user_attrs.get('fail_reason')) for t in after]}")


class EpochWatch(Poller):
    """While an array runs, polls each trial's latest reported epoch (one statement on Optuna's tables, every
    `every` s) and keeps when each new one was first seen (UTC): a retry's first epoch after its resume was
    reported at most one poll (and one statement) before the time kept here."""

    SQL = ("SELECT t.number, max(v.step) FROM trials t JOIN studies s ON s.study_id = t.study_id "
           "JOIN trial_intermediate_values v ON v.trial_id = t.trial_id WHERE s.study_name = %s GROUP BY t.number")

    def __init__(self, db, study: str, every: float = 0.2):
        super().__init__(every)
        self.db, self.study = db, study
        self.seen: dict[int, list[tuple[datetime, float]]] = {}

    @contextlib.contextmanager
    def session(self):
        import psycopg

        with psycopg.connect(self.db.url, autocommit=True) as self.conn:
            yield

    def poll(self):
        import psycopg

        try:
            rows = self.conn.execute(self.SQL, (self.study,)).fetchall()
        except psycopg.Error:  # the tables are not there yet, or a moment's trouble: the next poll
            rows = []
        now = datetime.now(UTC)
        for number, step in rows:
            if not self.seen.get(number) or self.seen[number][-1][1] != step:
                self.seen.setdefault(number, []).append((now, step))

    def first_after(self, number: int, epoch: int) -> datetime | None:
        """When trial `number`'s first epoch after `epoch` was seen reported; None if never."""
        return next((t for t, step in self.seen.get(number, []) if step > epoch), None)


def resumed_elsewhere(gone, retry) -> bool:
    """The retry ran in another task of the array, or in a later run of the same task (re-queued by submitit)."""
    a, b = gone.user_attrs, retry.user_attrs
    return b["slurm_job_id"] != a["slurm_job_id"] or b["slurm_restart_count"] > a["slurm_restart_count"]


def test_a_time_limit_cuts_a_trial_which_resumes_from_its_epoch_and_the_budget_stays_exact(
        slurm, new_machine, fleet_study, pg_db, record_property):
    """Slurm's advance warning (SIGUSR2, --warning-seconds before the limit, up to a minute early) ends the
    running trials as preempted, back in the queue from their last epoch, and submitit re-queues the task;
    the retries resume from that epoch (in the other task, or this one's next run) and cost no budget.
    Measured: seconds from the signal (the cut attempt's `preempted_at`) to the retry's first new epoch."""
    m = new_machine("login")
    n_trials, epochs = 24, 250  # 4-10 s a trial (early stopping ends most): 6 and 11 ended before it in two runs
    study = fleet_study("slurmtime", n_trials=n_trials, epochs=epochs, patience=epochs)
    with EpochWatch(pg_db, "slurmtime") as watch:
        array = submitted_id(m.cli("slurm", "--study", study, "--storage", pg_db.url, "--data", m.data, "--jobs",
                                   "2", "--cpus-per-task", "1", "--time", "00:02:00", "--warning-seconds", "60",
                                   "--logs", m.dir / "logs").stdout)
        wait_until(lambda: not active_tasks([array]), 600, f"array {array} to finish, re-queued tasks included")
    trials = study_of(pg_db, "slurmtime").get_trials()
    rows = [(t.number, t.state.name, t.user_attrs.get("slurm_job_id"), t.user_attrs.get("slurm_restart_count"),
             t.user_attrs.get("fail_reason"), t.user_attrs.get("resumed_from_epoch")) for t in trials]
    preempted = [t for t in trials if t.state == TrialState.FAIL]
    assert preempted and all(t.user_attrs["fail_reason"].startswith("preempted by SIGUSR2")
                             or t.user_attrs["fail_reason"].startswith("preempted by SIGTERM") for t in preempted), rows
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n_trials and len(trials) == n_trials + len(preempted), rows  # the budget, exactly
    by_retry = {t.system_attrs["retry_history"][-1]: t for t in trials if t.system_attrs.get("retry_history")}
    cuts = []
    for gone in preempted:  # each retry resumes where its attempt stopped; a retry cut again has its own
        retry = by_retry[gone.number]
        at = gone.user_attrs["epochs_run"] or 0
        assert retry.params == gone.params and (retry.user_attrs["resumed_from_epoch"] or 0) == at, rows
        assert retry.state == TrialState.COMPLETE or retry in preempted, rows
        assert (retry.user_attrs["epochs_run"] or 0) >= at and resumed_elsewhere(gone, retry), rows
        signalled = datetime.fromisoformat(gone.user_attrs["preempted_at"])
        resumed = watch.first_after(retry.number, at)
        assert resumed is not None or retry in preempted or at >= epochs, (gone.number, retry.number, rows)
        if resumed is not None:
            cuts.append({"trial": gone.number, "retry": retry.number, "epoch": at,
                         "from": [gone.user_attrs["slurm_job_id"], gone.user_attrs["slurm_restart_count"]],
                         "to": [retry.user_attrs["slurm_job_id"], retry.user_attrs["slurm_restart_count"]],
                         "signal_to_resumed_epoch_s": round((resumed - signalled).total_seconds(), 1)})
    gaps = [c["signal_to_resumed_epoch_s"] for c in cuts]
    assert gaps and all(0 < g < 240 for g in gaps), cuts  # generous: Slurm's re-queue and start are in it
    assert max(t.user_attrs["resumed_from_epoch"] for t in by_retry.values()) >= 1, rows
    logs = "".join(p.read_text() for p in (m.dir / "logs").glob(f"{array}_*_log.err"))
    assert "Slurm's warning; stopping start" in logs and "re-queued" in logs and "Traceback" not in logs, logs
    seen = {"array": array, "poll_s": watch.every, "polls": watch.polls, "cuts": cuts,
            "signal_to_resumed_epoch_s": {"min": min(gaps), "max": max(gaps)}}
    out = Path(__file__).resolve().parents[2] / "build" / "slurm_preemption.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(seen, indent=1) + "\n")
    record_property("signal_to_resumed_epoch_s", gaps)
    print(f"\narray {array}: {len(preempted)} trial(s) cut by the time limit's warning; seconds from the signal to "
          f"the retry's first new epoch (polled every {watch.every}s): {gaps} (in {out}); trials: {rows}",
          file=sys.stderr)


def test_dry_run_submits_nothing_and_creates_nothing(slurm, new_machine, fleet_study, pg_db):
    m = new_machine("login")
    study = fleet_study("slurmdry")
    before = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True).stdout
    res = m.cli("slurm", "--study", study, "--storage", pg_db.url, "--jobs", "3", "--cpus-per-task", "1",
                "--logs", m.dir / "logs", "--setup", "module load cuda", "--dry-run")
    script = res.stdout
    assert script.startswith("#!/bin/bash") and "#SBATCH --array=0-2%3" in script
    assert "#SBATCH --job-name=h2s-slurmdry" in script and "\nmodule load cuda\n" in script
    assert f"{sys.executable} -u -m submitit.core._submit {m.dir / 'logs'}" in script
    assert "#SBATCH --time=60" in script  # no --time: the partition's DefaultTime (.ci/slurm: one hour)
    assert "#SBATCH --signal=USR2@120" in script  # the advance warning, --warning-seconds' default
    assert "sbatch --test-only: Job" in res.stderr and "in partition" in res.stderr, res.stderr
    # Slurm refuses a partition before anything is created, dry run or not
    one_line_error(m.cli("slurm", "--study", study, "--storage", pg_db.url, "--jobs", "2", "--partition", "nope",
                         "--time", "00:05:00", "--logs", m.dir / "logs", check=False), "sbatch refuses", "nope")
    after = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True).stdout
    assert after == before and not (m.dir / "logs").exists()
    with pytest.raises(KeyError):
        study_of(pg_db, "slurmdry")


def test_a_trial_outside_slurm_records_no_job(new_machine, fleet_study):
    m = new_machine("laptop")
    m.env = {k: v for k, v in m.env.items() if not k.startswith("SLURM_")}  # pytest may itself run in a job
    url = f"sqlite:///{m.dir / 's.db'}"
    m.cli("start", "--study", fleet_study("local", n_trials=1, epochs=1), "--storage", url, "--data", m.data,
          "--workers", "1")
    (t,) = optuna.load_study(study_name="local", storage=url).get_trials()
    assert t.state == TrialState.COMPLETE and "host" in t.user_attrs and "slurm_job_id" not in t.user_attrs
