"""The benchmark scripts run to their end at their smallest settings."""

from __future__ import annotations

import sys
from pathlib import Path

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
