"""What the engine returns, shaped like vLLM's RequestOutput / CompletionOutput."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int  # 1 = the most likely token
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None  # "stop" (EOS, stop token or stop string), "length", "abort"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it (None for EOS)
    reasoning_content: str | None = None  # llm.chat: the text before `</think>`
    content: str | None = None  # llm.chat: the answer after it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_generated_tokens: int = 0
    num_steps: int = 0  # engine steps that produced tokens for this request (summed over its n samples)
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the cache (prefix caching, n > 1 fork)
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def acceptance_rate(self) -> float | None:
        n = self.spec_num_draft_tokens
        return self.spec_num_accepted_tokens / n if n else None

    @property
    def tokens_per_step(self) -> float | None:
        return self.num_generated_tokens / self.num_steps if self.num_steps else None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(repr=False, default=None)  # type: ignore[assignment]
