"""Mean and seed spread of the probe tables of several pretraining runs, and whether each encoder beats another.

Each run directory holds the ``probe.json`` that ``python -m agents.pretrain`` writes (rows: ``pretrained``,
``random init``, ``colour grid``, ``chance``); the ``--out`` files of ``python -m agents.probe --random-init`` are
read too (the same rows, the first named after the encoder probed). The table gives, per row and probe, the mean
and sample standard deviation over the runs; the verdicts compare the first row (``pretrained``) with every other
row: a difference "beyond the seed spread" exceeds the standard deviation of a difference of two independent runs
(``hypot(std_a, std_b)``), the yardstick of ``benchmarks/pretrain_table.py``.

    for seed in 0 1 2; do python -m agents.pretrain --seed $seed --out runs/default-seed$seed; done
    python benchmarks/probe_summary.py runs/default-seed0 runs/default-seed1 runs/default-seed2
    python benchmarks/probe_summary.py probe-seed0.json probe-seed1.json probe-seed2.json  # agents.probe --out
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents import cli
from agents.cli import option
from agents.probe import format_probe_table

#: Probe keys where lower is better; every other key is higher-better.
LOWER_BETTER = ("count_mae",)


def load(runs: Sequence[Path]) -> list[dict[str, dict[str, float]]]:
    """The ``probe.json`` tables of ``runs`` (directories or the files themselves), or the ``--out`` files of
    ``python -m agents.probe`` (their ``scores``, whose first row is the probed encoder: ``checkpoint``, ``export``
    or a timm name).

    Raises:
        ValueError: A run has no ``probe.json``, it is not a probe table, or the runs have different rows or keys.
    """
    tables = []
    for run in runs:
        path = run / "probe.json" if run.is_dir() else run
        if not path.is_file():
            raise ValueError(f"{path} not found: pass run directories of agents.pretrain (with probe.json)")
        try:
            table = json.loads(path.read_text())
            if isinstance(table, dict) and isinstance(table.get("scores"), dict) and "protocol" in table:
                table = table["scores"]  # python -m agents.probe --out
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise ValueError("not a mapping of rows to scores")
        except ValueError as error:
            raise ValueError(f"{path} is not a probe table written by agents.pretrain ({error})") from error
        tables.append(table)
    if not tables:
        raise ValueError("no runs given")
    shape = {name: sorted(scores) for name, scores in tables[0].items()}
    for run, table in zip(runs, tables, strict=True):
        if {name: sorted(scores) for name, scores in table.items()} != shape:
            raise ValueError(f"{run}: its rows or probes differ from {runs[0]}'s; summarise runs of one recipe")
    return tables


def summarise(tables: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Row -> probe -> (mean, sample std; 0 for one run)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, scores in tables[0].items():
        out[name] = {}
        for key in scores:
            values = [t[name][key] for t in tables]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            out[name][key] = (mean, math.sqrt(var))
    return out


def verdicts(summary: dict[str, dict[str, tuple[float, float]]], row: str | None = None) -> list[str]:
    """One sentence per other row: the probes where ``row`` (default: the first row, the encoder the runs trained or
    probed) is better beyond the seed spread, and the others."""
    row = next(iter(summary)) if row is None else row
    lines = []
    for other in summary:
        if other == row:
            continue
        beyond, not_beyond = [], []
        for key, (mean, std) in summary[row].items():
            other_mean, other_std = summary[other][key]
            delta = mean - other_mean if key not in LOWER_BETTER else other_mean - mean
            (beyond if delta > math.hypot(std, other_std) else not_beyond).append(f"{key} {delta:+.3f}")
        lines.append(f"{row} vs {other}: better beyond the seed spread on {len(beyond)} of {len(summary[row])} "
                     f"probes ({', '.join(beyond) or 'none'}); not on: {', '.join(not_beyond) or 'none'}.")
    return lines


def markdown(summary: dict[str, dict[str, tuple[float, float]]], runs: int) -> str:
    """The summary as a Markdown table (:func:`agents.probe.format_probe_table`): ``mean ± std`` per cell, or the
    mean alone for one run."""
    cells = {name: {key: value if runs > 1 else value[0] for key, value in scores.items()}
             for name, scores in summary.items()}
    return format_probe_table(cells, digits=3, markdown=True)


@dataclass
class SummaryArgs:
    """Arguments of ``benchmarks/probe_summary.py``."""

    runs: list[Path] = option(help="run directories of agents.pretrain (or probe.json files)", positional=True)


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = cli.parse(SummaryArgs, argv, description=__doc__)
    try:
        tables = load(args.runs)
    except ValueError as error:
        parser.error(str(error))
    summary = summarise(tables)
    print(f"{len(tables)} runs; mean ± sample std over runs\n")
    print(markdown(summary, len(tables)) + "\n")
    for line in verdicts(summary):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
