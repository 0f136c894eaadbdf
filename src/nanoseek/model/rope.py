"""Rotary position embedding with YaRN frequency scaling, in the interleaved pair layout of the released weights.

The released DeepSeek weights rotate adjacent pairs (x[2j], x[2j+1]) by the angle pos · f'_j (the complex form of the
official code). We rotate those pairs in place, so no weight permutation is needed.
"""
from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """f'_j for j < d_r/2. With YaRN, f'_j = f_j/s · ramp_j + f_j · (1 − ramp_j), ramp rising from dims `low` to `high`."""
    dim = cfg.qk_rope_head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    y = cfg.yarn
    if y is None:
        return freqs
    orig, base = y["original_max_position_embeddings"], cfg.rope_theta

    def corr_dim(n_rot: float) -> float:  # the dimension whose wavelength completes n_rot turns in `orig` tokens
        return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr_dim(y["beta_fast"])), 0)
    high = min(math.ceil(corr_dim(y["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    return freqs / y["factor"] * ramp + freqs * (1 - ramp)


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pos · f'_j, fp32, shape positions.shape + (d_r/2,)."""
    angles = positions.to(torch.float32)[..., None] * inv_freq(cfg, positions.device)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: (a, b) -> (a cos − b sin, b cos + a sin), in fp32, layout unchanged.
    x: (..., d_r); cos/sin broadcastable to (..., d_r/2).

    Computed as one complex product (a + ib)(cos + i sin), as DeepSeek's own code does: the same fp32 products
    and sums as the real form (bit-identical here), in one kernel instead of ~10 (strided copies, stack, casts)."""
    xf = x.float()
    if torch.compiler.is_compiling():  # inductor generates no code for complex ops: the real form fuses instead
        a, b = xf.unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos.float(), sin.float()
        return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2).to(x.dtype)
    if xf.stride(-1) != 1 or xf.storage_offset() % 2 or any(st % 2 for st in xf.stride()[:-1]):
        xf = xf.contiguous()  # view_as_complex needs (re, im) pairs at even offsets
    rotated = torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * torch.complex(cos.float(), sin.float())
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
