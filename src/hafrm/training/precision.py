"""Pick the compute dtype by measuring: bf16 only where this machine runs it faster than fp32."""

from __future__ import annotations

import functools
import time

import torch


def _matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 3, tries: int = 3) -> float:
    """The best of `tries` timings of `reps` products of two n x n matrices: smaller or single
    timings are too noisy on a shared VM to rank the dtypes (docs/performance.md). A dtype whose
    first product is slow (emulated bf16) is not timed further, so the probe stays cheap there."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    start = time.perf_counter()
    a @ b  # warm-up
    best = (time.perf_counter() - start) * reps
    if best > 0.5:
        return 2 * n**3 * reps / best / 1e9
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best / 1e9


@functools.lru_cache(maxsize=1)
def cpu_matmul_gflops() -> dict[str, float]:
    """Measured fp32 and bf16 matmul GFLOP/s on this CPU (probed once per process)."""
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
