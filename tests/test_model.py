"""Model core: shapes, causality, the two attention paths, routing, MoE execution, MTP, parameter counts."""
import math

import pytest
import torch
import torch.nn.functional as F

import nanoseek
from nanoseek import LatentCache, ModelConfig, Transformer
from nanoseek.info import count
from nanoseek.model.moe import Experts, Gate, MoE
from nanoseek.model.rope import apply_rope, inv_freq
from nanoseek.memory import ModelTooLargeError, available_memory, check_memory, model_bytes
from conftest import mtp_logits  # noqa: E402


def tiny(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny").replace(**kw) if kw else ModelConfig.preset("tiny")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny(initializer_range=0.05)).eval()


def test_shapes_and_dtypes(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, model.config.vocab_size) and logits.dtype == torch.float32
    mtp = mtp_logits(model, ids, model.forward_hidden(ids))
    assert [t.shape for t in mtp] == [(2, 11, model.config.vocab_size)]
    m16 = Transformer(tiny()).to(torch.bfloat16)
    assert m16(ids).dtype == torch.bfloat16
    gate = m16.layers[1].ffn.gate
    assert gate.bias.dtype == torch.float32  # the balancing bias stays fp32


def test_causality(model):
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    a = model(ids)
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 7) % model.config.vocab_size
    b = model(ids2)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4


def test_absorbed_equals_decompressed(model):
    torch.manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    ref = model(ids)
    cache = LatentCache(model.config, 2, 32)
    full = model(ids, cache=cache)
    cache.advance()
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-5)
    # prefill 7 tokens, then chunks of 1 and 5 and the rest: the absorbed path over a growing cache
    cache = LatentCache(model.config, 2, 32)
    outs = []
    for s, e in [(0, 7), (7, 8), (8, 13), (13, 20)]:
        outs.append(model(ids[:, s:e], cache=cache))
        cache.advance()
    torch.testing.assert_close(torch.cat(outs, 1), ref, rtol=1e-4, atol=1e-5)


def test_absorbed_attention_matches_naive_math():
    """MLA.absorbed against an explicit per-head computation with materialised K and V."""
    torch.manual_seed(3)
    cfg = tiny()
    attn = Transformer(cfg).layers[0].attn
    b, s, t = 2, 3, 9
    q_nope = torch.randn(b, s, cfg.num_attention_heads, cfg.qk_nope_head_dim)
    q_pe = torch.randn(b, s, cfg.num_attention_heads, cfg.qk_rope_head_dim)
    c = torch.randn(b, t, cfg.kv_lora_rank)
    k_pe = torch.randn(b, t, cfg.qk_rope_head_dim)
    out = attn.absorbed(q_nope, q_pe, torch.cat([c, k_pe], -1), None)
    kv = attn.wkv_b(c).unflatten(-1, (cfg.num_attention_heads, -1))
    k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], -1)
    scores = (torch.einsum("bshd,bthd->bsht", q_nope, k_nope) + torch.einsum("bshr,btr->bsht", q_pe, k_pe))
    scores = scores * cfg.softmax_scale
    causal = torch.ones(s, t, dtype=torch.bool).tril(t - s)
    scores = scores.masked_fill(~causal[None, :, None, :], float("-inf"))
    ref = torch.einsum("bsht,bthd->bshd", scores.softmax(-1), v)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_rope_interleaved_pairs():
    """RoPE rotates adjacent pairs (x[2j], x[2j+1]) like the official complex form."""
    cfg = tiny()
    x = torch.randn(5, cfg.qk_rope_head_dim)
    pos = torch.arange(5)
    ang = pos[:, None].float() * inv_freq(cfg)
    ref = torch.view_as_real(torch.view_as_complex(x.view(5, -1, 2)) * torch.polar(torch.ones_like(ang), ang))
    torch.testing.assert_close(apply_rope(x, ang.cos(), ang.sin()), ref.flatten(-2), rtol=1e-6, atol=1e-6)


def test_yarn_and_softmax_scale():
    v3 = ModelConfig.preset("deepseek-v3")
    assert v3.softmax_scale == pytest.approx(0.1352338, rel=1e-6)
    assert ModelConfig.preset("deepseek-v2-lite").softmax_scale == pytest.approx(0.1147214, rel=1e-6)
    f = inv_freq(v3)
    base = 1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64)
    torch.testing.assert_close(f[:11], base[:11])  # i <= low = 10 keeps the original frequency
    torch.testing.assert_close(f[23:], base[23:] / 40)  # i >= high = 23 is divided by the factor
    assert torch.all((f[11:23] < base[11:23]) & (f[11:23] > base[11:23] / 40))


# ------------------------------------------------------------------------------------------ routing
def _gate(**kw) -> Gate:
    base = dict(n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, hidden_size=4,
                routed_scaling_factor=2.5)
    base.update(kw)
    g = Gate(tiny(**base))
    with torch.no_grad():
        g.weight.copy_(torch.eye(4).repeat(2, 1))  # expert e reads input dim e % 4
    return g


def test_v3_gate_group_limit_and_bias_only_for_selection():
    g = _gate()
    # logits per expert = x[e % 4]; groups are experts {0,1},{2,3},{4,5},{6,7}
    x = torch.tensor([[3.0, -3.0, 0.0, 1.0]])
    s = torch.sigmoid(torch.tensor([3.0, -3.0, 0.0, 1.0]).repeat(2))
    with torch.no_grad():
        g.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 0, 5.0]))  # makes expert 7 (group 3) win selection
    w, idx = g(x)
    chosen = set(idx[0].tolist())
    assert 7 in chosen
    # group scores (top-2 sums of biased scores): g0 = s0+s1, g1 = s2+s3, g2 = s4+s5 = g0, g3 = s6+s7+5
    # top-2 groups: g3 and g0/g2 (tie); every chosen expert lies in the two kept groups
    groups = {e // 2 for e in chosen}
    assert len(groups) <= 2 and 3 in groups
    # weights use the unbiased scores, renormalised, times the scale
    raw = s[idx[0]]
    torch.testing.assert_close(w[0], raw / raw.sum() * 2.5)


def test_v3_gate_masks_other_groups_with_minus_inf():
    """A strongly negative bias must not let a masked group (scored 0 by a 0/1 mask) win."""
    g = _gate(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    with torch.no_grad():
        g.bias.copy_(torch.tensor([-10.0, -10, -10, -10, 0, 0, 0, 0]))
    w, idx = g(torch.tensor([[5.0, 5.0, 5.0, 5.0]]))
    assert set(idx[0].tolist()) <= {4, 5, 6, 7}


def test_v2_gates():
    x = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    probs = torch.softmax(torch.tensor([2.0, 1.0, 0.5, -1.0]).repeat(2), -1)
    g = _gate(topk_method="greedy", scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
              n_group=1, topk_group=1)
    assert g.bias is None
    w, idx = g(x)
    assert set(idx[0].tolist()) == {0, 4}
    torch.testing.assert_close(w[0], probs[idx[0]])  # no renormalisation
    # group-limited greedy: group score = max; with 4 groups of 2 and topk_group 1 only one group survives
    g = _gate(topk_method="group_limited_greedy", scoring_func="softmax", norm_topk_prob=False, n_group=4,
              topk_group=1, routed_scaling_factor=16.0)
    w, idx = g(torch.tensor([[2.0, 1.9, 0.0, 0.0]]))
    assert set(idx[0].tolist()) in ({0, 1}, {4, 5})
    probs = torch.softmax(torch.tensor([2.0, 1.9, 0.0, 0.0]).repeat(2), -1)
    torch.testing.assert_close(w[0], probs[idx[0]] * 16.0)
    g = _gate(topk_method="greedy", scoring_func="softmax", norm_topk_prob=True, n_group=1, topk_group=1,
              routed_scaling_factor=1.0)
    w, _ = g(x)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_equal_per_token_reference(dtype):
    torch.manual_seed(4)
    E, d, I, n, k = 6, 16, 8, 40, 2
    ex = Experts(E, d, I).to(dtype)
    with torch.no_grad():
        ex.w13.normal_(0, 0.2), ex.w2.normal_(0, 0.2)
    x = torch.randn(n, d, dtype=dtype)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(n)])
    idx[:, 0] = idx[:, 0].clamp(max=3)  # some experts get no token at all
    idx[:, 1] = torch.where(idx[:, 1] == idx[:, 0], (idx[:, 0] + 1) % 4, idx[:, 1])
    w = torch.rand(n, k, dtype=dtype)
    y = ex(x, w, idx, torch.bincount(idx.flatten(), minlength=E))
    ref = torch.zeros(n, d, dtype=torch.float32)
    for t in range(n):
        for j in range(k):
            e = idx[t, j]
            g, u = (ex.w13[e].float() @ x[t].float()).split(I)
            ref[t] += w[t, j].float() * (ex.w2[e].float() @ (F.silu(g) * u))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(y.float(), ref, **tol)


def test_moe_layer_and_router_stats(model):
    ids = torch.randint(0, model.config.vocab_size, (3, 10))
    model(ids)
    stats = model.router_stats()
    cfg = model.config
    moe_layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
    assert set(moe_layers) <= set(stats)
    for i in moe_layers:
        assert stats[i].shape == (cfg.n_routed_experts,) and stats[i].sum() == 30 * cfg.num_experts_per_tok
    assert not isinstance(model.layers[0].ffn, MoE)  # first_k_dense_replace = 1


def test_moe_backward_reaches_every_used_expert():
    torch.manual_seed(5)
    m = Transformer(tiny())
    ids = torch.randint(0, m.config.vocab_size, (2, 16))
    F.cross_entropy(m(ids).flatten(0, 1), ids.flatten()).backward()
    moe = m.layers[1].ffn
    used = moe.tokens_per_expert > 0
    grad_norm = moe.experts.w13.grad.flatten(1).norm(dim=1)
    assert torch.all(grad_norm[used] > 0) and torch.all(grad_norm[~used] == 0)
    assert moe.gate.weight.grad.abs().sum() > 0  # the router learns through the expert weights


def test_mtp_concatenation_order(model):
    """MTP input = eh_proj([enorm(emb); hnorm(h)]): zeroing eh_proj's embedding half removes the token's effect."""
    torch.manual_seed(6)
    mtp = model.mtp[0]
    cfg = model.config
    h = torch.randn(1, 4, cfg.hidden_size)
    cos, sin = torch.ones(1, 4, cfg.qk_rope_head_dim // 2), torch.zeros(1, 4, cfg.qk_rope_head_dim // 2)
    e1, e2 = torch.randn(1, 4, cfg.hidden_size), torch.randn(1, 4, cfg.hidden_size)
    saved = mtp.eh_proj.weight.detach().clone()
    with torch.no_grad():
        mtp.eh_proj.weight[:, :cfg.hidden_size] = 0
    try:
        torch.testing.assert_close(mtp(e1, h, cos, sin), mtp(e2, h, cos, sin))
    finally:
        with torch.no_grad():
            mtp.eh_proj.weight.copy_(saved)
    assert (mtp(e1, h, cos, sin) - mtp(e2, h, cos, sin)).abs().max() > 1e-5


def test_mtp_step_matches_training_forward(model):
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    h = model.forward_hidden(ids)
    (train_logits,) = mtp_logits(model, ids, h)
    logits = model.head(model.mtp_step(0, ids[:, 1:], h[:, :-1], torch.arange(1, 9)))
    torch.testing.assert_close(logits, train_logits)
    # over a latent cache (the drafting path, absorbed attention), token by token after a prefill of 4
    cache = LatentCache(model.config, 1, 16, n_layers=model.config.num_hidden_layers + 1)
    steps = []
    for s, e in [(1, 5), (5, 6), (6, 9)]:
        steps.append(model.head(model.mtp_step(0, ids[:, s:e], h[:, s - 1:e - 1], torch.arange(s, e), cache=cache)))
        cache.advance()
    torch.testing.assert_close(torch.cat(steps, 1), train_logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_param_counts_match_module(preset):
    cfg = ModelConfig.preset(preset)
    with torch.device("meta"):
        m = Transformer(cfg)
    n_main = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("mtp."))
    n_main += sum(b.numel() for n, b in m.named_buffers() if n.endswith("gate.bias") and not n.startswith("mtp."))
    n_mtp = sum(p.numel() for p in m.mtp.parameters()) + sum(
        b.numel() for n, b in m.mtp.named_buffers() if n.endswith("gate.bias"))
    info = count(cfg)
    assert info["total_params"] == n_main and info["mtp_params"] == n_mtp
    routed = sum(p.numel() for n, p in m.named_parameters() if ".experts." in n and not n.startswith("mtp."))
    inactive = routed * (cfg.n_routed_experts - cfg.num_experts_per_tok) // cfg.n_routed_experts
    assert info["active_params"] == n_main - inactive


def test_official_counts_and_meta_build():
    v3 = count(ModelConfig.preset("deepseek-v3"))
    assert v3["total_params"] == 671_026_419_200
    assert v3["active_params"] == 37_552_297_472
    assert v3["active_params_no_embedding"] == 36_625_618_432
    assert v3["kv_cache_bytes_per_token"] == 70_272 and v3["mha_kv_cache_bytes_per_token"] == 4_997_120
    assert v3["mtp_params"] == 11_610_068_224
    assert count(ModelConfig.preset("deepseek-v2-lite"))["total_params"] == 15_706_484_224
    assert count(ModelConfig.preset("deepseek-v2-lite"))["active_params_no_embedding"] == 2_451_435_008
    assert count(ModelConfig.preset("deepseek-v2"))["total_params"] == 235_741_434_880
    with torch.device("meta"):  # 671B parameters, no memory
        m = Transformer(ModelConfig.preset("deepseek-v3"))
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for n, p in m.named_parameters() if not n.startswith("mtp.")) + 58 * 256 == 671_026_419_200


# A config inside every SIZE_LIMITS bound whose parameters (~844 TB in fp32) fit on no machine.
HUGE = dict(num_hidden_layers=1024, hidden_size=65536, intermediate_size=1 << 20, first_k_dense_replace=1024)


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": True}, {"num_nextn_predict_layers": 0},
                                {"topk_method": "greedy", "scoring_func": "softmax", "n_group": 1, "topk_group": 1},
                                {"n_routed_experts": 0}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_bytes_equal_the_built_model(kw, dtype):
    """The estimate from the config alone is exact: every parameter and buffer (the fp32 routing bias, the int64
    token counters) of a model built for real and cast to dtype."""
    cfg = tiny(**kw)
    m = Transformer(cfg).to(dtype)
    real = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    assert model_bytes(cfg, dtype) == real


def test_a_model_that_cannot_fit_is_refused_before_allocating():
    cfg = tiny(**HUGE)
    with pytest.raises(ModelTooLargeError, match=r"needs ~844,\d{3}\.\d GB for its parameters in float32 but .* "
                                                 r"available on cpu: num_hidden_layers=1024 layers of ~824\.\d GB"):
        check_memory(cfg, "cpu", torch.float32)
    assert issubclass(ModelTooLargeError, ValueError) and issubclass(ModelTooLargeError, MemoryError)
    check_memory(cfg, "meta", torch.float32)  # the meta device allocates nothing and is never refused
    with torch.device("meta"):
        assert Transformer(cfg.replace(num_hidden_layers=4, first_k_dense_replace=4)).head.weight.is_meta
    check_memory(tiny(), "cpu", torch.float32)  # a tiny model fits


def test_memory_check_compares_with_the_free_memory(monkeypatch):
    """Refused exactly when the model's bytes exceed what the device has free; the message names the dtype, the
    sizes and the field that drives them."""
    import nanoseek.memory as tr
    cfg = tiny(vocab_size=65536)
    need = model_bytes(cfg, torch.bfloat16)
    monkeypatch.setattr(tr, "available_memory", lambda device: need)
    tr.check_memory(cfg, "cpu", torch.bfloat16)
    monkeypatch.setattr(tr, "available_memory", lambda device: need - 1)
    with pytest.raises(ModelTooLargeError, match=r"needs ~\d+\.\d MB for its parameters in bfloat16 but .* on cpu: "
                                                 r"vocab_size=65536 x hidden_size=128 \(embedding and output head\)"):
        tr.check_memory(cfg, "cpu", torch.bfloat16)
    tr.check_memory(cfg, "meta", torch.bfloat16)
    monkeypatch.setattr(tr, "available_memory", lambda device: None)  # unknown: nothing refused
    tr.check_memory(cfg, "cpu", torch.bfloat16)


def test_available_memory():
    free = available_memory("cpu")
    assert free is None or 0 < free < 1 << 50
    assert available_memory("meta") is None


def test_latent_cache_bytes_formula():
    cfg = ModelConfig.preset("deepseek-v3")
    assert LatentCache.bytes_per_token(cfg) == 61 * 576 * 2 == 70_272
    c = LatentCache(tiny(), 1, 8, dtype=torch.bfloat16)
    per_token = c.kv.numel() * 2 // 8
    t = tiny()
    assert per_token == (t.num_hidden_layers + t.num_nextn_predict_layers) * (t.kv_lora_rank + t.qk_rope_head_dim) * 2


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("change,field", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(n_group=3), "n_routed_experts"),
    (dict(topk_group=5), "topk_group"),
    (dict(model_type="llama"), "model_type"),
    (dict(qk_rope_head_dim=15), "qk_rope_head_dim"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(topk_method="random"), "topk_method"),
    (dict(first_k_dense_replace=99), "first_k_dense_replace"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    # sizes past sane bounds are refused before any module is built (issue 17 item 9: 1,000,000 layers grew memory
    # at ~130 MB/s toward an OOM)
    (dict(num_hidden_layers=1_000_000), "num_hidden_layers"),
    (dict(vocab_size=10**9), "vocab_size"),
    (dict(max_position_embeddings=2**40), "max_position_embeddings"),
    (dict(n_routed_experts=2**20, n_group=1, topk_group=1), "n_routed_experts"),
])
def test_bad_configs_name_the_field(change, field):
    d = tiny().to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict(d)


def test_every_official_config_is_inside_the_size_limits():
    for name in ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "tiny", "small"):
        ModelConfig.preset(name).validate()


def test_config_round_trip_and_transformers5_rope_parameters(tmp_path):
    cfg = ModelConfig.preset("deepseek-v3")
    cfg.save_pretrained(tmp_path)
    again = ModelConfig.from_pretrained(tmp_path)
    assert again == cfg and again.to_dict()["architectures"] == ["DeepseekV3ForCausalLM"]
    d = cfg.to_dict()
    rs = d.pop("rope_scaling")
    d["rope_parameters"] = {**rs, "rope_theta": 50000.0, "rope_type": "yarn"}
    d.pop("rope_theta")
    v5 = ModelConfig.from_dict(d)
    assert v5.rope_theta == 50000.0 and v5.yarn["factor"] == 40 and v5.yarn["mscale_all_dim"] == 1.0
    assert ModelConfig.from_dict({**d, "q_lora_rank": 0}).q_lora_rank is None
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_dict({"hidden_size": 8})
    # transformers writes null groups for V2 greedy routing and `dtype` instead of torch_dtype
    lite = ModelConfig.preset("deepseek-v2-lite").to_dict()
    lite.update(n_group=None, topk_group=None, n_routed_experts=6, num_experts_per_tok=2, dtype="bfloat16")
    lite.pop("torch_dtype")
    v2 = ModelConfig.from_dict(lite)
    assert (v2.n_group, v2.topk_group, v2.torch_dtype) == (1, 1, "bfloat16")


def test_cli_info_json(capsys):
    from nanoseek.cli import main
    assert main(["info", "deepseek-v3", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    for key in ("total_params", "active_params", "active_params_no_embedding", "mtp_params",
                "kv_cache_bytes_per_token", "mha_kv_cache_bytes_per_token", "flops_per_token"):
        assert key in out
    assert out["total_params"] == 671_026_419_200
    assert main(["info", "no-such-model"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_public_api():
    assert nanoseek.ModelConfig is ModelConfig and nanoseek.Transformer is Transformer
    assert math.isclose(count(tiny())["active_fraction"], count(tiny())["active_params"] / count(tiny())["total_params"])


def test_grouped_mm_op_traces_in_fp32():
    """nanoseek::grouped_mm (what a compiled non-bf16 MoE calls): torch._grouped_mm's values and gradients, with
    a fake kernel and autograd formula that torch.library.opcheck accepts (empty groups included)."""
    from nanoseek.model.moe import grouped_mm
    torch.manual_seed(0)
    offs = torch.tensor([5, 0, 7, 4]).cumsum(0).to(torch.int32)
    a = torch.randn(16, 32, requires_grad=True)
    b = torch.randn(4, 48, 32).transpose(1, 2).requires_grad_()
    g = torch.randn(16, 48)
    torch._grouped_mm(a, b, offs=offs).backward(g)
    ref = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    grouped_mm(a, b, offs).backward(g)
    torch.testing.assert_close((a.grad, b.grad), ref)
    torch.library.opcheck(grouped_mm, (a, b, offs))


def test_training_needs_four_fp32_copies(monkeypatch):
    """Issue 17 item 9: to train, the weights, their gradients and AdamW's two moments (4 fp32 copies), divided over
    the processes when FSDP shards them; a model that fits for inference but not for training is refused with a
    message that says so."""
    import nanoseek.memory as tr
    cfg = tiny()
    need = model_bytes(cfg, torch.float32)
    monkeypatch.setattr(tr, "available_memory", lambda device: 2 * need)
    tr.check_memory(cfg, "cpu", torch.float32)
    with pytest.raises(ModelTooLargeError, match=r"to train \(weights, gradients and AdamW's two moments in float32; "
                                                 r"activations not counted\) but"):
        tr.check_memory(cfg, "cpu", torch.float32, training=True)
    tr.check_memory(cfg, "cpu", torch.float32, training=True, shards=2)  # FSDP over 2 processes: 2 copies each
    monkeypatch.setattr(tr, "available_memory", lambda device: 4 * need)
    tr.check_memory(cfg, "cpu", torch.float32, training=True)  # exactly enough
    monkeypatch.setattr(tr, "available_memory", lambda device: 2 * need - 1)
    with pytest.raises(ModelTooLargeError, match=r"float32, sharded over 2 processes; activations not counted\)"):
        tr.check_memory(cfg, "cpu", torch.float32, training=True, shards=2)


def test_the_trainer_refuses_a_model_it_could_not_train(tmp_path, monkeypatch):
    """The trainer checks the training estimate on its device before building anything."""
    import nanoseek.memory as tr
    from nanoseek.train import trainer as trainer_mod
    from nanoseek.train.config import TrainConfig
    cfg = TrainConfig(model="tiny", run_dir=str(tmp_path / "run"))
    mcfg = trainer_mod.build_model_config(cfg, 1024)
    need = model_bytes(mcfg, torch.float32)
    monkeypatch.setattr(tr, "available_memory", lambda device: 2 * need)  # enough to build, not to train
    built = []
    monkeypatch.setattr(trainer_mod, "Transformer", lambda c: built.append(c))
    data = type("Data", (), {"vocab_size": 1024})()
    with pytest.raises(ModelTooLargeError, match="to train"):
        trainer_mod.Trainer(cfg, data, trainer_mod.distributed.DistEnv())
    assert not built
