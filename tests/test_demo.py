"""The main job end to end at a smoke scale: every stage runs, the final model loads in the engine, reruns resume."""
import json

import torch

from nanoseek.demo import run, shows_work


def test_demo_smoke_then_rerun_skips(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    logs: list[str] = []
    results = run(str(out), scale=0.005, threads=1, eval_limit=2, log=logs.append)
    assert set(results) == {"pretrain", "sft", "grpo", "eval", "report", "grpo_gain"}
    for stage in ("pretrain", "sft", "grpo"):
        assert (out / stage / "model" / "config.json").exists() and (out / stage / "DONE.json").exists()
    assert (out / "report" / "report.md").exists()
    assert json.loads((out / "summary.json").read_text())["pretrain"]["steps"] == 2
    # the pretraining corpus went through `data clean` (decontamination against the held-out problems) and lost
    # nothing: the tasks corpus is drawn from the train split
    cleaned = results["pretrain"]["data_clean"]
    assert cleaned["removed"] == {"decontaminate": 0} and cleaned["kept"] == cleaned["input"] > 6000
    assert (out / "pretrain" / "corpus" / "clean" / "report.md").exists()
    assert any("nanoseek serve" in line for line in logs)
    import nanoseek
    llm = nanoseek.LLM(str(out / "model"))
    text = llm.generate(["What is 1+1?"], nanoseek.SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert len(text.token_ids) >= 1
    logs.clear()
    run(str(out), scale=0.005, threads=1, eval_limit=2, log=logs.append)
    assert sum("already done" in line for line in logs) == 5
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("pretrain", "sft", "grpo"):  # every stage's evaluation: accuracy, its interval, the problem count
        acc = summary[stage]["accuracy"]
        assert acc["examples"] == 2 and acc["ci95"][0] <= acc["accuracy"] <= acc["ci95"][1]
        assert acc["shows_work"] in (0.0, 0.5, 1.0) and "samples" not in acc
    assert summary["grpo_gain"] == round(summary["grpo"]["accuracy"]["accuracy"] -
                                         summary["sft"]["accuracy"]["accuracy"], 4)
    ic = summary["eval"]["inference_compute"]
    assert ic["samples"]["k"] == [1, 2, 4, 8, 16] and len(ic["budget"]["accuracy"]) == 6
    assert (out / "eval" / "inference_compute.png").stat().st_size > 0
    report = (out / "report" / "report.md").read_text()
    assert "## Inference-time compute of the final model" in report and "inference_compute.png" in report
    assert "## Pretraining data: `nanoseek data clean`" in report
    assert (out / "report" / "inference_compute.png").exists()


def test_demo_seed_reproduces_its_numbers(tmp_path):
    """`--seed` seeds every stage: the same seed and thread count give the same numbers; another seed does not."""
    torch.set_num_threads(1)
    keep = ("eval", "report")
    a = run(str(tmp_path / "a"), scale=0.005, threads=1, eval_limit=2, seed=3, skip=keep, log=lambda s: None)
    b = run(str(tmp_path / "b"), scale=0.005, threads=1, eval_limit=2, seed=3, skip=keep, log=lambda s: None)
    c = run(str(tmp_path / "c"), scale=0.005, threads=1, eval_limit=2, seed=4, skip=keep, log=lambda s: None)
    for stage, key in (("pretrain", "val_loss"), ("sft", "val_loss"), ("grpo", "accuracy")):
        assert a[stage][key] == b[stage][key], (stage, key)
    assert a["pretrain"]["val_loss"] != c["pretrain"]["val_loss"]
    metrics = [(tmp_path / r / "grpo" / "metrics.jsonl").read_text() for r in "ab"]
    strip = lambda t: [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")} for x in t.splitlines()]  # noqa: E731
    assert strip(metrics[0]) == strip(metrics[1])  # every GRPO step: rewards, losses, curriculum, sampling counts


def test_shows_work_counts_step_lines():
    """An answer shows its work when the think block has more than one step line: the column steps, not only the
    result line (the SFT data's shortcut form) nor nothing."""
    assert shows_work("7+5=12, carry 1\n3+0+1=4\n347+85=432\n</think>\n\n\\boxed{432}")
    assert not shows_work("347+85=432\n</think>\n\n\\boxed{432}")
    assert not shows_work("</think>\n\n\\boxed{432}") and not shows_work("")
    assert not shows_work("347+85=432\n</think>\n\n1+1=2 and \\boxed{432}")  # only the think block counts
