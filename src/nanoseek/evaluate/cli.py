"""What `nanoseek eval` runs: argument definitions and the printout (markdown table on stdout, JSON with --out)."""
from __future__ import annotations

import argparse
import sys
from typing import TextIO


def _ints(name: str):
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected comma-separated integers such as 1,4 (got {text!r})")
    return parse


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (Hugging Face layout, with tokenizer files)")
    p.add_argument("--task", action="append", required=True, metavar="TASK",
                   help="repeatable: a built-in task (arithmetic, countdown, linear: accuracy on its test split), "
                        "a .txt/.parquet/.jsonl-with-`text` file (perplexity, bits per byte), a question/answer "
                        ".jsonl (accuracy, GSM8K `#### X` answers), or ppl:FILE / qa:FILE to force the kind")
    p.add_argument("--limit", type=int, default=None,
                   help="problems per accuracy task (default 100), documents per perplexity file (default all)")
    p.add_argument("--levels", type=_ints("--levels"), default=None, help="built-in task levels, e.g. 1,2 (default all)")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--k", type=_ints("--k"), default=None, help="k values of pass@k and maj@k (default 1,n)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy) for --n 1, else 0.6")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=512, help="tokens generated at most per sample")
    p.add_argument("--seed", type=int, default=0, help="problem i is sampled with seed + i")
    p.add_argument("--chat", choices=["auto", "yes", "no"], default="auto",
                   help="prompt through the chat template (auto: when the tokenizer has one)")
    p.add_argument("--answer-pattern", default=None, metavar="REGEX",
                   help="final-answer regex for question/answer files (last match; group 1 if any); default: "
                        "\\boxed{X}, #### X or 'the answer is X', whichever comes last")
    p.add_argument("--instruction", action="store_true",
                   help="append the answer-format instruction to built-in task prompts")
    p.add_argument("--max-length", type=int, default=None, help="perplexity window (default min(context, 2048))")
    p.add_argument("--stride", type=int, default=None, help="perplexity: new tokens scored per window "
                                                            "(default the window: disjoint windows)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward for perplexity")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--log-samples", action="store_true", help="include every completion in the JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_eval(a: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout  # looked up per call (tests replace sys.stdout)
    from ..files import write_json
    from .runner import evaluate, markdown_table
    if a.n < 1:
        raise ValueError(f"--n: must be >= 1 (got {a.n})")
    if a.limit is not None and a.limit < 1:
        raise ValueError(f"--limit: must be >= 1 (got {a.limit})")
    report = evaluate(a.model, a.task, limit=a.limit, levels=a.levels, n=a.n, k=a.k, temperature=a.temperature,
                      top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed, chat=a.chat,
                      answer_pattern=a.answer_pattern, instruction=a.instruction, max_length=a.max_length,
                      stride=a.stride, batch_size=a.batch_size, dtype=a.dtype, device=a.device,
                      progress=not a.no_progress, log_samples=a.log_samples)
    out.write(markdown_table(report) + "\n")
    if a.out:
        path = write_json(a.out, report)
        out.write(f"\nwrote {path}\n")
    return 0
