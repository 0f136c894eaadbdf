"""Block-wise FP8 in the official DeepSeek-V3/R1 format: quantisation, a synthetic FP8 checkpoint that loads
dequantised, `nanoseek convert`, and FP8 errors."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nanoseek import ModelConfig, Transformer, load_pretrained, save_pretrained
from nanoseek.cli import main as cli_main
from nanoseek.fp8 import dequantize_fp8_blockwise, fp8_quantization_config, quantize_fp8_blockwise

# Dimensions that are not multiples of 128, so most weights have partial edge blocks.
CFG = dict(model_type="deepseek_v3", vocab_size=256, hidden_size=160, intermediate_size=200,
           moe_intermediate_size=136, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=144,
           kv_lora_rank=136, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24, n_routed_experts=4, n_group=2,
           topk_group=1, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
           num_nextn_predict_layers=1, max_position_embeddings=128, initializer_range=0.05)
# The official FP8 set: every linear weight inside the decoder layers (MTP block included); not the router,
# norms, embeddings, heads or eh_proj.
FP8_NAME = re.compile(r"model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|"
                      r"o_proj)|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight")


def reference_dequant(q: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    """W[i, j] = float(W_q[i, j]) · scale_inv[i // 128, j // 128], block by block."""
    w = torch.empty(q.shape)
    for bi in range(s.shape[0]):
        for bj in range(s.shape[1]):
            rows, cols = slice(bi * block, (bi + 1) * block), slice(bj * block, (bj + 1) * block)
            w[rows, cols] = q[rows, cols].float() * s[bi, bj]
    return w


def test_quantize_produces_the_official_format():
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-3, 0, 200)  # columns of very different magnitude
    w[:128, 128:] = 0.0  # an all-zero (partial) block
    q, s = quantize_fp8_blockwise(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (300, 200)
    assert s.dtype == torch.float32 and s.shape == (math.ceil(300 / 128), math.ceil(200 / 128)) == (3, 2)
    # the largest element of each (nonzero) block maps to the e4m3 maximum 448
    for bi in range(3):
        for bj in range(2):
            blk = q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128].float()
            assert blk.abs().max().item() == (0.0 if (bi, bj) == (0, 1) else 448.0)
    deq = dequantize_fp8_blockwise(q, s)
    torch.testing.assert_close(deq, reference_dequant(q, s), rtol=0, atol=0)
    assert torch.equal(deq[:128, 128:], torch.zeros(128, 72))
    # e4m3 keeps 3 mantissa bits: |error| <= |w|/16, plus half the subnormal step 2^-9 of the block scale
    step = s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    assert ((deq - w).abs() <= w.abs() / 16 + step * 2 ** -10 + 1e-12).all()
    assert dequantize_fp8_blockwise(q, s, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        dequantize_fp8_blockwise(q, s[:2])


def write_fp8_checkpoint(src, dst) -> dict[str, torch.Tensor]:
    """Rewrite a saved checkpoint in the official FP8 format (bf16 elsewhere, fp32 routing bias) as two shards,
    the scales apart from their weights. Returns the dequantised reference of every tensor, in fp32."""
    tensors = load_file(str(src / "model.safetensors"))
    weights, scales, ref = {}, {}, {}
    for name, t in tensors.items():
        if FP8_NAME.fullmatch(name):
            q, s = quantize_fp8_blockwise(t)
            weights[name], scales[name + "_scale_inv"] = q, s
            ref[name] = reference_dequant(q, s)
        else:
            weights[name] = t if name.endswith("e_score_correction_bias") else t.to(torch.bfloat16)
            ref[name] = weights[name].float()
    assert len(scales) > 20
    dst.mkdir()
    parts = {"model-00001-of-00002.safetensors": weights, "model-00002-of-00002.safetensors": scales}
    for file, part in parts.items():
        save_file(part, str(dst / file), metadata={"format": "pt"})
    weight_map = {k: f for f, part in parts.items() for k in part}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(quantization_config=fp8_quantization_config(), torch_dtype="bfloat16", dtype="bfloat16")
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "tokenizer.json").write_text('{"version": "1.0"}')
    return ref


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp8")
    torch.manual_seed(0)
    save_pretrained(Transformer(ModelConfig(**CFG)), tmp / "src")
    ref = write_fp8_checkpoint(tmp / "src", tmp / "fp8")
    return tmp / "fp8", ref


def reference_state(ref: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """The reference tensors in nanoseek's names, by loading them through a plain fp32 checkpoint."""
    plain = path.parent / f"plain-{path.name}"
    if not plain.exists():
        plain.mkdir()
        save_file({k: v.contiguous() for k, v in ref.items()}, str(plain / "model.safetensors"))
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("quantization_config")
        (plain / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float32", "dtype": "float32"}))
    return load_pretrained(plain).state_dict()


@torch.no_grad()
def test_fp8_checkpoint_loads_dequantised(fp8_dir):
    path, ref = fp8_dir
    model = load_pretrained(path, dtype=torch.float32)
    assert "quantization_config" not in model.config.extra and len(model.mtp) == 1
    expected = reference_state(ref, path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)
    # expert 3's up_proj sits in rows I.. of the stacked w13 (a partial block in both dims: 136 x 160)
    torch.testing.assert_close(model.layers[1].ffn.experts.w13[3, 136:], ref["model.layers.1.mlp.experts.3.up_proj.weight"])
    bf16 = load_pretrained(path)  # default: the checkpoint's torch_dtype
    assert bf16.embed.weight.dtype == torch.bfloat16 and bf16.layers[1].ffn.gate.bias.dtype == torch.float32
    torch.testing.assert_close(bf16.layers[0].attn.wkv_a.weight, expected["layers.0.attn.wkv_a.weight"].bfloat16())


def test_convert_dequantises(fp8_dir, tmp_path, capsys):
    path, ref = fp8_dir
    out = tmp_path / "bf16"
    assert cli_main(["convert", str(path), str(out), "--dtype", "bf16", "--max-shard-size", "300KB"]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "bfloat16"
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'  # other files are carried over
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for file in set(index["weight_map"].values()):
        with safe_open(str(out / file), "pt") as f:
            for k in f.keys():
                assert not k.endswith("_scale_inv")
                want = torch.float32 if k.endswith("e_score_correction_bias") else torch.bfloat16
                assert f.get_slice(k).get_dtype() == ("F32" if want == torch.float32 else "BF16"), k
    expected = reference_state(ref, path)
    model = load_pretrained(out, dtype=torch.float32)
    for k, v in model.state_dict().items():
        want = expected[k] if k.endswith("gate.bias") else expected[k].bfloat16().float()
        torch.testing.assert_close(v, want, rtol=0, atol=0, msg=k)


def test_fp8_errors(fp8_dir, tmp_path):
    path, ref = fp8_dir
    cfg = json.loads((path / "config.json").read_text())

    def variant(name, config=None, drop=None, replace=None):
        d = tmp_path / name
        d.mkdir()
        for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
            t = load_file(str(path / f))
            t = {k: (replace[k] if replace and k in replace else v) for k, v in t.items() if k != drop}
            save_file(t, str(d / f))
        wm = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
        wm.pop(drop, None)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        (d / "config.json").write_text(json.dumps(config if config is not None else cfg))
        return d

    scale = "model.layers.0.self_attn.kv_b_proj.weight_scale_inv"
    with pytest.raises(ValueError, match=re.escape(scale) + " is missing"):
        load_pretrained(variant("noscale", drop=scale))
    with pytest.raises(ValueError, match=re.escape(scale) + r": shape \[1, 1\]"):
        load_pretrained(variant("badscale", replace={scale: torch.ones(1, 1)}))
    no_qc = {k: v for k, v in cfg.items() if k != "quantization_config"}
    with pytest.raises(ValueError, match=r"proj\.weight is F8_E4M3 but config.json has no quantization_config"):
        load_pretrained(variant("noqc", config=no_qc))
    for qc, msg in [({"quant_method": "gptq", "bits": 4}, "unsupported quantization 'gptq'"),
                    ({**fp8_quantization_config(), "fmt": "e5m2"}, "unsupported FP8 format 'e5m2'"),
                    ({**fp8_quantization_config(), "weight_block_size": None}, "weight_block_size")]:
        d = tmp_path / f"qc-{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}))
        with pytest.raises(ValueError, match=msg):
            load_pretrained(d)


@torch.no_grad()
def test_save_fp8_writes_the_official_format(tmp_path):
    torch.manual_seed(1)
    model = Transformer(ModelConfig(**CFG)).to(torch.bfloat16)
    save_pretrained(model, tmp_path / "m", fp8=True, max_shard_size="200KB")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["quantization_config"] == fp8_quantization_config() and cfg["torch_dtype"] == "bfloat16"
    wm = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for f in set(wm.values()):
        tensors.update(load_file(str(tmp_path / "m" / f)))
    fp8 = {k for k, v in tensors.items() if v.dtype == torch.float8_e4m3fn}
    assert fp8 == {k for k in tensors if FP8_NAME.fullmatch(k)} and len(fp8) > 20
    for k in fp8:
        s = tensors[k + "_scale_inv"]
        assert s.dtype == torch.float32 and s.shape == tuple(math.ceil(n / 128) for n in tensors[k].shape)
    back = load_pretrained(tmp_path / "m", dtype=torch.float32)
    I = CFG["moe_intermediate_size"]
    want = reference_dequant(*quantize_fp8_blockwise(model.layers[1].ffn.experts.w13[2, I:]))
    torch.testing.assert_close(back.layers[1].ffn.experts.w13[2, I:], want, rtol=0, atol=0)
    torch.testing.assert_close(back.mtp[0].eh_proj.weight, model.mtp[0].eh_proj.weight.float(), rtol=0, atol=0)
    x = torch.randint(0, 256, (1, 12))
    assert ((back(x) - model.float()(x)).abs().max() / model(x).abs().max()).item() < 0.1  # FP8 is lossy
