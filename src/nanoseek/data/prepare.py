"""Documents to token shards on disk, resumably.

Output directory:
    manifest.json               what was prepared, from what, and the list of finished shards
    train_00000.bin             token ids, raw little-endian uint16 (vocabulary <= 65536) or uint32
    train_00000.idx.bin         uint64 document offsets into the shard (documents + 1 entries)
    train_00000.mask.bin        uint8 loss mask, only for shards holding chats (1 = training target)
    validation_00000.bin ...

Documents never straddle shards or splits. A document goes to validation when the hash of its content, read as a
number in [0, 1), is below `val_fraction`: stable under reordering, adding or removing other documents, and
duplicates land in the same split. Shards close after `shard_tokens` tokens, so the output is a deterministic
function of the inputs, the tokenizer and the settings (their hash is the manifest's `fingerprint`).

Resuming: each shard is written to a temporary file, fsynced and renamed, then the manifest (rewritten atomically
the same way) lists it. A rerun with the same fingerprint skips the documents of listed shards without tokenizing
them and continues; with a complete manifest it does nothing. A different fingerprint is an error when the
directory is complete, and starts over when it is not (the unfinished shards are of no use).
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_write, temp_glob, write_json
from .corpora import CORPORA, DataError, Document, corpus_documents, document_key, expand_inputs, file_sha256, \
    iter_documents
from .encode import encode_document, encoder, tokenizer_info

FORMAT = "nanoseek-tokens/1"
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, i.e. a vocabulary of up to 2**16 tokens."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_of(doc: Document, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.blake2b(document_key(doc), digest_size=8).digest(), "big")
    return "validation" if h / 2.0 ** 64 < val_fraction else "train"


def load_tokenizer(path: str | Path) -> Any:
    try:
        from ..tokenizer import Tokenizer
    except ImportError as e:
        raise DataError("loading a tokenizer directory needs nanoseek.tokenizer; pass a tokenizer object") from e
    return Tokenizer.from_pretrained(path)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_json(out / MANIFEST, manifest, indent=1, ensure_ascii=False, default=None)


def read_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `nanoseek data prepare --out {out}` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e.msg})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a nanoseek token manifest (format {manifest.get('format')!r})")
    return manifest


# ------------------------------------------------------------------------------------------------------ sources
def _source(inputs: str | Path | Sequence[str | Path]) -> tuple[Callable[[], Iterator[Document]], dict[str, Any]]:
    """A re-iterable document source and its description (with content hashes) for the manifest."""
    if isinstance(inputs, str) and inputs in CORPORA:
        h = hashlib.sha256()
        n = 0
        for n, doc in enumerate(corpus_documents(inputs), 1):
            h.update(hashlib.sha256(document_key(doc)).digest())
        return lambda: corpus_documents(inputs), {"corpus": inputs, "sha256": h.hexdigest(), "documents": n}
    if isinstance(inputs, str) and not Path(inputs).suffix and not Path(inputs).exists():
        raise DataError(f"{inputs!r} is neither a built-in corpus ({', '.join(CORPORA)}) nor a file")
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not paths:
        raise DataError("no inputs: give files (.txt, .jsonl, .jsonl.gz, .parquet), directories of them, or a "
                        f"corpus name ({', '.join(CORPORA)})")
    paths = expand_inputs(paths)  # a directory (e.g. `data clean`'s OUT/kept) becomes its files, in sorted order
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths]
    return lambda: iter_documents(paths), {"files": files}


def _fingerprint(source: dict[str, Any], tok: dict[str, Any], settings: dict[str, Any]) -> str:
    content = source.get("sha256") or [f["sha256"] for f in source["files"]]  # paths may move; contents count
    blob = json.dumps([FORMAT, content, tok["fingerprint"], settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# -------------------------------------------------------------------------------------------------------- shards
def _file_entry(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


Doc = tuple[np.ndarray, "np.ndarray | None"]  # token ids (dtype of the shards), loss mask (uint8) or None


def _write_shard(out: Path, split: str, index: int, docs: list[Doc], dtype: np.dtype) -> dict[str, Any]:
    stem = f"{split}_{index:05d}"
    tokens = np.concatenate([ids for ids, _ in docs])
    offsets = np.cumsum([0] + [len(ids) for ids, _ in docs], dtype=np.uint64)
    blobs = {f"{stem}.bin": tokens.astype(dtype.newbyteorder("<")).tobytes(),
             f"{stem}.idx.bin": offsets.astype("<u8").tobytes()}
    if any(mask is not None for _, mask in docs):  # plain text among chats: every token is a target
        masks = [mask if mask is not None else np.ones(len(ids), np.uint8) for ids, mask in docs]
        blobs[f"{stem}.mask.bin"] = np.concatenate(masks).tobytes()
    for name, data in blobs.items():
        atomic_write(out / name, data)
    return {"name": stem, "tokens": int(tokens.size), "documents": len(docs),
            "files": {name: _file_entry(data) for name, data in blobs.items()}}


def _shard_intact(out: Path, shard: dict[str, Any]) -> bool:
    return all((out / n).is_file() and (out / n).stat().st_size == f["bytes"] for n, f in shard["files"].items())


def _new_manifest(fingerprint: str, source: dict, tok: dict, dtype: np.dtype, settings: dict) -> dict[str, Any]:
    return {"format": FORMAT, "fingerprint": fingerprint, "complete": False, "source": source, "tokenizer": tok,
            "dtype": dtype.name, **settings, "loss_mask": False,
            "splits": {s: {"tokens": 0, "documents": 0, "shards": []} for s in SPLITS}}


def _resume(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The existing manifest when it matches, with shards whose files are missing or damaged dropped (and every
    later one of that split, since shard contents depend on the shards before)."""
    if not (out / MANIFEST).exists():
        return None
    manifest = read_manifest(out)
    if manifest["fingerprint"] != fingerprint:
        if manifest["complete"]:
            raise DataError(f"{out} holds tokens prepared from other inputs, tokenizer or settings; use another "
                            "--out directory or delete this one")
        # An unfinished run on other inputs (e.g. stopped by a bad line since fixed): its shards are of no use.
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                for name in shard["files"]:
                    (out / name).unlink(missing_ok=True)
        return None
    for split in manifest["splits"].values():
        good = []
        for shard in split["shards"]:
            if not _shard_intact(out, shard):
                manifest["complete"] = False
                break
            good.append(shard)
        split["shards"] = good
    return manifest


def _totals(manifest: dict[str, Any]) -> None:
    for split in manifest["splits"].values():
        split["tokens"] = sum(s["tokens"] for s in split["shards"])
        split["documents"] = sum(s["documents"] for s in split["shards"])
    manifest["loss_mask"] = any(any(n.endswith(".mask.bin") for n in s["files"])
                                for split in manifest["splits"].values() for s in split["shards"])


def prepare(inputs: str | Path | Sequence[str | Path], tokenizer: Any, out_dir: str | Path, *,
            val_fraction: float = 0.05, shard_tokens: int = 1 << 24, progress: bool = True) -> dict[str, Any]:
    """Tokenize `inputs` (file paths, or a built-in corpus name: builtin, pydoc, tasks) into shards in `out_dir`.

    `tokenizer` is a tokenizer object (see `encode.py` for the interface) or a directory for
    `nanoseek.Tokenizer.from_pretrained`. Returns the manifest. Resumes an interrupted run; a no-op when done.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    out = Path(out_dir)
    docs, source = _source(inputs)
    tok = tokenizer_info(tokenizer)
    dtype = token_dtype(tok["vocab_size"])
    settings = {"val_fraction": val_fraction, "shard_tokens": shard_tokens}
    fingerprint = _fingerprint(source, tok, settings)

    out.mkdir(parents=True, exist_ok=True)
    manifest = _resume(out, fingerprint)
    if manifest is not None and manifest["complete"]:
        return manifest
    # Temporary files left by a run killed mid-write (`*.tmp`: the names earlier versions used).
    for stale in [*out.glob(temp_glob("*")), *out.glob("*.tmp")]:
        stale.unlink()
    manifest = manifest or _new_manifest(fingerprint, source, tok, dtype, settings)
    write_manifest(out, manifest)

    splits = manifest["splits"]
    done = {s: sum(sh["documents"] for sh in splits[s]["shards"]) for s in SPLITS}  # documents already in shards
    seen = dict.fromkeys(SPLITS, 0)
    buffers: dict[str, list[Doc]] = {s: [] for s in SPLITS}
    buffered = dict.fromkeys(SPLITS, 0)
    encode = encoder(tokenizer)

    def flush(split: str) -> None:
        shard = _write_shard(out, split, len(splits[split]["shards"]), buffers[split], dtype)
        splits[split]["shards"].append(shard)
        _totals(manifest)
        write_manifest(out, manifest)
        buffers[split], buffered[split] = [], 0

    bar = tqdm(docs(), desc=f"tokenizing -> {out}", unit="doc", total=source.get("documents"),
               disable=not progress)
    try:
        for n, doc in enumerate(bar):
            if isinstance(doc, str) and not doc.strip():
                continue
            split = split_of(doc, val_fraction)
            seen[split] += 1
            if seen[split] <= done[split]:
                continue  # already in a finished shard
            ex = encode_document(tokenizer, doc, encode)
            if ex.input_ids and (max(ex.input_ids) >= tok["vocab_size"] or min(ex.input_ids) < 0):
                raise DataError(f"the tokenizer produced id {max(ex.input_ids)} outside its vocabulary of "
                                f"{tok['vocab_size']} (dtype {dtype.name})")
            # numpy arrays: a Python list of ints costs ~4x more memory than uint16 ids
            buffers[split].append((np.asarray(ex.input_ids, dtype),
                                   None if ex.loss_mask is None else np.asarray(ex.loss_mask, np.uint8)))
            buffered[split] += len(ex)
            if buffered[split] >= shard_tokens:
                flush(split)
            if n % 256 == 0:
                bar.set_postfix(shards=sum(len(s["shards"]) for s in splits.values()),
                                tokens=sum(s["tokens"] for s in splits.values()) + sum(buffered.values()))
        for split in SPLITS:
            if buffers[split]:
                flush(split)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted; finished shards are kept in {out}: rerun the same command to resume", file=sys.stderr)
        raise
    bar.close()

    if splits["train"]["documents"] == 0:
        raise DataError("no training documents: the inputs are empty" +
                        (" (or every document fell into validation)" if splits["validation"]["documents"] else ""))
    if val_fraction > 0 and splits["validation"]["documents"] == 0:
        warnings.warn(f"no document fell into the validation split (val_fraction={val_fraction}); "
                      "add data or raise val_fraction", stacklevel=2)
    manifest["complete"] = True
    _totals(manifest)
    write_manifest(out, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    s = manifest["splits"]
    return (f"{s['train']['tokens']:,} train tokens in {s['train']['documents']:,} documents "
            f"({len(s['train']['shards'])} shards), {s['validation']['tokens']:,} validation tokens in "
            f"{s['validation']['documents']:,} documents; dtype {manifest['dtype']}, "
            f"vocabulary {manifest['tokenizer']['vocab_size']:,}")
