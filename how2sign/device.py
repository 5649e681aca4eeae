"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from .rules import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if not _DEVICE.match(name):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: Apple MPS is not available on this machine")
        # Ops MPS lacks fall back to the CPU instead of failing (the CLI also sets this before importing torch).
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """Mixed precision is used on CUDA only: bf16 where the card has it, else fp16."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def padding_multiples(device: torch.device) -> tuple[int, int]:
    """(frames, tokens) multiples batches are padded to: on an accelerator few distinct shapes let
    kernels and cached attention graphs be reused; the CPU keeps the tightest padding (and its exact
    results)."""
    return (16, 8) if device.type in ("cuda", "mps") else (1, 1)


def adamw_options(device: torch.device) -> dict:
    """AdamW's implementation for train() on this device. CUDA: the fused kernel (fastest, and no host
    sync under a GradScaler). CPU: foreach, which runs the default's per-tensor kernels in the same
    order (bit-identical results) with less Python per step. Elsewhere torch's default."""
    return {"cuda": {"fused": True}, "cpu": {"foreach": True}}.get(device.type, {})


def free_memory(device: torch.device) -> None:
    """Release cached accelerator memory after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


# --------------------------------------------------------------------------- counting and memory
# What one process costs on an accelerator before its first tensor: the CUDA/MPS context, cuBLAS and
# cuDNN workspaces, and the caching allocator's slack. Measured contexts are 0.3-0.6 GiB on recent cards.
PROCESS_OVERHEAD_BYTES = 1 << 30
# Share of a device's memory that trials may plan to fill; the rest absorbs fragmentation and the
# estimate's error (it is an upper bound for the math attention path, looser with fused attention).
USABLE_FRACTION = 0.9


def visible_gpus() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    return bool(torch.backends.mps.is_available())


def device_total_bytes(name: str) -> int | None:
    """Memory of an accelerator named like 'cuda:1', 'cuda' or 'mps'; None for the CPU or when unknown."""
    if name.startswith("cuda") and torch.cuda.is_available():
        index = int(name.split(":")[1]) if ":" in name else 0
        if index < torch.cuda.device_count():
            return int(torch.cuda.get_device_properties(index).total_memory)
    if name == "mps" and mps_available() and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    return None


def parameter_count(cfg, input_dim: int, vocab_size: int) -> int:
    """Weights of the translation model for a TrainConfig `cfg` (d_model, layers, feed-forward widths),
    counted from the layer shapes: input projection, encoder and decoder layers, embedding, output head."""
    d, ff, dff = cfg.d_model, cfg.dim_feedforward, cfg.decoder_width
    attention = 4 * d * d + 4 * d                     # q, k, v and output projections with biases
    norm = 2 * d
    encoder = cfg.encoder_layers * (attention + 2 * d * ff + ff + d + 2 * norm) + norm
    decoder = cfg.decoder_layers * (2 * attention + 2 * d * dff + dff + d + 3 * norm) + norm
    return (input_dim * d + d + norm) + encoder + decoder + vocab_size * d  # the output head shares the embedding


def estimate_trial_bytes(cfg, input_dim: int, vocab_size: int, activation_bytes: int = 4) -> int:
    """Peak accelerator memory of one training step of `cfg` at its longest batch (max_frames frames,
    max_tokens tokens), plus one process's overhead. An upper bound, kept simple on purpose:

    - weights, gradients and AdamW's two moments: 16 bytes per fp32 parameter;
    - activations kept for the backward pass, per layer: about 10 tensors of batch x T x d_model
      (projections, residuals, norms, dropout masks), two of batch x T x dim_feedforward, and two of
      batch x heads x T x T for attention weights and their dropout mask (the math attention path;
      fused kernels keep less);
    - the output layer's logits, their softmax and its gradient: 3 x batch x tokens x vocabulary.
    """
    b, t, n, h, d, ff = cfg.batch_size, cfg.max_frames, cfg.max_tokens, cfg.nhead, cfg.d_model, cfg.dim_feedforward
    dh, dff = cfg.decoder_heads, cfg.decoder_width
    weights = 16 * parameter_count(cfg, input_dim, vocab_size)
    encoder = cfg.encoder_layers * (10 * b * t * d + 2 * b * t * ff + 2 * b * h * t * t)
    # Decoder layers: self-attention over the tokens and cross-attention over the frames.
    decoder = cfg.decoder_layers * (14 * b * n * d + 2 * b * n * dff + 2 * b * dh * n * n + 2 * b * dh * n * t)
    logits = 3 * b * n * vocab_size
    inputs = b * t * input_dim
    return weights + activation_bytes * (encoder + decoder + logits + inputs) + PROCESS_OVERHEAD_BYTES


def trials_that_fit(wanted: int, trial_bytes: int, device_bytes: int | None) -> int:
    """How many of `wanted` concurrent trials of `trial_bytes` each fit in a device of `device_bytes`
    (None: unknown or the CPU, no cap). Never less than one: a trial that does not fit still runs and
    ends as FAIL "out of memory", as it would alone."""
    if device_bytes is None or trial_bytes <= 0:
        return wanted
    return max(1, min(wanted, int(device_bytes * USABLE_FRACTION // trial_bytes)))
