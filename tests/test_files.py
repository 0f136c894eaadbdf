"""nanoseek.files: atomic writes (no partial file ever visible, temporaries removed on failure, stale ones of dead
writers cleaned up), JSON round trips, the atomic directory builder, and the byte-size parser."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanoseek.files import (atomic_dir, atomic_path, atomic_write, parse_size, remove_stale_temps, save_figure,
                            temp_glob, temp_sibling, write_json)


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------------------ files
def test_atomic_write_bytes_and_text(tmp_path):
    p = tmp_path / "sub" / "a.txt"  # missing parents are created
    assert atomic_write(p, b"\x00bytes") == p and p.read_bytes() == b"\x00bytes"
    atomic_write(p, "tëxt\n")
    assert p.read_bytes() == "tëxt\n".encode("utf-8")
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]  # no temporary left


def test_temp_names_are_hidden_siblings_unique_per_writer(tmp_path):
    a, b = temp_sibling(tmp_path / "x.bin"), temp_sibling(tmp_path / "x.bin")
    assert a != b and a.parent == tmp_path and a.name.startswith(f".x.bin.tmp-{os.getpid()}-")
    assert a.match(temp_glob("x.bin")) and a.match(temp_glob("*.bin"))


def test_no_partial_file_is_visible_and_the_temporary_is_removed_on_failure(tmp_path):
    p = tmp_path / "a.json"
    write_json(p, {"old": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(p) as tmp:
            tmp.write_text('{"new": ')  # half written
            assert json.loads(p.read_text()) == {"old": 1}  # readers still see the old file
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"old": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_a_writer_that_writes_nothing_fails_and_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write(p, b"old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(p):
            pass
    assert p.read_bytes() == b"old"


def test_write_json_round_trip_and_formats(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": {"é": "ü"}}
    p = write_json(tmp_path / "r.json", obj)
    assert json.loads(p.read_text(encoding="utf-8")) == obj
    assert p.read_text(encoding="utf-8") == json.dumps(obj, indent=2) + "\n"
    write_json(p, obj, indent=1, sort_keys=True, ensure_ascii=False)
    assert p.read_text(encoding="utf-8") == json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_json(p, {"path": Path("x/y")})  # values JSON cannot hold become their str()
    assert json.loads(p.read_text()) == {"path": "x/y"}
    with pytest.raises(TypeError):
        write_json(p, {"path": Path("x/y")}, default=None)
    assert json.loads(p.read_text()) == {"path": "x/y"}


def test_save_figure(tmp_path):
    class Fig:
        def savefig(self, path, **kw):
            assert kw == {"format": "png", "bbox_inches": "tight", "dpi": 50}
            Path(path).write_bytes(b"\x89PNG")
    assert save_figure(Fig(), tmp_path / "c.png", dpi=50).read_bytes() == b"\x89PNG"


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "m"
    dead_file = tmp_path / f".m.tmp-{_dead_pid()}-abcd"
    dead_dir = tmp_path / f".m.tmp-{_dead_pid()}-efgh"
    live = temp_sibling(target)  # this process: alive
    other = tmp_path / f".n.tmp-{_dead_pid()}-abcd"  # another target's
    dead_file.write_bytes(b"partial")
    dead_dir.mkdir()
    (dead_dir / "f").write_bytes(b"partial")
    live.write_bytes(b"writing")
    other.write_bytes(b"partial")
    assert sorted(remove_stale_temps(target)) == sorted([dead_file, dead_dir])
    assert live.exists() and other.exists() and not dead_file.exists() and not dead_dir.exists()


# ------------------------------------------------------------------------------------------------ directories
def test_atomic_dir_builds_and_replaces(tmp_path):
    d = tmp_path / "out"

    def fill(text):
        def f(tmp: Path) -> None:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
            (tmp / "a.txt").write_text(text)
            (tmp / "sub").mkdir()
            (tmp / "sub" / "b.txt").write_text(text)
        return f
    assert atomic_dir(d, fill("one")) == d
    assert (d / "a.txt").read_text() == "one" and (d / "sub" / "b.txt").read_text() == "one"
    atomic_dir(d, fill("two"))
    assert (d / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copy left


def test_atomic_dir_failure_keeps_the_old_directory(tmp_path):
    d = tmp_path / "out"
    atomic_dir(d, lambda tmp: (tmp / "a.txt").write_text("old"))

    def crash(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_dir(d, crash)
    assert (d / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OSError):
        atomic_dir(tmp_path / "new", crash)
    assert not (tmp_path / "new").exists()


def test_atomic_dir_refuses_a_file_and_cleans_dead_writers(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        atomic_dir(tmp_path / "f", lambda tmp: None)
    dead = tmp_path / f".out.tmp-{_dead_pid()}-abc"
    dead.mkdir()
    atomic_dir(tmp_path / "out", lambda tmp: None)
    assert not dead.exists()


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("text, expected", [
    # checkpoint.parse_size's grammar (transformers' max_shard_size)
    (5_000_000_000, 5_000_000_000), ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("300KB", 300_000), ("4GiB", 4 << 30),
    ("2TB", 2 * 10**12), ("1TiB", 1 << 40), ("123", 123), ("123B", 123), ("0.5KB", 500), (" 5 gb ", 5 * 10**9),
    # paged_cache.parse_bytes' grammar (cache_budget)
    (1.5e9, 1_500_000_000), ("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("1.5 GiB", 3 << 29), ("64KiB", 64 << 10),
    ("512k", 512_000), ("3m", 3 * 10**6), ("1g", 10**9), ("7b", 7), (".5KiB", 512), ("2.", 2),
    # exact for long numbers and decimals (floats would round these down)
    ("4.35MB", 4_350_000), ("123456789012345678901", 123456789012345678901),
])
def test_parse_size_reads_both_grammars(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "5XB", "5 G B", "-5GB", "1.2.3", "1e9", "five", "0", "0GB", 0, -3, 0.4,
                                 True, None, float("inf"), float("nan"), [5]])
def test_parse_size_errors_name_the_setting(bad):
    with pytest.raises(ValueError, match=r"^max_shard_size: .*(cannot read|positive|at least one byte|expected)"):
        parse_size(bad, "max_shard_size")


def test_the_engine_reads_its_cache_budget_with_parse_size():
    from nanoseek.infer import LLM
    from nanoseek.model import Transformer
    from nanoseek.presets import PRESETS
    from nanoseek.config import ModelConfig
    model = Transformer(ModelConfig.from_dict({**PRESETS["tiny"], "num_hidden_layers": 1})).eval()
    with pytest.raises(ValueError, match="cache_budget: cannot read .lots. as a size"):
        LLM(model, cache_budget="lots")


def test_training_checkpoint_cleanup_finds_both_temp_namings(tmp_path):
    """train.state writes step_*.pt through atomic_path; a kill leaves `.step_N.pt.tmp-PID-*` (or, from earlier
    versions, `step_N.pt.tmp.PID`), and resuming removes both, never a complete checkpoint."""
    from nanoseek.train.state import atomic_torch_save, checkpoints, clean_leftovers
    atomic_torch_save({"step": 1}, str(tmp_path / "step_0000001.pt"))
    new, old = temp_sibling(tmp_path / "step_0000002.pt"), tmp_path / "step_0000002.pt.tmp.4242"
    new.write_bytes(b"partial")
    old.write_bytes(b"partial")
    assert sorted(clean_leftovers(str(tmp_path))) == sorted([str(new), str(old)])
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000001.pt"]
    assert checkpoints(str(tmp_path)) == [(1, str(tmp_path / "step_0000001.pt"))]


def test_written_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic_write(tmp_path / "f", b"x")
        d = atomic_dir(tmp_path / "d", lambda tmp: (tmp / "g").write_bytes(b"y"))
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644 and d.stat().st_mode & 0o777 == 0o755
