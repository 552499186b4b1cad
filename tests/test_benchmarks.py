"""The benchmark scripts run to their end at their smallest settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import env_throughput  # noqa: E402


def test_env_throughput_smallest_settings(tiny_shapes, capsys):
    code = env_throughput.main(["--num-envs", "2", "--obs-sizes", "64", "--seconds", "0.01", "--images", "8",
                                "--max-async", "2", "--shapes-root", str(tiny_shapes)])
    out = capsys.readouterr().out
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("| 64 | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(c not in ("", "nan") for c in cells)
    assert float(cells[6].rstrip("x")) > 0  # view_env vs sync


def test_commit_is_dirty_for_code_changes_but_not_for_the_docs_benchmarks_write(tmp_path, monkeypatch):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("table\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(env_throughput, "ROOT", tmp_path)
    clean = env_throughput.commit()
    assert len(clean) >= 7 and "uncommitted" not in clean
    (tmp_path / "docs" / "benchmarks.md").write_text("new table\n")  # what --write-docs does during the run
    assert env_throughput.commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert env_throughput.commit() == clean + " (with uncommitted changes)"


def test_probe_summary_against_hand_computed_means_and_spreads(tmp_path, capsys):
    import json

    import probe_summary

    runs = []
    for i, (pretrained, random) in enumerate(((0.40, 0.20), (0.42, 0.21), (0.44, 0.22))):
        run = tmp_path / f"seed{i}"
        run.mkdir()
        (run / "probe.json").write_text(json.dumps({
            "pretrained": {"box_top1": pretrained, "count_mae": 1.0 + i / 10, "knn_top1": 0.13},
            "random init": {"box_top1": random, "count_mae": 1.5, "knn_top1": 0.12 + i / 100}}))
        runs.append(run)
    summary = probe_summary.summarise(probe_summary.load(runs))
    assert summary["pretrained"]["box_top1"] == pytest.approx((0.42, 0.02))
    assert summary["random init"]["knn_top1"] == pytest.approx((0.13, 0.01))
    lines = probe_summary.verdicts(summary)
    # box: +0.21 beyond hypot(0.02, 0.01); count MAE (lower better): +0.4 beyond 0.1; k-NN: 0.0, not beyond 0.01.
    assert lines == ["pretrained vs random init: better beyond the seed spread on 2 of 3 probes (box_top1 +0.210, "
                     "count_mae +0.400); not on: knn_top1 +0.000."]
    assert probe_summary.main([str(r) for r in runs]) == 0
    assert "| pretrained | 0.420 ± 0.020 |" in capsys.readouterr().out
    (runs[1] / "probe.json").write_text("[1, 2]")
    with pytest.raises(SystemExit):
        probe_summary.main([str(r) for r in runs])
    assert "is not a probe table" in capsys.readouterr().err
