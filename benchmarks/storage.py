"""Storage: the time a worker spends in the database per trial, divided by the trial's time.

8 real workers (`search.worker.run_worker`, the code `h2s-search worker` runs: BudgetGate, heartbeat,
retry callback, TPE sampler, Hyperband pruner, artifact upload) share one study in a fresh database on
the local PostgreSQL, over TCP. Trials are short on purpose, so storage weighs as much as it ever will.
Two kinds of trial:

  * gpu-like: the worker's real objective, with the training and decoding replaced by a wait of
    --epoch-seconds per epoch (as when a GPU computes and the CPU is idle). Every storage call of a real
    trial still happens: attributes, per-epoch report and pruning, artifacts, the anchor note. This is the
    fleet's situation (one worker per GPU), and it gives the verdict.
  * tiny: the real objective end to end, training the fleet tests' tiny model on the CPU. With 8 workers
    on a 2-core machine the trainings fight for the CPU and each storage call waits for a core, so this
    is an upper bound, printed for information.

In each worker, every storage call that reaches the database (each `@reconnecting` method of
ReconnectingRDBStorage, outermost call only: Optuna's calls, and the fleet cache's narrow reads and
one-statement writes) and the study lock (taken when the worker joins, waiting included) are timed. A trial's time
is one turn of the worker loop (gate + optimize). "Storage" is what the worker's main thread spends in
those calls; the heartbeat thread's calls run beside the training and are reported apart.

Projection for a 30 s trial: the storage time per trial splits into a fixed part and a per-epoch part
(report, should_prune; one write per epoch); a 30 s trial is shown with the same epochs as measured and with
30 epochs of 1 s. Target (docs/architecture.md, benchmarks): <= 2% for a 30 s trial. The peak and mean number of
connections to the database (pg_stat_activity) are printed too.

    python benchmarks/storage.py [--quick] [--objective gpu-like|tiny|both] [--workers 8] [--epochs 3]
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

from _common import bench_study, header, make_corpus, parse_args, run_main, say, verdict, workdir

TARGET = 0.02
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PER_EPOCH = ("report", "should_prune", "epochs_run")

# --------------------------------------------------------------------------- inside each worker process
class Meter:
    """Wall time of storage calls, per thread kind, outermost calls only; plus the trial loop's time."""

    def __init__(self):
        self.local = threading.local()
        self.main = threading.main_thread()
        self.lock = threading.Lock()
        self.in_loop = False
        self.totals = {"storage": 0.0, "lock": 0.0, "loop": 0.0, "heartbeat": 0.0, "storage_calls": 0,
                       "heartbeat_calls": 0, "turns": 0, "per_epoch": 0.0, "per_epoch_calls": 0, "storage_cpu": 0.0}
        self.by_method: dict[str, list] = {}

    def timed(self, name: str, fn):
        def call(*args, **kwargs):
            if getattr(self.local, "depth", 0):
                return fn(*args, **kwargs)
            self.local.depth = 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.local.depth = 0
                self.add(name, dt, time.thread_time() - c0)

        return call

    def add(self, name: str, dt: float, cpu: float = 0.0) -> None:
        with self.lock:
            if threading.current_thread() is not self.main:
                self.totals["heartbeat"] += dt
                self.totals["heartbeat_calls"] += 1
            elif self.in_loop:
                self.totals["storage"] += dt
                self.totals["storage_cpu"] += cpu
                self.totals["storage_calls"] += 1
                m = self.by_method.setdefault(name, [0, 0.0])
                m[0] += 1
                m[1] += dt


def _gpu_like(epoch_seconds: float, seed: int):
    """Stand-ins for train() and evaluate_checkpoint(): wait instead of computing, report like train().

    Epochs last epoch_seconds x U(0.5, 1.5), so that the workers drift apart as on a real fleet instead of
    finishing (and writing) in lockstep.
    """
    import random
    from types import SimpleNamespace

    rng = random.Random(seed)

    from how2sign.run_metrics import RunMetrics
    from how2sign.train import Ending, TrainResult

    def train(cfg, data, out, *, device="cpu", resume=False, report=None, should_stop=None, on_epoch=None, **_):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        base = 3.0 + 10 * abs(cfg.lr - 1e-3) + cfg.dropout  # a loss that depends on the parameters
        state = {"best_epoch": 0, "best_val_loss": float("inf"), "history": []}
        meta = {"params": 30784, "device": "cpu"}
        t0 = time.perf_counter()
        for epoch in range(1, cfg.total_epochs + 1):
            time.sleep(epoch_seconds * rng.uniform(0.5, 1.5))
            val = base + 1.0 / epoch
            rec = {"epoch": epoch, "train_loss": val - 0.05, "val_loss": val, "lr": cfg.lr,
                   "seconds": epoch_seconds, "seconds_validate": 0.0, "frames_per_second": 1000.0}
            state["history"].append(rec)
            if val < state["best_val_loss"]:
                state.update(best_epoch=epoch, best_val_loss=val)
            RunMetrics(**meta, **state).write(out)
            if report:
                report(epoch, val)
        best = state["history"][state["best_epoch"] - 1]
        return TrainResult(best_val_loss=state["best_val_loss"], best_epoch=state["best_epoch"],
                           train_loss=best["train_loss"], gap=0.05, epochs_run=cfg.total_epochs, params=30784,
                           ending=Ending.BUDGET, seconds=time.perf_counter() - t0,
                           frames_per_second=1000.0, device="cpu", out_dir=str(out), resumed_from_epoch=None,
                           history=state["history"], seconds_train=epoch_seconds * cfg.total_epochs)

    def evaluate(*_a, **_k):
        refs = ["and that ought to do it ."] * 5
        return SimpleNamespace(bleu=1.0, chrf=10.0, vocab_coverage=0.1, repetition_rate=0.0, verdict="none",
                               references=refs, hypotheses=refs)

    return train, evaluate


def _bench_worker(url: str, study: str, data: str, index: int, ckpt: str, mode: str, epoch_seconds: float,
                  out, barrier, batch: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # warm: the first learning-curve plot should not pay for the import
    import optuna

    import search.storage as storage
    import search.study as study_mod
    import search.worker as worker_mod
    from how2sign.batches import TrainData

    seams = {}
    if mode == "gpu-like":  # the runner's seams: stand-ins for train() and evaluate_checkpoint()
        seams["train"], seams["evaluate"] = _gpu_like(epoch_seconds, index)

    meter = Meter()
    cls = storage.ReconnectingRDBStorage  # the class open_storage builds for PostgreSQL / MySQL
    if not batch:  # --no-batch: one transaction per attribute, as before the batching
        def one_by_one(self, trial_id, attrs):
            for key, value in attrs.items():
                self.set_trial_user_attr(trial_id, key, value)

        cls.set_trial_user_attrs = one_by_one
    for name in storage.reconnecting_methods(cls):  # every call that reaches the database
        setattr(cls, name, meter.timed(name, getattr(cls, name)))

    real_lock = study_mod.creation_lock

    @contextlib.contextmanager
    def timed_lock(*args, **kwargs):
        cm = real_lock(*args, **kwargs)
        t0 = time.perf_counter()
        cm.__enter__()
        meter.add("study lock", time.perf_counter() - t0)
        try:
            yield
        finally:
            t1 = time.perf_counter()
            cm.__exit__(None, None, None)
            meter.add("study lock", time.perf_counter() - t1)

    study_mod.creation_lock = timed_lock

    # One loop turn = gate.enter() + optimize(n_trials=1): that is the trial's time as the fleet sees it.
    def turn(fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            meter.in_loop = True
            try:
                return fn(*args, **kwargs)
            finally:
                meter.in_loop = False
                meter.totals["loop"] += time.perf_counter() - t0

        return call

    study_mod.BudgetGate.enter = turn(study_mod.BudgetGate.enter)
    optuna.Study.optimize = turn(optuna.Study.optimize)

    # Per-epoch storage work: trial.report and trial.should_prune (a single-objective trial writes no
    # per-epoch attribute; epochs_run is recorded when it ends). The epochs_run wrapper counts older workers.
    def per_epoch(fn, label):
        def call(*args, **kwargs):
            if label == "epochs_run" and args[1] != "epochs_run":
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                meter.totals["per_epoch"] += time.perf_counter() - t0
                meter.totals["per_epoch_calls"] += label == "report"

        return call

    optuna.Trial.report = per_epoch(optuna.Trial.report, "report")
    optuna.Trial.should_prune = per_epoch(optuna.Trial.should_prune, "should_prune")
    optuna.Trial.set_user_attr = per_epoch(optuna.Trial.set_user_attr, "epochs_run")

    TrainData.load(Path(data))  # warm: the page cache and the imports, before the clock starts
    barrier.wait()  # every worker is ready, imports done; then they join one by one, as a fleet does
    if mode == "gpu-like":
        time.sleep(index * epoch_seconds / 2)
    t0 = time.perf_counter()
    res = worker_mod.run_worker(worker_mod.WorkerSettings(
        study=study, storage=url, data_root=Path(data), device="cpu", checkpoint_dir=Path(ckpt),
        artifact_dir=Path(ckpt) / "artifacts", worker_index=index), log=lambda _m: None, **seams)
    out.put({"index": index, "ran": res.ran, "wall": time.perf_counter() - t0, **meter.totals,
             "by_method": meter.by_method})


# --------------------------------------------------------------------------- the parent
def _pg(url: str, sql: str, params: tuple = ()):
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def main() -> None:
    def extra(p):
        p.add_argument("--objective", choices=("gpu-like", "tiny", "both"), default="both")
        p.add_argument("--workers", type=int, default=8)
        p.add_argument("--trials", type=int, default=None, help="study budget (default 3 per worker)")
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--epoch-seconds", type=float, default=5.0,
                       help="gpu-like: mean seconds per epoch (5: 15 s trials, so 8 workers' own CPU work, about "
                            "1 s per trial for the sampler, the plots and the ORM, leaves 2 cores some room)")
        p.add_argument("--admin-url", default=os.environ.get("H2S_BENCH_PG", ADMIN_URL),
                       help="a PostgreSQL URL allowed to CREATE DATABASE (a fresh one is made per run, then dropped)")
        p.add_argument("--json", action="store_true", help="also print one JSON line per run with every figure")
        p.add_argument("--no-batch", action="store_true",
                       help="write user attributes one transaction each (for comparison with the batched writes)")

    args = parse_args("Storage time per trial / trial time, 8 workers on PostgreSQL.", extra)
    header("storage", args.quick)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 8 workers on a few cores: no oversubscription of threads
    modes = ["gpu-like", "tiny"] if args.objective == "both" else [args.objective]
    if args.quick:
        modes = modes[:1]
    verdicts = []
    with workdir(args.keep, "h2s-bench-storage-") as tmp:
        data = make_corpus(tmp / "corpus", train=24, val=8, test=8)
        for mode in modes:
            verdicts.append(_measure(args, tmp, data, mode))
    say("storage benchmark: " + "; ".join(verdicts))


def _measure(args, tmp: Path, data: Path, mode: str) -> str:

    from how2sign.batches import TrainData
    from search.storage import study_storage
    from search.study import create_or_load

    n_trials = args.trials or args.workers * (2 if args.quick else 3)
    epochs = 2 if args.quick else args.epochs
    db = f"h2s_bench_{uuid.uuid4().hex[:10]}"
    admin = args.admin_url
    _pg(admin, f'CREATE DATABASE "{db}"')
    url = admin.rsplit("/", 1)[0] + "/" + db
    what = (f"waits {args.epoch_seconds:g}s per epoch instead of computing" if mode == "gpu-like"
            else "trains the tiny model on the CPU")
    say(f"\n-- {mode}: {args.workers} workers, {n_trials} trials of {epochs} epochs; the objective {what}; "
        f"fresh database {db}")
    try:
        spec = bench_study("storage-bench", n_trials=n_trials, epochs=epochs, anchor=True)
        opened = create_or_load(url, spec, TrainData.load(data).fingerprint, str(data), n_trials)
        study_storage(opened.study).engine.dispose()
        figures = _fleet(args, tmp / mode, data, url, db, admin, spec.name, mode, epochs)
    finally:
        _pg(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if args.json:
        print(json.dumps({"objective": mode, **figures}))
    ok = verdict(f"{mode}: storage share of a 30 s trial (30 epochs of 1 s)", figures["ratio_30s_30_epochs"] * 100,
                 TARGET * 100, at_least=False, unit="%")
    return f"{mode} {'PASS' if ok else 'FAIL'} {figures['ratio_30s_30_epochs']:.2%}"


def _fleet(args, tmp: Path, data: Path, url: str, db: str, admin: str, study: str, mode: str, epochs: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(args.workers)
    procs = [ctx.Process(target=_bench_worker, args=(url, study, str(data), i, str(tmp / "ck"), mode,
                                                     args.epoch_seconds, out, barrier, not args.no_batch))
             for i in range(args.workers)]
    counts: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            with contextlib.suppress(Exception):
                counts.append(_pg(admin, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))[0][0])
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    for p in procs:
        p.start()
    results = []
    try:
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=5))
            except Exception:  # queue.Empty: make sure nobody died without reporting
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise SystemExit(f"{len(dead)} benchmark worker(s) crashed (exit {dead[0].exitcode})") from None
        for p in procs:
            p.join()
    finally:
        stop.set()
        watcher.join()
        for p in procs:
            if p.is_alive():
                p.kill()
    wall = time.perf_counter() - t0

    def total(key):
        return sum(r[key] for r in results)

    trials = total("ran")
    trial_s, storage_s = total("loop") / trials, total("storage") / trials
    epochs_reported = total("per_epoch_calls")
    epoch_s = total("per_epoch") / max(epochs_reported, 1)              # storage per reported epoch
    fixed_s = max(storage_s - epoch_s * epochs_reported / trials, 0.0)
    hb, hb_calls, calls = total("heartbeat"), total("heartbeat_calls"), total("storage_calls")
    methods: dict[str, list] = {}
    for r in results:
        for name, (n, t) in r["by_method"].items():
            m = methods.setdefault(name, [0, 0.0])
            m[0] += n
            m[1] += t
    lock_s = methods.get("study lock", [0, 0.0])[1] / trials
    cpu_s = total("storage_cpu") / trials
    live = [c for c in counts if c]
    fig = {"workers": len(results), "trials": trials, "epochs": epochs, "wall_seconds": wall,
           "trial_seconds": trial_s, "storage_seconds_per_trial": storage_s, "lock_seconds_per_trial": lock_s, "storage_cpu_seconds": cpu_s,
           "storage_fixed_seconds": fixed_s, "storage_seconds_per_epoch": epoch_s,
           "ratio_measured": storage_s / trial_s, "ratio_30s_same_epochs": storage_s / 30.0,
           "ratio_30s_30_epochs": (fixed_s + 30 * epoch_s) / 30.0, "connections_peak": max(counts, default=0),
           "connections_mean": statistics.mean(live) if live else 0.0,
           "heartbeat_ms": hb / max(hb_calls, 1) * 1000, "calls_per_trial": calls / trials}
    say(f"{trials} trials by {len(results)} workers in {wall:.1f}s; {calls / trials:.0f} storage calls per trial "
        f"on the trial path, {hb_calls} heartbeats beside them ({fig['heartbeat_ms']:.1f} ms each)")
    say(f"per trial: {trial_s:.2f}s of trial, {storage_s * 1000:.0f} ms in storage ({lock_s * 1000:.0f} ms of it "
        f"taking and releasing the study lock, waiting included; {cpu_s * 1000:.0f} ms CPU in the worker); "
        f"that is {fixed_s * 1000:.0f} ms fixed + {epoch_s * 1000:.1f} ms per epoch")
    say("largest: " + ", ".join(f"{k} {v[1] / trials * 1000:.0f} ms ({v[0] / trials:.1f} calls)"
                                for k, v in sorted(methods.items(), key=lambda kv: -kv[1][1])[:5]) + " per trial")
    say(f"connections to the database: peak {fig['connections_peak']}, mean {fig['connections_mean']:.1f} for "
        f"{len(results)} worker processes (each: pool_size 2 + max_overflow 2, and the study lock's own "
        "connection while it admits a trial)")
    say(f"measured: storage / trial time = {fig['ratio_measured']:.2%} for {trial_s:.1f}s trials of {epochs} epochs")
    say(f"projected for a 30 s trial: {fig['ratio_30s_same_epochs']:.2%} with {epochs} epochs, "
        f"{fig['ratio_30s_30_epochs']:.2%} with 30 epochs of 1 s")
    return fig


if __name__ == "__main__":
    run_main(main)
