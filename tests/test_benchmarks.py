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
