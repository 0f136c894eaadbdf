"""What the engine returns, shaped like vLLM's RequestOutput / CompletionOutput."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    finish_reason: str | None = None  # "stop" (EOS, stop token or stop string), "length", "abort", "error"
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
    error: str | None = None  # set when the engine ended this request alone because its own work failed


@dataclass
class OutputState:
    """The engine's running state of one of a request's n samples."""
    detok: Any  # detok.Detokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0
    thinking: bool = False
    thinking_tokens: int = 0
    reported_finish: bool = False


def build_output(req: Any) -> RequestOutput | None:
    """The RequestOutput to report for a request that made progress, per its output_kind: "cumulative" (all so far),
    "delta" (only what is new since the last report), "final_only" (once, when finished; None before).
    A request ended by an error reports it with no further text: its detokenizer may be what failed."""
    if req.error is not None:
        comps = [CompletionOutput(i, "", [], None, None, o.finish_reason, o.stop_reason)
                 for i, o in enumerate(req.outputs)]
        return RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, comps, True, req.metrics, req.error)
    finished = all(o.finish_reason is not None for o in req.outputs)
    kind = req.params.output_kind
    if kind == "final_only" and not finished:
        return None
    comps = []
    for i, o in enumerate(req.outputs):
        final = o.finish_reason is not None
        if kind == "delta":
            text = o.detok.delta(final)
            new_ids = o.token_ids[o.sent_tokens:]
            lps = o.logprobs[o.sent_tokens:] if o.logprobs is not None else None
            if not text and not new_ids and (o.reported_finish or not final):
                continue
            o.sent_tokens = len(o.token_ids)
        else:
            text, new_ids, lps = o.detok.visible(final), o.token_ids, o.logprobs
        o.reported_finish = final
        comps.append(CompletionOutput(i, text, list(new_ids), o.cumulative_logprob if o.logprobs is not None else None,
                                      list(lps) if lps is not None else None, o.finish_reason, o.stop_reason))
    return RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, comps, finished, req.metrics)
