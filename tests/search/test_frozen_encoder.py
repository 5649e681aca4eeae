"""The frozen-encoder study: its arms, the encoder `start` finds or builds, and every bad encoder input."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from decoding_reference import checkpoint_step_logit_difference, evaluate_with_full_recomputation
from optuna.trial import FixedTrial, TrialState
from typer.testing import CliRunner

from how2sign import checkpoint
from how2sign.batches import TrainData
from how2sign.encoder_file import FeatureLayout, read_encoder, save_encoder
from how2sign.evaluate import evaluate_checkpoint, load_model
from how2sign.jobs import DataChoice
from how2sign.model import PoseEncoder
from how2sign.pretrain import PretrainConfig, pretrain
from how2sign.rules import ConfigError
from search import pretrained
from search.arms import ARM_NAMES as ARMS
from search.cli import app
from search.records import TrialRecord
from search.space import config_from_trial
from search.spec import SpecError, load_spec, parse
from search.study import create_or_load
from search.tiny_study import TINY_TRAIN
from search.worker import WorkerSettings, run_worker

runner = CliRunner()
# The encoder of the tests' tiny model (tests/conftest.py: the tiny study's, with 4 heads).
TINY_SHAPE = {**{k: TINY_TRAIN[k] for k in ("d_model", "encoder_layers", "dim_feedforward")}, "nhead": 4}
SPACE = f"""
encoder = {{ type = "categorical", choices = {list(ARMS)!r} }}
decoder_nhead = {{ type = "categorical", choices = [2, 4] }}
lr = {{ type = "float", low = 1e-4, high = 3e-3, log = true }}
""".replace("'", '"')
ANCHOR = '\n[anchor]\nname = "v4"\nparams = { encoder = "scratch", decoder_nhead = 4, lr = 1e-3 }\n'


def frozen_study(write_study, encoder_init: str | None, name: str = "fe") -> Path:
    path = write_study(name, n_trials=3, epochs=1, space=SPACE, anchor=False)
    text = path.read_text() + ANCHOR
    if encoder_init is not None:
        text = f'encoder_init = "{encoder_init}"\n' + text
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def encoder_file(corpus_master, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fe") / "h2s"
    shutil.copytree(corpus_master, root, ignore=shutil.ignore_patterns("h2s-packed"))
    cfg = PretrainConfig(**TINY_SHAPE, batch_size=8, epochs=1, lr=1e-3)
    return Path(pretrain(cfg, root, root.parent / "pre", device="cpu").encoder)


def cli(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


def assert_refused(res: subprocess.CompletedProcess, db: Path, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    text = res.stderr.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith("error: "), text
    for n in needles:
        assert n in text, text
    if db.exists():  # nothing in the study is touched: it was never created
        assert optuna.get_all_study_summaries(f"sqlite:///{db}") == []


def test_shipped_study_searches_the_decoder_around_v4_with_four_encoder_arms():
    spec = load_spec("frozen-encoder")
    assert spec.encoder_arms == ARMS and spec.anchor_name == "v4" and spec.anchor_params["encoder"] == "scratch"
    assert {p.name for p in spec.space} == {"encoder", "decoder_layers", "decoder_nhead", "decoder_feedforward",
                                            "dropout", "lr", "batch_size", "label_smoothing"}
    anchor = config_from_trial(FixedTrial(spec.anchor_params), spec)
    v4 = spec.base_config()
    assert (anchor.d_model, anchor.nhead, anchor.encoder_layers, anchor.dim_feedforward) == (256, 4, 2, 1024)
    assert anchor.model_config(10, 10) == dataclasses.replace(v4, decoder_nhead=4, decoder_feedforward=1024,
                                                               dropout=0.3, batch_size=64).model_config(10, 10)
    assert not anchor.freeze_encoder and anchor.encoder_init == ""
    with pytest.raises(ConfigError, match="needs the study's encoder_init"):
        config_from_trial(FixedTrial({**spec.anchor_params, "encoder": "pretrained-frozen"}), spec)
    with_file = parse({**spec.raw, "encoder_init": "/enc/encoder.pt"}, "x")
    got = {arm: config_from_trial(FixedTrial({**spec.anchor_params, "encoder": arm}), with_file) for arm in ARMS}
    assert [(c.encoder_init, c.freeze_encoder, c.encoder_lr_scale) for c in got.values()] == [
        ("", False, 1.0), ("/enc/encoder.pt", True, 1.0), ("", True, 1.0), ("/enc/encoder.pt", False, 0.1)]


@pytest.mark.parametrize(("table", "needle"), [
    ('{ type = "categorical", choices = ["scratch", "imagenet"] }', "'imagenet'"),
    ('{ type = "int", low = 0, high = 3 }', "must be {type = \"categorical\""),
])
def test_bad_encoder_parameter_is_a_spec_error(write_study, table, needle):
    path = write_study("bad", space=f"encoder = {table}\n", anchor=False)
    with pytest.raises(SpecError, match=needle.replace("{", r"\{").replace("(", r"\(")):
        load_spec(str(path))


def test_missing_encoder_file_is_refused_before_any_trial(corpus, write_study, tmp_path):
    study = frozen_study(write_study, str(tmp_path / "nowhere" / "encoder.pt"))
    db = tmp_path / "s.db"
    res = cli("start", "--study", study, "--storage", f"sqlite:///{db}", "--data", corpus, cwd=tmp_path)
    assert_refused(res, db, "encoder_init", "not found")


def test_unfit_encoder_files_are_refused_before_any_trial(corpus, encoder_file, write_study, tmp_path):
    data = TrainData.load(corpus)
    layout = FeatureLayout(tuple(data.train.points))
    ef = read_encoder(encoder_file)
    cfg = PretrainConfig(**{**TINY_SHAPE, "d_model": 64}).model_config(layout.input_dim)
    save_encoder(tmp_path / "wide.pt", PoseEncoder(cfg), cfg, layout, ef.fingerprint)
    shutil.copy(encoder_file, tmp_path / "other-data.pt")
    other = PretrainConfig(**TINY_SHAPE).model_config(layout.input_dim)
    save_encoder(tmp_path / "other-data.pt", PoseEncoder(other), other, layout, "f" * 64)
    save_encoder(tmp_path / "other-layout.pt", PoseEncoder(other), other,
                 dataclasses.replace(layout, normalisation="min-max"), ef.fingerprint)
    (tmp_path / "corrupt.pt").write_bytes(encoder_file.read_bytes()[:300])
    cases = {"wide.pt": "d_model is 64", "other-data.pt": "another dataset",
             "other-layout.pt": "feature layout differs in normalisation", "corrupt.pt": "not a readable"}
    for i, (name, needle) in enumerate(cases.items()):
        study = frozen_study(write_study, str(tmp_path / name), name=f"fe{i}")
        db = tmp_path / f"s{i}.db"
        res = cli("start", "--study", study, "--storage", f"sqlite:///{db}", "--data", corpus, cwd=tmp_path)
        assert_refused(res, db, needle)
    res = runner.invoke(app, ["train", "--data", str(corpus), "--out", str(tmp_path / "r"), "--device", "cpu",
                              "--set", f"encoder_init={tmp_path / 'corrupt.pt'}", "--set", "freeze_encoder=true"])
    assert res.exit_code == 2 and "not a readable" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_study_runs_every_arm_with_its_encoder(corpus, encoder_file, write_study, tmp_path):
    study = frozen_study(write_study, str(encoder_file))
    url = f"sqlite:///{tmp_path / 's.db'}"
    res = cli("start", "--study", study, "--storage", url, "--data", corpus, "--workers", 0, cwd=tmp_path)
    assert res.returncode == 0 and "encoder for the pretrained arms" in res.stdout, res.stdout + res.stderr
    s = optuna.load_study(study_name="fe", storage=url)
    assert s.user_attrs["spec"]["encoder_init"] == str(encoder_file.resolve())
    for arm in ARMS[1:]:  # each arm once, after the anchor (scratch)
        s.enqueue_trial({"encoder": arm, "decoder_nhead": 2, "lr": 1e-3})
    res = cli("start", "--study", study, "--storage", url, "--data", corpus, "--n-trials", 4, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    ts = s.get_trials()
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts), [t.user_attrs.get("fail_reason") for t in ts]
    assert [t.params["encoder"] for t in ts] == list(ARMS) and ts[0].user_attrs["anchor"]
    params = {t.params["encoder"]: t.user_attrs["params"] for t in ts}
    assert params["pretrained-frozen"] == params["random-frozen"] < params["scratch"] == params["pretrained-finetuned"]
    # A worker on a machine without the encoder file is refused before it takes a trial.
    moved = encoder_file.rename(encoder_file.with_name("away.pt"))
    try:
        res = cli("worker", "--study", "fe", "--storage", url, "--data", corpus, "--n-trials", 1, cwd=tmp_path)
    finally:
        moved.rename(encoder_file)
    assert res.returncode == 2 and "not found" in res.stderr, res.stderr
    assert len(s.get_trials()) == 4


def test_a_frozen_encoder_trial_with_eight_decoder_heads_scores_the_same_as_full_recomputation(
        corpus, encoder_file, write_study, tmp_path):
    """A real study trial (the pretrained encoder frozen, the decoder with 8 heads where the encoder has 4):
    `evaluate` on its best checkpoint, incremental decoding, gets the BLEU the trial recorded, and the
    same hypotheses and BLEU as decoding by full recomputation."""
    path = write_study("fe8", n_trials=1, epochs=2, space=SPACE.replace("[2, 4]", "[2, 4, 8]"), anchor=False)
    path.write_text(f'encoder_init = "{encoder_file}"\n' + path.read_text())
    url = f"sqlite:///{tmp_path / 's.db'}"
    opened = create_or_load(url, load_spec(str(path)), TrainData.load(corpus).fingerprint, str(corpus))
    opened.study.enqueue_trial({"encoder": "pretrained-frozen", "decoder_nhead": 8, "lr": 3e-3})
    run_worker(WorkerSettings(study="fe8", storage=url, data_root=corpus, device="cpu", checkpoint_dir=tmp_path / "ck",
                              artifact_dir=tmp_path / "art"), log=lambda _m: None)
    (trial,) = optuna.load_study(study_name="fe8", storage=url).get_trials()
    record = TrialRecord.read(trial)
    assert trial.state == TrialState.COMPLETE, record.fail_reason
    best = Path(record.checkpoint) / checkpoint.BEST
    model, _, state = load_model(best)
    assert (model.cfg.nhead, model.cfg.decoder_heads) == (4, 8)
    assert state["train_config"]["freeze_encoder"] and state["train_config"]["encoder_init"] == str(encoder_file)
    incremental = evaluate_checkpoint(best, corpus, "val")
    full = evaluate_with_full_recomputation(best, corpus)
    assert incremental.hypotheses == full.hypotheses
    assert incremental.bleu == full.bleu == record.bleu
    assert [s["hypothesis"] for s in record.samples] == full.hypotheses[:5]
    # The logits too, step by step: a tiny model's hypotheses may all be one word, blind to a mis-split cache.
    assert checkpoint_step_logit_difference(best, corpus) < 1e-4


def test_start_on_the_built_in_corpus_pretrains_once_then_reuses(corpus, monkeypatch):
    monkeypatch.setattr(pretrained, "DEMO_PRETRAIN_EPOCHS", 1)
    spec = parse({"name": "demo", "train": {**TINY_SHAPE, "decoder_layers": 1, "batch_size": 8},
                  "space": {"encoder": {"type": "categorical", "choices": list(ARMS)}}}, "demo.toml")
    said: list[str] = []
    choice = DataChoice(corpus, synthetic=True, created=False)
    first = pretrained.ensure_encoder(spec, choice, say=said.append, device="cpu")
    path = Path(first.encoder_init)
    assert path.is_file() and path.is_relative_to(Path(os.environ["H2S_HOME"]))
    assert any("demo budget: 1 epochs" in s for s in said) and any("interpolation" in s for s in said)
    said.clear()
    again = pretrained.ensure_encoder(spec, choice, say=said.append, device="cpu")
    assert again.encoder_init == first.encoder_init and any(s.startswith("reusing") for s in said)
    assert read_encoder(path).info["pretrain_config"]["epochs"] == 1
    plain = parse({"name": "p", "space": {"encoder": {"type": "categorical", "choices": ["scratch"]}}}, "p.toml")
    assert pretrained.ensure_encoder(plain, choice, say=said.append) is plain  # no arm needs a file


def test_pretrain_command(corpus, tmp_path):
    out = tmp_path / "pre"
    res = runner.invoke(app, ["pretrain", "--data", str(corpus), "--out", str(out), "--epochs", "1", "--device",
                              "cpu", *sum((["--set", f"{k}={v}"] for k, v in {**TINY_SHAPE, "batch_size": 8}.items()), [])])
    assert res.exit_code == 0, res.output
    assert "linear interpolation" in res.stdout and (out / "encoder.pt").is_file() and (out / "metrics.json").is_file()
    res = runner.invoke(app, ["pretrain", "--data", str(corpus), "--out", str(out), "--set", "span_max=2"])
    assert res.exit_code == 2 and "--set: span_max must be >= span_min=4, got 2" in res.stderr
    res = runner.invoke(app, ["pretrain", "--data", str(corpus), "--out", str(out), "--set", "lr_typo=1"])
    assert res.exit_code == 2 and "lr_typo" in res.stderr
