"""TrainConfig: every searchable training setting, with its one default.

Runtime settings (device, folders, resume) are not here; they are arguments of ``train()``, so two
runs with equal TrainConfigs are the same experiment wherever they ran.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields

from .features import AUGMENT_RULES
from .model import ConfigError, ModelConfig, check_heads
from .rules import ANY_TEXT, AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, Rule

SCHEDULERS = ("cosine", "plateau")

# The one rule each field's value must follow, the same the code using it applies (augmentation knobs
# share features.AUGMENT_RULES; ReduceLROnPlateau refuses factor >= 1; numpy seeds must be >= 0 and
# torch.manual_seed takes at most 2**64 - 1). Rules across fields (d_model divisible by nhead,
# lr_min <= lr) are checked by TrainConfig itself.
FIELD_RULES: dict[str, Rule] = {
    "d_model": AT_LEAST_ONE, "nhead": AT_LEAST_ONE, "encoder_layers": AT_LEAST_ONE,
    "decoder_layers": AT_LEAST_ONE, "dim_feedforward": AT_LEAST_ONE, "dropout": UNIT,
    "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "lr_min": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "epochs": AT_LEAST_ONE, "patience": AT_LEAST_ONE, "min_delta": NON_NEGATIVE, "grad_clip": NON_NEGATIVE,
    "label_smoothing": UNIT, "scheduler": Rule(choices=SCHEDULERS),
    "plateau_factor": Rule(low=0, high=1, low_open=True, high_open=True), "plateau_patience": NON_NEGATIVE,
    "seed": Rule(low=0, high=2**64 - 1), "max_frames": AT_LEAST_ONE, "max_tokens": Rule(low=3),
    "vocab_min_freq": AT_LEAST_ONE, "train_fraction": Rule(low=0, high=1, low_open=True),
    "finetune_epochs": NON_NEGATIVE,
    "encoder_init": ANY_TEXT, "freeze_encoder": Rule(choices=(False, True)),
    "encoder_lr_scale": Rule(low=0, high=10, low_open=True),
    "decoder_nhead": NON_NEGATIVE, "decoder_feedforward": NON_NEGATIVE,
    **{f"aug_{knob}": rule for knob, rule in AUGMENT_RULES.items()},
}


@dataclass(frozen=True)
class Phase:
    """What one epoch of the Plan-B schedule (train on a fraction, then fine-tune on all) asks of the loop."""

    full_split: bool        # train on every clip, not the train_fraction subset
    reset_patience: bool    # fine-tuning starts with this epoch: early-stopping patience counts afresh
    may_stop_early: bool    # early stopping may end the run after this epoch


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
    # Pretrained pose encoder (see how2sign.encoder_init): a file to start the encoder from, whether to
    # freeze it, and its learning rate as a fraction of lr when fine-tuned. 0 below: same as the encoder.
    encoder_init: str = ""
    freeze_encoder: bool = False
    encoder_lr_scale: float = 1.0
    decoder_nhead: int = 0
    decoder_feedforward: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = FIELD_RULES[f.name].problem(getattr(self, f.name))
            if problem:
                raise ConfigError(f"{f.name} {problem}")
        check_heads(self.d_model, self.nhead)
        if self.lr_min > self.lr:
            raise ConfigError(f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        if self.decoder_nhead:  # 0: the decoder uses the encoder's head count
            check_heads(self.d_model, self.decoder_nhead)

    @classmethod
    def check_value(cls, key: str, value, where: str = "config"):
        """`value` checked for field `key` alone (type, then range); returns it coerced (int -> float).

        Raises ConfigError naming `where` and the key. Rules across fields are not checked here: a
        whole config checks them (`base.replace({key: value})`).
        """
        types_ = cls.field_types()
        if key not in types_:
            raise ConfigError(f"{where}: unknown TrainConfig key {key!r}")
        value = coerce(key, value, types_[key], where)
        problem = FIELD_RULES[key].problem(value)
        if problem:
            raise ConfigError(f"{where}: {key} {problem}")
        return value

    def phase(self, epoch: int) -> Phase:
        """Plan B (train_fraction < 1): epochs 1..epochs train on the subset, the rest fine-tune on all.

        Patience restarts when fine-tuning begins, and the last subset epoch never stops the run early
        (fine-tuning is the point of the plan). With train_fraction 1 every epoch is a plain one.
        """
        plan_b = self.train_fraction < 1.0
        finetuning = plan_b and epoch > self.epochs
        return Phase(full_split=not plan_b or finetuning, reset_patience=finetuning and epoch == self.epochs + 1,
                     may_stop_early=not (plan_b and epoch == self.epochs))

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.finetune_epochs if self.train_fraction < 1.0 else 0)

    def model_config(self, input_dim: int, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            input_dim=input_dim, vocab_size=vocab_size, d_model=self.d_model, nhead=self.nhead,
            encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
            dim_feedforward=self.dim_feedforward, dropout=self.dropout,
            max_frames=self.max_frames, max_tokens=self.max_tokens,
            decoder_nhead=self.decoder_nhead, decoder_feedforward=self.decoder_feedforward,
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
        checked = {key: self.check_value(key, value, where) for key, value in values.items()}
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
