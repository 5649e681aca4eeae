"""Incremental greedy and beam decoding with cached keys and values.

nn.TransformerDecoderLayer has no key/value cache: decoding with it recomputes every earlier position at every
step. Here each step feeds only the newest token through the decoder layers, using the layers' own weights
and the same math as nn.TransformerDecoderLayer (dropout is the layer's own module, so a no-op in eval mode):

- self-attention keys and values grow by one position per step;
- cross-attention keys and values of the encoder memory are computed once per decode.

Positions holding <pad> are hidden as keys, exactly as `SignTranslator.decode` does through
tgt_key_padding_mask, so the tokens chosen match full recomputation. Keys and values are split over the
decoder's own heads (`ModelConfig.decoder_heads`, which a frozen-encoder study searches apart from the
encoder's). `model` below is a `how2sign.model.SignTranslator`; this module does not import it (the model
knows nothing of decoding).

Shapes in comments: B clips, K beams, N = B*K rows, H heads, S steps so far, T frames, D d_model, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .vocab import BOS_ID, EOS_ID, PAD_ID

# A host read of "all rows finished?" stalls an accelerator's queue, so there it runs once every few steps;
# the extra steps only append <pad> to finished rows. On the CPU a read costs nothing, so it runs every step.
SYNC_EVERY = 4


def sync_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else SYNC_EVERY


def _heads(x: torch.Tensor, nhead: int) -> torch.Tensor:
    # (N, S, D) -> (N, H, S, D/H)
    n, s, d = x.shape
    return x.view(n, s, nhead, d // nhead).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    # (N, H, S, D/H) -> (N, S, D)
    n, h, s, e = x.shape
    return x.transpose(1, 2).reshape(n, s, h * e)


class DecoderCache:
    """Per decoder layer: self-attention K/V so far and the memory's cross-attention K/V."""

    def __init__(self, model: nn.Module, memory: torch.Tensor, src_pad: torch.Tensor):
        self.model = model
        self.nhead = model.cfg.decoder_heads
        self.self_k: list[torch.Tensor | None] = []
        self.self_v: list[torch.Tensor | None] = []
        self.cross_k: list[torch.Tensor] = []
        self.cross_v: list[torch.Tensor] = []
        d = model.cfg.d_model
        for layer in model.decoder.layers:
            mha = layer.multihead_attn
            kv = F.linear(memory, mha.in_proj_weight[d:], mha.in_proj_bias[d:])  # (N, T, 2D)
            k, v = kv.chunk(2, dim=-1)
            self.cross_k.append(_heads(k, self.nhead))
            self.cross_v.append(_heads(v, self.nhead))
            self.self_k.append(None)
            self.self_v.append(None)
        self.cross_keep = (~src_pad).view(src_pad.size(0), 1, 1, -1)  # SDPA: True takes part
        self.self_keep: torch.Tensor | None = None  # (N, 1, 1, S)

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i continues the hypothesis that was row rows[i]."""
        self.self_k = [k.index_select(0, rows) for k in self.self_k]
        self.self_v = [v.index_select(0, rows) for v in self.self_v]
        self.self_keep = self.self_keep.index_select(0, rows)

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        """Feed token ids tok (N,) at position t; returns the logits (N, V) for position t + 1."""
        m = self.model
        y = m.embed(tok.unsqueeze(1)) * math.sqrt(m.cfg.d_model)
        x = m.dropout(y + m.tgt_pos.pe[t])  # (N, 1, D)
        keep = tok.ne(PAD_ID).view(-1, 1, 1, 1)
        self.self_keep = keep if self.self_keep is None else torch.cat([self.self_keep, keep], dim=-1)
        for i, layer in enumerate(m.decoder.layers):
            x = self._layer(i, layer, x)
        if m.decoder.norm is not None:
            x = m.decoder.norm(x)
        return m.head(x[:, 0])

    def _layer(self, i: int, layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
        # nn.TransformerDecoderLayer.forward, one query position, with this layer's caches.
        if layer.norm_first:
            x = x + self._self_block(i, layer, layer.norm1(x))
            x = x + self._cross_block(i, layer, layer.norm2(x))
            return x + _ff_block(layer, layer.norm3(x))
        x = layer.norm1(x + self._self_block(i, layer, x))
        x = layer.norm2(x + self._cross_block(i, layer, x))
        return layer.norm3(x + _ff_block(layer, x))

    def _self_block(self, i: int, layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
        sa = layer.self_attn
        q, k, v = (_heads(p, self.nhead) for p in F.linear(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1))
        if self.self_k[i] is not None:
            k = torch.cat([self.self_k[i], k], dim=2)
            v = torch.cat([self.self_v[i], v], dim=2)
        self.self_k[i], self.self_v[i] = k, v
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.self_keep)
        return layer.dropout1(F.linear(_merge(a), sa.out_proj.weight, sa.out_proj.bias))

    def _cross_block(self, i: int, layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
        mha = layer.multihead_attn
        d = x.size(-1)
        q = _heads(F.linear(x, mha.in_proj_weight[:d], mha.in_proj_bias[:d]), self.nhead)
        a = F.scaled_dot_product_attention(q, self.cross_k[i], self.cross_v[i], attn_mask=self.cross_keep)
        return layer.dropout2(F.linear(_merge(a), mha.out_proj.weight, mha.out_proj.bias))


def _ff_block(layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    return layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))


def strip(ids: list[int]) -> list[int]:
    """Token ids up to the first <eos> or <pad>."""
    out = []
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        out.append(i)
    return out


def decode_limit(model: nn.Module, max_len: int | None) -> int:
    """Total ids per hypothesis, <bos> and <eos> included: the caller's cap, never past max_tokens."""
    return min(max_len or model.cfg.max_tokens, model.cfg.max_tokens)


@torch.no_grad()
def greedy(model: nn.Module, src: torch.Tensor, src_pad: torch.Tensor,
           max_len: int | None = None) -> list[list[int]]:
    """Greedy decoding of a batch; token ids per clip, without <bos>/<eos>."""
    limit = decode_limit(model, max_len)
    cache = DecoderCache(model, model.encode(src, src_pad), src_pad)
    B, every = src.size(0), sync_every(src.device)
    tok = torch.full((B,), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    out = []
    for t in range(limit - 1):
        tok = cache.step(tok, t).argmax(-1).masked_fill(done, PAD_ID)  # (B,)
        out.append(tok)
        done |= tok.eq(EOS_ID)
        if (t + 1) % every == 0 and bool(done.all()):
            break
    if not out:
        return [[] for _ in range(B)]
    return [strip(row) for row in torch.stack(out, dim=1).tolist()]


class _Beams:
    """Batched beam state: K slots per clip, live hypotheses first in rank order, then dead slots.

    Scores are sums of log-probabilities kept in float64, as Python floats were when clips were decoded one
    at a time, so ranking and ties are the same (float32 on MPS, which has no float64). Of the finished
    hypotheses only the best by score / length**length_penalty is kept (the first one on ties, as max()
    over the list would pick).
    """

    def __init__(self, B: int, K: int, limit: int, device: torch.device):
        self.B, self.K = B, K
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.scores = torch.full((B, K), -math.inf, dtype=dtype, device=device)
        self.scores[:, 0] = 0.0
        self.live = torch.zeros(B, K, dtype=torch.bool, device=device)
        self.live[:, 0] = True
        self.hist = torch.full((B, K, limit), PAD_ID, dtype=torch.long, device=device)
        self.hist[:, :, 0] = BOS_ID
        self.active = torch.ones(B, dtype=torch.bool, device=device)  # clip still searching
        self.n_fin = torch.zeros(B, dtype=torch.long, device=device)
        self.has_fin = torch.zeros(B, dtype=torch.bool, device=device)
        self.best_norm = torch.full((B,), -math.inf, dtype=dtype, device=device)
        self.best_seq = torch.full((B, limit), PAD_ID, dtype=torch.long, device=device)

    def advance(self, logp: torch.Tensor, t: int, length_penalty: float) -> torch.Tensor:
        """One step from log-probs (B*K, V) at position t; returns the cache rows to continue (B*K,)."""
        B, K = self.B, self.K
        vals, idx = logp.view(B, K, -1).topk(K, dim=-1)  # (B, K, K)
        cand = (self.scores.unsqueeze(-1) + vals.to(self.scores.dtype)).view(B, K * K)
        valid = (self.live & self.active.unsqueeze(1)).unsqueeze(-1).expand(B, K, K).reshape(B, K * K)
        # Stable: equal scores keep beam-then-rank order, like the stable sort over a Python list.
        order = cand.masked_fill(~valid, -math.inf).sort(dim=-1, descending=True, stable=True).indices
        score, tok = cand.gather(1, order), idx.view(B, K * K).gather(1, order)
        src, ok = order // K, valid.gather(1, order)
        eos = tok.eq(EOS_ID)
        cont = ok & ~eos
        seen = cont.long().cumsum(-1)  # continuing candidates up to here; the walk stops at the K-th
        self._finish(score, src, ok & eos & (seen < K), t, length_penalty)
        take = cont & (seen <= K)
        pick = (~take).long().sort(dim=-1, stable=True).indices[:, :K]  # taken candidates first, in rank order
        n_live = take.sum(-1)
        live = torch.arange(K, device=logp.device).unsqueeze(0) < n_live.unsqueeze(1)
        src_k = src.gather(1, pick)
        self.scores = torch.where(live, score.gather(1, pick), -math.inf)
        self.hist = self.hist.gather(1, src_k.unsqueeze(-1).expand_as(self.hist))
        self.hist[:, :, t + 1] = tok.gather(1, pick)
        self.live = live
        self.active &= (self.n_fin < K) & (n_live > 0)
        base = torch.arange(B, device=logp.device).unsqueeze(1) * K
        return (base + src_k).view(-1)

    def _finish(self, score: torch.Tensor, src: torch.Tensor, fin: torch.Tensor, t: int,
                length_penalty: float) -> None:
        # Every hypothesis finished at this step has t + 1 tokens after <bos>; the divisor is a Python float.
        norm = torch.where(fin, score / float(t + 1) ** length_penalty, -math.inf)
        best, j = norm.max(dim=-1)  # first maximum on ties
        any_fin = fin.any(-1)
        better = any_fin & (~self.has_fin | (best > self.best_norm))
        seq = self.hist.gather(1, src.gather(1, j.unsqueeze(1)).unsqueeze(-1).expand(-1, 1, self.hist.size(2)))
        seq = seq.squeeze(1).clone()
        seq[:, t + 1] = EOS_ID
        self.best_seq = torch.where(better.unsqueeze(1), seq, self.best_seq)
        self.best_norm = torch.where(better, best, self.best_norm)
        self.has_fin |= any_fin
        self.n_fin += fin.sum(-1)

    def results(self) -> list[list[int]]:
        # Without any finished hypothesis, the best live one: all have the same length, slot 0 ranks first.
        seqs = torch.where(self.has_fin.unsqueeze(1), self.best_seq, self.hist[:, 0])
        return [strip(row[1:]) for row in seqs.tolist()]


@torch.no_grad()
def beam(model: nn.Module, src: torch.Tensor, src_pad: torch.Tensor, beam_size: int = 4,
         max_len: int | None = None, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over all clips and beams at once, as B*K rows of one decoder batch.

    Scores are sums of log-probs; a clip stops once it has beam_size finished hypotheses or no live one, and
    its answer is the finished hypothesis with the best score / length**length_penalty.
    """
    limit, K = decode_limit(model, max_len), beam_size
    B, dev = src.size(0), src.device
    memory = model.encode(src, src_pad)
    cache = DecoderCache(model, memory.repeat_interleave(K, dim=0), src_pad.repeat_interleave(K, dim=0))
    beams, every = _Beams(B, K, limit, dev), sync_every(dev)
    tok = torch.full((B * K,), BOS_ID, dtype=torch.long, device=dev)
    for t in range(limit - 1):
        logp = cache.step(tok, t).float().log_softmax(-1)
        rows = beams.advance(logp, t, length_penalty)
        cache.reorder(rows)
        tok = beams.hist[:, :, t + 1].reshape(-1)
        if (t + 1) % every == 0 and not bool(beams.active.any()):
            break
    return beams.results()
