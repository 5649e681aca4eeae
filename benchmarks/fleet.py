"""A fleet of V workers on one PostgreSQL study: storage time per trial, ask and should_prune latency,
server connections, pgbouncer waits and double pops, for direct PostgreSQL, pgbouncer, pgbouncer + cache.

A study is pre-filled to N trials (V of them RUNNING, the rest COMPLETE or PRUNED, each with 3 parameters,
reports per epoch, Hyperband rung results and ~15 attributes) in a fresh database. Then, for each variant:

  * load generators (--generators processes x 4 threads, raw psycopg on the variant's route, niced) replay
    what V workers' storage sends at the rate of --trial-seconds trials of --epochs epochs, statement for
    statement, each virtual worker's calls in order: the budget look and Optuna's ask (pop an enqueued
    trial, or create one, the budget checked in that transaction), the runner's records, TPE's study read
    and three parameters, a report per epoch, a rung result and a study read at the rungs of its Hyperband
    bracket, the end records and tell, a heartbeat every 10 s. A study read is the variant's: Optuna's
    full re-read of every unfinished trial, or our cache's one narrow statement. The database work of V
    workers is real; their Python work would run on V other machines, so it is not simulated here.
  * one probe worker runs the real worker path in this process (search.worker.run_worker: BudgetGate,
    TPE, Hyperband, heartbeat thread, artifacts), training replaced by --epoch-seconds of sleep per epoch,
    every storage call timed.

    python benchmarks/fleet.py                        # the headline: 256 workers, 5,000 trials, 3 variants
    python benchmarks/fleet.py --workers 32,64,128,256 --trials 500,2500,5000 --probe-trials 4
    python benchmarks/fleet.py --variants cache --workers 256 --trials 5000
    python benchmarks/fleet.py --joins 12,48          # only the joins (below)

Joins (issue 17): --joins N,... starts N worker processes that join one study at the same instant
(search.study.load_stored with the study's worker numbering: the study lock, opening the storage,
reading the study) through a pgbouncer of its own on --join-port, capped at --join-cap server connections
(max_db_connections), and times until every one has joined: with the pooler declared in the URL
(?h2s_pooler=pgbouncer) and undeclared (no option, a port that is not 6432). --join-variants may add
"direct" (no pooler) and "<route>-blocking", where the lock is waited for inside the server
(pg_advisory_xact_lock) instead of polled: on "direct" for comparison, and "undeclared-blocking" is issue
17's deadlock, which pgbouncer's query_wait_timeout ends. Workers are forked from this process, so
their imports are done before the clock starts.

Needs PostgreSQL on 127.0.0.1:5432 (trust) and pgbouncer; as root it starts its own pgbouncer
(.ci/pgbouncer, pool --pool-size) on port 6439. Targets (issue 10, at 256 workers and 5,000 trials):
storage per trial p95 <= 600 ms (2% of 30 s), ask p95 <= 150 ms, should_prune p95 <= 10 ms (<= 50 ms at a
rung), <= 40 server connections, 0 trials popped twice.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from _common import bench_study, make_corpus, parse_args, run_main, say, verdict, workdir

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_PORT = 6439
VARIANTS = {"direct": ("direct", 0.0), "pgbouncer": ("pgbouncer", 0.0), "cache": ("pgbouncer", None)}
def _pg(url: str, sql: str, params: tuple = ()):
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10, prepare_threshold=None) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _url(db: str, route: str, port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{5432 if route == 'direct' else port}/{db}"


# --------------------------------------------------------------------------- pre-fill
def _distributions() -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json

    return {"dropout": distribution_to_json(FloatDistribution(0.0, 0.5)),
            "lr": distribution_to_json(FloatDistribution(1e-4, 3e-3, log=True)),
            "batch_size": distribution_to_json(CategoricalDistribution([8, 16]))}


def prefill(url: str, n: int, running: int, epochs: int) -> tuple[int, list[int]]:
    """N trials in the study as Optuna stores them: V RUNNING (their ids returned), the rest COMPLETE or
    PRUNED, each with 3 parameters, reports, rung results and ~15 attributes; plus 20 enqueued WAITING
    trials. Bulk inserts (pipelined executemany), so 5,000 trials take seconds."""
    import psycopg

    rng = random.Random(0)
    dists = _distributions()
    with psycopg.connect(url, prepare_threshold=None) as conn, conn.cursor() as cur:
        study_id = cur.execute("SELECT study_id FROM studies").fetchone()[0]
        start = cur.execute("SELECT count(*) FROM trials").fetchone()[0]
        plan = []  # (number, state, steps)
        for i in range(n):
            if i >= n - running:
                plan.append((start + i, "RUNNING", rng.randrange(epochs)))
            else:
                plan.append((start + i, "COMPLETE" if i % 3 else "PRUNED", epochs if i % 3 else rng.choice([1, 3])))
        plan += [(start + n + i, "WAITING", 0) for i in range(20)]
        cur.executemany("INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) VALUES "
                        "(%s, %s, %s, CASE WHEN %s = 'WAITING' THEN NULL ELSE now() END, "
                        "CASE WHEN %s IN ('COMPLETE', 'PRUNED') THEN now() END)",
                        [(num, study_id, st, st, st) for num, st, _ in plan])
        ids = dict(cur.execute("SELECT number, trial_id FROM trials WHERE study_id = %s", (study_id,)).fetchall())
        params, ivs, sys_attrs, user, values, beats = [], [], [], [], [], []
        for num, st, steps in plan:
            tid = ids[num]
            if st == "WAITING":
                sys_attrs.append((tid, "fixed_params", json.dumps({"dropout": 0.01 * (num - start - n),
                                                                   "lr": 1e-3, "batch_size": 8})))
                continue
            params += [(tid, "dropout", rng.uniform(0, 0.5), dists["dropout"]),
                       (tid, "lr", rng.uniform(1e-4, 3e-3), dists["lr"]),
                       (tid, "batch_size", float(rng.randrange(2)), dists["batch_size"])]
            base = rng.uniform(3, 5)
            ivs += [(tid, step, base + 1 / step) for step in range(1, steps + 1)]
            sys_attrs += [(tid, f"completed_rung_{r}", json.dumps(base + 1 / 3 ** r)) for r in range(3)
                          if 3 ** r <= steps]
            attrs = {"anchor": False, "host": "gpu-node", "device": "cuda:0", "checkpoint": f"/ck/trial-{num:05d}",
                     "h2s_version": "0.1.0", "torch_version": "2.13", "optuna_version": "5.0.0", "seed": num,
                     "fail_reason": None, "resumed_from_epoch": None}
            if st != "RUNNING":
                attrs.update(params=30784, epochs_run=steps, best_epoch=steps, val_loss=base, gap=0.05, seconds=30.0)
            user += [(tid, k, json.dumps(v)) for k, v in attrs.items()]
            if st == "COMPLETE":
                values.append((tid, base))
            if st == "RUNNING":
                beats.append((tid,))
        cur.executemany("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                        "VALUES (%s, %s, %s, %s)", params)
        cur.executemany("INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                        "intermediate_value_type) VALUES (%s, %s, %s, 'FINITE')", ivs)
        cur.executemany("INSERT INTO trial_system_attributes (trial_id, key, value_json) VALUES (%s, %s, %s)",
                        sys_attrs)
        cur.executemany("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (%s, %s, %s)", user)
        cur.executemany("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES "
                        "(%s, 0, %s, 'FINITE')", values)
        cur.executemany("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (%s, now())", beats)
        conn.commit()
    # A study that grew to N trials one at a time has had its tables analysed by autovacuum many times over;
    # one bulk load has not, and until autovacuum's next round (a minute) the planner would scan whole
    # tables on statistics of empty ones: the cell would time a state no running fleet is in.
    _pg(url, "ANALYZE")
    return study_id, [ids[num] for num, st, _ in plan if st == "RUNNING"]


# --------------------------------------------------------------------------- load generators
# What V workers' storage sends PostgreSQL, statement for statement: the SQL below is what Optuna's
# RDBStorage and search.storage send for each call of the real worker path (the probe's own statement count
# per trial is printed beside the virtual workers' for comparison). Each virtual worker's calls run in
# order: one trial's admission, sampling, epochs and end, then the next trial.
_CHILD_PK = {"trial_params": "param_id", "trial_intermediate_values": "trial_intermediate_value_id",
             "trial_user_attributes": "trial_user_attribute_id", "trial_system_attributes": "trial_system_attribute_id",
             "trial_values": "trial_value_id"}
_TRIAL_TABLES = ("trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
                 "trial_intermediate_values")
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")
_NEWS_TABLES = ("trial_params", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
                "trial_values")
_NEWS_SQL = (
    "SELECT * FROM (SELECT 0 AS kind, trial_id AS pk, trial_id, state::text AS k, number::float AS num, NULL::text "
    "AS txt, datetime_start AS ts1, datetime_complete AS ts2 FROM trials WHERE study_id = %s AND (trial_id > %s OR "
    "trial_id = ANY(%s))"
    + "".join(f" UNION ALL SELECT {i}, c.{pk}, c.trial_id, {k}, {num}, {txt}, NULL, NULL FROM {table} c JOIN trials t "
              f"ON c.trial_id = t.trial_id WHERE t.study_id = %s AND c.{pk} > %s"
              for i, (table, pk, k, num, txt) in enumerate((
                  ("trial_params", "param_id", "c.param_name", "c.param_value", "c.distribution_json"),
                  ("trial_intermediate_values", "trial_intermediate_value_id", "c.step::text",
                   "c.intermediate_value", "c.intermediate_value_type::text"),
                  ("trial_user_attributes", "trial_user_attribute_id", "c.key", "NULL", "c.value_json"),
                  ("trial_system_attributes", "trial_system_attribute_id", "c.key", "NULL", "c.value_json"),
                  ("trial_values", "trial_value_id", "c.objective::text", "c.value", "c.value_type::text")), start=1))
    + ") u ORDER BY kind, pk")


class VirtualWorker:
    def __init__(self, trial_id: int | None, started: float, view: dict, floor: int, marks: dict, rng):
        self.trial_id, self.started, self.rng = trial_id, started, rng
        self.known = dict(view)  # trial id -> state, as this worker's cache holds them
        self.open = {t for t, st in view.items() if st not in _FINISHED}
        self.floor = floor  # Optuna's last finished trial id
        self.since = max(view, default=floor)  # our listing's start
        self.marks = dict(marks)
        self.rungs: tuple[int, ...] = ()


def _fetch(cur, ids: list[int]) -> None:
    """Trials read in full (RDBStorage._get_trials / get_trial): the rows, then each per-trial table."""
    cur.execute("SELECT * FROM trials WHERE trial_id = ANY(%s)", (ids,)).fetchall()
    for table in _TRIAL_TABLES:
        cur.execute(f"SELECT * FROM {table} WHERE trial_id = ANY(%s)", (ids,)).fetchall()


def _read(cur, study_id: int, w: VirtualWorker, cached: bool) -> None:
    """One get_all_trials: Optuna's _CachedStorage (every unfinished and newer trial in full) or ours."""
    if cached:  # FleetCachedStorage's narrow read: one statement (ReconnectingRDBStorage.narrow_read)
        rows = []
        for kind, pk, tid, key, *_ in cur.execute(_NEWS_SQL, (study_id, w.since, sorted(w.open), *[
                v for t in _NEWS_TABLES for v in (study_id, w.marks[t])])):
            if kind == 0:
                rows.append((tid, key))
            else:
                table = _NEWS_TABLES[kind - 1]
                w.marks[table] = max(w.marks[table], pk)
        w.since = max([w.since] + [tid for tid, _ in rows])
    else:  # Optuna's cached storage re-reads every unfinished and newer trial
        rows = cur.execute("SELECT trial_id, state FROM trials WHERE study_id = %s AND (trial_id > %s OR "
                           "trial_id = ANY(%s))", (study_id, w.floor, sorted(w.open))).fetchall()
        if rows:
            _fetch(cur, [r[0] for r in rows])
        w.floor = max([w.floor] + [tid for tid, st in rows if st in _FINISHED])
    for tid, st in rows:
        w.known[tid] = st
        (w.open.discard if st in _FINISHED else w.open.add)(tid)
    cur.connection.commit()


def _alone(cur, sql: str, params) -> None:
    """One statement in autocommit (as ReconnectingRDBStorage.add_trial_attrs): no BEGIN, no COMMIT."""
    conn = cur.connection
    conn.autocommit = True
    try:
        cur.execute(sql, params)
    finally:
        conn.autocommit = False


def _attrs(cur, tid: int, table: str, items: dict, cached: bool) -> None:
    """A worker's attributes of its own trial, all new keys: with our cache one conditional insert
    (FleetCachedStorage._added); else ReconnectingRDBStorage._replace_attrs: the trial, old rows out, new
    rows in, one transaction."""
    import psycopg

    if cached:
        one = "SELECT %s, %s, %s FROM trials WHERE trial_id = %s AND state = 'RUNNING'"
        try:
            _alone(cur, f"INSERT INTO {table} (trial_id, key, value_json) " + " UNION ALL ".join(
                [one] * len(items)), [v for k, val in items.items() for v in (tid, k, json.dumps(val), tid)])
            return
        except psycopg.errors.UniqueViolation:
            pass  # a pre-filled running trial's rung result: the worker's cache would know it, and overwrite
    cur.execute("SELECT * FROM trials WHERE trial_id = %s", (tid,)).fetchall()
    cur.execute(f"DELETE FROM {table} WHERE trial_id = %s AND key = ANY(%s)", (tid, list(items)))
    cur.executemany(f"INSERT INTO {table} (trial_id, key, value_json) VALUES (%s, %s, %s)",
                    [(tid, k, json.dumps(v)) for k, v in items.items()])
    cur.connection.commit()


def _start_trial(conn, study_id: int, w: VirtualWorker, cached: bool, popped) -> None:
    """BudgetGate's look and Optuna's ask (pop an enqueued trial, or create one: the budget is checked in
    that transaction, under the study row's lock), then the runner's first writes and TPE's sampling
    (one read) with its three parameters."""
    cur, rng = conn.cursor(), w.rng
    _read(cur, study_id, w, cached)  # budget_used
    cur.execute("SELECT CURRENT_TIMESTAMP").fetchall()  # fail_stale_trials
    cur.execute("SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id WHERE "
                "t.study_id = %s AND t.state = 'RUNNING' AND h.heartbeat < now() - interval '40 seconds'",
                (study_id,)).fetchall()
    conn.commit()
    _read(cur, study_id, w, cached)  # Optuna's pop of a waiting trial reads the study first
    waiting = sorted(t for t, st in w.known.items() if st == "WAITING")
    tid = None
    for cand in waiting[:1]:
        cur.execute("SELECT * FROM trials WHERE trial_id = %s FOR UPDATE", (cand,)).fetchall()
        got = cur.execute("UPDATE trials SET state = 'RUNNING', datetime_start = now() WHERE trial_id = %s AND "
                          "state = 'WAITING' RETURNING trial_id", (cand,)).fetchone()
        conn.commit()
        if got:
            tid = got[0]
            popped.append(tid)
            if cached:
                _read(cur, study_id, w, cached)  # FleetCachedStorage: the popped trial's start, once
    if tid is None:
        cur.execute("SELECT * FROM studies WHERE study_id = %s FOR UPDATE", (study_id,)).fetchall()
        cur.execute("SELECT value_json FROM study_user_attributes WHERE study_id = %s AND key = 'n_trials'",
                    (study_id,)).fetchall()
        cur.execute("SELECT count(trial_id) FROM trials WHERE study_id = %s", (study_id,)).fetchall()
        cur.execute("SELECT a.value_json FROM trial_system_attributes a JOIN trials t ON a.trial_id = t.trial_id "
                    "WHERE t.study_id = %s AND a.key = 'retry_history'", (study_id,)).fetchall()
        tid = cur.execute("INSERT INTO trials (number, study_id, state, datetime_start) VALUES (-1, %s, 'RUNNING', "
                          "now()) RETURNING trial_id", (study_id,)).fetchone()[0]
        number = cur.execute("SELECT count(*) FROM trials WHERE study_id = %s AND trial_id < %s",
                             (study_id, tid)).fetchone()[0]
        cur.execute("UPDATE trials SET number = %s WHERE trial_id = %s", (number, tid))
        conn.commit()
    if not cached:  # Trial(): storage.get_trial (FleetCachedStorage: the own trial is in the cache)
        _fetch(cur, [tid])
        conn.commit()
    _heartbeat(conn, tid)  # the heartbeat thread's first beat
    w.trial_id, w.started = tid, time.monotonic()
    _attrs(cur, tid, "trial_user_attributes", {k: "x" for k in ("anchor", "checkpoint", "host", "device",
                                                                 "h2s_version", "torch_version", "optuna_version",
                                                                 "resumed_from_epoch", "fail_reason")}, cached)
    _read(cur, study_id, w, cached)  # TPE: one get_all_trials per trial (Study._get_trials' cache)
    dists = _distributions()
    for name, value in (("dropout", rng.uniform(0, 0.5)), ("lr", 1e-3), ("batch_size", 0.0)):
        cur.execute("SELECT * FROM trials WHERE trial_id = %s FOR UPDATE", (tid,)).fetchall()
        cur.execute("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES "
                    "(%s, %s, %s, %s) ON CONFLICT DO NOTHING", (tid, name, value, dists[name]))  # a retry has them
        conn.commit()
    _attrs(cur, tid, "trial_user_attributes", {"seed": 0}, cached)
    bracket = rng.randrange(3)  # Hyperband's brackets for 10 epochs and reduction factor 3: rungs 1, 3, 9
    w.rungs = tuple(r for r in (1, 3, 9) if r >= 3 ** bracket)


def _epoch(conn, study_id: int, w: VirtualWorker, step: int, cached: bool) -> None:
    """trial.report, then should_prune: the trial's system attributes; at a rung, its result and the study."""
    cur, tid = conn.cursor(), w.trial_id
    if cached:  # ReconnectingRDBStorage: one conditional insert; the own trial's attributes come from the cache
        _alone(cur, "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
               "intermediate_value_type) SELECT %s, %s, %s, 'FINITE' FROM trials WHERE trial_id = %s AND "
               "state = 'RUNNING' ON CONFLICT DO NOTHING", (tid, step, 4.0 + 1 / step, tid))
    else:  # Optuna's RDBStorage
        cur.execute("SELECT * FROM trials WHERE trial_id = %s", (tid,)).fetchall()
        cur.execute("SELECT * FROM trial_intermediate_values WHERE trial_id = %s AND step = %s",
                    (tid, step)).fetchall()
        cur.execute("INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                    "intermediate_value_type) VALUES (%s, %s, %s, 'FINITE') ON CONFLICT DO NOTHING",
                    (tid, step, 4.0 + 1 / step))
        conn.commit()
        cur.execute("SELECT key, value_json FROM trial_system_attributes WHERE trial_id = %s", (tid,)).fetchall()
        conn.commit()
    if step in w.rungs:
        _attrs(cur, tid, "trial_system_attributes", {f"completed_rung_{w.rungs.index(step)}": 4.0}, cached)
        _read(cur, study_id, w, cached)


def _end_trial(conn, w: VirtualWorker, cached: bool) -> None:
    """The result record, the artifacts' and the time split's attributes, then tell (state and value)."""
    cur, tid = conn.cursor(), w.trial_id
    _attrs(cur, tid, "trial_user_attributes", {k: 1.0 for k in (
        "params", "epochs_run", "best_epoch", "train_loss", "val_loss", "gap", "seconds", "frames_per_second",
        "bleu", "chrf", "vocab_coverage", "repetition_rate", "verdict", "samples")}, cached)
    _attrs(cur, tid, "trial_user_attributes", {"artifacts": "x"}, cached)
    _attrs(cur, tid, "trial_user_attributes", {k: 1.0 for k in ("seconds_train", "seconds_validate",
                                                                 "seconds_evaluate", "seconds_other")}, cached)
    cur.execute("SELECT * FROM trials WHERE trial_id = %s FOR UPDATE", (tid,)).fetchall()
    cur.execute("UPDATE trials SET state = 'COMPLETE', datetime_complete = now() WHERE trial_id = %s", (tid,))
    cur.execute("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (%s, 0, 4.0, 'FINITE')",
                (tid,))
    conn.commit()
    w.trial_id = None


def _heartbeat(conn, tid: int) -> None:
    conn.execute("SELECT * FROM trial_heartbeats WHERE trial_id = %s", (tid,)).fetchall()
    conn.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (%s, now()) ON CONFLICT (trial_id) "
                 "DO UPDATE SET heartbeat = now()", (tid,))
    conn.commit()


def _view(url: str, study_id: int) -> tuple[dict, int, dict]:
    """The study as a warm cache holds it: every trial's state, the last finished id, the row marks."""
    import psycopg

    with psycopg.connect(url, prepare_threshold=None, connect_timeout=30) as conn:
        view = dict(conn.execute("SELECT trial_id, state::text FROM trials WHERE study_id = %s", (study_id,)))
        marks = {t: conn.execute(f"SELECT coalesce(max({pk}), 0) FROM {t}").fetchone()[0]
                 for t, pk in _CHILD_PK.items()}
    floor = max((t for t, st in view.items() if st in _FINISHED), default=-1)
    return view, floor, marks


def generator(url: str, study_id: int, trial_ids: list, trial_s: float, epochs: int, cached: bool,
              seconds: float, seed: int, out, nice: int, done) -> None:
    """V/G virtual workers' storage traffic until `done` is set (at most `seconds`); puts its counts: events
    done and late (> 1 s), trials started, statements sent, trials popped from the queue, failed events.

    Niced: this process stands in for the Python of V/G workers on other machines, so it must not take the
    CPU from the probe (one worker on its own machine); the database work it causes runs at full priority.
    Whether it kept up is in the "late" count and the trials-started rate.
    """
    import psycopg

    os.nice(nice)
    rng = random.Random(seed)
    view, floor, marks = _view(url, study_id)
    t0 = time.monotonic()
    heap: list = []  # (time, seq, kind, step, worker): one trial event per worker at a time, plus heartbeats
    seq = iter(range(10 ** 9))
    for tid in trial_ids:  # the running trials: each virtual worker is part-way through one
        w = VirtualWorker(tid, t0 - rng.uniform(0, trial_s), view, floor, marks, random.Random(rng.random()))
        bracket = w.rng.randrange(3)
        w.rungs = tuple(r for r in (1, 3, 9) if r >= 3 ** bracket)
        step = min(epochs, int((t0 - w.started) / (trial_s / epochs)) + 1)
        heapq.heappush(heap, (w.started + step * trial_s / epochs, next(seq), "epoch", step, w))
        heapq.heappush(heap, (t0 + rng.uniform(0, 10), next(seq), "heartbeat", 0, w))
    lock, end = threading.Lock(), t0 + seconds
    stats = {"done": 0, "late": 0, "started": 0, "statements": 0, "errors": 0, "error": ""}
    popped: list[int] = []

    def run():
        with psycopg.connect(url, prepare_threshold=None, connect_timeout=30) as conn:
            while True:
                with lock:
                    if not heap or heap[0][0] > end or done.is_set():
                        return
                    when, _, kind, step, w = heapq.heappop(heap)
                delay = when - time.monotonic()
                if delay > 0:
                    done.wait(delay)
                try:
                    nxt = event(conn, kind, step, w, when)
                except Exception as exc:  # counted and printed; the virtual worker starts a new trial
                    conn.rollback()
                    stats["errors"] += 1
                    stats["error"] = repr(exc)[:200]
                    w.trial_id, nxt = None, (time.monotonic() + 1.0, "epoch", epochs + 1, w)
                with lock:
                    stats["done"] += 1
                    stats["late"] += time.monotonic() - when > 1.0
                    if nxt is not None:
                        heapq.heappush(heap, (nxt[0], next(seq), *nxt[1:]))

    def event(conn, kind, step, w, when):
        """Do one event; returns the worker's next event (time, kind, step, worker)."""
        if kind == "heartbeat":
            if w.trial_id is not None:
                _heartbeat(conn, w.trial_id)
            return (when + 10, "heartbeat", 0, w)
        if step <= epochs and w.trial_id is not None:
            _epoch(conn, study_id, w, step, cached)
            nxt = time.monotonic() if step == epochs else w.started + (step + 1) * trial_s / epochs
            return (nxt, "epoch", step + 1, w)
        if w.trial_id is not None:
            _end_trial(conn, w, cached)
        _start_trial(conn, study_id, w, cached, popped)
        stats["started"] += 1
        return (w.started + trial_s / epochs, "epoch", 1, w)

    _count_statements(stats)
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({**stats, "popped": popped, "elapsed": time.monotonic() - t0})


def _count_statements(stats: dict) -> None:
    """Count every statement this process's psycopg cursors execute (the process ends after the cell)."""
    import psycopg

    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def counted(real):
        def call(self, *args, **kwargs):
            stats["statements"] += 1
            return real(self, *args, **kwargs)
        return call

    psycopg.Cursor.execute, psycopg.Cursor.executemany = counted(execute), counted(executemany)


# --------------------------------------------------------------------------- the probe worker
class Probe:
    """Times the probe worker's storage calls (main thread, outermost calls only)."""

    def __init__(self):
        self.local, self.main = threading.local(), threading.main_thread()
        self.turn = 0.0
        self.turns: list[float] = []
        self.asks: list[float] = []
        self.asked_ids: list[int] = []
        self.by_method: dict[str, float] = {}
        self.prunes: list[tuple[float, bool]] = []
        self.rung = False
        self.statements = 0  # every SQL statement this process sends (the heartbeat thread's included)
        self.trial_statements: list[int] = []

    def timed(self, fn, name: str = "lock"):
        probe = self

        def call(*args, **kwargs):
            if threading.current_thread() is not probe.main or getattr(probe.local, "depth", 0):
                return fn(*args, **kwargs)
            probe.local.depth = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                probe.local.depth = 0
                dt = time.perf_counter() - t0
                probe.turn += dt
                probe.by_method[name] = probe.by_method.get(name, 0.0) + dt

        return call


def instrument(probe: Probe) -> None:
    import optuna
    import sqlalchemy

    import search.study as study_mod
    from search.storage import FleetCachedStorage, trial_id_of

    # Every public storage call, and the stale-trial check Optuna makes before each trial (its storage call
    # is a private one: timed through the public function around it).
    names = [n for n in dir(FleetCachedStorage) if not n.startswith("_") and callable(getattr(FleetCachedStorage, n))]
    names = [n for n in names if n not in ("invalidate", "get_heartbeat_interval", "limit_new_trials",
                                           "get_heartbeat_stale_trial_callback", "remove_session",
                                           "check_trial_is_updatable", "is_heartbeat_enabled", "study_info",
                                           "trial_location", "cached_trial", "add_to_cache")]
    for n in names:
        setattr(FleetCachedStorage, n, probe.timed(getattr(FleetCachedStorage, n), n))
    optuna.storages.fail_stale_trials = probe.timed(optuna.storages.fail_stale_trials, "fail_stale_trials")

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
    def _count(*_a):
        probe.statements += 1

    real_lock = study_mod.creation_lock

    @contextlib.contextmanager
    def timed_lock(*a, **k):
        t0 = time.perf_counter()
        cm = real_lock(*a, **k)
        cm.__enter__()
        probe.turn += time.perf_counter() - t0
        probe.by_method["study lock"] = probe.by_method.get("study lock", 0.0) + time.perf_counter() - t0
        try:
            yield
        finally:
            t1 = time.perf_counter()
            cm.__exit__(None, None, None)
            probe.turn += time.perf_counter() - t1

    study_mod.creation_lock = timed_lock
    real_optimize, real_ask, real_prune = optuna.Study.optimize, optuna.Study.ask, optuna.Trial.should_prune
    real_sys = FleetCachedStorage.set_trial_system_attr

    def optimize(self, *a, **k):
        before = probe.statements
        try:
            return real_optimize(self, *a, **k)
        finally:
            probe.turns.append(probe.turn)
            probe.turn = 0.0
            probe.trial_statements.append(probe.statements - before)

    def ask(self, *a, **k):
        t0 = time.perf_counter()
        trial = real_ask(self, *a, **k)
        probe.asks.append(time.perf_counter() - t0)
        probe.asked_ids.append(trial_id_of(trial))
        return trial

    def should_prune(self):
        probe.rung, t0 = False, time.perf_counter()
        try:
            return real_prune(self)
        finally:
            probe.prunes.append((time.perf_counter() - t0, probe.rung))

    def set_sys(self, trial_id, key, value):
        probe.rung = probe.rung or key.startswith("completed_rung_")
        return real_sys(self, trial_id, key, value)

    optuna.Study.optimize, optuna.Study.ask, optuna.Trial.should_prune = optimize, ask, should_prune
    FleetCachedStorage.set_trial_system_attr = set_sys


def run_probe(url: str, data: Path, ckpt: Path, n: int, epoch_seconds: float, probe: Probe) -> None:
    from storage import _gpu_like

    import search.worker as worker_mod

    train, evaluate = _gpu_like(epoch_seconds, 0)  # sleeps instead of training: the storage calls are real
    worker_mod.run_worker(worker_mod.WorkerSettings(study="fleet-bench", storage=url, data_root=data, device="cpu",
                                                    n_trials=n, checkpoint_dir=ckpt, artifact_dir=ckpt / "art",
                                                    worker_index=0), log=lambda _m: None, train=train,
                          evaluate=evaluate)


# --------------------------------------------------------------------------- one cell
def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def cell(args, tmp: Path, data: Path, fingerprint: str, v: int, n: int, variant: str, probe: Probe) -> dict:

    from search.storage import study_storage
    from search.study import create_or_load

    route, ttl = VARIANTS[variant]
    db = f"h2s_fleet_{uuid.uuid4().hex[:10]}"
    _pg(ADMIN, f'CREATE DATABASE "{db}"')
    url = _url(db, route, args.pgbouncer_port) + ("?h2s_pooler=none" if route == "direct" else "")
    if ttl is None:
        os.environ.pop("H2S_CACHE_SECONDS", None)  # the shipped default
    else:
        os.environ["H2S_CACHE_SECONDS"] = str(ttl)
    try:
        spec = bench_study("fleet-bench", n_trials=100000, epochs=args.epochs, anchor=False)
        opened = create_or_load(_url(db, "direct", 0), spec, fingerprint, str(data), None)
        study_storage(opened.study).engine.dispose()
        study_id, running = prefill(_url(db, "direct", 0), n, v, args.epochs)
        ctx = mp.get_context("spawn")
        out, done = ctx.Queue(), ctx.Event()
        g = args.generators
        gen_url = _url(db, route, args.pgbouncer_port)
        procs = [ctx.Process(target=generator, args=(gen_url, study_id, running[i::g], args.trial_seconds, args.epochs,
                                                      ttl is None, args.seconds, i, out, args.nice, done))
                 for i in range(g)]
        for pr in procs:
            pr.start()
        conns, maxwait, stop = [], [], threading.Event()

        def watch():
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    conns.append(_pg(ADMIN, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))[0][0])
                    if route == "pgbouncer":
                        rows = _pg(f"postgresql://postgres@127.0.0.1:{args.pgbouncer_port}/pgbouncer", "SHOW POOLS")
                        maxwait.extend(r[13] + r[14] / 1e6 for r in rows if r[0] == db)
                stop.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(args.warmup)  # the load reaches its steady state first
        before, t0 = len(probe.turns), time.perf_counter()
        # One more trial than measured: the first loads the study cold (once per worker, not per trial).
        run_probe(url, data, tmp / "ck", args.probe_trials + 1, args.epoch_seconds, probe)
        probe_s = time.perf_counter() - t0
        done.set()  # the generators stop with the probe (or after --seconds, whichever is first)
        results = [out.get(timeout=args.seconds + 300) for _ in procs]
        for pr in procs:
            pr.join()
        stop.set()
        watcher.join()
        fixed = {r[0] for r in _pg(ADMIN.rsplit("/", 1)[0] + "/" + db,
                                   "SELECT trial_id FROM trial_system_attributes WHERE key = 'fixed_params'")}
        pops = [t for r in results for t in r["popped"]] + [t for t in probe.asked_ids if t in fixed]
        for i, r in enumerate(results):
            if r["errors"]:
                say(f"load generator {i}: {r['errors']} failed event(s), e.g. {r['error']}")
        turns, asks = probe.turns[before + 1:], probe.asks[1:]
        prunes = probe.prunes[args.epochs:]  # roughly: after the cold first trial
        elapsed = max(r["elapsed"] for r in results)
        started = sum(r["started"] for r in results)
        return {"variant": variant, "workers": v, "trials": n, "storage_p50": p(turns, 0.5),
                "storage_p95": p(turns, 0.95), "ask_p95": p(asks, 0.95),
                "prune_p95": p([t for t, rung in prunes if not rung], 0.95),
                "rung_p95": p([t for t, rung in prunes if rung], 0.95), "server_connections": max(conns, default=0),
                "maxwait": max(maxwait, default=0.0), "duplicates": len(pops) - len(set(pops)),
                "events": sum(r["done"] for r in results), "late": sum(r["late"] for r in results),
                "rate": started / elapsed, "target_rate": v / args.trial_seconds,
                "statements": sum(r["statements"] for r in results) / max(1, started),
                "probe_statements": p(probe.trial_statements[before + 1:], 0.5),
                "probe_trials": len(turns), "probe_seconds": probe_s,
                "top": sorted(probe.by_method.items(), key=lambda kv: -kv[1])[:6]}
    finally:
        _pg(ADMIN, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        probe.asks.clear()
        probe.prunes.clear()
        probe.asked_ids.clear()
        probe.by_method.clear()


def ensure_pgbouncer(port: int, pool: int) -> None:
    try:
        _pg(f"postgresql://postgres@127.0.0.1:{port}/pgbouncer", "SHOW VERSION")
        return
    except Exception:
        pass
    script = Path(__file__).resolve().parents[1] / ".ci" / "pgbouncer"
    env = {**os.environ, "PGBOUNCER_PORT": str(port), "PGBOUNCER_POOL_SIZE": str(pool)}
    res = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"no pgbouncer on port {port} and could not start one: {res.stderr.strip()}")
    say(f"started pgbouncer on 127.0.0.1:{port} (pool {pool}); config in {res.stdout.strip()}")


# --------------------------------------------------------------------------- joins
# A route, and "-blocking" for the lock waited for inside the server (as before issue 17 when the URL did
# not declare the pooler; "undeclared-blocking" is the deadlock, ended by pgbouncer's query_wait_timeout).
JOIN_VARIANTS = ("declared", "undeclared", "direct", "direct-blocking", "undeclared-blocking")


def _join_child(url: str, go, out, blocking: bool) -> None:
    """One worker's join, when `go` is set: (pid, monotonic time when done, worker number, error)."""
    from search.storage import LOCK_IN_SERVER_ENV, study_storage
    from search.study import load_stored

    if blocking:  # what the lock did before issue 17 when it was not told of a pooler (this process only)
        os.environ[LOCK_IN_SERVER_ENV] = "1"
    go.wait()
    try:
        opened = load_stored(url, "fleet-bench", worker_index=None)
        out.put((os.getpid(), time.monotonic(), opened.worker_index, None))
        study_storage(opened.study).engine.dispose()
    except BaseException as exc:  # reported, not raised: the parent counts failed joins
        out.put((os.getpid(), time.monotonic(), None, f"{type(exc).__name__}: {str(exc)[:200]}"))


def join_cell(args, fingerprint: str, data: Path, n: int, variant: str) -> dict:
    """N workers joining one fresh study at once: seconds until all have joined, and what the server saw."""
    from search.storage import study_storage
    from search.study import create_or_load

    db = f"h2s_join_{uuid.uuid4().hex[:10]}"
    _pg(ADMIN, f'CREATE DATABASE "{db}"')
    direct = _url(db, "direct", 0)
    route = variant.removesuffix("-blocking")
    url = {"declared": _url(db, "pgbouncer", args.join_port) + "?h2s_pooler=pgbouncer",
           "undeclared": _url(db, "pgbouncer", args.join_port)}.get(route, direct)
    try:
        spec = bench_study("fleet-bench", n_trials=1000, epochs=args.epochs, anchor=False)
        study_storage(create_or_load(direct, spec, fingerprint, str(data), None).study).engine.dispose()
        ctx = mp.get_context("fork")  # imports done once, here: the clock measures the joins alone
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_join_child, args=(url, go, out, variant.endswith("-blocking")))
                 for _ in range(n)]
        for pr in procs:
            pr.start()
        conns, stop = [], threading.Event()
        watcher = threading.Thread(target=_watch_connections, args=(db, conns, stop), daemon=True)
        watcher.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        go.set()
        results = [out.get(timeout=args.join_timeout) for _ in procs]
        for pr in procs:
            pr.join(30)
        stop.set()
        watcher.join()
    finally:
        _pg(ADMIN, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    done = sorted(t - t0 for _, t, number, error in results if error is None)
    errors = [error for *_, error in results if error is not None]
    numbers = sorted(number for *_, number, error in results if error is None)
    return {"variant": variant, "joins": n, "all_joined": done[-1] if done and not errors else float("nan"),
            "median": done[len(done) // 2] if done else float("nan"), "failed": len(errors),
            "error": errors[0] if errors else "", "numbered": numbers == list(range(n)),
            "server_connections": max(conns, default=0)}


def _watch_connections(db: str, conns: list, stop) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            conns.append(_pg(ADMIN, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))[0][0])
        stop.wait(0.1)


def start_pgbouncer(port: int, cap: int) -> Path:
    """A pgbouncer of our own (transaction pooling, at most `cap` server connections per database); its folder."""
    script = Path(__file__).resolve().parents[1] / ".ci" / "pgbouncer"
    env = {**os.environ, "PGBOUNCER_PORT": str(port), "PGBOUNCER_POOL_SIZE": str(cap),
           "PGBOUNCER_MAX_DB_CONNECTIONS": str(cap), "PGBOUNCER_QUERY_WAIT_TIMEOUT": "120"}
    res = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"could not start pgbouncer on port {port}: {res.stderr.strip()}")
    return Path(res.stdout.strip().splitlines()[-1])


def joins(args, fingerprint: str, data: Path) -> None:
    folder = start_pgbouncer(args.join_port, args.join_cap)
    say(f"pgbouncer on 127.0.0.1:{args.join_port}, at most {args.join_cap} server connections per database; "
        f"machine load {os.getloadavg()[0]:.2f}")
    rows = []
    try:
        for n in map(int, args.joins.split(",")):
            for variant in args.join_variants.split(","):
                r = join_cell(args, fingerprint, data, n, variant)
                rows.append(r)
                say(f"{variant:>15} {n:>3} joins: all joined in {r['all_joined']:.2f} s (median {r['median']:.2f} s); "
                    f"failed {r['failed']} {r['error']}; numbered 0..{n - 1}: {r['numbered']}; server connections "
                    f"{r['server_connections']}")
    finally:
        os.kill(int((folder / "pgbouncer.pid").read_text()), signal.SIGTERM)
    say("\n| joining at once | route | all joined | median | failed | server connections |\n|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['joins']} | {r['variant']} | {r['all_joined']:.2f} s | {r['median']:.2f} s | {r['failed']} | "
            f"{r['server_connections']} |")


def main() -> None:
    def extra(ap):
        ap.add_argument("--workers", default="256", help="virtual workers, comma-separated (e.g. 32,64,128,256)")
        ap.add_argument("--trials", default="5000", help="trials in the study, comma-separated (500,2500,5000)")
        ap.add_argument("--variants", default="direct,pgbouncer,cache")
        ap.add_argument("--epochs", type=int, default=10)
        ap.add_argument("--trial-seconds", type=float, default=30.0)
        ap.add_argument("--epoch-seconds", type=float, default=0.3, help="the probe's sleep per epoch")
        ap.add_argument("--probe-trials", type=int, default=6)
        ap.add_argument("--seconds", type=float, default=120.0, help="longest load-generator run per cell")
        ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the probe starts")
        ap.add_argument("--nice", type=int, default=10, help="niceness of the load generators (see generator())")
        ap.add_argument("--generators", type=int, default=3)
        ap.add_argument("--pgbouncer-port", type=int, default=BENCH_PORT)
        ap.add_argument("--pool-size", type=int, default=20)
        ap.add_argument("--joins", default="", help="only time N simultaneous joins, comma-separated (12,48)")
        ap.add_argument("--join-variants", default="declared,undeclared",
                        help=f"of {', '.join(JOIN_VARIANTS)} (direct ones open about 2 connections per join)")
        ap.add_argument("--join-port", type=int, default=BENCH_PORT + 1)
        ap.add_argument("--join-cap", type=int, default=6, help="server connections the joins' pgbouncer opens")
        ap.add_argument("--join-timeout", type=float, default=600.0)

    args = parse_args("Storage of a V-worker fleet on PostgreSQL: direct, pgbouncer, pgbouncer + cache.", extra)
    if args.quick:
        args.workers, args.trials, args.probe_trials = "32", "500", 2
    os.environ.setdefault("H2S_HEARTBEAT_INTERVAL", "10")
    os.environ.setdefault("H2S_GRACE_PERIOD", "40")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.joins:
        with workdir(args.keep, "h2s-bench-joins-") as tmp:
            from how2sign.batches import TrainData

            data = make_corpus(tmp / "corpus", train=24, val=8, test=8)
            joins(args, TrainData.load(data).fingerprint, data)
        return
    ensure_pgbouncer(args.pgbouncer_port, args.pool_size)
    probe = Probe()
    instrument(probe)
    rows = []
    with workdir(args.keep, "h2s-bench-fleet-") as tmp:
        from how2sign.batches import TrainData

        data = make_corpus(tmp / "corpus", train=24, val=8, test=8)
        fingerprint = TrainData.load(data).fingerprint
        for n in map(int, args.trials.split(",")):
            for v in map(int, args.workers.split(",")):
                for variant in args.variants.split(","):
                    r = cell(args, tmp, data, fingerprint, v, n, variant, probe)
                    rows.append(r)
                    say(f"{variant:>9} V={v:<3} N={n:<5} storage/trial p50 {r['storage_p50'] * 1000:6.0f} ms "
                        f"p95 {r['storage_p95'] * 1000:6.0f} ms ({r['storage_p95'] / args.trial_seconds:.2%} of "
                        f"{args.trial_seconds:g} s); ask p95 {r['ask_p95'] * 1000:.0f} ms; should_prune p95 "
                        f"{r['prune_p95'] * 1000:.1f} ms, at rungs {r['rung_p95'] * 1000:.1f} ms; server "
                        f"connections {r['server_connections']}; pgbouncer maxwait {r['maxwait']:.3f} s; popped "
                        f"twice {r['duplicates']}; load: {r['rate']:.1f} trials/s started of {r['target_rate']:.1f} "
                        f"(events {r['events']}, {r['late']} late > 1 s); SQL statements per trial: virtual "
                        f"worker {r['statements']:.0f}, probe {r['probe_statements']:.0f}; probe "
                        f"{r['probe_trials']} trials; its largest storage calls (all trials, s): "
                        + ", ".join(f"{k} {t:.2f}" for k, t in r["top"]))
    say("\n| variant | V | N | storage/trial p50 | p95 | p95 / 30 s | ask p95 | should_prune p95 | at rung p95 | "
        "server conns | maxwait | popped twice |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['variant']} | {r['workers']} | {r['trials']} | {r['storage_p50'] * 1000:.0f} ms | "
            f"{r['storage_p95'] * 1000:.0f} ms | {r['storage_p95'] / args.trial_seconds:.2%} | "
            f"{r['ask_p95'] * 1000:.0f} ms | {r['prune_p95'] * 1000:.1f} ms | {r['rung_p95'] * 1000:.1f} ms | "
            f"{r['server_connections']} | {r['maxwait']:.3f} s | {r['duplicates']} |")
    head = [r for r in rows if r["variant"] == "cache"]
    if head:
        r = max(head, key=lambda x: (x["workers"], x["trials"]))
        say(f"\nverdict at V={r['workers']}, N={r['trials']} (pgbouncer + cache):")
        verdict("storage per trial p95", r["storage_p95"] * 1000, 600, at_least=False, unit=" ms")
        verdict("ask p95", r["ask_p95"] * 1000, 150, at_least=False, unit=" ms")
        verdict("should_prune p95", r["prune_p95"] * 1000, 10, at_least=False, unit=" ms")
        verdict("should_prune p95 at a rung", r["rung_p95"] * 1000, 50, at_least=False, unit=" ms")
        verdict("PostgreSQL server connections", r["server_connections"], 40, at_least=False)
        verdict("trials popped twice", r["duplicates"], 0, at_least=False)


if __name__ == "__main__":
    run_main(main)
