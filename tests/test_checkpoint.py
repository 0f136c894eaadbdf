"""Checkpoint files: round trips, sharding, dtypes, config.json, MTP copies, atomic replacement, tokenizer files,
and clear errors on bad input (each naming the file or tensor)."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nanoseek.checkpoint as ckpt
from nanoseek import ModelConfig, Transformer, load_pretrained, save_pretrained
from nanoseek.cli import main as cli_main
from nanoseek.memory import ModelTooLargeError

TINY = dict(model_type="deepseek_v3", vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16,
            qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2,
            n_shared_experts=1, first_k_dense_replace=1, num_nextn_predict_layers=1, max_position_embeddings=256,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0,
                          "mscale_all_dim": 1.0}, initializer_range=0.05)


@torch.no_grad()
def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**TINY, **kw})).eval()
    for name, b in model.named_buffers():
        if name.endswith("gate.bias"):
            b.normal_()
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = tiny_model()
    save_pretrained(model, path)
    return model, path


def tensors_of(path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def rewrite(src, dst, change) -> None:
    """Copy a single-file checkpoint, editing its tensors with change(dict)."""
    dst.mkdir()
    t = load_file(str(src / "model.safetensors"))
    change(t)
    save_file(t, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())


# ---------------------------------------------------------------------------------------------- round trips
@torch.no_grad()
def test_round_trip_is_exact(saved, monkeypatch):
    model, path = saved
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (pickle) must never be used"))
    back = load_pretrained(path)
    assert back.config.to_dict() == {**model.config.to_dict(), "torch_dtype": "float32"}
    sd, sd2 = model.state_dict(), back.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and torch.equal(sd2[k], sd[k]), k
    fresh = Transformer(back.config)
    for (k, b), (_, b2) in zip(back.named_buffers(), fresh.named_buffers()):
        if k not in sd:  # non-persistent buffers come back as a freshly built model has them
            assert torch.equal(b, b2), k
    x = torch.randint(0, 256, (1, 10))
    assert torch.equal(back(x), model(x))
    assert len(load_pretrained(path, mtp=False).mtp) == 0


def test_official_names_and_mtp_copies(saved):
    model, path = saved
    t = tensors_of(path)
    L = model.config.num_hidden_layers
    for name in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.q_a_proj.weight",
                 "model.layers.0.self_attn.q_a_layernorm.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.1.mlp.experts.7.up_proj.weight",
                 "model.layers.2.mlp.shared_experts.down_proj.weight", f"model.layers.{L}.enorm.weight",
                 f"model.layers.{L}.hnorm.weight", f"model.layers.{L}.eh_proj.weight",
                 f"model.layers.{L}.shared_head.norm.weight", f"model.layers.{L}.mlp.experts.0.down_proj.weight"]:
        assert name in t, name
    assert not any("w13" in k or k.startswith("layers.") for k in t)
    I = model.config.moe_intermediate_size
    w13 = model.layers[1].ffn.experts.w13
    assert torch.equal(t["model.layers.1.mlp.experts.5.gate_proj.weight"], w13[5, :I])
    assert torch.equal(t["model.layers.1.mlp.experts.5.up_proj.weight"], w13[5, I:])
    assert torch.equal(t["model.layers.1.mlp.experts.5.down_proj.weight"], model.layers[1].ffn.experts.w2[5])
    # the MTP layer's copies of the embedding and head, for vLLM's deepseek_mtp
    assert torch.equal(t[f"model.layers.{L}.embed_tokens.weight"], model.embed.weight)
    assert torch.equal(t[f"model.layers.{L}.shared_head.head.weight"], model.head.weight)


def test_config_json_for_transformers_and_vllm(saved):
    model, path = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (cfg["topk_method"], cfg["scoring_func"], cfg["n_group"], cfg["topk_group"], cfg["norm_topk_prob"]) == (
        "noaux_tc", "sigmoid", 2, 1, True)
    assert cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"]["type"] == "yarn" and cfg["rope_scaling"]["factor"] == 4
    assert cfg["torch_dtype"] == "float32" and cfg["num_nextn_predict_layers"] == 1 and cfg["rope_interleave"] is True
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoConfig.from_pretrained(path)
    assert hf.rope_parameters["rope_type"] == "yarn" and hf.rope_parameters["rope_theta"] == 10000.0
    assert hf.num_mtp_layers == 1 and hf.q_lora_rank == 24


@torch.no_grad()
def test_bf16_sharded_tied(tmp_path):
    model = tiny_model(1, tie_word_embeddings=True, num_nextn_predict_layers=0).to(torch.bfloat16)
    assert model.layers[1].ffn.gate.bias.dtype == torch.float32
    save_pretrained(model, tmp_path / "m", max_shard_size="20KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"
    t = tensors_of(tmp_path / "m")
    assert set(t) == set(index["weight_map"]) and "lm_head.weight" not in t  # tied: written once, as transformers
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in t.values())
    for f in files:  # shards respect the limit unless a single tensor is bigger
        with safe_open(str(tmp_path / "m" / f), "pt") as h:
            sizes = [h.get_tensor(k).numel() * h.get_tensor(k).element_size() for k in h.keys()]
            assert sum(sizes) <= 20_000 or len(sizes) == 1
    assert t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    back = load_pretrained(tmp_path / "m")  # default dtype: the checkpoint's torch_dtype
    assert back.embed.weight.dtype == torch.bfloat16 and back.layers[1].ffn.gate.bias.dtype == torch.float32
    assert back.head.weight is back.embed.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert load_pretrained(tmp_path / "m", dtype="fp32").embed.weight.dtype == torch.float32


def test_attention_bias_and_v2(tmp_path):
    for i, kw in enumerate([dict(attention_bias=True), dict(model_type="deepseek_v2", topk_method="greedy",
                                                           scoring_func="softmax", q_lora_rank=None,
                                                           num_nextn_predict_layers=0)]):
        model = tiny_model(2, **kw)
        save_pretrained(model, tmp_path / str(i))
        back = load_pretrained(tmp_path / str(i))
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


# ---------------------------------------------------------------------------------------------- atomic writes
def test_replace_keeps_tokenizer_and_drops_stale_shards(tmp_path):
    path = tmp_path / "m"
    save_pretrained(tiny_model(), path, max_shard_size="50KB")
    (path / "tokenizer.json").write_text("{}")
    (path / "README.md").write_text("notes")
    save_pretrained(tiny_model(3), path)  # one file now: the old shards and index must go
    names = sorted(p.name for p in path.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or old directories left
    assert torch.equal(load_pretrained(path).embed.weight, tiny_model(3).embed.weight)


def test_tokenizer_argument(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"a": 1}')
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "model.safetensors").write_text("not a tokenizer file")
    save_pretrained(tiny_model(), tmp_path / "m", tokenizer=tok)
    assert (tmp_path / "m" / "tokenizer.json").read_text() == '{"a": 1}'
    assert (tmp_path / "m" / "tokenizer_config.json").exists()

    class Tok:
        def save_pretrained(self, d):
            (ckpt.Path(d) / "tokenizer.json").write_text("saved")
    save_pretrained(tiny_model(), tmp_path / "m2", tokenizer=Tok())
    assert (tmp_path / "m2" / "tokenizer.json").read_text() == "saved"
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        save_pretrained(tiny_model(), tmp_path / "m3", tokenizer=tmp_path / "m3-missing")
    assert not (tmp_path / "m3").exists()


def test_crash_mid_save_leaves_the_old_directory(tmp_path, monkeypatch):
    path = tmp_path / "m"
    save_pretrained(tiny_model(), path)
    (path / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    calls = []

    def crash(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, filename, metadata=metadata)
    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_model(5), path, max_shard_size="30KB")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    with pytest.raises(OSError, match="disk full"):  # into a new directory: nothing appears
        calls.clear()
        save_pretrained(tiny_model(5), tmp_path / "new", max_shard_size="30KB")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_files(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_pretrained(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or model\.safetensors\.index\.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=r"only safetensors.*pytorch_model\.bin"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_pretrained(tmp_path / "empty")
    sharded = tmp_path / "sharded"
    save_pretrained(tiny_model(), sharded, max_shard_size="50KB")
    shard = sorted(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values()))[1]
    (sharded / shard).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{shard}: missing")):
        load_pretrained(sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json"):
        load_pretrained(sharded)


def test_tensor_errors_name_the_tensor(saved, tmp_path):
    _, path = saved
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    rewrite(path, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(ValueError, match=re.escape(f"tensor {name} is missing")):
        load_pretrained(tmp_path / "missing")
    rewrite(path, tmp_path / "extra", lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(2)}))
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.0\.mlp\.extra\.weight"):
        load_pretrained(tmp_path / "extra")
    rewrite(path, tmp_path / "shape", lambda t: t.update({name: torch.ones(32, 65)}))
    with pytest.raises(ValueError, match=re.escape(f"{name} in model.safetensors: shape [32, 65] does not match "
                                                   "the model's [32, 64]")):
        load_pretrained(tmp_path / "shape")
    rewrite(path, tmp_path / "mtp-partial", lambda t: t.pop("model.layers.3.eh_proj.weight"))
    with pytest.raises(ValueError, match=r"tensor model\.layers\.3\.eh_proj\.weight is missing"):
        load_pretrained(tmp_path / "mtp-partial")
    assert len(load_pretrained(tmp_path / "mtp-partial", mtp=False).mtp) == 0
    rewrite(path, tmp_path / "mtp-none", lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.3.")])
    assert len(load_pretrained(tmp_path / "mtp-none").mtp) == 0  # MTP is optional
    # buffers of old checkpoints are ignored
    rewrite(path, tmp_path / "inv", lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}))
    load_pretrained(tmp_path / "inv")


def test_a_model_that_cannot_fit_is_refused_before_reading_weights(saved, tmp_path):
    """A config.json within every size bound but far beyond memory (~844 TB in fp32): refused at once, naming the
    file, the dtype and the fields, before any weights are read (the directory has none)."""
    _, path = saved
    huge = tmp_path / "huge"
    huge.mkdir()
    d = json.loads((path / "config.json").read_text())
    (huge / "config.json").write_text(json.dumps({**d, "num_hidden_layers": 1024, "hidden_size": 65536,
                                                  "intermediate_size": 1 << 20, "first_k_dense_replace": 1024}))
    with pytest.raises(ModelTooLargeError, match=r"huge/config\.json: the model needs ~[\d,.]+ GB for its "
                                                 r"parameters in bfloat16 .* num_hidden_layers=1024 layers"):
        load_pretrained(huge, dtype="bf16")
    assert cli_main(["convert", str(huge), str(tmp_path / "out")]) == 2  # one line, exit status 2
    assert not (tmp_path / "out").exists()
    load_pretrained(path, device="cpu")  # the tiny model still loads


def test_config_and_file_errors(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "llama"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()),
                                                 "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config\.json: .*unsupported model_type 'llama'"):
        load_pretrained(bad)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc/model\.safetensors: not a valid safetensors file"):
        load_pretrained(trunc)
    # the CLI turns these errors into one line and exit status 2
    assert cli_main(["convert", str(trunc), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
