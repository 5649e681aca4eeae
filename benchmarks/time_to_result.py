"""Time to result: the default `h2s-search start` against the plain Optuna script a user would write instead.

Both arms search the same space on the same budget (the shipped `capacity` study: its space, sampler seed
and anchor; by default 14 trials of 10 epochs) over the same training library, on a How2Sign-format
corpus in the release layout, packed once beforehand:

  service: `h2s-search start --study <that file> --data <corpus>` as a user runs it, all defaults: one
           single-threaded worker per core, ASHA, the anchor enqueued once, SQLite.
  plain:   the script below, as a user would write it with Optuna's defaults: one process, TPE and
           MedianPruner, V4 enqueued by hand, each epoch's validation loss reported, train() from
           how2sign, the space's suggest calls written out.

Both arms are one subprocess each and run on the same clock: it starts when the subprocess is launched (so
each arm pays its own interpreter start, imports and data loading; the plain script gets the launch time as
an argument) and a trial's time is its `datetime_complete` against it; an arm's total is launch to exit.
The arms are interleaved over the sampler seeds, the service first on even seeds and the plain script first
on odd ones (service, plain, plain, service, ...), so neither always runs on a machine the other has just
warmed or loaded. For each seed and arm it prints, and then per arm as medians over the seeds:
  - seconds to the first trial 30 % and 40 % better than V4 (the arm's own anchor value), counted when
    both it and the anchor have ended: only then is it known to be better. An arm that never got there
    counts its total seconds, a lower bound, printed as ">N"; a ratio computed with one is a bound too
    (">": the plain script never got there, "<": the service never did), and a median is marked as a bound
    where such values could move it ("~": either way). A seed where neither arm got there has no ratio;
    it is left out of that median, and the output says so;
  - the best value at the plain script's end (the service's best among trials that ended by then);
  - total seconds, and the epochs trained (of trials x epochs, the budget unpruned and without early
    stopping);
  - the ratios plain / service of the times to 30 % and 40 % and of the total seconds, per seed and median.
Targets (issue 19): the median time to 30 % better is >= 3x faster than the plain script's, and the
service's median best value at the plain script's end is within 1 % of the plain script's, or better.

    python benchmarks/time_to_result.py [--quick] [--seeds 0,1,2] [--trials 14] [--epochs 10] [--train-clips 300]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from _common import header, make_corpus, parse_args, run_main, say, verdict, workdir

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 3.0
TARGET_BEST = 0.01
GAINS = (0.30, 0.40)

PLAIN = '''
import json, sys
from pathlib import Path

import optuna

from how2sign.batches import TrainData
from how2sign.config import TrainConfig
from how2sign.train import train

study_file, data_root, out_root, seed, n_trials = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t0 = float(sys.argv[6])  # when the benchmark launched this process: the service arm's clock starts there too
import tomllib
spec = tomllib.loads(Path(study_file).read_text())
fixed, space, v4 = spec["train"], spec["space"], spec["anchor"]["params"]
data = TrainData.load(data_root)
ended = []

def objective(trial):
    values = {}
    for name, p in space.items():
        if p["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "int":
            values[name] = trial.suggest_int(name, p["low"], p["high"])
        else:
            values[name] = trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False))
    cfg = TrainConfig.from_dict({**fixed, **values})

    def report(epoch, val_loss):
        trial.report(val_loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return train(cfg, data, out_root / f"trial-{trial.number}", device="cpu", report=report).best_val_loss

def note(study, t):
    ended.append({"number": t.number, "state": t.state.name, "value": t.value,
                  "at": t.datetime_complete.astimezone().timestamp() - t0,
                  "epochs": max(t.intermediate_values, default=0), "anchor": t.number == 0, "params": t.params})

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                            pruner=optuna.pruners.MedianPruner())
study.enqueue_trial(v4)
study.optimize(objective, n_trials=n_trials, callbacks=[note])
print(json.dumps({"trials": ended}))
'''


def study_text(args, seed: int) -> str:
    """capacity.toml as shipped, with this benchmark's budget and sampler seed (text edits, checked)."""
    text = (REPO / "studies" / "capacity.toml").read_text()
    text = text.split("\n[demo]")[0]
    edits = (('name = "capacity"', f'name = "ttr-{seed}"'), ("n_trials = 40", f"n_trials = {args.trials}"),
             ("epochs = 30", f"epochs = {args.epochs}"), ("seed = 0\nn_startup_trials", f"seed = {seed}\nn_startup_trials"))
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    tomllib.loads(text)
    return text


def run_service(args, tmp: Path, data: Path, seed: int) -> dict:
    import optuna

    folder = tmp / f"service-{seed}"
    folder.mkdir()
    (folder / "study.toml").write_text(study_text(args, seed))
    url = f"sqlite:///{folder / 's.db'}"
    t0 = time.time()  # launch: the arm pays its interpreter start, imports and data loading
    subprocess.run([sys.executable, "-m", "search.cli", "start", "--study", str(folder / "study.toml"), "--storage",
                    url, "--data", str(data), "--json"], cwd=folder, check=True, capture_output=True, text=True,
                   env={**os.environ, "H2S_HOME": str(folder / "home")})
    seconds = time.time() - t0
    study = optuna.load_study(study_name=f"ttr-{seed}", storage=url)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "at": t.datetime_complete.astimezone().timestamp() - t0, "epochs": t.user_attrs.get("epochs_run") or 0,
               "anchor": bool(t.user_attrs.get("anchor"))} for t in study.trials if t.datetime_complete]
    return {"seconds": seconds, "trials": trials}


def run_plain(args, tmp: Path, data: Path, seed: int) -> dict:
    folder = tmp / f"plain-{seed}"
    folder.mkdir()
    (folder / "study.toml").write_text(study_text(args, seed))
    (folder / "plain.py").write_text(PLAIN)
    t0 = time.time()  # launch, as the service arm's; the script measures its trials against it
    res = subprocess.run([sys.executable, str(folder / "plain.py"), str(folder / "study.toml"), str(data),
                          str(folder / "runs"), str(seed), str(args.trials), repr(t0)], cwd=folder, check=True,
                         capture_output=True, text=True)
    seconds = time.time() - t0
    return {"seconds": seconds, **json.loads(res.stdout.strip().splitlines()[-1])}


def figures(run: dict, until: float | None = None) -> dict:
    """Times to the first trial better than V4 by each gain, the best value (by `until`), epochs spent.

    A time is (seconds, reached): an arm that never got there has its total seconds, a lower bound."""
    done = sorted((t for t in run["trials"] if t["state"] == "COMPLETE" and t["value"] is not None),
                  key=lambda t: t["at"])
    anchor_trial = next((t for t in done if t["anchor"]), None)
    anchor = anchor_trial["value"] if anchor_trial else None
    out = {"anchor": anchor, "seconds": run["seconds"], "epochs": sum(t["epochs"] for t in run["trials"])}
    for gain in GAINS:
        hit = next((t["at"] for t in done if anchor and t["value"] <= (1 - gain) * anchor), None)
        # known to be better only once V4's own value is in: a trial that ends first waits for the anchor
        out[f"to_{int(gain * 100)}"] = (run["seconds"], False) if hit is None else (max(hit, anchor_trial["at"]), True)
    by = [t["value"] for t in done if until is None or t["at"] <= until]
    out["best"] = min(by) if by else None
    return out


# A value with what is known of it: "=" exact, ">" a lower bound, "<" an upper bound, "~" bounds either way.
MARK = {"=": "", ">": ">", "<": "<", "~": "~"}


def _secs(t: tuple[float, bool]) -> str:
    return f"{t[0]:.0f}" if t[1] else f">{t[0]:.0f}"


def _fmt(v, spec=".0f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(plain: tuple[float, bool], service: tuple[float, bool]) -> tuple[float, str] | None:
    """plain / service seconds, and what is known of it; None where neither arm got there."""
    kind = {(True, True): "=", (False, True): ">", (True, False): "<"}.get((plain[1], service[1]))
    return None if kind is None else (plain[0] / service[0], kind)


def median_of(items: list[tuple[float, str]]) -> tuple[float, str]:
    """The median of (value, kind) items, and what is known of it: a bound where a bound could move it (a
    lower bound at or below the middle, an upper bound at or above it)."""
    ranked = sorted(items)
    lo, hi = (len(ranked) - 1) // 2, len(ranked) // 2
    moves = {k for i, (_, k) in enumerate(ranked) if (k == ">" and i <= hi) or (k == "<" and i >= lo)}
    kind = "=" if not moves else moves.pop() if len(moves) == 1 else "~"
    return statistics.median(v for v, _ in ranked), kind


def main() -> None:
    def extra(p):
        p.add_argument("--seeds", default=None, help="sampler seeds, comma-separated (default 0,1,2; --quick: 0)")
        p.add_argument("--trials", type=int, default=14)
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--train-clips", type=int, default=300)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.quick:
        args.trials, args.epochs, args.train_clips = 4, 2, 60
    args.seeds = args.seeds or ("0" if args.quick else "0,1,2")
    header("time to result", args.quick)
    seeds = [int(s) for s in args.seeds.split(",")]
    with workdir(args.keep, "h2s-bench-ttr-") as tmp:
        data = make_corpus(tmp / "corpus", train=args.train_clips, val=max(20, args.train_clips // 6),
                           test=max(20, args.train_clips // 6))
        from how2sign.batches import TrainData

        TrainData.load(data)  # packed once, before either arm
        rows = []
        for seed in seeds:  # interleaved, the first arm alternating: a drift of the machine's load hits both
            runs = {}
            for arm in (("service", "plain") if seed % 2 == 0 else ("plain", "service")):
                runs[arm] = (run_service if arm == "service" else run_plain)(args, tmp, data, seed)
                say(f"seed {seed}: {arm} done in {runs[arm]['seconds']:.0f}s")
            service, plain = runs["service"], runs["plain"]
            rows.append((seed, figures(service, until=plain["seconds"]), figures(plain), figures(service)))
        report(rows)


def report(rows) -> None:
    say("\nseed | arm     | V4 val  | to 30% (s) | to 40% (s) | best at plain's end | total (s) | epochs trained")
    for seed, service, plain, full in rows:
        for arm, f in (("service", service), ("plain", plain)):
            say(f"{seed:4d} | {arm:7s} | {_fmt(f['anchor'], '.4f'):7s} | {_secs(f['to_30']):>10s} | "
                f"{_secs(f['to_40']):>10s} | {_fmt(f['best'], '.4f'):>19s} | {f['seconds']:9.0f} | {full['epochs'] if arm == 'service' else f['epochs']}")
    say("'>N': the arm never got there; N is its total seconds, a lower bound. A ratio or median marked '>' or "
        "'<' is a lower or upper bound computed with one ('~': bounds either way).")
    say("\nmedians over the seeds | service | plain")
    for gain in (30, 40):
        cells = [median_of([(f[f"to_{gain}"][0], "=" if f[f"to_{gain}"][1] else ">") for f in arm])
                 for arm in ([s for _, s, _, _ in rows], [p for _, _, p, _ in rows])]
        say(f"seconds to {gain}% better than V4 | " + " | ".join(f"{MARK[k]}{v:.0f}" for v, k in cells))
    bests = [[f["best"] for f in arm if f["best"] is not None] for arm in ([s for _, s, _, _ in rows],
                                                                          [p for _, _, p, _ in rows])]
    say("best value at the plain script's end | " + " | ".join(_fmt(statistics.median(b) if b else None, ".4f")
                                                               for b in bests))
    say(f"total seconds | {statistics.median(s['seconds'] for _, s, _, _ in rows):.0f} | "
        f"{statistics.median(p['seconds'] for _, _, p, _ in rows):.0f}")
    say(f"epochs trained | {statistics.median(f['epochs'] for _, _, _, f in rows):.0f} | "
        f"{statistics.median(p['epochs'] for _, _, p, _ in rows):.0f}")
    ratios(rows)


def ratios(rows) -> None:
    """Plain / service per seed and median (times to 30 % and 40 %, total seconds), then the verdicts."""
    say("")
    speedup = gain_ratio(rows, 30)  # the target's ratio; 40 % is printed beside it
    gain_ratio(rows, 40)
    totals = [p["seconds"] / s["seconds"] for _, s, p, _ in rows]
    say(f"total seconds: plain / service median {statistics.median(totals):.2f}x "
        f"(per seed {', '.join(f'{r:.2f}' for r in totals)})")
    verdicts(speedup, [(s["best"] - p["best"]) / p["best"] for _, s, p, _ in rows if s["best"] and p["best"]])


def gain_ratio(rows, gain: int) -> tuple[float, str] | None:
    """Print plain / service of the times to `gain` % better, per seed and median; return the median."""
    per = [(seed, ratio(p[f"to_{gain}"], s[f"to_{gain}"])) for seed, s, p, _ in rows]
    known = [r for _, r in per if r is not None]
    if not known:
        say(f"time to {gain}% better than V4: no seed where either arm got there")
        return None
    value, kind = median_of(known)
    seeds = ", ".join(f"{seed}: " + ("-" if r is None else f"{MARK[r[1]]}{r[0]:.2f}") for seed, r in per)
    left = [str(seed) for seed, r in per if r is None]
    note = f"; left out, neither arm got there: seed {', '.join(left)}" if left else ""
    say(f"time to {gain}% better than V4: plain / service median {MARK[kind]}{value:.2f}x (per seed {seeds}{note})")
    return value, kind


def verdicts(speedup: tuple[float, str] | None, bests: list[float]) -> None:
    if speedup is None:
        say("FAIL time to 30% better: no seed where either arm got 30% better than V4")
    else:
        bound = {"=": "", ">": " (a lower bound)", "<": " (an upper bound)", "~": " (with bounds either way)"}
        verdict(f"median time to 30% better, plain / service{bound[speedup[1]]}", speedup[0], TARGET_SPEEDUP,
                at_least=True, unit="x")
    if bests:
        verdict("median best at the plain script's end, service vs plain", statistics.median(bests) * 100,
                TARGET_BEST * 100, at_least=False, unit="%")


if __name__ == "__main__":
    run_main(main)
