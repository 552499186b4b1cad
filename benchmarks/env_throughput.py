"""Environment steps per second: the batched ViewTransform environment against per-environment PIL baselines.

For each observation size and number of environments, in the same run:

- ``view_env``: :class:`view_env.vector.ViewTransformVectorEnv` on each device (CPU, and CUDA when present);
- ``sync`` / ``async``: the same MDP written per environment with PIL and numpy (``benchmarks/pil_env.py``) under
  Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` (one process per environment, so async is run up to
  ``--max-async`` environments);
- ``ceiling``: the time merely to copy one step's output bytes (``uint8 [N, 3, S, S]``) on the device, the most
  steps per second any implementation that writes its observations could reach.

All implementations take the same random discrete actions (so every augmentation gets toggled on and off). The
table gives environment steps per second (``num_envs`` x vector steps / s) and the ratios. ``--write-docs``
replaces this benchmark's section of docs/benchmarks.md with the table, the machine and the commit.

    python benchmarks/env_throughput.py                 # the full table (about 5 minutes on 2 cores)
    python benchmarks/env_throughput.py --quick         # 1, 16 and 256 environments at 64 px
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from common import DOCS, ROOT, commit, machine, write_section
from PIL import Image
from pil_env import PILViewEnv

from agents import cli
from agents.cli import check, option
from view_env.data import ImageBank, ShapesDataset, default_canvas_size
from view_env.vector import ViewTransformVectorEnv

START, END = "<!-- env_throughput:start -->", "<!-- env_throughput:end -->"


def timed(step: Callable[[int], None], seconds: float, min_steps: int = 3, warmup: int = 2) -> float:
    """Vector steps per second of ``step(i)``, run for at least ``seconds`` and ``min_steps`` steps."""
    for i in range(warmup):
        step(i)
    count, start = 0, time.perf_counter()
    while count < min_steps or time.perf_counter() - start < seconds:
        step(warmup + count)
        count += 1
    return count / (time.perf_counter() - start)


@dataclass
class ThroughputArgs:
    """Arguments of ``benchmarks/env_throughput.py``."""

    num_envs: list[int] = option([1, 16, 256, 1024], "numbers of environments")
    obs_sizes: list[int] = option([64, 224], "observation sizes, pixels")
    devices: list[str] | None = option(None, "devices of view_env (default: cpu, and cuda when available)")
    images: int = option(2000, "images in the bank (from the default Shapes set)")
    shapes_root: str | None = option(None, "a Shapes set to read (default: the cached default set)")
    seconds: float = option(1.0, "minimum time per measurement")
    max_async: int = option(256, "largest num_envs run under AsyncVectorEnv")
    quick: bool = option(False, "1, 16 and 256 environments at 64 px, 0.5 s each")
    write_docs: bool = option(False, f"write the table into {DOCS.relative_to(ROOT)}")

    def __post_init__(self) -> None:
        if self.quick:
            self.num_envs, self.obs_sizes, self.seconds = [1, 16, 256], [64], 0.5
        if self.devices is None:
            self.devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
        for device in self.devices:
            check(not device.startswith("cuda") or torch.cuda.is_available(), "devices", device,
                  "a device this machine has (CUDA is not available here)")
        check(min(self.num_envs) >= 1, "num_envs", self.num_envs, "integers >= 1")
        check(min(self.obs_sizes) >= 1, "obs_sizes", self.obs_sizes, "integers >= 1")
        check(self.images >= 1, "images", self.images, "an integer >= 1")
        check(self.seconds > 0, "seconds", self.seconds, "a number > 0")
        check(self.max_async >= 0, "max_async", self.max_async, "an integer >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(ThroughputArgs, argv, description=__doc__)
    devices = args.devices
    started = time.perf_counter()
    dataset = ShapesDataset(args.shapes_root)
    indices = range(min(args.images, len(dataset)))
    rows = []
    print(f"| obs | num_envs | view_env ({' / '.join(devices)}) | sync PIL | async PIL | copy ceiling | vs sync | "
          "vs async | of ceiling |")
    for obs_size in args.obs_sizes:
        canvas = default_canvas_size(obs_size)
        bank = ImageBank.from_dataset(dataset, canvas_size=canvas, indices=indices, progress=False)
        factory = pil_factory(bank, obs_size)
        for num_envs in args.num_envs:
            row = measure_row(bank, factory, obs_size, num_envs, devices, args)
            rows.append(row)
            print(format_row(row, devices), flush=True)
    wall = time.perf_counter() - started
    table = render_table(rows, devices)
    print(f"\nwall time {wall:.0f} s on {machine()}, commit {commit()}")
    if args.write_docs:
        write_docs(table, wall, " ".join(sys.argv[1:] if argv is None else argv))
        print(f"wrote {DOCS}")
    return 0


def pil_factory(bank: ImageBank, obs_size: int) -> Callable[[], gym.Env]:
    """A constructor of baseline environments sharing one copy of the bank's canvases as PIL images."""
    canvases = [Image.fromarray(c) for c in bank.images.permute(0, 2, 3, 1).numpy()]
    valid = bank.labels >= 0
    boxes = [b[v].numpy() for b, v in zip(bank.boxes, valid, strict=True)]
    labels = [lab[v].numpy() for lab, v in zip(bank.labels, valid, strict=True)]
    aspects = (bank.sizes[:, 1] / bank.sizes[:, 0]).numpy()
    return lambda: PILViewEnv(canvases, boxes, labels, aspects, bank.num_categories, obs_size)


def vector_rate(env: gym.vector.VectorEnv, actions: np.ndarray | torch.Tensor, seconds: float) -> float:
    """Environment steps per second of ``env`` under the rows of ``actions`` in turn."""
    env.reset(seed=0)
    synchronise = isinstance(actions, torch.Tensor) and actions.device.type == "cuda"

    def step(i: int) -> None:
        env.step(actions[i % len(actions)])
        if synchronise:
            torch.cuda.synchronize()

    rate = env.num_envs * timed(step, seconds)
    env.close()
    return rate


def measure_row(bank: ImageBank, factory: Callable[[], gym.Env], obs_size: int, num_envs: int, devices: list[str],
                args: ThroughputArgs) -> dict:
    actions = np.random.default_rng(0).integers(0, 16, size=(64, num_envs))
    ours = {}
    for device in devices:
        env = ViewTransformVectorEnv(num_envs, bank=bank if device == "cpu" else _to(bank, device), device=device,
                                     obs_size=obs_size)
        ours[device] = vector_rate(env, torch.as_tensor(actions, device=device), args.seconds)
    sync = vector_rate(gym.vector.SyncVectorEnv([factory for _ in range(num_envs)]), actions, args.seconds)
    asynchronous = float("nan")
    if num_envs <= args.max_async:
        vec = gym.vector.AsyncVectorEnv([factory for _ in range(num_envs)], context="fork")
        asynchronous = vector_rate(vec, actions, args.seconds)
    source = torch.empty((num_envs, 3, obs_size, obs_size), dtype=torch.uint8, device=devices[-1])
    target = torch.empty_like(source)
    ceiling = num_envs * timed(lambda i: target.copy_(source), min(args.seconds, 0.3), min_steps=20)
    cpu = ours.get("cpu", ours[devices[-1]])
    return {"obs": obs_size, "num_envs": num_envs, "ours": ours, "sync": sync, "async": asynchronous,
            "ceiling": ceiling, "vs_sync": cpu / sync, "vs_async": cpu / asynchronous,
            "of_ceiling": ours[devices[-1]] / ceiling}


def _to(bank: ImageBank, device: str) -> ImageBank:
    return ImageBank(bank.images.to(device), bank.sizes.to(device), bank.dataset_index.to(device),
                     bank.boxes.to(device), bank.labels.to(device), bank.captions, bank.dataset, bank.num_skipped)


def _rate(value: float) -> str:
    if value != value:  # NaN: not measured
        return "n/a"
    return f"{value:,.0f}"


def format_row(row: dict, devices: list[str]) -> str:
    ours = " / ".join(_rate(row["ours"][d]) for d in devices)
    ratio = "n/a" if row["vs_async"] != row["vs_async"] else f"{row['vs_async']:.1f}x"
    return (f"| {row['obs']} | {row['num_envs']} | {ours} | {_rate(row['sync'])} | {_rate(row['async'])} | "
            f"{_rate(row['ceiling'])} | {row['vs_sync']:.1f}x | {ratio} | {100 * row['of_ceiling']:.1f}% |")


def render_table(rows: list[dict], devices: list[str]) -> str:
    head = (f"| obs | num_envs | view_env steps/s ({' / '.join(devices)}) | SyncVectorEnv PIL | AsyncVectorEnv PIL | "
            "copy ceiling | view_env vs sync | view_env vs async | view_env of ceiling |")
    rule = "|" + "---|" * 9
    return "\n".join([head, rule] + [format_row(r, devices) for r in rows])


def write_docs(table: str, wall: float, arguments: str) -> None:
    command = f"python benchmarks/env_throughput.py {arguments}".strip()
    section = "\n".join([
        START,
        f"Measured with `{command}` on {machine()}; commit {commit()}; wall time {wall:.0f} s.",
        "Environment steps per second (num_envs x vector steps per second); higher is better. Async is run up to "
        "256 environments (one process each).",
        "",
        table,
        END,
    ])
    write_section(DOCS, START, END, section, "Environment throughput")


if __name__ == "__main__":
    sys.exit(main())
