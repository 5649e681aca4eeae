"""The study side of pretrained encoders: find, build or refuse the encoder a study's `encoder` arms use.

`start` calls `ensure_encoder` before it creates or loads the study, so a missing or unfit encoder file
is one line and exit 2 with nothing in the study touched. The encoder is, in this order:
  - the study file's top-level `encoder_init` (a path; relative to the current folder);
  - otherwise one pretrained here on the train split, once, and kept under $H2S_HOME/encoders/ by
    dataset and shape: at a demo budget on the built-in corpus, at the full budget with --data.
The stored study definition records the file's absolute path, so every worker uses the same file
(workers on other machines need it at that path, like the data).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path

from how2sign.config import TrainConfig
from how2sign.data import h2s_home, load_split
from how2sign.encoder_file import ENCODER_FILE, EncoderFileError, FeatureLayout, check_encoder, read_encoder
from how2sign.jobs import DataChoice

from .arms import BY_NAME
from .spec import StudySpec, parse

DEMO_PRETRAIN_EPOCHS = 5  # the built-in corpus: minutes on a CPU, once
DONE = "complete"


def ensure_encoder(spec: StudySpec, choice: DataChoice, *, say=print, device: str = "auto") -> StudySpec:
    """The spec with `encoder_init` set to a checked encoder file, or unchanged when no arm needs one."""
    base = spec.base_config()
    if base.encoder_init:
        check_file(Path(base.encoder_init), base, choice.root, f"{spec.source} [train] encoder_init")
    if not any(BY_NAME[arm].pretrained for arm in spec.encoder_arms):
        return spec
    if spec.encoder_init:
        path = Path(spec.encoder_init).expanduser()
        if not path.is_file():
            raise EncoderFileError(f"{spec.source}: encoder_init {spec.encoder_init} not found; write one with "
                                   "h2s-search pretrain --data DIR --out DIR, or drop the key to pretrain here")
    else:
        path = pretrained_encoder(base, choice, say=say, device=device)
    check_file(path, base, choice.root, f"{spec.source}: encoder_init")
    say(f"encoder for the pretrained arms: {path}")
    raw = json.loads(json.dumps(spec.raw))
    raw["encoder_init"] = str(path.resolve())
    return parse(raw, spec.source)


def check_study_encoder(spec: StudySpec, root: Path) -> None:
    """A worker's check before its first trial: the stored study's encoder file is here and fits the data."""
    base = spec.base_config()
    if base.encoder_init:
        check_file(Path(base.encoder_init), base, root, f"study {spec.name!r} [train] encoder_init")
    if spec.encoder_init and any(BY_NAME[arm].pretrained for arm in spec.encoder_arms):
        check_file(Path(spec.encoder_init), base, root, f"study {spec.name!r}: encoder_init")


def check_file(path: Path, cfg: TrainConfig, root: Path, where: str) -> None:
    """The checks train() makes, made before any trial: shape, feature layout, dataset."""
    if not path.is_file():
        raise EncoderFileError(f"{where}: {path} not found")
    train = load_split(root, "train")
    layout = FeatureLayout(tuple(int(p) for p in train.points))
    check_encoder(read_encoder(path), cfg.model_config(layout.input_dim, 1), layout, train.fingerprint)


def pretrain_config(cfg: TrainConfig, demo: bool):
    """Pretraining in the study's encoder shape; the demo budget on the built-in corpus."""
    from how2sign.pretrain import PretrainConfig

    shape = {k: getattr(cfg, k) for k in ("d_model", "nhead", "encoder_layers", "dim_feedforward", "max_frames")}
    return PretrainConfig(**shape, **({"epochs": DEMO_PRETRAIN_EPOCHS} if demo else {}))


def pretrained_encoder(cfg: TrainConfig, choice: DataChoice, *, say=print, device: str = "auto") -> Path:
    """Pretrain once per (dataset, shape, budget) under $H2S_HOME/encoders; later calls reuse the file."""
    from how2sign.pretrain import pretrain

    pc = pretrain_config(cfg, demo=choice.synthetic)
    fingerprint = load_split(choice.root, "train").fingerprint
    key = hashlib.sha256(json.dumps(pc.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    folder = h2s_home() / "encoders" / f"{fingerprint[:16]}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):  # two `start`s at once pretrain once
        if (folder / DONE).is_file() and (folder / ENCODER_FILE).is_file():
            say(f"reusing the encoder pretrained on this train split: {folder / ENCODER_FILE}")
            return folder / ENCODER_FILE
        budget = "demo" if choice.synthetic else "full"
        say(f"pretraining the pose encoder on the train split ({budget} budget: {pc.epochs} epochs, masked "
            f"keypoint modelling) into {folder}; once, then reused")
        r = pretrain(pc, choice.root, folder, device=device, resume=True)
        if r.interrupted or not (folder / ENCODER_FILE).is_file():
            raise EncoderFileError(f"pretraining into {folder} did not finish; run start again to resume it")
        say(f"pretraining: {r.epochs_run} epochs in {r.seconds:.0f}s; {r.verdict}")
        (folder / DONE).write_text(json.dumps(r.to_dict(), default=str))
    return folder / ENCODER_FILE


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
