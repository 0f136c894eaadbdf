"""Small building blocks shared by attention, MoE and the transformer: RMSNorm, the SwiGLU MLP, the
training-from-scratch init, and `linear_cross_entropy` (the output head and the loss fused, chunk by chunk,
so the (tokens, vocab) logits are never materialised)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def init_parameters(module: nn.Module, std: float) -> None:
    """Training-from-scratch init: Normal(0, std) for every matrix, ones for norm weights, zeros for biases."""
    for name, p in module.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.normal_(0.0, std)


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm with a hand-written backward: autograd through the decomposed norm makes ~12 full-size passes
    (and, in bf16, several fp32 copies of the activations); this makes ~6 and saves only x and the per-row
    r = 1/sqrt(mean(x²) + eps).

    Forward, exactly as HF:  x̂ = x·r (fp32),  y = w · cast(x̂).
    Backward (g = ∂L/∂y):  ∂L/∂w = Σ_rows g ⊙ cast(x̂);  with u = g ⊙ w (as autograd: in y's dtype, then fp32),
    ∂L/∂x = r · (u − x̂ · mean(u ⊙ x̂)) = r · (u − x · r² · mean(u ⊙ x)).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if x.dtype == torch.float32:
            r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
            xn = x * r
        else:  # fp32 statistics and product without materialising x in fp32; one rounding of x·r, as cast(x̂)
            ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_()
            r = torch.rsqrt(ss.div_(x.shape[-1]).add_(eps))
            xn = torch.mul(x, r, out=torch.empty_like(x))
        ctx.save_for_backward(x, weight, r)
        return weight * xn

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        gw = gx = None
        if ctx.needs_input_grad[1]:
            xn = torch.mul(x, r, out=torch.empty_like(x))  # cast(x̂), as in the forward
            gw = (g * xn).flatten(0, -2).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            u = (g * weight).float()
            if x.dtype == torch.float32:
                xn = x * r
                gx = torch.addcmul(u, xn, (u * xn).mean(-1, keepdim=True), value=-1.0).mul_(r)
            else:  # x stays in its dtype: the fp32 products happen inside the kernels, no fp32 copy of x
                dot = (u * x).mean(-1, keepdim=True).mul_(r * r)
                gx = torch.mul(torch.addcmul(u, x, dot, value=-1.0), r, out=torch.empty_like(x))
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


class _LinearCrossEntropyFn(torch.autograd.Function):
    """mean CE(h Wᵀ, labels), chunk by chunk, with the gradients computed in the same pass (the chunk's logits
    are never kept): ∂L/∂logits = (softmax − onehot) / n_valid, ∂L/∂h = ∂L/∂logits · W, ∂L/∂W = Σ ∂L/∂logitsᵀ h."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                chunk: int) -> torch.Tensor:
        valid_all = labels != ignore_index
        n_valid = valid_all.sum().clamp_min(1)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if want_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        dev = h.device.type
        gdt = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
               else torch.promote_types(h.dtype, weight.dtype))
        for s in range(0, h.shape[0], chunk):
            hc, valid = h[s:s + chunk], valid_all[s:s + chunk]
            target = torch.where(valid, labels[s:s + chunk], 0)[:, None]
            logits = (hc @ weight.t()).float()  # as F.cross_entropy(head(h).float(), ...)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += ((lse - logits.gather(1, target))[:, 0] * valid).sum()
            if want_h or want_w:
                p = logits.sub_(lse).exp_()  # softmax, in place of the logits
                p.scatter_add_(1, target, -valid[:, None].to(p.dtype))
                if not bool(valid.all()):
                    p.mul_(valid[:, None])
                p = p.to(gdt)  # the matmul dtype of the forward (autocast's, or the inputs')
                if want_h:
                    gh[s:s + chunk] = p @ weight.to(gdt)
                if want_w:
                    gw += p.t() @ hc.to(gdt)
        ctx.save_for_backward(gh, gw, n_valid)
        ctx.weight_dtype = weight.dtype
        return total / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        gh, gw, n_valid = ctx.saved_tensors
        scale = g / n_valid
        return (None if gh is None else gh * scale.to(gh.dtype),
                None if gw is None else (gw * scale).to(ctx.weight_dtype), None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, chunk_tokens: int | None = None) -> torch.Tensor:
    """F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=ignore_index) (mean over the labels that
    are not ignore_index), without materialising the (tokens, vocab) logits and their gradient: the output
    head and the loss run over chunks of tokens, and the backward is computed chunk by chunk in the forward.
    hidden (..., dim), weight (vocab, dim) (the output head), labels (...). Use it instead of `head(h)` + CE
    when the loss is all that is needed (training)."""
    h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    if h.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cross_entropy: {h.shape[0]} hidden rows but {y.shape[0]} labels")
    chunk = chunk_tokens or max(1, (1 << 22) // weight.shape[0])  # fp32 logits of a chunk: at most 16 MB
    return _LinearCrossEntropyFn.apply(h, weight, y, ignore_index, chunk)
