"""AdamW with parameter groups and the learning-rate schedules.

No weight decay on norms, biases and embeddings (vectors and lookup tables); decay on every other matrix,
the stacked expert weights included.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay and no-decay groups. Under FSDP2 with expert parallelism the sharded parameters are DTensors and the
    expert shards plain tensors, which one foreach kernel cannot mix: those get groups of their own."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.dim() < 2 or "embed" in name or name.endswith("norm.weight"))
        groups.setdefault((decay, hasattr(p, "to_local")), []).append(p)
    order = [(True, False), (False, False), (True, True), (False, True)]
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0} for k in order if k in groups]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    device_type: str = "cpu") -> torch.optim.AdamW:
    # fused AdamW is one kernel for all parameters on CUDA; foreach is the fast path on CPU
    kw = {"fused": True} if device_type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8, **kw)


def lr_at(step: int, max_steps: int, lr: float, schedule: str, warmup_steps: int, min_lr_ratio: float,
          decay_frac: float = 0.2) -> float:
    """Learning rate for optimizer step `step` (0-based).

    wsd (DeepSeek-V3): linear warmup, constant, then cosine decay to min_lr over the last decay_frac of steps.
    cosine: linear warmup, then cosine decay to min_lr. constant: warmup then flat.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    min_lr = lr * min_lr_ratio
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        start, length = warmup_steps, max(1, max_steps - warmup_steps)
    else:
        length = max(1, round(max_steps * decay_frac))
        start = max(warmup_steps, max_steps - length)
        if step < start:
            return lr
    progress = min(1.0, (step - start) / length)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
