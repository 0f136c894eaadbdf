"""vLLM-CPU side of bench/decode.py: run in vLLM's own environment (see bench/vllm_load.py for its set-up).

    /tmp/vllm-env/bin/python bench/decode_vllm.py MODEL_DIR PROMPTS.json [--dtype float32]

PROMPTS.json: {batch: [[token ids], ...]}. Prints one JSON line {batch: {"ttft": s, "total": s, "tokens": [...]}}:
the same measurement as bench/decode.py (greedy, EOS banned, TTFT from a 1-token generate, best of --repeats).
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile (vLLM's default compiles)")
    a = ap.parse_args()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(a.prompts) as f:
        batches = {int(b): p for b, p in json.load(f).items()}
    with open(f"{a.model}/config.json") as f:
        eos = json.load(f).get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    longest = max(len(p) for ps in batches.values() for p in ps)
    llm = LLM(a.model, dtype=a.dtype, max_model_len=longest + a.new_tokens + 16, max_num_seqs=max(batches),
              enable_prefix_caching=False, seed=0, skip_tokenizer_init=True, enforce_eager=a.enforce_eager,
              kv_cache_memory_bytes=256 << 20)  # else it reserves 92% of RAM
    out = {}
    for b, ids in batches.items():
        prompts = [TokensPrompt(prompt_token_ids=p) for p in ids]
        # without a tokenizer vLLM knows no EOS: name it, so that min_tokens bans it as the others do
        kw = dict(temperature=0, detokenize=False, stop_token_ids=eos)
        first = SamplingParams(max_tokens=1, min_tokens=1, **kw)
        full = SamplingParams(max_tokens=a.new_tokens, min_tokens=a.new_tokens, **kw)
        llm.generate(prompts[:1], first, use_tqdm=False)  # warm-up
        best = None
        for _ in range(a.repeats):
            t = time.perf_counter()
            llm.generate(prompts, first, use_tqdm=False)
            ttft = time.perf_counter() - t
            t = time.perf_counter()
            res = llm.generate(prompts, full, use_tqdm=False)
            total = time.perf_counter() - t
            if best is None or total < best["total"]:
                best = {"ttft": ttft, "total": total, "tokens": [list(r.outputs[0].token_ids) for r in res]}
        out[b] = best
    print(json.dumps(out))


if __name__ == "__main__":
    main()
