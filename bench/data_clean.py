"""Benchmark of `nanoseek data clean` on a seeded synthetic dirty corpus with known answers.

    python bench/data_clean.py [--clean 2000] [--seed 0] [--workers 2] [--out /tmp/nanoseek-clean-bench]

Builds the corpus (`nanoseek.data.synthetic.dirty_corpus`: clean prose, exact copies, near copies, junk, documents
holding test prompts of the built-in arithmetic and countdown tasks), runs every stage with decontamination against
those tasks' test prompts, and prints each stage's precision and recall, the five targets, and documents/s and MB/s.
Exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", type=int, default=2000, help="clean documents (the corpus is about 1.8x that)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/nanoseek-clean-bench")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args()
    from nanoseek.data.clean import clean
    from nanoseek.data.synthetic import TARGETS, dirty_corpus, score

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    rows = dirty_corpus(a.clean, seed=a.seed)
    corpus = out / "dirty.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    built = time.perf_counter() - t
    report = clean([corpus], out / "clean", decontaminate=["arithmetic:1,2,3", "countdown"], workers=a.workers,
                   decont_limit=10_000, progress=False)
    res = score(rows, out / "clean")
    res["throughput"] = {k: report[k] for k in ("input", "input_bytes", "seconds", "docs_per_s", "mb_per_s",
                                                "timings")}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"corpus: {len(rows):,} documents, {report['input_bytes'] / 1e6:.2f} MB (built in {built:.1f}s)")
        print(f"{'stage':15s} {'precision':>9s} {'recall':>7s} {'removed':>8s} {'should':>7s}")
        for st in ("exact", "near", "quality", "decontaminate"):
            r = res[st]
            print(f"{st:15s} {r['precision']:9.3f} {r['recall']:7.3f} {r['removed']:8d} {r['positives']:7d}")
        for k, v in res["targets"].items():
            print(f"{k:22s} {v:.3f}  (target >= {TARGETS[k]:.2f}) {'ok' if v >= TARGETS[k] else 'MISSED'}")
        tp = res["throughput"]
        print(f"throughput: {tp['docs_per_s']:,} docs/s, {tp['mb_per_s']} MB/s ({tp['seconds']}s on {a.workers} "
              f"workers; stage seconds {tp['timings']})")
    return 0 if all(v >= TARGETS[k] for k, v in res["targets"].items()) else 1


if __name__ == "__main__":
    sys.exit(main())
