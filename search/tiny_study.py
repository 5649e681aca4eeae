"""The tiny study: the smallest real study file, for the tests, the benchmarks and smoke runs.

Its model (`TINY_TRAIN`: d_model 32, 1+1 layers, feed-forward 64, batch 8) is small enough for the tests to
train it for real on one CPU core, on the tiny synthetic corpora they write (its time per epoch:
benchmarks/README.md). `tiny_study_toml` writes it in the
shipped study-file format with the few things tests and benchmarks vary; everything else is the study
file's own defaults, so the same parser that reads `studies/capacity.toml` reads it.

    path.write_text(tiny_study_toml("fleet", n_trials=4, epochs=2, pruner='type = "median"'))
"""

from __future__ import annotations

import json

__all__ = ["TINY_ANCHOR", "TINY_SPACE", "TINY_TRAIN", "tiny_study_toml"]

TINY_TRAIN = {"d_model": 32, "nhead": 2, "encoder_layers": 1, "decoder_layers": 1, "dim_feedforward": 64,
              "batch_size": 8, "lr_min": 1e-5, "seed": 0}
TINY_SPACE = """dropout = { type = "float", low = 0.0, high = 0.5 }
lr = { type = "float", low = 1e-4, high = 3e-3, log = true }"""
TINY_ANCHOR = {"dropout": 0.3, "lr": 1e-3}


def _value(v) -> str:
    """A TOML value: booleans lower case, strings quoted, numbers as Python writes them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def tiny_study_toml(name: str = "tiny", *, n_trials: int = 3, epochs: int = 3, patience: int = 100,
                    train: dict | None = None, space: str = TINY_SPACE, anchor: dict | None = TINY_ANCHOR,
                    pruner: str = 'type = "none"', sampler: str = 'type = "random"\nseed = 0', extra: str = "",
                    description: str = "tiny study") -> str:
    """The tiny study as TOML text.

    train: fields over TINY_TRAIN; space, pruner, sampler: the bodies of those tables; anchor: the anchor's
    params (named "v4"), None for a study without one; extra: more TOML appended as it is.
    """
    fixed = {**TINY_TRAIN, "epochs": epochs, "patience": patience, **(train or {})}
    train_lines = "\n".join(f"{k} = {_value(v)}" for k, v in fixed.items())
    anchor_block = "" if anchor is None else (
        '[anchor]\nname = "v4"\nparams = { ' + ", ".join(f"{k} = {_value(v)}" for k, v in anchor.items()) + " }\n")
    return f"""name = {_value(name)}
description = {_value(description)}
direction = "minimize"
metric = "val_loss"
n_trials = {n_trials}

[train]
{train_lines}

[space]
{space}

{anchor_block}
[pruner]
{pruner}

[sampler]
{sampler}
{extra}
"""
