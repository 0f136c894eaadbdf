"""Data pipeline: documents (built-in corpora, .txt/.jsonl/.parquet files) -> token shards -> training batches.

    from nanoseek.data import prepare, TokenDataset, pack_sft
    prepare("builtin", tokenizer, "data/builtin")                 # or a list of files; resumable, deterministic
    ds = TokenDataset("data/builtin", "train")                     # memory-mapped shards
    x, y = next(ds.sample_batches(batch_size=8, seq_len=256, seed=0, start_step=step))
    x, y = pack_sft([encode_document(tok, messages) ...], seq_len)  # labels -100 except on assistant tokens

Cleaning before preparing (dedup, quality filters, decontamination on datatrove; imported on demand, it is heavy):
    from nanoseek.data.clean import clean
    clean(["crawl/"], "data/clean", decontaminate=["arithmetic"])   # then prepare(["data/clean/kept"], ...)
"""
from .corpora import CORPORA, DataError, Document, corpus_documents, file_documents, iter_documents, \
    pydoc_documents, task_documents
from .encode import Example, encode_chat, encode_document, tokenizer_info
from .loader import IGNORE_INDEX, TokenDataset, iter_packed, pack_sft
from .prepare import load_tokenizer, prepare, read_manifest, summary, token_dtype

__all__ = [
    "CORPORA", "DataError", "Document", "Example", "IGNORE_INDEX", "TokenDataset", "corpus_documents",
    "encode_chat", "encode_document", "file_documents", "iter_documents", "iter_packed", "load_tokenizer",
    "pack_sft", "prepare", "pydoc_documents", "read_manifest", "summary", "task_documents", "token_dtype",
    "tokenizer_info",
]
