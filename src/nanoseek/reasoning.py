"""Split a reasoning model's output into `reasoning_content` and `content`, whole or streamed.

The rules follow DeepSeek's API (https://api-docs.deepseek.com/guides/reasoning_model) and vLLM's `deepseek_r1`
reasoning parser (vllm/reasoning/deepseek_r1_reasoning_parser.py in github.com/vllm-project/vllm):
- R1's chat template pre-fills `<think>\\n` in the prompt, so the output usually starts *inside* the reasoning
  and has no opening tag; an opening `<think>` (older templates, or the model repeating it) is dropped together
  with any whitespace before it.
- The reasoning ends at the first `</think>`; everything after it is content, further tags included.
- If generation stops before `</think>`, everything is reasoning.
- An empty part is None (no `content` field rather than an empty one); a delta made only of a tag yields nothing.

The stream parser holds back text that could still become a tag (`</th` at the end of a delta), so tags split
across deltas are found; `finish()` releases what is held when generation ends. The pieces streamed, joined, equal
the whole-text split exactly.

`starts_in_reasoning=False` is for prompts without the pre-fill (DeepSeek-V3, thinking disabled): then only an
output that opens with `<think>` has reasoning, and anything else is all content.
"""
from __future__ import annotations

from typing import NamedTuple


class ReasoningSplit(NamedTuple):
    """A split of text (or of a delta); None where a part is empty. Unpacks as (reasoning, content)."""
    reasoning_content: str | None
    content: str | None


def _split(reasoning: str, content: str) -> ReasoningSplit:
    return ReasoningSplit(reasoning or None, content or None)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (text that may still become it)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    """Reasoning/content splitter for `<think>...</think>` models (DeepSeek-R1 and its distillations)."""

    def __init__(self, start_token: str = "<think>", end_token: str = "</think>", starts_in_reasoning: bool = True):
        if not start_token or not end_token:
            raise ValueError("start_token and end_token must be non-empty")
        self.start_token = start_token
        self.end_token = end_token
        self.starts_in_reasoning = starts_in_reasoning

    @classmethod
    def for_prompt(cls, prompt: str, start_token: str = "<think>", end_token: str = "</think>") -> "ReasoningParser":
        """The parser for a rendered prompt: the output starts inside the reasoning iff the prompt ends with an
        open `<think>` (R1's generation prompt `<｜Assistant｜><think>\\n`)."""
        tail = prompt.rstrip()
        return cls(start_token, end_token, starts_in_reasoning=tail.endswith(start_token))

    def parse(self, text: str) -> ReasoningSplit:
        """Split a whole output."""
        stripped = text.lstrip()
        if stripped.startswith(self.start_token):
            text = stripped[len(self.start_token):]
        elif not self.starts_in_reasoning:
            return _split("", text)
        reasoning, end, content = text.partition(self.end_token)
        return _split(reasoning, content)

    def stream(self) -> "ReasoningStream":
        """A fresh incremental parser for one output."""
        return ReasoningStream(self)


class ReasoningStream:
    """Feed text deltas in order; each `feed` returns the (reasoning, content) that can be emitted now, and
    `finish()` returns what was held back, once generation has ended."""

    def __init__(self, parser: ReasoningParser):
        self.parser = parser
        self._state = "opening"  # opening -> reasoning -> content, or opening -> content
        self._held = ""
        self._finished = False

    @property
    def in_reasoning(self) -> bool:
        """True while the output is (or may still be) inside the reasoning."""
        return self._state != "content"

    def feed(self, delta: str) -> ReasoningSplit:
        if self._finished:
            raise ValueError("ReasoningStream.feed after finish()")
        if not isinstance(delta, str):
            raise ValueError(f"delta must be a string, got {type(delta).__name__}")
        p = self.parser
        if self._state == "opening":
            self._held += delta
            stripped = self._held.lstrip()
            if stripped.startswith(p.start_token):
                self._state, self._held = "reasoning", ""
                delta = stripped[len(p.start_token):]
            elif not stripped or p.start_token.startswith(stripped):
                return ReasoningSplit(None, None)  # whitespace or a partial `<think>`: undecided yet
            else:
                self._state = "reasoning" if p.starts_in_reasoning else "content"
                delta, self._held = self._held, ""
        if self._state == "content":
            return _split("", delta)
        text = self._held + delta
        reasoning, end, content = text.partition(p.end_token)
        if end:
            self._state, self._held = "content", ""
            return _split(reasoning, content)
        keep = _partial_suffix(text, p.end_token)
        self._held = text[len(text) - keep:] if keep else ""
        return _split(text[:len(text) - keep], "")

    def finish(self) -> ReasoningSplit:
        """Generation ended: text held back as a possible tag was ordinary text after all."""
        if self._finished:
            return ReasoningSplit(None, None)
        self._finished = True
        held, self._held = self._held, ""
        if self._state == "opening" and not self.parser.starts_in_reasoning:
            return _split("", held)
        return _split(held, "")
