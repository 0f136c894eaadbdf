r"""Accuracy of generated answers: built-in tasks (their test split) and question/answer jsonl files.

Each problem is prompted once with `SamplingParams(n=...)` (the n samples share the prompt's prefill) on the
inference engine. A sample is scored by

* a built-in task's own verifier (`Task.score`: exact answers, or checking a countdown expression), or
* for a jsonl file, its final answer against the gold: by default `nanoseek.rewards`' convention (the last
  `\boxed{X}`, GSM8K's `#### X` or "The answer is X" after the reasoning; a gold written as `... #### 72` is read
  the same way), or the last match of `answer_pattern` (its first group if it has one). Numbers compare exactly
  (`0.50` == `1/2`), anything else as text without spaces, `$` or case.

With a chat template the prompt is the rendered user turn; the completion is split at `</think>` as `LLM.chat`
does, and only the text after the reasoning can hold the answer. Without one the prompt is the question and a
newline, the layout of the built-in tasks' pretraining documents.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import rewards
from ..infer.voting import majority_vote
from . import metrics

QUESTION_FIELDS = ("question", "prompt", "problem", "input")
ANSWER_FIELDS = ("answer", "final_answer", "target", "output")


@dataclass
class Problem:
    id: str
    question: str
    gold: Any
    example: dict[str, Any] = field(default_factory=dict)  # the fields a task's verifier reads


class AnswerMatcher:
    """Final-answer extraction and comparison for question/answer files."""

    def __init__(self, pattern: str | None = None):
        try:
            self.regex = re.compile(pattern) if pattern else None
        except re.error as e:
            raise ValueError(f"answer_pattern: invalid regular expression {pattern!r}: {e}") from None

    def extract(self, completion: Any) -> str | None:
        if self.regex is None:
            return rewards.final_answer(completion)
        text = rewards.answer_region(rewards.completion_text(completion))
        found = list(self.regex.finditer(text))
        if not found:
            return None
        m = found[-1]
        ans = m.group(1) if m.re.groups else m.group(0)
        return ans.strip() if ans and ans.strip() else None

    @staticmethod
    def gold_answer(gold: Any) -> str | None:
        if gold is None or isinstance(gold, bool):
            return None
        s = str(gold).strip()
        return (rewards.extract_answer(s) or s) if s else None

    def score(self, completion: Any, gold: Any) -> float | None:
        g = self.gold_answer(gold)
        if g is None:
            return None
        p = self.extract(completion)
        return 0.0 if p is None else float(canonical(p) == canonical(g))


def canonical(answer: str) -> str:
    """A form under which equal answers are equal strings: exact numbers as fractions, else compact lower text."""
    num = rewards.parse_number(answer)
    if num is not None:
        return str(num)
    return re.sub(r"\s+", "", answer.strip().strip("$").rstrip(".")).lower()


# ------------------------------------------------------------------------------------------------ problems
def builtin_problems(name: str, limit: int, levels: Sequence[int] | None = None, seed: int = 0,
                     instruction: bool = False):
    """(task, problems): up to `limit` distinct problems of the task's test split (fewer when the levels' test
    problems run out: then the whole test split of those levels is evaluated)."""
    from .. import tasks
    task = tasks.get(name)
    lv = list(levels) if levels else list(range(1, task.num_levels + 1))
    stream = task.iter_examples(split="test", level=lv, seed=seed, unique=True, instruction=instruction)
    problems = []
    try:
        while len(problems) < limit:
            ex = next(stream)
            problems.append(Problem(ex["id"], ex["prompt"], ex["answer"], ex))
    except ValueError:  # the test split of these levels is exhausted
        pass
    if not problems:
        raise ValueError(f"task {name!r}: no test problems at levels {lv}")
    return task, problems


def _field(row: dict[str, Any], wanted: str | None, candidates: Sequence[str], what: str, where: str) -> Any:
    if wanted:
        if wanted not in row:
            raise ValueError(f"{where}: missing field {wanted!r}")
        return row[wanted]
    for f in candidates:
        if f in row:
            return row[f]
    raise ValueError(f"{where}: no {what} field (looked for {', '.join(candidates)})")


def qa_problems(path: str | Path, limit: int | None = None, question_field: str | None = None,
                answer_field: str | None = None) -> list[Problem]:
    """Problems of a jsonl file with a question (`question`/`prompt`/`problem`/`input`) and a gold answer
    (`answer`/`final_answer`/`target`/`output`) per line, e.g. GSM8K's `{"question", "answer": "... #### 72"}`.
    Lines past the first `limit` problems are not read."""
    from ..data.corpora import jsonl_objects  # here: the data package (tokenizing, shards) only for jsonl files
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    problems: list[Problem] = []
    for n, row in itertools.islice(jsonl_objects(p), limit):
        where = f"{p}:{n}"
        q = _field(row, question_field, QUESTION_FIELDS, "question", where)
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where}: the question must be a non-empty string")
        a = _field(row, answer_field, ANSWER_FIELDS, "answer", where)
        problems.append(Problem(str(row.get("id", n)), q, a, row))
    if not problems:
        raise ValueError(f"{p}: no problems")
    return problems


# ------------------------------------------------------------------------------------------------ sampling
def render_prompt(tokenizer: Any, question: str, chat: bool) -> dict[str, Any]:
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}
    text = question + "\n"
    return {"prompt": text, "prompt_token_ids": tokenizer.encode(text)}


def sample(llm: Any, prompts: Sequence[Any], params: Any, *, seed: int | None = 0,
           progress: bool = False, desc: str = "generate") -> list[list[str]]:
    """The n completions of every prompt, in order, on an engine (`add_request`/`step`/`abort_request`).
    `params`: one SamplingParams for all, or one per prompt. Prompt i gets seed `seed + i`, so its samples do not
    depend on which other prompts share a batch."""
    per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"sample: {len(per_prompt)} SamplingParams for {len(prompts)} prompts")
    ids = []
    try:
        for i, (p, sp) in enumerate(zip(prompts, per_prompt)):
            sp = sp.clone(output_kind="final_only", seed=None if seed is None else seed + i)
            ids.append(llm.add_request(p, sp))
    except Exception:
        llm.abort_request(ids)
        raise
    index = {rid: i for i, rid in enumerate(ids)}
    done: dict[int, list[str]] = {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(ids), desc=desc, unit="prompt", dynamic_ncols=True)
    try:
        while len(done) < len(ids):
            for out in llm.step():
                if out.finished and out.request_id in index:
                    done[index[out.request_id]] = [c.text for c in out.outputs]
                    if bar is not None:
                        bar.update(1)
    except BaseException:
        llm.abort_request([rid for rid, i in index.items() if i not in done])
        raise
    finally:
        if bar is not None:
            bar.close()
    return [done[i] for i in range(len(ids))]


def as_message(prompt_text: str, completion: str, chat: bool) -> Any:
    """What the verifiers score: with a chat prompt, the assistant message split at `</think>`."""
    if not chat:
        return completion
    from ..reasoning import ReasoningParser
    reasoning, content = ReasoningParser.for_prompt(prompt_text).parse(completion)
    msg: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


# ------------------------------------------------------------------------------------------------ metrics
def score_problems(problems: Sequence[Problem], prompts: Sequence[dict[str, Any]], completions: Sequence[list[str]],
                   score: Callable[[Any, Problem], float | None], extract: Callable[[Any], str | None],
                   ks: Sequence[int], chat: bool, log_samples: bool = False) -> dict[str, Any]:
    """accuracy (the mean fraction of correct samples: pass@1), pass@k and maj@k for each k; problems whose gold
    cannot be scored (a verifier returned None) are counted in `unscorable` and left out."""
    counts: list[tuple[int, int]] = []
    levels: list[Any] = []  # a built-in task's difficulty level of each scored problem
    maj: dict[int, list[float]] = {k: [] for k in ks}
    records, unscorable = [], 0
    for prob, prompt, comps in zip(problems, prompts, completions):
        msgs = [as_message(prompt["prompt"], c, chat) for c in comps]
        scores = [score(m, prob) for m in msgs]
        answers = [extract(m) for m in msgs]
        keys = [canonical(a) if a is not None else None for a in answers]
        if log_samples:
            records.append({"id": prob.id, "prompt": prompt["prompt"], "gold": prob.gold, "completions": comps,
                            "answers": answers, "scores": scores})
        if any(s is None for s in scores):
            unscorable += 1
            continue
        counts.append((len(scores), sum(1 for s in scores if s > 0.5)))
        levels.append(prob.example.get("level") if prob.example.get("task") else None)
        for k in ks:
            best, votes = majority_vote([key or "" for key in keys[:k]], extract=lambda s: s or None)
            maj[k].append(scores[keys.index(best)] if votes else 0.0)
    out: dict[str, Any] = {"examples": len(counts), "unscorable": unscorable,
                           "samples_per_example": len(completions[0]) if completions else 0}
    if counts:
        out["accuracy"] = sum(c / n for n, c in counts) / len(counts)
        if len(counts) > 1:
            out["ci95"] = [round(x, 4) for x in metrics.accuracy_ci95(counts)]
        if any(lv is not None for lv in levels):  # accuracy per difficulty level of a built-in task
            by: dict[Any, list[tuple[int, int]]] = {}
            for lv, nc in zip(levels, counts):
                by.setdefault(lv, []).append(nc)
            out["by_level"] = {str(lv): {"accuracy": sum(c / n for n, c in v) / len(v), "examples": len(v)}
                               for lv, v in sorted(by.items(), key=lambda kv: str(kv[0]))}
        for k in ks:
            out[f"pass@{k}"] = metrics.mean_pass_at_k(counts, k)
        for k in ks:
            if k > 1:
                out[f"maj@{k}"] = sum(maj[k]) / len(maj[k])
    if log_samples:
        out["samples"] = records
    return out
