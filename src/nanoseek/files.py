"""Crash-safe file writes, JSON reads and byte sizes: the one way nanoseek writes a file or a directory that others
may read, and reads the JSON it (or a user) wrote.

Every write goes to a temporary sibling, is fsynced, renamed over the target and the directory is fsynced, so a
reader (or a process restarted after a crash) sees the old content or the complete new one, never a partial file.

Temporary names follow one scheme, `.NAME.tmp-PID-RANDOM` next to NAME: hidden, on the same filesystem (rename is
atomic only there), distinct for concurrent writers, and tied to the writing process so that the leftovers of a
killed writer can be recognised (`temp_glob`) and removed once that process is gone (`remove_stale_temps`).
Standard library only: every other module may import this one.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "fsync", "fsync_dir", "jsonl_values", "parse_size",
           "read_json_object", "remove_stale_temps", "save_figure", "temp_glob", "temp_sibling", "write_json"]

StrPath = str | os.PathLike


# ------------------------------------------------------------------------------------------------ temporary names
def temp_sibling(path: StrPath) -> Path:
    """A fresh temporary name next to `path` (`.NAME.tmp-PID-RANDOM`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def temp_glob(name: str) -> str:
    """Glob pattern (relative to the directory) of the temporary siblings of files named `name` (may hold `*`)."""
    return f".{name}.tmp-*"


def _writer_pid(temp: Path) -> int | None:
    m = re.match(r"\..+\.tmp-(\d+)-[^-]+$", temp.name)
    return int(m.group(1)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive but someone else's, or not a PID at all: leave it
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_temps(path: StrPath) -> list[Path]:
    """Remove the temporary siblings of `path` that a killed writer left behind, only when that process is gone
    (a live one may still be writing). Returns what was removed."""
    path = Path(path)
    gone = []
    for p in path.parent.glob(temp_glob(glob.escape(path.name))):
        pid = _writer_pid(p)
        if pid is not None and not _alive(pid):
            _remove(p)
            gone.append(p)
    return gone


# ------------------------------------------------------------------------------------------------ fsync
def fsync(path: StrPath) -> None:
    """Flush a file's data to disk (fsync works on a read-only descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: StrPath) -> None:
    """Make renames and new entries in directory `path` durable. Best effort: some filesystems and platforms
    refuse to open or fsync a directory, and the data itself is already on disk by then."""
    with contextlib.suppress(OSError):
        fsync(path)


def _fsync_tree(root: Path) -> None:
    for d, _, names in os.walk(root):
        for name in names:
            if not os.path.islink(os.path.join(d, name)):
                fsync(os.path.join(d, name))
        fsync_dir(d)


# ------------------------------------------------------------------------------------------------ files
@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path for a writer that needs a file name (torch.save, savefig, safetensors); when the
    block ends normally the file is fsynced and renamed over `path`, on an exception it is removed. Missing parent
    directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: StrPath, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically; returns the path. Permissions follow the umask."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return Path(path)


def write_json(path: StrPath, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               ensure_ascii: bool = True, default: Callable[[Any], Any] | None = str) -> Path:
    """`obj` as JSON plus a final newline, atomically. Values JSON has no type for (paths, dtypes) are written as
    their str() by default, so a report never fails at its last step; pass default=None to refuse them."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    return atomic_write(path, text + "\n")


def save_figure(fig: Any, path: StrPath, **savefig: Any) -> Path:
    """A matplotlib figure as PNG (tight bounding box unless told otherwise), atomically."""
    savefig = {"format": "png", "bbox_inches": "tight", **savefig}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig)
    return Path(path)


# ------------------------------------------------------------------------------------------------ reading JSON
def read_json_object(path: StrPath) -> dict[str, Any]:
    """A JSON file holding one object (config.json, tokenizer_config.json...); errors name the file."""
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{p}: expected a JSON object, not {type(value).__name__}")
    return value


def jsonl_values(path: StrPath, *, partial_tail: bool = False,
                 error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a `.jsonl` or `.jsonl.gz` file, read lazily. A line that is
    not JSON raises `error` naming the file and line; with `partial_tail`, an unterminated last line that is not
    JSON (a writer killed mid-line) ends the file instead."""
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if partial_tail and n > 1 and not line.endswith("\n"):
                    return
                raise error(f"{p}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield n, value


# ------------------------------------------------------------------------------------------------ directories
def atomic_dir(path: StrPath, fill: Callable[[Path], None]) -> Path:
    """Build a directory with `fill(tmp)` in a temporary sibling, fsync everything in it, then rename it to
    `path` (absolute, returned). An existing directory is replaced: it is moved aside, the new one renamed in, and
    the old one deleted; if that second rename fails the old one is put back. Temporaries of dead writers of the
    same directory are removed first."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_sibling(path)
    tmp.mkdir()  # permissions follow the umask (tempfile.mkdtemp would make the directory private to its owner)
    old: Path | None = None
    try:
        fill(tmp)
        _fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------------ sizes
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | float | str, what: str = "size") -> int:
    """Bytes from a positive number (5_000_000_000, 1.5e9) or a string: a number and an optional unit, any case,
    spaces allowed: B; k/KB, M/MB, G/GB, T/TB (powers of 10, as transformers' max_shard_size); KiB, MiB, GiB, TiB
    (powers of 2). Fractions of a byte are dropped. `what` names the setting in the error messages."""
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", size)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{what}: cannot read {size!r} as a size (e.g. '5GB', '500MB', '1.5GiB', '512k' or a "
                             "number of bytes)")
        value = Fraction(m.group(1)) * _UNITS[m.group(2).lower()]  # exact, unlike float, for any length
    elif isinstance(size, (int, float)) and not isinstance(size, bool) and math.isfinite(size):
        value = Fraction(size)
    else:
        raise ValueError(f"{what}: expected a number of bytes or a size like '5GB', got {size!r}")
    if int(value) <= 0:
        raise ValueError(f"{what}: must be at least one byte, got {size!r}")
    return int(value)
