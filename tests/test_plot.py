"""nanoseek plot: non-empty PNGs from a synthetic metrics file, for pretraining and GRPO runs; bad input."""
import json

import pytest

from nanoseek.cli import main
from nanoseek.plot import plot, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_pretraining_charts(tmp_path):
    rows = [{"step": s, "loss": 5 - s / 10, "ce": 4.8 - s / 10, "lr": 1e-3 * min(1, s / 5),
             "load": {"layers.1.ffn": 1 + 1 / s, "layers.2.ffn": 1.5}} for s in range(1, 31)]
    for r in rows[9::10]:
        r["val_loss"] = r["ce"] + 0.1
    write(tmp_path / "metrics.jsonl", rows, tail='{"step": 31, "lo')  # a run killed mid-write
    files = plot(tmp_path)
    assert sorted(f.name for f in files) == ["expert_load.png", "loss.png", "lr.png"]
    for f in files:
        assert f.read_bytes().startswith(PNG) and f.stat().st_size > 1000
    assert len(read_metrics(tmp_path)) == 30


def test_grpo_charts_from_the_command_line(tmp_path, capsys):
    rows = [{"step": s, "reward": s / 10, "rewards/accuracy": s / 20, "rewards/format": s / 10, "accuracy": s / 20,
             "kl": 0.01 * s, "completion_length": 40 + s, "truncated_frac": 0.1, "entropy": 2.0, "clip_ratio": 0.0,
             "frac_reward_zero_std": 0.5, "lr": 1e-4, "loss": 0.0} for s in range(1, 11)]
    rows[-1]["eval_accuracy"] = 0.4
    write(tmp_path / "metrics.jsonl", [{"step": 0, "eval_accuracy": 0.1}] + rows)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "charts")]) == 0
    names = sorted(p.split("/")[-1] for p in capsys.readouterr().out.split())
    assert names == ["accuracy.png", "completion_length.png", "grpo_stats.png", "kl.png", "lr.png", "reward.png"]
    for name in names:
        assert (tmp_path / "charts" / name).read_bytes().startswith(PNG)


def test_bad_input(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics file" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: invalid JSON"):
        read_metrics(tmp_path)
