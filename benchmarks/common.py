"""What every benchmark script records with its numbers: the machine, the commit, paths relative to the docs, and
its own section of docs/benchmarks.md.

The scripts import it as ``common``: ``python benchmarks/X.py`` puts ``benchmarks/`` first on ``sys.path``, so no
path needs inserting (the tests put ``benchmarks/`` on the path to import the scripts the same way).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    """The CPU model, core count, torch version and threads, Python version and GPU, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    threads = torch.get_num_threads()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} thread{'s' * (threads != 1)}), "
            f"Python {platform.python_version()}{gpu}")


def relative(path: Path, start: Path = ROOT) -> str:
    """``path`` relative to ``start`` (POSIX separators) when it lies inside it, else as given: for links in docs."""
    try:
        return Path(path).resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return str(path)


def commit(root: Path | None = None) -> str:
    """The short commit of the repository at ``root`` (default: this one), marked when code has uncommitted
    changes; ``"unknown"`` outside git."""
    root = ROOT if root is None else root
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        # Changes under docs/ (the tables and figures the benchmarks themselves write) do not change what ran.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(docs: Path, start: str, end: str, section: str, heading: str, intro: str = "") -> None:
    """Replace the text between the markers ``start`` and ``end`` in ``docs`` with ``section`` (which begins with
    ``start`` and ends with ``end``); where the markers are absent, append ``## heading``, ``intro`` and the section
    (a missing file starts as ``# Benchmarks``)."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + (intro + "\n" if intro else "") + section + "\n"
    docs.write_text(text)
