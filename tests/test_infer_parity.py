"""The engine's greedy tokens equal transformers' `generate` on the same random checkpoint (its own KV cache)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nanoseek import ModelConfig, Transformer, save_pretrained  # noqa: E402
from nanoseek.infer import LLM, SamplingParams  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def test_greedy_equals_transformers_generate(tmp_path):
    torch.manual_seed(0)
    # a larger init than the preset's 0.006, so that logits are far from ties between the two implementations
    model = Transformer(ModelConfig.preset("tiny").replace(initializer_range=0.1))
    save_pretrained(model, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 1024, (n,), generator=g).tolist() for n in (4, 13)]
    n_new = 8
    outs = LLM(tmp_path / "m", dtype="fp32", speculative=1).generate(
        prompts, SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True))
    hf.generation_config.eos_token_id = None  # as ignore_eos: EOS is a token like any other, never a stop
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=n_new, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        # all n_new tokens of both (the comparison once stopped at transformers' first EOS: maybe one token)
        assert len(ref) == n_new and list(o.outputs[0].token_ids) == ref
