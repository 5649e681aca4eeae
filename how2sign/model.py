"""SignTranslator: a Transformer encoder-decoder from keypoint frames to English tokens.

Shapes in comments: B batch, T frames, L target tokens, D d_model, F input features, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .rules import AT_LEAST_ONE, NON_NEGATIVE, UNIT, Settings, check_heads, setting
from .vocab import PAD_ID


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Everything needed to rebuild the network. No defaults: TrainConfig owns them."""

    input_dim: int = setting(rule=AT_LEAST_ONE)
    vocab_size: int = setting(rule=AT_LEAST_ONE)
    d_model: int = setting(rule=AT_LEAST_ONE)
    nhead: int = setting(rule=AT_LEAST_ONE)
    encoder_layers: int = setting(rule=AT_LEAST_ONE)
    decoder_layers: int = setting(rule=AT_LEAST_ONE)
    dim_feedforward: int = setting(rule=AT_LEAST_ONE)
    dropout: float = setting(rule=UNIT)
    max_frames: int = setting(rule=AT_LEAST_ONE)
    max_tokens: int = setting(rule=AT_LEAST_ONE)
    # The decoder's own heads and feed-forward width (0: the encoder's), so a study can search the decoder
    # around a fixed pretrained encoder. Defaults keep older checkpoints' model_config loadable.
    decoder_nhead: int = setting(0, NON_NEGATIVE)
    decoder_feedforward: int = setting(0, NON_NEGATIVE)

    def check(self) -> None:
        check_heads(self.d_model, self.nhead)
        if self.decoder_nhead:  # 0: the decoder uses nhead, checked above
            check_heads(self.d_model, self.decoder_nhead, "decoder_nhead")

    @property
    def decoder_heads(self) -> int:
        """The decoder's attention heads: what the decoder layers are built with and decoding splits by."""
        return self.decoder_nhead or self.nhead

    @property
    def decoder_width(self) -> int:
        """The decoder's feed-forward width."""
        return self.decoder_feedforward or self.dim_feedforward


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
        layer = nn.TransformerDecoderLayer(d, cfg.decoder_heads, cfg.decoder_width, cfg.dropout, batch_first=True)
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

    def trainable_parameters(self) -> int:
        """Measured count of trainable parameters (tied weights counted once): a trial's `params`."""
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
