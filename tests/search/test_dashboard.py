"""optuna-dashboard's own WSGI app, in-process, serving our study: trials, the anchor's attributes and
notes, and the artifacts the worker hook uploaded (read back over HTTP)."""

from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from search.artifacts import record_trial
from search.space import config_from_trial
from search.spec import load_spec
from search.study import create_or_load

SPACE = """
d_model = { type = "categorical", choices = [16, 32] }
dropout = { type = "float", low = 0.0, high = 0.3 }
lr = { type = "float", low = 1e-4, high = 3e-3, log = true }
"""


def fake_history(lr: float, epochs: int = 6, overfit: bool = False) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        val = 4.0 - 0.2 * min(e, 3) + (0.1 * (e - 3) if overfit and e > 3 else 0.0)
        out.append({"epoch": e, "train_loss": 4.1 - 0.25 * e, "val_loss": val, "lr": lr, "seconds": 1.0,
                    "frames_per_second": 100.0})
    return out


STUDY = f"""
name = "dash"
description = "dashboard test study"
n_trials = 3

[train]
nhead = 4
encoder_layers = 1
decoder_layers = 1
dim_feedforward = 64
batch_size = 8
epochs = 6
lr_min = 1e-5

[space]
{SPACE}
[anchor]
name = "v4"
params = {{ d_model = 32, dropout = 0.1, lr = 1e-3 }}

[sampler]
type = "random"
seed = 0
"""


@pytest.fixture(scope="module")
def served_study(tmp_path_factory):
    """A study made by create_or_load (study note, anchor enqueued) whose trials go through the worker's
    inspection hook with made-up curves instead of training: fast, and the same code path for artifacts."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    (tmp_path / "dash.toml").write_text(STUDY)
    spec = load_spec(str(tmp_path / "dash.toml"))
    url = f"sqlite:///{tmp_path / 'd.db'}"
    opened = create_or_load(url, spec, "f" * 64, "made-up data")
    from search.views import artifact_store

    store = artifact_store(tmp_path / "art")

    def objective(trial: optuna.Trial) -> float:
        cfg = config_from_trial(trial, opened.spec)
        run = tmp_path / "runs" / f"trial-{trial.number:05d}"
        run.mkdir(parents=True)
        hist = fake_history(cfg.lr, overfit=trial.number == 1)
        (run / "metrics.json").write_text(json.dumps({"params": 1000, "best_epoch": 3, "epochs": hist}))
        for k, v in {"params": 1000 + trial.number, "val_loss": min(h["val_loss"] for h in hist),
                     "gap": 0.1, "bleu": 1.0, "verdict": "none", "checkpoint": str(run)}.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("anchor", trial.user_attrs.get("anchor", False))
        record_trial(trial, run, store, history=hist, lr_min=cfg.lr_min,
                     samples=(["cut the onion", "kick the ball"], ["cut the the", "kick ball"]))
        return min(h["val_loss"] for h in hist) + 0.01 * trial.number

    opened.study.optimize(objective, n_trials=3)
    return url, store


class Client:
    """GET requests straight into a WSGI app, no server and no extra dependency (wsgiref environ)."""

    def __init__(self, app):
        self.app = app

    def get(self, path: str) -> tuple[int, bytes]:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
        status = []
        body = self.app(environ, lambda s, headers, exc_info=None: status.append(int(s.split()[0])))
        try:
            data = b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        return status[0], data


def get_json(client: Client, path: str):
    code, body = client.get(path)
    assert code == 200, (path, code, body[:300])
    return json.loads(body)


def test_dashboard_api_serves_the_study_trials_notes_and_artifacts(served_study):
    from optuna_dashboard import wsgi

    from search.storage import open_storage

    url, store = served_study
    client = Client(wsgi(open_storage(url, heartbeat=False), artifact_store=store))
    studies = get_json(client, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    sid = studies[0]["study_id"]
    detail = get_json(client, f"/api/studies/{sid}")
    assert "**Anchor trial.**" in detail["note"]["body"]
    trials = detail["trials"]
    assert len(trials) == 3 and all(t["state"] == "Complete" for t in trials)

    def attrs(t):
        return {a["key"]: a["value"] for a in t["user_attrs"]}

    anchor = [t for t in trials if attrs(t)["anchor"] == "True"]
    assert len(anchor) == 1 and attrs(anchor[0])["anchor_name"] == "v4" and anchor[0]["number"] == 0
    assert anchor[0]["note"]["body"].startswith("## Anchor: V4")
    assert attrs(trials[1])["diagnosis"].startswith("overfitting from epoch 3")
    assert attrs(trials[1])["overfit_epoch"] == "3"
    for t in trials:
        names = {a["filename"]: a for a in t["artifacts"]}
        assert set(names) == {"learning_curve.png", "translations.csv", "metrics.json"}
        code, png = client.get(f"/artifacts/{sid}/{t['trial_id']}/{names['learning_curve.png']['artifact_id']}")
        assert code == 200 and png.startswith(b"\x89PNG")
        _, csv = client.get(f"/artifacts/{sid}/{t['trial_id']}/{names['translations.csv']['artifact_id']}")
        assert csv.decode().splitlines()[:2] == ["row,reference,hypothesis", "0,cut the onion,cut the the"]
        metrics = get_json(client, f"/artifacts/{sid}/{t['trial_id']}/{names['metrics.json']['artifact_id']}")
        assert metrics["best_epoch"] == 3
    # The dashboard's own page is served too (the single-page app's shell).
    code, page = client.get("/dashboard")
    assert code == 200 and b"<html" in page.lower()


def test_dashboard_command_wires_the_artifact_store_and_binds_loopback(served_study, tmp_path, monkeypatch):
    import optuna_dashboard

    from search.views import serve_dashboard

    url, _ = served_study
    seen: dict = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: seen.update(kw, storage=storage))
    lines: list[str] = []
    serve_dashboard(url, "127.0.0.1", 8089, tmp_path / "art", say=lines.append)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8089
    assert seen["artifact_store"]._base_path == (tmp_path / "art").resolve()
    assert any(str((tmp_path / "art").resolve()) in line for line in lines)
    assert not any("warning" in line for line in lines)


def test_dashboard_on_a_missing_sqlite_file_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from search.cli import app

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "typo.db"
    res = CliRunner().invoke(app, ["dashboard", "--storage", f"sqlite:///{db}"])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "does not exist" in res.stderr and str(db) in res.stderr
    assert list(tmp_path.iterdir()) == []  # no empty database, no artifact store
