"""Where and how tensors run: device choice, mixed precision, reproducibility."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' means CUDA when available, else CPU; anything else is passed to torch.device."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on CUDA when the GPU has it, else fp16; None (full fp32) on CPU or without amp.

    CPU autocast is left off: bf16 convolutions are slower than fp32 on most CPUs and would
    make CPU runs depend on the instruction set.
    """
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def reproducible(device: torch.device, seed: int) -> Iterator[None]:
    """Seeds torch inside a forked RNG state and, on CPU, demands deterministic kernels.

    The caller's global RNG and determinism flag come back unchanged afterwards. CUDA runs stay
    seeded but not bit-exact: deterministic CUDA kernels need CUBLAS_WORKSPACE_CONFIG set
    before CUDA starts, which a library cannot promise.
    """
    cuda = [device.index or 0] if device.type == "cuda" else []
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
