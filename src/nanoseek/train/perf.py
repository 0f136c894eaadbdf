"""Throughput accounting: the machine's measured matrix-multiply peak and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import time

import torch


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                      repeats: int = 3) -> float:
    """Best FLOP/s of an n×n×n matrix multiply on this device: the ceiling MFU is measured against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (and oneDNN/cuBLAS kernel selection)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
