"""Byte-level BPE training for new models, with DeepSeek-V3's pre-tokenizer and the R1 special and chat tokens."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from .chat import BOS, CHAT_TOKENS, DEEPSEEK_R1_CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS
from .core import Tokenizer

# DeepSeek-V3's pre-tokenizer (from its tokenizer.json): numbers split into runs of at most 3 digits (`max_digits`
# below makes that 1 or 2), CJK runs isolated, then a GPT-style split (punctuation+letters, letters with one leading
# non-letter, punctuation runs, newlines, spaces), then byte-level mapping. BPE merges never cross these pieces.
_TEXT_PATTERNS = (
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
)


def _split_patterns(max_digits: int = 3) -> tuple[str, ...]:
    return (rf"\p{{N}}{{1,{max_digits}}}", *_TEXT_PATTERNS)


def _read_files(paths: Sequence[str | os.PathLike], chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Yield the text of files in chunks of whole lines. Directories expand to their `*.txt` files, sorted, so
    the order (and so the trained tokenizer) is deterministic."""
    files: list[Path] = []
    for item in paths:
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"training files must be paths, got {type(item).__name__}")
        p = Path(item)
        if p.is_dir():
            found = sorted(p.rglob("*.txt"))
            if not found:
                raise FileNotFoundError(f"no *.txt files under {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"training text file not found: {p}")
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                while chunk := fh.read(chunk_chars):
                    yield chunk + fh.readline()
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def train_tokenizer(files: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str], vocab_size: int,
                    out_dir: str | os.PathLike | None = None, *, min_frequency: int = 2,
                    model_max_length: int = 4096, chat_template: str = DEEPSEEK_R1_CHAT_TEMPLATE,
                    max_digits: int = 3, show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer with DeepSeek's pre-tokenizer and special tokens on text files (or an
    iterator of strings), and write `tokenizer.json` + `tokenizer_config.json` to `out_dir` if given.

    `files`: a path, or a list of paths (directories expand to their `*.txt` files); an iterator (a generator,
    `iter(list_of_texts)`) is read as the text itself.

    `vocab_size` is the total number of ids, special and chat tokens included: BOS 0, EOS 1, pad 2, then
    `<｜User｜>`, `<｜Assistant｜>`, `<think>`, `</think>` and the tool-call markers, then 256 byte tokens and merges.
    `encode` adds BOS (the post-processor is in tokenizer.json itself, so every loader agrees). Deterministic for
    the same input.

    `max_digits`: the longest run of digits one token may hold: 3 as DeepSeek-V3 (whose BPE then holds every number
    below 1000 in one token); 1 gives one token per digit (as LLaMA and Qwen), which a small model needs to learn
    column arithmetic: with 2-3 digit tokens it must also learn which digits each number token holds."""
    if not isinstance(max_digits, int) or isinstance(max_digits, bool) or not 1 <= max_digits <= 3:
        raise ValueError(f"max_digits must be 1, 2 or 3, got {max_digits!r}")
    reserved = len(SPECIAL_TOKENS) + len(CHAT_TOKENS)
    minimum = reserved + len(pre_tokenizers.ByteLevel.alphabet())
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} ({reserved} special + 256 bytes), got {vocab_size}")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if isinstance(files, Iterator):
        source: Iterable[str] = files
    elif isinstance(files, Sequence):
        source = _read_files(files)
    else:
        raise ValueError(f"files must be a path, a list of paths or an iterator of strings, not {type(files).__name__}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(tokenizers.Regex(p), behavior="isolated") for p in _split_patterns(max_digits)]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    seen = False

    def texts() -> Iterator[str]:
        nonlocal seen
        for t in source:
            if not isinstance(t, str):
                raise ValueError(f"training texts must be strings, got {type(t).__name__}")
            seen = seen or bool(t.strip())
            yield t
    tok.train_from_iterator(texts(), trainer)
    if not seen:
        raise ValueError("no text to train the tokenizer on (empty input)")
    # The chat markers are ordinary added tokens, as in DeepSeek's files: decode(skip_special_tokens=True) keeps them.
    spec = json.loads(tok.to_str())
    for t in spec["added_tokens"]:
        t["special"] = t["content"] in SPECIAL_TOKENS
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template,
    }
    result = Tokenizer(tok, config, name_or_path=str(out_dir or ""))
    if out_dir is not None:
        result.save_pretrained(out_dir)
    return result
