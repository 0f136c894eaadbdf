"""LLM from a saved model directory (weights + tokenizer), `nanoseek generate` and `nanoseek chat`."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from nanoseek import ModelConfig, Transformer
from nanoseek.cli import main
from nanoseek.infer import LLM, SamplingParams

TOKENIZER_DIR = Path(__file__).resolve().parent / "fixtures" / "deepseek-r1-tokenizer"  # shipped in the repo


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from nanoseek import save_pretrained
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny").replace(vocab_size=129280, hidden_size=64))
    out = tmp_path_factory.mktemp("m") / "model"
    save_pretrained(model, out, tokenizer=TOKENIZER_DIR)
    return out


def test_llm_from_directory_matches_the_model(model_dir):
    llm = LLM(model_dir, dtype="fp32")
    assert llm.tokenizer is not None and llm.engine.num_spec == 0
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    ids = list(out.prompt_token_ids)
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(llm.model(torch.tensor([ids]))[0, -1, :len(llm.tokenizer)].argmax()))
    assert out.outputs[0].token_ids == ids[len(out.prompt_token_ids):]


def test_generate_command_streams_the_completion(model_dir, capsys):
    llm = LLM(model_dir, dtype="fp32")
    want = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].text
    assert main(["generate", str(model_dir), "--prompt", "Hello", "--max-tokens", "6", "--temperature", "0",
                 "--dtype", "fp32", "--speculative", "1"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["generate", str(model_dir), "--prompt", "Hello", "--max-tokens", "3", "--n", "2",
                 "--seed", "1"]) == 0
    assert capsys.readouterr().out.count("--- completion") == 2
    assert main(["generate", str(model_dir), "--prompt", "Hello", "--temperature", "-1"]) == 2
    assert "SamplingParams.temperature" in capsys.readouterr().err


def test_chat_command_keeps_history(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi there\nAnd again?\n/exit\n"))
    assert main(["chat", str(model_dir), "--max-tokens", "4", "--temperature", "0",
                 "--max-thinking-tokens", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("[thinking]") == 2 and out.count("> ") == 3
