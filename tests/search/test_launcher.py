"""`start`'s device planning (with a faked GPU count) and the memory cap on concurrent trials per device."""

import dataclasses

import pytest

from how2sign.config import TrainConfig
from how2sign.device import estimate_trial_bytes, parameter_count, trials_that_fit
from how2sign.features import NUM_POINTS
from how2sign.model import SignTranslator
from search.errors import UserError
from search.launcher import (
    DEFAULT_WORKERS_PER_DEVICE,
    cap_by_memory,
    plan_devices,
    sqlite_limit,
    worst_config,
)
from search.spec import load_spec

GIB = 2**30
HOW2SIGN_INPUT, HOW2SIGN_VOCAB = NUM_POINTS * 3, 16000


def test_cpu_only_keeps_todays_plan():
    assert plan_devices(None, None, None, gpu_count=0, mps=False) == ["auto"]
    # a CPU-only machine: one single-threaded worker per core, at most 4
    assert plan_devices(None, None, None, gpu_count=0, mps=False, cpus=2) == ["cpu", "cpu"]
    assert plan_devices(None, None, None, gpu_count=0, mps=False, cpus=16) == ["cpu"] * 4
    assert plan_devices(2, None, None, gpu_count=0, mps=False, cpus=16) == ["cpu", "cpu"]
    assert plan_devices(1, None, None, gpu_count=0, mps=False) == ["auto"]
    assert plan_devices(3, None, None, gpu_count=0, mps=False) == ["cpu"] * 3
    assert plan_devices(None, None, 2, gpu_count=0, mps=False) == ["cpu"] * 2
    assert plan_devices(0, None, None, gpu_count=0, mps=False) == []


def test_gpus_get_k_workers_each_by_default_in_round_robin_order():
    assert DEFAULT_WORKERS_PER_DEVICE == 4
    assert plan_devices(None, None, None, gpu_count=1, mps=False) == ["cuda:0"] * 4
    assert plan_devices(None, None, 2, gpu_count=2, mps=False) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert plan_devices(None, None, None, gpu_count=3, mps=False).count("cuda:2") == 4


def test_workers_n_spreads_over_the_gpus_instead_of_the_cpu():
    assert plan_devices(3, None, None, gpu_count=2, mps=False) == ["cuda:0", "cuda:1", "cuda:0"]
    assert plan_devices(1, None, None, gpu_count=4, mps=False) == ["cuda:0"]
    assert plan_devices(0, None, None, gpu_count=4, mps=False) == []


def test_mps_is_one_device_with_k_workers():
    assert plan_devices(None, None, None, gpu_count=0, mps=True) == ["mps"] * DEFAULT_WORKERS_PER_DEVICE
    assert plan_devices(None, None, 2, gpu_count=0, mps=True) == ["mps", "mps"]
    assert plan_devices(3, None, None, gpu_count=0, mps=True) == ["mps"] * 3


def test_explicit_device_list_gets_k_each_default_one():
    assert plan_devices(None, "cuda,cuda,cuda", None, gpu_count=1, mps=False) == ["cuda"] * 3  # as before
    assert plan_devices(None, "cuda:0, cuda:1", 2, gpu_count=2, mps=False) == ["cuda:0", "cuda:1"] * 2
    assert plan_devices(3, "cuda:1,cpu", None, gpu_count=2, mps=False) == ["cuda:1", "cpu", "cuda:1"]
    assert plan_devices(None, "cpu", 2, gpu_count=0, mps=False) == ["cpu", "cpu"]


@pytest.mark.parametrize("args, needle", [((-1, None, None), "--workers must be >= 0"),
                                          ((None, None, 0), "--workers-per-device must be >= 1"),
                                          ((None, " , ", None), "--devices is empty")])
def test_bad_requests_are_user_errors(args, needle):
    with pytest.raises(UserError, match=needle):
        plan_devices(*args, gpu_count=1, mps=False)


def test_sqlite_cuts_the_default_plan_but_refuses_an_explicit_one(tmp_path):
    url, said = f"sqlite:///{tmp_path / 'db.sqlite'}", []
    devs = plan_devices(None, None, None, gpu_count=2, mps=False)
    assert sqlite_limit(devs, url, asked=False, say=said.append) == ["cuda:0", "cuda:1"] * 2
    assert said and "PostgreSQL" in said[0]
    with pytest.raises(UserError, match="SQLite"):
        sqlite_limit(devs, url, asked=True, say=said.append)
    assert sqlite_limit(devs, "postgresql://u@h/db", asked=True, say=said.append) == devs


@pytest.mark.parametrize("kw", [{}, {"d_model": 512, "nhead": 8, "encoder_layers": 4, "decoder_layers": 1},
                                {"d_model": 64, "dim_feedforward": 128, "decoder_layers": 3},
                                {"nhead": 4, "decoder_nhead": 8, "decoder_feedforward": 256}])
def test_parameter_count_matches_the_model(kw):
    cfg = TrainConfig(**kw)
    model = SignTranslator(cfg.model_config(HOW2SIGN_INPUT, 500))
    assert parameter_count(cfg, HOW2SIGN_INPUT, 500) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key, bigger", [("batch_size", 128), ("d_model", 512), ("encoder_layers", 4),
                                         ("decoder_layers", 4), ("dim_feedforward", 2048), ("max_frames", 1024),
                                         ("nhead", 8), ("max_tokens", 128)])
def test_memory_estimate_grows_with_every_size(key, bigger):
    v4 = TrainConfig()
    grown = dataclasses.replace(v4, **{key: bigger})
    assert estimate_trial_bytes(grown, HOW2SIGN_INPUT, HOW2SIGN_VOCAB) > estimate_trial_bytes(v4, HOW2SIGN_INPUT,
                                                                                               HOW2SIGN_VOCAB)
    assert estimate_trial_bytes(v4, HOW2SIGN_INPUT, HOW2SIGN_VOCAB, activation_bytes=2) < estimate_trial_bytes(
        v4, HOW2SIGN_INPUT, HOW2SIGN_VOCAB)


def test_v4_estimate_is_plausible():
    # V4 (3.8M parameters with a How2Sign vocabulary) at batch 64 and 512 frames: a few GiB, not MiB or 100s of GiB.
    need = estimate_trial_bytes(TrainConfig(), HOW2SIGN_INPUT, HOW2SIGN_VOCAB)
    assert 1.5 * GIB < need < 8 * GIB
    assert 3e6 < parameter_count(TrainConfig(), HOW2SIGN_INPUT, HOW2SIGN_VOCAB) < 10e6


def test_trials_that_fit():
    assert trials_that_fit(4, 10 * GIB, 80 * GIB) == 4
    assert trials_that_fit(8, 10 * GIB, 80 * GIB) == 7  # 90% of 80 GiB
    assert trials_that_fit(4, 200 * GIB, 80 * GIB) == 1  # still one: it ends as FAIL "out of memory" as today
    assert trials_that_fit(4, 10 * GIB, None) == 4  # the CPU or an unknown device: no cap


def test_capacity_default_k_fits_an_80gb_card_and_is_capped_on_a_small_one():
    cfg = worst_config(load_spec("capacity"))
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.dim_feedforward, cfg.batch_size) == (
        512, 4, 4, 2048, 128)
    need = estimate_trial_bytes(cfg, HOW2SIGN_INPUT, HOW2SIGN_VOCAB, activation_bytes=2)
    assert trials_that_fit(DEFAULT_WORKERS_PER_DEVICE, need, 80 * GIB) == DEFAULT_WORKERS_PER_DEVICE
    assert trials_that_fit(DEFAULT_WORKERS_PER_DEVICE, need, 16 * GIB) < DEFAULT_WORKERS_PER_DEVICE


def test_cap_by_memory_drops_workers_per_device():
    totals = {"cuda:0": 20 * GIB, "cuda:1": 80 * GIB, "cpu": None}
    devs = ["cuda:0", "cuda:1"] * 4 + ["cpu"] * 2
    kept, notes = cap_by_memory(devs, 8 * GIB, totals.get)
    assert kept.count("cuda:0") == 2 and kept.count("cuda:1") == 4 and kept.count("cpu") == 2
    assert kept[:3] == ["cuda:0", "cuda:1", "cuda:0"]  # order kept
    assert len(notes) == 1 and notes[0].startswith("cuda:0: 2 worker(s), not 4")


@pytest.mark.parametrize("flags, needle", [(["--workers-per-device", "0"], "--workers-per-device must be >= 1"),
                                           (["--workers", "-2"], "--workers must be >= 0")])
def test_start_rejects_bad_counts_in_one_line_before_touching_data(tmp_path, flags, needle):
    from typer.testing import CliRunner

    from search.cli import app

    res = CliRunner().invoke(app, ["start", "--study", "capacity", "--data", str(tmp_path / "absent"),
                                   "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", *flags])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "db.sqlite").exists()
