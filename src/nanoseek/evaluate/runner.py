"""`nanoseek eval`: run a list of evaluation tasks on one model and collect the results.

A task is written as
    arithmetic | countdown | linear | package.module:Class   a built-in (or user) Task: accuracy on its test split
    FILE.txt | FILE.parquet | FILE.jsonl with `text`          perplexity and bits per byte
    FILE.jsonl with question/answer fields                    accuracy of final answers (GSM8K style)
    ppl:FILE | qa:FILE                                        the same, with the kind forced
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import jsonl_values
from . import accuracy
from .perplexity import read_documents, score_documents

KINDS = ("ppl", "qa", "task")


@dataclass
class TaskSpec:
    name: str  # as written by the user: the key of its results
    kind: str  # one of KINDS
    target: str  # file path or task name


def _jsonl_kind(path: Path) -> str:
    for n, row in jsonl_values(path):  # the first row decides
        if isinstance(row, dict) and "text" in row:
            return "ppl"
        if isinstance(row, dict) and any(k in row for k in accuracy.QUESTION_FIELDS):
            return "qa"
        raise ValueError(f"{path}:{n}: neither a `text` document nor a question/answer row "
                         f"(fields: {', '.join(row) if isinstance(row, dict) else type(row).__name__}); "
                         f"write ppl:{path} or qa:{path} to say which")
    raise ValueError(f"{path}: empty file")


def parse_task(spec: str) -> TaskSpec:
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("ppl", "qa"):
        if not Path(rest).is_file():
            raise FileNotFoundError(f"task {spec!r}: no such file {rest!r}")
        return TaskSpec(spec, kind, rest)
    p = Path(spec)
    if p.is_file():
        if p.suffix in (".txt", ".parquet"):
            return TaskSpec(spec, "ppl", spec)
        if p.suffix == ".jsonl":
            return TaskSpec(spec, _jsonl_kind(p), spec)
        raise ValueError(f"task {spec!r}: unsupported file type {p.suffix or '(none)'!r} (.txt, .jsonl, .parquet)")
    from .. import tasks
    if spec in tasks.names() or ":" in spec:
        return TaskSpec(spec, "task", spec)
    raise ValueError(f"task {spec!r}: not a file and not a built-in task ({', '.join(tasks.names())})")


def _load(model: str | os.PathLike | nn.Module, tokenizer: Any, dtype: Any, device: Any) -> tuple[nn.Module, Any]:
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("evaluate: a Transformer instance needs a tokenizer")
    else:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
        from ..checkpoint import load_pretrained
        model = load_pretrained(path, dtype=dtype, device=device, mtp=False)
        tokenizer = tokenizer if tokenizer is not None else path
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..tokenizer import Tokenizer
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    return model.eval(), tokenizer


def _default_max_length(model: nn.Module, tokenizer: Any) -> int:
    limits = [model.config.max_position_embeddings, 2048]
    if getattr(tokenizer, "model_max_length", None):
        limits.append(int(tokenizer.model_max_length))
    return min(limits)


def evaluate(model: str | os.PathLike | nn.Module, tasks: list[str], *, tokenizer: Any = None,
             limit: int | None = None, levels: list[int] | None = None, n: int = 1, k: list[int] | None = None,
             temperature: float | None = None, top_p: float = 1.0, max_tokens: int = 256, seed: int = 0,
             chat: str | bool = "auto", answer_pattern: str | None = None, instruction: bool = False,
             max_length: int | None = None, stride: int | None = None, batch_size: int = 8,
             dtype: Any = None, device: Any = None, max_num_seqs: int = 64, progress: bool = False,
             log_samples: bool = False, llm: Any = None, max_thinking_tokens: int | None = None) -> dict[str, Any]:
    """Evaluate `model` (a model directory, or a Transformer with `tokenizer`) on `tasks`; returns
    {"model", "date", "settings", "results": {task: metrics}}. See the module docstring for task names.

    limit: problems per accuracy task (default 100) or documents per perplexity file (default all).
    n: samples per problem; k: the k of pass@k and maj@k (default 1 and n). temperature: default 0 (greedy) for
    n = 1, else 0.6 (DeepSeek-R1's recommended sampling temperature). chat: "auto" uses the chat template when the
    tokenizer has one. max_length/stride: perplexity windows (default: min(model context, 2048), stride = max_length).
    llm: an existing nanoseek.LLM over `model` to generate with (default: one is built when a task needs it).
    max_thinking_tokens: a reasoning budget (the engine closes the think block after that many tokens).
    """
    specs = [parse_task(t) for t in tasks]
    if not specs:
        raise ValueError("evaluate: no tasks")
    ks = sorted(set(k or [1, n]))
    bad = [x for x in ks if not 1 <= x <= n]
    if bad:
        raise ValueError(f"k: every k must lie in 1..n={n} (got {bad}); raise --n to estimate pass@{max(bad)}")
    if temperature is None:
        temperature = 0.0 if n == 1 else 0.6
    model_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    model, tokenizer = _load(model, tokenizer, dtype, device)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    use_chat = has_template if chat == "auto" else chat in (True, "yes", "on", "true")
    if use_chat and not has_template:
        raise ValueError("chat: the tokenizer has no chat template (use chat='no')")
    max_length = max_length or _default_max_length(model, tokenizer)
    settings = {"n": n, "k": ks, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "seed": seed, "chat": use_chat, "answer_pattern": answer_pattern, "limit": limit,
                "levels": levels, "max_thinking_tokens": max_thinking_tokens, "max_length": max_length,
                "stride": stride or max_length,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    results: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "ppl":
            docs = read_documents(spec.target, limit)
            res = score_documents(model, tokenizer, docs, max_length=max_length, stride=stride,
                                  batch_size=batch_size, progress=progress, desc=spec.name)
            results[spec.name] = {"type": "perplexity", **res}
            continue
        if llm is None:
            from ..infer import LLM
            llm = LLM(model, tokenizer, max_num_seqs=max(max_num_seqs, n), seed=seed)
        from ..infer import SamplingParams
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                max_thinking_tokens=max_thinking_tokens)
        if spec.kind == "task":
            task, problems = accuracy.builtin_problems(spec.target, limit or 100, levels, seed, instruction)
            from .. import rewards
            score = lambda m, p, task=task: task.score(m, p.example)  # noqa: E731
            extract = rewards.final_answer
        else:
            problems = accuracy.qa_problems(spec.target, limit or 100)
            matcher = accuracy.AnswerMatcher(answer_pattern)
            score = lambda m, p, matcher=matcher: matcher.score(m, p.gold)  # noqa: E731
            extract = matcher.extract
        prompts = [accuracy.render_prompt(tokenizer, p.question, use_chat) for p in problems]
        comps = accuracy.sample(llm, prompts, params, seed=seed, progress=progress, desc=spec.name)
        res = accuracy.score_problems(problems, prompts, comps, score, extract, ks, use_chat, log_samples)
        results[spec.name] = {"type": "accuracy", **res}
    return {"model": model_name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "settings": settings, "results": results}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def markdown_table(report: dict[str, Any]) -> str:
    """One row per (task, metric)."""
    lines = ["| task | metric | value | examples |", "|---|---|---|---|"]
    for task, res in report["results"].items():
        if res["type"] == "perplexity":
            rows = [("bits_per_byte", res["bits_per_byte"]), ("perplexity", res["perplexity"]),
                    ("nll_per_token", res["nll_per_token"])]
            count = f"{res['documents']} docs, {res['tokens']} tokens, {res['bytes']} bytes"
        else:
            rows = [(m, res[m]) for m in res if m == "accuracy" or m.startswith(("pass@", "maj@"))]
            count = f"{res['examples']} x {res['samples_per_example']} samples"
            if res.get("unscorable"):
                count += f" ({res['unscorable']} unscorable)"
        for metric, value in rows:
            lines.append(f"| {task} | {metric} | {_fmt(value)} | {count} |")
    return "\n".join(lines)
