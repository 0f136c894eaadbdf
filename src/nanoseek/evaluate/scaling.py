"""Inference-time compute on a built-in task: accuracy as a function of how much the model may generate.

Two axes, each on the same distinct held-out problems:

* samples per problem: n = max(k) samples at `temperature` (DeepSeek-R1 samples at 0.6), then for each k the
  unbiased pass@k (at least one of k right: what a verifier could pick) and maj@k (self-consistency: the majority
  answer of k samples, scored; R1's cons@64), and the greedy accuracy for reference;
* thinking budget: greedy decoding with `max_thinking_tokens` = B (budget forcing: after B tokens inside
  `<think>` the engine writes `</think>` and the model must answer), for each B, and without a budget.

`run` returns the numbers, `markdown` a table; `nanoseek.report.charts.inference_compute_chart` draws them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KS = (1, 2, 4, 8, 16)
BUDGETS = (0, 4, 8, 16, 32, None)  # None: no budget


def run(model: Any, task: str, *, tokenizer: Any = None, levels: Sequence[int] | None = None, limit: int = 500,
        ks: Sequence[int] = KS, budgets: Sequence[int | None] = BUDGETS, temperature: float = 0.6,
        max_tokens: int = 96, seed: int = 0) -> dict[str, Any]:
    """{"samples": {"k": [...], "pass@k": [...], "maj@k": [...], "greedy": x, ...}, "budget": {...}}."""
    from .runner import evaluate
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"inference-time compute: every k must be >= 1 (got {ks})")
    common = dict(tokenizer=tokenizer, limit=limit, levels=list(levels) if levels else None, max_tokens=max_tokens)
    sampled = evaluate(model, [task], n=ks[-1], k=ks, temperature=temperature, seed=seed, **common)
    res = sampled["results"][task]
    samples = {"k": ks, "pass@k": [res[f"pass@{k}"] for k in ks],
               "maj@k": [res["accuracy"] if k == 1 else res[f"maj@{k}"] for k in ks],
               "temperature": temperature, "examples": res["examples"]}
    budget: dict[str, Any] = {"max_thinking_tokens": [], "accuracy": [], "ci95": []}
    for b in budgets:
        r = evaluate(model, [task], max_thinking_tokens=b, **common)["results"][task]
        budget["max_thinking_tokens"].append(b)
        budget["accuracy"].append(r["accuracy"])
        budget["ci95"].append(r.get("ci95"))
    samples["greedy"] = budget["accuracy"][budgets.index(None)] if None in budgets else None
    return {"task": task, "levels": common["levels"], "samples": samples, "budget": budget,
            "max_tokens": max_tokens}


def markdown(result: dict[str, Any]) -> str:
    s, b = result["samples"], result["budget"]
    lines = [f"Accuracy on {s['examples']} held-out {result['task']} problems as the model may generate more.", "",
             f"Samples per problem (temperature {s['temperature']}; greedy accuracy "
             f"{s['greedy']:.3f}):" if s.get("greedy") is not None else "Samples per problem:", "",
             "| k | pass@k | maj@k |", "|---|---|---|"]
    lines += [f"| {k} | {p:.3f} | {m:.3f} |" for k, p, m in zip(s["k"], s["pass@k"], s["maj@k"])]
    lines += ["", "Thinking budget (greedy; after the budget the engine closes the think block):", "",
              "| max_thinking_tokens | accuracy | 95% CI |", "|---|---|---|"]
    for t, a, ci in zip(b["max_thinking_tokens"], b["accuracy"], b["ci95"]):
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"| {'none' if t is None else t} | {a:.3f} | {ci_s} |")
    return "\n".join(lines) + "\n"
