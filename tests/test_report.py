"""nanoseek report: the seed's DeepSeek-V3 figures from the config alone, the tiny preset measured, a synthetic run
directory's curves and expert load, the command line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from nanoseek import ModelConfig, Transformer, save_pretrained, train_tokenizer
from nanoseek.cli import main
from nanoseek.report import accounting, build_report, resolve

PNG = b"\x89PNG\r\n\x1a\n"



def _pngs_ok(rep: dict, *names: str) -> None:
    files = {Path(f).name: Path(f) for f in rep["files"]}
    for name in names:
        assert name in files, f"{name} not written (got {sorted(files)})"
        data = files[name].read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
        assert f"({name})" in rep["markdown"]


def test_deepseek_v3_reproduces_the_published_figures_without_weights(tmp_path, monkeypatch):
    import nanoseek.report.build as build
    monkeypatch.setattr(build, "_instantiate", lambda *a: pytest.fail("must not allocate DeepSeek-V3's weights"))
    rep = build_report("deepseek-v3", tmp_path)
    acc = rep["accounting"]
    p, kv = acc["params"], acc["kv_cache"]
    # counted exactly from the official config.json (huggingface.co/deepseek-ai/DeepSeek-V3); the paper says 671B / 37B
    assert p["total"] == 671_026_419_200 and p["active"] == 37_552_297_472
    assert p["active_no_embedding"] == 36_625_618_432  # DeepSeek's "37B": head counted, input embedding not
    assert round(100 * p["active_fraction_no_embedding"], 1) == 5.5  # the seed's 5.5%
    assert round(100 * p["active_fraction"], 1) == 5.6
    assert acc["published"]["name"] == "deepseek-v3"
    # MLA caches 576 elements per token per layer: 70,272 B/token over 61 layers, 8.6 GiB per 128K context
    assert kv["bytes_per_token"] == {"mla_latent": 70_272, "gqa_8": 312_320, "mha": 4_997_120}
    assert kv["bytes_per_context"]["mla_latent"] == 70_272 * 131_072
    assert kv["mha_over_mla"] == pytest.approx(71.11, abs=0.01)
    assert acc["flops"]["per_token"] == 250_450_725_888 and 0.05 < acc["flops"]["fraction_of_dense"] < 0.07
    assert rep["measured"]["skipped"].startswith("skipped: training needs")
    md = rep["markdown"]
    for text in ("671.03B", "37.55B (5.60%)", "36.63B", "5.46%", "671B total, 37B activated, 5.5%", "8.6 GiB",
                 "610.0 GiB", "skipped: training needs"):
        assert text in md, text
    _pngs_ok(rep, "params.png", "kv_cache.png", "flops.png")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["accounting"]["params"]["total"] == 671_026_419_200
    assert (tmp_path / "report.md").read_text() == md


def test_tiny_preset_is_measured(tmp_path, one_thread):
    rep = build_report("tiny", tmp_path, batch=2, train_seq=32, steps=1, decode_batch=2, new_tokens=4)
    acc, m = rep["accounting"], rep["measured"]
    cfg = ModelConfig.preset("tiny")
    model = Transformer(cfg)
    main = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n.endswith("gate.bias"))]
    main_params = sum(t.numel() for n, t in main if not n.startswith("mtp."))  # the routing bias is in the checkpoint
    assert acc["params"]["total"] == main_params and "published" not in acc
    # 3 layers x (kv_lora_rank 32 + rope 16) x 2 bytes; MHA 4 heads x (48 + 32); GQA capped at the 4 heads
    assert acc["kv_cache"]["bytes_per_token"] == {"mla_latent": 288, "gqa_4": 1920, "mha": 1920}
    assert acc["kv_cache"]["gqa_capped"] and "capped at 4" in rep["markdown"]
    tr = m["training"]
    assert tr["tokens_per_s"] > 0 and 0 < tr["mfu"] < 1 and tr["batch"] == 2 and tr["seq_len"] == 32
    assert set(tr["expert_load_max_over_mean"]) == {"layers.1.ffn", "layers.2.ffn", "mtp.0.block.ffn"}
    assert all(v >= 1.0 for v in tr["expert_load_max_over_mean"].values())
    assert [d["batch"] for d in m["decode"]] == [1, 2] and all(d["decode_tokens_per_s"] > 0 for d in m["decode"])
    assert m["decode"][0]["kv_cache_bytes_per_token"] > 0
    spec = m["speculative"]
    assert not m["trained_weights"] and spec["draft_tokens"] > 0
    assert 0 <= spec["accepted_tokens"] <= spec["draft_tokens"]
    assert spec["acceptance_rate"] == spec["accepted_tokens"] / spec["draft_tokens"]  # the engine's own counters
    assert "untrained weights" in rep["markdown"] and "training MFU" in rep["markdown"]
    _pngs_ok(rep, "params.png", "kv_cache.png", "flops.png", "throughput.png", "expert_load_measured.png")


def _rows(grpo: bool) -> list[dict]:
    rows = []
    for step in range(1, 13):
        if grpo:
            rows.append({"step": step, "loss": 0.1 / step, "reward": 0.1 * step, "rewards/accuracy": 0.05 * step,
                         "accuracy": 0.05 * step, "kl": 0.01 * step, "lr": 1e-5, "completion_length": 50 + step})
            continue
        row = {"step": step, "loss": 7.0 - 0.4 * step, "ce": 6.9 - 0.4 * step, "mtp1": 7.1 - 0.3 * step,
               "lr": 1e-3, "grad_norm": 1.0, "load_max_over_mean": 3.0 - 0.15 * step,
               "load": {"layers.1.ffn": 3.0 - 0.15 * step, "layers.2.ffn": 2.0 - 0.05 * step}}
        if step % 4 == 0:
            row.update(tokens_per_s=1000.0 + step, mfu=0.02, val_loss=7.2 - 0.4 * step)
        rows.append(row)
    return rows


def test_run_directory_curves_expert_load_and_its_model(tmp_path, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(grpo=False)))
    # a run with an exported model (and tokenizer): measured on real text with its trained=True flag
    from nanoseek.data import task_documents
    tok = train_tokenizer(iter(itertools.islice(task_documents(per_task=40), 100)), 512, tmp_path / "tok")
    torch.manual_seed(0)
    save_pretrained(Transformer(ModelConfig.preset("tiny").replace(vocab_size=512)), run / "model",
                    tokenizer=tok.name_or_path)
    assert resolve(run).kind == "run" and resolve(run / "model").kind == "model"
    rep = build_report(run, batch=1, train_seq=16, steps=1, decode_batch=1, new_tokens=3)
    assert Path(rep["files"][0]).parent == run / "report"  # the default output directory
    s = rep["run"]
    assert s["last_step"] == 12 and s["ce"]["first"] == pytest.approx(6.5) and s["ce"]["last"] == pytest.approx(2.1)
    assert s["val_loss"]["points"] == 3 and s["tokens_per_s"]["median"] == pytest.approx(1008)
    assert s["expert_load_last"] == {"layers.1.ffn": pytest.approx(1.2), "layers.2.ffn": pytest.approx(1.4)}
    assert s["load_max_over_mean"] == {"first": pytest.approx(2.85), "last": pytest.approx(1.2)}
    assert rep["measured"]["trained_weights"] and rep["measured"]["decode"][0]["batch"] == 1
    md = rep["markdown"]
    assert "## Training run" in md and "from the run's metrics" in md and "| layers.2.ffn | 1.400 |" in md
    assert "worst layer 2.85 at the first logged step, 1.20 at the last" in md
    _pngs_ok(rep, "loss.png", "expert_load.png", "lr.png", "params.png", "throughput.png")

    # a GRPO run without an exported model: only its curves
    grpo = tmp_path / "grpo"
    grpo.mkdir()
    (grpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(grpo=True)))
    rep = build_report(grpo, tmp_path / "grpo-report")
    assert "accounting" not in rep and rep["run"]["reward"]["last"] == pytest.approx(1.2)
    assert "No model config found" in rep["markdown"] and "| reward | 0.1 | 1.2 |" in rep["markdown"]
    _pngs_ok(rep, "reward.png", "accuracy.png", "kl.png")


def test_report_command(tmp_path, capsys):
    assert main(["report", "deepseek-v3", "--out", str(tmp_path / "v3")]) == 0
    out = capsys.readouterr().out
    assert "# nanoseek efficiency report: deepseek-v3" in out and "36.63B" in out and "report.md" in out
    assert (tmp_path / "v3" / "kv_cache.png").stat().st_size > 2000
    assert main(["report", "small", "--no-measure", "--out", str(tmp_path / "s")]) == 0
    assert "skipped: --no-measure" in capsys.readouterr().out
    assert main(["report", "no-such-preset"]) == 2
    assert "not a preset" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # a directory with neither config.json nor metrics.jsonl
    assert "neither a model directory" in capsys.readouterr().err
    assert accounting(ModelConfig.preset("small"))["params"]["total"] > 0


def test_training_cost_reproduces_deepseek_v3_arithmetic_and_prices_a_run(tmp_path):
    """Issue 16: 14.8T tokens, 2.788M H800 GPU-hours, $5.576M at $2/hour, and the MFU those figures imply; a run's
    own cost from its logged throughput, beside a compared (bf16) run."""
    rep = build_report("deepseek-v3", tmp_path / "v3", measure_speed=False)
    paper = rep["cost"]["paper"]
    assert paper["price_check_usd"] == pytest.approx(5.576e6)
    assert paper["pretrain_flops"] == pytest.approx(paper["flops_per_token"] * 14.8e12)
    # ~3.9e24 FLOPs in 2.664M GPU-hours: ~400 TFLOP/s per GPU, 20% of the FP8 peak, 41% of the BF16 peak
    assert 0.15 < paper["implied_mfu_fp8_peak"] < 0.25 and 0.3 < paper["implied_mfu_bf16_peak"] < 0.5
    assert paper["implied_mfu_bf16_peak"] == pytest.approx(2 * paper["implied_mfu_fp8_peak"], rel=1e-3)
    stated = rep["cost"]["stated"]  # at the implied FP8 MFU the FP8 row is V3's pre-training hours
    assert stated["fp8"]["device_hours"] == pytest.approx(2.664e6, rel=1e-6)
    assert stated["bf16"]["device_hours"] == pytest.approx(2 * 2.664e6, rel=1e-3)
    assert "$5.576M" in rep["markdown"] and "implied MFU vs the FP8 peak" in rep["markdown"]

    runs = {}
    for name, fp8, tps in (("fp8", True, 1000.0), ("bf16", False, 2500.0)):
        run = tmp_path / name
        run.mkdir()
        (run / "train_config.json").write_text(json.dumps({"batch_size": 8, "global_batch_size": None,
                                                           "seq_len": 128, "fp8": fp8, "dtype": "bfloat16"}))
        rows = [{"step": s, "loss": 3.0, "tokens_per_s": tps, "mfu": 0.01} for s in (50, 100)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs[name] = run
    rep = build_report(runs["fp8"], tmp_path / "rep", measure_speed=False, compare=runs["bf16"], price_per_hour=3.0)
    c = rep["cost"]
    assert c["run"]["tokens"] == 100 * 8 * 128 and c["run"]["precision"].startswith("fp8")
    assert c["run"]["device_hours"] == pytest.approx(100 * 8 * 128 / 1000 / 3600)
    assert c["run"]["price_usd"] == pytest.approx(3 * c["run"]["device_hours"])
    assert c["speed_ratio"] == pytest.approx(0.4) and "This run, from its measured throughput" in rep["markdown"]
