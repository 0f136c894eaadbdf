"""LLM: the vLLM-style offline API over LLMEngine (generate, stream, chat).

    llm = nanoseek.LLM("runs/x/model")                     # a model directory (weights + tokenizer), or a Transformer
    outs = llm.generate(["2+2="], nanoseek.SamplingParams(temperature=0, max_tokens=16))
    outs[0].outputs[0].text
    for out in llm.stream("Tell me", params): print(out.outputs[0].text, end="")
    llm.chat([{"role": "user", "content": "Hi"}])[0].outputs[0].content
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .engine import LLMEngine
from .outputs import RequestOutput
from .sampling import SamplingParams

Prompt = str | list[int] | dict[str, Any]


def _load_tokenizer(path: str) -> Any:
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from ..tokenizer import Tokenizer
    return Tokenizer.from_pretrained(path)


class LLM:
    """An inference engine over one model.

    model: a model directory (HF format, loaded with nanoseek.load_pretrained; its tokenizer too if present) or a
        Transformer instance (then prompts are token ids unless `tokenizer` is given).
    tokenizer: a nanoseek.Tokenizer, a tokenizer directory, or None.
    max_num_seqs: most sequences decoded together. max_num_batched_tokens: tokens per step (prefill chunk budget).
    cache_budget: bytes for the paged latent KV cache (int, or a string like "512MiB"); default enough for
        max_num_seqs sequences of min(max_model_len, 4096) tokens, at most 1 GiB.
    block_size: tokens per cache block. max_model_len: prompt + completion limit (default: the model's, capped by
        the cache). speculative: None/False, True or k (MTP drafts per step), or {"method": "mtp",
        "num_speculative_tokens": k}; off automatically for a model without MTP.
    dtype/device: for loading a directory (a Transformer instance is used as it is).
    kv_cache_dtype: the cache's dtype (default: the model's); e.g. "bf16" halves it for an fp32 model.
    enable_prefix_caching: reuse the cached blocks of earlier prompts sharing a prefix (block hashing).
    seed: the engine's generator for requests without their own seed.
    """

    def __init__(self, model: str | os.PathLike | nn.Module, tokenizer: Any = None, *, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 2048, cache_budget: int | str | None = None, block_size: int = 16,
                 max_model_len: int | None = None, speculative: Any = None, dtype: str | torch.dtype | None = None,
                 device: str | torch.device | None = None, prefill_attention: str = "decompressed", seed: int = 0,
                 enable_prefix_caching: bool = True, kv_cache_dtype: str | torch.dtype | None = None):
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"model directory not found: {path}")
            from ..checkpoint import load_pretrained
            model = load_pretrained(path, dtype=dtype, device=device, mtp=True)
            if tokenizer is None:
                tokenizer = _load_tokenizer(path)
        elif not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise ValueError(f"model: expected a model directory or a nanoseek Transformer (got {type(model).__name__})")
        elif dtype is not None or device is not None:
            from ..checkpoint import resolve_dtype
            model = model.to(device=device, dtype=resolve_dtype(dtype) if dtype is not None else None)
        kv_dtype = None
        if kv_cache_dtype is not None and kv_cache_dtype != "auto":
            from ..checkpoint import resolve_dtype
            kv_dtype = resolve_dtype(kv_cache_dtype)
        if isinstance(tokenizer, (str, os.PathLike)):
            tok = _load_tokenizer(os.fspath(tokenizer))
            if tok is None:
                raise FileNotFoundError(f"no tokenizer.json in {os.fspath(tokenizer)}")
            tokenizer = tok
        self.engine = LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs,
                                max_num_batched_tokens=max_num_batched_tokens, cache_budget=cache_budget,
                                block_size=block_size, max_model_len=max_model_len, speculative=speculative,
                                prefill_attention=prefill_attention, seed=seed,
                                enable_prefix_caching=enable_prefix_caching, kv_cache_dtype=kv_dtype)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (done automatically when the model's weights change in place)."""
        self.engine.reset_prefix_cache()

    # the incremental core, for servers
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        return self.engine.add_request(prompt, params, request_id)

    def step(self) -> list[RequestOutput]:
        return self.engine.step()

    def abort_request(self, request_id: str | list[str]) -> None:
        self.engine.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.engine.has_unfinished_requests()

    # ------------------------------------------------------------------ offline API
    @staticmethod
    def _as_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        if isinstance(prompts, (str, dict)):
            return [prompts]
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        prompts = list(prompts)
        if prompts and all(isinstance(t, int) for t in prompts):
            return [prompts]  # one prompt of token ids
        return prompts

    def _add_all(self, prompts: list[Prompt], params: SamplingParams | Sequence[SamplingParams] | None,
                 kind: str) -> list[str]:
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: {len(params)} given for {len(prompts)} prompts")
        # validate everything before queueing anything
        for p in prompts:
            self.engine.encode_prompt(p)
        ids = []
        try:
            for p, sp in zip(prompts, params):
                ids.append(self.engine.add_request(p, sp.clone(output_kind=kind)))
        except Exception:
            self.engine.abort_request(ids)
            raise
        return ids

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order, when all are finished. Drives the engine itself: do not call it
        while another thread is stepping the same engine (a server); use add_request/step there."""
        prompts = self._as_list(prompts)
        ids = self._add_all(prompts, sampling_params, "final_only")
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="generate", unit="req")
        try:
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            self.engine.abort_request([i for i in ids if i not in done])
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[i] for i in ids]

    def stream(self, prompts: Prompt | Sequence[Prompt],
               sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> Iterator[RequestOutput]:
        """Yields RequestOutputs whose outputs hold only what is new (text deltas, new token ids) as tokens arrive;
        `out.prompt_index` says which prompt it belongs to. Closing the iterator early aborts what is unfinished."""
        prompts = self._as_list(prompts)
        ids = self._add_all(prompts, sampling_params, "delta")
        index = {rid: i for i, rid in enumerate(ids)}
        left = set(ids)
        try:
            while left:
                for out in self.engine.step():
                    if out.request_id in index:
                        out.prompt_index = index[out.request_id]  # type: ignore[attr-defined]
                        if out.finished:
                            left.discard(out.request_id)
                        yield out
        finally:
            if left:
                self.engine.abort_request(list(left))

    # ------------------------------------------------------------------ chat
    def chat(self, messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation (a list of messages) or several, generate,
        and split every completion into `reasoning_content` (before `</think>`) and `content`."""
        tok = self.tokenizer
        if tok is None or not hasattr(tok, "apply_chat_template"):
            raise ValueError("chat: needs a tokenizer with a chat template (LLM(model_dir) or LLM(..., tokenizer=...))")
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        kw = dict(chat_template_kwargs or {})
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False, **kw) for c in convs]
        prompts = [{"prompt": t, "prompt_token_ids": tok.encode(t, add_special_tokens=False)} for t in texts]
        outs = self.generate(prompts, sampling_params)
        from ..reasoning import ReasoningParser
        for text, out in zip(texts, outs):
            parser = ReasoningParser.for_prompt(text)
            for c in out.outputs:
                c.reasoning_content, c.content = parser.parse(c.text)
        return outs
