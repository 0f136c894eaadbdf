"""Data for a training run: a prepared token directory, or a built-in corpus (tokenizer trained and data prepared
into the run directory on first use, reused after)."""
from __future__ import annotations

import itertools
import os
from typing import Iterator

import numpy as np

from ..data import CORPORA, TokenDataset, corpus_documents, prepare, read_manifest
from . import distributed
from .config import TrainConfig
from .trainer import Batch, Data


def unigram_entropy(ds: TokenDataset, max_tokens: int = 20_000_000) -> float:
    """Entropy (nats/token) of the token frequencies of a split."""
    counts = np.zeros(ds.vocab_size, dtype=np.int64)
    left = max_tokens
    for i in range(len(ds.shards)):
        part = np.asarray(ds.tokens(i)[:left])
        counts += np.bincount(part, minlength=ds.vocab_size)[:ds.vocab_size]
        left -= len(part)
        if left <= 0:
            break
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def ensure_tokenizer(cfg: TrainConfig, corpus: str) -> str:
    """The run's tokenizer: cfg.tokenizer if given, else one trained on the corpus into run_dir/tokenizer."""
    if cfg.tokenizer:
        if not os.path.exists(os.path.join(cfg.tokenizer, "tokenizer.json")):
            raise FileNotFoundError(f"no tokenizer.json in {cfg.tokenizer}")
        return cfg.tokenizer
    out = os.path.join(cfg.run_dir, "tokenizer")
    if not os.path.exists(os.path.join(out, "tokenizer.json")):
        from ..tokenizer import train_tokenizer
        texts = (d if isinstance(d, str) else "\n".join(m["content"] for m in d) for d in corpus_documents(corpus))
        train_tokenizer(texts, cfg.vocab_size, out, max_digits=cfg.tokenizer_digits)
    return out


def pretraining_data(cfg: TrainConfig, env: distributed.DistEnv, global_batch: int) -> Data:
    if cfg.data in CORPORA:
        tok_dir = ensure_tokenizer(cfg, cfg.data) if env.is_main else None
        data_dir = os.path.join(cfg.run_dir, "data", cfg.data)
        if env.is_main:
            prepare(cfg.data, tok_dir, data_dir, progress=cfg.progress)
        distributed.barrier(env)
        tok_dir = tok_dir or (cfg.tokenizer or os.path.join(cfg.run_dir, "tokenizer"))
    elif os.path.exists(os.path.join(cfg.data, "manifest.json")):
        data_dir, tok_dir = cfg.data, cfg.tokenizer
        read_manifest(data_dir)
    else:
        raise FileNotFoundError(f"data {cfg.data!r} is neither a built-in corpus ({', '.join(CORPORA)}) nor a "
                                f"prepared directory with manifest.json (see `nanoseek data prepare`)")
    train, val = TokenDataset(data_dir, "train"), TokenDataset(data_dir, "validation")

    def train_batches(start: int) -> Iterator[Batch]:
        for step in itertools.count(start):
            yield train.batch(step, global_batch, cfg.seq_len, seed=cfg.seed)

    def val_batches() -> Iterator[Batch]:
        return itertools.islice(val.sequential_batches(cfg.batch_size, cfg.seq_len), cfg.eval_batches)

    if next(val_batches(), None) is None:
        raise ValueError(f"{data_dir}: the validation split holds no window of seq_len {cfg.seq_len}")
    return Data(train_batches, val_batches, train.vocab_size, unigram_entropy(train), tok_dir,
                {"data_dir": data_dir, "train_tokens": train.num_tokens, "val_tokens": val.num_tokens})
