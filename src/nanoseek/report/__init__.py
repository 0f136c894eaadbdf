"""The efficiency report (`nanoseek report`): what the seed claims about DeepSeek-V3, measured on any nanoseek model.

    from nanoseek.report import build_report, accounting
    rep = build_report("deepseek-v3", "report-v3")          # config only: 671B / 37B, KV cache, FLOPs; no weights
    rep = build_report("runs/demo")                         # + measured throughput, MFU, acceptance, run curves
    accounting(nanoseek.ModelConfig.preset("small"))        # the numbers as a dict

Modules: accounting (from the config), measure (short runs on this machine), charts (PNG), markdown, build.
"""
from pathlib import Path

from .accounting import PUBLISHED, accounting, kv_cache, published_name
from .build import Target, build_report, resolve, run_summary


def run(target: str, out: str | None = None, **kwargs) -> Path:
    """build_report(target, out, **kwargs); returns the path of report.md."""
    rep = build_report(target, out, **kwargs)
    return Path(next(f for f in rep["files"] if f.endswith("report.md")))


__all__ = ["build_report", "run", "accounting", "kv_cache", "published_name", "PUBLISHED", "resolve", "run_summary",
           "Target"]
