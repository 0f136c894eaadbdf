r"""The `Task` base class: deterministic generation, hash-based train/test splits, and the three output forms.

A task subclass supplies five small hooks on a *problem* (a JSON-serialisable dict of the fields that define it):
`sample(rng, level)`, `key(problem)` (canonical text, for the split), `prompt(problem)`, `answer(problem)` and
`steps(problem)` (the worked solution, one short line per step). The base class turns them into

* examples for RL and evaluation: `{"prompt", "answer", "task", "level", "split", "id", **problem fields}`,
  and the chat form `messages(example)` = `[{"role": "user", "content": prompt}]`;
* worked solutions for SFT: `solution(example)` = `<think>\n{steps}\n</think>\n\n\boxed{answer}` (the convention
  of `nanoseek.rewards`), and `sft_messages(example)`;
* pretraining text: `document(example)` = the prompt, a newline, the worked solution.

Splits: a problem belongs to `test` iff a SHA-256 hash of (task name, canonical key) falls in the first
`TEST_FRACTION` of the hash range; generation for a split rejects the other split's problems. So no seed, level or
number of examples can ever put a test problem in the train set.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from ..rewards import format_response, resolve_reward

SPLITS = ("train", "test")
TEST_FRACTION = 0.1  # fixed on purpose: a per-call fraction would let two calls disagree about a problem's split


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from text, identical on every machine and Python run (unlike `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


class Task:
    name: ClassVar[str] = ""
    reward: ClassVar[str] = "accuracy"  # the reward in nanoseek.rewards that verifies this task's answers
    instruction: ClassVar[str] = "Put the final answer in \\boxed{}."
    levels: Sequence[Any] = ()  # one entry per difficulty level; level numbers start at 1

    # -------------------------------------------------------------------------------- hooks for subclasses
    def sample(self, rng: random.Random, level: int) -> dict[str, Any] | None:
        """A random problem of this level, or None to reject the draw and try again."""
        raise NotImplementedError

    def key(self, problem: dict[str, Any]) -> str:
        raise NotImplementedError

    def prompt(self, problem: dict[str, Any]) -> str:
        raise NotImplementedError

    def answer(self, problem: dict[str, Any]) -> str:
        raise NotImplementedError

    def steps(self, problem: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------- splits
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def split_of(self, problem: dict[str, Any]) -> str:
        h = _stable_int("nanoseek-split", self.name, self.key(problem))
        return "test" if h < TEST_FRACTION * 2**64 else "train"

    # -------------------------------------------------------------------------------- examples
    def _check(self, split: str, levels: Sequence[int]) -> None:
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, not {split!r}")
        bad = [lv for lv in levels if not isinstance(lv, int) or not 1 <= lv <= self.num_levels]
        if bad or not levels:
            raise ValueError(f"task {self.name!r}: level must be in 1..{self.num_levels}, not {bad or levels!r}")

    def example(self, problem: dict[str, Any], level: int, instruction: bool = False) -> dict[str, Any]:
        """The example dict of one problem."""
        prompt = self.prompt(problem)
        if instruction and self.instruction:
            prompt = f"{prompt} {self.instruction}"
        return {"prompt": prompt, "answer": self.answer(problem), "task": self.name, "level": level,
                "split": self.split_of(problem),
                "id": f"{self.name}-{_stable_int(self.name, self.key(problem)):016x}", **problem}

    def iter_examples(self, *, split: str = "train", level: int | Sequence[int] = 1, seed: int = 0,
                      unique: bool = False, instruction: bool = False) -> Iterator[dict[str, Any]]:
        """An endless, deterministic stream of examples of one split. `level` may be a list: each example then
        draws its level uniformly from it. `unique=True` never repeats a problem (and stops, raising
        ValueError, when the level's problem space in this split looks exhausted). `instruction=True` appends
        the answer-format instruction to the prompt (for models that did not learn the convention in SFT)."""
        levels = [level] if isinstance(level, int) else list(level)
        self._check(split, levels)
        rng = random.Random(_stable_int("nanoseek-examples", self.name, split, levels, seed))
        seen: set[str] = set()
        misses = 0
        while True:
            lv = levels[0] if len(levels) == 1 else rng.choice(levels)
            problem = self.sample(rng, lv)
            ok = problem is not None and self.split_of(problem) == split
            if ok and unique:
                k = self.key(problem)
                ok = k not in seen
                seen.add(k)
            if ok:
                misses = 0
                yield self.example(problem, lv, instruction)
                continue
            misses += 1
            if misses > 20_000:  # about 2,000 draws are expected per test example only if 1/1000 lands in test
                raise ValueError(f"task {self.name!r} level {level}: no new {split} problem in {misses} draws "
                                 f"({len(seen)} unique so far); the level's problem space is too small")

    def examples(self, n: int, *, split: str = "train", level: int | Sequence[int] = 1, seed: int = 0,
                 unique: bool = False, instruction: bool = False) -> list[dict[str, Any]]:
        """The first `n` examples of `iter_examples` (same arguments)."""
        stream = self.iter_examples(split=split, level=level, seed=seed, unique=unique, instruction=instruction)
        return [next(stream) for _ in range(n)]

    # -------------------------------------------------------------------------------- output forms
    def messages(self, example: dict[str, Any]) -> list[dict[str, str]]:
        """The prompt as chat messages, for RL rollouts and evaluation."""
        return [{"role": "user", "content": example["prompt"]}]

    def reasoning(self, example: dict[str, Any], worked: bool = True) -> str:
        """The worked solution's steps, one per line (the think block's content). `worked=False`: only the last
        step, the result done in the head (`347+85=432`), as much of the world's text states answers."""
        steps = self.steps(example)
        return "\n".join(steps if worked else steps[-1:])

    def solution(self, example: dict[str, Any], worked: bool = True) -> str:
        r"""The full assistant response: `<think>\n{steps}\n</think>\n\n\boxed{answer}`."""
        return format_response(self.reasoning(example, worked), example["answer"])

    def sft_messages(self, example: dict[str, Any], *, reasoning_content: bool = False,
                     worked: bool = True) -> list[dict[str, str]]:
        """User prompt and worked assistant answer (only its last step when not `worked`). With
        `reasoning_content=True` the steps go in the assistant message's `reasoning_content` field and `content` is
        only the boxed answer (the DeepSeek API form)."""
        if reasoning_content:
            assistant = {"role": "assistant", "content": f"\\boxed{{{example['answer']}}}",
                         "reasoning_content": self.reasoning(example, worked)}
        else:
            assistant = {"role": "assistant", "content": self.solution(example, worked)}
        return [*self.messages(example), assistant]

    def document(self, example: dict[str, Any]) -> str:
        """A worked problem as plain text, for pretraining data."""
        return f"{example['prompt']}\n{self.solution(example)}\n"

    def score(self, completion: Any, example: dict[str, Any]) -> float | None:
        """This task's verifier: its reward on a completion (1.0 correct, 0.0 wrong, None unscorable gold)."""
        return resolve_reward(self.reward)(completion, **example)
