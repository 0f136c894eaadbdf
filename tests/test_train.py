"""Training loop: learning, exact resume, balancing, schedules, config errors, crash safety."""
import json
import math
import os

import numpy as np
import pytest
import torch

from nanoseek import ModelConfig
from nanoseek.train import Data, Trainer, TrainingError, dense_baseline
from nanoseek.train.balance import LoadBalancer
from nanoseek.train.config import build
from nanoseek.train.distributed import DistEnv
from nanoseek.train.optim import lr_at, param_groups
from nanoseek.train.data import pretraining_data
from nanoseek.info import count
from nanoseek.model import Transformer
from conftest import mtp_logits  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tokenizer and token shards of a small synthetic language (random "words" in random sentences)."""
    from nanoseek.data import prepare
    from nanoseek.tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 6))) for _ in range(40)]
    docs = [" ".join(rng.choice(vocab, size=rng.integers(20, 60))) + "." for _ in range(400)]
    train_tokenizer(iter(docs), 400, root / "tok")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare([root / "docs.jsonl"], str(root / "tok"), root / "data", val_fraction=0.1, progress=False)
    return root


def cfg_for(tmp_path, *extra: str, **kw):
    args = ["--max_steps", "8", "--seq_len", "32", "--batch_size", "4", "--eval_every", "4", "--ckpt_every", "3",
            "--warmup_steps", "2", "--run_dir", str(tmp_path), "--progress", "false", "--model.vocab_size", "400",
            "--lr", "3e-3", *extra]
    return build(None, args, **kw)


def data_for(cfg, prepared) -> Data:
    cfg.data, cfg.tokenizer = str(prepared / "data"), str(prepared / "tok")
    return pretraining_data(cfg, DistEnv(), cfg.global_batch())


def make(cfg, prepared) -> Trainer:
    return Trainer(cfg, data_for(cfg, prepared), DistEnv())


def metrics(tmp_path):
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_learns(tmp_path, prepared):
    out = make(cfg_for(tmp_path, "--max_steps", "30", "--eval_every", "30", "--lr", "1e-2"), prepared).fit()
    rows = metrics(tmp_path)
    assert rows[-1]["step"] == 30 and "mtp1" in rows[0] and "aux" in rows[0]
    assert out["val_loss"] < rows[0]["ce"] - 0.5  # far below where it started
    assert math.isfinite(out["val_loss"]) and out["unigram_entropy"] > 0


def test_resume_is_exact(tmp_path, prepared):
    full = make(cfg_for(tmp_path / "a"), prepared).fit()
    t = make(cfg_for(tmp_path / "b"), prepared)
    t.fit(stop_after=5)  # "killed" after step 5: the last checkpoint is step 3
    resumed = make(cfg_for(tmp_path / "b", resume=True), prepared)
    resumed.fit()
    a = {r["step"]: r["loss"] for r in metrics(tmp_path / "a")}
    b = {r["step"]: r["loss"] for r in metrics(tmp_path / "b")}
    assert [r["step"] for r in metrics(tmp_path / "b")] == list(range(1, 9))  # steps 4, 5 logged once (item 11)
    assert sorted(a) == sorted(b)
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-6, abs=1e-7), s
    assert full["val_loss"] == pytest.approx(metrics(tmp_path / "b")[-1]["val_loss"], rel=1e-6)
    ckpts = sorted(os.listdir(tmp_path / "b" / "checkpoints"))
    assert ckpts == ["step_0000006.pt", "step_0000008.pt"]  # keep_checkpoints = 2, no temp files
    # resumed once more after the last step (a kill during the export): nothing to train, the summary still has its
    # validation loss (it was None, and `nanoseek train` crashed formatting it; issue 17 item 10)
    again = make(cfg_for(tmp_path / "b", resume=True), prepared).fit()
    assert again["step"] == 8 and again["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)


def test_resume_falls_back_past_a_truncated_checkpoint_and_cleans_leftovers(tmp_path, prepared):
    """Issue 17 item 11: a truncated newest checkpoint is reported and the previous kept one is used; temporary
    files of interrupted checkpoint writes and export directories of dead writers are removed."""
    from nanoseek.checkpoint import save_pretrained
    full = make(cfg_for(tmp_path / "a"), prepared).fit()
    run = tmp_path / "b"
    make(cfg_for(run), prepared).fit()  # checkpoints at steps 6 and 8 are kept
    newest = run / "checkpoints" / "step_0000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    leftover = run / "checkpoints" / "step_0000009.pt.tmp.4242"
    leftover.write_bytes(b"partial")
    logs: list[str] = []
    t = Trainer(cfg_for(run, resume=True), data_for(cfg_for(run), prepared), DistEnv(), log=logs.append)
    out = t.fit()
    assert any("unreadable" in line and "falling back" in line for line in logs), logs
    assert any("step_0000006.pt at step 6" in line for line in logs) and out["step"] == 8
    assert out["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)  # steps 7-8 redone exactly
    assert not leftover.exists()
    dead = tmp_path / ".model.tmp-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    save_pretrained(t.model, tmp_path / "model")
    assert not dead.exists() and (tmp_path / "model" / "config.json").exists()
    for p in (run / "checkpoints").glob("step_*.pt"):
        p.write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable checkpoint"):
        make(cfg_for(run, resume=True), prepared).fit()


def test_gradient_accumulation_matches_big_batch(tmp_path, prepared):
    make(cfg_for(tmp_path / "a", "--max_steps", "3", "--batch_size", "8"), prepared).fit()
    make(cfg_for(tmp_path / "b", "--max_steps", "3", "--batch_size", "2", "--global_batch_size", "8"), prepared).fit()
    for ra, rb in zip(metrics(tmp_path / "a"), metrics(tmp_path / "b")):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=2e-4)


def test_nan_loss_stops_cleanly(tmp_path, prepared):
    t = make(cfg_for(tmp_path), prepared)
    t.fit(stop_after=3)
    with torch.no_grad():
        t.model.embed.weight[5] = float("nan")
    ones = torch.full((4, 32), 5, dtype=torch.long)
    t.data.train_batches = lambda start: iter(lambda: (ones, ones), None)  # every token is the poisoned one
    with pytest.raises(TrainingError, match="non-finite"):
        t.fit()
    assert [s for s, _ in __import__("nanoseek.train.state", fromlist=["x"]).checkpoints(t.ckpt_dir)] == [3]


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, prepared):
    t = make(cfg_for(tmp_path), prepared)
    t.fit(stop_after=3)
    import nanoseek.train.state as st

    def disk_full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="previous checkpoint is intact"):
        t.save_checkpoint()
    assert os.listdir(t.ckpt_dir) == ["step_0000003.pt"]
    monkeypatch.undo()
    assert st.load(os.path.join(t.ckpt_dir, "step_0000003.pt"))["step"] == 3


def test_bias_update_sign_rule():
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset("tiny"))
    bal = LoadBalancer(m, gamma=0.01)
    name, moe = next(iter(bal.moes.items()))
    bal.load[name] = torch.tensor([10.0, 0, 5, 5, 5, 5, 5, 5], dtype=torch.float64)
    before = moe.gate.bias.clone()
    stats = bal.step()
    delta = moe.gate.bias - before
    assert delta[0] == pytest.approx(-0.01) and delta[1] == pytest.approx(0.01)  # overloaded down, underloaded up
    assert stats[name]["max_over_mean"] == pytest.approx(2.0)
    assert moe.gate.bias.dtype == torch.float32 and moe.gate.bias.grad is None


def test_seq_aux_loss_value():
    """L_bal = α Σ_i f_i P_i per sequence (f_i = E/(K·T) · tokens choosing i, P_i = mean_t s_{i,t}/Σ_j s_{j,t}),
    averaged over sequences and summed over layers, recomputed by hand from the gates' inputs and choices; random
    gates, so the value depends on f (uniform scores made Σ f·P = 1 whatever f was: a test that could not fail)."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset("tiny")).train()
    alpha, B, T = 0.3, 2, 16
    bal = LoadBalancer(m, gamma=0.0, seq_aux_alpha=alpha)
    seen = []
    for moe in bal.moes.values():
        torch.nn.init.normal_(moe.gate.weight, std=0.5)
        moe.gate.register_forward_hook(lambda g, i, o: seen.append((i[0].detach(), o[1].detach(), g.weight.detach())))
    bal.begin_forward(B)
    m(torch.randint(0, 100, (B, T)))
    expected = 0.0
    for x, idx, w in seen:
        s = torch.sigmoid(x.double() @ w.double().T)  # (B·T, E) sigmoid scores
        E, K = s.shape[1], idx.shape[1]
        for b in range(B):
            rows = slice(b * T, (b + 1) * T)
            f = [0.0] * E
            for e in idx[rows].flatten().tolist():
                f[e] += E / (K * T)
            P = (s[rows] / s[rows].sum(dim=1, keepdim=True)).mean(dim=0)
            expected += alpha * sum(fi * float(pi) for fi, pi in zip(f, P)) / B
    assert len(seen) >= 2 and bal.aux_loss().item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - alpha * len(seen)) > 1e-3  # not the balanced value


def test_schedules():
    kw = dict(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, schedule="wsd", **kw) == pytest.approx(0.1)
    assert lr_at(50, schedule="wsd", **kw) == 1.0  # constant phase
    assert lr_at(99, schedule="wsd", **kw) == pytest.approx(0.1, abs=0.01)  # decayed
    assert lr_at(55, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_at(99, schedule="constant", **kw) == 1.0


def test_param_groups_no_decay_on_norms_and_embeddings():
    m = Transformer(ModelConfig.preset("tiny"))
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("experts.w13") for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_dense_baseline_same_active_params():
    cfg = ModelConfig.preset("small")
    dense = dense_baseline(cfg)
    assert not dense.is_moe
    a, b = count(cfg), count(dense)
    gate_and_bias = (cfg.num_hidden_layers - cfg.first_k_dense_replace) * cfg.n_routed_experts * (cfg.hidden_size + 1)
    dense_extra = cfg.first_k_dense_replace * 3 * cfg.hidden_size * (
        dense.intermediate_size - cfg.intermediate_size)
    assert b["active_params"] == a["active_params"] - gate_and_bias + dense_extra


def test_config_errors(tmp_path, prepared):
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        build(None, ["--learning_rate", "1"])
    with pytest.raises(ValueError, match="max_steps: expected int"):
        build(None, ["--max_steps", "ten"])
    with pytest.raises(ValueError, match="model.hidden_sise"):
        make(cfg_for(tmp_path, "--model.hidden_sise", "64"), prepared)
    with pytest.raises(ValueError, match="tokenizer has 400 tokens but the model's vocab_size is 64"):
        make(cfg_for(tmp_path, "--model.vocab_size", "64"), prepared)
    with pytest.raises(ValueError, match="seq_len"):
        make(cfg_for(tmp_path, "--seq_len", "100000"), prepared)
    cfg = build({"max_steps": 5, "model": {"name": "tiny", "n_routed_experts": 4, "topk_group": 1, "n_group": 1}},
                ["--lr", "0.01"])
    assert cfg.max_steps == 5 and cfg.lr == 0.01 and cfg.model_overrides["n_routed_experts"] == 4


def test_mha_baseline_module_and_flops():
    from nanoseek.info import train_flops_per_token
    from nanoseek.model.attention import MLA
    from nanoseek.model.mha import MHA, mha_kv_params, use_mha
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = Transformer(cfg)
    mla = model.layers[0].attn
    use_mha(model)
    attns = [m for m in model.modules() if isinstance(m, (MLA, MHA))]
    assert len(attns) == cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    assert all(isinstance(m, MHA) for m in attns)
    mha = model.layers[0].attn
    assert mha.wk.weight.numel() + mha.wv.weight.numel() == mha_kv_params(cfg)
    # the query path is MLA's, parameter for parameter
    assert {n for n, _ in mha.named_parameters() if n.startswith(("wq", "q_norm"))} == \
           {n for n, _ in mla.named_parameters() if n.startswith(("wq", "q_norm"))}
    # FLOPs: 6 per extra matmul parameter in every attention module
    kv = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.startswith(("wkv", "wk", "wv")))
    delta = kv(mha) - kv(mla)
    for depth in (0, 1):
        assert (train_flops_per_token(cfg, 64, depth, "mha") - train_flops_per_token(cfg, 64, depth, "mla")
                == 6 * (cfg.num_hidden_layers + depth) * delta)
    # MTP: its block, eh_proj and the shared head run again (all matmul weights but the inactive experts)
    mtp = Transformer(cfg).mtp[0]
    inactive = (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    matmul = sum(p.numel() for n, p in mtp.named_parameters() if not n.endswith("norm.weight")) - inactive
    matmul += cfg.vocab_size * cfg.hidden_size + cfg.n_routed_experts  # the head; the routing bias as counted
    attn = 6 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * 64 // 2
    assert train_flops_per_token(cfg, 64, 1) - train_flops_per_token(cfg, 64, 0) == 6 * matmul + attn
    # causal, and the cache path refuses clearly
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % cfg.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :8], model(y)[:, :8])
    with pytest.raises(NotImplementedError, match="no KV cache"):
        mha(torch.zeros(1, 1, cfg.hidden_size), None, None, cache=object())


def test_mha_baseline_trains_and_is_not_exported(tmp_path, prepared):
    from nanoseek.train import pretrain
    cfg = cfg_for(tmp_path, "--attention", "mha", "--max_steps", "6")
    cfg.data, cfg.tokenizer = str(prepared / "data"), str(prepared / "tok")
    logs: list[str] = []
    summary = pretrain.run(cfg, log=logs.append)
    rows = metrics(tmp_path)
    assert rows[-1]["loss"] < rows[0]["loss"] and math.isfinite(summary["val_loss"])
    assert "model_dir" not in summary and any("not exported" in s for s in logs)
    assert not os.path.exists(os.path.join(tmp_path, "model"))
    with pytest.raises(ValueError, match="attention: expected mla or mha"):
        build(None, ["--attention", "gqa"])


def test_objective_matches_full_logits_cross_entropy():
    """The objective's chunked head + CE equals F.cross_entropy on the full logits, value and gradients."""
    import torch.nn.functional as F
    from nanoseek.train.loss import TrainingObjective
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    y = torch.randint(0, cfg.vocab_size, (2, 16))
    y[0, :5] = -100  # ignored positions (SFT prompts)
    loss, parts = TrainingObjective(model, mtp_lambda=0.3)(x, y)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    h = model.forward_hidden(x)
    ce = F.cross_entropy(model.head(h).flatten(0, 1), y.flatten(), ignore_index=-100)
    (mtp,) = mtp_logits(model, x, h)
    ref = ce + 0.3 * F.cross_entropy(mtp.flatten(0, 1), y[:, 1:].flatten(), ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_objective_traces_under_torch_compile(dtype):
    """`--compile true`: dynamo + AOT autograd trace the whole objective (MoE included) in fp32 and bf16, with
    the eager values. (fp32 once failed: torch._grouped_mm's tracing kernel accepts only bf16.)"""
    from nanoseek.train.loss import TrainingObjective
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = Transformer(cfg).to(dtype)
    objective = TrainingObjective(model, mtp_lambda=0.3)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    y = torch.randint(0, cfg.vocab_size, (2, 16))
    ref, _ = objective(x, y)
    got, _ = torch.compile(objective, backend="aot_eager")(x, y)
    got.backward()
    torch.testing.assert_close(got, ref)
    assert model.layers[-1].ffn.experts.w13.grad is not None
