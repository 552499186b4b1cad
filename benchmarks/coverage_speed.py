"""Micro-benchmark: the exact annotations (``view_env.core.coverage``) against the grid approximation.

For each number of environments N and boxes per image M: N random views and N x M random boxes over 10
categories; the two functions are called alternately, and the table gives the median milliseconds of each and their
ratio, so that load on the machine affects both alike. It decides where ``coverage_grid=G`` is worth its error
(docs/envs.md, Annotations).

    python benchmarks/coverage_speed.py                        # N 256 and 4096, M 6, 16, 48; one thread
    python benchmarks/coverage_speed.py --threads 2 --boxes 8
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from common import commit, machine

from agents import cli
from agents.cli import check, option
from view_env import core


@dataclass
class CoverageArgs:
    """Arguments of ``benchmarks/coverage_speed.py``."""

    num_envs: list[int] = option([256, 4096], "numbers of environments N")
    boxes: list[int] = option([6, 16, 48], "boxes per image M (Shapes has 8 slots, COCO up to about 90)")
    grid: int = option(16, "the grid mode's G")
    threads: int = option(1, "torch intra-op threads")
    repeats: int = option(40, "alternating calls of each function")

    def __post_init__(self) -> None:
        check(min(self.num_envs) >= 1, "num_envs", self.num_envs, "integers >= 1")
        check(min(self.boxes) >= 1, "boxes", self.boxes, "integers >= 1")
        check(self.grid >= 2, "grid", self.grid, "an integer >= 2")
        check(self.threads >= 1, "threads", self.threads, "an integer >= 1")
        check(self.repeats >= 1, "repeats", self.repeats, "an integer >= 1")


def timings(n: int, m: int, grid: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the exact and the grid coverage of ``n`` views over ``m`` boxes each."""
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(n, m, 2, 2, generator=g)
    boxes = torch.cat([corners.amin(2), corners.amax(2)], dim=-1)
    labels = torch.randint(-1, 10, (n, m), generator=g)
    view = torch.tensor([[0.1, 0.1, 0.7, 0.8]]).repeat(n, 1)
    calls = {"exact": lambda: core.coverage(view, boxes, labels, 10),
             "grid": lambda: core.grid_coverage(view, boxes, labels, 10, grid)}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats + 2):  # the first two rounds warm up
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - began)
    return tuple(statistics.median(seconds[name][2:]) * 1000 for name in calls)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(CoverageArgs, argv, description=__doc__)
    torch.set_num_threads(args.threads)
    print(f"# coverage_speed: {machine()}, commit {commit()}\n")
    print(f"| N | boxes per image | exact ms | grid {args.grid} ms | exact / grid |")
    print("|---|---|---|---|---|")
    for n in args.num_envs:
        for m in args.boxes:
            exact, grid = timings(n, m, args.grid, args.repeats)
            print(f"| {n} | {m} | {exact:.2f} | {grid:.2f} | {exact / grid:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
