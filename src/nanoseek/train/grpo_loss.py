r"""The GRPO objective as pure functions of tensors (DeepSeekMath §4.1, DeepSeek-R1 §2.2; TRL's names for the knobs).

For a prompt q, G completions o_1..o_G are sampled from π_old and scored r_1..r_G. Then

    advantage     Â_i = (r_i − mean(r_group)) / (std + 1e-4)        scale_rewards: "group" std within the group,
                                                                     "batch" std over the whole batch, "none" no
                                                                     division (Dr. GRPO), the same Â_i for every
                                                                     token of o_i
    ratio         ρ_{i,t} = exp(log π_θ(o_{i,t}) − log π_old(o_{i,t}))
    token term    ℓ_{i,t} = −min(ρ·Â_i, clip(ρ, 1 − ε, 1 + ε_high)·Â_i) + β·KL_{i,t}
    k3 KL         KL_{i,t} = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1   (≥ 0, unbiased for
                                                                     KL(π_θ‖π_ref) under samples from π_θ)
    aggregation   "grpo":    1/G Σ_i 1/|o_i| Σ_t ℓ_{i,t}      (mean per sequence, then over sequences)
                  "dapo":    Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|        (token level over the whole batch)
                  "dr_grpo": Σ_{i,t} ℓ_{i,t} / (G · L_max)       (a constant normaliser)

With one policy update per batch (num_iterations = 1) π_old is π_θ itself, detached: ρ = 1 in value, the loss value
is β·KL (zero when β = 0), and the gradient is the policy gradient −Â·∇log π_θ. When the batch is processed
in micro-batches, pass the whole batch's normalisers (`num_sequences`, `num_tokens`) so that the micro-batch losses sum
to the loss of the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                     eps: float = STD_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Â (N,) for rewards (N,) laid out as consecutive groups of `group_size` completions of one prompt, and the
    per-group flag (N // group_size,) of groups whose rewards are all equal (zero spread: no learning signal)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards: expected one of {', '.join(SCALE_REWARDS)} (got {scale_rewards!r})")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards: expected a vector whose length is a multiple of the group size {group_size} "
                         f"(got shape {tuple(rewards.shape)})")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    zero_std = std.squeeze(1) < 1e-6
    if scale_rewards == "group":
        centred = centred / (std + eps)
    elif scale_rewards == "batch":
        centred = centred / (rewards.float().std() + eps if rewards.numel() > 1 else eps)
    return centred.flatten(), zero_std


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator per token: exp(ref − logp) − (ref − logp) − 1."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass
class LossStats:
    """Masked means over the completion tokens, for logging (all detached)."""
    kl: torch.Tensor | None
    clip_low: torch.Tensor  # ρ < 1 − ε where Â < 0 (the clip is active)
    clip_high: torch.Tensor  # ρ > 1 + ε_high where Â > 0
    clip_region: torch.Tensor  # ρ outside [1 − ε, 1 + ε_high]
    ratio: torch.Tensor


def grpo_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
              epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "dapo",
              max_completion_length: int | None = None, num_sequences: int | None = None,
              num_tokens: float | None = None) -> tuple[torch.Tensor, LossStats]:
    """The GRPO loss of a (micro-)batch.

    logp, old_logp, ref_logp, mask: (B, T) per completion token (mask 1 on tokens that count); advantages (B,).
    old_logp None means π_old = π_θ (detached): one update per batch. ref_logp is needed when beta != 0.
    num_sequences / num_tokens: the whole batch's sequence count and active-token count, when this is one of
    several micro-batches (defaults: this batch's). max_completion_length: the dr_grpo constant (default T).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {', '.join(LOSS_TYPES)} (got {loss_type!r})")
    if logp.shape != mask.shape or advantages.shape != logp.shape[:1]:
        raise ValueError(f"grpo_loss: logp {tuple(logp.shape)}, mask {tuple(mask.shape)} and advantages "
                         f"{tuple(advantages.shape)} must be (B, T), (B, T) and (B,)")
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo_loss: beta != 0 needs ref_logp (the frozen reference model's log-probabilities)")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = advantages.to(logp.dtype)[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    kl = None
    if beta != 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl

    B, T = logp.shape
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / (num_sequences or B)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(float(num_tokens if num_tokens is not None else mask.sum()), 1.0)
    else:
        loss = (per_token * mask).sum() / ((num_sequences or B) * (max_completion_length or T))

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        mean = lambda x: (x.to(logp.dtype) * mask).sum() / n  # noqa: E731
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = LossStats(kl=None if kl is None else mean(kl.detach()), clip_low=mean(low), clip_high=mean(high),
                          clip_region=mean(low | high), ratio=mean(ratio.detach()))
    return loss, stats
