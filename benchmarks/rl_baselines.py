"""Stable-baselines3 PPO, A2C and DQN and the torch-native PPO of ``benchmarks/ppo.py`` on image-only search, at
each difficulty level, against a uniform random policy and a greedy oracle.

The task is ``ViewTransform-Shapes-SearchCircle-v0`` (``task="search"``, ``target="circle"``, ``obs_mode="view"``):
the agent moves its view until a circle covers enough of it (reward 1 and termination) or the episode's steps run
out, at the levels of :data:`view_env.core.DIFFICULTIES` (``easy``, ``medium``, ``hard``; the ``-Easy-v0`` and
``-Medium-v0`` ids). Agents train on the Shapes train split and are evaluated on the val split:

- ``ppo``, ``a2c``, ``dqn``: SB3's ``CnnPolicy`` (NatureCNN, 512 features) with a ``[64, 64]`` head through
  :class:`view_env.sb3.SB3VecEnv`, trained for ``--steps`` environment steps per seed with one torch thread;
  SB3's defaults apart from the settings in :func:`make_model` (PPO: rollouts of 128 steps x 16 environments, 4
  epochs, minibatches of 256, entropy 0.01);
- ``torch-ppo``: ``benchmarks/ppo.py`` (CleanRL's Atari PPO, every tensor on the environment's device, no numpy),
  at its defaults and the same ``--num-envs``;
- ``random``: uniform over every discrete action;
- ``oracle``: reads the environment's state and takes the geometric action whose resulting view (simulated with
  :func:`view_env.core.apply_discrete`, which projects onto the legal views) reaches the success coverage, else
  has the best IoU with a box of the target category (see :func:`oracle_actions`).

PPO, A2C and torch PPO are evaluated sampling their policy, DQN greedily. Success rate is the fraction of evaluation
episodes that end by success; return equals it (the only reward is the 1 that ends a successful episode); length
is the mean episode length. Each seed evaluates on its own fixed val episodes, the same for every method, each
environment contributing a fixed quota of episodes (so short, successful episodes are not over-counted). Learning
curves evaluate every agent at ``--curve-points`` points during training. Steps per second are those of the whole
training loop (stepping, rendering, the policy, the updates), evaluations left out. ``--write-docs`` replaces this
benchmark's section of docs/benchmarks.md.

    python benchmarks/rl_baselines.py --workers 2  # the full run: 3 levels x 3 seeds x 6 methods, 50k steps each
    python benchmarks/rl_baselines.py --quick      # 8k steps per run on 2,000 images, easy level only

Every run is independent and uses one core (one torch thread), so ``--workers`` set to the number of idle cores
divides the wall time by about that number; each worker holds its own copy of the image banks (about 0.5 GB at the
defaults). The results do not depend on ``--workers``: a run depends only on its level, method and seed.
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
import ppo as torch_ppo
import torch
from common import DOCS, ROOT, commit, machine, relative, write_section
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents import cli
from agents.cli import check, option
from view_env import core
from view_env.data import ImageBank, ShapesDataset, default_canvas_size
from view_env.sb3 import SB3VecEnv
from view_env.vector import ViewTransformVectorEnv

START, END = "<!-- rl_baselines:start -->", "<!-- rl_baselines:end -->"
#: The difficulty levels' numbers in docs/envs.md, written by ``--write-docs`` too.
ENVS_DOC = ROOT / "docs" / "envs.md"
LEVELS_START, LEVELS_END = "<!-- levels:start -->", "<!-- levels:end -->"
DEFAULT_PLOT = ROOT / "docs" / "figures" / "rl_baselines.png"
SB3_ALGORITHMS = ("ppo", "a2c", "dqn")
ALGORITHMS = (*SB3_ALGORITHMS, "torch-ppo")
LEVELS = tuple(core.DIFFICULTIES)
#: The searched category (image-only observations, as CNN agents take them).
TARGET = "circle"
#: Evaluation episodes of seed ``s`` are drawn with environment seed ``EVAL_SEED + s`` (training uses ``s``).
EVAL_SEED = 10_000
#: Most environments stepped at once during evaluation.
MAX_EVAL_ENVS = 64
#: NatureCNN's three valid convolutions need views of at least this many pixels.
MIN_OBS_SIZE = 36

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class Evaluation:
    """Outcome of a fixed number of evaluation episodes."""

    success: float  # fraction of episodes ended by success
    ret: float  # mean undiscounted episodic return
    length: float  # mean episode length, steps


@dataclass
class RunResult:
    """One method at one level and seed: its final evaluation and, for learners, its learning curve and speed."""

    level: str
    method: str
    seed: int
    final: Evaluation
    steps: int  # training environment steps (0 for random and oracle)
    wall: float  # seconds for training and every evaluation of the run
    train_seconds: float = 0.0  # seconds of the training loop alone (evaluations left out)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (training steps, success rate)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds > 0 else float("nan")


def env_kwargs(level: str, obs_size: int) -> dict[str, object]:
    """The image-only search for :data:`TARGET` at ``level``, as environment keyword arguments."""
    return {"task": "search", "target": TARGET, "difficulty": level, "obs_size": obs_size}


def make_env(bank: ImageBank, num_envs: int, obs_size: int, level: str) -> SB3VecEnv:
    """The search task at ``level`` on ``bank`` as a stable-baselines3 VecEnv of ``num_envs`` environments."""
    return SB3VecEnv(ViewTransformVectorEnv(num_envs, bank=bank, **env_kwargs(level, obs_size)))


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
    return lambda obs: generator.integers(0, num_actions, size=len(obs))


def oracle_policy(venv: SB3VecEnv) -> Policy:
    return lambda obs: oracle_actions(venv.env).cpu().numpy()


def model_policy(model: BaseAlgorithm) -> Policy:
    """PPO and A2C act by sampling their policy, as they were trained; DQN acts greedily."""
    deterministic = isinstance(model, DQN)
    return lambda obs: model.predict(obs, deterministic=deterministic)[0]


def agent_policy(agent: torch_ppo.Agent) -> Policy:
    """The torch PPO agent, sampling its policy as it was trained."""
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.get_action_and_value(torch.as_tensor(obs))[0].numpy()
    return act


def evaluate(make_policy: Callable[[SB3VecEnv], Policy], bank: ImageBank, episodes: int, obs_size: int,
             seed: int, level: str = "hard") -> Evaluation:
    """Run ``episodes`` episodes of the search task at ``level`` on ``bank`` and measure them.

    Environment ``i`` of ``min(episodes, 64)`` contributes its first ``episodes // n`` (or one more) episodes,
    which depend only on ``(seed, i)``: every policy evaluated with one seed meets the same episodes.

    Args:
        make_policy: Given the evaluation VecEnv, a function from its observations to ``int [n]`` actions.
    """
    n = min(episodes, MAX_EVAL_ENVS)
    venv = make_env(bank, n, obs_size, level)
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
        return PPO("CnnPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, ent_coef=0.01,
                   policy_kwargs=policy_kwargs, seed=seed, device="cpu")
    if algo == "a2c":
        return A2C("CnnPolicy", venv, n_steps=8, ent_coef=0.01, policy_kwargs=policy_kwargs, seed=seed,
                   device="cpu")
    if algo == "dqn":  # a replay buffer that fits in memory, one gradient step per 16 environment steps
        return DQN("CnnPolicy", venv, buffer_size=min(50_000, max(steps, 1)), learning_starts=1000,
                   batch_size=64, train_freq=1, gradient_steps=max(1, venv.num_envs // 16), learning_rate=2.5e-4,
                   target_update_interval=2000, exploration_fraction=0.3, exploration_final_eps=0.05,
                   policy_kwargs=policy_kwargs, seed=seed, device="cpu")
    raise ValueError(f"unknown algorithm {algo!r}; expected one of {SB3_ALGORITHMS}")


class LearningCurve(BaseCallback):
    """Evaluates the model on the val bank whenever training passes one of ``points`` (environment steps)."""

    def __init__(self, evaluate_model: Callable[[BaseAlgorithm], float], points: list[int]) -> None:
        super().__init__()
        self.evaluate_model = evaluate_model
        self.pending = sorted(points)
        self.curve: list[tuple[int, float]] = []
        self.seconds = 0.0  # spent evaluating

    def _on_step(self) -> bool:
        if self.pending and self.num_timesteps >= self.pending[0]:
            while self.pending and self.num_timesteps >= self.pending[0]:
                self.pending.pop(0)
            started = time.perf_counter()
            self.curve.append((self.num_timesteps, self.evaluate_model(self.model)))
            self.seconds += time.perf_counter() - started
        return True


def curve_points(args: RLArgs) -> list[int]:
    """The training steps after which a learner is evaluated (besides step 0 and the end)."""
    return [round(args.steps * k / args.curve_points) for k in range(1, args.curve_points)]


def train_and_evaluate(level: str, algo: str, seed: int, train: ImageBank, val: ImageBank, args: RLArgs
                       ) -> RunResult:
    """Train one SB3 learner at ``level`` and evaluate it during and after training."""
    started = time.perf_counter()
    venv = make_env(train, args.num_envs, args.obs_size, level)
    model = make_model(algo, venv, seed, args.steps)

    def success(m: BaseAlgorithm) -> float:
        return evaluate(lambda _: model_policy(m), val, args.eval_episodes, args.obs_size, EVAL_SEED + seed,
                        level).success

    callback = LearningCurve(success, curve_points(args))
    curve = [(0, success(model))]
    learning = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=callback)
    train_seconds = time.perf_counter() - learning - callback.seconds
    final = evaluate(lambda _: model_policy(model), val, args.eval_episodes, args.obs_size, EVAL_SEED + seed, level)
    venv.close()
    curve += callback.curve + [(model.num_timesteps, final.success)]
    return RunResult(level, algo, seed, final, model.num_timesteps, time.perf_counter() - started, train_seconds,
                     curve)


def train_torch_ppo(level: str, seed: int, train: ImageBank, val: ImageBank, args: RLArgs) -> RunResult:
    """Train ``benchmarks/ppo.py`` at its defaults on ``level`` and evaluate it as the SB3 learners are."""
    started = time.perf_counter()
    ppo_args = torch_ppo.PPOArgs(env_id="ViewTransform-Shapes-v0", total_timesteps=args.steps,
                                 num_envs=args.num_envs, obs_size=args.obs_size, seed=seed)
    pending = curve_points(args)
    curve: list[tuple[int, float]] = []

    def success(agent: torch_ppo.Agent) -> float:
        return evaluate(lambda _: agent_policy(agent), val, args.eval_episodes, args.obs_size, EVAL_SEED + seed,
                        level).success

    def on_iteration(steps: int, agent: torch_ppo.Agent) -> None:
        if steps == 0:
            curve.append((0, success(agent)))
        elif pending and steps >= pending[0]:
            while pending and steps >= pending[0]:
                pending.pop(0)
            curve.append((steps, success(agent)))

    kwargs = {k: v for k, v in env_kwargs(level, args.obs_size).items() if k != "obs_size"}  # train() passes it
    result = torch_ppo.train(ppo_args, callback=on_iteration, bank=train, **kwargs)
    final = evaluate(lambda _: agent_policy(result["agent"]), val, args.eval_episodes, args.obs_size,
                     EVAL_SEED + seed, level)
    curve += [(result["steps"], final.success)]
    return RunResult(level, "torch-ppo", seed, final, result["steps"], time.perf_counter() - started,
                     result["seconds"], curve)


def baseline(level: str, method: str, seed: int, val: ImageBank, args: RLArgs) -> RunResult:
    started = time.perf_counter()
    make_policy = oracle_policy if method == "oracle" else (lambda venv: random_policy(int(venv.action_space.n), seed))
    final = evaluate(make_policy, val, args.eval_episodes, args.obs_size, EVAL_SEED + seed, level)
    return RunResult(level, method, seed, final, 0, time.perf_counter() - started)


def run_one(level: str, method: str, seed: int, train: ImageBank, val: ImageBank, args: RLArgs) -> RunResult:
    """Train and evaluate a learner, or evaluate a baseline, at one level and seed."""
    if method in SB3_ALGORITHMS:
        return train_and_evaluate(level, method, seed, train, val, args)
    if method == "torch-ppo":
        return train_torch_ppo(level, seed, train, val, args)
    return baseline(level, method, seed, val, args)


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


def _run_in_worker(level: str, method: str, seed: int) -> RunResult:
    return run_one(level, method, seed, _WORKER["train"], _WORKER["val"], _WORKER["args"])  # type: ignore[arg-type]


Job = tuple[str, str, int]  # (level, method, seed)


def run_all(jobs: list[Job], args: RLArgs) -> Iterator[RunResult]:
    """Every ``(level, method, seed)`` run, yielded as it finishes: in this process, or in ``args.workers``
    processes.

    Worker processes are spawned (not forked, which torch's thread pools do not survive), each loads the banks once
    and runs with ``args.threads`` torch threads; the longest runs are submitted first.
    """
    started = time.perf_counter()
    if args.workers == 1:
        train, val = load_banks(args)
        print(f"search for a {TARGET} on Shapes: {len(train)} train / {len(val)} val images, {args.obs_size}-px "
              f"views, levels {', '.join(args.levels)}, {args.steps:,} steps x {args.seeds} seed(s) per algorithm "
              f"({time.perf_counter() - started:.0f} s to load)", flush=True)
        for level, method, seed in jobs:
            yield run_one(level, method, seed, train, val, args)
        return
    print(f"search for a {TARGET} on Shapes, {args.obs_size}-px views, levels {', '.join(args.levels)}, "
          f"{args.steps:,} steps x {args.seeds} seed(s) per algorithm: {len(jobs)} runs in {args.workers} worker "
          "processes", flush=True)
    cost = {"ppo": 0, "torch-ppo": 1, "dqn": 2, "a2c": 3, "oracle": 4, "random": 5}  # slowest first
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_start_worker,
                             initargs=(args,)) as pool:
        futures = [pool.submit(_run_in_worker, *job)
                   for job in sorted(jobs, key=lambda job: (cost[job[1]], job[2], job[0]))]
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


def summarise(results: list[RunResult], methods: list[str], levels: Sequence[str] = ("hard",)) -> list[dict]:
    """One row per level and method: mean and sample std over seeds of each measure."""
    rows = []
    for level in levels:
        for method in methods:
            runs = [r for r in results if r.method == method and r.level == level]
            if not runs:
                continue
            speeds = [r.steps_per_second for r in runs if r.train_seconds > 0]
            rows.append({
                "level": level,
                "method": method,
                "success": spread([r.final.success for r in runs]),
                "return": spread([r.final.ret for r in runs]),
                "length": spread([r.final.length for r in runs]),
                "steps": int(np.mean([r.steps for r in runs])),
                "steps_per_second": float(np.mean(speeds)) if speeds else None,
                "wall": float(np.mean([r.wall for r in runs])),
                "seeds": len(runs),
            })
    return rows


def render_table(rows: list[dict]) -> str:
    head = ("| level | method | success rate | return | episode length | training steps | training steps/s | "
            "wall time per run (s) | seeds |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for row in rows:
        cells = [row["level"], row["method"]] + [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ("success", "return")]
        speed = row["steps_per_second"]
        cells += [f"{row['length'][0]:.1f} ± {row['length'][1]:.1f}", f"{row['steps']:,}",
                  "n/a" if speed is None else f"{speed:,.0f}", f"{row['wall']:.0f}", str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(rows: list[dict]) -> str:
    """Per level, a sentence placing each learner between the random policy and the oracle."""
    sentences = []
    for level in dict.fromkeys(row["level"] for row in rows):
        by_method = {row["method"]: row["success"][0] for row in rows if row["level"] == level}
        if "random" not in by_method or "oracle" not in by_method:
            continue
        low, high = by_method["random"], by_method["oracle"]
        parts = []
        for method in ALGORITHMS:
            if method in by_method:
                rate = by_method[method]
                gap = (rate - low) / (high - low) if high > low else float("nan")
                parts.append(f"{method.upper()} {rate:.1%} ({100 * (rate - low):+.1f} points over random, {gap:.0%} "
                             "of the random-to-oracle gap)")
        sentences.append(f"**{level}**: random {low:.1%}, oracle {high:.1%}" + ("; " if parts else "")
                         + "; ".join(parts) + ".")
    return ("Success rate on val. " + " ".join(sentences) + " Return equals success rate in this task (the only "
            "reward is the 1 that ends a successful episode).")


def plot(results: list[RunResult], rows: list[dict], path: Path, title: str) -> None:
    """Success rate against training steps, one panel per level: one curve per learner (mean, min-max band over
    seeds), random and oracle as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(r.level for r in results))
    figure, panels = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.8), squeeze=False, sharey=True)
    for axes, level in zip(panels[0], levels, strict=True):
        for method in ALGORITHMS:
            runs = [r for r in results if r.method == method and r.level == level]
            if not runs:
                continue
            length = min(len(r.curve) for r in runs)
            steps = np.array([[s for s, _ in r.curve[:length]] for r in runs]).mean(axis=0)
            values = np.array([[v for _, v in r.curve[:length]] for r in runs])  # (seeds, points)
            line = axes.plot(steps, values.mean(axis=0), marker="o", markersize=3, label=method.upper())[0]
            axes.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
        styles = {"random": ":", "oracle": "--"}
        for row in rows:
            if row["level"] == level and row["method"] in styles:
                axes.axhline(row["success"][0], color="black", linestyle=styles[row["method"]], label=row["method"])
        axes.set_xlabel("training environment steps")
        axes.set_ylim(0, 1.02)
        axes.set_title(f"level {level}", fontsize=9)
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("success rate (val)")
    panels[0][-1].legend(fontsize=7, loc="lower right")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def levels_table(rows: list[dict]) -> str:
    """Per level: the success rates (mean ± std over seeds) of random, each learner and the oracle."""
    methods = [m for m in ("random", *ALGORITHMS, "oracle") if any(r["method"] == m for r in rows)]
    names = {"random": "random", "oracle": "oracle", "ppo": "SB3 PPO", "a2c": "SB3 A2C", "dqn": "SB3 DQN",
             "torch-ppo": "torch PPO"}
    lines = ["| level | " + " | ".join(names[m] for m in methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for level in dict.fromkeys(r["level"] for r in rows):
        cells = []
        for method in methods:
            row = next((r for r in rows if r["level"] == level and r["method"] == method), None)
            cells.append("n/a" if row is None else f"{row['success'][0]:.3f} ± {row['success'][1]:.3f}")
        lines.append(f"| `{level}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_levels(rows: list[dict], source: str, steps: int, seeds: int) -> None:
    """Replace the measured numbers of the difficulty levels in docs/envs.md."""
    text = ENVS_DOC.read_text()
    if LEVELS_START not in text or LEVELS_END not in text:
        return
    section = "\n".join([
        LEVELS_START,
        f"Success rate on the Shapes val split after {steps:,} training steps (mean ± sample std over {seeds} "
        f"seeds; {source}, where the learners, the oracle and the steps per second are described):",
        "",
        levels_table(rows),
        LEVELS_END,
    ])
    head, rest = text.split(LEVELS_START, 1)
    ENVS_DOC.write_text(head + section + rest.split(LEVELS_END, 1)[1])


def write_docs(table: str, rows: list[dict], plot_path: Path, wall: float, arguments: str,
               args: RLArgs) -> None:
    command = f"python benchmarks/rl_baselines.py {arguments}".strip()
    link = os.path.relpath(plot_path.resolve(), DOCS.parent.resolve())
    images = "all" if args.images is None else f"{args.images:,}"
    section = "\n".join([
        START,
        f"Measured with `{command}` on {machine()}; commit {commit()}; wall time {wall:.0f} s.",
        f"Image-only search for a {TARGET} at levels {', '.join(getattr(args, 'levels', LEVELS))}; "
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
        "`benchmarks/rl_baselines.py` trains stable-baselines3 PPO, A2C and DQN (`CnnPolicy`: NatureCNN, then a "
        "`[64, 64]`\nhead, through `SB3VecEnv`) and the torch-native PPO of `benchmarks/ppo.py` (CleanRL's Atari "
        "PPO, every tensor\non the environment's device) on the image-only search for a circle "
        "(`ViewTransform-Shapes-SearchCircle-v0`) at\neach difficulty level (docs/envs.md), and evaluates them on "
        "the val split (PPO, A2C and torch PPO sampling their\npolicy, DQN greedy) against a uniform random policy "
        "and an oracle that reads the environment's state and takes the\ngeometric action whose next view reaches "
        "the success coverage, else best overlaps (IoU) a box of the target.\n\"training steps/s\" is the "
        "whole training loop (stepping, rendering, the policy, the updates; evaluations left out)\nwith one torch "
        "thread per run. The plot shows the success rate during training (mean over seeds, min-max band);\nthe "
        "horizontal lines are random and oracle.\n"
    )
    write_section(DOCS, START, END, section, "RL baselines on active search", intro)
    if DOCS == ROOT / "docs" / "benchmarks.md":  # not for a test's copy of the docs
        write_levels(rows, "`python benchmarks/rl_baselines.py`, docs/benchmarks.md", args.steps, args.seeds)


@dataclass
class RLArgs:
    """Arguments of ``benchmarks/rl_baselines.py``."""

    steps: int = option(50_000, "training environment steps per run")
    seeds: int = option(3, "seeds 0 .. N-1 for every method")
    levels: list[str] = option(list(LEVELS), "difficulty levels (view_env.core.DIFFICULTIES)", choices=LEVELS)
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
    quick: bool = option(False, "8k steps per run on 2,000 train images, 128 episodes, the easy level only")
    write_docs: bool = option(False, f"write the table into {DOCS.relative_to(ROOT)}")

    def __post_init__(self) -> None:
        if self.quick:
            self.steps, self.images, self.eval_episodes, self.curve_points = 8_192, 2000, 128, 4
            self.levels = ["easy"]
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
    jobs = [(level, method, seed) for level in args.levels for seed in range(args.seeds) for method in methods]
    results: list[RunResult] = []
    order = {job: k for k, job in enumerate(jobs)}
    for result in run_all(jobs, args):
        results.append(result)
        results.sort(key=lambda r: order[(r.level, r.method, r.seed)])
        curve = " ".join(f"{s}:{v:.2f}" for s, v in result.curve)
        speed = f", {result.steps_per_second:,.0f} steps/s" if result.train_seconds > 0 else ""
        print(f"[{len(results)}/{len(jobs)}] {result.level:>6} {result.method:>9} seed {result.seed}: success "
              f"{result.final.success:.3f}, return {result.final.ret:.3f}, length {result.final.length:.1f}, "
              f"{result.steps:,} steps{speed}, {result.wall:.0f} s" + (f"  curve {curve}" if curve else ""),
              flush=True)
        if args.json is not None:  # after every run, so a failed or killed run keeps the finished ones
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"arguments": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
                                             "runs": [asdict(r) for r in results]}, indent=1))
    if args.json is not None:
        print(f"wrote {args.json}")

    rows = summarise(results, methods, args.levels)
    table = render_table(rows)
    wall = time.perf_counter() - started
    plot(results, rows, args.plot, f"image-only search for a {TARGET} on Shapes, {args.steps:,} steps, "
         f"{args.seeds} seed(s)")
    print(f"\n{table}\n\nwall time {wall:.0f} s on {machine()}, commit {commit()}\nwrote {args.plot}")
    if args.write_docs:
        write_docs(table, rows, args.plot, wall, " ".join(sys.argv[1:] if argv is None else argv), args)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
