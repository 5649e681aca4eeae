"""Shared fixtures: a tiny synthetic How2Sign corpus and tiny study files, all in tmp folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from how2sign.config import TrainConfig
from how2sign.synthetic import write_corpus
from search.tiny_study import TINY_TRAIN, tiny_study_toml

# The tests' tiny model and study: the tiny study's (search.tiny_study) with 4 heads where it has 2, which is
# what these tests were written against; TINY adds a faster lr, lighter dropout and a 4-epoch budget.
TEST_NHEAD = 4
TINY = {**TINY_TRAIN, "nhead": TEST_NHEAD, "dropout": 0.1, "lr": 1e-3, "epochs": 4, "patience": 10}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test touches the user's ~/.cache or a storage named in the environment."""
    home = tmp_path_factory.mktemp("h2s-home")
    monkeypatch.setenv("H2S_HOME", str(home))
    monkeypatch.setenv("H2S_ARTIFACTS", str(home / "artifacts"))
    monkeypatch.setenv("H2S_CHECKPOINTS", str(home / "checkpoints"))
    monkeypatch.delenv("H2S_STORAGE", raising=False)


@pytest.fixture(scope="session")
def corpus_master(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "h2s"
    write_corpus(root, train=40, val=10, test=10, seed=0)
    return root


@pytest.fixture
def corpus(corpus_master, tmp_path) -> Path:
    """A private copy, so a test may pack, damage or extend it freely."""
    dst = tmp_path / "h2s"
    shutil.copytree(corpus_master, dst, ignore=shutil.ignore_patterns("h2s-packed"))
    return dst


@pytest.fixture(scope="session")
def rungs_corpus(tmp_path_factory) -> Path:
    """48 train clips (no defects: six full batches of 8 whatever the shuffle) and 80 val clips, more than an
    intermediate report validates on at report_every = 12 (how2sign.reporting.MIN_VAL_CLIPS). Packed once and
    shared: read it, never change it."""
    root = tmp_path_factory.mktemp("rungs") / "h2s"
    write_corpus(root, train=48, val=80, test=2, seed=0, defects=False)
    return root


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    return TrainConfig(**TINY)


def study_toml(name: str = "tiny", *, n_trials: int = 3, epochs: int = 3, pruner: str = 'type = "none"',
               extra: str = "", space: str | None = None, anchor: bool = True) -> str:
    """The tiny study (search.tiny_study) with TEST_NHEAD heads, a d_model in the space, and TPE."""
    space = space or """d_model = { type = "categorical", choices = [16, 32] }
dropout = { type = "float", low = 0.0, high = 0.3 }
lr = { type = "float", low = 1e-4, high = 3e-3, log = true }"""
    return tiny_study_toml(name, n_trials=n_trials, epochs=epochs, patience=10, train={"nhead": TEST_NHEAD}, space=space,
                           anchor={"d_model": 32, "dropout": 0.1, "lr": 1e-3} if anchor else None, pruner=pruner,
                           sampler='type = "tpe"\nseed = 0\nn_startup_trials = 2', extra=extra,
                           description="tiny test study")


@pytest.fixture
def write_study(tmp_path):
    def write(name: str = "tiny", **kw) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(study_toml(name, **kw))
        return path

    return write
