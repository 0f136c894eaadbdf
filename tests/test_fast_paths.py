"""The speed paths of the model core compute the same function as the plain PyTorch formulation they replace."""
import pytest
import torch
import torch.nn.functional as F

from nanoseek.model import moe
from nanoseek.model.layers import RMSNorm, linear_cross_entropy
from nanoseek.model.rope import apply_rope


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_backward_matches_autograd(dtype):
    torch.manual_seed(0)
    x0, g, w0 = torch.randn(3, 20, 64) * 3, torch.randn(3, 20, 64), torch.rand(64) + 0.5

    def run(fast: bool):
        x = x0.clone().to(dtype).requires_grad_()
        norm = RMSNorm(64).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(w0)
        y = norm(x) if fast else norm.weight * F.rms_norm(x.float(), (64,), eps=norm.eps).to(dtype)
        y.backward(g.to(dtype))
        return y, x.grad, norm.weight.grad

    tol = 2e-6 if dtype == torch.float32 else 2e-2
    for a, b in zip(run(True), run(False)):
        assert a.dtype == b.dtype and _rel(a, b) < tol


def test_rope_complex_form_equals_real_form():
    torch.manual_seed(1)
    q = torch.randn(2, 5, 3, 24)[..., 8:]  # a strided view, as q_pe is
    ang = torch.rand(2, 5, 1, 8) * 20
    a, b = q[..., 0::2], q[..., 1::2]
    ref = torch.stack((a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()), -1).flatten(-2)
    torch.testing.assert_close(apply_rope(q, ang.cos(), ang.sin()), ref, rtol=1e-6, atol=1e-6)
    odd = torch.randn(2, 5, 3, 17)[..., 1:]  # odd storage offset: not viewable as complex in place
    a, b = odd[..., 0::2], odd[..., 1::2]
    ref = torch.stack((a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()), -1).flatten(-2)
    torch.testing.assert_close(apply_rope(odd, ang.cos(), ang.sin()), ref, rtol=1e-6, atol=1e-6)
    assert apply_rope(q.bfloat16(), ang.cos(), ang.sin()).dtype == torch.bfloat16


def test_expert_row_padding_is_exact(monkeypatch):
    """Padding rows (gather token 0, weight 0) change neither the output nor any gradient."""
    torch.manual_seed(2)
    E, d, inter, n, k = 8, 32, 16, 50, 2
    ex = moe.Experts(E, d, inter)
    with torch.no_grad():
        ex.w13.normal_(0, 0.2), ex.w2.normal_(0, 0.2)
    x0, w0 = torch.randn(n, d), torch.rand(n, k)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(n)])
    idx[idx == 5] = 4  # expert 5 gets no token
    idx[:, 1] = torch.where(idx[:, 1] == idx[:, 0], (idx[:, 0] + 1) % 5, idx[:, 1])

    def run(block: int):
        monkeypatch.setattr(moe, "_row_block", lambda device, dtype: block)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        ex.zero_grad()
        y = ex(x, w, idx, torch.bincount(idx.flatten(), minlength=E))
        y.backward(torch.randn(n, d, generator=torch.Generator().manual_seed(3)))
        return y, x.grad, w.grad, ex.w13.grad.clone(), ex.w2.grad.clone()

    for a, b in zip(run(1), run(32)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_matches_logits_then_ce(dtype):
    torch.manual_seed(4)
    h0, w0 = torch.randn(3, 70, 32).to(dtype), (torch.randn(500, 32) * 0.2).to(dtype)
    y = torch.randint(0, 500, (3, 70))
    y[0, :9] = -100

    def run(fused: bool):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        if fused:
            loss = linear_cross_entropy(h, w, y, chunk_tokens=64)
        else:
            loss = F.cross_entropy(F.linear(h, w).flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        return loss, h.grad, w.grad

    tol = 2e-6 if dtype == torch.float32 else 2e-2
    for a, b in zip(run(True), run(False)):
        assert a.dtype == b.dtype and _rel(a, b) < tol
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h0, w0, y[:, :5])
