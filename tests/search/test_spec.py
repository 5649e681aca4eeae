import tomllib
from pathlib import Path

import optuna
import pytest

from search.space import config_from_trial
from search.spec import SpecError, find_study_file, load_spec, parse
from search.storage import StorageError, mask_password, parse_url, resolve_url


def capacity_raw() -> dict:
    return tomllib.loads(find_study_file("capacity").read_text())


def test_shipped_studies_parse():
    cap = load_spec("capacity")
    names = {p.name for p in cap.space}
    assert {"d_model", "encoder_layers", "decoder_layers", "dim_feedforward", "dropout", "batch_size", "lr"} <= names
    assert cap.anchor_name == "v4" and cap.anchor_params["d_model"] == 256
    plan_b = load_spec("plan-b")
    assert {"train_fraction", "finetune_epochs", "aug_noise", "aug_speed"} <= {p.name for p in plan_b.space}
    pareto = load_spec("pareto")
    assert pareto.multi_objective and pareto.metrics == ("val_loss", "params") and pareto.max_gap == 0.5


def test_demo_overrides_apply():
    cap = load_spec("capacity")
    demo = cap.with_demo()
    assert demo.n_trials == cap.demo["n_trials"] and demo.base_config().epochs == cap.demo["train"]["epochs"]
    assert demo.space == cap.space


def test_lookup_prefers_a_local_studies_folder(tmp_path: Path):
    (tmp_path / "studies").mkdir()
    raw = capacity_raw()
    text = find_study_file("capacity").read_text().replace('n_trials = 40', 'n_trials = 3')
    (tmp_path / "studies" / "capacity.toml").write_text(text)
    assert load_spec("capacity", cwd=tmp_path).n_trials == 3
    (tmp_path / "mine.toml").write_text(text.replace('name = "capacity"', 'name = "mine"'))
    assert load_spec(str(tmp_path / "mine.toml")).name == "mine"
    assert raw["name"] == "capacity"


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.update(colour="blue"), "unknown key 'colour'"),
    (lambda r: r["space"].update(learning_rate={"type": "float", "low": 1e-5, "high": 1e-3}),
     "'learning_rate' is not a TrainConfig field"),
    (lambda r: r["space"]["lr"].update(low="small"), "low must be int or float"),
    (lambda r: (r["space"]["d_model"].update(choices=[100, 250]), r["space"]["nhead"].update(choices=[8, 16])),
     "impossible"),
    (lambda r: r["space"].update(encoder_layers={"type": "float", "low": 1, "high": 3}), "does not fit"),
    (lambda r: r["space"]["dropout"].update(step=-1), "step must be > 0"),
    (lambda r: r["pruner"].update(type="magic"), "[pruner]: type must be one of"),
    (lambda r: r["pruner"].update(eta=3), "unknown key 'eta'"),
    (lambda r: r["train"].update(epochs="ten"), "epochs must be int"),
    (lambda r: r["anchor"]["params"].pop("lr"), "missing 'lr'"),
    (lambda r: r["criteria"].update(best_bleu=1), "unknown key 'best_bleu'"),
    (lambda r: r.update(metric="accuracy"), "metric must be one of"),
])
def test_bad_study_files_name_file_and_key(mutate, message):
    raw = capacity_raw()
    mutate(raw)
    with pytest.raises(SpecError) as exc:
        parse(raw, "studies/capacity.toml")
    assert message in str(exc.value) and "studies/capacity.toml" in str(exc.value)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(SpecError, match="no study file for 'nope'"):
        load_spec("nope", cwd=tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(SpecError, match="malformed TOML"):
        load_spec(str(bad))


def test_multi_objective_cannot_prune():
    raw = tomllib.loads(find_study_file("pareto").read_text())
    raw["pruner"] = {"type": "median"}
    with pytest.raises(SpecError, match="cannot prune multi-objective"):
        parse(raw, "pareto.toml")


def test_config_from_trial_with_fixed_trial():
    spec = load_spec("capacity")
    cfg = config_from_trial(optuna.trial.FixedTrial(spec.anchor_params), spec)
    assert (cfg.d_model, cfg.nhead, cfg.encoder_layers, cfg.dim_feedforward, cfg.batch_size) == (256, 4, 2, 1024, 64)
    assert cfg.epochs == 30 and cfg.lr == 1e-4  # [train] fixed, [space] suggested
    other = dict(spec.anchor_params, d_model=384, nhead=8, lr=3e-4)
    cfg = config_from_trial(optuna.trial.FixedTrial(other), spec)
    assert (cfg.d_model, cfg.nhead, cfg.lr) == (384, 8, 3e-4)


def test_only_space_py_calls_suggest():
    root = Path(__file__).resolve().parents[2]
    callers = [p for p in list((root / "search").rglob("*.py")) + list((root / "how2sign").rglob("*.py"))
               if "suggest_" in p.read_text() and p.name != "space.py"]
    assert callers == []
    assert not [p for p in (root / "how2sign").rglob("*.py") if "import optuna" in p.read_text()]


def test_storage_urls_and_masking(monkeypatch):
    monkeypatch.delenv("H2S_STORAGE", raising=False)
    assert resolve_url(None) == "sqlite:///h2s-search.db"
    monkeypatch.setenv("H2S_STORAGE", "postgresql://a@b/c")
    assert resolve_url(None) == "postgresql://a@b/c" and resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert parse_url("postgresql://u:pw@h/db").sqlalchemy == "postgresql+psycopg://u:pw@h/db"
    assert parse_url("mysql://u@h/db").sqlalchemy == "mysql+pymysql://u@h/db"
    assert mask_password("cannot reach postgresql://bob:s3cret@db:5432/x now") == \
        "cannot reach postgresql://bob:***@db:5432/x now"
    with pytest.raises(StorageError, match="unknown storage scheme 'redis'"):
        parse_url("redis://u:pw@h/0")
    with pytest.raises(StorageError) as exc:
        parse_url("oracle://u:topsecret@h/0")
    assert "topsecret" not in str(exc.value)


# --------------------------------------------------------------------------- values the space can reach
@pytest.mark.parametrize("key,table,message", [
    ("aug_speed", {"type": "float", "low": 0.0, "high": 1.5}, "[space.aug_speed]: the space reaches aug_speed = 1.5"),
    ("aug_scale", {"type": "categorical", "choices": [0.0, 0.1, 1.0]}, "which TrainConfig refuses: aug_scale must be in [0, 1), got 1.0"),
    ("lr_min", {"type": "float", "low": 1e-6, "high": 1.0}, "[space.lr_min]: the space reaches lr_min = 1.0"),
])
def test_a_space_that_reaches_an_invalid_value_is_refused(key, table, message):
    raw = capacity_raw()
    raw["space"][key] = table
    raw["anchor"]["params"][key] = table.get("low", 0.0)
    with pytest.raises(SpecError) as exc:
        parse(raw, "studies/capacity.toml")
    assert message in str(exc.value) and str(exc.value).startswith("studies/capacity.toml [space.")


def test_the_anchor_and_train_tables_are_checked_the_same_way():
    raw = capacity_raw()
    raw["space"]["aug_speed"] = {"type": "float", "low": 0.0, "high": 0.5}
    raw["anchor"]["params"]["aug_speed"] = 0.5
    parse(raw, "studies/capacity.toml")  # the ends of the space are allowed
    raw["anchor"]["params"]["aug_speed"] = 1.2
    with pytest.raises(SpecError, match=r"^studies/capacity.toml \[anchor.params\]: aug_speed must be in \[0, 1\)"):
        parse(raw, "studies/capacity.toml")
    raw["train"]["aug_speed"] = 1.0
    with pytest.raises(SpecError, match=r"^studies/capacity.toml: \[train\]: aug_speed must be in \[0, 1\)"):
        parse(raw, "studies/capacity.toml")


def test_start_and_status_refuse_such_a_study_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from search.cli import app

    raw = capacity_raw()
    raw["space"]["aug_speed"] = {"type": "float", "low": 0.0, "high": 1.5}
    raw["anchor"]["params"]["aug_speed"] = 0.0
    path = tmp_path / "fast.toml"
    path.write_text(find_study_file("capacity").read_text().replace(
        "[space]", '[space]\naug_speed = { type = "float", low = 0.0, high = 1.5 }').replace(
        "params = { ", "params = { aug_speed = 0.0, "))
    url = f"sqlite:///{tmp_path / 's.db'}"
    res = CliRunner().invoke(app, ["start", "--study", str(path), "--storage", url, "--workers", "0"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and str(path) in lines[0] and "[space.aug_speed]" in lines[0]
    # A definition stored before this check existed is refused when a worker or status loads it.
    study = optuna.create_study(study_name="old", storage=url)
    from search.records import StudyRecord

    StudyRecord(spec={**raw, "name": "old"}, fingerprint="0" * 64, budget=3).write(study)
    res = CliRunner().invoke(app, ["status", "--study", "old", "--storage", url])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "study 'old'" in lines[0] and "aug_speed" in lines[0], res.output
