"""Where documents come from: built-in offline corpora and user files.

A document is either plain text (`str`) or a chat (`list` of `{"role", "content", ...}` messages). Every source
yields its documents in a fixed order, so a preparation run is a deterministic function of its inputs.

Built-in corpora (no download):
- `pydoc`: the reference documentation that ships with CPython (`pydoc_data.topics`), split at its section headings;
- `tasks`: worked solutions of the built-in verifiable tasks (`nanoseek.tasks`) as plain text;
- `builtin`: both (the default).

User files:
- `.txt`: blank lines separate documents (HF `datasets`' `sample_by="paragraph"`), so one large file still splits
  into many documents and the train/validation split works on it; a file without blank lines is one document;
- `.jsonl` (or gzipped `.jsonl.gz`, what `nanoseek data clean` writes): one JSON object per line with a `text`
  string, or a chat `messages` list; blank lines are skipped;
- `.parquet`: a `text` column, read batch by batch with `pyarrow` (optional dependency);
- a directory: its files of those types, recursively, in sorted path order (e.g. `data clean`'s `OUT/kept`).
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

from ..files import jsonl_values

Message = dict[str, Any]
Document = Union[str, list[Message]]

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")


class DataError(ValueError):
    """Bad input data: the message names the file (and line) at fault."""


# ------------------------------------------------------------------------------------------------ built-in corpora
# A section heading in the docs is a line underlined by '*' (topic title) or '=' (section) of the same length.
_HEADING = re.compile(r"^(?=\S)(.+)\n([*=])\2*$", re.MULTILINE)


def _split_sections(text: str) -> list[str]:
    starts = [m.start() for m in _HEADING.finditer(text) if len(m.group(0).split("\n")[1]) == len(m.group(1))]
    bounds = sorted({0, *starts}) + [len(text)]
    parts: list[str] = []
    carry = ""  # a title with (almost) no text of its own stays with the section that follows it
    for a, b in zip(bounds, bounds[1:]):
        part = carry + text[a:b].strip()
        carry = part + "\n\n" if len(part) < 200 and b < len(text) else ""
        if not carry and part:
            parts.append(part)
    return parts


def pydoc_documents() -> Iterator[str]:
    """CPython's own reference text (`pydoc_data.topics.topics`, the text `help("assert")` shows): ~80 topics,
    ~0.5 MB of English on Python 3.11, split at section headings into ~150 documents. Sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise DataError("the 'pydoc' corpus needs the standard library's pydoc_data module, which this Python "
                        "lacks; use --input FILES instead") from e
    for name in sorted(topics):
        yield from _split_sections(topics[name])


def task_documents(per_task: int = 2000, seed: int = 0) -> Iterator[str]:
    """`per_task` worked problems of each built-in verifiable task, levels mixed, as plain text (the prompt, then
    the `<think>` steps and the boxed answer), one problem per document. Only the tasks' train split is used, so
    their test problems stay unseen by pretraining."""
    try:
        from .. import tasks
    except ImportError as e:
        raise DataError("the 'tasks' corpus needs nanoseek.tasks (the built-in verifiable tasks), which is not "
                        "available in this installation; use --corpus pydoc or --input FILES") from e
    for name in tasks.names():
        task = tasks.get(name)
        levels = list(range(1, task.num_levels + 1))
        for example in itertools.islice(task.iter_examples(split="train", level=levels, seed=seed), per_task):
            yield task.document(example)


def _have_tasks() -> bool:
    try:
        from .. import tasks  # noqa: F401
    except ImportError:
        return False
    return True


def builtin_documents() -> Iterator[str]:
    """`pydoc` then `tasks` (order does not matter to training: windows are sampled at random); `pydoc` alone,
    with a warning, where nanoseek.tasks is missing."""
    yield from pydoc_documents()
    if _have_tasks():
        yield from task_documents()
    else:
        warnings.warn("nanoseek.tasks is not available: the builtin corpus is the pydoc corpus alone")


CORPORA: dict[str, Callable[[], Iterator[Document]]] = {
    "builtin": builtin_documents,
    "pydoc": pydoc_documents,
    "tasks": task_documents,
}


def corpus_documents(name: str) -> Iterator[Document]:
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; built-in corpora: {', '.join(CORPORA)}")
    return CORPORA[name]()


# ------------------------------------------------------------------------------------------------------ user files
def file_kind(path: str | Path) -> str:
    """The input type of a path: its suffix, except `.jsonl.gz` (two suffixes) for gzipped jsonl."""
    p = Path(path)
    return ".jsonl.gz" if p.name.endswith(".jsonl.gz") else p.suffix


def check_input(path: str | Path) -> Path:
    p = Path(path)
    if file_kind(p) not in SUFFIXES:
        raise DataError(f"{p}: unsupported file type {file_kind(p) or '(none)'!r}; expected one of "
                        f"{', '.join(SUFFIXES)}")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    return p


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory becomes its input files (recursively, sorted by path, so `OUT/kept/00000...`
    comes before `00001...` and the documents keep their order). A directory without any is an error."""
    out: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and file_kind(f) in SUFFIXES)
            if not found:
                raise DataError(f"{p}: directory holds no input files ({', '.join(SUFFIXES)})")
            out.extend(found)
        else:
            out.append(check_input(p))
    return out


def _txt(p: Path) -> Iterator[str]:
    """Streams the file line by line: a run of blank lines ends a document."""
    lines: list[str] = []
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


def _messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                not isinstance(m.get("content", ""), (str, type(None))):
            raise DataError(f"{where}: messages[{i}] needs a string 'role' and a string 'content'")
    return value


def jsonl_objects(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a `.jsonl` or `.jsonl.gz` file, read lazily (a line is
    parsed when it is reached); a line that is not a JSON object is a DataError naming the file and line."""
    for n, row in jsonl_values(p, error=DataError):
        if not isinstance(row, dict):
            raise DataError(f"{p}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def jsonl_rows(p: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, object) for each non-blank line, as `jsonl_objects`."""
    for n, row in jsonl_objects(p):
        yield f"{p}:{n}", row


def _jsonl(p: Path) -> Iterator[Document]:
    for where, row in jsonl_rows(p):
        if "text" in row:
            if not isinstance(row["text"], str):
                raise DataError(f"{where}: field 'text' must be a string")
            yield row["text"]
        elif "messages" in row:
            yield _messages(row["messages"], where)
        else:
            raise DataError(f"{where}: missing field 'text' (or a chat 'messages' list)")


def _parquet(p: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{p}: reading .parquet needs pyarrow: pip install pyarrow") from None
    f = pq.ParquetFile(p)
    if "text" not in f.schema_arrow.names:
        raise DataError(f"{p}: missing column 'text' (columns: {', '.join(f.schema_arrow.names)})")
    for batch in f.iter_batches(columns=["text"], batch_size=1024):
        for t in batch.column(0).to_pylist():
            if not isinstance(t, str):
                raise DataError(f"{p}: column 'text' holds a non-string value ({type(t).__name__})")
            yield t


def file_documents(path: str | Path) -> Iterator[Document]:
    p = check_input(path)
    read = {".txt": _txt, ".jsonl": _jsonl, ".jsonl.gz": _jsonl, ".parquet": _parquet}[file_kind(p)]
    try:
        yield from read(p)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{p}: not a readable gzip file ({e})") from None


def iter_documents(inputs: Iterable[str | Path]) -> Iterator[Document]:
    for path in expand_inputs(inputs):
        yield from file_documents(path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def document_key(doc: Document) -> bytes:
    """Canonical bytes of a document: what the split hash and the corpus fingerprint are computed from."""
    if isinstance(doc, str):
        return doc.encode("utf-8")
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
