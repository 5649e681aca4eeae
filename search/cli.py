"""The h2s-search command line: parse, call one function, print. User errors are one line and exit 2."""

from __future__ import annotations

import os

# Before torch is imported anywhere: ops that Apple MPS lacks fall back to the CPU.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Hyperparameter search for How2Sign sign-language translation models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Write the synthetic corpus, pack a dataset into the training cache.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataOpt = Annotated[Path | None, typer.Option("--data", help="How2Sign root folder (default: the built-in synthetic corpus).")]
PACK_LIST = 20  # skipped clips listed by name per split
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def user_errors() -> tuple[type[Exception], ...]:
    from how2sign.checkpoint import CheckpointError
    from how2sign.data import DataError
    from how2sign.rules import ConfigError

    from .errors import UserError

    return (UserError, DataError, ConfigError, CheckpointError)


def command(fn):
    """Turn our user-facing errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as exc:
            from rich.markup import escape

            from .storage import mask_password

            # Escaped: a message's "[space.aug_speed]" names a key, it is not rich markup.
            err.print(f"[bold red]error:[/] {escape(mask_password(str(exc)))}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


class _TrialProgress:
    """A rich bar of finished trials inside `start`, fed with study summaries."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and out.is_terminal
        self.p = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              TextColumn("{task.fields[info]}"), console=out)
            self.p.start()
            self.task = self.p.add_task("trials", total=None, info="")
        return self

    def update(self, s: dict) -> None:
        if not self.p:
            return
        st = s["states"]
        done = sum(st.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
        best = s["best"][0]["val_loss"] if s["best"] else None
        # Where the running trials are: the epoch they are in, or the train clips seen where steps count them.
        epochs = ", ".join(f"trial {r['number']} " + (f"at {r['clips_seen']:,} clips" if r.get("clips_seen") else
                                                      f"in epoch {(r['epochs_run'] or 0) + 1}")
                           for r in s.get("running", []))
        info = f"{st.get('RUNNING', 0)} running{f' ({epochs})' if epochs else ''}, {st.get('PRUNED', 0)} pruned" + (
            f", best val_loss {best:.4f}" if best is not None else "")
        self.p.update(self.task, total=s["budget"], completed=done, info=info)

    def __exit__(self, *exc):
        if self.p:
            self.p.stop()


def say_data(choice, as_json: bool = False) -> None:
    # Scripts reading --json get clean stdout; the data line goes to stderr then.
    (err if as_json else out).print(choice.describe(), highlight=False)


StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: $H2S_STORAGE, then sqlite:///h2s-search.db).")]
StudyOpt = Annotated[str, typer.Option("--study", help="Study name, or a path to a study .toml file.")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint-dir", help="Checkpoint folder shared by the workers (default: $H2S_CHECKPOINTS, then ./h2s-checkpoints).")]
ArtifactOpt = Annotated[Path | None, typer.Option("--artifact-dir", help="Artifact store for learning curves, translations and metrics.json, shared by the workers (default: $H2S_ARTIFACTS, then ./h2s-artifacts).")]


# --------------------------------------------------------------------------- data
@data_app.command("synth")
@command
def data_synth(
    dir: Annotated[Path, typer.Argument(help="Folder to write the corpus into.")],
    train: Annotated[int, typer.Option(help="Train clips.")] = 800,
    val: Annotated[int, typer.Option(help="Validation clips.")] = 100,
    test: Annotated[int, typer.Option(help="Test clips.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed; the corpus is deterministic from it.")] = 0,
):
    """Write the learnable synthetic corpus in How2Sign's on-disk format."""
    from how2sign.synthetic import write_corpus

    info = write_corpus(dir, train=train, val=val, test=test, seed=seed)
    out.print(f"wrote {info.counts} clips ({info.frames} frames) to {dir}", highlight=False)


@data_app.command("pack")
@command
def data_pack(
    dir: Annotated[Path, typer.Argument(help="How2Sign root folder.")],
    force: Annotated[bool, typer.Option(help="Re-pack even when a valid cache exists.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes reading clips (default: one per core).")] = None,
    as_json: JsonOpt = False,
):
    """Convert every split once into the memory-mapped float16 cache; print what was packed and skipped.

    An interrupted pack (Ctrl-C, a killed process) continues where it stopped when run again."""
    from how2sign.jobs import pack

    with _PackProgress(err) as bars:
        try:
            splits = pack(dir, force=force, workers=workers, progress=bars.split)
        except KeyboardInterrupt:
            bars.stop()
            err.print("interrupted: the clips packed so far are kept; run the same command again to continue",
                      highlight=False)
            raise typer.Exit(130) from None
    rows = [s.summary_dict() for s in splits]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for s, row in zip(splits, rows, strict=True):
        skipped = ", ".join(f"{n} {why}" for why, n in row["skipped"].items()) or "none"
        corrupt = f"; {row['corrupt_files']} corrupt keypoint files read as empty frames" if row["corrupt_files"] else ""
        out.print(f"[bold]{row['split']}[/]: packed {row['packed']} of {row['rows']} clips, {row['frames']} frames; "
                  f"skipped {sum(row['skipped'].values())} ({skipped}){corrupt}; cache {s.path}", highlight=False)
        shown = row["skipped_clips"][:PACK_LIST]
        for name, why in shown:
            out.print(f"  skipped {name}: {why}", highlight=False, markup=False)
        if len(row["skipped_clips"]) > len(shown):
            out.print(f"  ... and {len(row['skipped_clips']) - len(shown)} more (all listed by --json)",
                      highlight=False)


class _PackProgress:
    """Progress of `data pack` on stderr: a rich bar per split (clips, clips/s, time left) on a terminal,
    plain lines every few seconds otherwise."""

    def __init__(self, console: Console):
        self.console, self.p = console, None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("packing {task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("clips"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                              console=self.console, transient=False)  # fmt: skip
            self.p.start()
        return self

    def split(self, name: str):
        from how2sign.data import LineProgress
        from how2sign.data.progress import Rate

        if self.p is None:
            return LineProgress(name, after=2.0)  # lines from 2 s on: a quick pack prints only its summary
        task, rate = None, Rate()

        def update(done: int, total: int) -> None:
            nonlocal task
            speed, _ = rate.update(done, total)
            shown = f"{speed:,.0f} clips/s" if speed else ""
            if task is None:  # created at the resumed count, so rich's rate counts this run's clips only
                task = self.p.add_task(name, total=total, completed=done, rate=shown)
            self.p.update(task, completed=done, rate=shown)

        return update

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- train / evaluate
@app.command()
@command
def train(
    preset: Annotated[str, typer.Option(help="v1, v2, v3, v4, v4-quick or plan-b-small.")] = "v4",
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder for checkpoints and metrics.json.")] = Path("runs/train"),
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epoch budget.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a TrainConfig field: key=value.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last_checkpoint.pt.")] = False,
):
    """Train one model from a preset."""
    from how2sign.jobs import build_config, choose_data, run_training

    cfg = build_config(preset, epochs, set_)
    choice = choose_data(data)
    say_data(choice)
    result, _ = run_training(cfg, choice.root, out_dir, device=device, resume=resume,
                             progress=sys.stderr.isatty())
    out.print(f"{preset}: {result.params:,} parameters on {result.device}; {result.epochs_run} epochs ({result.ending.value}); "
              f"best val_loss {result.best_val_loss:.4f} at epoch {result.best_epoch}, gap {result.gap:.3f}; "
              f"{result.seconds:.1f}s, {result.frames_per_second:,.0f} frames/s", highlight=False)
    out.print(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)", highlight=False)


@app.command()
@command
def pretrain(
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder; the encoder is OUT/encoder.pt.")] = Path("runs/pretrain"),
    epochs: Annotated[int | None, typer.Option(help="Override the epoch budget (default 30).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a PretrainConfig field: key=value (d_model, nhead, mask_ratio, ...).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/pretrain_checkpoint.pt.")] = False,
    as_json: JsonOpt = False,
):
    """Pretrain a pose encoder by masked keypoint modelling on the train split; writes OUT/encoder.pt."""
    from how2sign.jobs import choose_data
    from how2sign.pretrain import PretrainConfig
    from how2sign.pretrain import pretrain as run_pretrain

    cfg = PretrainConfig().with_sets(([f"epochs={epochs}"] if epochs is not None else []) + (set_ or []))
    choice = choose_data(data)
    say_data(choice, as_json)
    r = run_pretrain(cfg, choice.root, out_dir, device=device, resume=resume, progress=sys.stderr.isatty())
    if as_json:
        print(json.dumps({k: v for k, v in r.to_dict().items() if k != "history"}))
        return
    out.print(f"pretrained {r.params:,} encoder parameters on {r.device}: {r.epochs_run} epochs"
              f"{' (interrupted)' if r.interrupted else ''}, best val masked-reconstruction error {r.val_error:.4f} "
              f"at epoch {r.best_epoch}; linear interpolation {r.interpolation_error:.4f}; {r.seconds:.1f}s",
              highlight=False)
    out.print(("" if r.beats_interpolation else "[bold yellow]warning:[/] ") + r.verdict, highlight=False)
    out.print(f"encoder: {r.encoder} (train with --set encoder_init={r.encoder} --set freeze_encoder=true, "
              "or encoder_init in a study file)", highlight=False)


@app.command()
@command
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A best_checkpoint.pt or last_checkpoint.pt.")],
    split: Annotated[str, typer.Option(help="val or test (or train).")] = "val",
    data: DataOpt = None,
    predictions: Annotated[Path | None, typer.Option(help="Write one hypothesis per line, in CSV row order.")] = None,
    beam: Annotated[int, typer.Option(help="Beam size; 1 is greedy decoding.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: JsonOpt = False,
):
    """Decode a split and print BLEU-4, chrF, loss, coverage, repetitions and the verdict."""
    from how2sign.evaluate import evaluate_checkpoint
    from how2sign.jobs import choose_data, write_predictions

    from .errors import UserError

    if split not in ("val", "test", "train"):
        raise UserError(f"--split must be val, test or train, got {split!r}")
    choice = choose_data(data)
    say_data(choice, as_json)
    ev = evaluate_checkpoint(checkpoint, choice.root, split, device=device, beam_size=beam)
    if predictions:
        write_predictions(predictions, ev.hypotheses)
    if as_json:
        print(json.dumps(ev.metrics()))
        return
    m = ev.metrics()
    gap = "n/a" if m["gap"] is None else f"{m['gap']:.3f}"
    out.print(f"{split} ({m['clips']} clips, {m['decoding']}): BLEU-4 {m['bleu']:.2f}  chrF {m['chrf']:.2f}  "
              f"loss {m['val_loss']:.4f}  gap {gap}  coverage {m['vocab_coverage']:.1%}  "
              f"repetitions {m['repetition_rate']:.1%}  verdict [bold]{m['verdict']}[/]", highlight=False)
    for ref, hyp in list(zip(ev.references, ev.hypotheses, strict=True))[:3]:
        out.print(f"  ref: {ref}\n  hyp: {hyp}", highlight=False, markup=False)


# --------------------------------------------------------------------------- search
@app.command()
@command
def start(
    study: StudyOpt = "capacity",
    storage: StorageOpt = None,
    data: DataOpt = None,
    n_trials: Annotated[int | None, typer.Option(help="Trial budget of the study (default: the study file's).")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes, spread over the visible GPUs (default: K per GPU; on a CPU-only machine one per core, at most 4; 0: only create the study and enqueue the anchor).")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices to use, e.g. cuda:0,cuda:1; each gets --workers-per-device workers (default 1 each).")] = None,
    workers_per_device: Annotated[int | None, typer.Option(help="Workers per GPU or MPS device (default 4 on GPUs, capped by the largest trial's memory estimate).")] = None,
    checkpoint_dir: CheckpointOpt = None,
    artifact_dir: ArtifactOpt = None,
    as_json: JsonOpt = False,
):
    """Create (or load) the study, enqueue the anchor once, run local workers, and compare the best with it."""
    from .launcher import start as run_start
    from .summary import comparison_lines

    say = (lambda m: err.print(m, highlight=False, markup=False)) if as_json else (
        lambda m: out.print(m, highlight=False, markup=False))
    with _TrialProgress(enabled=not as_json) as bar:
        res = run_start(study, storage=storage, data=data, n_trials=n_trials, workers=workers, devices=devices,
                        checkpoint_dir=checkpoint_dir, say=say, progress=bar.update, artifact_dir=artifact_dir,
                        workers_per_device=workers_per_device)
    if as_json:
        print(json.dumps({"study": res.study, "storage": res.url, "seconds": res.seconds,
                          "exit_codes": res.exit_codes, **res.summary}, default=str))
    else:
        for line in comparison_lines(res.summary):
            out.print(line, highlight=False)
        out.print(f"{res.seconds:.0f}s with {res.workers} worker(s); inspect with: h2s-search status --study "
                  f"{res.study} --storage {res.url}", highlight=False)
    if any(c not in (0, None) for c in res.exit_codes):
        raise typer.Exit(1)


@app.command()
@command
def confirm(
    study: StudyOpt = "capacity",
    top: Annotated[int, typer.Option(help="How many of the search's best configurations to re-train (besides the anchor).")] = 3,
    seeds: Annotated[int, typer.Option(help="Fresh seeds per configuration.")] = 3,
    storage: StorageOpt = None,
    data: DataOpt = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes, as for start (0: only create the confirmation study).")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices to use, e.g. cuda:0,cuda:1, as for start.")] = None,
    workers_per_device: Annotated[int | None, typer.Option(help="Workers per GPU or MPS device, as for start.")] = None,
    beam: Annotated[int, typer.Option(help="Beam size for decoding val and test (the scores a paper reports); 1 is greedy, as in the search.")] = 4,
    checkpoint_dir: CheckpointOpt = None,
    artifact_dir: ArtifactOpt = None,
    as_json: JsonOpt = False,
):
    """Re-train the search's best configurations and the anchor over fresh seeds; score them on val and test."""
    from .confirm import run_confirm

    say = (lambda m: err.print(m, highlight=False, markup=False)) if as_json else (
        lambda m: out.print(m, highlight=False, markup=False))
    with _TrialProgress(enabled=not as_json) as bar:
        res = run_confirm(study, top=top, seeds=seeds, storage=storage, data=data, workers=workers, devices=devices,
                          workers_per_device=workers_per_device, beam=beam, checkpoint_dir=checkpoint_dir,
                          artifact_dir=artifact_dir, say=say, progress=bar.update)
    _print_confirmation(res, as_json, artifact_dir)
    if any(c not in (0, None) for c in res.exit_codes):
        raise typer.Exit(1)


def _print_confirmation(res, as_json: bool, artifact_dir: Path | None) -> None:
    """The confirmation's table, its sentences and the expected-best curve (search.confirmation_view)."""
    from .confirmation import build_confirmation
    from .confirmation_view import confirmation_dict, confirmation_lines

    c = build_confirmation(res.parent.study, res.opened.study, artifacts=artifact_dir)
    if as_json:
        print(json.dumps({**confirmation_dict(c), "seconds": res.seconds, "exit_codes": res.exit_codes},
                         default=str))
        return
    for line in confirmation_lines(c):
        out.print(line, highlight=False, markup=False)
    out.print(f"{res.seconds:.0f}s with {res.workers} worker(s); the report shows it: h2s-search report --study "
              f"{c.parent} --storage {res.parent.url}", highlight=False, markup=False)


@app.command()
@command
def slurm(
    study: StudyOpt = "capacity",
    storage: StorageOpt = None,
    jobs: Annotated[int | None, typer.Option(help="Array tasks to submit; each runs start on its own devices.")] = None,
    gpus_per_job: Annotated[int, typer.Option(help="GPUs per task (0: CPU workers, one per CPU of the task).")] = 0,
    workers_per_device: Annotated[int | None, typer.Option(help="Workers per GPU of a task (default: start's, 4 capped by memory).")] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition (default: the cluster's default).")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="Time limit per task, HH:MM:SS (default: the partition's).")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account to charge.")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per task, as sbatch --mem (e.g. 16G).")] = None,
    cpus_per_task: Annotated[int | None, typer.Option(help="CPUs per task (default: one per GPU worker; 1 for CPU tasks).")] = None,
    logs: Annotated[Path | None, typer.Option(help="submitit's folder, shared by the nodes: scripts, pickles, logs (default: ./h2s-slurm-logs).")] = None,
    data: DataOpt = None,
    setup: Annotated[list[str] | None, typer.Option(help="A shell line for the sbatch script before the task, e.g. 'module load cuda' (repeatable).")] = None,
    n_trials: Annotated[int | None, typer.Option(help="Trial budget of the study (default: the study file's).")] = None,
    checkpoint_dir: CheckpointOpt = None,
    artifact_dir: ArtifactOpt = None,
    warning_seconds: Annotated[int | None, typer.Option(help="Slurm's advance warning (SIGUSR2) this many seconds before the time limit (default: 120): trials go back in the queue from their last checkpoint and the task is re-queued.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the sbatch script that would be submitted; submit nothing, create nothing.")] = False,
    cancel: Annotated[bool, typer.Option(help="Cancel this study's pending and running arrays and wait until they are gone.")] = False,
):
    """Create (or load) the study, then submit one Slurm job array of workers through submitit."""
    from .slurm import SlurmRequest, cancel_lines, submission_lines, submit
    from .slurm import cancel as cancel_arrays

    def say(m: str) -> None:  # start's lines; stdout is for the script or the job id
        err.print(m, highlight=False, markup=False)

    if cancel:
        res = cancel_arrays(study, storage)
        for line in cancel_lines(res):
            out.print(line, highlight=False, markup=False)
        if res.remaining:
            raise typer.Exit(1)
        return
    req = SlurmRequest(study, storage, jobs, data, n_trials, gpus_per_job, workers_per_device, partition, time_limit,
                       account, mem, cpus_per_task, logs, tuple(setup or ()), checkpoint_dir, artifact_dir,
                       dry_run=dry_run, **({} if warning_seconds is None else {"warning_seconds": warning_seconds}))
    for line in submission_lines(submit(req, say=say), storage_given=storage is not None):
        out.print(line, highlight=False, markup=False)


class _WorkerLog:
    """A worker's lines on stderr, prefixed with its number (which the study may hand out only once loaded)."""

    def __init__(self, index: int | None):
        self.index = index

    def joined(self, index: int) -> None:
        self.index = index

    def __call__(self, msg: str) -> None:
        err.print(f"worker {self.index}: {msg}", highlight=False)


@app.command()
@command
def worker(
    study: StudyOpt = "capacity",
    storage: StorageOpt = None,
    data: DataOpt = None,
    n_trials: Annotated[int | None, typer.Option(help="At most this many trials from this worker.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    checkpoint_dir: CheckpointOpt = None,
    artifact_dir: ArtifactOpt = None,
    worker_index: Annotated[int | None, typer.Option(help="This worker's number; offsets the sampler seed (default: the study's next number).", hidden=True)] = None,
):
    """Join a study from the database and run trials until its budget is spent."""
    from .worker import WorkerSettings, run_worker

    # Without --worker-index the study numbers its workers (0, 1, ... across machines), so seeds differ.
    settings = WorkerSettings(study=study, storage=storage, data_root=data, device=device,
                              n_trials=n_trials, checkpoint_dir=checkpoint_dir, worker_index=worker_index,
                              artifact_dir=artifact_dir)
    log = _WorkerLog(worker_index)
    res = run_worker(settings, log=log, joined=log.joined)
    err.print(f"worker {res.worker_index}: ran {res.ran} trial(s)"
              + (f", stopped by {res.stopped}" if res.stopped else ""), highlight=False)


def _confirmation_of(opened):
    """The study's `<study>.confirm` in the same storage, or None when `confirm` has not created it."""
    from .confirmation import open_confirmation

    return open_confirmation(opened.url, opened.study.study_name)


def _with_confirmation_progress(s: dict, confirm) -> dict:
    """status: the confirmation study's progress beside the search's, when there is one."""
    if confirm is None:
        return s
    from .confirmation import confirmation_progress

    progress = confirmation_progress(confirm)
    return {**s, "confirmation": {"study": confirm.study_name, **progress.to_dict(),
                                  "line": progress.line(confirm.study_name)}}


@app.command()
@command
def status(
    study: StudyOpt = "capacity",
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
):
    """Trials by state, the best trial, the anchor, and who is running what."""
    from .study import load_stored
    from .summary import summarize
    from .views import status_view

    opened = load_stored(storage, study, heartbeat=False)
    confirm = _confirmation_of(opened)

    def summary() -> dict:
        return _with_confirmation_progress(summarize(opened.study), confirm)

    if as_json:
        print(json.dumps(summary(), default=str))
        return
    if not watch:
        out.print(status_view(summary()))
        return
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def view():
        stamp = Text(f"updated {time.strftime('%H:%M:%S')}, every {interval:g}s; Ctrl-C stops", style="dim")
        return Group(status_view(summary()), stamp)

    try:
        with Live(view(), console=out, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(view())
    except KeyboardInterrupt:
        pass


@app.command()
@command
def best(study: StudyOpt = "capacity", storage: StorageOpt = None, as_json: JsonOpt = False):
    """The best trial (the Pareto front for multi-objective studies) with its parameters."""
    from .study import load_stored
    from .summary import comparison_lines, summarize

    opened = load_stored(storage, study, heartbeat=False)
    s = summarize(opened.study)
    if as_json:
        from .confirmation import build_confirmation
        from .confirmation_view import best_confirmation

        confirm = _confirmation_of(opened)
        c = build_confirmation(opened.study, confirm) if confirm is not None else None
        best_trial = s["best"][0]["number"] if s["best"] else None
        print(json.dumps({"study": s["study"], "best": s["best"], "anchor": s["anchor"],
                          **best_confirmation(c, best_trial)}, default=str))
        return
    if not s["best"]:
        out.print(f"study {s['study']}: no completed trial yet")
        return
    for line in comparison_lines(s)[1:]:
        out.print(line, highlight=False)


@app.command()
@command
def report(
    study: StudyOpt = "capacity",
    storage: StorageOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="File to write (default: report.html, or report.tex with --format latex).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="html: the self-contained page; latex: the results table as a tabular.")] = "html",
    figures: Annotated[Path | None, typer.Option(help="Also write each figure as PDF and PNG into this folder.")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="Artifact store folder the workers upload to, where a confirmation run's test hypotheses are read when its run folder is not here (default: $H2S_ARTIFACTS, then ./h2s-artifacts).")] = None,
):
    """Write the study's report: one offline HTML page with plotly figures, or a LaTeX table; optional PDF/PNG figures."""
    from .report import write_report
    from .storage import parse_url
    from .study import load_stored

    opened = load_stored(storage, study, heartbeat=False)
    target = out_file or Path("report.tex" if fmt == "latex" else "report.html")
    confirm = _confirmation_of(opened)
    res = write_report(opened.study, target, storage_desc=parse_url(opened.url).masked, fmt=fmt, figures_dir=figures,
                       confirmation=confirm, artifacts=artifacts)
    what = "LaTeX table" if fmt == "latex" else f"report with {len(res.figures)} figure(s)"
    if confirm is not None:
        what += f" and the confirmation {confirm.study_name!r}"
    out.print(f"wrote {what} for study {study!r} ({res.trials} trials) to {res.path}", highlight=False)
    for name, why in res.missing.items():
        out.print(f"  {name}: {why}", highlight=False)
    if figures is not None:
        out.print(f"wrote {len(res.files)} figure file(s) (PDF and PNG) to {figures}", highlight=False)


@app.command()
@command
def reproduce(
    study: StudyOpt = "capacity",
    trial: Annotated[int, typer.Option("--trial", help="Trial number to re-run.")] = 0,
    storage: StorageOpt = None,
    data: DataOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default: a temporary folder).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
    as_json: JsonOpt = False,
):
    """Re-run a trial from its record and compare the recorded validation loss with the new one."""
    from .reproduce import reproduce as run_reproduce

    r = run_reproduce(study, trial, storage=storage, data=data, out_dir=out_dir, device=device,
                      say=lambda choice: say_data(choice, as_json))
    if as_json:
        print(json.dumps(r))
        return
    out.print(f"trial {trial}: recorded val_loss {r['recorded_val_loss']:.6f}, reproduced {r['val_loss']:.6f} "
              f"(difference {r['difference']:.2e}, {r['epochs']} epochs)", highlight=False)


@app.command()
@command
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind. The dashboard has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    artifacts: Annotated[Path | None, typer.Option(help="Artifact store folder the workers upload to (default: $H2S_ARTIFACTS, then ./h2s-artifacts).")] = None,
):
    """Serve optuna-dashboard on the same storage (no authentication: binds to 127.0.0.1 by default)."""
    from .views import serve_dashboard

    serve_dashboard(storage, host, port, artifacts, say=lambda m: out.print(m, highlight=False))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
