"""A fleet on the machine's real PostgreSQL and MariaDB: real worker processes, each a "machine" with its own
working folder and data copy, talking TCP to 127.0.0.1; each test in its own fresh database.

Faults: SIGKILL mid-trial (heartbeat retry resumes from the checkpoint), a PostgreSQL restart, 8 racing
starts, SIGTERM (preempted: back in the queue), SIGINT (interrupted). Each test prints what it saw (run with -s to read it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from watching import Poller

pytestmark = pytest.mark.fleet

POOL_PER_PROCESS = 2 + 2 + 1  # engine pool_size + max_overflow, plus the study lock's own connection


# --------------------------------------------------------------------------- helpers
def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll until predicate() is truthy; returns its value, or fails naming `what`."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def snapshot(db, study: str = "fleet"):
    """(trials, study user attrs, names of all studies), read through a fresh engine that is then disposed."""
    import optuna

    from search.storage import open_storage

    storage = open_storage(db.url, heartbeat=False)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if study not in names:
            return [], {}, names
        s = optuna.load_study(study_name=study, storage=storage)
        return s.get_trials(deepcopy=True), s.user_attrs, names
    finally:
        storage.engine.dispose()


def trial(db, number: int, study: str = "fleet"):
    return next((t for t in snapshot(db, study)[0] if t.number == number), None)


def epochs_done(t) -> int | None:
    """A trial's finished epochs: a running single-objective trial reports them as intermediate values only."""
    from search.summary import epochs_done as done

    return done(t)


def states(trials) -> dict[int, str]:
    return {t.number: t.state.name for t in trials}


def create(m, db, study: Path, *extra) -> str:
    res = m.cli("start", "--study", study, "--storage", db.url, "--data", m.data, "--workers", 0, *extra)
    assert "created" in res.stdout and "anchor v4 enqueued" in res.stdout, res.stdout + res.stderr
    return res.stdout


def ran(proc) -> int:
    """Trials a worker says it ran ("worker 0: ran N trial(s)")."""
    for line in proc.output().splitlines():
        if ": ran " in line:
            return int(line.split(": ran ")[1].split()[0])
    raise AssertionError(f"no 'ran N trial(s)' line in:\n{proc.output()}")


def counted(trials) -> list:
    """Trials that count against the budget: a stale trial that was retried is replaced by its retry."""
    from search.study import retried_numbers

    gone = retried_numbers(trials)
    return [t for t in trials if t.number not in gone]


def assert_exact(trials, n: int) -> None:
    """N counted trials, all COMPLETE, none RUNNING or WAITING, exactly one anchor, numbers without gaps."""
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), f"gaps or duplicates in {numbers}"
    live = counted(trials)
    assert len(live) == n, states(trials)
    assert all(t.state == TrialState.COMPLETE for t in live), states(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states(trials)
    anchors = [t for t in live if t.user_attrs.get("anchor") is True]
    assert len(anchors) == 1, states(trials)
    assert anchors[0].params == {"dropout": 0.3, "lr": 1e-3}
    params = [tuple(sorted(t.params.items())) for t in live]
    assert len(set(params)) == n, "two trials ran the same parameters"


class ConnectionWatch(Poller):
    """Samples the database's connection count in a thread while a fleet runs; keeps the peak."""

    def __init__(self, db, every: float = 0.2):
        super().__init__(every)
        self.db, self.peak, self.samples = db, 0, 0

    def poll(self):
        try:
            self.peak = max(self.peak, self.db.connections())
            self.samples += 1
        except Exception:
            pass  # the server may be restarting


def restart_postgres(db) -> float:
    """Restart the machine's PostgreSQL cluster; returns how long it took."""
    if not shutil.which("pg_ctlcluster") or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster and root")
    version = sorted(os.listdir("/etc/postgresql"))[0]
    t0 = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=120)
    db.wait_ready()
    return time.monotonic() - t0


# --------------------------------------------------------------------------- 1. exactly N, 3 machines
def test_three_workers_on_three_machines_finish_exactly_n_trials(pg_db, new_machine, fleet_study):
    n = 7
    study = fleet_study(n_trials=n, epochs=3)
    create(new_machine("creator"), pg_db, study)
    machines = [new_machine(f"m{i}") for i in range(3)]
    with ConnectionWatch(pg_db) as watch:
        # No --worker-index, as on separate machines: the study numbers its workers, so no two share a seed.
        workers = [m.worker(pg_db.url) for m in machines]
        rcs = [w.wait(240) for w in workers]
    assert rcs == [0, 0, 0], [w.output() for w in workers]
    trials, attrs, names = snapshot(pg_db)
    assert names == ["fleet"] and attrs["n_trials"] == n
    assert_exact(trials, n)
    assert len(trials) == n
    assert trials[0].user_attrs["anchor"] is True and trials[0].user_attrs["anchor_name"] == "v4"
    assert sum(ran(w) for w in workers) == n
    assert sorted(int(w.output().split(": ran ")[0].rsplit("worker ", 1)[1]) for w in workers) == [0, 1, 2]
    assert {t.user_attrs["device"] for t in trials} == {"cpu"}
    # Each trial wrote its own run folder in the shared checkpoint folder.
    folders = {t.user_attrs["checkpoint"] for t in trials}
    assert len(folders) == n and all(Path(f, "best_checkpoint.pt").exists() for f in folders)
    # Bounded pools: never more than each process's pool plus its lock connection.
    assert watch.samples > 5 and 0 < watch.peak <= 3 * POOL_PER_PROCESS
    print(f"\n[exact-N] {n} trials by 3 workers (ran {[ran(w) for w in workers]}); states {states(trials)}; "
          f"peak connections {watch.peak} over {watch.samples} samples")


# --------------------------------------------------------------------------- 2. SIGKILL, heartbeat, resume
def freeze_outside_transactions(proc, db) -> None:
    """SIGSTOP a worker at a moment when none of its database connections is inside a transaction,
    so that its frozen locks cannot block anyone (it is about to be killed anyway)."""
    for _ in range(200):
        proc.signal(signal.SIGSTOP)
        busy = db.admin("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND state <> 'idle'", (db.name,))[0][0]
        if not busy:
            return
        proc.signal(signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail("could not freeze the worker outside a transaction")


class SurrogateHeartbeat(Poller):
    """Keeps a frozen worker's trial looking alive, as its own heartbeat thread would, until stopped."""

    def __init__(self, db, trial_id: int):
        from search.storage import open_storage

        super().__init__(0.5)
        self.storage, self.trial_id = open_storage(db.url), trial_id

    def poll(self):
        self.storage.record_heartbeat(self.trial_id)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.storage.engine.dispose()


def test_sigkill_mid_trial_is_retried_and_resumes_from_the_checkpoint(pg_db, new_machine, fleet_study):
    from how2sign.checkpoint import LAST, load
    from search.study import anchor_trials, budget_used, load_stored

    # Enough epochs that the kill lands mid-trial however late the poll below sees epoch 2: a tiny epoch can
    # take under 0.2 s and one poll (a fresh engine, a study load) a second or more under CI's load; CI once
    # saw a trial of 10 epochs reach its last one before the freeze.
    epochs = 40
    study = fleet_study(n_trials=1, epochs=epochs)
    create(new_machine("creator"), pg_db, study)
    a, b = new_machine("a"), new_machine("b")
    wa = a.worker(pg_db.url)
    # Trial 0 (the anchor, the whole budget) runs on machine a and writes its first epoch checkpoint.
    wait_until(lambda: (t := trial(pg_db, 0)) and (epochs_done(t) or 0) >= 2, 90,
               "trial 0 to finish two epochs on machine a")
    # Freeze a mid-trial (so the kill lands mid-trial whatever the machine's load) and keep its heartbeat
    # fresh meanwhile, so that machine b provably meets "budget spent, one trial RUNNING" and waits.
    freeze_outside_transactions(wa, pg_db)
    died = trial(pg_db, 0)
    folder = Path(died.user_attrs["checkpoint"])
    at_death = load(folder / LAST)["epoch"]  # the newest epoch checkpoint trial 0 left
    with SurrogateHeartbeat(pg_db, died._trial_id):
        wb = b.worker(pg_db.url)
        wait_until(lambda: "waiting for trial(s) 0" in wb.output() or not wb.alive(), 120,
                   "machine b to wait for the running trial")
        assert wb.alive(), wb.output()
        before = states(snapshot(pg_db)[0])
        wa.signal(signal.SIGKILL)  # machine a dies mid-trial; its heartbeat stops with the surrogate
        assert wa.wait(10) == -signal.SIGKILL
    assert before == {0: "RUNNING"} and epochs_done(died) < epochs

    # The heartbeat lapses; b fails trial 0, the retry callback re-queues it as trial 1, and b runs it
    # from the dead trial's last checkpoint.
    assert wb.wait(180) == 0, wb.output()
    trials, _, _ = snapshot(pg_db)
    after = states(trials)
    assert after == {0: "FAIL", 1: "COMPLETE"}, after
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.system_attrs["retry_history"] == [0]
    assert retry.params == died.params and retry.user_attrs["anchor"] is True
    assert retry.user_attrs["resumed_from_epoch"] == at_death >= 1
    assert retry.user_attrs["epochs_run"] == epochs
    assert sorted(retry.intermediate_values) == list(range(at_death + 1, epochs + 1))
    new_folder = Path(retry.user_attrs["checkpoint"])
    assert new_folder != folder and (new_folder / "best_checkpoint.pt").exists()
    assert [e["epoch"] for e in load(new_folder / LAST)["history"]] == list(range(1, epochs + 1))
    assert_exact(trials, 1)
    opened = load_stored(pg_db.url, "fleet", heartbeat=False)
    assert [t.number for t in anchor_trials(opened.study)] == [1]
    assert budget_used(opened.study) == (1, 0)
    opened.study._storage._backend.engine.dispose()
    print(f"\n[SIGKILL] machine a killed in trial 0 at epoch {epochs_done(died)}/{epochs} (last "
          f"checkpoint: epoch {at_death}); states before {before}, after {after}; machine b waited, then ran "
          f"retry trial 1 resumed from epoch {retry.user_attrs['resumed_from_epoch']} to epoch "
          f"{retry.user_attrs['epochs_run']}")


def test_a_paused_worker_whose_trial_was_retried_steps_aside(pg_db, new_machine, fleet_study):
    """A worker frozen past the grace period (a paused VM, a network partition) comes back to find its
    trial failed and retried elsewhere: it must not crash, nor count twice, and must exit 0."""
    epochs = 40  # a's trial must still be running when it wakes (see the SIGKILL test above)
    study = fleet_study(n_trials=1, epochs=epochs)
    create(new_machine("creator"), pg_db, study)
    a, b = new_machine("a"), new_machine("b")
    wa = a.worker(pg_db.url)
    wait_until(lambda: (t := trial(pg_db, 0)) and epochs_done(t), 90, "trial 0 mid-run on a")
    freeze_outside_transactions(wa, pg_db)
    wb = b.worker(pg_db.url)
    wait_until(lambda: (t := trial(pg_db, 1)) and t.state == TrialState.RUNNING, 120, "b to run the retry")
    wa.signal(signal.SIGCONT)  # a wakes up mid-trial; its trial is FAIL now
    assert wa.wait(180) == 0, wa.output()
    assert wb.wait(180) == 0, wb.output()
    trials, _, _ = snapshot(pg_db)
    assert states(trials) == {0: "FAIL", 1: "COMPLETE"}
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].user_attrs["resumed_from_epoch"] >= 1
    assert "was marked FAIL while running here" in wa.output()
    assert_exact(trials, 1)
    print(f"\n[paused] a frozen past the grace period: states {states(trials)}; b resumed trial 0 as trial 1 "
          f"from epoch {trials[1].user_attrs['resumed_from_epoch']}; a stepped aside and exited 0")


# --------------------------------------------------------------------------- 3. database restart
def test_postgres_restart_mid_study_loses_nothing(pg_db, new_machine, fleet_study):
    n, epochs = 4, 6
    study = fleet_study(n_trials=n, epochs=epochs)
    create(new_machine("creator"), pg_db, study)
    # A grace period longer than the outage: the workers should ride it out, not fail their trials.
    slow = {"H2S_GRACE_PERIOD": "15"}
    ws = [new_machine(f"m{i}").worker(pg_db.url, env=slow) for i in range(2)]
    wait_until(lambda: sum(bool(epochs_done(t)) and t.state == TrialState.RUNNING
                           for t in snapshot(pg_db)[0]) >= 2, 120, "two trials mid-run")
    before = states(snapshot(pg_db)[0])
    took = restart_postgres(pg_db)
    rcs = [w.wait(240) for w in ws]
    assert rcs == [0, 0], [w.output() for w in ws]
    trials, _, _ = snapshot(pg_db)
    after = states(trials)
    assert_exact(trials, n)
    lost = [w for w in ws if "database connection lost" in w.output()]
    assert lost, "no worker noticed the restart"
    print(f"\n[restart] PostgreSQL restarted in {took:.1f}s with trials {before}; after {after}; "
          f"{len(lost)}/2 workers logged the lost connection and reconnected; exit codes {rcs}")


# --------------------------------------------------------------------------- 4. racing starts
RACER = """
import sys, time, pathlib
import search.cli, search.launcher, search.study, search.storage, optuna, torch, how2sign.batches  # warm imports
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.001)
sys.argv = ["h2s-search", *sys.argv[3:]]
search.cli.main()
"""


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_eight_racing_starts_make_one_study_and_one_anchor(backend, request, new_machine, fleet_study, tmp_path):
    db = request.getfixturevalue("pg_db" if backend == "postgresql" else "mysql_db")
    study = fleet_study(n_trials=5)
    go = tmp_path / "go"
    machines = [new_machine(f"r{i}") for i in range(8)]
    racers = [m.spawn_python(["-c", RACER, str(m.dir / "ready"), str(go), "start", "--study", str(study),
                              "--storage", db.url, "--data", str(m.data), "--workers", "0"], tag="start")
              for m in machines]
    wait_until(lambda: all((m.dir / "ready").exists() for m in machines), 120, "8 racers to import")
    go.touch()  # all eight go at the same instant
    rcs = [r.wait(120) for r in racers]
    outs = [r.output() for r in racers]
    assert rcs == [0] * 8, outs
    assert sum("created" in o for o in outs) == 1 and sum(" loaded in " in o for o in outs) == 7, outs
    assert sum("anchor v4 enqueued" in o for o in outs) == 1, outs
    trials, attrs, names = snapshot(db)
    assert names == ["fleet"]
    assert [(t.number, t.state.name, t.user_attrs.get("anchor")) for t in trials] == [(0, "WAITING", True)]
    assert attrs["n_trials"] == 5 and len(attrs["fingerprint"]) == 64
    print(f"\n[race {backend}] 8 starts: 1 created, 7 loaded; studies {names}; trials "
          f"{[(t.number, t.state.name) for t in trials]}")


# --------------------------------------------------------------------------- 5. SIGTERM and SIGINT
def assert_preempted_and_requeued(trials, number: int, signame: str) -> None:
    """Trial `number` ended FAIL "preempted by <signal>" and a WAITING retry stands in for it."""
    by_number = {t.number: t for t in trials}
    gone = by_number[number]
    assert gone.state == TrialState.FAIL and gone.user_attrs["fail_reason"].startswith(f"preempted by {signame}")
    retries = [t for t in trials if t.system_attrs.get("retry_history", [])[-1:] == [number]]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING, states(trials)
    assert retries[0].params == gone.params and retries[0].user_attrs["checkpoint"] == gone.user_attrs["checkpoint"]


def test_sigterm_preempts_the_trial_back_into_the_queue_and_another_worker_resumes_it(pg_db, new_machine,
                                                                                     fleet_study):
    """Slurm's time limit and preemption, scancel and `docker stop` all send SIGTERM: the machine is taken
    away, so the trial goes back to the queue at once, is resumed elsewhere from its checkpoint, and does not
    spend the budget."""
    from how2sign.checkpoint import LAST, load

    epochs = 40
    study = fleet_study(n_trials=1, epochs=epochs)
    a, b = new_machine("a"), new_machine("b")
    create(a, pg_db, study)
    w = a.worker(pg_db.url)
    wait_until(lambda: (epochs_done(trial(pg_db, 0)) or 0) >= 2, 120, "trial 0 mid-run")
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.output()
    assert "stopped by SIGTERM" in w.output() and "Traceback" not in w.output()
    trials, _, _ = snapshot(pg_db)
    assert_preempted_and_requeued(trials, 0, "SIGTERM")
    at_signal = load(Path(trials[0].user_attrs["checkpoint"]) / LAST)["epoch"]
    assert 1 <= at_signal == trials[0].user_attrs["epochs_run"] < epochs
    wb = b.worker(pg_db.url)
    wait_until(lambda: (t := trial(pg_db, 1)) and t.state == TrialState.RUNNING and epochs_done(t), 120,
               "machine b to resume the retry")
    wb.signal(signal.SIGINT)  # Ctrl-C: a person stops it; the trial is not put back
    assert wb.wait(60) == 0, wb.output()
    trials, _, _ = snapshot(pg_db)
    retry = trials[1]
    assert retry.user_attrs["resumed_from_epoch"] == at_signal
    assert retry.state == TrialState.FAIL and retry.user_attrs["fail_reason"] == "interrupted by SIGINT"
    assert len(trials) == 2 and len(counted(trials)) == 1, states(trials)  # the preemption cost no budget
    print(f"\n[SIGTERM] trial 0 preempted after epoch {at_signal}/{epochs}, re-queued as trial 1, resumed on "
          f"machine b from epoch {retry.user_attrs['resumed_from_epoch']}; Ctrl-C there: "
          f"{retry.user_attrs['fail_reason']!r}, counted")


# --------------------------------------------------------------------------- 6/7. start --devices on MariaDB
def test_start_with_devices_on_mariadb_runs_exactly_n(mysql_db, new_machine, fleet_study):
    n = 4
    study = fleet_study(n_trials=n, epochs=2)
    m = new_machine("box")
    res = m.cli("start", "--study", study, "--storage", mysql_db.url, "--data", m.data, "--devices", "cpu,cpu",
                "--json", timeout=240)
    assert "2 worker(s) on cpu, cpu" in res.stderr, res.stderr
    trials, _, _ = snapshot(mysql_db)
    assert_exact(trials, n)
    assert len(trials) == n and {t.user_attrs["device"] for t in trials} == {"cpu"}
    print(f"\n[MariaDB] start --devices cpu,cpu: {states(trials)}")


# --------------------------------------------------------------------------- storage survives a dropped link
def test_storage_calls_wait_out_a_lost_connection(pg_db, monkeypatch):
    """In-process: every pooled connection is killed and new ones refused for 2 s; calls wait, then succeed."""
    import optuna

    from search.storage import open_storage

    monkeypatch.setenv("H2S_RECONNECT_SECONDS", "30")
    storage = open_storage(pg_db.url, heartbeat=False)
    study = optuna.create_study(study_name="link", storage=storage)
    study.enqueue_trial({"x": 1.0})

    def outage():
        pg_db.admin(f'ALTER DATABASE "{pg_db.name}" WITH ALLOW_CONNECTIONS false')
        pg_db.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg_db.name,))
        time.sleep(2.0)
        pg_db.admin(f'ALTER DATABASE "{pg_db.name}" WITH ALLOW_CONNECTIONS true')

    t = threading.Thread(target=outage)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    tr = study.ask()
    tr.set_user_attr("during", "outage")
    study.tell(tr, 1.0)
    waited = time.monotonic() - t0
    t.join()
    assert [x.state for x in study.get_trials()] == [TrialState.COMPLETE]
    assert waited > 0.5
    storage.engine.dispose()


# --------------------------------------------------------------------------- 9. behind pgbouncer
def running_epochs(db, number: int) -> int:
    """Epochs finished so far by trial `number`, while it runs (0 otherwise)."""
    t = trial(db, number)
    return (epochs_done(t) or 0) if t is not None and t.state == TrialState.RUNNING else 0


POOLER_CAP = 6  # server connections the small pooler below opens to the database, at most
POOLER_FLOOR = 2  # the fewest a fleet needs: the study lock's holder keeps one and works on another


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_pooler(pg_db):
    """pg_db behind pgbouncers of this test's own (.ci/pgbouncer): `small_pooler(cap, wait)` starts one in
    transaction pooling on a free port that is not 6432, at most `cap` server connections to the database,
    and clients dropped after `wait` s in its queue (a fleet deadlocked behind it then fails in a minute, not
    in pgbouncer's default 2), and returns the database through it. Stopped afterwards. Its `url` has no
    h2s_pooler option: h2s-search is not told a pooler is there."""
    script = Path(__file__).resolve().parents[2] / ".ci" / "pgbouncer"
    if not (shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists()):
        pytest.skip("pgbouncer is not installed")
    from conftest import Database

    started: list[tuple[int, Path]] = []

    def start(cap: int = POOLER_CAP, wait: int = 60):
        port = _free_port()
        env = {**os.environ, "PGBOUNCER_PORT": str(port), "PGBOUNCER_POOL_SIZE": str(cap),
               "PGBOUNCER_MAX_DB_CONNECTIONS": str(cap), "PGBOUNCER_QUERY_WAIT_TIMEOUT": str(wait)}
        res = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        folder = Path(res.stdout.strip().splitlines()[-1])
        started.append((int((folder / "pgbouncer.pid").read_text()), folder))
        return Database(f"postgresql://postgres@127.0.0.1:{port}/{pg_db.name}", pg_db.name, "postgresql")

    try:
        yield start
    finally:
        for pid, folder in started:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not _alive(pid), 30, "the test's pgbouncer to stop")
            shutil.rmtree(folder, ignore_errors=True)


def join_at_once(db, n: int, workers: int, cap: int, new_machine, fleet_study, tmp_path) -> str:
    """`workers` workers join a study of `n` one-epoch trials at the same instant through `db`, a pooler of at
    most `cap` server connections that the URL does not declare. None may wait for the study lock on a server
    connection the lock's holder needs: every worker exits 0, the budget is exact, no log has a traceback, and
    the server never sees more than `cap` connections. Returns what it saw, in one line."""
    from search.storage import parse_url

    assert not parse_url(db.url).pooler  # undeclared: the safety cannot come from knowing it is there
    study = fleet_study(n_trials=n, epochs=1)
    create(new_machine("creator"), db, study)
    # Many processes on a small machine starve heartbeat threads: a grace period that load cannot outlast.
    slow = {"H2S_HEARTBEAT_INTERVAL": "2", "H2S_GRACE_PERIOD": "60"}
    machines = [new_machine(f"m{i}", **slow) for i in range(workers)]
    go = tmp_path / "go"
    t0 = 0.0
    with ConnectionWatch(db) as watch:
        procs = [m.spawn_python(["-c", RACER, str(m.dir / "ready"), str(go), "worker", "--study", "fleet",
                                 "--storage", db.url, "--data", str(m.data), "--device", "cpu"], tag="worker")
                 for m in machines]
        wait_until(lambda: all((m.dir / "ready").exists() for m in machines), 180, f"{workers} workers to import")
        go.touch()  # all of them join at the same instant
        t0 = time.monotonic()
        rcs = [p.wait(600) for p in procs]
    logs = [p.output() for p in procs]
    assert rcs == [0] * workers, [log for p, log in zip(procs, logs, strict=True) if p.popen.returncode]
    assert not [log for log in logs if "Traceback" in log], logs
    trials, _, _ = snapshot(db)
    assert_exact(trials, n)
    assert len(trials) == n and sum(ran(p) for p in procs) == n
    # each process (a pool of 2 + 2 and a lock connection, as for a direct connection) shares at most cap
    assert watch.samples > 5 and 0 < watch.peak <= cap
    return (f"{n} trials by {workers} workers joining at once through pgbouncer on port "
            f"{db.url.split(':')[2].split('/')[0]} (max_db_connections {cap}) in {time.monotonic() - t0:.0f}s; "
            f"peak server connections {watch.peak} over {watch.samples} samples; ran {[ran(p) for p in procs]}")


def test_twelve_workers_starting_at_once_behind_an_undeclared_small_pooler_finish_exactly_n(
        small_pooler, new_machine, fleet_study, tmp_path):
    """Issue 17: twelve workers join at the same instant through a pooler on a non-default port, capped at
    6 server connections, that the URL does not declare."""
    seen = join_at_once(small_pooler(POOLER_CAP), 12, 12, POOLER_CAP, new_machine, fleet_study, tmp_path)
    print(f"\n[undeclared pooler] {seen}")


def test_six_workers_behind_a_pooler_at_the_floor_of_two_server_connections_finish_exactly_n(
        pg_db, small_pooler, new_machine, fleet_study, tmp_path):
    """The floor: the study lock's holder keeps one server connection (its open transaction is the lock) and
    does its work on one more; waiters hold none between polls. With exactly 2, `start` creates the study
    and six workers joining at once (each joins under the lock) all finish, the budget exact. Optuna's first
    setup of its tables in an empty database holds two connections at once (3 with the lock's): done once
    beforehand, directly."""
    from search.storage import open_storage

    open_storage(pg_db.url, heartbeat=False).engine.dispose()
    seen = join_at_once(small_pooler(POOLER_FLOOR), 6, 6, POOLER_FLOOR, new_machine, fleet_study, tmp_path)
    print(f"\n[pooler at the floor] {seen}")


def test_below_the_floor_the_study_lock_says_so_in_one_line(small_pooler, new_machine, fleet_study):
    """With one server connection the lock's holder can never do its work (the lock pins the only one): once
    the pooler gives up on it, creating the study fails in one line that names the floor, exit 2."""
    db = small_pooler(1, wait=3)
    m = new_machine("creator")
    res = m.cli("start", "--study", fleet_study(n_trials=1, epochs=1), "--storage", db.url, "--data", m.data,
                "--workers", 0, check=False)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "at least 2 server connections" in lines[0] and "query_wait_timeout" in lines[0], lines[0]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_start_takes_its_workers_down_cleanly(pgb_db, new_machine, fleet_study):
    from search.storage import GRACE_PERIOD

    study = fleet_study(n_trials=4, epochs=40)
    m = new_machine("box")
    start = m.spawn("start", "--study", study, "--storage", pgb_db.url, "--data", m.data, "--workers", 2,
                    tag="start")
    wait_until(lambda: sum(running_epochs(pgb_db, i) >= 1 for i in range(2)) == 2 or not start.alive(), 240,
               "both of start's workers to be mid-trial")
    assert start.alive(), start.output()
    workers = _children(start.pid)
    assert len(workers) == 2
    start.signal(signal.SIGKILL)
    # Each worker got SIGTERM from the kernel (PR_SET_PDEATHSIG), ends its trial and exits.
    wait_until(lambda: not any(_alive(p) for p in workers), GRACE_PERIOD, "start's workers to exit")
    trials, _, _ = snapshot(pgb_db)
    for number in (0, 1):
        assert_preempted_and_requeued(trials, number, "SIGTERM")
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"], states(trials)
    print(f"\n[start killed] workers {workers} exited; trials {states(trials)}: both back in the queue")


def test_sighup_preempts_a_standalone_worker_like_sigterm(pg_db, new_machine, fleet_study):
    """A closed terminal or ssh session is not a person deciding to stop the trial: it resumes elsewhere."""
    study = fleet_study(n_trials=2, epochs=40)
    m = new_machine("a")
    create(m, pg_db, study)
    w = m.worker(pg_db.url)
    wait_until(lambda: running_epochs(pg_db, 0) >= 1, 120, "trial 0 mid-run")
    w.signal(signal.SIGHUP)
    assert w.wait(60) == 0, w.output()
    trials, _, _ = snapshot(pg_db)
    assert_preempted_and_requeued(trials, 0, "SIGHUP")


def test_sigkill_of_a_worker_behind_pgbouncer_is_retried_and_resumes(pgb_db, new_machine, fleet_study):
    epochs = 40  # the kill must land mid-trial (see the SIGKILL test above)
    study = fleet_study(n_trials=1, epochs=epochs)
    create(new_machine("creator"), pgb_db, study)
    a, b = new_machine("a"), new_machine("b")
    wa = a.worker(pgb_db.url)
    wait_until(lambda: running_epochs(pgb_db, 0) >= 2, 120, "trial 0 to finish two epochs on machine a")
    wa.signal(signal.SIGKILL)
    assert wa.wait(10) == -signal.SIGKILL
    died = trial(pgb_db, 0)
    assert died.state == TrialState.RUNNING
    wb = b.worker(pgb_db.url)  # finds the budget spent and trial 0 RUNNING; waits for it to go stale
    assert wb.wait(240) == 0, wb.output()
    trials, _, _ = snapshot(pgb_db)
    assert states(trials) == {0: "FAIL", 1: "COMPLETE"}
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == died.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1 and retry.user_attrs["epochs_run"] == epochs
    assert_exact(trials, 1)
    print(f"\n[pgbouncer SIGKILL] trial 0 killed after epoch {max(died.intermediate_values)}; retry trial 1 "
          f"resumed from epoch {retry.user_attrs['resumed_from_epoch']}")


def test_postgres_restart_behind_pgbouncer_loses_nothing(pgb_db, new_machine, fleet_study):
    n, epochs = 4, 6
    study = fleet_study(n_trials=n, epochs=epochs)
    create(new_machine("creator"), pgb_db, study)
    slow = {"H2S_GRACE_PERIOD": "15"}
    ws = [new_machine(f"m{i}").worker(pgb_db.url, env=slow) for i in range(2)]
    wait_until(lambda: sum(running_epochs(pgb_db, i) >= 1 for i in range(n)) >= 2, 180, "two trials mid-run")
    before = states(snapshot(pgb_db)[0])
    took = restart_postgres(pgb_db)
    rcs = [w.wait(300) for w in ws]
    assert rcs == [0, 0], [w.output() for w in ws]
    trials, _, _ = snapshot(pgb_db)
    assert_exact(trials, n)
    print(f"\n[restart behind pgbouncer] PostgreSQL restarted in {took:.1f}s with trials {before}; after "
          f"{states(trials)}; exit codes {rcs}")


# --------------------------------------------------------------------------- 10. confirm on PostgreSQL
def test_two_workers_share_the_confirmation_budget_exactly_and_a_killed_one_is_resumed(pg_db, new_machine,
                                                                                       fleet_study):
    """The confirmation study is a study like any other: machines join it with `worker`, the budget of
    (K + 1) x N runs is exact, and a killed worker's run is retried and resumed from its checkpoint."""
    epochs = 120  # runs of several seconds, so that both machines are surely inside one at the same time
    study = fleet_study(n_trials=2, epochs=epochs)
    m, a, b = new_machine("creator"), new_machine("a"), new_machine("b")
    create(m, pg_db, study)
    m.cli("start", "--study", study, "--storage", pg_db.url, "--data", m.data, "--workers", 2, timeout=300)
    res = m.cli("confirm", "--study", "fleet", "--top", 1, "--seeds", 2, "--storage", pg_db.url, "--data", m.data,
                "--workers", 0)
    assert "2 configurations x 2 seeds" in res.stdout and "4 runs enqueued" in res.stdout, res.stdout
    wa, wb = a.worker(pg_db.url, "fleet.confirm"), b.worker(pg_db.url, "fleet.confirm")
    busy = lambda: [t for t in snapshot(pg_db, "fleet.confirm")[0]  # noqa: E731
                    if t.state == TrialState.RUNNING and 2 <= (epochs_done(t) or 0) <= epochs - 6]
    wait_until(lambda: len(busy()) == 2, 240, "both machines two epochs into a confirmation run")
    wa.signal(signal.SIGKILL)  # machine a dies mid-run; b fails its run once the heartbeat lapses, and resumes it
    assert wa.wait(10) == -signal.SIGKILL
    assert wb.wait(300) == 0, wb.output()
    trials, attrs, _ = snapshot(pg_db, "fleet.confirm")
    live = counted(trials)
    assert len(live) == 4 and all(t.state == TrialState.COMPLETE for t in live), states(trials)
    pairs = sorted((t.user_attrs["confirms_trial"], t.user_attrs["seed"]) for t in live)
    chosen = attrs["confirm"]
    assert pairs == sorted((c["trial"], s) for c in chosen["configs"] for s in chosen["seeds"])
    (retried,) = [t for t in live if t.system_attrs.get("retry_history")]
    assert retried.user_attrs["resumed_from_epoch"] >= 2
    assert ran(wb) == 4  # b ran every run to its end: its own, the two waiting and the retry of a's
    print(f"\n[confirm] 4 runs on 2 machines, one killed mid-run: states {states(trials)}; retry "
          f"{retried.number} resumed from epoch {retried.user_attrs['resumed_from_epoch']}")


# --------------------------------------------------------------------------- 8. docker-compose
def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-compose"],
                       capture_output=True, timeout=300)
        exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed and cannot be installed here")
    return exe


def test_docker_compose_file_is_valid_and_keeps_secrets_out(tmp_path):
    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = root / "docker-compose.yml"
    text = compose.read_text()
    exe = _docker_compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "H2S_"))}
    res = subprocess.run([exe, "-f", str(compose), "--env-file", str(root / ".env.example"), "config"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    services = cfg["services"]
    assert {"postgres", "study", "worker", "dashboard"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert int(services["worker"]["deploy"]["replicas"]) >= 1
    ports = services["dashboard"]["ports"]
    assert all(str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports), ports
    assert services["study"].get("restart", "no") == "no"
    # The password comes from the environment: the file has none, and config refuses to run without one.
    example = dict(line.split("=", 1) for line in (root / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert example["POSTGRES_PASSWORD"] not in text
    (tmp_path / "empty.env").write_text("")
    bare = subprocess.run([exe, "-f", str(compose), "--env-file", str(tmp_path / "empty.env"), "config"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bare.returncode != 0 and "POSTGRES_PASSWORD" in bare.stderr


def test_heartbeat_settings_come_from_the_environment(monkeypatch):
    from search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, StorageError, heartbeat_settings

    monkeypatch.delenv("H2S_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("H2S_GRACE_PERIOD", raising=False)
    assert heartbeat_settings() == (HEARTBEAT_INTERVAL, GRACE_PERIOD)
    monkeypatch.setenv("H2S_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("H2S_GRACE_PERIOD", "5")
    assert heartbeat_settings() == (2, 5)
    for interval, grace in (("0", "5"), ("x", "5"), ("5", "5")):
        monkeypatch.setenv("H2S_HEARTBEAT_INTERVAL", interval)
        monkeypatch.setenv("H2S_GRACE_PERIOD", grace)
        with pytest.raises(StorageError):
            heartbeat_settings()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s", "-q"]))
