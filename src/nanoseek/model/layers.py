"""Small building blocks shared by attention, MoE and the transformer: RMSNorm and the SwiGLU MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm with a hand-written backward: autograd through the decomposed norm makes ~12 full-size passes,
    this makes ~6 and saves nothing but x and the per-row r = 1/sqrt(mean(x²) + eps).

    Forward, exactly as HF:  x̂ = x·r (fp32),  y = w · cast(x̂).
    Backward (g = ∂L/∂y, D = dim):  ∂L/∂w = Σ_rows g ⊙ cast(x̂);  with u = g ⊙ w (fp32),
    ∂L/∂x = r · (u − x̂ · mean(u ⊙ x̂)).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, r)
        return weight * (xf * r).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        xn = x.float() * r
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (g * xn.to(x.dtype)).flatten(0, -2).sum(0).to(weight.dtype)
        gx = None
        if ctx.needs_input_grad[0]:
            u = (g * weight).float()
            dot = (u * xn).mean(-1, keepdim=True)
            gx = torch.addcmul(u, xn, dot, value=-1.0).mul_(r).to(x.dtype)
        return gx, gw, None


class RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps), normalised in fp32 and cast back before the weight (as HF does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) ⊙ w3 x). Used for dense layers and the shared experts."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)  # gate_proj
        self.w2 = nn.Linear(inter_dim, dim, bias=False)  # down_proj
        self.w3 = nn.Linear(dim, inter_dim, bias=False)  # up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
