"""Pick the compute dtype by measuring: bf16 only where this machine runs it faster than fp32."""

from __future__ import annotations

import functools
import time

import torch


def _matmul_gflops(dtype: torch.dtype, n: int = 256, reps: int = 4) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


@functools.lru_cache(maxsize=1)
def cpu_matmul_gflops() -> dict[str, float]:
    """Measured fp32 and bf16 matmul GFLOP/s on this CPU (small probe, ~0.1 s)."""
    return {"fp32": _matmul_gflops(torch.float32), "bf16": _matmul_gflops(torch.bfloat16)}


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """'auto' -> 'bf16' on CUDA with bf16 support, or on a CPU where bf16 measures >= 1.3x fp32."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    speeds = cpu_matmul_gflops()
    return "bf16" if speeds["bf16"] >= 1.3 * speeds["fp32"] else "fp32"
