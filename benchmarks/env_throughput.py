"""Environment steps per second: the batched ViewTransform environment against per-environment PIL baselines.

For each observation size, number of environments and action set, in the same run:

- ``view_env``: :class:`view_env.vector.ViewTransformVectorEnv` on each device (CPU, and CUDA when present; CUDA
  steps are timed with CUDA events), with ``check_actions=False`` so that no step waits for the device;
- ``sync`` / ``async``: the same MDP written per environment with PIL and numpy (``benchmarks/pil_env.py``) under
  Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` (one process per environment, so async is run up to
  ``--max-async`` environments). With the ``geometric`` action set (pans, zooms and aspect changes only) the
  baseline is the minimal PIL env (crop + antialiased resize + coverage) and view_env has no augmentations; with
  ``all`` both toggle every augmentation on and off (the full PIL env: ``ImageEnhance`` jitter, an HSV hue shift,
  grayscale and Gaussian blur);
- ``ceiling``: the time merely to copy one step's output bytes (``uint8 [N, 3, S, S]``) on the device.

A second table splits the time of one view_env step on the CPU (``--split-envs`` environments, and one) into its
parts, timed inside real steps: rendering, annotations (exact coverage), the move, the reset of the rows that ended
(their rendering and annotation count under the first two), and the rest (argument handling, the reward, the info
dict, Python).
``--write-docs`` replaces this benchmark's section of docs/benchmarks.md with both tables, the machine and the commit.

    python benchmarks/env_throughput.py                 # the full tables (about 6 minutes on 2 cores)
    python benchmarks/env_throughput.py --quick         # 1, 16 and 256 environments at 64 px
    python benchmarks/env_throughput.py --devices cuda --num-envs 1024 4096 16384 --obs-sizes 64  # on a GPU
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
from view_env import core
from view_env.data import ImageBank, ShapesDataset, default_canvas_size
from view_env.vector import ViewTransformVectorEnv

START, END = "<!-- env_throughput:start -->", "<!-- env_throughput:end -->"
ACTION_SETS = ("geometric", "all")


def timed(step: Callable[[int], None], seconds: float, min_steps: int = 3, warmup: int = 2) -> float:
    """Calls per second of ``step(i)``, run for at least ``seconds`` and ``min_steps`` calls."""
    for i in range(warmup):
        step(i)
    count, start = 0, time.perf_counter()
    while count < min_steps or time.perf_counter() - start < seconds:
        step(warmup + count)
        count += 1
    return count / (time.perf_counter() - start)


def timed_cuda(step: Callable[[int], None], seconds: float, min_steps: int = 3, warmup: int = 2) -> float:
    """Calls per second of ``step(i)`` on the current CUDA stream, timed with CUDA events (the host only queues)."""
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    count, start = 0, time.perf_counter()
    begin.record()
    while count < min_steps or time.perf_counter() - start < seconds:
        step(warmup + count)
        count += 1
    end.record()
    end.synchronize()
    return count / (begin.elapsed_time(end) / 1000)


@dataclass
class ThroughputArgs:
    """Arguments of ``benchmarks/env_throughput.py``."""

    num_envs: list[int] = option([1, 16, 256, 1024], "numbers of environments")
    obs_sizes: list[int] = option([64, 224], "observation sizes, pixels")
    actions: list[str] = option(list(ACTION_SETS), "action sets: geometric (vs the minimal PIL env) and all "
                                "(every augmentation, vs the full PIL env)", choices=ACTION_SETS)
    devices: list[str] | None = option(None, "devices of view_env (default: cpu, and cuda when available)")
    images: int = option(2000, "images in the bank (from the default Shapes set)")
    shapes_root: str | None = option(None, "a Shapes set to read (default: the cached default set)")
    seconds: float = option(1.0, "minimum time per measurement")
    max_async: int = option(256, "largest num_envs run under AsyncVectorEnv")
    max_pil: int = option(1024, "largest num_envs run under the PIL baselines (beyond it only view_env is timed)")
    split_envs: int = option(256, "environments of the step-time split (0: no split)")
    quick: bool = option(False, "1, 16 and 256 environments at 64 px, 0.5 s each")
    write_docs: bool = option(False, f"write the tables into {DOCS.relative_to(ROOT)}")

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
        check(self.max_pil >= 0, "max_pil", self.max_pil, "an integer >= 0")
        check(self.split_envs >= 0, "split_envs", self.split_envs, "an integer >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(ThroughputArgs, argv, description=__doc__)
    devices = args.devices
    started = time.perf_counter()
    dataset = ShapesDataset(args.shapes_root)
    indices = range(min(args.images, len(dataset)))
    rows, splits = [], []
    print(header(devices))
    for obs_size in args.obs_sizes:
        canvas = default_canvas_size(obs_size)
        bank = ImageBank.from_dataset(dataset, canvas_size=canvas, indices=indices, progress=False)
        for action_set in args.actions:
            factory = pil_factory(bank, obs_size, augment=action_set == "all")
            for num_envs in args.num_envs:
                row = measure_row(bank, factory, obs_size, num_envs, action_set, devices, args)
                rows.append(row)
                print(format_row(row, devices), flush=True)
            if args.split_envs and "cpu" in devices:
                for num_envs in sorted({1, args.split_envs}):
                    splits.append(step_split(bank, obs_size, num_envs, action_set, args.seconds))
                    print(format_split(splits[-1]), flush=True)
    wall = time.perf_counter() - started
    table = render_table(rows, devices)
    split_table = render_split(splits) if splits else ""
    print(f"\n{split_table}\n\nwall time {wall:.0f} s on {machine()}, commit {commit()}")
    if args.write_docs:
        write_docs(table, split_table, wall, " ".join(sys.argv[1:] if argv is None else argv))
        print(f"wrote {DOCS}")
    return 0


def pil_factory(bank: ImageBank, obs_size: int, augment: bool = True) -> Callable[[], gym.Env]:
    """A constructor of baseline environments sharing one copy of the bank's canvases as PIL images."""
    canvases = [Image.fromarray(c) for c in bank.images.permute(0, 2, 3, 1).numpy()]
    valid = bank.labels >= 0
    boxes = [b[v].numpy() for b, v in zip(bank.boxes, valid, strict=True)]
    labels = [lab[v].numpy() for lab, v in zip(bank.labels, valid, strict=True)]
    aspects = (bank.sizes[:, 1] / bank.sizes[:, 0]).numpy()
    return lambda: PILViewEnv(canvases, boxes, labels, aspects, bank.num_categories, obs_size, augment=augment)


def vector_rate(env: gym.vector.VectorEnv, actions: np.ndarray | torch.Tensor, seconds: float) -> float:
    """Environment steps per second of ``env`` under the rows of ``actions`` in turn."""
    env.reset(seed=0)
    on_cuda = isinstance(actions, torch.Tensor) and actions.device.type == "cuda"
    rate = env.num_envs * (timed_cuda if on_cuda else timed)(lambda i: env.step(actions[i % len(actions)]), seconds)
    env.close()
    return rate


def make_env(bank: ImageBank, num_envs: int, obs_size: int, action_set: str, device: str = "cpu"
             ) -> ViewTransformVectorEnv:
    """view_env for one action set: no augmentations for ``geometric`` (nine actions), all seven for ``all``."""
    augmentations = () if action_set == "geometric" else core.AUGMENTATIONS
    return ViewTransformVectorEnv(num_envs, bank=bank if device == "cpu" else _to(bank, device), device=device,
                                  obs_size=obs_size, augmentations=augmentations, check_actions=False)


def measure_row(bank: ImageBank, factory: Callable[[], gym.Env], obs_size: int, num_envs: int, action_set: str,
                devices: list[str], args: ThroughputArgs) -> dict:
    count = 9 if action_set == "geometric" else 16
    actions = np.random.default_rng(0).integers(0, count, size=(64, num_envs))
    ours = {}
    for device in devices:
        env = make_env(bank, num_envs, obs_size, action_set, device)
        ours[device] = vector_rate(env, torch.as_tensor(actions, device=device), args.seconds)
    sync = asynchronous = float("nan")
    if num_envs <= args.max_pil:
        sync = vector_rate(gym.vector.SyncVectorEnv([factory for _ in range(num_envs)]), actions, args.seconds)
    if num_envs <= min(args.max_async, args.max_pil):
        vec = gym.vector.AsyncVectorEnv([factory for _ in range(num_envs)], context="fork")
        asynchronous = vector_rate(vec, actions, args.seconds)
    source = torch.empty((num_envs, 3, obs_size, obs_size), dtype=torch.uint8, device=devices[-1])
    target = torch.empty_like(source)
    copy = timed_cuda if source.device.type == "cuda" else timed
    ceiling = num_envs * copy(lambda i: target.copy_(source), min(args.seconds, 0.3), min_steps=20)
    cpu = ours.get("cpu", ours[devices[-1]])
    return {"obs": obs_size, "num_envs": num_envs, "actions": action_set, "ours": ours, "sync": sync,
            "async": asynchronous, "ceiling": ceiling, "vs_sync": cpu / sync, "vs_async": cpu / asynchronous,
            "of_ceiling": ours[devices[-1]] / ceiling}


def step_split(bank: ImageBank, obs_size: int, num_envs: int, action_set: str, seconds: float) -> dict:
    """Milliseconds of one CPU step and of its parts, timed inside real steps.

    The environment's calls of :func:`~view_env.render.render_views`, :func:`view_env.core.annotate`,
    :func:`view_env.core.move` and :func:`view_env.core.reset` are wrapped with timers while it steps (the
    autoreset's rendering and annotation of the rows that ended count under render and annotations); ``rest`` is the
    step minus those parts: argument handling, the reward, the autoreset's bookkeeping, the info dict, Python.
    """
    import view_env.vector as vector_module

    env = make_env(bank, num_envs, obs_size, action_set)
    count = 9 if action_set == "geometric" else 16
    actions = torch.as_tensor(np.random.default_rng(1).integers(0, count, size=(64, num_envs)))
    env.reset(seed=0)
    spent = {"render": 0.0, "annotate": 0.0, "move": 0.0, "reset": 0.0}
    originals = {"render": vector_module.render_views, "annotate": core.annotate, "move": core.move,
                 "reset": core.reset}

    def timer(name: str) -> Callable[..., object]:
        function = originals[name]

        def timed_call(*a: object, **k: object) -> object:
            began = time.perf_counter()
            result = function(*a, **k)
            spent[name] += time.perf_counter() - began
            return result
        return timed_call

    for _ in range(3):  # warm-up
        env.step(actions[0])
    vector_module.render_views = timer("render")
    core.annotate, core.move, core.reset = timer("annotate"), timer("move"), timer("reset")
    try:
        steps, began = 0, time.perf_counter()
        while steps < 5 or time.perf_counter() - began < seconds:
            env.step(actions[steps % len(actions)])
            steps += 1
        total = time.perf_counter() - began
    finally:
        vector_module.render_views = originals["render"]
        core.annotate, core.move, core.reset = originals["annotate"], originals["move"], originals["reset"]
    env.close()
    ms = {name: 1000 * value / steps for name, value in spent.items()}
    step_ms = 1000 * total / steps
    return {"obs": obs_size, "num_envs": num_envs, "actions": action_set, "step": step_ms, **ms,
            "rest": step_ms - sum(ms.values())}


def _to(bank: ImageBank, device: str) -> ImageBank:
    return ImageBank(bank.images.to(device), bank.sizes.to(device), bank.dataset_index.to(device),
                     bank.boxes.to(device), bank.labels.to(device), bank.captions, bank.dataset, bank.num_skipped)


def _rate(value: float) -> str:
    if value != value:  # NaN: not measured
        return "n/a"
    return f"{value:,.0f}"


def _ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}x"


def header(devices: list[str]) -> str:
    return (f"| obs | num_envs | actions | view_env steps/s ({' / '.join(devices)}) | SyncVectorEnv PIL | "
            "AsyncVectorEnv PIL | copy ceiling | view_env vs sync | view_env vs async | view_env of ceiling |")


def format_row(row: dict, devices: list[str]) -> str:
    ours = " / ".join(_rate(row["ours"][d]) for d in devices)
    return (f"| {row['obs']} | {row['num_envs']} | {row['actions']} | {ours} | {_rate(row['sync'])} | "
            f"{_rate(row['async'])} | {_rate(row['ceiling'])} | {_ratio(row['vs_sync'])} | "
            f"{_ratio(row['vs_async'])} | {100 * row['of_ceiling']:.1f}% |")


def render_table(rows: list[dict], devices: list[str]) -> str:
    rule = "|" + "---|" * 10
    return "\n".join([header(devices), rule] + [format_row(r, devices) for r in rows])


def format_split(row: dict) -> str:
    parts = " | ".join(f"{row[k]:.3f}" for k in ("step", "render", "annotate", "move", "reset", "rest"))
    return f"| {row['obs']} | {row['num_envs']} | {row['actions']} | {parts} |"


def render_split(rows: list[dict]) -> str:
    head = ("| obs | num_envs | actions | step ms | render | annotations | move | reset (autoreset) | rest "
            "(Python, checks, info) |\n" + "|" + "---|" * 9)
    return "\n".join([head] + [format_split(r) for r in rows])


def write_docs(table: str, split_table: str, wall: float, arguments: str) -> None:
    command = f"python benchmarks/env_throughput.py {arguments}".strip()
    lines = [
        START,
        f"Measured with `{command}` on {machine()}; commit {commit()}; wall time {wall:.0f} s.",
        "Environment steps per second (num_envs x vector steps per second); higher is better. `geometric`: pans, "
        "zooms and aspect changes, against the minimal PIL env (crop + resize + coverage); `all`: every "
        "augmentation toggled, against the full PIL env. Async is run up to 256 environments (one process each).",
        "",
        table,
    ]
    if split_table:
        lines += ["", "Where one CPU step's time goes (milliseconds per step, the parts timed inside real steps):", "",
                  split_table]
    lines.append(END)
    write_section(DOCS, START, END, "\n".join(lines), "Environment throughput")


if __name__ == "__main__":
    sys.exit(main())
