"""A real worker on a tiny synthetic corpus leaves diagnosis attributes, artifacts in a real
FileSystemArtifactStore (read back through Optuna's own API) and dashboard notes for the anchor."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

from search.artifacts import ARTIFACTS_ENV, artifact_root, open_store
from search.launcher import worker_command
from search.tiny_study import tiny_study_toml

# The anchor's lr lies outside the searched range on purpose (see STUDY).
pytestmark = pytest.mark.filterwarnings("ignore:Fixed parameter lr:UserWarning")

# The anchor learns at 3e-3; the others at ~1e-6 are worse after one epoch: the median pruner prunes them.
STUDY = tiny_study_toml("insp", n_trials=3, epochs=3, train={"lr_min": 1e-7},
                        space='lr = { type = "float", low = 1e-6, high = 2e-6, log = true }', anchor={"lr": 3e-3},
                        pruner='type = "median"\nn_startup_trials = 1\nn_warmup_steps = 0',
                        description="inspection test study")


@pytest.fixture(scope="module")
def worker_study(tmp_path_factory, fleet_corpus):
    """Run one in-process worker over the whole 3-trial budget; returns (storage, study, artifact folder)."""
    from how2sign.batches import TrainData
    from search.spec import load_spec
    from search.study import create_or_load
    from search.worker import WorkerSettings, run_worker

    tmp_path = tmp_path_factory.mktemp("inspection")
    data = tmp_path / "data"
    shutil.copytree(fleet_corpus, data)
    (tmp_path / "insp.toml").write_text(STUDY)
    spec = load_spec(str(tmp_path / "insp.toml"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_load(url, spec, TrainData.load(data).fingerprint, str(data))
    settings = WorkerSettings(study="insp", storage=url, data_root=data, device="cpu",
                              checkpoint_dir=tmp_path / "ck", artifact_dir=tmp_path / "art")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    logs: list[str] = []
    try:
        res = run_worker(settings, log=logs.append)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert res.ran == 3, logs
    storage = optuna.storages.RDBStorage(url)
    return storage, optuna.load_study(study_name="insp", storage=storage), tmp_path / "art"


def test_finished_trials_carry_diagnosis_and_artifacts(worker_study, tmp_path):
    storage, study, art = worker_study
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == 1 and complete[0].user_attrs["anchor"] is True and len(pruned) == 2

    store = FileSystemArtifactStore(str(art))
    for t in trials:
        attrs = t.user_attrs
        assert {"overfit_epoch", "final_gap", "lr_collapsed", "diagnosis"} <= set(attrs)
        run = Path(attrs["checkpoint"])
        epochs = json.loads((run / "metrics.json").read_text())["epochs"]
        assert attrs["final_gap"] == pytest.approx(epochs[-1]["val_loss"] - epochs[-1]["train_loss"])
        assert attrs["lr_collapsed"] is False  # cosine towards its own floor

        metas = {m.filename: m for m in get_all_artifact_meta(t, storage=storage)}
        expected = {"learning_curve.png", "metrics.json"} | ({"translations.csv"} if t in complete else set())
        assert set(metas) == expected, (t.number, set(metas))
        got = {}
        for name, meta in metas.items():
            dst = tmp_path / "down" / str(t.number) / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            download_artifact(artifact_store=store, file_path=str(dst), artifact_id=meta.artifact_id)
            got[name] = dst.read_bytes()
        assert metas["learning_curve.png"].mimetype == "image/png"
        assert got["learning_curve.png"].startswith(b"\x89PNG") and len(got["learning_curve.png"]) > 5000
        assert got["metrics.json"] == (run / "metrics.json").read_bytes()
        if "translations.csv" in got:
            rows = list(csv.DictReader(io.StringIO(got["translations.csv"].decode())))
            assert 1 <= len(rows) <= 50 and set(rows[0]) == {"row", "reference", "hypothesis"}
            assert rows[0]["row"] == "0" and len({r["row"] for r in rows}) == len(rows)
            samples = attrs["samples"]
            assert rows[0]["reference"] == samples[0]["reference"]
            assert rows[0]["hypothesis"] == samples[0]["hypothesis"]

    for t in pruned:
        assert t.user_attrs["diagnosis"].startswith("pruned after epoch 1"), t.user_attrs["diagnosis"]
    assert complete[0].user_attrs["diagnosis"]
    assert not any(t.user_attrs["diagnosis"].startswith("pruned") for t in complete)


def test_the_study_and_the_anchor_have_dashboard_notes(worker_study):
    from optuna_dashboard import get_note
    from optuna_dashboard._note import get_note_from_system_attrs

    storage, study, _ = worker_study
    note = get_note(study)
    assert "**Anchor trial.**" in note and "`anchor`" in note and "V4" in note and "lr=0.003" in note
    anchor = next(t for t in study.get_trials() if t.user_attrs["anchor"])
    trial_note = get_note_from_system_attrs(storage.get_study_system_attrs(study._study_id), anchor._trial_id)
    body = trial_note["body"]
    assert body.startswith("## Anchor: V4") and "anchor trial" in body and "| lr | 0.003 |" in body
    assert "**Result:** validation loss" in body and anchor.user_attrs["diagnosis"] in body
    assert trial_note["version"] == 2  # written when it started, rewritten with the result
    others = [t for t in study.get_trials() if not t.user_attrs["anchor"]]
    assert all(get_note_from_system_attrs(storage.get_study_system_attrs(study._study_id), t._trial_id)["body"] == ""
               for t in others)


def test_worker_start_and_dashboard_resolve_the_same_artifact_folder(tmp_path, monkeypatch):
    from search.views import artifact_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    assert artifact_root() == tmp_path / "h2s-artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "shared"))
    assert artifact_root() == tmp_path / "shared"
    assert artifact_root(tmp_path / "given") == tmp_path / "given"  # the option wins
    store = artifact_store(None)
    assert isinstance(store, FileSystemArtifactStore) and (tmp_path / "shared").is_dir()
    assert open_store(None)._base_path == store._base_path
    cmd = worker_command("s", "sqlite:///x.db", tmp_path, "cpu", 0, None, tmp_path / "given")
    assert cmd[cmd.index("--artifact-dir") + 1] == str(tmp_path / "given")
    assert "--artifact-dir" not in worker_command("s", "sqlite:///x.db", tmp_path, "cpu", 0, None)


def test_artifact_options_on_the_command_line():
    from typer.testing import CliRunner

    from search.cli import app

    runner = CliRunner()
    for cmd in ("worker", "start"):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "--artifact-dir" in res.output and "H2S_ARTIFACTS" in res.output
    for cmd in ("dashboard", "report"):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert "--artifacts" in res.output and "H2S_ARTIFACTS" in res.output


def test_a_confirmation_runs_test_hypotheses_survive_a_failing_plot_and_are_uploaded(tmp_path, monkeypatch):
    """The learning curve fails to render: the trial goes on, its test hypotheses are in its run folder and
    in the artifact store all the same, and read_uploaded reads them back (or says what is missing)."""
    import search.artifacts as artifacts
    from search.translations import TEST_TRANSLATIONS, read_test_translations

    def broken(*_a, **_k):
        raise RuntimeError("no renderer")

    monkeypatch.setattr(artifacts, "learning_curve_png", broken)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial, other = study.ask(), study.ask()
    run = tmp_path / "run"
    run.mkdir()
    refs, hyps = ["a man signs", "the paper, folded"], ["a man", 'the "paper"']
    history = [{"epoch": e, "train_loss": 3.0 - e, "val_loss": 3.2 - e / 2, "lr": 1e-3} for e in (1, 2)]
    logs: list[str] = []
    artifacts.record_trial(trial, run, open_store(tmp_path / "art"), history=history, log=logs.append,
                           test=(refs, hyps))
    assert logs == [f"trial {trial.number}: artifacts not uploaded (RuntimeError: no renderer)"]
    kept = read_test_translations(run)
    assert (kept.references, kept.hypotheses) == (refs, hyps)
    frozen = study.trials[trial.number]
    assert [m.filename for m in get_all_artifact_meta(frozen, storage=study._storage)] == [TEST_TRANSLATIONS]
    text, where = artifacts.read_uploaded(frozen, study._storage, TEST_TRANSLATIONS, tmp_path / "art")
    assert text == (run / TEST_TRANSLATIONS).read_bytes().decode() and where.endswith(f"artifact store {tmp_path / 'art'}")
    with pytest.raises(FileNotFoundError, match="is not in the artifact store"):
        artifacts.read_uploaded(frozen, study._storage, TEST_TRANSLATIONS, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(FileNotFoundError, match=f"trial {other.number} uploaded no {TEST_TRANSLATIONS}"):
        artifacts.read_uploaded(study.trials[other.number], study._storage, TEST_TRANSLATIONS, tmp_path / "art")
