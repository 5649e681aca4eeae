"""Pruning: epochs spent by a pruned search / the same trials run unpruned, and both best values.

Everything goes through the service's own code path: `search.study.create_or_load` on SQLite in a
temp dir and `search.worker.run_worker` on the synthetic corpus (a fixed small train split), i.e. what
`h2s-search start` / `worker` run, including per-trial early stopping (patience) and evaluation.

  --study NAME: the shipped (or any) study file as `start` loads it: its [train] budget (epochs,
               patience, fine-tuning), [space], [sampler] and [pruner] (max_resource = the epoch budget,
               as search.study.build_pruner sets it); its [demo] table and anchor are left out, so this
               is the real budget. --trials sets the number of trials (default 24); --d-models/--ffs
               replace the space's d_model/dim_feedforward choices so it runs on a small CPU;
  without --study: a built-in small capacity-like search, 24 trials x 8 epochs (patience 3), seeded
               TPE, Hyperband 1/3 (options change each).

  1. pruned:   the search with its pruner;
  2. unpruned: a second study with pruner "none" into which the pruned run's N parameter sets are
               enqueued in the same order, so both runs train exactly the same configurations.

Epochs spent are the trials' recorded `epochs_run`. With `--report-every N` (or `quarter`: a quarter of the
train split, the automatic setting's interval on a split of 10k clips or more) both searches report every N
train clips, the pruned one's resources written in epochs become clips of the train split (as the service
turns them on How2Sign), so rungs fall inside epochs; the cost is then train clips (each trial's last step). The script also prints the fraction the pruner
would spend with unlimited trials of stationary quality, computed from Optuna's bracket allocation, to
show how far a finite search with an improving sampler is from it. Trials run on one torch thread
(run it under `nice` on a shared machine). Training is deterministic on a CPU for a given config
(fixed seed), so a pruned trial's first epochs are the unpruned twin's first epochs.
Targets (issue 8): epochs ratio <= 0.40, and the pruned search's best value within 2% of the
unpruned one's.

    python benchmarks/pruning.py [--quick] [--study NAME] [--trials N] [--epochs E] [--patience P]
                                 [--pruner hyperband|asha] [--reduction-factor R] [--min-resource M]
                                 [--sampler tpe|random] [--train-clips C] [--d-models 32,64] [--ffs 64,128]
                                 [--report-every N|quarter]
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

from _common import header, make_corpus, parse_args, run_main, say, verdict, workdir

TARGET_EPOCHS = 0.40
TARGET_BEST = 0.02

STUDY = """\
name = "{name}"
description = "benchmarks/pruning.py: a small capacity search on the synthetic corpus"
direction = "minimize"
metric = "val_loss"
n_trials = {trials}

[train]
epochs = {epochs}
patience = {patience}
nhead = 4
lr_min = 1e-6
grad_clip = 1.0
max_tokens = 32   # the synthetic sentences have at most 26 tokens; shorter greedy decoding in evaluation
seed = 0

[space]
d_model = {{ type = "categorical", choices = {d_models} }}
encoder_layers = {{ type = "int", low = 1, high = 2 }}
decoder_layers = {{ type = "int", low = 1, high = 2 }}
dim_feedforward = {{ type = "categorical", choices = {ffs} }}
dropout = {{ type = "float", low = 0.0, high = 0.4 }}
batch_size = {{ type = "categorical", choices = [16, 32] }}
lr = {{ type = "float", low = 1e-4, high = 3e-3, log = true }}

[pruner]
{pruner}

[sampler]
{sampler}
"""


def sampler_table(args) -> str:
    if args.sampler == "random":
        return 'type = "random"\nseed = 0'
    return f'type = "tpe"\nseed = 0\nn_startup_trials = {max(2, args.trials // 3)}'


def bracket_fraction(min_resource: int, reduction_factor: int, max_resource: int, bracket: int) -> float:
    """Epoch fraction of one successive-halving bracket (rungs at min * rf**(bracket + k) below max; the
    top 1/rf of a rung go on), for unlimited trials of stationary quality, against max per trial."""
    cost, alive, prev, k = 0.0, 1.0, 0, 0
    while min_resource * reduction_factor ** (bracket + k) < max_resource:
        rung = min_resource * reduction_factor ** (bracket + k)
        cost += alive * (rung - prev)
        prev, alive, k = rung, alive / reduction_factor, k + 1
    return (cost + alive * (max_resource - prev)) / max_resource


def pruning_floor(pruner: str, min_resource: int, reduction_factor: int, max_resource: int) -> tuple[int, float]:
    """(brackets, the epoch fraction the pruner spends with unlimited trials of stationary quality).

    Optuna's HyperbandPruner has floor(log_rf(max/min)) + 1 brackets, and bracket b gets trials in
    proportion to ceil(n * rf**(n-1-b) / (n-b)); ASHA (SuccessiveHalvingPruner) is its bracket 0 alone."""
    if pruner == "asha":
        return 1, bracket_fraction(min_resource, reduction_factor, max_resource, 0)
    n = math.floor(math.log(max_resource / min_resource, reduction_factor)) + 1
    weights = [math.ceil(n * reduction_factor ** (n - 1 - b) / (n - b)) for b in range(n)]
    total = sum(w * bracket_fraction(min_resource, reduction_factor, max_resource, b) for b, w in enumerate(weights))
    return n, total / sum(weights)


def write_study(folder: Path, name: str, args, pruner: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(name=name, trials=args.trials, epochs=args.epochs, patience=args.patience,
                                 d_models=json.dumps(args.d_models), ffs=json.dumps(args.ffs), pruner=pruner,
                                 sampler=sampler_table(args)))  # fmt: skip
    return path


def shipped_raw(args, name: str, pruned: bool) -> dict:
    """The shipped study file `args.study` as `start` parses it, renamed, with its trial budget set to
    --trials and (only where asked) smaller d_model / dim_feedforward choices, so it runs on a small CPU.

    The anchor is left out (its V4 shape may lie outside the shrunk space); the unpruned run trains the
    same configurations anyway. The [demo] table is left out: this measures the real budget. The pruned
    run keeps the file's [pruner] unless --pruner is given; the unpruned run has pruner "none"."""
    from search.spec import load_spec

    raw = json.loads(json.dumps(load_spec(args.study).raw))
    for key in ("demo", "anchor", "constraint", "timeout"):
        raw.pop(key, None)
    raw.update(name=name, n_trials=args.trials)
    # The synthetic sentences have at most 26 tokens: shorter greedy decoding in each evaluation.
    raw["train"] = {**raw.get("train", {}), "max_tokens": 32}
    for key, choices in (("d_model", args.d_models), ("dim_feedforward", args.ffs)):
        if choices and key in raw["space"]:
            raw["space"][key] = {"type": "categorical", "choices": choices}
    if args.epochs:
        raw["train"]["epochs"] = args.epochs
    if args.patience:
        raw["train"]["patience"] = args.patience
    if not pruned:
        raw["pruner"] = {"type": "none"}
    elif args.pruner:
        raw["pruner"] = {"type": args.pruner, "min_resource": args.min_resource or 1,
                         "reduction_factor": args.reduction_factor or 3}
    if args.report_every:
        in_clips(raw, args.report_every, args.n_train)
    return raw


def in_clips(raw: dict, every: int, n_train: int) -> None:
    """Report every `every` train clips; the pruner's resources written in epochs become clips of the split."""
    from search.spec import NO_RESOURCE, RESOURCES

    raw["train"]["report_every"] = every
    p = raw["pruner"]
    for key in RESOURCES[p.get("type", "none")]:
        if key in p and p[key] != NO_RESOURCE.get(key):
            p[key] = max(every, math.ceil(p[key] * n_train))


def run_search(study, url: str, root: Path, checkpoints: Path, fingerprint: str,
               enqueue: list[dict] | None = None) -> tuple[object, float, object]:  # fmt: skip
    """create_or_load + (optional enqueues) + run_worker, as `start` does with one local worker.
    `study` is a study file or an already parsed raw study (a dict)."""
    from search.spec import load_spec, parse
    from search.study import create_or_load
    from search.worker import WorkerSettings, run_worker

    spec = parse(study, f"benchmark study {study['name']!r}") if isinstance(study, dict) else load_spec(str(study))
    opened = create_or_load(url, spec, fingerprint, str(root))
    for params in enqueue or []:
        opened.study.enqueue_trial(params)
    t0 = time.perf_counter()
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        run_worker(WorkerSettings(study=spec.name, storage=url, data_root=root, device="cpu",
                                  checkpoint_dir=checkpoints, artifact_dir=checkpoints / "artifacts", quiet=True),
                   log=lambda msg: None)  # fmt: skip
    return opened.study, time.perf_counter() - t0, spec


def summary(study) -> dict:
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "trials": trials,
        "epochs": sum(int(t.user_attrs.get("epochs_run") or 0) for t in trials),
        "clips": sum(max(t.intermediate_values, default=0) for t in trials),  # where the steps are clips
        "states": {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)},
        "best": min((t.value for t in complete), default=float("nan")),
        "best_trial": min(complete, key=lambda t: t.value).number if complete else None,
    }


def options(p) -> None:
    p.add_argument("--study", help="measure this shipped study file's [train] budget, [space], [sampler] and "
                                   "[pruner] (e.g. capacity, plan-b) instead of the built-in small search")
    p.add_argument("--trials", type=int, help="trials per search (default 24, --quick 3)")
    p.add_argument("--epochs", type=int, help="epoch budget per trial (default 8, or the study's; --quick 2)")
    p.add_argument("--patience", type=int, help="early-stopping patience (default 3, or the study's)")
    p.add_argument("--reduction-factor", type=int, help="pruner reduction_factor (default 3)")
    p.add_argument("--min-resource", type=int, help="pruner min_resource (default 1)")
    p.add_argument("--pruner", choices=("hyperband", "asha"),
                   help="pruner of the pruned search (default: the study's, else hyperband)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="sampler of the built-in search (default tpe, seeded; --study uses the file's)")
    p.add_argument("--train-clips", type=int, help="synthetic train split size (default 150, --quick 60)")
    p.add_argument("--d-models", help="comma-separated d_model choices replacing the space's (default for "
                                      "--study: the file's; built-in search: 32,64)")
    p.add_argument("--ffs", help="comma-separated dim_feedforward choices replacing the space's")
    p.add_argument("--report-every", help="report every N train clips (or 'quarter' of the split) in both "
                                          "searches; the pruned one's epoch resources become clips")


def ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    import torch

    # One thread: the figures are epoch counts, and single-threaded trials suffer least from other
    # processes on a small shared machine (two-thread OpenMP under contention is many times slower).
    torch.set_num_threads(1)
    header("pruning", args.quick)
    args.trials = args.trials or (3 if args.quick else 24)
    args.train_clips = args.train_clips or (60 if args.quick else 150)
    args.d_models, args.ffs = ints(args.d_models), ints(args.ffs)
    if args.quick:
        args.epochs, args.d_models, args.ffs = args.epochs or 2, [16], [32]
    if not args.study:
        args.epochs, args.patience = args.epochs or 8, args.patience or 3
        args.d_models, args.ffs = args.d_models or [32, 64], args.ffs or [64, 128]
    with workdir(args.keep) as tmp:
        root = make_corpus(tmp / "corpus", train=args.train_clips, val=max(20, args.train_clips // 5), seed=0)
        from how2sign.batches import TrainData

        data = TrainData.load(root)  # packs the cache once, as `start` does
        fingerprint, args.n_train = data.fingerprint, len(data.train)
        if args.report_every:
            args.report_every = -(-args.n_train // 4) if args.report_every == "quarter" else int(args.report_every)
        url = f"sqlite:///{tmp / 'bench.db'}"
        if args.study:
            pruned_src, unpruned_src = shipped_raw(args, "pruned", True), shipped_raw(args, "unpruned", False)
            desc = (f"study {args.study!r}: {args.trials} trials, [train] {pruned_src['train']}, [pruner] "
                    f"{pruned_src['pruner']}, [sampler] {pruned_src.get('sampler')}")
        else:
            pruner = (f'type = "{args.pruner or "hyperband"}"\nmin_resource = {args.min_resource or 1}\n'
                      f"reduction_factor = {args.reduction_factor or 3}")  # fmt: skip
            pruned_src = write_study(tmp, "pruned", args, pruner)
            unpruned_src = write_study(tmp, "unpruned", args, 'type = "none"')
            desc = (f"{args.trials} trials x {args.epochs} epochs (patience {args.patience}), {args.sampler} "
                    f"sampler, {pruner.splitlines()}")
        say(f"{desc}; {args.train_clips} train clips; d_model {args.d_models or 'as the study'}; {url}")
        pruned_study, pruned_s, spec = run_search(pruned_src, url, root, tmp / "ck", fingerprint)
        pruned = summary(pruned_study)
        params = [t.params for t in pruned["trials"]]
        say(f"pruned search: {pruned_s:.0f}s, {pruned['states']}")
        unpruned_study, unpruned_s, _ = run_search(unpruned_src, url, root, tmp / "ck", fingerprint, enqueue=params)
        unpruned = summary(unpruned_study)
        say(f"unpruned search: {unpruned_s:.0f}s, {unpruned['states']}")
        assert [t.params for t in unpruned["trials"]] == params, "the unpruned run must train the same configs"
        report(args, pruned, unpruned, pruned_s, unpruned_s, spec)


def report(args, pruned: dict, unpruned: dict, pruned_s: float, unpruned_s: float, spec) -> None:
    say("")
    say(f"{'trial':>5} {'pruned run':>22} {'unpruned run':>22}  params")
    for a, b in zip(pruned["trials"], unpruned["trials"], strict=True):
        def cell(t):
            v = t.user_attrs.get("val_loss")
            done = (f"{max(t.intermediate_values, default=0):>5}cl" if args.report_every else
                    f"{t.user_attrs.get('epochs_run') or 0:>2}ep")
            return f"{t.state.name[:8]:<8} {done} {v if v is None else round(v, 4)!s:>7}"
        p = ", ".join(f"{k}={round(v, 5) if isinstance(v, float) else v}" for k, v in a.params.items())
        say(f"{a.number:>5} {cell(a):>22} {cell(b):>22}  {p}")
    unit = "clips" if args.report_every else "epochs"
    ratio = pruned[unit] / max(unpruned[unit], 1)
    rel = (pruned["best"] - unpruned["best"]) / abs(unpruned["best"])
    say("")
    say(f"{unit} spent: pruned {pruned[unit]}, unpruned {unpruned[unit]}; ratio {ratio:.3f}"
        + (f" (report_every {args.report_every} of {args.n_train} train clips)" if args.report_every else ""))
    say(f"wall time: pruned {pruned_s:.0f}s, unpruned {unpruned_s:.0f}s (ratio {pruned_s / unpruned_s:.3f}, "
        f"includes each completed trial's evaluation)")
    kind = spec.pruner.get("type", "none")
    if kind in ("hyperband", "asha"):
        p, epochs = spec.pruner, spec.base_config().total_epochs
        if args.report_every:  # in clips: the budget too
            epochs *= args.n_train
        # A fraction of an epoch where steps are epochs is the first epoch, as build_pruner has it.
        low = p.get("min_resource", 1) if args.report_every else math.ceil(p.get("min_resource", 1))
        brackets, floor = pruning_floor(kind, low, p.get("reduction_factor", 3), epochs)
        say(f"{kind} here has {brackets} bracket(s); with unlimited trials of stationary quality it would spend "
            f"{floor:.3f} of the unpruned epochs (a sampler that improves over time spends more); "
            f"{pruned['states'].get('COMPLETE', 0)} of {args.trials} trials ran to the end here.")
    say(f"best val_loss: pruned {pruned['best']:.4f} (trial {pruned['best_trial']}), unpruned {unpruned['best']:.4f} "
        f"(trial {unpruned['best_trial']}); pruned is {100 * rel:+.2f}% off")
    verdict(f"pruned / unpruned {unit} spent", ratio, TARGET_EPOCHS, at_least=False)
    verdict("pruned best val_loss vs unpruned best (relative excess)", max(rel, 0.0), TARGET_BEST, at_least=False)


if __name__ == "__main__":
    run_main(main)
