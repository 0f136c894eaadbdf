"""Sampling parameters (vLLM/OpenAI names) and the batched sampling kernels.

Per row, the distribution sampled from is
    p = softmax(filter(logits / temperature))
where `filter` keeps the top_k largest logits, then the smallest set of tokens whose probability mass reaches
top_p (nucleus), then drops tokens with probability < min_p · max probability; everything else gets −inf.
temperature 0 means greedy (argmax of the raw logits). Sampling uses the exponential race
    token = argmax_i p_i / E_i,  E_i ~ Exp(1) i.i.d.
which draws exactly from p; each seeded request draws its E from its own torch.Generator, so its tokens do not
depend on which other requests share the batch.
Logprobs are log_softmax of the raw logits (before temperature and filtering), as vLLM returns by default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

OutputKind = Literal["cumulative", "delta", "final_only"]
_EPS = 1e-10
# The largest value of an integer count (top_k, max_tokens, min_tokens, logprobs, max_thinking_tokens): every
# count becomes an int64 tensor or a Python range in a batched step, so an unbounded one could fail that step for
# every request in it. Counts above the vocabulary or the context mean "no limit" and are clamped where used.
MAX_COUNT = 2**31 - 1
MAX_TOKEN_ID = 2**31 - 1


@dataclass
class SamplingParams:
    """How to sample one request. Names and defaults follow vLLM's SamplingParams (max_tokens defaults to 16)."""
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k filter
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 16  # None: until the model's maximum length
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per generated token (plus the sampled token's)
    max_thinking_tokens: int | None = None  # reasoning budget: then force `</think>` and continue with the answer
    output_kind: OutputKind = "cumulative"
    stop_list: list[str] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.stop, str):
            self.stop_list = [self.stop]
        elif self.stop is None:
            self.stop_list = []
        else:
            self.stop_list = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        """Every field checked for type and bounds, so that no value can fail a batched step later (where the
        failure would hit every request sharing the batch, not only this one)."""
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"SamplingParams.{name}: {msg} (got {getattr(self, name)!r})")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def count(name: str, low: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not is_int(v) or not low <= v <= MAX_COUNT:
                raise bad(name, f"must be an integer in [{low}, {MAX_COUNT}]" + (" or None" if optional else ""))

        count("n", 1)
        if not is_num(self.temperature) or self.temperature < 0:
            raise bad("temperature", "must be a finite number >= 0 (0 means greedy)")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "must lie in (0, 1]")
        count("top_k", 0)  # 0 or -1 disables it; values above the vocabulary keep every token
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "must lie in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_num(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                raise bad(name, "must lie in [-2, 2]")
        count("max_tokens", 1, optional=True)
        count("min_tokens", 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must not exceed max_tokens={self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop_list):
            raise bad("stop", "must be a non-empty string or a list of non-empty strings")
        if any(not is_int(t) or not 0 <= t <= MAX_TOKEN_ID for t in self.stop_token_ids):
            raise bad("stop_token_ids", f"must be a list of token ids in [0, {MAX_TOKEN_ID}]")
        if self.seed is not None and (not is_int(self.seed) or not -2**63 <= self.seed < 2**63):
            raise bad("seed", "must be an integer that fits in 64 bits, or None")
        count("logprobs", 0, optional=True)
        count("max_thinking_tokens", 0, optional=True)
        if self.output_kind not in ("cumulative", "delta", "final_only"):
            raise bad("output_kind", "must be 'cumulative', 'delta' or 'final_only'")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    def clone(self, **changes) -> "SamplingParams":
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        d.update(changes)
        return SamplingParams(**d)


def child_seed(seed: int, index: int) -> int:
    """Seed of the index-th sample of a request (index 0 keeps the request's seed, so n=1 and n>1 agree)."""
    return seed if index == 0 else hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF


# ---------------------------------------------------------------------------------------------------- kernels
def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI penalties over the tokens generated so far: logit −= presence·[count > 0] + frequency·count."""
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def filtered_logprobs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                      min_p: torch.Tensor) -> torch.Tensor:
    """log p of the distribution to sample from, per row (rows, V), float32; filtered tokens get −inf.
    temperature/top_k/top_p/min_p: (rows,) tensors; temperature must be > 0 here (greedy rows are handled apart)."""
    x = logits.float() / temperature[:, None]
    V = x.shape[-1]
    need_k = bool((top_k > 0).any()) and bool((top_k < V).any())
    need_p = bool((top_p < 1).any())
    if need_k or need_p:
        sorted_x, order = x.sort(dim=-1, descending=True)
        drop = torch.zeros_like(sorted_x, dtype=torch.bool)
        if need_k:
            k = torch.where(top_k > 0, top_k.clamp(max=V), V)
            drop |= torch.arange(V, device=x.device)[None] >= k[:, None]
            sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        if need_p:
            probs = sorted_x.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # keep a token while the mass before it is < top_p
            drop |= mass_before >= top_p[:, None]
        x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    logp = x.log_softmax(dim=-1)
    if bool((min_p > 0).any()):
        # drop p_i < min_p · p_max, i.e. log p_i < log min_p + log p_max
        thresh = logp.amax(dim=-1, keepdim=True) + torch.log(min_p.clamp(min=_EPS))[:, None]
        logp = logp.masked_fill((logp < thresh) & (min_p[:, None] > 0), float("-inf")).log_softmax(dim=-1)
    return logp


def exponential_noise(shape: tuple[int, ...], generators: list[torch.Generator | None],
                      default: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """E ~ Exp(1) of shape (rows, ...): rows with their own generator draw from it, one row at a time, so a seeded
    request's draws do not depend on the rest of the batch; the other rows share `default`."""
    noise = torch.empty(shape, device=device)
    shared = [i for i, g in enumerate(generators) if g is None]
    if shared:
        noise[shared] = torch.empty((len(shared), *shape[1:]), device=device).exponential_(generator=default)
    for i, g in enumerate(generators):
        if g is not None:
            noise[i].exponential_(generator=g)
    return noise


def sample_from_logprobs(logp: torch.Tensor, generators: list[torch.Generator | None],
                         default: torch.Generator | None) -> torch.Tensor:
    """One token per row from exp(logp) by the exponential race: argmax p / E."""
    noise = exponential_noise(tuple(logp.shape), generators, default, logp.device)
    return (logp.exp() / noise).argmax(dim=-1)


def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def top_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
    """Raw log_softmax: (sampled token's logprob (rows,), its rank (rows,), top-k logprobs (rows,k), ids (rows,k)).
    Rank 1 is the most likely token."""
    logp = logits.float().log_softmax(dim=-1)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]
    rank = (logp > chosen[:, None]).sum(dim=-1) + 1
    vals, ids = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], tokens[:, None][:, :0])
    return chosen, rank, vals, ids


class Sampler:
    """Samples one token per logits row with each row's SamplingParams: masks padded vocabulary rows, argmax for
    greedy rows, filtered_logprobs + the exponential race for the others."""

    def __init__(self, vocab_limit: int, generator: torch.Generator | None):
        self.vocab_limit = vocab_limit  # ids >= this (a model's padded embedding rows) are never produced
        self.generator = generator  # for rows of requests without their own seed

    def mask_vocab(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab_limit < x.shape[-1]:
            x[:, self.vocab_limit:] = float("-inf")
        return x

    @staticmethod
    def row_tensors(params: list[SamplingParams], device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(temperature, top_k, top_p, min_p) per row, as the batched kernels take them."""
        return (torch.tensor([float(p.temperature) for p in params], device=device),
                torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
                torch.tensor([float(p.top_p) for p in params], device=device),
                torch.tensor([float(p.min_p) for p in params], device=device))

    def admit(self, params: SamplingParams, device: torch.device) -> None:
        """Build this request's rows of the batched tensors alone, at admission: a value the batched step could not
        take fails here, in the caller's thread, instead of failing a step shared with other requests."""
        try:
            self.row_tensors([params], device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise ValueError(f"SamplingParams: cannot be used for sampling ({e})") from None

    def filter(self, x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        return filtered_logprobs(x, *self.row_tensors(params, x.device))

    def sample(self, x: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
               ) -> tuple[list[int], torch.Tensor | None]:
        """x (rows, V) processed logits (vocabulary masked, penalties applied). Returns the tokens and, when some
        row samples, the log-probabilities sampled from (rows, V; −inf rows for greedy ones)."""
        tokens = x.argmax(dim=-1)
        sel = [i for i, p in enumerate(params) if not p.greedy]
        logp = None
        if sel:
            logp = torch.full_like(x, float("-inf"))
            logp[sel] = self.filter(x[sel], [params[i] for i in sel])
            tokens[sel] = sample_from_logprobs(logp[sel], [generators[i] for i in sel], self.generator)
        return tokens.tolist(), logp
