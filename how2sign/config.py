"""TrainConfig: every searchable training setting, with its one default and its one rule.

Runtime settings (device, folders, resume) are not here; they are arguments of ``train()``, so two
runs with equal TrainConfigs are the same experiment wherever they ran. Validation is `rules.Settings`'s,
as for every config: each field's rule sits beside it (the augmentation knobs share
features.AUGMENT_RULES, which `augment` itself applies; ReduceLROnPlateau refuses factor >= 1; numpy seeds
must be >= 0 and torch.manual_seed takes at most 2**64 - 1), and `check` holds the rules across fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from .features import AUGMENT_RULES
from .model import ModelConfig
from .rules import (
    ANY_TEXT,
    AT_LEAST_ONE,
    FLAG,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Rule,
    Settings,
    check_heads,
    check_lr,
    setting,
)

SCHEDULERS = ("cosine", "plateau")


@dataclass(frozen=True)
class Phase:
    """What one epoch of the Plan-B schedule (train on a fraction, then fine-tune on all) asks of the loop."""

    full_split: bool        # train on every clip, not the train_fraction subset
    reset_patience: bool    # fine-tuning starts with this epoch: early-stopping patience counts afresh
    may_stop_early: bool    # early stopping may end the run after this epoch


@dataclass(frozen=True)
class TrainConfig(Settings):
    # Model shape (V4 defaults).
    d_model: int = setting(256, AT_LEAST_ONE)
    nhead: int = setting(4, AT_LEAST_ONE)
    encoder_layers: int = setting(2, AT_LEAST_ONE)
    decoder_layers: int = setting(2, AT_LEAST_ONE)
    dim_feedforward: int = setting(1024, AT_LEAST_ONE)
    dropout: float = setting(0.3, UNIT)
    # Optimisation (V4 recipe: AdamW, cosine 1e-4 -> 1e-6, at most 30 epochs, patience 10).
    batch_size: int = setting(64, AT_LEAST_ONE)
    lr: float = setting(1e-4, POSITIVE)
    lr_min: float = setting(1e-6, NON_NEGATIVE)
    weight_decay: float = setting(0.01, NON_NEGATIVE)
    epochs: int = setting(30, AT_LEAST_ONE)
    patience: int = setting(10, AT_LEAST_ONE)
    min_delta: float = setting(0.0, NON_NEGATIVE)
    # Validation loss to the report hook (the pruner) every report_every train clips; 0: automatic, once per
    # epoch below 10k train clips and four times per epoch above (how2sign.reporting). It changes no result.
    report_every: int = setting(0, NON_NEGATIVE)
    grad_clip: float = setting(1.0, NON_NEGATIVE)
    label_smoothing: float = setting(0.0, UNIT)
    # "cosine" anneals lr -> lr_min over the epoch budget; "plateau" is ReduceLROnPlateau (V1-V2).
    scheduler: str = setting("cosine", Rule(choices=SCHEDULERS))
    plateau_factor: float = setting(0.1, Rule(low=0, high=1, low_open=True, high_open=True))
    plateau_patience: int = setting(1, NON_NEGATIVE)
    seed: int = setting(0, Rule(low=0, high=2**64 - 1))
    # Sequence limits: longer clips are uniformly subsampled, longer sentences truncated.
    max_frames: int = setting(512, AT_LEAST_ONE)
    max_tokens: int = setting(64, Rule(low=3))
    vocab_min_freq: int = setting(1, AT_LEAST_ONE)
    # Plan B: train on a fraction of the train split, then fine-tune on all of it.
    train_fraction: float = setting(1.0, Rule(low=0, high=1, low_open=True))
    finetune_epochs: int = setting(0, NON_NEGATIVE)
    # Plan B augmentations, all off by default (see how2sign.features.augment).
    aug_frame_dropout: float = setting(0.0, AUGMENT_RULES["frame_dropout"])
    aug_speed: float = setting(0.0, AUGMENT_RULES["speed"])
    aug_noise: float = setting(0.0, AUGMENT_RULES["noise"])
    aug_rotate: float = setting(0.0, AUGMENT_RULES["rotate"])
    aug_scale: float = setting(0.0, AUGMENT_RULES["scale"])
    aug_shear: float = setting(0.0, AUGMENT_RULES["shear"])
    # Pretrained pose encoder (see how2sign.encoder_init): a file to start the encoder from, whether to
    # freeze it, and its learning rate as a fraction of lr when fine-tuned. 0 below: same as the encoder.
    encoder_init: str = setting("", ANY_TEXT)
    freeze_encoder: bool = setting(False, FLAG)
    encoder_lr_scale: float = setting(1.0, Rule(low=0, high=10, low_open=True))
    decoder_nhead: int = setting(0, NON_NEGATIVE)
    decoder_feedforward: int = setting(0, NON_NEGATIVE)

    def check(self) -> None:
        check_heads(self.d_model, self.nhead)
        check_lr(self.lr, self.lr_min)
        if self.decoder_nhead:  # 0: the decoder uses the encoder's head count
            check_heads(self.d_model, self.decoder_nhead, "decoder_nhead")

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
    def decoder_heads(self) -> int:
        """The decoder's attention heads (decoder_nhead, 0: the encoder's), as ModelConfig resolves them."""
        return self.model_config(1, 1).decoder_heads

    @property
    def decoder_width(self) -> int:
        """The decoder's feed-forward width (decoder_feedforward, 0: the encoder's)."""
        return self.model_config(1, 1).decoder_width

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
