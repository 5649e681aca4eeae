"""What a finished trial leaves for people to look at: diagnosis attributes, dashboard artifacts, notes.

Every finished trial (complete or pruned) gets:
- the user attributes `overfit_epoch`, `final_gap`, `lr_collapsed` and a one-line `diagnosis`;
- three artifacts in the Optuna artifact store that optuna-dashboard shows on the trial's page:
  `learning_curve.png` (train/validation loss and learning rate against the trial's steps: per epoch, or
  against train clips seen, every report inside epochs included, where the trial reported in clips),
  `translations.csv` (a sample of validation references against hypotheses; complete trials only) and
  `metrics.json`.
The study gets a dashboard note explaining the anchor trial, and the anchor trial a note of its own.

The artifact folder is shared by the fleet like the checkpoint folder: `--artifact-dir`, then
$H2S_ARTIFACTS, then ./h2s-artifacts. `h2s-search dashboard --artifacts` resolves it the same way.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from how2sign.reporting import AUTO_MIN_CLIPS
from how2sign.run_metrics import METRICS, RunMetrics

from .diagnosis import Diagnosis, diagnose
from .records import CLIPS, TrialRecord
from .translations import write_test_translations

__all__ = ["ARTIFACTS_ENV", "LEARNING_CURVE", "METRICS", "TRANSLATIONS", "Curve", "anchor_note", "artifact_root",
           "curve_figure", "learning_curve", "learning_curve_png", "note_anchor", "open_store", "read_uploaded",
           "record_trial", "study_note", "translations_csv", "write_study_note"]

ARTIFACTS_ENV = "H2S_ARTIFACTS"
DEFAULT_FOLDER = "h2s-artifacts"
LEARNING_CURVE, TRANSLATIONS = "learning_curve.png", "translations.csv"
SAMPLE_SIZE = 50  # validation translations per trial, evenly spread over the split


def artifact_root(folder: Path | str | None = None) -> Path:
    """--artifact-dir / --artifacts, then $H2S_ARTIFACTS, then ./h2s-artifacts."""
    return Path(folder or os.environ.get(ARTIFACTS_ENV) or DEFAULT_FOLDER).resolve()


def open_store(folder: Path | str | None = None):
    from optuna.artifacts import FileSystemArtifactStore

    root = artifact_root(folder)
    root.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(root))


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Curve:
    """What learning_curve_png draws, against the trial's steps: the epoch, or train clips seen where the trial
    reported in clips (how2sign.reporting), then with every report, those inside epochs too."""

    x_label: str                     # "epoch" or "train clips seen"
    train: list[tuple[int, float]]   # (step, train loss) at each epoch's end
    val: list[tuple[int, float]]     # (step, validation loss) at every report, in order
    inside: list[tuple[int, float]]  # of those, the reports inside an epoch (on the val subset where there is one)
    lr: list[tuple[int, float]]      # (step, learning rate) at each epoch's end
    best: tuple[int, float] | None   # the best epoch's step and validation loss


def learning_curve(history: list[dict], reports: list[dict] | None = None) -> Curve:
    """The curve of a run from metrics.json: `history` (its epochs) and `reports` (listed only where the steps are
    train clips; how2sign.run_metrics). An epoch's values are drawn at its own report's step."""
    recs = sorted(history, key=lambda h: h["epoch"])
    if reports:
        at = {r["epoch"]: r["step"] for r in reports if r["epoch_end"]}
        recs = [h for h in recs if h["epoch"] in at]
        val = sorted((r["step"], r["val_loss"]) for r in reports)
        inside = [(r["step"], r["val_loss"]) for r in reports if not r["epoch_end"]]
    else:
        at = {h["epoch"]: h["epoch"] for h in recs}
        val, inside = [(h["epoch"], h["val_loss"]) for h in recs], []
    best = min(recs, key=lambda h: h["val_loss"]) if recs else None
    return Curve("train clips seen" if reports else "epoch", [(at[h["epoch"]], h["train_loss"]) for h in recs], val,
                 inside, [(at[h["epoch"]], h["lr"]) for h in recs if h.get("lr")],
                 (at[best["epoch"]], best["val_loss"]) if best else None)


def learning_curve_png(history: list[dict], path: Path, title: str = "", reports: list[dict] | None = None) -> Path:
    """Train and validation loss against the trial's steps, best epoch marked, learning rate on a log axis."""
    curve_figure(learning_curve(history, reports), title).savefig(path, dpi=110)
    return path


def curve_figure(curve: Curve, title: str = ""):
    """The learning curve's matplotlib Figure (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(*_xy(curve.train), "o-", color="#1f77b4", label="train loss", ms=3)
    ax.plot(*_xy(curve.val), "o-", color="#d62728", label="validation loss", ms=3)
    if curve.inside:
        ax.plot(*_xy(curve.inside), "o", color="#d62728", mfc="white", ms=4, label="validation inside an epoch")
    if curve.best:
        ax.axvline(curve.best[0], color="#888", ls=":", lw=1)
        ax.annotate(f"best {curve.best[1]:.3f}", curve.best, xytext=(4, 8), textcoords="offset points", fontsize=8,
                    color="#444")
    ax.set_xlabel(curve.x_label)
    ax.set_ylabel("token cross-entropy")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7, integer=True))
    if curve.x_label != "epoch":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 7.75k, 31k: clip counts grow long
    handles, labels = ax.get_legend_handles_labels()
    if curve.lr:
        ax2 = ax.twinx()
        handles += ax2.plot(*_xy(curve.lr), "--", color="#2ca02c", lw=1, label="learning rate")
        ax2.set_yscale("log")
        ax2.set_ylabel("learning rate", color="#2ca02c")
        labels.append("learning rate")
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _xy(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [x for x, _ in points], [y for _, y in points]


def translations_csv(references: list[str], hypotheses: list[str], path: Path, n: int = SAMPLE_SIZE) -> Path:
    """An evenly spread sample: `row` is the clip's row in the split's CSV (as in --predictions)."""
    total = len(references)
    rows = sorted({round(k * (total - 1) / max(n - 1, 1)) for k in range(min(n, total))}) if total else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "reference", "hypothesis"])
        for r in rows:
            w.writerow([r, references[r], hypotheses[r]])
    return path


# --------------------------------------------------------------------------- notes
def study_note(spec) -> str:
    """The study's dashboard note (Markdown): what the anchor is and where the evidence lives."""
    params = ", ".join(f"`{k}={v}`" for k, v in spec.anchor_params.items())
    lines = [f"## {spec.name}", "", spec.description, ""]
    if spec.anchor_name:
        lines += [
            f"**Anchor trial.** The trial whose user attribute `anchor` is `true` (`anchor_name` = "
            f"`{spec.anchor_name}`) is the researcher's hand-tuned **{spec.anchor_name.upper()}** setting: "
            f"{params}. It was enqueued once, when this study was created (usually trial 0), and every other "
            "trial is measured against it. Its own note says so too; sort or filter the trial table by the "
            "`anchor` user attribute to find it.", ""]
    lines += [_steps_note(spec), ""]
    lines += [
        "**Per trial.** Finished trials carry `learning_curve.png`, `translations.csv` (reference against "
        "hypothesis on validation clips) and `metrics.json` as artifacts, and a diagnosis read from their "
        "curves: `overfit_epoch`, `final_gap`, `lr_collapsed` and the sentence in `diagnosis`.", "",
        "BLEU and chrF are on sacrebleu's 0-100 scale (the notes' BLEU 0.008 is 0.8 here). "
        "`h2s-search report` writes all of this into one HTML page."]
    return "\n".join(lines)


def _steps_note(spec) -> str:
    """What the intermediate values' steps count (optuna-dashboard's plot calls them "Step")."""
    every = spec.base_config().report_every
    unit = (f"the number of train clips seen (`report_every` = {every})" if every else
            f"the epoch, or, on a train split of {AUTO_MIN_CLIPS:,} clips or more, the number of train clips seen "
            f"(four reports per epoch; such trials have `step_unit` = `{CLIPS}`)")
    return (f"**Intermediate values.** Their step (the dashboard's \"Step\") is {unit}. A report inside an epoch "
            "may validate on a fixed subset of the val split; each epoch's own report, early stopping and the "
            "trial's `val_loss` use all of it.")


def write_study_note(study, spec) -> None:
    from optuna_dashboard import save_note

    save_note(study, study_note(spec))


def anchor_note(name: str, params: dict, result: TrialRecord | None = None) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
    text = (f"## Anchor: {name.upper()}\n\nThis is the study's **anchor trial** (user attributes `anchor` = true, "
            f"`anchor_name` = `{name}`): the researcher's hand-tuned {name.upper()} setting, enqueued once as "
            f"the reference that every other trial is compared with.\n\n| parameter | value |\n|---|---|\n{rows}\n")
    if result is not None:  # read from the trial: absent attributes are None
        def fmt(v, spec):
            return "-" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)

        r = result
        text += (f"\n**Result:** validation loss {fmt(r.val_loss, '.4f')}, gap {fmt(r.gap, '.3f')}, "
                 f"BLEU {fmt(r.bleu, '.2f')}, verdict {fmt(r.verdict, '')}, "
                 f"{fmt(r.n_params, ',')} parameters.\n\n**Diagnosis:** {fmt(r.diagnosis, '')}\n")
    return text


def note_anchor(trial, params: dict | None = None) -> None:
    """Write (or rewrite, with results) the anchor trial's dashboard note; no-op for other trials."""
    record = TrialRecord.read(trial)
    if record.anchor is not True:
        return
    from optuna_dashboard import save_note

    done = record if record.diagnosis is not None else None
    save_note(trial, anchor_note(str(record.anchor_name or "anchor"), params or trial.params, done))


# --------------------------------------------------------------------------- the worker's hook
def record_trial(trial, run_dir: Path, store, *, history: list[dict] | None = None, lr_min: float | None = None,
                 samples: tuple[list[str], list[str]] | None = None, pruned: bool = False,
                 log=print, test: tuple[list[str], list[str]] | None = None) -> Diagnosis:
    """Diagnose a finished trial, record the attributes, upload its artifacts and note the anchor.

    history defaults to run_dir/metrics.json's epochs; its reports (listed where the steps are train clips) go
    into the learning curve. test: a confirmation run's test references and hypotheses, all of them
    (search.translations): written into the run folder first, outside the tolerance below (the paired test
    needs them), and uploaded first. Failing to render or upload is logged, never fatal: the trial's result
    matters more than its pictures.
    """
    run_dir = Path(run_dir)
    metrics = RunMetrics.read(run_dir)
    if history is None:
        history = metrics.history if metrics else []
    diag = diagnose(history, lr_min=lr_min)
    record = diag.record(pruned)
    record.write(trial)
    test_file = write_test_translations(run_dir, *test) if test is not None else None
    try:
        upload_trial_artifacts(trial, run_dir, store, history, samples, f"trial {trial.number}: {record.diagnosis}",
                               test_file, reports=metrics.reports if metrics else None)
        note_anchor(trial)
    except Exception as exc:  # artifacts are a side output: the trial goes on
        log(f"trial {trial.number}: artifacts not uploaded ({type(exc).__name__}: {exc})")
    return diag


def upload_trial_artifacts(trial, run_dir: Path, store, history: list[dict],
                           samples: tuple[list[str], list[str]] | None, title: str,
                           test_file: Path | None = None, *,
                           reports: list[dict] | None = None) -> dict[str, str]:
    """Upload a confirmation run's test hypotheses (already written), then write the other files into the
    trial's run folder and upload each once written; returns {filename: artifact_id}. A trial pruned at a
    report inside its first epoch has reports and no epochs: its curve is those reports."""
    from optuna.artifacts import upload_artifact

    ids: dict[str, str] = {}

    def upload(path: Path, mimetype: str) -> None:
        ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                         mimetype=mimetype)

    if test_file is not None:
        upload(test_file, "text/csv")
    if history or reports:
        upload(learning_curve_png(history, run_dir / LEARNING_CURVE, title, reports), "image/png")
    if samples is not None:
        upload(translations_csv(samples[0], samples[1], run_dir / TRANSLATIONS), "text/csv")
    if (run_dir / METRICS).exists():
        upload(run_dir / METRICS, "application/json")
    return ids


def read_uploaded(trial, storage, filename: str, folder: Path | str | None = None) -> tuple[str, str]:
    """The text of the artifact `filename` a trial uploaded, read from the artifact store in `folder`
    (resolved as artifact_root does), and where it was read, in words. FileNotFoundError, saying what is
    missing, when the trial uploaded none or the store does not hold it. Creates no folder."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
    from optuna.artifacts.exceptions import ArtifactNotFound

    meta = next((m for m in get_all_artifact_meta(trial, storage=storage) if m.filename == filename), None)
    if meta is None:
        raise FileNotFoundError(f"trial {trial.number} uploaded no {filename} artifact")
    root = artifact_root(folder)
    try:
        with FileSystemArtifactStore(str(root)).open_reader(meta.artifact_id) as f:
            data = f.read()
    except ArtifactNotFound:
        raise FileNotFoundError(f"its uploaded {filename} ({meta.artifact_id}) is not in the artifact store {root} "
                                f"(--artifacts or ${ARTIFACTS_ENV})") from None
    return data.decode("utf-8"), f"{filename} of trial {trial.number} in the artifact store {root}"
