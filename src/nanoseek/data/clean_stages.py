"""The datatrove pieces of `nanoseek data clean`: text normalization, the quality filters, the decontamination
index and filter, and the writers' row format. `clean.py` wires them into pipelines.

Normalization keeps digits and punctuation (datatrove's default turns every number into 0 and drops punctuation,
which would make "What is 99+87?" equal to "What is 12+34?", and every arithmetic worked solution a near copy of
every other): lowercase, whitespace runs collapsed, diacritics stripped.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

def _quiet_datatrove() -> None:
    """datatrove logs every task's pipeline and statistics at INFO to stderr, and restores that default after each
    task; keep only warnings on stderr (the full logs stay in OUT/work/logs/JOB/logs/). Patched where its executor
    looks the functions up, also in worker processes (they import this module to unpickle the pipeline)."""
    import datatrove.executor.base as base
    from loguru import logger

    if getattr(base.add_task_logger, "_nanoseek", False):
        return

    def stderr_warnings() -> None:
        logger.remove()
        logger.add(sys.stderr, level="WARNING", format="datatrove {level}: {message}")

    def add_task_logger(logging_dir: Any, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        stderr_warnings()
        logger.add(logfile, level="DEBUG", colorize=False)
        return logfile

    def close_task_logger(logfile: Any) -> None:
        logger.complete()
        stderr_warnings()
        logfile.close()

    add_task_logger._nanoseek = True  # type: ignore[attr-defined]
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    stderr_warnings()


_quiet_datatrove()


NORM = TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False, norm_unicode_diacritics=True,
                      norm_numbers=False)
HASH = HashConfig(precision=64, hash_fc="xxhash")
SHORT_INDEX = "short_prompts.json"  # prompts shorter than the n-gram: matched whole (datatrove's index has no entry)


def normalized_text(doc: Document) -> str:
    """What exact dedup hashes. Module-level (and annotated `-> str`): datatrove picks its hash function from the
    annotation, and the worker processes unpickle the function by name."""
    return simplify_text(doc.text, NORM)


def case_priority(doc: Document) -> int:
    """Which of a set of exact duplicates (equal up to case and spacing) exact dedup keeps: the one with the most
    lowercase letters, in 1..1001 (datatrove keeps the highest priority). A SHOUTED copy would otherwise win half
    the ties and then fail the quality filters' case-sensitive stop-word test, losing the document altogether."""
    letters = sum(c.isalpha() for c in doc.text)
    return 1 + (1000 * sum(c.islower() for c in doc.text) // letters if letters else 0)


# ----------------------------------------------------------------------------------------------------- writers
def _row(_writer: Any, doc: Document) -> dict[str, Any]:
    return {"id": doc.id, "text": doc.text}


def _removed_row(_writer: Any, doc: Document) -> dict[str, Any]:
    """A removed document and why: the filter's reason, and for decontamination the task and matched text."""
    row = {"id": doc.id, "text": doc.text}
    for key, name in (("filter_reason", "reason"), ("contaminated_task", "task"), ("contaminated_ngram", "match")):
        if key in doc.metadata:
            row[name] = doc.metadata[key]
    return row


def writer(folder: str | Path, removed: bool = False, name: str = "${rank}") -> JsonlWriter:
    """A gzipped jsonl writer of `{"id", "text"}` rows (and the reason, for removed documents), one file per rank
    (`00000.jsonl.gz`: the ranks read the input in order, so sorted file names keep the documents' order)."""
    return JsonlWriter(str(folder), output_filename=f"{name}.jsonl.gz", adapter=_removed_row if removed else _row)


# ----------------------------------------------------------------------------------------------------- quality
def quality_filters(exclusion: str | Path) -> list:
    """Gopher quality (word count 50-100k, mean word length 3-10, symbol/word ratio, bullet and ellipsis lines,
    alphabetic words, stop words), Gopher repetition (duplicate lines / paragraphs, top and duplicate n-grams),
    FineWeb (lines ending in punctuation, short lines, duplicated line characters, list-like documents) and C4's
    document-level "lorem ipsum" rule, all with the papers' thresholds. C4's line-removing rules are off: this
    stage drops documents and never rewrites the ones it keeps; its curly-bracket rule would drop all code."""
    def excl(name: str) -> JsonlWriter:
        return writer(exclusion, removed=True, name=f"{name}_${{rank}}")
    return [GopherQualityFilter(exclusion_writer=excl("gopher_quality")),
            GopherRepetitionFilter(exclusion_writer=excl("gopher_repetition")),
            FineWebQualityFilter(exclusion_writer=excl("fineweb")),
            C4QualityFilter(exclusion_writer=excl("c4"), remove_citations=False, filter_no_terminal_punct=False,
                            min_num_sentences=-1, min_words_per_line=-1, max_word_length=-1,
                            filter_javascript=False, filter_curly_bracket=False, filter_policy=False)]


# --------------------------------------------------------------------------------------------- decontamination
def _tokens(tokenizer: Any, text: str) -> list[str]:
    return tokenizer.word_tokenize(simplify_text(text, NORM))


def build_decont_index(prompts: dict[str, list[str]], folder: str | Path, n: int) -> dict[str, int]:
    """Index evaluation prompts (`{source name: [prompt, ...]}`) into `folder`: for a prompt of at least `n`
    words, its word n-grams go into datatrove's n-gram index (`NAME.index.hashes`, uint64 hashes, the format
    `NGramsDecontFilter` loads); a shorter prompt ("What is 99+87?", 6 words) has no n-gram, so its whole word
    sequence is indexed (`short_prompts.json`, by length). Returns the number of prompts per source."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, hash_fn = load_word_tokenizer("en"), create_hash_func(HASH)
    short: dict[int, dict[str, str]] = defaultdict(dict)
    counts = {}
    for name, texts in prompts.items():
        grams: set[int] = set()
        for text in texts:
            toks = _tokens(tokenizer, text)
            if len(toks) >= n:
                grams.update(hash_fn(" ".join(g)) for g in ngrams(toks, n))
            elif toks:
                short[len(toks)][str(hash_fn(" ".join(toks)))] = name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        np.array(sorted(grams), dtype=HASH.np_descr).tofile(folder / f"{safe}.index.hashes")
        counts[name] = len(texts)
    (folder / SHORT_INDEX).write_text(json.dumps({str(k): v for k, v in sorted(short.items())}))
    return counts


class DecontFilter(NGramsDecontFilter):
    """datatrove's n-gram decontamination (a document sharing a word n-gram with an indexed prompt is dropped),
    plus whole-prompt matching for prompts shorter than n words: a document holding one verbatim (after
    normalization; word boundaries respected, so "What is 9+8?" does not match inside "What is 9+87?") is dropped."""

    name = "💥 N-grams + short prompts decontaminate"

    def __init__(self, index_folder: str | Path, n: int, exclusion_writer: JsonlWriter | None = None):
        super().__init__(str(index_folder), NGramsDecontConfig(n_grams=n, norm_config=NORM, hash_config=HASH),
                         exclusion_writer=exclusion_writer)
        self._short_path = Path(index_folder) / SHORT_INDEX
        self._short: dict[int, dict[int, str]] | None = None

    def _load(self) -> None:
        self.load_index_hashes()
        raw = json.loads(self._short_path.read_text()) if self._short_path.exists() else {}
        self._short = {int(k): {int(h): t for h, t in v.items()} for k, v in raw.items()}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._short is None:
            self._load()
        toks = _tokens(self.tokenizer, doc.text)
        candidates = [(self.config.n_grams, self._index_hashes)] + sorted(self._short.items())
        for n, table in candidates:
            if not table:
                continue
            for i in range(len(toks) - n + 1):
                gram = " ".join(toks[i:i + n])
                task = table.get(self.hash_func(gram))
                if task is not None:
                    doc.metadata["contaminated_task"], doc.metadata["contaminated_ngram"] = task, gram
                    self.stat_update(f"contaminated_{task}")
                    return False, "contaminated"
        return True
