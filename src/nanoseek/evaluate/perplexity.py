"""Perplexity and bits per byte of text documents.

Each document is encoded without special tokens and scored conditioned on BOS (EOS when the tokenizer has no BOS),
the way training documents start (`[BOS] tokens [EOS]`, nanoseek.data.encode); the trailing EOS is not scored, so
the score belongs to the text alone and bits per byte divides by exactly the text's UTF-8 bytes. Documents longer
than the context are scored in sliding windows (scoring.rolling_requests), every token exactly once.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from . import metrics
from .scoring import continuation_logprobs, rolling_requests


def read_documents(path: str | Path, limit: int | None = None) -> list[str]:
    """Text documents of a .txt (blank lines separate documents), .jsonl (`text` field) or .parquet file, read by
    nanoseek.data's readers."""
    from ..data import file_documents
    docs: list[str] = []
    for i, doc in enumerate(file_documents(path)):
        if limit is not None and len(docs) >= limit:
            break
        if not isinstance(doc, str):
            raise ValueError(f"{path}: document {i + 1} is a chat (`messages`); perplexity needs `text` documents")
        if doc:
            docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: no non-empty text documents")
    return docs


def prefix_token(tokenizer: Any) -> int:
    for name in ("bos_token_id", "eos_token_id"):
        i = getattr(tokenizer, name, None)
        if i is not None:
            return int(i)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")


def score_documents(model: nn.Module, tokenizer: Any, documents: Iterable[str], *, max_length: int,
                    stride: int | None = None, batch_size: int = 8, progress: bool = False,
                    desc: str = "perplexity") -> dict[str, Any]:
    """{documents, tokens, bytes, nll (nats, summed), perplexity (per token), bits_per_byte, max_length, stride}."""
    docs = list(documents)
    prefix = prefix_token(tokenizer)
    requests, owner = [], []
    n_tokens = n_bytes = 0
    for d, text in enumerate(docs):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            continue
        windows = rolling_requests(ids, prefix, max_length, stride)
        requests += windows
        owner += [d] * len(windows)
        n_tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
    if not requests:
        raise ValueError("perplexity: the documents encode to no tokens")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), desc=desc, unit="window", dynamic_ncols=True)
    try:
        scores = continuation_logprobs(model, requests, max_length=max_length, batch_size=batch_size,
                                       progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    nll = -sum(s for s, _ in scores)
    return {"documents": len(docs), "tokens": n_tokens, "bytes": n_bytes, "nll": nll,
            "perplexity": metrics.perplexity(nll, n_tokens), "bits_per_byte": metrics.bits_per_byte(nll, n_bytes),
            "nll_per_token": nll / n_tokens, "max_length": max_length, "stride": stride or max_length}
