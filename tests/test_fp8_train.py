"""FP8 training (nanoseek.train.fp8_train): quantizers at tile/block edges, scales, the emulated GEMMs against fp32
within FP8's error bound, gradients through the quantized GEMMs, the model conversion, exact resume and export."""
import json
import math
import os

import pytest
import torch

from nanoseek import ModelConfig
from nanoseek.fp8 import FP8_MAX
from nanoseek.model import Transformer
from nanoseek.model.moe import Experts
from nanoseek.train import Trainer
from nanoseek.train.config import build
from nanoseek.train.data import pretraining_data
from nanoseek.train.distributed import DistEnv
from nanoseek.train.fp8_train import (TILE, FP8Linear, apply_fp8, dequantize, fake_quantize, fp8_grouped_mm,
                                      fp8_linear, quantize, remove_fp8)
from test_train import prepared  # noqa: F401  (module fixture: tokenizer + shards)

pytestmark = pytest.mark.usefixtures("one_thread")

U = 2.0 ** -4  # e4m3: 3 mantissa bits, round-to-nearest relative error <= 2^-4 for normal values
SUB = 2.0 ** -10  # ... and absolute error <= half the subnormal spacing 2^-9, in units of the scale


def elem_bound(t: torch.Tensor, s: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """|Q(t) - t| <= U |t| + SUB · s elementwise (s broadcast over its block)."""
    full = s.repeat_interleave(block[0], 0)[:t.shape[0]].repeat_interleave(block[1], 1)[:, :t.shape[1]]
    return U * t.abs() + SUB * full


@pytest.mark.parametrize("shape", [(1, 1), (3, 127), (130, 300), (257, 129)])
@pytest.mark.parametrize("block", [(1, TILE), (TILE, 1), (TILE, TILE)])
def test_quantize_round_trip_at_tile_and_block_edges(shape, block):
    torch.manual_seed(0)
    t = torch.randn(shape) * torch.logspace(-3, 2, shape[1])  # channels of very different magnitudes
    q, s = quantize(t, block)
    assert q.dtype == torch.float8_e4m3fn and q.shape == t.shape
    assert s.dtype == torch.float32 and s.shape == (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))
    back = dequantize(q, s, block)
    assert (back - t).abs().le(elem_bound(t, s, block) * (1 + 1e-6)).all()
    assert q.float().abs().max() <= FP8_MAX
    assert torch.equal(fake_quantize(t, block), back)  # the fast path computes the same numbers
    # quantizing the dequantized values again is exact (they are representable with the same scales)
    q2, s2 = quantize(back, block)
    assert torch.equal(s2, s) and torch.equal(dequantize(q2, s2, block), back)


def test_scale_is_block_max_abs_over_448_with_partial_edges_and_zero_blocks():
    t = torch.zeros(3, 300)
    t[0, :128] = torch.linspace(-5, 2, 128)  # tile 0 of row 0: max-abs 5
    t[0, 256:] = 0.5  # the partial edge tile (44 channels)
    t[2, 200] = -7.0
    q, s = quantize(t, (1, TILE))
    expected = torch.tensor([[5.0, 1.0 * FP8_MAX, 0.5], [FP8_MAX, FP8_MAX, FP8_MAX], [FP8_MAX, 7.0, FP8_MAX]]) / FP8_MAX
    assert torch.allclose(s, expected)  # all-zero tiles get scale 1
    assert q[0, 0].float() == -FP8_MAX and q[2, 200].float() == -FP8_MAX  # the max-abs maps to ±448 exactly
    qt, st = quantize(t, (1, TILE), scaling="tensor")
    assert st.shape == (1, 1) and st.item() == pytest.approx(7.0 / FP8_MAX)
    # per-tensor scaling flushes the small tile to a coarser grid: 0.5 / (7/448) = 32 (exact), but 2/128 steps of
    # tile 0 lose precision the fine-grained scales keep
    assert (fake_quantize(t, (1, TILE), "tensor") - t).abs().sum() > (fake_quantize(t, (1, TILE)) - t).abs().sum()


def test_emulated_gemm_matches_fp32_within_fp8_error_bound():
    torch.manual_seed(1)
    x = torch.randn(70, 300) * torch.logspace(-2, 1, 300)
    w = torch.randn(200, 300) * 0.05
    y = fp8_linear(x, w)
    # the reference: exactly the quantized operands, multiplied in fp64
    ref_q = (fake_quantize(x, (1, TILE)).double() @ fake_quantize(w, (TILE, TILE)).double().t())
    assert torch.allclose(y.double(), ref_q, rtol=1e-5, atol=1e-5)
    # and against the fp32 GEMM: |X̃W̃ᵀ − XWᵀ| <= E_x |W̃|ᵀ + |X| E_wᵀ, E = the elementwise bound
    _, sx = quantize(x, (1, TILE))
    _, sw = quantize(w, (TILE, TILE))
    ex, ew = elem_bound(x, sx, (1, TILE)), elem_bound(w, sw, (TILE, TILE))
    bound = ex @ (w.abs() + ew).t() + x.abs() @ ew.t()
    err = (y - x @ w.t()).abs()
    assert (err <= bound * 1.001 + 1e-5).all()
    assert err.max() > 0  # it is FP8, not a pass-through


def test_gradients_through_the_quantized_linear():
    torch.manual_seed(2)
    x = (torch.randn(150, 260) * 3).requires_grad_()
    w = (torch.randn(140, 260) * 0.1).requires_grad_()
    b = torch.randn(140).requires_grad_()
    gy = torch.randn(150, 140)
    fp8_linear(x, w, b).backward(gy)
    # V3's backward GEMMs: dgrad Q(dY;1×128)·Q(W;128×128), wgrad Q(dY;128×1)ᵀ·Q(X;128×1) (tiles along tokens)
    gx = fake_quantize(gy, (1, TILE)) @ fake_quantize(w, (TILE, TILE))
    gw = fake_quantize(gy.t(), (1, TILE)) @ fake_quantize(x, (TILE, 1))
    assert torch.allclose(x.grad, gx, rtol=1e-5, atol=1e-4)
    assert torch.allclose(w.grad, gw, rtol=1e-5, atol=1e-4)
    assert torch.allclose(b.grad, gy.sum(0))
    # close to the exact gradients (relative Frobenius error of a few FP8 roundings)
    for got, exact in ((x.grad, gy @ w), (w.grad, gy.t() @ x)):
        assert (got - exact).norm() / exact.norm() < 0.05


def test_grouped_experts_gemm_and_gradients_match_per_expert_fp8_linears():
    torch.manual_seed(3)
    counts = [0, 37, 130, 5]  # an empty expert and groups that do not fill 128-row tiles
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    a = torch.randn(sum(counts), 96, requires_grad=True)
    w = (torch.randn(4, 80, 96) * 0.1).requires_grad_()  # expert weights (N, K), as nn.Linear
    gy = torch.randn(sum(counts), 80)
    fp8_grouped_mm(a, w.transpose(1, 2), offs).backward(gy)
    start = 0
    for e, n in enumerate(counts):
        rows = slice(start, start + n)
        xe = a.detach()[rows].clone().requires_grad_()
        we = w.detach()[e].clone().requires_grad_()
        fp8_linear(xe, we).backward(gy[rows])
        assert torch.allclose(a.grad[rows], xe.grad, rtol=1e-5, atol=1e-4), e
        if n:  # wgrad tiles run along the tokens; within one expert's rows they are the same as a linear's
            assert (w.grad[e] - we.grad).norm() <= 0.05 * we.grad.norm() + 1e-6, e
        else:
            assert torch.all(w.grad[e] == 0)
        start += n


def tiny_cfg() -> ModelConfig:
    return ModelConfig.from_name_or_path("tiny").replace(vocab_size=256, num_hidden_layers=2)


def test_apply_fp8_converts_the_v3_gemms_and_keeps_the_rest():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 256, (2, 40))
    ref = model(ids)
    names = apply_fp8(model)
    assert {"attn.wq_a", "attn.wq_b", "attn.wkv_a", "attn.wkv_b", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3",
            "ffn.experts", "ffn.shared_experts.w1"} <= set(names)
    assert not any(".gate" in n for n in names)
    assert type(model.head) is torch.nn.Linear and type(model.embed) is torch.nn.Embedding
    assert type(model.mtp[0].eh_proj) is torch.nn.Linear and isinstance(model.mtp[0].block.attn.wo, FP8Linear)
    assert all(m.gmm is not None for m in model.modules() if isinstance(m, Experts))
    sd = model.state_dict()
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    out = model(ids)
    assert not torch.equal(out, ref) and (out - ref).norm() / ref.norm() < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.layers[0].attn.wo(torch.randn(3, 128)).dtype == torch.bfloat16
    remove_fp8(model)
    assert torch.equal(model(ids), ref)


# ---------------------------------------------------------------------------------------------------- training
def make(run, prepared, *extra, **kw) -> Trainer:
    args = ["--max_steps", "6", "--seq_len", "32", "--batch_size", "4", "--eval_every", "3", "--ckpt_every", "2",
            "--warmup_steps", "2", "--run_dir", str(run), "--progress", "false", "--model.vocab_size", "400",
            "--model.num_hidden_layers", "2", "--fp8", "true", "--dtype", "bfloat16", *extra]
    cfg = build(None, args, **kw)
    cfg.data, cfg.tokenizer = str(prepared / "data"), str(prepared / "tok")
    return Trainer(cfg, pretraining_data(cfg, DistEnv(), cfg.global_batch()), DistEnv())


def losses(run) -> dict[int, float]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_fp8_run_resumes_exactly_and_exports_the_official_fp8_layout(tmp_path, prepared):  # noqa: F811
    full = make(tmp_path / "a", prepared)
    assert isinstance(full.model.layers[0].attn.wo, FP8Linear)
    out = full.fit()
    make(tmp_path / "b", prepared).fit(stop_after=3)  # "killed" after step 3: the last checkpoint is step 2
    make(tmp_path / "b", prepared, resume=True).fit()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(a[s] == b[s] for s in a)  # bit-exact: FP8 scaling keeps no state between steps
    assert math.isfinite(out["val_loss"])
    # export: e4m3 weights + weight_scale_inv, loadable by nanoseek
    from nanoseek.checkpoint import load_pretrained
    from safetensors import safe_open
    model_dir = full.export(str(tmp_path / "model"))  # an FP8 run exports the FP8 layout
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.o_proj.weight").dtype == torch.float8_e4m3fn
        assert "model.layers.0.self_attn.o_proj.weight_scale_inv" in keys
        assert f.get_tensor("model.layers.1.mlp.gate.weight").dtype == torch.float32
    loaded = load_pretrained(model_dir)
    w = full.model.layers[0].attn.wo.weight.detach()
    assert torch.equal(loaded.layers[0].attn.wo.weight, fake_quantize(w, (TILE, TILE)))


def test_fp8_config_validation(tmp_path):
    with pytest.raises(ValueError, match="fp8_scaling"):
        build(None, ["--fp8", "true", "--fp8_scaling", "row"])
    with pytest.raises(ValueError, match="fp8"):
        build(None, ["--fp8", "true", "--attention", "mha"])
    assert build(None, ["--fp8"]).fp8 is True and build(None, []).fp8 is False


def test_fp8_gemms_trace_under_torch_compile():
    """`--compile true --fp8 true`: dynamo + AOT autograd trace the FP8 GEMMs (the linear's autograd.Function and
    the routed experts' hook) with the eager values and gradients. (The whole model traces too; too slow here.)"""
    from nanoseek.model.layers import MLP
    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp, experts = MLP(128, 96), Experts(4, 128, 32)
    torch.nn.init.normal_(experts.w13, std=0.05)
    torch.nn.init.normal_(experts.w2, std=0.05)
    apply_fp8(_holder(mlp, experts))
    x = torch.randn(24, 128)
    idx = torch.randint(0, 4, (24, 2))
    w = torch.rand(24, 2)
    counts = torch.zeros(4, dtype=torch.long).index_add_(0, idx.flatten(), torch.ones(48, dtype=torch.long))

    def f(x):
        return (mlp(x) + experts(x, w, idx, counts)).square().sum()

    ref = f(x)
    ref.backward()
    want = [p.grad.clone() for p in (mlp.w2.weight, experts.w13)]
    mlp.zero_grad()
    experts.zero_grad()
    got = torch.compile(f, backend="aot_eager")(x)
    got.backward()
    torch.testing.assert_close(got, ref)
    for p, g in zip((mlp.w2.weight, experts.w13), want):
        torch.testing.assert_close(p.grad, g)


def _holder(mlp, experts):
    """The shape apply_fp8 walks (model.layers[i].attn / .ffn), around one MLP and one bank of experts."""
    class Block(torch.nn.Module):
        def __init__(self, ffn):
            super().__init__()
            self.attn, self.ffn = torch.nn.Module(), ffn
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList([Block(mlp), Block(experts)])
    return holder
