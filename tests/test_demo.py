"""The main job end to end at a smoke scale: every stage runs, the final model loads in the engine, reruns resume."""
import json

import torch

from nanoseek.demo import run


def test_demo_smoke_then_rerun_skips(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    logs: list[str] = []
    results = run(str(out), scale=0.005, threads=1, eval_limit=2, log=logs.append)
    assert set(results) == {"pretrain", "sft", "grpo", "eval", "report"}
    for stage in ("pretrain", "sft", "grpo"):
        assert (out / stage / "model" / "config.json").exists() and (out / stage / "DONE.json").exists()
    assert (out / "report" / "report.md").exists()
    assert json.loads((out / "summary.json").read_text())["pretrain"]["steps"] == 2
    assert any("nanoseek serve" in line for line in logs)
    import nanoseek
    llm = nanoseek.LLM(str(out / "model"))
    text = llm.generate(["What is 1+1?"], nanoseek.SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert len(text.token_ids) >= 1
    logs.clear()
    run(str(out), scale=0.005, threads=1, eval_limit=2, log=logs.append)
    assert sum("already done" in line for line in logs) == 5
