"""DeepSeekMoE: a router (V3 or V2 gate), fine-grained routed experts stored stacked, and shared experts.

    y = Σ_{i ∈ topk} w_i · Expert_i(u) + SharedExperts(u)

V3 gate (topk_method "noaux_tc"): s = sigmoid(W_g u); the bias b (e_score_correction_bias) is added for choosing
experts only; a group scores the sum of its top-2 biased scores; experts outside the topk_group best groups are
masked with −inf; weights are the unbiased s at the chosen experts, renormalised, times routed_scaling_factor.
V2 gate: s = softmax(W_g u); "greedy" top-k, or "group_limited_greedy" with group score = max; no renormalisation
unless norm_topk_prob.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import MLP


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.n_groups = cfg.n_group
        self.topk_groups = cfg.topk_group
        self.topk_method = cfg.topk_method
        self.score_func = cfg.scoring_func
        self.norm_topk_prob = cfg.norm_topk_prob
        self.route_scale = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # The aux-loss-free balancing bias: updated by the trainer, never by gradients, always kept in fp32.
        if self.topk_method == "noaux_tc":
            self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, dim) -> weights (n, k) in x's dtype, expert indices (n, k)."""
        logits = F.linear(x.float(), self.weight.float())  # routing in fp32
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores if self.bias is None else scores + self.bias
        if self.n_groups > 1 and self.topk_method != "greedy":
            grouped = choice.unflatten(-1, (self.n_groups, -1))
            if self.topk_method == "noaux_tc":
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            else:
                group_scores = grouped.amax(dim=-1)
            keep = group_scores.topk(self.topk_groups, dim=-1).indices
            dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            choice = grouped.masked_fill(dropped[..., None], float("-inf")).flatten(1)
        indices = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return (weights * self.route_scale).to(x.dtype), indices

    def _apply(self, fn, recurse: bool = True):  # keep the bias in fp32 through model.to(dtype)
        old = self.bias
        super()._apply(fn, recurse)
        if old is not None and self.bias.dtype != torch.float32:
            self.bias = (torch.empty_like(self.bias, dtype=torch.float32) if old.is_meta
                         else old.to(device=self.bias.device, dtype=torch.float32))
        return self


class Experts(nn.Module):
    """All routed experts as stacked weights: w13 = [w1; w3] (E, 2I, dim) (gate and up fused), w2 (E, dim, I).

    Tokens are sorted by expert and each expert multiplies only its own tokens, as one grouped GEMM per projection
    (torch._grouped_mm) or, where that is unavailable, a loop over the experts that received tokens.
    `gmm`, when set (FP8 training: nanoseek.train.fp8_train), replaces that grouped GEMM: gmm(a, b, offs).
    """
    gmm = None

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.inter_dim = inter_dim
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """x (n, dim); weights, indices (n, k); counts (E,) tokens per expert."""
        flat = indices.flatten()
        order = flat.argsort(stable=True)
        token = order // indices.shape[1]  # row i of the expert-sorted batch is token[i]
        w_sorted = weights.flatten()[order]
        # torch.autocast does not cover torch._grouped_mm: cast as it would for a linear layer, so the routed
        # experts run in bf16 under autocast like every other matmul (not in fp32).
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        w13, w2 = self.w13.to(dtype), self.w2.to(dtype)
        block = _row_block(x.device, dtype)
        if block > 1:
            token, w_sorted, counts = _pad_groups(token, w_sorted, flat[order], counts, block)
        xs = x.to(dtype).index_select(0, token)  # (rows, dim), grouped by expert
        ys = expert_swiglu(xs, w13, w2, counts, self.inter_dim, self.gmm)
        ys = (ys * w_sorted[:, None]).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, ys)


def expert_swiglu(xs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, counts: torch.Tensor,
                  inter_dim: int, gmm=None) -> torch.Tensor:
    """SwiGLU of expert e on its contiguous rows of xs (rows sorted by expert, counts[e] of them): one grouped GEMM
    per projection (`gmm` when given: FP8 training's), or a loop over the experts where torch._grouped_mm is
    unavailable. Also the expert-parallel forward's local computation (nanoseek.train.expert_parallel)."""
    if gmm is not None:
        return _grouped_swiglu(xs, w13, w2, counts.cumsum(0).to(torch.int32), inter_dim, gmm)
    if _use_grouped_mm(xs):
        offs = counts.cumsum(0).to(torch.int32)
        # torch._grouped_mm's tracing (fake) kernel accepts only bf16, though the CPU kernel runs fp32 too:
        # a compiled model in another dtype calls it through nanoseek::grouped_mm, which traces in any dtype.
        traceable = xs.dtype == torch.bfloat16 or not torch.compiler.is_compiling()
        return _grouped_swiglu(xs, w13, w2, offs, inter_dim, torch._grouped_mm if traceable else grouped_mm)
    return _expert_loop(xs, w13, w2, counts, inter_dim)


# Rows per expert group are padded to a multiple of this on CPU in bf16/fp16. oneDNN (which runs the CPU's
# bf16 matmuls, on AMX where present) JIT-compiles a kernel per matrix shape and caches it; with the exact
# token counts every expert of every step has a new M and pays the compile (~10x the multiply itself at
# this size). Padded, the shapes repeat. fp32 goes to MKL, which has no such cost: no padding there.
CPU_LOW_PRECISION_ROW_BLOCK = 32


def _row_block(device: torch.device, dtype: torch.dtype) -> int:
    return CPU_LOW_PRECISION_ROW_BLOCK if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) else 1


def _pad_groups(token: torch.Tensor, w_sorted: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor,
                block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert padding rows so every expert's group of rows has a multiple of `block` rows. A padding row
    gathers token 0 and has routing weight 0, so it adds exactly nothing to the output and gets zero gradient."""
    padded = (counts + block - 1) // block * block
    start, start_p = counts.cumsum(0) - counts, padded.cumsum(0) - padded
    dest = torch.arange(token.numel(), device=token.device) - start[expert_sorted] + start_p[expert_sorted]
    total = int(padded.sum())
    token_p = token.new_zeros(total).index_copy(0, dest, token)
    w_p = w_sorted.new_zeros(total).index_copy(0, dest, w_sorted)
    return token_p, w_p, padded


def _grouped_swiglu(xs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, offs: torch.Tensor,
                    inter_dim: int, gmm=None) -> torch.Tensor:
    """Each expert's SwiGLU on its rows of xs as two grouped GEMMs; offs: cumulative row counts (int32).
    gmm: torch._grouped_mm (default) or nanoseek::grouped_mm."""
    gmm = gmm or torch._grouped_mm  # looked up here: torch builds without it must still import this module
    g, u = gmm(xs, w13.transpose(1, 2), offs=offs).split(inter_dim, dim=-1)
    return gmm(F.silu(g) * u, w2.transpose(1, 2), offs=offs)


@torch.library.custom_op("nanoseek::grouped_mm", mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm as an op torch.compile traces in any dtype. Groups of rows set by offs (cumulative):
    a (M, K) x b (G, K, N) -> (M, N), group g's rows times b[g]; or a (K, M) x b (M, N) -> (G, K, N)."""
    return torch._grouped_mm(a, b, offs=offs)


@grouped_mm.register_fake
def _grouped_mm_shape(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])


def _grouped_mm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    """Y_g = A_g B_g:  dA_g = dY_g B_gᵀ,  dB_g = A_gᵀ dY_g (the second form of the op). Forward form 1 only."""
    a, b, offs = ctx.saved_tensors
    grad = grad.contiguous()  # the kernel rejects broadcast (stride 0) gradients
    ga = grouped_mm(grad, b.transpose(-2, -1).contiguous(), offs) if ctx.needs_input_grad[0] else None
    gb = grouped_mm(a.t(), grad, offs) if ctx.needs_input_grad[1] else None
    return ga, gb, None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


@torch.compiler.disable  # token counts are data: traced, every new set of counts would be a recompilation
def _expert_loop(xs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, counts: torch.Tensor,
                 inter_dim: int) -> torch.Tensor:
    """SwiGLU of each expert that received tokens on its contiguous rows of xs (rows sorted by expert)."""
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            g, u = F.linear(xs[start:start + n], w13[e]).split(inter_dim, dim=-1)
            ys[start:start + n] = F.linear(F.silu(g) * u, w2[e])
            start += n
    return ys


def _use_grouped_mm(x: torch.Tensor) -> bool:
    # The grouped GEMM needs 16-byte aligned rows and, on CUDA, a Hopper-class GPU for bf16.
    if not hasattr(torch, "_grouped_mm") or x.shape[-1] * x.element_size() % 16:
        return False
    if x.is_cuda:
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return x.device.type == "cpu"


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts = cfg.n_routed_experts
        self.gate = Gate(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
                               if cfg.n_shared_experts else None)
        # Tokens routed to each expert by the last forward (for load balancing and reports).
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_routed_experts, dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, indices = self.gate(x)
        flat = indices.flatten()  # tokens per expert; not bincount, whose output shape torch.compile cannot know
        counts = torch.zeros(self.n_experts, dtype=torch.long, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat))
        self.tokens_per_expert = counts
        y = self.experts(x, weights, indices, counts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.view(shape)
