"""Fixtures for fleet tests: a fresh PostgreSQL / MariaDB database per test, "machines" with their own
working folder and copy of the data, tiny study files, and worker processes talking TCP to 127.0.0.1.

They are general on purpose: any test that needs a real database server or a real worker process may use
them. Databases are created as h2s_test_<random> and dropped afterwards; a test skips when the server is
not reachable (`.ci/run` starts both servers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_ADMIN = os.environ.get("H2S_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("H2S_TEST_MYSQL", "mysql://root@127.0.0.1:3306/mysql")
# pgbouncer in transaction-pooling mode in front of PG_ADMIN's server, as `.ci/pgbouncer` starts it.
PGBOUNCER = os.environ.get("H2S_TEST_PGBOUNCER", "postgresql://postgres@127.0.0.1:6432/postgres")
# Short heartbeats so that a killed worker's trial goes stale in seconds, not a minute.
FAST_HEARTBEAT = {"H2S_HEARTBEAT_INTERVAL": "1", "H2S_GRACE_PERIOD": "4"}


# --------------------------------------------------------------------------- databases
def _swap_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


def pg_admin(sql: str, params: tuple = (), *, url: str = PG_ADMIN):
    """Run one statement as the PostgreSQL admin on a fresh autocommit connection; returns the rows."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def mysql_admin(sql: str, *, url: str = MYSQL_ADMIN):
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def pg_connections(db: str) -> int:
    """Client connections to database `db` right now (pg_stat_activity)."""
    return pg_admin("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))[0][0]


def wait_for_pg(timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            pg_admin("SELECT 1")
            return
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


@dataclass
class Database:
    url: str     # what workers get: postgresql://... or mysql://..., TCP to 127.0.0.1
    name: str
    backend: str

    def connections(self) -> int:
        """Client connections to this database right now (pg_stat_activity / processlist)."""
        if self.backend == "postgresql":
            return pg_connections(self.name)
        rows = mysql_admin(f"SELECT count(*) FROM information_schema.processlist WHERE db = '{self.name}'")
        return int(rows[0][0])

    def admin(self, sql: str, params: tuple = ()):
        """One statement as the server's admin, on a fresh connection (PostgreSQL: %s parameters)."""
        return pg_admin(sql, params) if self.backend == "postgresql" else mysql_admin(sql)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections again (after a restart)."""
        if self.backend == "postgresql":
            wait_for_pg(timeout)


@pytest.fixture
def pg_db() -> Iterator[Database]:
    """A fresh PostgreSQL database for this test, dropped afterwards (even while clients hang on)."""
    try:
        pg_admin("SELECT 1")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    name = f"h2s_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield Database(_swap_db(PG_ADMIN, name), name, "postgresql")
    finally:
        wait_for_pg()  # a test may have restarted the server
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pgbouncer_show(what: str) -> list[dict]:
    """SHOW POOLS / SHOW CONFIG ... on pgbouncer's admin console, as a list of dicts."""
    import psycopg

    dsn = _swap_db(PGBOUNCER, "pgbouncer")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5, prepare_threshold=None) as conn:
        cur = conn.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pgbouncer_pool_size() -> int:
    """The most server connections pgbouncer opens per database and user (default_pool_size)."""
    return int(next(r["value"] for r in pgbouncer_show("CONFIG") if r["key"] == "default_pool_size"))


@pytest.fixture
def pgb_db(pg_db) -> Database:
    """pg_db reached through pgbouncer (transaction pooling); skips when no pgbouncer listens there.

    `url` goes through the pooler; connections() and admin() still count and act on the server itself.
    """
    try:
        pgbouncer_show("VERSION")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"pgbouncer not reachable at {PGBOUNCER}: {exc} (.ci/pgbouncer starts one)")
    return Database(_swap_db(PGBOUNCER, pg_db.name), pg_db.name, "postgresql")


@pytest.fixture
def mysql_db() -> Iterator[Database]:
    """A fresh MariaDB/MySQL database for this test, dropped afterwards."""
    try:
        mysql_admin("SELECT 1")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"MariaDB/MySQL not reachable at {MYSQL_ADMIN}: {exc}")
    name = f"h2s_test_{uuid.uuid4().hex[:12]}"
    mysql_admin(f"CREATE DATABASE `{name}`")
    try:
        yield Database(_swap_db(MYSQL_ADMIN, name), name, "mysql")
    finally:
        for row in mysql_admin(f"SELECT id FROM information_schema.processlist WHERE db = '{name}'"):
            with contextlib.suppress(Exception):  # the connection may have gone by itself
                mysql_admin(f"KILL {int(row[0])}")
        mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(params=["postgresql", "mysql"])
def any_db(request) -> Database:
    """Each backend in turn: the test runs once on PostgreSQL and once on MariaDB."""
    return request.getfixturevalue("pg_db" if request.param == "postgresql" else "mysql_db")


# --------------------------------------------------------------------------- data and studies
@pytest.fixture(scope="session")
def fleet_corpus(tmp_path_factory) -> Path:
    """A tiny synthetic How2Sign corpus, written and packed once per session; copy it per machine."""
    from how2sign.batches import TrainData
    from how2sign.synthetic import write_corpus

    root = tmp_path_factory.mktemp("fleet-corpus") / "h2s"
    write_corpus(root, train=24, val=8, test=8, seed=0)
    TrainData.load(root)  # packs the cache; copies keep it valid (copytree keeps the CSV mtimes)
    return root


def fleet_study_toml(name: str = "fleet", *, n_trials: int = 3, epochs: int = 3, patience: int = 100,
                     anchor: bool = True, pruner: str = "none", sampler: str = "random") -> str:
    """The tiny study (search.tiny_study): about half a second per epoch."""
    from search.tiny_study import TINY_ANCHOR, tiny_study_toml

    return tiny_study_toml(name, n_trials=n_trials, epochs=epochs, patience=patience,
                           anchor=TINY_ANCHOR if anchor else None, pruner=f'type = "{pruner}"',
                           sampler=f'type = "{sampler}"\nseed = 0', description="fleet test study")


@pytest.fixture
def fleet_study(tmp_path) -> Callable[..., Path]:
    """write(name="fleet", n_trials=3, epochs=3, ...) -> path of a tiny study .toml (see fleet_study_toml)."""

    def write(name: str = "fleet", **kw) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(fleet_study_toml(name, **kw))
        return path

    return write


# --------------------------------------------------------------------------- machines and processes
@dataclass
class Machine:
    """One simulated machine: its own working folder, its own copy of the data, its own environment."""

    dir: Path
    data: Path
    env: dict
    procs: list = field(default_factory=list)

    def cli(self, *args, check: bool = True, timeout: float = 240, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        """Run `python -m search.cli ARGS` here and wait."""
        res = subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=self.dir,
                             capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check:
            assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        return res

    def spawn(self, *args, env: dict | None = None, tag: str | None = None) -> Proc:
        """Start `python -m search.cli ARGS` here in the background; output goes to <dir>/<tag>.log."""
        return self.spawn_python(["-m", "search.cli", *map(str, args)], env=env, tag=tag or str(args[0]))

    def spawn_python(self, argv: list[str], *, env: dict | None = None, tag: str = "proc") -> Proc:
        log = self.dir / f"{tag}-{len(self.procs)}.log"
        fh = open(log, "w")  # noqa: SIM115 - closed by Proc.wait
        p = subprocess.Popen([sys.executable, *argv], cwd=self.dir, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env={**self.env, **(env or {})})
        proc = Proc(p, log, fh)
        self.procs.append(proc)
        return proc

    def worker(self, db_url: str, study: str = "fleet", *extra, device: str = "cpu", env: dict | None = None
               ) -> Proc:
        """`h2s-search worker` on this machine, with the shared checkpoint folder from its environment."""
        return self.spawn("worker", "--study", study, "--storage", db_url, "--data", self.data, "--device", device,
                          *extra, env=env, tag="worker")


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path
    _fh: object

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 180) -> int:
        try:
            rc = self.popen.wait(timeout)
        finally:
            self._fh.flush()
        return rc

    def stop(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        self._fh.close()


@pytest.fixture
def fleet_env(tmp_path) -> dict:
    """Environment for worker processes: short heartbeats, one thread each, a checkpoint folder all share."""
    shared = tmp_path / "shared-checkpoints"
    shared.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "H2S_STORAGE"}
    env.update(FAST_HEARTBEAT)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONWARNINGS": "ignore", "H2S_CHECKPOINTS": str(shared)})
    return env


@pytest.fixture
def new_machine(tmp_path, fleet_corpus, fleet_env) -> Iterator[Callable[..., Machine]]:
    """new_machine("a") -> a Machine in tmp_path/a with its own data copy; its processes die with the test."""
    made: list[Machine] = []

    def make(name: str, **env) -> Machine:
        home = tmp_path / name
        home.mkdir()
        data = home / "data"
        shutil.copytree(fleet_corpus, data)
        m = Machine(home, data, {**fleet_env, "H2S_HOME": str(home / "h2s-home"), **env})
        made.append(m)
        return m

    yield make
    for m in made:
        for p in m.procs:
            if p.alive():
                p.signal(signal.SIGKILL)
            p.stop()

