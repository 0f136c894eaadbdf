"""FP8 mixed-precision training with DeepSeek-V3's fine-grained recipe, applied to an unchanged model.

`apply_fp8(model, scaling="tile")` makes the linear layers of attention (wq/wq_a/wq_b, wkv_a, wkv_b, wo), the dense
MLPs and shared experts (w1, w2, w3) and the routed experts' grouped GEMMs (w13, w2) of every decoder block (the MTP
block's included) compute in FP8 E4M3; the embedding, output head, eh_proj, MoE gate, norms and the attention core
keep their precision (fp32, or bf16 under autocast). The parameters stay what they were: fp32 master weights, the
optimizer state untouched; FP8 copies exist only inside each GEMM. Nothing is cached between steps (no amax
history: every scale is the current tensor's max-abs), so a checkpoint holds no FP8 state and resumes exactly.

Each GEMM Y = X Wᵀ (X (M, K) activations, W (N, K) weights) and its two backward GEMMs are computed as
    Fprop   Y  = Q(X; 1×128) · Q(W; 128×128)ᵀ
    Dgrad  dX  = Q(dY; 1×128) · Q(W; 128×128)                        (tiles of dY along N, the contraction)
    Wgrad  dW  = Q(dY; 128×1)ᵀ · Q(X; 128×1)                         (tiles along the tokens, the contraction)
where Q(T; a×b) quantizes T in blocks of a×b elements (partial edge blocks allowed) with
    s_b = max|T over block b| / 448,   T_q = e4m3(T / s_b),   T ≈ T_q · s_b                (448 = e4m3 max)
(nanoseek.fp8.quantize_fp8_blockwise, the same math as the checkpoint format), and the products accumulate in fp32.
scaling="tensor" is the naive recipe for the ablation: one s for the whole tensor, in every GEMM.

Backends: "emulate" (the default on CPU, and the reference of the tests) dequantizes the e4m3 values with their
scales and multiplies in fp32: what an FP8 GEMM with fp32 accumulation computes, up to the order of summation.
"scaled_mm" (CUDA, compute capability >= 9.0, every dimension a multiple of 128) calls torch._scaled_mm with the
block-wise scales; it is UNTESTED here (no GPU was available when it was written): see docs/fp8.md.
"""
from __future__ import annotations

import functools
import os
import torch
from torch import nn

from ..fp8 import FP8_DTYPE, quantize_blocks, quantize_fp8_blockwise
from ..model.moe import Experts, grouped_mm

TILE = 128  # V3: 1×128 activation tiles, 128×128 weight blocks
SCALINGS = ("tile", "tensor")
BACKENDS = ("auto", "emulate", "scaled_mm")


# ---------------------------------------------------------------------------------------------------- quantizers
def _block(scaling: str, shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """The block actually used: `block` for the fine-grained recipe, the whole tensor for the per-tensor one."""
    return block if scaling == "tile" else (max(shape[0], 1), max(shape[1], 1))


def quantize(t: torch.Tensor, block: tuple[int, int], scaling: str = "tile") -> tuple[torch.Tensor, torch.Tensor]:
    """T (R, C) -> (T_q e4m3 (R, C), s fp32 (ceil(R/a), ceil(C/b))) with T ≈ T_q · s per a×b block.
    scaling="tensor": one scale for the whole tensor (s has shape (1, 1))."""
    bo, bi = _block(scaling, tuple(t.shape), block)
    return quantize_fp8_blockwise(t.detach(), (bo, bi))


def dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int], scaling: str = "tile") -> torch.Tensor:
    """T_q · s, each scale broadcast over its block (edge blocks cropped), in fp32."""
    bo, bi = _block(scaling, tuple(q.shape), block)
    full = s.repeat_interleave(bo, 0)[:q.shape[0]].repeat_interleave(bi, 1)[:, :q.shape[1]]
    return q.float() * full


_E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()  # every e4m3 bit pattern's value


def _decode(q: torch.Tensor) -> torch.Tensor:
    """q.float(), by table lookup over the 256 bit patterns: the same numbers, ~2x faster than the CPU cast."""
    return torch.take(_E4M3_VALUES.to(q.device), q.view(torch.uint8).long()).view(q.shape)


def fake_quantize(t: torch.Tensor, block: tuple[int, int], scaling: str = "tile") -> torch.Tensor:
    """The value an FP8 GEMM sees for T: dequantize(quantize(T)) in fp32 (the same numbers, without the crop and
    the full-size scale tensor: each block's e4m3 values times its scale, by broadcasting)."""
    bo, bi = _block(scaling, tuple(t.shape), block)
    q, s = quantize_blocks(t.detach(), (bo, bi))
    deq = _decode(q).mul_(s[:, None, :, None])
    return deq.view(q.shape[0] * bo, q.shape[2] * bi)[:t.shape[0], :t.shape[1]]


# ---------------------------------------------------------------------------------------------------- GEMMs
def _backend(a: torch.Tensor, dims: tuple[int, ...]) -> str:
    choice = os.environ.get("NANOSEEK_FP8_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"NANOSEEK_FP8_BACKEND: expected one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        ok = (a.is_cuda and torch.cuda.get_device_capability(a.device) >= (9, 0)
              and hasattr(torch, "_scaled_mm") and all(d % TILE == 0 for d in dims))
        return "scaled_mm" if ok else "emulate"
    return choice


def _mm_scaled_cuda(a: torch.Tensor, b: torch.Tensor, a_block: tuple[int, int], b_block: tuple[int, int],
                    scaling: str) -> torch.Tensor:
    """A (M, K) · B (K, N) as a real FP8 GEMM (UNTESTED). torch._scaled_mm wants A row-major, B column-major and
    dequantization multipliers (our s); block-wise scales: A's (M, K/128) and B's (K/128, N/128), outer-dim-major."""
    qa, sa = quantize(a, a_block, scaling)
    qb, sb = quantize(b.t(), (b_block[1], b_block[0]), scaling)  # B column-major = Bᵀ row-major
    if scaling == "tensor":
        sa, sb = sa.reshape(()), sb.reshape(())
    else:
        sa, sb = sa.t().contiguous().t(), sb.t()
    return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16).float()


def fp8_mm(a: torch.Tensor, b: torch.Tensor, a_block: tuple[int, int], b_block: tuple[int, int],
           scaling: str) -> torch.Tensor:
    """A (M, K) · B (K, N) with A quantized in a_block blocks and B in b_block blocks, fp32 accumulation."""
    if _backend(a, (a.shape[0], a.shape[1], b.shape[1])) == "scaled_mm":
        return _mm_scaled_cuda(a, b, a_block, b_block, scaling)
    return fake_quantize(a, a_block, scaling) @ fake_quantize(b, b_block, scaling)


class _FP8Linear(torch.autograd.Function):
    """Y = X Wᵀ (+ b) with the three GEMMs in FP8 (see the module docstring). X (M, K), W (N, K); Y in fp32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scaling: str) -> torch.Tensor:
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        if _backend(x, (*x.shape, weight.shape[0])) == "emulate":
            # Q(W;128×128) once for Fprop and Dgrad: 128×128 blocks (and one tensor scale) are symmetric
            wq = fake_quantize(weight, (TILE, TILE), scaling)
            y = fake_quantize(x, (1, TILE), scaling) @ wq.t()  # Q(X;1×128) · Q(W;128×128)ᵀ
        else:
            wq = None
            y = fp8_mm(x, weight.t(), (1, TILE), (TILE, TILE), scaling)
        ctx.save_for_backward(x, weight, wq)
        return y if bias is None else y + bias.float()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, weight, wq = ctx.saved_tensors
        gy = gy.float()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # dX = Q(dY;1×128) · Q(W;128×128)
            gx = (fake_quantize(gy, (1, TILE), ctx.scaling) @ wq if wq is not None
                  else fp8_mm(gy, weight, (1, TILE), (TILE, TILE), ctx.scaling)).to(x.dtype)
        if ctx.needs_input_grad[1]:  # dW = Q(dY;128×1)ᵀ · Q(X;128×1): both tiled along the tokens
            gw = fp8_mm(gy.t(), x, (1, TILE), (TILE, 1), ctx.scaling).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None


def _amp_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the original layer would have returned: autocast's, else the input's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               scaling: str = "tile") -> torch.Tensor:
    """F.linear(x, weight, bias) computed in FP8; x (..., K). Returns autocast's dtype (or x's)."""
    out_dtype = _amp_dtype(x)
    with torch.autocast(x.device.type, enabled=False):  # the fp32 products must not be recast by autocast
        y = _FP8Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias, scaling)
    return y.to(out_dtype).view(*x.shape[:-1], weight.shape[0])


class FP8Linear(nn.Linear):
    """An nn.Linear whose forward runs in FP8; same parameters, same state_dict (swapped in by apply_fp8)."""
    fp8_scaling: str = "tile"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.fp8_scaling)


class _FP8GroupedMM(torch.autograd.Function):
    """Y_g = A_g B_g for row groups g of A (M, K) (offs: cumulative row counts), B (G, K, N) = each expert's Wᵀ.
    Fprop: A per 1×128 tile (a token's tiles never span experts), each B_g per 128×128 block of W_g; dgrad: dY per
    1×128 tile, B_gᵀ in the same blocks; wgrad dB_g = A_gᵀ dY_g with A and dY in 128×1 tiles along the tokens."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, scaling: str) -> torch.Tensor:
        ctx.scaling = scaling
        aq = fake_quantize(a, (1, TILE), scaling)
        bq = _fake_quantize_experts(b, (TILE, TILE), scaling)
        ctx.save_for_backward(a, bq, offs)
        ctx.b_dtype = b.dtype
        return grouped_mm(aq, bq, offs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        a, bq, offs = ctx.saved_tensors  # bq: the forward's Q(B_g;128×128), also Dgrad's (the blocks are symmetric)
        gy = gy.float().contiguous()
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = grouped_mm(fake_quantize(gy, (1, TILE), ctx.scaling), bq.transpose(1, 2).contiguous(),
                            offs).to(a.dtype)
        if ctx.needs_input_grad[1]:
            aq = fake_quantize(a, (TILE, 1), ctx.scaling)
            gq = fake_quantize(gy, (TILE, 1), ctx.scaling)
            gb = grouped_mm(aq.t(), gq, offs).to(ctx.b_dtype)
        return ga, gb, None, None


def _fake_quantize_experts(b: torch.Tensor, block: tuple[int, int], scaling: str) -> torch.Tensor:
    """Each expert's matrix quantized on its own (per-tensor scaling: one scale per expert, like one weight)."""
    return torch.stack([fake_quantize(m, block, scaling) for m in b])


def fp8_grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, scaling: str = "tile") -> torch.Tensor:
    """The routed experts' grouped GEMM in FP8 (emulated on every device; fp32 out, cast to a's dtype)."""
    with torch.autocast(a.device.type, enabled=False):
        y = _FP8GroupedMM.apply(a, b, offs, scaling)
    return y.to(a.dtype)


# ---------------------------------------------------------------------------------------------------- applying
def _fp8_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that compute in FP8: every nn.Linear inside a decoder block's attention or FFN (MTP block
    included; exactly the weights the official FP8 checkpoints store in e4m3) and every routed-expert bank."""
    blocks = [*getattr(model, "layers", []), *(m.block for m in getattr(model, "mtp", []))]
    out = []
    for block in blocks:
        for name, mod in [*block.attn.named_modules(prefix="attn"), *block.ffn.named_modules(prefix="ffn")]:
            if isinstance(mod, Experts) or (type(mod) in (nn.Linear, FP8Linear) and ".gate" not in name):
                out.append((name, mod))
    return out


def apply_fp8(model: nn.Module, scaling: str = "tile") -> list[str]:
    """Make `model`'s attention projections, MLPs, shared and routed experts compute in FP8, in place (parameters,
    state_dict and everything else unchanged). Returns the names of the converted modules (relative to a block)."""
    if scaling not in SCALINGS:
        raise ValueError(f"fp8 scaling: expected one of {SCALINGS}, got {scaling!r}")
    names = []
    for name, mod in _fp8_modules(model):
        if isinstance(mod, Experts):
            mod.gmm = functools.partial(fp8_grouped_mm, scaling=scaling)
        else:
            mod.__class__ = FP8Linear
            mod.fp8_scaling = scaling
        names.append(name)
    if not names:
        raise ValueError("apply_fp8: the model has no attention/MLP/expert layers to convert")
    return names


def remove_fp8(model: nn.Module) -> None:
    """Undo apply_fp8 (e.g. before evaluating in full precision)."""
    for _, mod in _fp8_modules(model):
        if isinstance(mod, Experts):
            mod.gmm = None
        elif isinstance(mod, FP8Linear):
            mod.__class__ = nn.Linear


def is_fp8(model: nn.Module) -> bool:
    return any(isinstance(m, FP8Linear) for m in model.modules())


__all__ = ["apply_fp8", "remove_fp8", "is_fp8", "quantize", "dequantize", "fake_quantize", "fp8_linear",
           "fp8_grouped_mm", "FP8Linear", "FP8_DTYPE", "TILE", "SCALINGS"]
