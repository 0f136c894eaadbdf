"""What `nanoseek generate` and `nanoseek chat` run: argument definitions and the terminal loops."""
from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from .llm import LLM
from .sampling import SamplingParams


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (Hugging Face layout, with tokenizer files)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None, help="per-request seed (same seed, same output)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="reasoning budget: then `</think>` is forced and the answer follows")
    p.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="MTP speculative decoding with K draft tokens per step (0 = off)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--cache-budget", default=None, help="bytes for the KV cache, e.g. 512MiB")


def _llm(a: argparse.Namespace) -> LLM:
    return LLM(a.model, speculative=a.speculative, dtype=a.dtype, device=a.device, cache_budget=a.cache_budget)


def _params(a: argparse.Namespace, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, max_tokens=a.max_tokens,
                          seed=a.seed, stop=a.stop, max_thinking_tokens=a.max_thinking_tokens, **kw)


def run_generate(a: argparse.Namespace, out: TextIO | None = None) -> int:
    """Complete one prompt: streamed to the terminal when n = 1, else the n completions one after another."""
    out = out or sys.stdout
    llm = _llm(a)
    prompt: Any = a.prompt
    if a.raw_ids:
        try:
            prompt = [int(x) for x in a.prompt.replace(",", " ").split()]
        except ValueError:
            raise ValueError("--prompt: with --ids expected token ids separated by spaces or commas") from None
    params = _params(a, n=a.n)
    if a.n == 1:
        last = None
        for o in llm.stream(prompt, params):
            for c in o.outputs:
                out.write(c.text)
                out.flush()
                last = c
        out.write("\n")
        if a.verbose and last is not None:
            print(f"[finish_reason={last.finish_reason}]", file=sys.stderr)
        return 0
    result = llm.generate(prompt, params)[0]
    for c in result.outputs:
        out.write(f"--- completion {c.index} ({c.finish_reason})\n{c.text}\n")
    return 0


def run_chat(a: argparse.Namespace, inp: TextIO | None = None, out: TextIO | None = None) -> int:
    """Interactive multi-turn chat: reasoning streamed apart from the answer. /reset clears the history,
    /exit (or end of input) quits."""
    inp, out = inp or sys.stdin, out or sys.stdout
    from ..reasoning import ReasoningParser
    llm = _llm(a)
    tok = llm.tokenizer
    if tok is None:
        raise ValueError(f"{a.model}: no tokenizer.json, so no chat template")
    history: list[dict[str, str]] = []
    if a.system:
        history.append({"role": "system", "content": a.system})
    params = _params(a)
    out.write("nanoseek chat: /reset clears the history, /exit quits\n")
    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return 0
        line = line.strip()
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = history[:1] if a.system else []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        text = tok.apply_chat_template(history, add_generation_prompt=True)
        prompt = {"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)}
        stream = ReasoningParser.for_prompt(text).stream()
        answer, mode = "", None

        def show(reasoning: str | None, content: str | None) -> None:
            nonlocal answer, mode
            if reasoning:
                if mode != "think":
                    out.write("[thinking] ")
                    mode = "think"
                out.write(reasoning)
            if content:
                if mode != "answer":
                    out.write("\n[answer] " if mode == "think" else "[answer] ")
                    mode = "answer"
                out.write(content)
                answer += content
            out.flush()
        for o in llm.stream(prompt, params):
            for c in o.outputs:
                show(*stream.feed(c.text))
        show(*stream.finish())
        out.write("\n")
        history.append({"role": "assistant", "content": answer})
