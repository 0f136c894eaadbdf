"""The lm-evaluation-harness model `nanoseek` on a local task definition (tests/fixtures/lm_eval_task: YAML + jsonl,
no download): loglikelihood, loglikelihood_rolling and generate_until, each checked against nanoseek computed
directly, and the `python -m nanoseek.lm_eval_model` command line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'nanoseek[lm_eval]')")

from nanoseek import ModelConfig, Transformer, save_pretrained, train_tokenizer  # noqa: E402
from nanoseek.evaluate import score_documents  # noqa: E402
from nanoseek.infer import LLM, SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tests" / "fixtures" / "lm_eval_task"
TASKS = ["nanoseek_arith_mc", "nanoseek_arith_gen", "nanoseek_text_ppl"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from nanoseek.data import task_documents
    docs = list(itertools.islice(task_documents(per_task=60), 150)) + ["Answer: 5. The quick brown fox. Café"] * 3
    tok = train_tokenizer(iter(docs), 512, tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("m") / "model"
    save_pretrained(Transformer(ModelConfig.preset("tiny").replace(vocab_size=512)), out, tokenizer=tok.name_or_path)
    return out


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """Run from the repository root (the YAML's data_files are relative to it), datasets cache in tmp, offline."""
    import datasets
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _logprob(model, ids: list[int], n_cont: int) -> float:
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])).float()[0], -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(len(ids) - n_cont, len(ids))))


def test_local_tasks_match_nanoseek_computed_directly(model_dir, offline):
    from lm_eval.tasks import TaskManager

    from nanoseek.lm_eval_model import NanoseekLM
    with pytest.warns(UserWarning, match="not available, using the CPU"):  # lm-eval's default device is cuda
        lm = NanoseekLM(pretrained=str(model_dir), dtype="fp32", batch_size=4, device="cuda")
    assert lm.device.type == "cpu" and lm.max_length == 1024
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, log_samples=True, bootstrap_iters=0)
    res, samples = out["results"], out["samples"]
    model, tok = lm.model, lm.tokenizer

    # loglikelihood: each choice's score is log p(choice | BOS + question) from a plain forward pass
    correct = []
    for s in samples["nanoseek_arith_mc"]:
        scores = []
        for (ctx, cont), (ll, _) in zip(s["arguments"], s["filtered_resps"]):
            whole, head = lm.tok_encode(ctx + cont), lm.tok_encode(ctx)
            assert whole[0] == head[0] == tok.bos_token_id and whole[:len(head)] == head
            assert ll == pytest.approx(_logprob(model, whole, len(whole) - len(head)), abs=1e-4)
            scores.append(ll)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == s["target"])
    assert len(correct) == 6 and res["nanoseek_arith_mc"]["acc,none"] == pytest.approx(sum(correct) / 6)

    # generate_until: the engine's greedy completion, cut at the task's stop string
    llm = LLM(model, tok)
    for s in samples["nanoseek_arith_gen"]:
        (ctx, kw), = s["arguments"]
        want = llm.generate([lm.tok_encode(ctx)], SamplingParams(temperature=0, max_tokens=kw["max_gen_toks"],
                                                                  stop=kw["until"]))[0].outputs[0].text
        assert s["filtered_resps"][0] == want and "\n" not in want
    assert res["nanoseek_arith_gen"]["exact_match,none"] == 0.0  # an untrained model

    # loglikelihood_rolling: lm-eval's bits per byte equals `nanoseek eval`'s on the same documents
    texts = [json.loads(line)["text"] for line in (TASK_DIR / "text.jsonl").read_text().splitlines()]
    ours = score_documents(model, tok, texts, max_length=lm.max_length)
    assert res["nanoseek_text_ppl"]["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-5)
    ll = [s["filtered_resps"][0] for s in samples["nanoseek_text_ppl"]]
    assert -sum(ll) == pytest.approx(ours["nll"], rel=1e-5)
    # short windows score every token once too (the rolling path with several windows per document)
    lm._max_length = 8
    (short,) = lm.loglikelihood_rolling([type("R", (), {"args": (texts[1],)})()], disable_tqdm=True)
    assert short == pytest.approx(-score_documents(model, tok, texts[1:2], max_length=8)["nll"], rel=1e-5)


def test_command_line_finds_the_nanoseek_model(model_dir, offline, monkeypatch, tmp_path, capsys):
    import lm_eval.tasks

    from nanoseek import lm_eval_model

    class LocalTasksOnly(lm_eval.tasks.TaskManager):  # skip indexing lm-eval's 200+ built-in task folders
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasksOnly)
    out = tmp_path / "out"
    lm_eval_model.main(["--model", "nanoseek", "--model_args", f"pretrained={model_dir},dtype=fp32", "--batch_size", "2",
                        "--include_path", str(TASK_DIR), "--tasks", "nanoseek_text_ppl", "--device", "cpu",
                        "--output_path", str(out)])
    assert "nanoseek_text_ppl" in capsys.readouterr().out
    (result,) = out.rglob("results_*.json")
    data = json.loads(result.read_text())
    assert data["config"]["model"] == "nanoseek" and data["results"]["nanoseek_text_ppl"]["bits_per_byte,none"] > 0
    with pytest.raises(ValueError, match="pretrained=DIR"):
        lm_eval_model.NanoseekLM()
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        lm_eval_model.NanoseekLM(pretrained=str(tmp_path))
