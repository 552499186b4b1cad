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

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pil_env import PILViewEnv  # noqa: E402

from view_env.data import ImageBank, ShapesDataset, default_canvas_size  # noqa: E402
from view_env.vector import ViewTransformVectorEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
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


def machine() -> str:
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


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        # Changes under docs/ (the tables and figures the benchmarks themselves write) do not change what ran.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 256, 1024])
    parser.add_argument("--obs-sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--images", type=int, default=2000, help="images in the bank (from the default Shapes set)")
    parser.add_argument("--shapes-root", default=None, help="a Shapes set to read (default: the cached default set)")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per measurement")
    parser.add_argument("--max-async", type=int, default=256, help="largest num_envs run under AsyncVectorEnv")
    parser.add_argument("--quick", action="store_true", help="1, 16 and 256 environments at 64 px, 0.5 s each")
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_envs, args.obs_sizes, args.seconds = [1, 16, 256], [64], 0.5
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--devices {device}: CUDA is not available on this machine")
    if min(args.num_envs) < 1 or args.images < 1 or args.seconds <= 0:
        parser.error("--num-envs, --images and --seconds must be positive")

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
        write_docs(table, wall, " ".join(sys.argv[1:]))
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
                args: argparse.Namespace) -> dict:
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
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Environment throughput\n\n" + section + "\n"
    DOCS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
