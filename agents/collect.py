"""Collect view transitions by stepping the vector environment under a behaviour policy.

The behaviour policy only decides which transitions get logged; the GVF learner never needs to know it (it sees the
relative box of each step, see :mod:`agents.data`). Uniform random actions are the default; any callable or
stable-baselines3 model works too. Transitions fill a :class:`~agents.data.ReplayBuffer` on the device, or go to
shard files for ``agents.pretrain``::

    python -m agents.collect --env shapes --out runs/shapes-transitions --num-transitions 100000
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from tqdm import tqdm

from agents.data import DEFAULT_SHARD_SIZE, INDEX_NAME, ReplayBuffer, Transitions, relative_box, write_shards
from view_env.data import DATASETS, DatasetFormatError, DatasetNotFoundError
from view_env.vector import ViewTransformVectorEnv

Observation = torch.Tensor | dict[str, torch.Tensor]
Actions = torch.Tensor | np.ndarray
#: stable-baselines3 algorithms that ``--policy ALGO:PATH`` can load.
SB3_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"a2c": A2C, "dqn": DQN, "ppo": PPO, "sac": SAC, "td3": TD3}


# ----------------------------------------------------------------------------------------------- behaviour policies


class BehaviourPolicy:
    """Maps a batch of observations to a batch of actions for the vector environment.

    ``policy(obs, info)`` gets the environment's last observation (``uint8 [N, 3, S, S]``, or a dict of tensors
    with ``obs_mode="dict"``) and info, and returns ``N`` actions as a tensor or numpy array: ``int64 [N]``
    for a discrete environment, ``float32 [N, D]`` for a continuous one.
    """

    #: Short description stored in the shard metadata.
    name: str = "policy"

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> Actions:
        raise NotImplementedError


class UniformRelativeBox(BehaviourPolicy):
    """Uniform random actions: continuous actions uniform in the action box (``[-1, 1]^D``, the relative-box action
    and augmentation strengths), or discrete actions uniform over ``Discrete(K)``.

    Draws come from a ``torch.Generator`` on the environment's device seeded with ``seed``, so a run is repeatable.

    Args:
        env: The vector environment (its ``single_action_space``, ``num_envs`` and ``device`` are used).
        seed: Seed of the generator.
    """

    name = "uniform"

    def __init__(self, env: VectorEnv, seed: int = 0) -> None:
        space = env.single_action_space
        self.num_envs = env.num_envs
        self.device = torch.device(getattr(env.unwrapped, "device", "cpu"))
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            self.start, self.n = int(space.start), int(space.n)
        elif isinstance(space, gym.spaces.Box) and np.isfinite(space.low).all() and np.isfinite(space.high).all():
            self.low = torch.as_tensor(space.low, dtype=torch.float32, device=self.device)  # (D,)
            self.high = torch.as_tensor(space.high, dtype=torch.float32, device=self.device)  # (D,)
        else:
            raise TypeError(f"UniformRelativeBox needs a Discrete or bounded Box action space, got {space}")

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> torch.Tensor:
        """``int64 [N]`` or ``float32 [N, D]`` uniform actions on the environment's device."""
        if self.discrete:
            return torch.randint(self.start, self.start + self.n, (self.num_envs,), generator=self.generator,
                                 device=self.device)
        u = torch.rand((self.num_envs, self.low.shape[0]), generator=self.generator, device=self.device)  # (N, D)
        return self.low + (self.high - self.low) * u


class CallablePolicy(BehaviourPolicy):
    """Any function ``fn(obs, info) -> actions`` as a behaviour policy (see :class:`BehaviourPolicy`)."""

    def __init__(self, fn: Callable[[Observation, Mapping[str, Any]], Actions]) -> None:
        self.fn = fn
        self.name = f"callable:{getattr(fn, '__qualname__', type(fn).__name__)}"

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> Actions:
        return self.fn(obs, info)


class SB3Policy(BehaviourPolicy):
    """A stable-baselines3 model as a behaviour policy: ``model.predict`` on the observations copied to numpy.

    With ``deterministic=False`` (default) actions are sampled from the model's distribution with torch's global
    random state (``model.set_random_seed`` seeds it).

    Args:
        model: A trained (or untrained) ``BaseAlgorithm`` whose spaces match the environment's.
        deterministic: Take the mode of the action distribution instead of sampling.
    """

    def __init__(self, model: BaseAlgorithm, deterministic: bool = False) -> None:
        self.model = model
        self.deterministic = deterministic
        self.name = f"sb3:{type(model).__name__}"

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> np.ndarray:
        """``[N]`` or ``[N, D]`` numpy actions (continuous ones clipped to the action box by SB3)."""
        if isinstance(obs, Mapping):
            host: np.ndarray | dict[str, np.ndarray] = {key: value.cpu().numpy() for key, value in obs.items()}
        else:
            host = obs.cpu().numpy()
        actions, _ = self.model.predict(host, deterministic=self.deterministic)
        return actions


PolicySpec = BehaviourPolicy | BaseAlgorithm | Callable[[Observation, Mapping[str, Any]], Actions] | str | None


def make_policy(spec: PolicySpec, env: VectorEnv, seed: int = 0) -> BehaviourPolicy:
    """A behaviour policy from ``spec``.

    Args:
        spec: ``None`` or ``"uniform"`` (:class:`UniformRelativeBox` seeded with ``seed``), a
            :class:`BehaviourPolicy` (returned as is), a stable-baselines3 ``BaseAlgorithm`` (:class:`SB3Policy`;
            its observation and action spaces must be the environment's), or a callable ``fn(obs, info)``
            (:class:`CallablePolicy`).
        env: The vector environment the policy will act in.
        seed: Seed of the uniform policy.
    """
    if spec is None or (isinstance(spec, str) and spec == "uniform"):
        return UniformRelativeBox(env, seed)
    if isinstance(spec, BehaviourPolicy):
        return spec
    if isinstance(spec, BaseAlgorithm):
        for what, mine, theirs in (("observation", spec.observation_space, env.single_observation_space),
                                   ("action", spec.action_space, env.single_action_space)):
            if mine != theirs:
                raise ValueError(f"the {type(spec).__name__} model's {what} space {mine} is not the environment's "
                                 f"{theirs}; build the environment to match the model (obs_size, action_mode)")
        return SB3Policy(spec)
    if isinstance(spec, str):
        raise ValueError(f"policy={spec!r} is invalid: expected None or 'uniform', a callable fn(obs, info), or a "
                         "stable-baselines3 model")
    if callable(spec):
        return CallablePolicy(spec)
    raise TypeError(f"policy={spec!r} is invalid: expected None or 'uniform', a callable fn(obs, info), or a "
                    "stable-baselines3 model")


# ----------------------------------------------------------------------------------------------- transitions


def _view(obs: Observation) -> torch.Tensor:
    return obs["view"] if isinstance(obs, Mapping) else obs


def transitions_from_step(obs: Observation, info: Mapping[str, Any], next_obs: Observation,
                          next_info: Mapping[str, Any], anchor: torch.Tensor | None = None) -> Transitions:
    """The ``N`` transitions of one vector-environment step, never crossing an episode boundary.

    Where an environment's episode ended at this step (``next_info["_final_obs"]``, SAME_STEP autoreset), x' is
    the episode's last view and state (``final_obs``, ``final_info``), not the next episode's first.

    Args:
        obs: Observation before the step (``uint8 [N, 3, S, S]`` or a dict with ``"view"``).
        info: Info before the step (``box``, ``aug``, ``image_index``).
        next_obs: Observation the step returned.
        next_info: Info the step returned (with ``annotation``, and the autoreset keys where an episode ended).
        anchor: ``uint8 [N, 3, S, S]`` the first view of each environment's current episode (default: x itself).

    Returns:
        A transition dict (see :mod:`agents.data`) of ``N`` rows on the environment's device.
    """
    keys = ("box", "aug", "annotation", "image_index")
    next_view = _view(next_obs)
    after = {key: next_info[key] for key in keys}
    ended = next_info.get("_final_obs")
    if ended is not None and bool(ended.any()):
        final_info = next_info["final_info"]

        def last(final: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            return torch.where(ended.view(-1, *([1] * (current.dim() - 1))), final, current)

        next_view = last(_view(next_info["final_obs"]), next_view)  # (N, 3, S, S)
        after = {key: last(final_info[key], value) for key, value in after.items()}
    return {
        "view": _view(obs), "next_view": next_view, "box": info["box"], "next_box": after["box"],
        "aug": info["aug"], "next_aug": after["aug"], "rel_box": relative_box(info["box"], after["box"]),
        "annotation": after["annotation"], "image_index": info["image_index"],
        "next_image_index": after["image_index"], "anchor_view": _view(obs) if anchor is None else anchor,
        "view_annotation": info["annotation"],
    }


class TransitionCollector:
    """Steps a vector environment under a behaviour policy and turns each step into ``N`` transitions.

    Iterating yields one transition dict of ``N = num_envs`` rows per environment step, for ever; the first
    step resets the environment with ``seed``. The same ``seed`` (with a seeded policy) gives the same transitions.

    Args:
        env: A :class:`~view_env.vector.ViewTransformVectorEnv` (possibly wrapped) with SAME_STEP autoreset.
        policy: Anything :func:`make_policy` takes (default: uniform random actions).
        seed: Seed of the environment's reset and of the uniform policy.
    """

    def __init__(self, env: VectorEnv, policy: PolicySpec = None, *, seed: int = 0) -> None:
        base = env.unwrapped
        if not isinstance(base, ViewTransformVectorEnv):
            raise TypeError(f"TransitionCollector steps a ViewTransformVectorEnv, got {type(base).__name__}")
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"TransitionCollector needs autoreset_mode SAME_STEP (the episode's last view comes in "
                             f"final_obs), got {mode}")
        self.env = env
        self.base = base
        self.seed = seed
        self.policy = make_policy(policy, env, seed)
        self.num_envs = env.num_envs
        self.obs_size = base.params.obs_size
        self.num_categories = base.num_categories
        self._obs: Observation | None = None
        self._info: dict[str, Any] = {}
        self._anchor: torch.Tensor | None = None  # (N, 3, S, S) first view of each current episode

    @property
    def metadata(self) -> dict[str, Any]:
        """What the transitions are: dataset, environment arguments, policy and seed (stored with shards)."""
        dataset = self.base.bank.dataset
        root = getattr(dataset, "root", None)
        env_kwargs = {
            "num_envs": self.num_envs, "dataset": dataset.name, "root": None if root is None else str(root),
            "split": getattr(dataset, "split", None), "device": str(self.base.device), "task": self.base.task,
            "temporal": self.base.temporal, **dataclasses.asdict(self.base.params),
        }
        return {"obs_size": self.obs_size, "num_categories": self.num_categories, "dataset": dataset.name,
                "env_kwargs": env_kwargs, "policy": self.policy.name, "seed": self.seed}

    def reset(self) -> None:
        """Restart every environment from ``seed``."""
        self._obs, self._info = self.env.reset(seed=self.seed)
        self._anchor = _view(self._obs)

    def next_batch(self) -> Transitions:
        """Step the environment once: a transition dict of ``N`` rows on the environment's device."""
        if self._obs is None:
            self.reset()
        assert self._obs is not None
        actions = self.policy(self._obs, self._info)
        obs, _, _, _, info = self.env.step(actions)
        batch = transitions_from_step(self._obs, self._info, obs, info, self._anchor)
        ended = info.get("_final_obs")
        if ended is not None:  # a new episode began: its first view is the new anchor
            self._anchor = torch.where(ended.view(-1, 1, 1, 1), _view(obs), self._anchor)
        self._obs, self._info = obs, info
        return batch

    def __iter__(self) -> Iterator[Transitions]:
        while True:
            yield self.next_batch()

    def collect(self, buffer: ReplayBuffer, num_steps: int, progress: bool = True) -> int:
        """Step ``num_steps`` times and add every transition to ``buffer``.

        Returns:
            The number of transitions added, ``num_steps * N``.
        """
        if (buffer.obs_size, buffer.num_categories) != (self.obs_size, self.num_categories):
            raise ValueError(f"the buffer holds obs_size={buffer.obs_size}, num_categories={buffer.num_categories} "
                             f"but the environment makes obs_size={self.obs_size}, "
                             f"num_categories={self.num_categories}")
        with tqdm(total=num_steps * self.num_envs, unit="transition", unit_scale=True, desc="collect",
                  disable=not progress) as bar:
            for _ in range(num_steps):
                buffer.add(self.next_batch())
                bar.update(self.num_envs)
        return num_steps * self.num_envs


# ----------------------------------------------------------------------------------------------- command line


@dataclasses.dataclass
class CollectConfig:
    """Arguments of ``python -m agents.collect``."""

    env: str
    """Data source of the environment: a name in ``view_env.data.DATASETS``."""
    out: Path
    """Directory for the shards and ``index.json``."""
    num_transitions: int
    """Transitions to write."""
    num_envs: int = 64
    """Environments stepped together (each step gives this many transitions)."""
    obs_size: int = 64
    """Side of the square views, pixels."""
    device: str = "cpu"
    """Where the environment runs."""
    seed: int = 0
    """Seed of the environment and the uniform policy."""
    root: str | None = None
    """Dataset root (default: the source's environment variable or cache)."""
    split: str | None = None
    """Dataset split (shapes and coco: train or val; default train)."""
    policy: str = "uniform"
    """``uniform`` or ``ALGO:PATH``, a saved stable-baselines3 model (ALGO in ``SB3_ALGORITHMS``)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Transitions per shard file."""
    overwrite: bool = False
    """Replace the shards already in ``out``."""


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid: expected an integer >= 1")
    return number


def _device(value: str) -> str:
    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: CUDA is not available on this machine; use --device cpu")
    return value


def _policy(value: str) -> str:
    if value == "uniform":
        return value
    algorithm, _, path = value.partition(":")
    if algorithm.lower() not in SB3_ALGORITHMS or not path:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid: expected 'uniform' or ALGO:PATH with ALGO in "
                                         f"{sorted(SB3_ALGORITHMS)} and PATH a saved stable-baselines3 model")
    if not (Path(path).is_file() or Path(f"{path}.zip").is_file()):
        raise argparse.ArgumentTypeError(f"{value!r}: no saved model at {path}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m agents.collect`` (fields of :class:`CollectConfig`)."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.collect",
        description="Step a ViewTransform vector environment under a behaviour policy and write its transitions "
                    "(view, relative box, next view, annotation) to shard files for agents.pretrain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = CollectConfig(env="shapes", out=Path("."), num_transitions=1)
    parser.add_argument("--env", required=True, choices=sorted(DATASETS), help="data source of the environment")
    parser.add_argument("--out", required=True, type=Path, help="directory for the shards and index.json")
    parser.add_argument("--num-transitions", required=True, type=_positive_int, help="transitions to write")
    parser.add_argument("--num-envs", type=_positive_int, default=defaults.num_envs, help="environments per step")
    parser.add_argument("--obs-size", type=_positive_int, default=defaults.obs_size, help="view side, pixels")
    parser.add_argument("--device", type=_device, default=defaults.device, help="where the environment runs")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the environment and the policy")
    parser.add_argument("--root", default=defaults.root, help="dataset root (default: its env variable or cache)")
    parser.add_argument("--split", default=defaults.split, help="dataset split (shapes, coco: train or val)")
    parser.add_argument("--policy", type=_policy, default=defaults.policy,
                        help=f"'uniform' or ALGO:PATH, a saved stable-baselines3 model, ALGO in "
                             f"{sorted(SB3_ALGORITHMS)}")
    parser.add_argument("--shard-size", type=_positive_int, default=defaults.shard_size,
                        help="transitions per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[CollectConfig, argparse.ArgumentParser]:
    """The typed configuration from ``argv`` (default: ``sys.argv[1:]``), and the parser for later errors."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    return CollectConfig(**vars(namespace)), parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m agents.collect``; returns the exit status."""
    config, parser = parse_config(argv)
    index_path = config.out / INDEX_NAME
    if index_path.exists() and not config.overwrite:
        parser.error(f"--out {config.out} already holds transition shards ({index_path}); pass --overwrite or "
                     "choose another directory")
    model: BaseAlgorithm | None = None
    action_mode = "continuous"
    if config.policy != "uniform":
        algorithm, _, path = config.policy.partition(":")
        model = SB3_ALGORITHMS[algorithm.lower()].load(path, device=config.device)
        action_mode = "discrete" if isinstance(model.action_space, gym.spaces.Discrete) else "continuous"
    try:
        env = ViewTransformVectorEnv(config.num_envs, dataset=config.env, root=config.root, split=config.split,
                                     device=config.device, obs_size=config.obs_size, action_mode=action_mode)
        collector = TransitionCollector(env, model, seed=config.seed)
    except (ValueError, DatasetNotFoundError, DatasetFormatError) as error:
        parser.error(str(error))
    start = time.perf_counter()
    dataset = write_shards(config.out, collector, config.num_transitions, config.shard_size,
                           overwrite=config.overwrite, progress=True)
    seconds = time.perf_counter() - start
    env.close()
    size = sum(path.stat().st_size for path in dataset.shard_paths)
    meta = dataset.metadata
    split = meta["env_kwargs"]["split"]
    print(f"wrote {len(dataset):,} transitions in {len(dataset.shard_paths)} shards ({size / 1e6:.1f} MB) to "
          f"{config.out}\n"
          f"  index:  {index_path}\n"
          f"  data:   {meta['dataset']}{f' ({split})' if split else ''}, {meta['obs_size']}-px views, "
          f"{meta['num_categories']} categories, {action_mode} actions, policy {meta['policy']}, seed {config.seed}\n"
          f"  speed:  {len(dataset) / seconds:,.0f} transitions/s ({config.num_envs} environments on {config.device}, "
          f"shard writing included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
