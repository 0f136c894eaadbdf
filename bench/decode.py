"""Decode speed of the nanoseek engine against transformers' `generate` (and optionally vLLM-CPU) on the same
weights, in the same run.

    python bench/decode.py                                   # small preset, random weights, batch 1 and 32
    python bench/decode.py --shape vllm --vllm-python /tmp/vllm-env/bin/python   # + vLLM-CPU, its MLA shape
    python bench/decode.py --model runs/x/model --speculative 1 --append         # a trained checkpoint, + MTP

Every contender reads one checkpoint written by nanoseek.save_pretrained (transformers and vLLM load it unchanged).
Prompts are --prompt-len random tokens; --new-tokens are generated greedily with EOS banned until then (min_tokens /
min_new_tokens), so all produce the same number of tokens and the same tokens up to numerical near-ties. Runs alternate between contenders (ABAB..)
so that load changes on a shared machine hit all alike; the best of --repeats is kept. Reported per batch size:
- TTFT: from the call to the first token of every request (the batched prefill);
- decode tok/s: batch × (new_tokens − 1) / (total − TTFT);  total tok/s: batch × new_tokens / total.
Also: KV-cache bytes per token (nanoseek's latent cache, transformers' cache as measured after generate).
`--shape vllm` builds the model shape vLLM-CPU's MLA kernel accepts (kv_lora_rank 512, qk_rope_head_dim 64):
6 layers, 256 wide, as in the issue's vLLM measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table  # noqa: E402

Result = tuple[float, float, dict]  # ttft, total, extra


def make_checkpoint(shape: str, out: Path) -> Path:
    from nanoseek import ModelConfig, Transformer, save_pretrained
    if shape == "vllm":
        cfg = ModelConfig(
            model_type="deepseek_v3", vocab_size=8192, hidden_size=256, intermediate_size=768,
            moe_intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, q_lora_rank=128, kv_lora_rank=512,
            qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64, n_routed_experts=16, n_group=4, topk_group=2,
            num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, num_nextn_predict_layers=1,
            max_position_embeddings=4096, rope_scaling=None, bos_token_id=0, eos_token_id=1)
    else:
        cfg = ModelConfig.preset(shape)
    torch.manual_seed(0)
    save_pretrained(Transformer(cfg).eval(), out)
    return out


def nanoseek_runner(path: Path, dtype: torch.dtype, new: int, speculative: int, max_num_seqs: int,
                    ignore_eos: bool = False) -> Callable[[list[list[int]]], Result]:
    from nanoseek.infer import LLM, SamplingParams
    llm = LLM(path, dtype=dtype, speculative=speculative or None, max_num_seqs=max_num_seqs,
              enable_prefix_caching=False)  # the same prompts are run repeatedly: no cache hits
    llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warm-up
    # EOS banned, as transformers' min_new_tokens does; or generated and ignored (the text goes on after it)
    sp = SamplingParams(temperature=0, max_tokens=new, min_tokens=0 if ignore_eos else new, ignore_eos=ignore_eos)

    def run(prompts: list[list[int]]) -> Result:
        t = time.perf_counter()
        outs = llm.generate(prompts, sp)
        total = time.perf_counter() - t
        ttft = max(o.metrics.first_token_time for o in outs) - min(o.metrics.arrival_time for o in outs)
        assert all(len(o.outputs[0].token_ids) == new for o in outs)
        m = [o.metrics for o in outs]
        drafts = sum(x.spec_num_draft_tokens for x in m)
        return ttft, total, {
            "bytes_per_token": llm.engine.cache.bytes_per_token,
            "acceptance": sum(x.spec_num_accepted_tokens for x in m) / drafts if drafts else None,
            "tokens_per_step": sum(x.num_generated_tokens for x in m) / max(1, sum(x.num_steps for x in m)),
            "tokens": [o.outputs[0].token_ids for o in outs]}
    return run


def transformers_runner(path: Path, dtype: torch.dtype, new: int) -> Callable[[list[list[int]]], Result]:
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()

    def gen(ids: torch.Tensor, n: int):
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    gen(torch.tensor([[5, 6, 7]]), 2)  # warm-up

    def run(prompts: list[list[int]]) -> Result:
        ids = torch.tensor(prompts)
        t = time.perf_counter()
        gen(ids, 1)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = gen(ids, new)
        total = time.perf_counter() - t
        nbytes = sum(x.nbytes for layer in getattr(out.past_key_values, "layers", [])
                     for x in (getattr(layer, "keys", None), getattr(layer, "values", None))
                     if isinstance(x, torch.Tensor))
        seq = ids.shape[1] + new - 1
        return ttft, total, {"bytes_per_token": nbytes // (len(prompts) * seq) if nbytes else None,
                             "tokens": out.sequences[:, ids.shape[1]:].tolist()}
    return run


def vllm_runner(python: str, path: Path, dtype: str, new: int, prompts: dict[int, list[list[int]]],
                repeats: int, threads: int | None) -> dict[int, Result]:
    """vLLM lives in its own environment: run bench/decode_vllm.py there, once, for every batch size. Its OpenMP
    threads are bound to cores 0..threads-1 (by default vLLM binds all cores but one, kept for its front end)."""
    pfile = Path(tempfile.mkdtemp()) / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    cmd = [python, str(Path(__file__).with_name("decode_vllm.py")), str(path), str(pfile), "--dtype", dtype,
           "--new-tokens", str(new), "--repeats", str(repeats)]
    env = dict(os.environ)
    if threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if threads == 1 else f"0-{threads - 1}"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"vLLM run failed:\n{out.stderr[-3000:]}")
    res = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
    return {int(b): (r["ttft"], r["total"], {"tokens": r["tokens"]}) for b, r in res.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model directory (default: a random checkpoint of --shape)")
    ap.add_argument("--shape", default="small", help="a preset name, or 'vllm' (see above)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender and batch; the best is kept")
    ap.add_argument("--speculative", type=int, default=0, help="also run nanoseek with K MTP draft tokens")
    ap.add_argument("--vllm-python", help="python of an environment with vllm-cpu: adds vLLM as a contender")
    ap.add_argument("--eos", choices=["ban", "ignore"], default="ban",
                    help="ban: EOS never generated (all contenders alike); ignore: nanoseek generates it and goes on "
                         "(a trained model's natural text; transformers still bans it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="compute threads for every contender (on a shared machine, 1 avoids OpenMP stalls)")
    ap.add_argument("--append", action="store_true", help="append the section to BENCHMARKS.md")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    tmp = tempfile.TemporaryDirectory()
    path = Path(a.model) if a.model else make_checkpoint(a.shape, Path(tmp.name) / "model")
    from nanoseek import ModelConfig
    cfg = ModelConfig.from_pretrained(path)
    ign = a.eos == "ignore"
    runners = {"nanoseek": nanoseek_runner(path, dtype, a.new_tokens, 0, max(a.batch), ign),
               "transformers": transformers_runner(path, dtype, a.new_tokens)}
    if a.speculative:
        runners[f"nanoseek + MTP k={a.speculative}"] = nanoseek_runner(path, dtype, a.new_tokens, a.speculative,
                                                                       max(a.batch), ign)
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(2, cfg.vocab_size, (b, a.prompt_len), generator=g).tolist() for b in a.batch}
    results: dict[tuple[str, int], Result] = {}
    for b in a.batch:
        names = list(runners)
        for r in range(a.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                res = runners[name](prompts[b])
                if (name, b) not in results or res[1] < results[(name, b)][1]:
                    results[(name, b)] = res
            print(f"batch {b}, round {r + 1}: " + ", ".join(f"{n} {results[(n, b)][1]:.2f}s" for n in names),
                  flush=True)
    if a.vllm_python:
        for b, res in vllm_runner(a.vllm_python, path, a.dtype, a.new_tokens, prompts, a.repeats,
                                  a.threads).items():
            results[("vLLM-CPU", b)] = res
    names = list(dict.fromkeys(n for n, _ in results))
    rows = []
    for b in a.batch:
        for name in names:
            ttft, total, extra = results[(name, b)]
            notes = []
            if extra.get("acceptance") is not None:
                notes.append(f"acceptance {extra['acceptance']:.2f}, {extra['tokens_per_step']:.2f} tokens/step")
            if name != "transformers" and "tokens" in extra:
                same = extra["tokens"] == results[("transformers", b)][2]["tokens"]
                notes.append("greedy tokens = transformers'" if same else "greedy tokens differ from transformers'")
            rows.append([name, str(b), f"{ttft * 1000:.0f}", f"{b * (a.new_tokens - 1) / (total - ttft):.0f}",
                         f"{b * a.new_tokens / total:.0f}", "; ".join(notes)])
    ratio_rows = []
    for b in a.batch:
        ours = results[("nanoseek", b)]
        for other in [n for n in names if not n.startswith("nanoseek")]:
            base = results[(other, b)]
            dec = (base[1] - base[0]) / (ours[1] - ours[0])
            ratio_rows.append([f"nanoseek vs {other}", str(b), f"{base[0] / ours[0]:.2f}x", f"{dec:.2f}x",
                               f"{base[1] / ours[1]:.2f}x"])
    ours_b = results[("nanoseek", a.batch[0])][2]["bytes_per_token"]
    hf_b = results[("transformers", a.batch[0])][2]["bytes_per_token"]
    naive = cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * dtype.itemsize
    m = machine_info()
    what = a.model or (f"`{a.shape}` preset" if a.shape != "vllm" else "vLLM-CPU MLA shape") + ", random weights"
    text = "\n".join([
        f"## Inference: decode speed ({what}, {a.dtype})",
        "",
        f"`python bench/decode.py {' '.join(sys.argv[1:])}` — {m['date']}; {m['cpu']}, {m['cores']} cores "
        f"({m['matrix_isa']}), torch {m['torch']}, transformers {m['transformers']}, {m['threads']} threads, "
        f"load average {m['load_avg']} (a shared machine: other jobs were running).",
        f"Model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, kv_lora_rank {cfg.kv_lora_rank}, "
        f"qk_rope_head_dim {cfg.qk_rope_head_dim}, {cfg.n_routed_experts} experts (top-{cfg.num_experts_per_tok}). "
        f"Prompts of {a.prompt_len} random tokens, {a.new_tokens} new tokens, greedy, EOS "
        f"{'banned' if a.eos == 'ban' else 'ignored by nanoseek (banned by transformers)'}; contenders "
        f"alternate, best of {a.repeats}.",
        "",
        markdown_table(["engine", "batch", "TTFT ms", "decode tok/s", "total tok/s", "notes"], rows),
        "",
        markdown_table(["ratio (higher = nanoseek faster)", "batch", "TTFT", "decode", "total"], ratio_rows),
        "",
        f"KV cache per token: nanoseek {ours_b:,} B (the latent: {cfg.num_hidden_layers} layers x "
        f"({cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}) x {dtype.itemsize} B); transformers {m['transformers']} "
        + (f"{hf_b:,} B as measured (its DeepseekV3 cache now also holds the latent)" if hf_b else "not measured")
        + f"; per-head keys and values would take {naive:,} B ({naive / ours_b:.1f}x).",
        "",
    ])
    print("\n" + text)
    if a.append:
        bench = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        with open(bench, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"appended to {bench}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
