"""SignTranslator: a Transformer encoder-decoder from keypoint frames to English tokens.

Shapes in comments: B batch, T frames, L target tokens, D d_model, F input features, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import decoding
from .vocab import PAD_ID

ALLOWED_HEADS = (1, 2, 4, 8, 16)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network. No defaults: TrainConfig owns them."""

    input_dim: int
    vocab_size: int
    d_model: int
    nhead: int
    encoder_layers: int
    decoder_layers: int
    dim_feedforward: int
    dropout: float
    max_frames: int
    max_tokens: int
    # The decoder's own heads and feed-forward width (0: the encoder's), so a study can search the decoder
    # around a fixed pretrained encoder. Defaults keep older checkpoints' model_config loadable.
    decoder_nhead: int = 0
    decoder_feedforward: int = 0

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.nhead)
        check_heads(self.d_model, self.decoder_nhead or self.nhead)
        for key in ("input_dim", "vocab_size", "encoder_layers", "decoder_layers", "dim_feedforward"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_heads(d_model: int, nhead: int) -> None:
    """d_model must split evenly over the attention heads."""
    if d_model < 1 or nhead < 1 or d_model % nhead:
        legal = [h for h in ALLOWED_HEADS if d_model > 0 and d_model % h == 0]
        hint = f"legal nhead for d_model={d_model}: {legal}" if legal else f"no allowed head count {ALLOWED_HEADS} divides it"
        raise ConfigError(f"d_model={d_model} is not divisible by nhead={nhead} ({hint})")


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.), added to (B, T, D) inputs."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(1)]


class PoseEncoder(nn.Module):
    """Keypoint frames -> contextual frame vectors. One module for translation and pretraining.

    `SignTranslator.encoder` and the masked-keypoint pretraining model both hold exactly this module, so an
    encoder's state_dict keys are the same wherever it was trained (see docs/architecture.md).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.input_proj = nn.Sequential(nn.Linear(cfg.input_dim, d), nn.LayerNorm(d))
        self.pos = PositionalEncoding(d, cfg.max_frames)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(d, cfg.nhead, cfg.dim_feedforward, cfg.dropout, batch_first=True)
        # No nested-tensor fast path: it changes numerics between train and eval and warns on every call.
        self.transformer = nn.TransformerEncoder(layer, cfg.encoder_layers, norm=nn.LayerNorm(d),
                                                 enable_nested_tensor=False)
        _xavier(self.transformer)

    def embed_frames(self, src: torch.Tensor) -> torch.Tensor:
        # src (B, T, F) -> (B, T, D): projected, with positions, before the Transformer layers
        return self.dropout(self.pos(self.input_proj(src)))

    def forward(self, src: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        # src (B, T, F), src_pad (B, T) True where padded -> memory (B, T, D)
        return self.transformer(self.embed_frames(src), src_key_padding_mask=src_pad)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _xavier(module: nn.Module) -> None:
    """nn.Transformer's own initialisation: Xavier-uniform for every matrix."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SignTranslator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = PoseEncoder(cfg)
        self.tgt_pos = PositionalEncoding(d, cfg.max_tokens)
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerDecoderLayer(d, cfg.decoder_nhead or cfg.nhead,
                                           cfg.decoder_feedforward or cfg.dim_feedforward, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers, norm=nn.LayerNorm(d))
        _xavier(self.decoder)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        # Built once, True where a position is hidden; not saved, so checkpoints keep their keys.
        causal = torch.triu(torch.ones(cfg.max_tokens, cfg.max_tokens, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.head.weight = self.embed.weight  # tied: the output head reads tokens the way the input writes them
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()

    def num_parameters(self) -> int:
        """Measured count of trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def transformer_parameters(self) -> int:
        """The Transformer core: encoder and decoder layers with their final norms."""
        return sum(p.numel() for p in (*self.encoder.transformer.parameters(), *self.decoder.parameters()))

    def encode(self, src: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        # src (B, T, F), src_pad (B, T) True where padded -> memory (B, T, D)
        return self.encoder(src, src_pad)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        # tgt_in (B, L) token ids -> logits (B, L, V)
        L = tgt_in.size(1)
        y = self.dropout(self.tgt_pos(self.embed(tgt_in) * math.sqrt(self.cfg.d_model)))
        # tgt_is_causal: the mask is known to be causal, so PyTorch need not compare it on every call.
        h = self.decoder(y, memory, tgt_mask=self.causal_mask[:L, :L], tgt_key_padding_mask=tgt_in.eq(PAD_ID),
                         memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.head(h)

    def forward(self, src: torch.Tensor, src_pad: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src, src_pad), src_pad)

    def greedy(self, src: torch.Tensor, src_pad: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        """Greedy decoding of a batch, incremental (see decoding.py); token ids per clip, without <bos>/<eos>."""
        return decoding.greedy(self, src, src_pad, max_len)

    def beam(self, src: torch.Tensor, src_pad: torch.Tensor, beam_size: int = 4, max_len: int | None = None,
             length_penalty: float = 1.0) -> list[list[int]]:
        """Batched beam search (see decoding.py); scores are log-probs divided by length**length_penalty."""
        return decoding.beam(self, src, src_pad, beam_size, max_len, length_penalty)
