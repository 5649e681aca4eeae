"""TrainConfig: every searchable training setting, with its one default.

Runtime settings (device, folders, resume) are not here; they are arguments of ``train()``, so two
runs with equal TrainConfigs are the same experiment wherever they ran.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields

from .model import ConfigError, ModelConfig, check_heads

SCHEDULERS = ("cosine", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    # Model shape (V4 defaults).
    d_model: int = 256
    nhead: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.3
    # Optimisation (V4 recipe: AdamW, cosine 1e-4 -> 1e-6, at most 30 epochs, patience 10).
    batch_size: int = 64
    lr: float = 1e-4
    lr_min: float = 1e-6
    weight_decay: float = 0.01
    epochs: int = 30
    patience: int = 10
    min_delta: float = 0.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # "cosine" anneals lr -> lr_min over the epoch budget; "plateau" is ReduceLROnPlateau (V1-V2).
    scheduler: str = "cosine"
    plateau_factor: float = 0.1
    plateau_patience: int = 1
    seed: int = 0
    # Sequence limits: longer clips are uniformly subsampled, longer sentences truncated.
    max_frames: int = 512
    max_tokens: int = 64
    vocab_min_freq: int = 1
    # Plan B: train on a fraction of the train split, then fine-tune on all of it.
    train_fraction: float = 1.0
    finetune_epochs: int = 0
    # Plan B augmentations, all off by default (see how2sign.features.augment).
    aug_frame_dropout: float = 0.0
    aug_speed: float = 0.0
    aug_noise: float = 0.0
    aug_rotate: float = 0.0
    aug_scale: float = 0.0
    aug_shear: float = 0.0

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.nhead)
        positive = ("encoder_layers", "decoder_layers", "dim_feedforward", "batch_size", "epochs", "patience",
                    "max_frames", "vocab_min_freq")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_tokens < 3:
            raise ConfigError(f"max_tokens must be >= 3, got {self.max_tokens}")
        for key in ("dropout", "label_smoothing", "aug_frame_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ConfigError(f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        for key in ("finetune_epochs", "aug_speed", "aug_noise", "aug_rotate", "aug_scale", "aug_shear",
                    "weight_decay", "grad_clip", "min_delta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("aug_speed", "aug_scale"):  # the rule features.augment applies to its speed and scale
            if getattr(self, key) >= 1.0:
                raise ConfigError(f"{key} must be < 1, got {getattr(self, key)}")

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.finetune_epochs if self.train_fraction < 1.0 else 0)

    def model_config(self, input_dim: int, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            input_dim=input_dim, vocab_size=vocab_size, d_model=self.d_model, nhead=self.nhead,
            encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
            dim_feedforward=self.dim_feedforward, dropout=self.dropout,
            max_frames=self.max_frames, max_tokens=self.max_tokens,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> TrainConfig:
        return cls().replace(values, where)

    def replace(self, values: dict, where: str = "config") -> TrainConfig:
        """A copy with `values` applied; each value is checked against the field's type."""
        types_ = self.field_types()
        checked = {}
        for key, value in values.items():
            if key not in types_:
                raise ConfigError(f"{where}: unknown TrainConfig key {key!r}")
            checked[key] = coerce(key, value, types_[key], where)
        return dataclasses.replace(self, **checked)

    def with_sets(self, assignments: list[str], where: str = "--set") -> TrainConfig:
        """Apply `key=value` strings from the command line."""
        values = {}
        for item in assignments:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{where}: expected key=value, got {item!r}")
            key = key.strip()
            if key not in self.field_types():
                raise ConfigError(f"{where}: unknown TrainConfig key {key!r}")
            values[key] = parse_text(key, text.strip(), self.field_types()[key], where)
        return self.replace(values, where)


def coerce(key: str, value, typ: type, where: str):
    """Check a value from a file against the field type; ints are accepted for floats."""
    if isinstance(typ, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {value!r}")
    return value


def parse_text(key: str, text: str, typ: type, where: str):
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return typ(text) if typ is not int else int(text)
    except ValueError:
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {text!r}") from None
