"""Data pipeline: corpora, token shards (determinism, resume, no-op rerun, dtype, split), loaders, SFT masks, errors."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoseek.cli import main
from nanoseek.data import (IGNORE_INDEX, DataError, Example, TokenDataset, encode_chat, encode_document,
                           file_documents, pack_sft, prepare, pydoc_documents, read_manifest, task_documents,
                           token_dtype)
from nanoseek.data.prepare import split_of
from nanoseek.tokenizer import train_tokenizer

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": "7"}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Eleven, 11."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}],
]


@pytest.fixture(scope="module")
def pydoc() -> list[str]:
    return list(pydoc_documents())


@pytest.fixture(scope="module")
def tok(pydoc, tmp_path_factory):
    """A tiny byte-level BPE with DeepSeek's special tokens and R1 chat template, saved to a directory."""
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(iter(pydoc[:20]), vocab_size=400, out_dir=out)


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    txt = tmp_path / "notes.txt"
    txt.write_text("\n\n".join(f"Paragraph {i}: the value of x{i} is {i * i}.\nSecond line." for i in range(60)))
    jl = tmp_path / "mixed.jsonl"
    rows = [{"text": f"Document {i} says {i} + {i} = {2 * i}."} for i in range(40)] + [{"messages": c} for c in CHATS]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return [txt, jl]


class Counting:
    """Delegates to a tokenizer, counting encode calls; raises KeyboardInterrupt at call `interrupt_at`."""

    def __init__(self, inner, interrupt_at: int | None = None):
        self.inner, self.calls, self.interrupt_at = inner, 0, interrupt_at

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        return self.inner.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# ---------------------------------------------------------------------------------------------------- corpora
def test_pydoc_corpus(pydoc):
    assert pydoc == list(pydoc_documents())  # deterministic
    assert len(pydoc) > 50 and all(isinstance(d, str) and d.strip() for d in pydoc)
    assert sum(map(len, pydoc)) > 200_000
    assert any(d.startswith('The "assert" statement') for d in pydoc)


def test_task_corpus():
    tasks = pytest.importorskip("nanoseek.tasks", reason="nanoseek.tasks not available")
    docs = list(task_documents(per_task=5))
    assert docs == list(task_documents(per_task=5)) and len(docs) == 5 * len(tasks.names())
    assert all("<think>" in d and "\\boxed{" in d for d in docs)


def test_txt_blank_lines_separate_documents(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\ntwo\n\n\n  \nthree\n\nfour")
    assert list(file_documents(p)) == ["one\ntwo", "three", "four"]


# ---------------------------------------------------------------------------------------------------- prepare
def test_prepare_deterministic_and_rerun_is_noop(tok, inputs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    m = prepare(inputs, tok, a, val_fraction=0.2, shard_tokens=300, progress=False)
    prepare(inputs, tok, b, val_fraction=0.2, shard_tokens=300, progress=False)
    assert files_of(a) == files_of(b)
    assert m["complete"] and m["dtype"] == "uint16" and m["loss_mask"]
    assert len(m["splits"]["train"]["shards"]) > 1
    assert m["splits"]["train"]["documents"] + m["splits"]["validation"]["documents"] == 60 + 40 + len(CHATS)
    stamps = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    counting = Counting(tok)
    assert prepare(inputs, counting, a, val_fraction=0.2, shard_tokens=300, progress=False) == m
    assert counting.calls <= 1  # the tokenizer probe only: nothing re-tokenized
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == stamps
    with pytest.raises(DataError, match="other inputs"):  # same directory, different settings
        prepare(inputs, tok, a, val_fraction=0.3, shard_tokens=300, progress=False)


def test_resume_after_interruption_gives_identical_shards(tok, inputs, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    prepare(inputs, tok, ref, val_fraction=0.2, shard_tokens=300, progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed between shards, after some were written
        prepare(inputs, Counting(tok, interrupt_at=70), out, val_fraction=0.2, shard_tokens=300, progress=False)
    partial = read_manifest(out)
    assert not partial["complete"] and partial["splits"]["train"]["shards"]
    (out / "train_00099.bin.tmp").write_bytes(b"half-written")  # a kill in the middle of a write
    with pytest.raises(DataError, match="did not finish"):
        TokenDataset(out)
    counting = Counting(tok)
    prepare(inputs, counting, out, val_fraction=0.2, shard_tokens=300, progress=False)
    assert counting.calls < 60  # finished shards were skipped, not re-tokenized
    assert files_of(out) == files_of(ref)
    # a damaged shard is rebuilt on the next run
    (out / "train_00001.bin").write_bytes(b"\0\0")
    prepare(inputs, tok, out, val_fraction=0.2, shard_tokens=300, progress=False)
    assert files_of(out) == files_of(ref)


class BigVocab:
    """A duck-typed tokenizer with ids above 65535 (no chat template, no BOS)."""
    vocab_size, eos_token_id = 70_000, 0

    def encode(self, text: str) -> list[int]:
        return [65_000 + ord(c) % 4000 for c in text]


def test_dtype_by_vocabulary(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    p = tmp_path / "t.txt"
    p.write_text("hello world\n\nsecond document here")
    m = prepare([p], BigVocab(), tmp_path / "o", val_fraction=0.0, progress=False)
    assert m["dtype"] == "uint32"
    ds = TokenDataset(tmp_path / "o")
    assert ds.document(0).input_ids == BigVocab().encode("hello world") + [0]
    assert (tmp_path / "o" / "train_00000.bin").stat().st_size == 4 * ds.num_tokens
    small = BigVocab()
    small.vocab_size = 1000  # ids beyond the tokenizer's own vocabulary are refused
    with pytest.raises(DataError, match="outside its vocabulary of 1000"):
        prepare([p], small, tmp_path / "o2", progress=False)


def test_split_by_document_hash(tok, pydoc, tmp_path):
    pytest.importorskip("pydoc_data")
    m = prepare("pydoc", tok, tmp_path / "p", val_fraction=0.1, progress=False)
    train, val = TokenDataset(tmp_path / "p", "train"), TokenDataset(tmp_path / "p", "validation")
    tr = {tuple(train.document(i).input_ids) for i in range(train.num_documents)}
    va = {tuple(val.document(i).input_ids) for i in range(val.num_documents)}
    assert tr and va and not tr & va
    assert train.num_documents + val.num_documents == len(pydoc) == sum(s["documents"] for s in m["splits"].values())
    # stable: a document's split does not depend on the other documents
    assert [split_of(d, 0.1) for d in pydoc[::7]] == [split_of(d, 0.1) for d in pydoc][::7]
    first = tuple(encode_document(tok, pydoc[0]).input_ids)
    assert (first in va) == (split_of(pydoc[0], 0.1) == "validation")


# ---------------------------------------------------------------------------------------------------- loaders
def test_windows_shifted_deterministic_resumable(tok, inputs, tmp_path):
    prepare(inputs, tok, tmp_path / "d", val_fraction=0.2, shard_tokens=300, progress=False)
    ds = TokenDataset(tmp_path / "d", "train")
    x, y = ds.batch(step=0, batch_size=6, seq_len=32, seed=1)
    assert x.shape == y.shape == (6, 32) and x.dtype == y.dtype == torch.int64
    kept = y[:, :-1] != IGNORE_INDEX
    assert torch.equal(x[:, 1:][kept], y[:, :-1][kept])  # labels are the inputs shifted by one
    # every row is a contiguous window of one shard
    for row in x:
        assert any(np.lib.stride_tricks.sliding_window_view(np.asarray(ds.tokens(s)), 32).__eq__(row.numpy())
                   .all(1).any() for s in range(len(ds.shards)))
    fresh = ds.sample_batches(6, 32, seed=1)
    steps = [next(fresh) for _ in range(4)]
    assert torch.equal(steps[0][0], x) and not torch.equal(steps[1][0], x)
    resumed = next(ds.sample_batches(6, 32, seed=1, start_step=3))
    assert torch.equal(resumed[0], steps[3][0]) and torch.equal(resumed[1], steps[3][1])
    assert not torch.equal(next(ds.sample_batches(6, 32, seed=2))[0], x)
    # two ranks together see the one-process global batch
    r0, r1 = ds.batch(5, 3, 32, seed=1, rank=0, world_size=2), ds.batch(5, 3, 32, seed=1, rank=1, world_size=2)
    assert torch.equal(torch.cat([r0[0], r1[0]]), ds.batch(5, 6, 32, seed=1)[0])
    # sequential batches cover the split in order, each window once
    seq = list(ds.sequential_batches(batch_size=4, seq_len=32))
    assert torch.equal(seq[0][0][0], torch.from_numpy(np.asarray(ds.tokens(0)[:32]).astype(np.int64)))
    assert sum(b[0].shape[0] for b in seq) == sum(int(n - 1) // 32 for n in ds.shard_tokens)
    with pytest.raises(DataError, match="seq_len"):
        ds.batch(0, 1, 10_000)


def test_sft_mask_is_the_assistant_text(tok):
    ex = encode_document(tok, CHATS[1])
    assert ex.input_ids[0] == tok.bos_token_id and len(ex.loss_mask) == len(ex.input_ids)
    assert tok.decode(ex.input_ids).startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Name a prime.")
    trained = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m])
    assert trained == "7<｜end▁of▁sentence｜>Eleven, 11.<｜end▁of▁sentence｜>"
    assert encode_chat(tok, CHATS[0]).loss_mask.count(1) == len(tok.encode("It is 4.<｜end▁of▁sentence｜>",
                                                                             add_special_tokens=False))


def test_pack_sft(tok):
    examples = [encode_document(tok, c) for c in CHATS]
    x, y = pack_sft(examples, seq_len=48, pad_token_id=tok.eos_token_id)
    assert x.shape == y.shape and x.shape[1] == 48 and x.dtype == y.dtype == torch.int64
    # the supervised labels are exactly the assistant turns, in order, across rows
    labels = [int(t) for t in y.flatten() if t != IGNORE_INDEX]
    assert tok.decode(labels) == "".join(f"{m['content']}<｜end▁of▁sentence｜>" for c in CHATS for m in c
                                         if m["role"] == "assistant")
    for xr, yr in zip(x, y):
        keep = yr[:-1] != IGNORE_INDEX
        assert torch.equal(xr[1:][keep], yr[:-1][keep])
    # a conversation starts with BOS, which is never a label (the boundary is masked)
    assert not (y == tok.bos_token_id).any()
    # pairs work too, and too-long conversations are cut to one row
    x2, y2 = pack_sft([(ex.input_ids, ex.loss_mask) for ex in examples], seq_len=8)
    assert x2.shape[1] == 8 and x2.shape[0] == len(CHATS)
    assert pack_sft([], 8)[0].shape == (0, 8)


def test_sft_batches_from_shards(tok, tmp_path):
    p = tmp_path / "chats.jsonl"
    p.write_text("\n".join(json.dumps({"messages": c}) for c in CHATS * 10))
    prepare([p], tok, tmp_path / "s", val_fraction=0.0, progress=False)
    ds = TokenDataset(tmp_path / "s")
    doc = ds.document(0)
    assert isinstance(doc, Example) and tok.decode([t for t, m in zip(doc.input_ids, doc.loss_mask) if m])
    a = ds.sft_batches(batch_size=2, seq_len=64, seed=3)
    first = [next(a) for _ in range(12)]  # more than one epoch
    later = next(ds.sft_batches(batch_size=2, seq_len=64, seed=3, start_step=9))
    assert torch.equal(later[0], first[9][0]) and torch.equal(later[1], first[9][1])
    assert all((b[1] != IGNORE_INDEX).any() for b in first)
    # random windows over chat shards are masked the same way
    x, y = ds.batch(0, 4, 16)
    trained = y != IGNORE_INDEX
    assert trained.any() and not trained.all() and torch.equal(x[:, 1:][trained[:, :-1]], y[:, :-1][trained[:, :-1]])


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs(tok, tmp_path, monkeypatch):
    def prep(*files):
        return prepare(list(files), tok, tmp_path / "out", progress=False)

    with pytest.raises(DataError, match=r"x\.csv.*unsupported"):
        prep(tmp_path / "x.csv")
    with pytest.raises(DataError, match="neither a built-in corpus"):
        prepare("pydocs", tok, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prep(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        prep(bad)
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'text'"):
        prep(bad)
    bad.write_text('{"messages": [{"role": "user"}, {"content": "x"}]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: messages\[1\]"):
        prep(bad)
    bad.write_text('{"text": "fixed"}\n')  # the unfinished run on the bad file does not block the fixed one
    assert prepare([bad], tok, tmp_path / "out", val_fraction=0.0, progress=False)["complete"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no training documents"):
        prepare([empty], tok, tmp_path / "empty", progress=False)
    pq = tmp_path / "d.parquet"
    pq.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="pip install pyarrow"):
        prepare([pq], tok, tmp_path / "pq", progress=False)
    with pytest.raises(DataError, match="unknown split"):
        TokenDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        TokenDataset(tmp_path / "nowhere")


def test_parquet(tok, tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed (optional)")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["first document", "second one"], "id": [1, 2]}), tmp_path / "d.parquet")
    prepare([tmp_path / "d.parquet"], tok, tmp_path / "o", val_fraction=0.0, progress=False)
    ds = TokenDataset(tmp_path / "o")
    assert [tok.decode(ds.document(i).input_ids) for i in range(2)] == [
        f"<｜begin▁of▁sentence｜>{t}<｜end▁of▁sentence｜>" for t in ("first document", "second one")]


def test_cli(tok, inputs, tmp_path, capsys):
    tok_dir = tok.name_or_path
    out = tmp_path / "cli"
    args = ["data", "prepare", "--input", *map(str, inputs), "--tokenizer", tok_dir, "--out", str(out),
            "--no-progress"]
    assert main(args) == 0 and "train tokens" in capsys.readouterr().out
    assert TokenDataset(out).num_documents > 0
    assert main(["data", "prepare", "--input", str(tmp_path / "nope.txt"), "--tokenizer", tok_dir,
                 "--out", str(out)]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
