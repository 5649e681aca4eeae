"""The encoder arms: the one table of what each value of a study's `encoder` parameter means.

A study may search a categorical parameter named `encoder` (not a TrainConfig field) over these arms;
`search.space` turns the chosen arm into TrainConfig fields, `search.pretrained` provides the encoder file
the pretrained arms start from, and the report compares the arms with the control.
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODER_PARAM = "encoder"


@dataclass(frozen=True)
class EncoderArm:
    name: str
    pretrained: bool        # starts from the study's encoder file (its `encoder_init`)
    frozen: bool            # the encoder is left out of the optimizer
    lr_scale: float = 1.0   # the encoder's learning rate as a fraction of lr, when it is trained
    control: bool = False   # what a frozen encoder gives without pretraining: the comparison for the others

    def fields(self, encoder_init: str) -> dict:
        """The TrainConfig fields this arm sets."""
        return {"encoder_init": encoder_init if self.pretrained else "", "freeze_encoder": self.frozen,
                "encoder_lr_scale": self.lr_scale}


ARMS = (
    EncoderArm("scratch", pretrained=False, frozen=False),                   # V4 as it is: the anchor's arm
    EncoderArm("pretrained-frozen", pretrained=True, frozen=True),
    EncoderArm("random-frozen", pretrained=False, frozen=True, control=True),
    EncoderArm("pretrained-finetuned", pretrained=True, frozen=False, lr_scale=0.1),
)
ARM_NAMES = tuple(a.name for a in ARMS)       # also the order the report shows them in
BY_NAME = {a.name: a for a in ARMS}
CONTROL_ARM = next(a.name for a in ARMS if a.control)
