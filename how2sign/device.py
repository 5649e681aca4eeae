"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from .model import ConfigError

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
