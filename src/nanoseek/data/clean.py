"""`nanoseek data clean`: exact dedup, near dedup, quality filters and decontamination, on datatrove.

    OUT/kept/00000.jsonl.gz ...       surviving documents, `{"id", "text"}`, in input order (`data prepare --input
                                      OUT/kept` reads them)
    OUT/removed/STAGE/*.jsonl.gz      what each stage removed, with the reason
    OUT/report.json, OUT/report.md    {"input": N, "kept": K, "removed": {stage: count}, ...}
    OUT/work/                         input shards, signatures, indexes, datatrove logs and completion markers

Stages, in order, each switchable (`steps`):
- exact: datatrove's ExactDedup (signature -> find -> filter) on a hash of the normalized text;
- near: datatrove's MinHash dedup (signatures -> LSH buckets -> clusters -> filter) over word n-grams; the
  threshold becomes bands x rows with datasketch's LSH parameter optimizer;
- quality: datatrove's Gopher quality, Gopher repetition, FineWeb and C4 (document-level rules) filters;
- decontaminate: drop documents holding an evaluation prompt verbatim, or sharing a word n-gram (13) with one.

Parallelism: each stage runs as datatrove LocalPipelineExecutor jobs over `workers` input shards. Memory: the
readers stream; what is held is the dedup index (signatures, duplicate ids) and the prompt index. Resume: every job
marks its finished tasks in OUT/work/logs/JOB/completions, so a rerun of the same command skips them.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from .corpora import DataError, _parquet, _txt, expand_inputs, file_kind, jsonl_rows

STEPS = ("exact", "near", "quality", "decontaminate")
FORMAT = "nanoseek-clean/1"


# ------------------------------------------------------------------------------------------------------ inputs
def _bad_utf8_line(p: Path) -> int | None:
    """The 1-based line of the first invalid UTF-8 byte sequence (for the error message), or None."""
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


def _check_file(p: Path) -> None:
    if p.stat().st_size == 0:
        raise DataError(f"{p}: empty file (no documents)")
    if file_kind(p) in (".txt", ".jsonl"):
        with p.open("rb") as f:
            if b"\x00" in f.read(1 << 16):  # text never holds NUL bytes; binaries nearly always do
                raise DataError(f"{p}: binary file, not text (a NUL byte in its first 64 KiB)")


def records(p: Path) -> Iterator[tuple[str, str]]:
    """(id, text) of each document of one input file: the input's `id` when present, else `FILE:LINE` (jsonl) or
    `FILE#INDEX` (txt, parquet), stable across runs. Chats are rejected: cleaning is for pretraining text."""
    kind = file_kind(p)
    try:
        if kind in (".jsonl", ".jsonl.gz"):
            for where, row in jsonl_rows(p):
                if not isinstance(row.get("text"), str):
                    raise DataError(f"{where}: needs a string field 'text' (data clean reads plain-text documents"
                                    + ("; chat 'messages' rows are for SFT)" if "messages" in row else ")"))
                doc_id = row.get("id")
                yield (str(doc_id) if doc_id is not None else f"{p.name}:{where.rsplit(':', 1)[1]}"), row["text"]
        else:
            for i, text in enumerate(_txt(p) if kind == ".txt" else _parquet(p)):
                yield f"{p.name}#{i}", text
    except UnicodeDecodeError as e:
        line = _bad_utf8_line(p)
        raise DataError(f"{p}{f':{line}' if line else ''}: not UTF-8 text ({e.reason})") from None
    except DataError:
        raise
    except (OSError, ValueError) as e:  # pyarrow on a damaged parquet, gzip on a damaged .jsonl.gz
        raise DataError(f"{p}: unreadable {kind} file ({type(e).__name__}: {e})") from None


def ingest(paths: Sequence[Path], folder: Path, shards: int, progress: bool) -> dict[str, int]:
    """Read and validate every input, then write its non-empty documents into `shards` contiguous gzipped jsonl
    shards (datatrove's JsonlWriter), so shard order is input order. Two passes: the first fails fast on bad input
    before any work and counts the documents, so each shard gets an equal, contiguous share."""
    from datatrove.data import Document
    from .clean_stages import writer

    for p in paths:
        _check_file(p)
    n = nbytes = 0
    for p in tqdm(paths, desc="checking inputs", unit="file", disable=not progress or len(paths) < 2):
        for _, text in records(p):
            n += bool(text.strip())
            nbytes += len(text.encode("utf-8"))
    if n == 0:
        raise DataError(f"no documents in {', '.join(map(str, paths))}")
    per = -(-n // shards)
    out = writer(folder)
    with out, tqdm(total=n, desc="reading inputs", unit="doc", disable=not progress) as bar:
        i = 0
        for p in paths:
            for doc_id, text in records(p):
                if text.strip():
                    out.write(Document(text=text, id=doc_id), rank=i // per)
                    i += 1
                    bar.update()
    return {"documents": n, "bytes": nbytes}


# ------------------------------------------------------------------------------------------------ decont sources
def eval_prompts(spec: str, limit: int) -> tuple[str, list[str]]:
    """Prompts of one `--decontaminate` entry: a built-in task name, optionally with levels (`arithmetic:1,2,3`):
    the first `limit` test problems `nanoseek eval` draws for those levels (the same stream, so its evaluation
    set is a prefix); or a jsonl file of prompts (`prompt`, `text`, `question` or chat `messages` per line)."""
    from .. import tasks
    name, _, levels = spec.partition(":")
    if name in tasks.names():
        from ..evaluate.accuracy import builtin_problems
        try:
            lo, _, hi = levels.partition("-")
            lv = (list(range(int(lo), int(hi) + 1)) if hi else [int(x) for x in levels.split(",")]) if levels \
                else None
        except ValueError:
            raise DataError(f"--decontaminate {spec!r}: levels must be like 1,2,3 or 1-3") from None
        _, problems = builtin_problems(name, limit, lv)
        return spec.replace(":", "_").replace(",", "-"), [p.question for p in problems]
    p = Path(spec)
    if not p.is_file():
        raise DataError(f"--decontaminate {spec!r}: neither a built-in task ({', '.join(tasks.names())}) nor a file")
    _check_file(p)
    prompts = []
    for where, row in jsonl_rows(p):
        if isinstance(row.get("messages"), list):
            prompts += [m["content"] for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"
                        and isinstance(m.get("content"), str)]
            continue
        text = next((row[k] for k in ("prompt", "text", "question", "problem") if isinstance(row.get(k), str)), None)
        if text is None:
            raise DataError(f"{where}: needs a string 'prompt' (or 'text', 'question', 'problem', chat 'messages')")
        prompts.append(text)
    return p.stem, prompts


# ------------------------------------------------------------------------------------------------------ pipeline
def _near_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for a Jaccard threshold: datasketch's optimizer over the LSH S-curve, weighted 0.1 /
    0.9 toward recall (a missed near duplicate is the costlier error here). 128 permutations at 0.8 give 14 x 9,
    next to datatrove's default 14 x 8: about 87% of pairs at Jaccard 0.8 and 97% at 0.85 become candidates."""
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
    return lsh.b, lsh.r


class _Run:
    """One clean run's directories and job launcher."""

    def __init__(self, out: Path, workers: int, progress: bool):
        self.out, self.work, self.workers, self.progress = out, out / "work", workers, progress

    def job(self, name: str, pipeline: list, tasks: int) -> None:
        from datatrove.executor import LocalPipelineExecutor
        # fork where there is one: a forkserver worker re-imports datatrove and spacy, seconds per job and stage
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=max(1, min(self.workers, tasks)),
                              logging_dir=str(self.work / "logs" / name), start_method=method).run()

    def reader(self, folder: Path):
        from datatrove.pipeline.readers import JsonlReader
        return JsonlReader(str(folder), doc_progress=self.progress, add_file_path=False, glob_pattern="*.jsonl.gz")

    def exact(self, src: Path, dst: Path, tasks: int) -> None:
        from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                          ExactFindDedups)
        from .clean_stages import HASH, case_priority, normalized_text, writer
        cfg = ExactDedupConfig(content_getter=normalized_text, document_priority=case_priority, hash_config=HASH)
        w = self.work / "exact"
        self.job("exact_1_signatures", [self.reader(src), ExactDedupSignature(str(w / "sigs"), cfg)], tasks)
        self.job("exact_2_find", [ExactFindDedups(str(w / "sigs"), str(w / "dups"), cfg)], 1)
        self.job("exact_3_filter", [self.reader(src), ExactDedupFilter(
            str(w / "dups"), cfg, exclusion_writer=writer(self.out / "removed" / "exact", removed=True)),
            writer(dst)], tasks)

    def near(self, src: Path, dst: Path, tasks: int, n: int, threshold: float, num_perm: int) -> None:
        from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                      MinhashDedupFilter, MinhashDedupSignature)
        from .clean_stages import HASH, NORM, writer
        bands, rows = _near_params(threshold, num_perm)
        cfg = MinhashConfig(n_grams=n, num_buckets=bands, hashes_per_bucket=rows, norm_config=NORM, hash_config=HASH)
        w = self.work / "near"
        self.job("near_1_signatures", [self.reader(src), MinhashDedupSignature(str(w / "sigs"), cfg)], tasks)
        self.job("near_2_buckets", [MinhashDedupBuckets(str(w / "sigs"), str(w / "buckets"), config=cfg)], bands)
        self.job("near_3_clusters", [MinhashDedupCluster(str(w / "buckets"), str(w / "remove"), config=cfg)], 1)
        self.job("near_4_filter", [self.reader(src), MinhashDedupFilter(
            str(w / "remove"), exclusion_writer=writer(self.out / "removed" / "near", removed=True)),
            writer(dst)], tasks)

    def final(self, src: Path, tasks: int, quality: bool, decont_index: Path | None, decont_n: int) -> None:
        from .clean_stages import DecontFilter, quality_filters, writer
        steps: list = [self.reader(src)]
        if quality:
            steps += quality_filters(self.out / "removed" / "quality")
        if decont_index is not None:
            steps.append(DecontFilter(decont_index, decont_n, exclusion_writer=writer(
                self.out / "removed" / "decontaminate", removed=True)))
        self.job("final", steps + [writer(self.out / "kept")], tasks)


def _count(folder: Path) -> tuple[int, dict[str, int]]:
    """Rows in a folder's jsonl.gz files, and their count per `reason` (or per task, for decontamination)."""
    import gzip
    n, why = 0, {}
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                n += 1
                key = row.get("reason") if "task" not in row else f"{row['task']}"
                if key:
                    why[key] = why.get(key, 0) + 1
    return n, why


def _fingerprint(paths: Sequence[Path], settings: dict[str, Any]) -> str:
    files = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return hashlib.sha256(json.dumps([FORMAT, files, settings], sort_keys=True).encode()).hexdigest()


def clean(inputs: Iterable[str | Path], out: str | Path, *, steps: Sequence[str] | None = None,
          decontaminate: Sequence[str] = (), near_ngram: int = 5, near_threshold: float = 0.8,
          num_perm: int = 128, decont_ngram: int = 13, decont_limit: int = 10_000, workers: int = 2,
          progress: bool = True) -> dict[str, Any]:
    """Clean `inputs` (files or directories: .txt, .jsonl, .jsonl.gz, .parquet) into `out`; returns the report.
    `steps`: the stages to run, in the fixed order of STEPS (default: all; decontaminate needs `decontaminate`
    sources). Rerunning the same call resumes an interrupted run, and is a no-op on a finished one."""
    chosen = list(STEPS if steps is None else steps)
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise DataError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    if steps is None and not decontaminate:
        chosen.remove("decontaminate")
    if "decontaminate" in chosen and not decontaminate:
        raise DataError("the decontaminate step needs --decontaminate TASKS_OR_FILES (e.g. arithmetic:1,2,3)")
    if not 0 < near_threshold < 1 or near_ngram < 1 or decont_ngram < 1 or workers < 1:
        raise DataError("near_threshold must be in (0, 1); near_ngram, decont_ngram and workers positive")
    chosen = [s for s in STEPS if s in chosen]
    paths = expand_inputs(inputs)
    outp = Path(out)
    settings = dict(steps=chosen, decontaminate=list(decontaminate), near_ngram=near_ngram,
                    near_threshold=near_threshold, num_perm=num_perm, decont_ngram=decont_ngram,
                    decont_limit=decont_limit, workers=workers)
    fp = _fingerprint(paths, settings)
    run_file = outp / "work" / "run.json"
    if (outp / "report.json").exists():  # finished (OUT/work may have been deleted since): nothing to do
        done = json.loads((outp / "report.json").read_text())
        if done.get("fingerprint") != fp:
            raise DataError(f"{outp} holds a clean run of other inputs or settings; use another --out or delete it")
        return done
    if run_file.exists() and json.loads(run_file.read_text()).get("fingerprint") != fp:
        # An unfinished run of other inputs (e.g. stopped by a bad line since fixed): its partial output is of no use.
        for sub in ("work", "kept", "removed"):
            shutil.rmtree(outp / sub, ignore_errors=True)
    outp.mkdir(parents=True, exist_ok=True)
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fp, "inputs": [str(p) for p in paths], **settings}, indent=1))

    t0 = time.perf_counter()
    run = _Run(outp, workers, progress)
    shard_dir = outp / "work" / "input"
    info_file = shard_dir / "INGESTED.json"
    if not info_file.exists():  # written last: a run killed mid-ingest starts the ingest over
        if shard_dir.exists():
            for f in shard_dir.glob("*.jsonl.gz"):
                f.unlink()
        info = ingest(paths, shard_dir, workers, progress)
        info_file.write_text(json.dumps(info))
    info = json.loads(info_file.read_text())
    tasks = max(1, len(list(shard_dir.glob("*.jsonl.gz"))))
    timings: dict[str, float] = {"read": round(time.perf_counter() - t0, 2)}

    src = shard_dir
    for stage in ("exact", "near"):
        if stage in chosen:
            t = time.perf_counter()
            dst = outp / "work" / f"after_{stage}"
            if stage == "exact":
                run.exact(src, dst, tasks)
            else:
                run.near(src, dst, tasks, near_ngram, near_threshold, num_perm)
            src = dst
            timings[stage] = round(time.perf_counter() - t, 2)
            tasks = max(1, len(list(src.glob("*.jsonl.gz"))))
    t = time.perf_counter()
    index, prompt_counts = None, {}
    if "decontaminate" in chosen:
        index = outp / "work" / "decont_index"
        prompt_counts = build_index(decontaminate, index, decont_ngram, decont_limit)
    if not any(src.glob("*.jsonl.gz")):  # everything removed already: nothing for the last job to read
        (outp / "kept").mkdir(exist_ok=True)
    else:
        run.final(src, tasks, "quality" in chosen, index, decont_ngram)
    timings["quality+decontaminate"] = round(time.perf_counter() - t, 2)
    return _report(outp, info, chosen, prompt_counts, {**settings, "fingerprint": fp}, timings,
                   time.perf_counter() - t0)


def build_index(sources: Sequence[str], folder: Path, n: int, limit: int) -> dict[str, int]:
    from .clean_stages import build_decont_index
    prompts: dict[str, list[str]] = {}
    for spec in sources:
        name, texts = eval_prompts(spec, limit)
        if not texts:
            raise DataError(f"--decontaminate {spec!r}: no prompts")
        prompts[name] = prompts.get(name, []) + texts
    return build_decont_index(prompts, folder, n)


def _report(out: Path, info: dict[str, int], chosen: list[str], prompts: dict[str, int], settings: dict[str, Any],
            timings: dict[str, float], seconds: float) -> dict[str, Any]:
    removed, reasons = {}, {}
    for stage in chosen:
        removed[stage], why = _count(out / "removed" / stage)
        if why:
            reasons[stage] = why
    kept = info["documents"] - sum(removed.values())
    report = {"input": info["documents"], "kept": kept, "removed": removed, "reasons": reasons,
              "input_bytes": info["bytes"], "seconds": round(seconds, 2), "timings": timings,
              "docs_per_s": round(info["documents"] / max(seconds, 1e-9), 1),
              "mb_per_s": round(info["bytes"] / 1e6 / max(seconds, 1e-9), 3),
              "decontamination_prompts": prompts, "fingerprint": settings.pop("fingerprint"),
              "settings": settings}
    from ..files import atomic_write
    lines = [f"# data clean: {out}", "", f"{report['input']:,} documents in ({info['bytes'] / 1e6:.2f} MB), "
             f"{kept:,} kept ({kept / max(report['input'], 1):.1%}), in {seconds:.1f}s "
             f"({report['docs_per_s']:,} docs/s, {report['mb_per_s']} MB/s).", "",
             "| stage | removed | share of input | reasons |", "|---|---|---|---|"]
    for stage in STEPS:
        if stage not in chosen:
            lines.append(f"| {stage} | - | - | (not run) |")
            continue
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.get(stage, {}).items(), key=lambda kv: -kv[1]))
        lines.append(f"| {stage} | {removed[stage]:,} | {removed[stage] / max(report['input'], 1):.2%} | {why} |")
    if prompts:
        lines += ["", "Decontaminated against: " + ", ".join(f"{k} ({v:,} prompts)" for k, v in prompts.items())]
    lines += ["", f"Kept documents: `{out / 'kept'}` (`nanoseek data prepare --input {out / 'kept'} ...`); "
              f"removed ones: `{out / 'removed'}/STAGE/`."]
    atomic_write(out / "report.md", ("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write(out / "report.json", (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    return report


def summary(report: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v:,}" for k, v in report["removed"].items())
    return (f"{report['input']:,} documents -> {report['kept']:,} kept; removed: {parts or 'nothing'} "
            f"({report['seconds']}s, {report['docs_per_s']:,} docs/s, {report['mb_per_s']} MB/s)")


__all__ = ["STEPS", "clean", "summary", "records", "eval_prompts"]
