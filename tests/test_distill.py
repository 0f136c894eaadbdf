"""Distillation: rejection sampling keeps only verified-correct, well-formed traces, written as SFT chat rows;
the distill command end to end (teacher sampling, file, student SFT)."""
import json

import pytest
import torch

from nanoseek import Transformer, save_pretrained, tasks
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.data import encode_document
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.distill import prompt_rows, rejection_sample
from nanoseek.train.rollouts import Rollout


@pytest.fixture(scope="module")
def tok_and_model(tmp_path_factory):
    task = tasks.get("arithmetic")
    root = tmp_path_factory.mktemp("distill")
    tok = train_tokenizer(iter(task.document(e) for e in task.examples(300, level=[1, 2], seed=1)),
                          vocab_size=300, out_dir=root / "tok")
    cfg = ModelConfig.preset("tiny").replace(vocab_size=320, hidden_size=64, intermediate_size=128,
                                             moe_intermediate_size=32, num_hidden_layers=2, q_lora_rank=32,
                                             kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                             v_head_dim=16, num_nextn_predict_layers=0)
    torch.manual_seed(0)
    save_pretrained(Transformer(cfg), root / "teacher", tokenizer=tok)
    return tok, str(root / "teacher")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_rejection_sampling_keeps_verified_well_formed_traces(tok_and_model):
    tok, _ = tok_and_model
    task = tasks.get("arithmetic")
    rows, verifier = prompt_rows("arithmetic", None, 6, [2], seed=0)
    worked = {r["prompt"]: task.solution(r).removeprefix("<think>\n") for r in rows}
    eos = tok.eos_token_id

    def sampler(prompts, n, max_tokens, temperature, top_p, top_k, seeds):
        """Per prompt: the worked solution twice, a wrong answer, a right answer with an empty think block."""
        out = []
        for ids in prompts:
            text = tok.decode(ids)
            row = next(r for r in rows if r["prompt"] in text)
            good = tok.encode(worked[row["prompt"]], add_special_tokens=False) + [eos]
            wrong = tok.encode("1+1=2\n</think>\n\n\\boxed{-1}", add_special_tokens=False) + [eos]
            bare = tok.encode(f"</think>\n\n\\boxed{{{row['answer']}}}", add_special_tokens=False) + [eos]
            out.append([Rollout(good, False), Rollout(good, False), Rollout(wrong, False), Rollout(bare, False)])
        return out

    kept, stats = rejection_sample(sampler, tok, rows, verifier, k=4, chunk=4, log=lambda s: None)
    assert (stats.prompts, stats.samples, stats.prompts_kept, stats.kept) == (6, 24, 6, 6)
    assert stats.correct == 6 * 3  # two copies of the worked solution and the bare answer are correct
    for row, ex in zip(kept, rows):  # one per prompt: duplicates collapse, the bare answer fails the format
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": ex["prompt"]} and row["answer"] == ex["answer"]
        assert assistant["content"] == f"\\boxed{{{ex['answer']}}}"
        assert assistant["reasoning_content"] == task.reasoning(ex)
        # SFT on the row trains on the trace
        enc = encode_document(tok, row["messages"])
        trained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
        assert task.reasoning(ex) in trained
    kept, stats = rejection_sample(sampler, tok, rows, verifier, k=4, require_format=False, max_per_prompt=4,
                                   log=lambda s: None)
    assert stats.kept == 12  # the worked solution and the bare answer
    with pytest.raises(ValueError, match=r"prompt row 0 .*needs field\(s\) answer"):
        rejection_sample(sampler, tok, [{"messages": [{"role": "user", "content": "hi"}]}], verifier)


def always_correct(completion, **_):
    return 1.0


def test_distill_command_end_to_end(tok_and_model, tmp_path, monkeypatch, capsys):
    """A random teacher with a permissive verifier: sampling, rejection, the jsonl, and a preset student's SFT."""
    _, teacher = tok_and_model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                               for i in range(8)))
    out = tmp_path / "traces.jsonl"
    # the random teacher gets nothing right: a clear error instead of an empty fine-tuning
    assert main(["distill", "--teacher", teacher, "--data", str(prompts), "--out", str(out), "--k", "2",
                 "--max-tokens", "8", "--student", "tiny", "--threads", "1"]) == 2
    assert "no verified-correct completion" in capsys.readouterr().err
    assert out.exists() and out.read_text() == ""
    # with a verifier that accepts anything (and no format requirement), everything is kept and SFT runs
    monkeypatch.setattr("nanoseek.train.distill.resolve_reward", lambda spec: always_correct)
    assert main(["distill", "--teacher", teacher, "--data", str(prompts), "--out", str(out), "--k", "2",
                 "--max-tokens", "8", "--no-require-format", "--student", "tiny", "--model.vocab_size", "320",
                 "--max_steps", "2", "--seq_len", "64", "--batch_size", "2", "--run_dir", str(tmp_path / "sft"),
                 "--progress", "false", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 8 <= len(rows) <= 16 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert (tmp_path / "sft" / "model" / "model.safetensors").exists()
    assert main(["distill", "--teacher", teacher, "--task", "arithmetic", "--out", str(out), "--max_steps", "2"]) == 2
    assert "SFT settings need --student" in capsys.readouterr().err
