"""The command line as a user meets it: the README journey and every bad input (one line, exit 2)."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from search.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = res.stderr.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error: "), text
    for n in needles:
        assert n in text, text


def test_synth_pack_train_evaluate_journey(tmp_path):
    root = tmp_path / "corpus"
    res = run("data", "synth", root, "--train", 30, "--val", 8, "--test", 8, "--seed", 3)
    assert res.exit_code == 0, res.output
    res = run("data", "pack", root)
    assert res.exit_code == 0 and "train: packed" in res.output and "skipped" in res.output
    packed = json.loads(run("data", "pack", root, "--json").output)
    assert {r["split"] for r in packed} == {"train", "val", "test"}
    out = tmp_path / "run"
    res = run("train", "--preset", "v4-quick", "--data", root, "--out", out, "--epochs", 2, "--device", "cpu",
              "--set", "d_model=32", "--set", "dim_feedforward=64", "--set", "batch_size=8")
    assert res.exit_code == 0, res.output
    assert "parameters on cpu; 2 epochs" in res.output and (out / "best_checkpoint.pt").exists()
    res = run("train", "--preset", "v4-quick", "--data", root, "--out", out, "--epochs", 3, "--device", "cpu",
              "--set", "d_model=32", "--set", "dim_feedforward=64", "--set", "batch_size=8", "--resume")
    assert_user_error(res, "different TrainConfig")  # --epochs changes the schedule: not the same run
    preds = tmp_path / "hyps.txt"
    res = run("evaluate", "--checkpoint", out / "best_checkpoint.pt", "--split", "val", "--data", root,
              "--predictions", preds, "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert metrics["verdict"] in ("none", "minimum", "good", "excellent")
    val_rows = [r for r in packed if r["split"] == "val"][0]["packed"]
    assert len(preds.read_text().splitlines()) == val_rows == metrics["clips"]


def test_default_data_is_the_synthetic_corpus_and_says_so(tmp_path, monkeypatch):
    import how2sign.synthetic as synthetic

    real = synthetic.write_corpus
    monkeypatch.setattr(synthetic, "write_corpus",
                        lambda root, **kw: real(root, train=20, val=6, test=6, seed=kw.get("seed", 0)))
    res = run("train", "--preset", "v4-quick", "--epochs", 1, "--out", tmp_path / "r", "--device", "cpu",
              "--set", "d_model=16", "--set", "dim_feedforward=32", "--set", "batch_size=8")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("no --data given: wrote the built-in synthetic corpus")


def test_bad_inputs_give_one_line_and_exit_2(corpus, tmp_path):
    assert_user_error(run("train", "--data", tmp_path / "nowhere"), "data root not found", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run("data", "pack", empty), "how2sign_realigned_train.csv")
    csv = corpus / "sentence_level/val/text/en/raw_text/re_aligned/how2sign_realigned_val.csv"
    csv.write_text("VIDEO_ID\tSENTENCE\nabc\thello\n")
    assert_user_error(run("data", "pack", corpus), "how2sign_realigned_val.csv")
    assert_user_error(run("train", "--preset", "v9", "--data", corpus), "unknown preset 'v9'")
    assert_user_error(run("train", "--data", corpus, "--set", "colour=red"), "unknown TrainConfig key 'colour'")
    assert_user_error(run("train", "--data", corpus, "--set", "epochs=many"), "epochs must be int")
    assert_user_error(run("train", "--data", corpus, "--set", "d_model=100", "--set", "nhead=8"),
                      "--set: nhead must divide d_model=100", "got 8")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert_user_error(run("evaluate", "--checkpoint", foreign, "--data", corpus), "not an h2s-search checkpoint")
    assert_user_error(run("evaluate", "--checkpoint", tmp_path / "none.pt", "--data", corpus), "checkpoint not found")
    assert_user_error(run("train", "--device", "tpu", "--data", corpus), "--device must be")


def test_unknown_flag_and_help_from_a_real_process():
    res = subprocess.run([sys.executable, "-m", "search.cli", "train", "--colour", "red"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "No such option" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "search.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("data", "train", "evaluate", "start", "worker", "status", "best", "dashboard"):
        assert cmd in res.stdout


@pytest.mark.parametrize("cmd", [["data", "synth"], ["data", "pack"], ["train"], ["evaluate"], ["start"],
                                 ["worker"], ["status"], ["best"], ["dashboard"], ["reproduce"]])
def test_every_command_has_help(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0 and "Usage" in res.output
