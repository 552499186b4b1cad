"""Stable-baselines3 PPO, A2C and DQN on active search, against a uniform random policy and a greedy oracle.

The task is ``ViewTransform-Shapes-v0`` with ``task="search"`` and ``obs_mode="dict"``: each episode names a target
category (``obs["target"]``, one-hot) and the agent moves its view until the target covers enough of it (reward 1
and termination) or 16 steps pass. Agents train on the Shapes train split through
:class:`view_env.wrappers.SB3VecEnv` and are evaluated on the val split:

- ``ppo``, ``a2c``, ``dqn``: ``MultiInputPolicy`` with SB3's default dict extractor (NatureCNN on the view, 256
  features, concatenated with the box and the target) and a ``[64, 64]`` head, trained for ``--steps``
  environment steps per seed with one torch thread; evaluated acting as they were trained (PPO and A2C sample
  their policy, DQN acts greedily);
- ``random``: uniform over every discrete action;
- ``oracle``: reads the environment's state and takes the geometric action whose resulting view (simulated with
  :func:`view_env.core.apply_discrete`, which projects onto the legal views) reaches the success coverage, else
  has the best IoU with a box of the target category (see :func:`oracle_actions`).

Success rate is the fraction of evaluation episodes that end by success; return is the undiscounted episodic
return (equal to success here, since the only reward is the 1 that ends a successful episode); length is the
mean episode length. Each seed evaluates on its own fixed val episodes, the same for every method, each environment
contributing a fixed quota of episodes (so short, successful episodes are not over-counted). Learning curves
evaluate every agent at ``--curve-points`` points during training. ``--write-docs`` replaces this benchmark's
section of docs/benchmarks.md.

    python benchmarks/rl_baselines.py --workers 2  # the full run: 3 x 3 runs of 400k steps (27 min on 2 cores)
    python benchmarks/rl_baselines.py --quick      # 3 x 3 runs of 16k steps on 2,000 images (about 3 minutes)

Every run is independent and uses one core (one torch thread), so ``--workers`` set to the number of idle cores
divides the wall time by about that number; each worker holds its own copy of the image banks (about 0.5 GB at the
defaults). The results do not depend on ``--workers``: a run depends only on its method and seed. Measured in the
full run on 2 cores with ``--workers 2`` (16 environments, 64-px views, evaluations included): about 0.9 s per 1,000
steps for PPO, 0.4 s for A2C and 1.4 s for DQN, 1,613 s in all; in one process it takes about twice as long.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from common import DOCS, ROOT, commit, machine, relative, write_section
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents import cli
from agents.cli import check, option
from view_env import core
from view_env.data import ImageBank, ShapesDataset, default_canvas_size
from view_env.vector import ViewTransformVectorEnv
from view_env.wrappers import SB3VecEnv

START, END = "<!-- rl_baselines:start -->", "<!-- rl_baselines:end -->"
DEFAULT_PLOT = ROOT / "docs" / "figures" / "rl_baselines.png"
ALGORITHMS = ("ppo", "a2c", "dqn")
#: Evaluation episodes of seed ``s`` are drawn with environment seed ``EVAL_SEED + s`` (training uses ``s``).
EVAL_SEED = 10_000
#: Most environments stepped at once during evaluation.
MAX_EVAL_ENVS = 64
#: NatureCNN's three valid convolutions need views of at least this many pixels.
MIN_OBS_SIZE = 36

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Evaluation:
    """Outcome of a fixed number of evaluation episodes."""

    success: float  # fraction of episodes ended by success
    ret: float  # mean undiscounted episodic return
    length: float  # mean episode length, steps


@dataclass
class RunResult:
    """One method at one seed: its final evaluation and, for learners, its learning curve."""

    method: str
    seed: int
    final: Evaluation
    steps: int  # training environment steps (0 for random and oracle)
    wall: float  # seconds for training and every evaluation of the run
    curve: list[tuple[int, float]] = field(default_factory=list)  # (training steps, success rate)


def make_env(bank: ImageBank, num_envs: int, obs_size: int) -> SB3VecEnv:
    """The search task on ``bank`` as a stable-baselines3 VecEnv of ``num_envs`` environments."""
    return SB3VecEnv(ViewTransformVectorEnv(num_envs, bank=bank, task="search", obs_mode="dict", obs_size=obs_size))


def oracle_actions(env: ViewTransformVectorEnv) -> torch.Tensor:
    """``int64 [N]``: per environment, the geometric action that moves the view greedily toward the target's box.

    Every geometric action of every environment is simulated in one batched call (``N * 9`` next views, projected
    onto the legal views by :func:`view_env.core.apply_discrete`) and scored, in order of priority:

    1. whether the target's coverage of the next view (:func:`view_env.core.coverage`, measured as the environment
       measures it) reaches the success coverage: a move that wins is always taken;
    2. the best intersection-over-union of the next view with a box of the target category;
    3. the distance from the next view's centre to the nearest such box's centre (for views that overlap none).

    Greedy on coverage alone stalls where every move lowers it (a view partly on the target, off-centre), and
    reached 57-65% success on the val split; greedy on IoU reaches about 90%.
    """
    state, bank, params = env.state, env.bank, env.params
    n, a = env.num_envs, len(core.GEOMETRY_ACTIONS)
    boxes, labels = bank.boxes[state.slot], bank.labels[state.slot]  # (N, M, 4), (N, M)
    target = state.target.clamp_min(0)  # (N,)

    def each_action(t: torch.Tensor) -> torch.Tensor:  # (N, ...) -> (N * A, ...), environment-major
        return t.repeat_interleave(a, dim=0)

    actions = torch.arange(a, device=env.device).repeat(n)  # (N * A,)
    aspect = core.image_aspect(bank.sizes[state.slot])
    views, _ = core.apply_discrete(each_action(state.box), each_action(state.aug), actions, each_action(aspect),
                                   params)  # (N * A, 4)
    cover = core.coverage(views, each_action(boxes), each_action(labels), env.num_categories, params.coverage_grid)
    wins = cover.gather(1, each_action(target)[:, None]).view(n, a) >= state.target_coverage[:, None]  # (N, A)

    objects = each_action(boxes)  # (N * A, M, 4)
    is_target = each_action((labels == target[:, None]) & (labels >= 0))  # (N * A, M)
    low = torch.maximum(views[:, None, :2], objects[..., :2])
    high = torch.minimum(views[:, None, 2:], objects[..., 2:])
    overlap = (high - low).clamp_min(0).prod(dim=-1)  # (N * A, M)
    view_area = (views[:, 2:] - views[:, :2]).prod(dim=-1)[:, None]  # (N * A, 1)
    object_area = (objects[..., 2:] - objects[..., :2]).prod(dim=-1)  # (N * A, M)
    iou = torch.where(is_target, overlap / (view_area + object_area - overlap).clamp_min(1e-12), 0.0)
    centre = (views[:, None, :2] + views[:, None, 2:]) / 2  # (N * A, 1, 2)
    distance = ((objects[..., :2] + objects[..., 2:]) / 2 - centre).norm(dim=-1)  # (N * A, M)
    nearest = torch.where(is_target, distance, torch.inf).amin(dim=1).clamp(max=2.0)  # at most sqrt 2 when finite
    # IoU in [0, 1] and the distance tie-break (scaled below 1e-3) never outweigh a win (2).
    score = 2.0 * wins + iou.amax(dim=1).view(n, a) - 5e-4 * nearest.view(n, a)
    return score.argmax(dim=1)


def random_policy(num_actions: int, seed: int) -> Policy:
    generator = np.random.default_rng(seed)
    return lambda obs: generator.integers(0, num_actions, size=len(obs["target"]))


def oracle_policy(venv: SB3VecEnv) -> Policy:
    return lambda obs: oracle_actions(venv.env).cpu().numpy()


def model_policy(model: BaseAlgorithm) -> Policy:
    """PPO and A2C act by sampling their policy, as they were trained; DQN acts greedily."""
    deterministic = isinstance(model, DQN)
    return lambda obs: model.predict(obs, deterministic=deterministic)[0]


def evaluate(make_policy: Callable[[SB3VecEnv], Policy], bank: ImageBank, episodes: int, obs_size: int,
             seed: int) -> Evaluation:
    """Run ``episodes`` episodes of the search task on ``bank`` and measure them.

    Environment ``i`` of ``min(episodes, 64)`` contributes its first ``episodes // n`` (or one more) episodes,
    which depend only on ``(seed, i)``: every policy evaluated with one seed meets the same episodes.

    Args:
        make_policy: Given the evaluation VecEnv, a function from its observations to ``int [n]`` actions.
    """
    n = min(episodes, MAX_EVAL_ENVS)
    venv = make_env(bank, n, obs_size)
    venv.seed(seed)
    obs = venv.reset()
    policy = make_policy(venv)
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    returns, lengths, successes = [], [], []
    running_return, running_length = np.zeros(n), np.zeros(n, dtype=np.int64)
    while quota.any():
        obs, reward, done, infos = venv.step(policy(obs))
        running_return += reward
        running_length += 1
        for i in np.flatnonzero(done & (quota > 0)):
            quota[i] -= 1
            returns.append(running_return[i])
            lengths.append(running_length[i])
            successes.append(not infos[i]["TimeLimit.truncated"])
        running_return[done], running_length[done] = 0.0, 0
    venv.close()
    return Evaluation(float(np.mean(successes)), float(np.mean(returns)), float(np.mean(lengths)))


def make_model(algo: str, venv: SB3VecEnv, seed: int, steps: int) -> BaseAlgorithm:
    """A small-network learner for 2 CPU cores; hyperparameters are SB3's defaults except where noted."""
    policy_kwargs = {"net_arch": [64, 64]}
    if algo == "ppo":  # rollouts of 128 x num_envs steps, 4 epochs, some entropy to keep searching
        return PPO("MultiInputPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, ent_coef=0.01,
                   policy_kwargs=policy_kwargs, seed=seed, device="cpu")
    if algo == "a2c":
        return A2C("MultiInputPolicy", venv, n_steps=8, ent_coef=0.01, policy_kwargs=policy_kwargs, seed=seed,
                   device="cpu")
    if algo == "dqn":  # a replay buffer that fits in memory, one gradient step per 16 environment steps
        return DQN("MultiInputPolicy", venv, buffer_size=min(50_000, max(steps, 1)), learning_starts=1000,
                   batch_size=64, train_freq=1, gradient_steps=max(1, venv.num_envs // 16), learning_rate=2.5e-4,
                   target_update_interval=2000, exploration_fraction=0.3, exploration_final_eps=0.05,
                   policy_kwargs=policy_kwargs, seed=seed, device="cpu")
    raise ValueError(f"unknown algorithm {algo!r}; expected one of {ALGORITHMS}")


class LearningCurve(BaseCallback):
    """Evaluates the model on the val bank whenever training passes one of ``points`` (environment steps)."""

    def __init__(self, evaluate_model: Callable[[BaseAlgorithm], float], points: list[int]) -> None:
        super().__init__()
        self.evaluate_model = evaluate_model
        self.pending = sorted(points)
        self.curve: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        if self.pending and self.num_timesteps >= self.pending[0]:
            while self.pending and self.num_timesteps >= self.pending[0]:
                self.pending.pop(0)
            self.curve.append((self.num_timesteps, self.evaluate_model(self.model)))
        return True


def train_and_evaluate(algo: str, seed: int, train: ImageBank, val: ImageBank, args: RLArgs
                       ) -> RunResult:
    started = time.perf_counter()
    venv = make_env(train, args.num_envs, args.obs_size)
    model = make_model(algo, venv, seed, args.steps)

    def success(m: BaseAlgorithm) -> float:
        return evaluate(lambda _: model_policy(m), val, args.eval_episodes, args.obs_size, EVAL_SEED + seed).success

    points = [round(args.steps * k / args.curve_points) for k in range(1, args.curve_points)]
    callback = LearningCurve(success, points)
    curve = [(0, success(model))]
    model.learn(total_timesteps=args.steps, callback=callback)
    final = evaluate(lambda _: model_policy(model), val, args.eval_episodes, args.obs_size, EVAL_SEED + seed)
    venv.close()
    curve += callback.curve + [(model.num_timesteps, final.success)]
    return RunResult(algo, seed, final, model.num_timesteps, time.perf_counter() - started, curve)


def baseline(method: str, seed: int, val: ImageBank, args: RLArgs) -> RunResult:
    started = time.perf_counter()
    make_policy = oracle_policy if method == "oracle" else (lambda venv: random_policy(int(venv.action_space.n), seed))
    final = evaluate(make_policy, val, args.eval_episodes, args.obs_size, EVAL_SEED + seed)
    return RunResult(method, seed, final, 0, time.perf_counter() - started)


def run_one(method: str, seed: int, train: ImageBank, val: ImageBank, args: RLArgs) -> RunResult:
    """Train and evaluate a learner, or evaluate a baseline, at one seed."""
    if method in ALGORITHMS:
        return train_and_evaluate(method, seed, train, val, args)
    return baseline(method, seed, val, args)


def load_banks(args: RLArgs) -> tuple[ImageBank, ImageBank]:
    """The train bank (``--images`` of them) and the whole val bank, on a canvas fitted to ``--obs-size``."""
    canvas = default_canvas_size(args.obs_size)
    return (load_bank(args.shapes_root, "train", args.images, canvas),
            load_bank(args.shapes_root, "val", None, canvas))


#: A worker process's banks and arguments, loaded once by :func:`_start_worker`.
_WORKER: dict[str, object] = {}


def _start_worker(args: RLArgs) -> None:
    torch.set_num_threads(args.threads)
    _WORKER["train"], _WORKER["val"] = load_banks(args)
    _WORKER["args"] = args


def _run_in_worker(method: str, seed: int) -> RunResult:
    return run_one(method, seed, _WORKER["train"], _WORKER["val"], _WORKER["args"])  # type: ignore[arg-type]


def run_all(jobs: list[tuple[str, int]], args: RLArgs) -> Iterator[RunResult]:
    """Every ``(method, seed)`` run, yielded as it finishes: in this process, or in ``args.workers`` processes.

    Worker processes are spawned (not forked, which torch's thread pools do not survive), each loads the banks once
    and runs with ``args.threads`` torch threads; the longest runs are submitted first.
    """
    started = time.perf_counter()
    if args.workers == 1:
        train, val = load_banks(args)
        print(f"search on Shapes: {len(train)} train / {len(val)} val images, {args.obs_size}-px views, "
              f"{args.steps:,} steps x {args.seeds} seed(s) per algorithm "
              f"({time.perf_counter() - started:.0f} s to load)", flush=True)
        for method, seed in jobs:
            yield run_one(method, seed, train, val, args)
        return
    print(f"search on Shapes, {args.obs_size}-px views, {args.steps:,} steps x {args.seeds} seed(s) per algorithm: "
          f"{len(jobs)} runs in {args.workers} worker processes", flush=True)
    cost = {"dqn": 0, "ppo": 1, "a2c": 2, "oracle": 3, "random": 4}  # slowest first
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_start_worker,
                             initargs=(args,)) as pool:
        futures = [pool.submit(_run_in_worker, method, seed)
                   for method, seed in sorted(jobs, key=lambda job: (cost[job[0]], job[1]))]
        for future in as_completed(futures):
            yield future.result()


def load_bank(root: str | None, split: str, images: int | None, canvas_size: int) -> ImageBank:
    dataset = ShapesDataset(root, split)
    count = len(dataset) if images is None else min(images, len(dataset))
    return ImageBank.from_dataset(dataset, canvas_size=canvas_size, indices=range(count), progress=False)


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(results: list[RunResult], methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        runs = [r for r in results if r.method == method]
        rows.append({
            "method": method,
            "success": spread([r.final.success for r in runs]),
            "return": spread([r.final.ret for r in runs]),
            "length": spread([r.final.length for r in runs]),
            "steps": int(np.mean([r.steps for r in runs])),
            "wall": float(np.mean([r.wall for r in runs])),
            "seeds": len(runs),
        })
    return rows


def render_table(rows: list[dict]) -> str:
    head = ("| method | success rate | return | episode length | training steps | wall time per run (s) | seeds |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for row in rows:
        cells = [row["method"]] + [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("success", "return")]
        cells += [f"{row['length'][0]:.1f} ± {row['length'][1]:.1f}", f"{row['steps']:,}", f"{row['wall']:.0f}",
                  str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(rows: list[dict]) -> str:
    """A sentence placing each learner between the random policy and the oracle."""
    by_method = {row["method"]: row["success"][0] for row in rows}
    low, high = by_method["random"], by_method["oracle"]
    parts = []
    for method in ALGORITHMS:
        if method in by_method:
            rate = by_method[method]
            gap = (rate - low) / (high - low) if high > low else float("nan")
            parts.append(f"{method.upper()} {rate:.1%} ({100 * (rate - low):+.1f} points over random, {gap:.0%} of "
                         "the random-to-oracle gap)")
    return (f"Success rate on val: random {low:.1%}, oracle {high:.1%}; " + "; ".join(parts) + ". Return equals "
            "success rate in this task (the only reward is the 1 that ends a successful episode).")


def plot(results: list[RunResult], rows: list[dict], path: Path, title: str) -> None:
    """Success rate against training steps: one curve per algorithm (mean, min-max band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for method in ALGORITHMS:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        steps = np.array([[s for s, _ in r.curve] for r in runs]).mean(axis=0)
        values = np.array([[v for _, v in r.curve] for r in runs])  # (seeds, points)
        line = axes.plot(steps, values.mean(axis=0), marker="o", label=method.upper())[0]
        axes.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    styles = {"random": ":", "oracle": "--"}
    for row in rows:
        if row["method"] in styles:
            axes.axhline(row["success"][0], color="black", linestyle=styles[row["method"]], label=row["method"])
    axes.set_xlabel("training environment steps")
    axes.set_ylabel("success rate (val)")
    axes.set_ylim(0, 1.02)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_docs(table: str, rows: list[dict], plot_path: Path, wall: float, arguments: str,
               args: RLArgs) -> None:
    command = f"python benchmarks/rl_baselines.py {arguments}".strip()
    link = os.path.relpath(plot_path.resolve(), DOCS.parent.resolve())
    images = "all" if args.images is None else f"{args.images:,}"
    section = "\n".join([
        START,
        f"Measured with `{command}` on {machine()}; commit {commit()}; wall time {wall:.0f} s.",
        f"{args.steps:,} training steps per run on {images} train images, {args.num_envs} environments, "
        f"{args.obs_size}-px views; {args.eval_episodes} val episodes per evaluation; mean ± sample std over "
        f"{args.seeds} seed(s); runs {'one at a time' if args.workers == 1 else f'{args.workers} at a time'}, "
        f"each with {args.threads} torch thread(s) (wall time per run below is measured under that sharing)."
        + (f" Raw per-run results and learning curves: `{relative(args.json)}`." if args.json is not None else ""),
        "",
        table,
        "",
        reading(rows),
        "",
        f"![success rate during training]({link})",
        END,
    ])
    intro = (
        "`benchmarks/rl_baselines.py` trains stable-baselines3 PPO, A2C and DQN (`MultiInputPolicy`: NatureCNN on "
        "the view,\nconcatenated with the box and the one-hot target, then a `[64, 64]` head) on "
        "`ViewTransform-Shapes-v0` with\n`task=\"search\"` through `SB3VecEnv`, and evaluates them on the val "
        "split (PPO and A2C sampling their policy, DQN\ngreedy) against a uniform random policy and an oracle "
        "that reads the environment's state and takes the geometric\naction whose next view reaches the success "
        "coverage, else best overlaps (IoU) a box of the target. The plot shows the\nsuccess rate during "
        "training (mean over seeds, min-max band); the horizontal lines are random and oracle.\n"
    )
    write_section(DOCS, START, END, section, "RL baselines on active search", intro)


@dataclass
class RLArgs:
    """Arguments of ``benchmarks/rl_baselines.py``."""

    steps: int = option(400_000, "training environment steps per run")
    seeds: int = option(3, "seeds 0 .. N-1 for every method")
    algos: list[str] = option(list(ALGORITHMS), "learners to train", choices=ALGORITHMS)
    num_envs: int = option(16, "training environments")
    eval_episodes: int = option(256, "val episodes per evaluation")
    curve_points: int = option(5, "evaluations during training (after step 0)")
    obs_size: int = option(64, f"view side, pixels (>= {MIN_OBS_SIZE})")
    images: int | None = option(None, "train images in the bank (default: all)")
    shapes_root: str | None = option(None, "a Shapes set to read (default: the cached default set)")
    threads: int = option(1, "torch threads (1 is fastest for these small networks, and far faster on a busy CPU)")
    workers: int = option(1, "runs at once, each in its own process with --threads torch threads (at most the idle "
                          "cores; the results do not change)")
    plot: Path = option(DEFAULT_PLOT, "where to write the learning-curve PNG")
    json: Path | None = option(None, "write every run's result and curve to this JSON")
    quick: bool = option(False, "16k steps per run on 2,000 train images, 128 episodes")
    write_docs: bool = option(False, f"write the table into {DOCS.relative_to(ROOT)}")

    def __post_init__(self) -> None:
        if self.quick:
            self.steps, self.images, self.eval_episodes, self.curve_points = 16_384, 2000, 128, 4
        for name in ("steps", "seeds", "num_envs", "eval_episodes", "curve_points", "threads", "workers"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        check(self.obs_size >= MIN_OBS_SIZE, "obs_size", self.obs_size,
              f"at least {MIN_OBS_SIZE} pixels (NatureCNN's three valid convolutions need them)")
        check(self.images is None or self.images >= 1, "images", self.images, "an integer >= 1")
        check(self.json is None or not self.json.is_dir(), "json", self.json,
              "a file path, not a directory (e.g. DIR/rl_baselines.json)")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(RLArgs, argv, description=__doc__)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    methods = ["random", "oracle", *args.algos]
    jobs = [(method, seed) for seed in range(args.seeds) for method in methods]
    results: list[RunResult] = []
    order = {job: k for k, job in enumerate(jobs)}
    for result in run_all(jobs, args):
        results.append(result)
        results.sort(key=lambda r: order[(r.method, r.seed)])
        curve = " ".join(f"{s}:{v:.2f}" for s, v in result.curve)
        print(f"[{len(results)}/{len(jobs)}] {result.method:>6} seed {result.seed}: success "
              f"{result.final.success:.3f}, return {result.final.ret:.3f}, length {result.final.length:.1f}, "
              f"{result.steps:,} steps, {result.wall:.0f} s" + (f"  curve {curve}" if curve else ""), flush=True)
        if args.json is not None:  # after every run, so a failed or killed run keeps the finished ones
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"arguments": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
                                             "runs": [asdict(r) for r in results]}, indent=1))
    if args.json is not None:
        print(f"wrote {args.json}")

    rows = summarise(results, methods)
    table = render_table(rows)
    wall = time.perf_counter() - started
    plot(results, rows, args.plot, f"Shapes search, {args.steps:,} steps, {args.seeds} seed(s)")
    print(f"\n{table}\n\nwall time {wall:.0f} s on {machine()}, commit {commit()}\nwrote {args.plot}")
    if args.write_docs:
        write_docs(table, rows, args.plot, wall, " ".join(sys.argv[1:] if argv is None else argv), args)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
