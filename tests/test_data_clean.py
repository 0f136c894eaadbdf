"""`nanoseek data clean`: every stage on a synthetic dirty corpus with known answers, the output format, `data
prepare` on its output, resume, decontamination details, and bad input (each error names the file and line)."""
import gzip
import json
from pathlib import Path

import pytest

from nanoseek.cli import main
from nanoseek.data import DataError, prepare
from nanoseek.data.clean import clean, records
from nanoseek.data.synthetic import TARGETS, dirty_corpus, score

DECONT = ["arithmetic:1,2,3", "countdown"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh]
    return out


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return dirty_corpus(60, seed=1)


@pytest.fixture(scope="module")
def cleaned(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """The whole pipeline once, in-process (workers=1: no process start-up in the tests)."""
    d = tmp_path_factory.mktemp("clean")
    src = _write_jsonl(d / "dirty.jsonl", corpus)
    report = clean([src], d / "out", decontaminate=DECONT, decont_limit=200, workers=1, progress=False)
    return d / "out", report


def test_every_stage_meets_its_target_on_the_synthetic_corpus(corpus, cleaned):
    out, _ = cleaned
    res = score(corpus, out)
    for name, value in res["targets"].items():
        assert value >= TARGETS[name], (name, value, res)
    for stage in ("exact", "near", "decontaminate"):
        assert res[stage]["precision"] == 1.0, (stage, res[stage])
    assert res["quality"]["precision"] >= 0.8, res["quality"]


def test_report_counts_match_the_output_files(corpus, cleaned):
    out, report = cleaned
    assert report["input"] == len(corpus)
    kept = _rows(out / "kept")
    assert report["kept"] == len(kept) > 0
    assert set(report["removed"]) == {"exact", "near", "quality", "decontaminate"}
    for stage, n in report["removed"].items():
        assert len(_rows(out / "removed" / stage)) == n
    assert report["kept"] + sum(report["removed"].values()) == report["input"]
    assert json.loads((out / "report.json").read_text())["kept"] == report["kept"]
    md = (out / "report.md").read_text()
    assert "| exact |" in md and "| decontaminate |" in md
    assert all(set(r) == {"id", "text"} for r in kept)
    # kept documents stay in input order
    order = {r["id"]: i for i, r in enumerate(corpus)}
    positions = [order[r["id"]] for r in kept]
    assert positions == sorted(positions)
    # the removed ones say why
    assert all("reason" in r for r in _rows(out / "removed" / "quality"))
    assert all(r["task"] in ("arithmetic_1-2-3", "countdown") for r in _rows(out / "removed" / "decontaminate"))


def test_rerun_is_a_no_op_and_prepare_reads_the_kept_directory(cleaned, tmp_path):
    out, report = cleaned
    src = out.parent / "dirty.jsonl"
    again = clean([src], out, decontaminate=DECONT, decont_limit=200, workers=1, progress=False)
    assert again == report
    with pytest.raises(DataError, match="other inputs or settings"):
        clean([src], out, decontaminate=DECONT, decont_limit=100, workers=1, progress=False)
    from nanoseek.data.corpora import pydoc_documents
    from nanoseek.tokenizer import train_tokenizer
    tok = train_tokenizer(iter(list(pydoc_documents())[:10]), vocab_size=300, out_dir=tmp_path / "tok")
    manifest = prepare([out / "kept"], tok, tmp_path / "tokens", progress=False)
    docs = sum(s["documents"] for s in manifest["splits"].values())
    assert docs == report["kept"]
    assert [Path(f["path"]).name for f in manifest["source"]["files"]] == \
        sorted(p.name for p in (out / "kept").glob("*.jsonl.gz"))


def test_interrupted_run_resumes_with_two_workers(corpus, tmp_path):
    rows = corpus[:30] + [{"id": f"copy-{i}", "text": r["text"]} for i, r in enumerate(corpus[:3])]
    src = _write_jsonl(tmp_path / "dirty.jsonl", rows)
    out = tmp_path / "out"
    first = clean([src], out, steps=["exact"], workers=2, progress=False)
    assert first["removed"]["exact"] >= 3
    # as if killed during the last job: its second task unfinished, its output gone, no report
    logs = out / "work" / "logs" / "final"
    (logs / "completions" / "00001").unlink()
    for f in (out / "kept").glob("00001*"):
        f.unlink()
    (out / "report.json").unlink()
    signatures = out / "work" / "logs" / "exact_1_signatures" / "stats.json"
    before = signatures.stat().st_mtime_ns
    second = clean([src], out, steps=["exact"], workers=2, progress=False)
    assert signatures.stat().st_mtime_ns == before  # finished jobs are skipped, not rerun
    assert {k: second[k] for k in ("input", "kept", "removed")} == {k: first[k] for k in ("input", "kept", "removed")}
    assert len(_rows(out / "kept")) == second["kept"]


def test_decontamination_against_a_user_prompt_file(tmp_path):
    long_prompt = ("Explain in detail why the river that runs past the old mill floods every spring while the "
                   "smaller creek beside it never does")
    prompts = _write_jsonl(tmp_path / "evals.jsonl", [{"prompt": "What is 99+87?"}, {"prompt": long_prompt},
                                                       {"messages": [{"role": "user", "content": "Name the tallest "
                                                                      "mountain on the island."}]}])
    filler = "The village kept its records in a small wooden library near the harbor. " * 3
    docs = [
        {"id": "short", "text": filler + "Quiz: what is 99 + 87 ? It is 186."},  # normalized: case and spacing
        {"id": "longer-number", "text": filler + "What is 99+876? A bigger sum."},  # word boundary: not a match
        {"id": "ngram", "text": filler + "Why the river that runs past the old mill floods every spring while "
                                         "the smaller creek stays calm is a good question."},
        {"id": "chat", "text": filler + "name the tallest mountain on the island."},
        {"id": "clean", "text": filler + "Nothing here is a test question."},
    ]
    src = _write_jsonl(tmp_path / "docs.jsonl", docs)
    report = clean([src], tmp_path / "out", steps=["decontaminate"], decontaminate=[str(prompts)], workers=1,
                   progress=False)
    removed = {r["id"] for r in _rows(tmp_path / "out" / "removed" / "decontaminate")}
    assert removed == {"short", "ngram", "chat"}
    assert report["kept"] == 2 and report["decontamination_prompts"] == {"evals": 3}


def test_generated_ids_are_stable_and_name_the_source(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("first document\n\nsecond document\n", encoding="utf-8")
    jl = _write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"text": "b", "id": 7}])
    assert list(records(txt)) == [("notes.txt#0", "first document"), ("notes.txt#1", "second document")]
    assert list(records(jl)) == [("rows.jsonl:1", "a"), ("7", "b")]


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", "empty file"),
    ("blob.txt", b"text\x00\x01\x02binary", "binary file"),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": broken\n', "bad.jsonl:2: invalid JSON"),
    ("latin1.txt", "first line\ncaf\u00e9\n".encode("latin-1"), "latin1.txt:2: not UTF-8"),
    ("latin1.jsonl", '{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"), "latin1.jsonl:2: not UTF-8"),
    ("chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n', "chat.jsonl:1: needs a string field"),
    ("broken.parquet", b"PAR1 not really a parquet file", "broken.parquet: unreadable .parquet"),
    ("broken.jsonl.gz", b"not gzip at all", "broken.jsonl.gz: unreadable .jsonl.gz"),
])
def test_bad_input_names_the_file_and_line(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("+", r"\+")):
        clean([p], tmp_path / "out", steps=["exact"], workers=1, progress=False)


def test_bad_settings(tmp_path):
    src = _write_jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="unknown step"):
        clean([src], tmp_path / "o1", steps=["dedup"], progress=False)
    with pytest.raises(DataError, match="needs --decontaminate"):
        clean([src], tmp_path / "o2", steps=["decontaminate"], progress=False)
    with pytest.raises(DataError, match="neither a built-in task"):
        clean([src], tmp_path / "o3", decontaminate=["nosuchtask"], progress=False)


def test_cli(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "a.jsonl", [{"text": "The same words."}, {"text": "the  same words."},
                                              {"text": "Different words."}])
    assert main(["data", "clean", "--input", str(src), "--out", str(tmp_path / "out"), "--steps", "exact",
                 "--workers", "1", "--no-progress"]) == 0
    assert "3 documents -> 2 kept" in capsys.readouterr().out
    assert main(["data", "clean", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o2")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_txt_parquet_and_directory_inputs(tmp_path):
    """A directory is read recursively in path order (other file types ignored); the parquet's repeated row is an
    exact duplicate."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanoseek.data.synthetic import prose
    rng = random.Random(0)
    texts = [prose(rng) for _ in range(4)]
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(f"{texts[0]}\n\n\n{texts[1]}\n", encoding="utf-8")  # a document per paragraph
    pq.write_table(pa.table({"text": [texts[2], texts[3], texts[2]]}), d / "sub" / "b.parquet")
    (d / "ignored.csv").write_text("not an input", encoding="utf-8")
    report = clean([d], tmp_path / "out", steps=["exact"], workers=1, progress=False)
    kept = _rows(tmp_path / "out" / "kept")
    assert report["removed"] == {"exact": 1}
    assert [r["id"] for r in kept][-2:] == ["b.parquet#0", "b.parquet#1"]
    assert kept[0]["id"] == "a.txt#0"
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no input files"):
        clean([empty], tmp_path / "o2", progress=False)
