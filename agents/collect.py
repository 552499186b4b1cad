"""Collect view transitions by stepping the vector environment under a behaviour policy.

The behaviour policy only decides which transitions get logged; the GVF learner never needs to know it (it sees the
relative box of each transition, see :mod:`agents.data`). Collection runs in *rounds*: the environment is reset with
a seed derived from ``(seed, round)``, each environment plays one episode, and the episode's views are paired into
transitions, either every ordered pair of its views (``pairs="all"``) or each view with the next (``"consecutive"``).

Policies:

- :class:`RandomResizedCrop` (``"rrc"``, the default, the paper's data): every step jumps to an independent
  RandomResizedCrop view of the same image (area uniform in ``scale``, aspect log-uniform in ``ratio``, a draw
  that does not fit drawn again, as torchvision's; uniform position, random flip and colour strengths), in an
  environment whose first view is drawn the same way
  (:func:`rrc_env_kwargs`). An episode of ``V`` views, all ordered pairs: ``V (V - 1)`` transitions per image.
- :class:`UniformRelativeBox` (``"uniform"``): the random walk, uniform continuous (or discrete) actions.
- any callable ``fn(obs, info)`` or stable-baselines3 model.

A round is a pure function of ``(seed, round)`` for the seeded policies, so :meth:`TransitionCollector.stream`
can start at any offset: the pretrainer streams rounds into its replay buffer (the environment is the data loader)
and resumes exactly. Transitions can also go to shard files::

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
from tqdm import tqdm

from agents import cli
from agents.cli import check, option
from agents.config import check_env_value
from agents.data import (
    DEFAULT_SHARD_SIZE,
    INDEX_NAME,
    SHARD_FORMATS,
    ReplayBuffer,
    Transitions,
    random_resized_crops,
    relative_box,
    write_shards,
)
from view_env import AUGMENTATIONS, INIT_AREAS, EnvParams, retry_columns
from view_env.data import DATASETS, DatasetFormatError, DatasetNotFoundError
from view_env.vector import ViewTransformVectorEnv

Observation = torch.Tensor | dict[str, torch.Tensor]
Actions = torch.Tensor | np.ndarray
#: Names :func:`make_policy` takes.
POLICIES: tuple[str, ...] = ("rrc", "uniform")
#: How the views of an episode are paired into transitions.
PAIRINGS: tuple[str, ...] = ("all", "consecutive")
#: stable-baselines3 algorithms that ``--policy ALGO:PATH`` can load (imported only when one is used).
SB3_ALGORITHMS: tuple[str, ...] = ("a2c", "dqn", "ppo", "sac", "td3")
#: The paper's RandomResizedCrop ranges: area fraction and aspect ratio.
RRC_SCALE: tuple[float, float] = (0.05, 1.0)
RRC_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
#: How RandomResizedCrop draws a view's area in its scale range: uniformly, as torchvision, timm and big_vision do.
RRC_AREA = "uniform"


# ----------------------------------------------------------------------------------------------- behaviour policies


class BehaviourPolicy:
    """Maps a batch of observations to a batch of actions for the vector environment.

    ``policy(obs, info)`` gets the environment's last observation (``uint8 [N, 3, S, S]``, or a dict of tensors
    with ``obs_mode="dict"``) and info, and returns ``N`` actions as a tensor or numpy array: ``int64 [N]``
    for a discrete environment, ``float32 [N, D]`` for a continuous or absolute one. :meth:`reset` is called with
    the round's seed before each round.
    """

    #: Short description stored in the shard metadata.
    name: str = "policy"

    def reset(self, seed: int) -> None:
        """Restart the policy's randomness from ``seed`` (a no-op for policies that have none of their own)."""

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> Actions:
        raise NotImplementedError


def _device_of(env: VectorEnv) -> torch.device:
    return torch.device(getattr(env.unwrapped, "device", "cpu"))


class UniformRelativeBox(BehaviourPolicy):
    """The random walk: continuous actions uniform in the action box (``[-1, 1]^D``, the relative-box action and
    augmentation strengths), or discrete actions uniform over ``Discrete(K)``.

    Draws come from a ``torch.Generator`` on the environment's device seeded with ``seed`` (and reseeded by
    :meth:`reset`), so a run is repeatable.

    Args:
        env: The vector environment (its ``single_action_space``, ``num_envs`` and ``device`` are used).
        seed: Seed of the generator.
    """

    name = "uniform"

    def __init__(self, env: VectorEnv, seed: int = 0) -> None:
        space = env.single_action_space
        self.num_envs = env.num_envs
        self.device = _device_of(env)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            self.start, self.n = int(space.start), int(space.n)
        elif isinstance(space, gym.spaces.Box) and np.isfinite(space.low).all() and np.isfinite(space.high).all():
            self.low = torch.as_tensor(space.low, dtype=torch.float32, device=self.device)  # (D,)
            self.high = torch.as_tensor(space.high, dtype=torch.float32, device=self.device)  # (D,)
        else:
            raise TypeError(f"UniformRelativeBox needs a Discrete or bounded Box action space, got {space}")

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> torch.Tensor:
        """``int64 [N]`` or ``float32 [N, D]`` uniform actions on the environment's device."""
        if self.discrete:
            return torch.randint(self.start, self.start + self.n, (self.num_envs,), generator=self.generator,
                                 device=self.device)
        u = torch.rand((self.num_envs, self.low.shape[0]), generator=self.generator, device=self.device)  # (N, D)
        return self.low + (self.high - self.low) * u


def rrc_env_kwargs(views: int = 4, scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                   augmentations: Sequence[str] = ("flip",), area: str = RRC_AREA) -> dict[str, Any]:
    """Environment arguments under which :class:`RandomResizedCrop` reproduces the paper's views.

    Episodes of ``views - 1`` absolute actions, so ``views`` views per image; the first view is drawn like the
    others (``init_scale=scale``, ``init_area=area``, ``init_aspect=ratio``, ``init_augment=True``); the smallest
    legal view is ``scale[0]``. ``area="uniform"`` (default) draws the area uniformly in ``scale``, as
    torchvision's RandomResizedCrop does; ``"log-uniform"`` draws its logarithm uniformly (smaller views: a mean
    area of 0.32 over ``(0.05, 1)`` against 0.46 on a square image), as this project did before.

    Raises:
        ValueError: ``views < 2``, or a range that is not ``0 < low <= high`` (``scale`` within ``(0, 1]``), or
            an ``area`` law other than ``view_env.core.INIT_AREAS``.
    """
    if area not in INIT_AREAS:
        raise ValueError(f"area={area!r} is invalid: expected one of {INIT_AREAS} (how the view's area is drawn)")
    if isinstance(views, bool) or not isinstance(views, int) or views < 2:
        raise ValueError(f"views={views!r} is invalid: a transition needs at least 2 views of an image (the paper "
                         "uses 4)")
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale={scale!r} is invalid: expected (low, high) area fractions with 0 < low <= high <= 1")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio={ratio!r} is invalid: expected (low, high) aspect ratios with 0 < low <= high")
    return {"action_mode": "absolute", "max_episode_steps": views - 1, "init_scale": tuple(scale), "init_area": area,
            "init_aspect": tuple(ratio), "init_augment": True, "min_scale": scale[0],
            "max_aspect": max(2.0, ratio[1], 1 / ratio[0]), "augmentations": tuple(augmentations)}


class RandomResizedCrop(BehaviourPolicy):
    """The paper's behaviour policy: every step jumps to an independent RandomResizedCrop view of the same image.

    Acts in an environment built with :func:`rrc_env_kwargs` (``action_mode="absolute"``, first views drawn the
    same way), so the ``V`` views of an episode are independent draws and every ordered pair of them is a
    transition of the paper's data. Draws come from a generator on the environment's device, reseeded by
    :meth:`reset`.

    Args:
        env: The vector environment.
        seed: Seed of the generator.

    Raises:
        ValueError: The environment does not take absolute actions, or its first views are not augmented like the
            others (``init_augment=False`` with augmentations enabled).
    """

    name = "rrc"

    def __init__(self, env: VectorEnv, seed: int = 0) -> None:
        params = getattr(env.unwrapped, "params", None)
        if not isinstance(params, EnvParams) or params.action_mode != "absolute":
            raise ValueError("the 'rrc' policy jumps to independent views and needs a ViewTransform environment with "
                             "action_mode='absolute'; build it with agents.collect.rrc_env_kwargs(views)")
        if params.augmentations and not params.init_augment:
            raise ValueError("the 'rrc' policy needs init_augment=True, so that each episode's first view is "
                             "augmented like the others; build the environment with agents.collect.rrc_env_kwargs")
        if getattr(env.unwrapped, "temporal", False):
            raise ValueError("the 'rrc' policy does not drive temporal actions; use an environment with "
                             "temporal=False")
        self.params = params
        self.num_envs = env.num_envs
        self.device = _device_of(env)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, obs: Observation, info: Mapping[str, Any]) -> torch.Tensor:
        """``float32 [N, 4 + A]`` absolute actions: a RandomResizedCrop box of each image and uniform strengths."""
        u = torch.rand((self.num_envs, self.params.action_dim), generator=self.generator, device=self.device)
        extra = retry_columns(self.params)  # drawn after u: under the log-uniform law the draws are as before
        retries = (torch.rand((self.num_envs, extra), generator=self.generator, device=self.device)
                   if extra else None)
        boxes, strengths = random_resized_crops(u, info["image_size"].to(self.device), self.params, retries)
        return torch.cat([boxes, strengths], dim=1)


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
    random state (``model.set_random_seed`` seeds it), so rounds are not a pure function of their seed.

    Args:
        model: A trained (or untrained) ``BaseAlgorithm`` whose spaces match the environment's.
        deterministic: Take the mode of the action distribution instead of sampling.
    """

    def __init__(self, model: Any, deterministic: bool = False) -> None:
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


PolicySpec = BehaviourPolicy | Callable[[Observation, Mapping[str, Any]], Actions] | str | None


def _is_sb3_model(spec: Any) -> bool:
    """Whether ``spec`` is a stable-baselines3 model, without importing stable-baselines3 unless it is loaded."""
    import sys

    module = sys.modules.get("stable_baselines3.common.base_class")
    return module is not None and isinstance(spec, module.BaseAlgorithm)


def make_policy(spec: PolicySpec, env: VectorEnv, seed: int = 0) -> BehaviourPolicy:
    """A behaviour policy from ``spec``.

    Args:
        spec: A name in :data:`POLICIES` (``None`` means ``"rrc"`` in an absolute-action environment and
            ``"uniform"`` otherwise), a :class:`BehaviourPolicy` (returned as is), a stable-baselines3
            ``BaseAlgorithm`` (:class:`SB3Policy`; its observation and action spaces must be the environment's), or
            a callable ``fn(obs, info)`` (:class:`CallablePolicy`).
        env: The vector environment the policy will act in.
        seed: Seed of the seeded policies.

    Raises:
        ValueError: An unknown name, a policy that cannot act in ``env``, or a model with other spaces.
    """
    if spec is None:
        params = getattr(env.unwrapped, "params", None)
        spec = "rrc" if isinstance(params, EnvParams) and params.action_mode == "absolute" else "uniform"
    if isinstance(spec, str):
        if spec == "rrc":
            return RandomResizedCrop(env, seed)
        if spec == "uniform":
            return UniformRelativeBox(env, seed)
        raise ValueError(f"policy={spec!r} is not a behaviour policy: expected one of {POLICIES}, a callable "
                         "fn(obs, info), or a stable-baselines3 model")
    if isinstance(spec, BehaviourPolicy):
        return spec
    if _is_sb3_model(spec):
        for what, mine, theirs in (("observation", spec.observation_space, env.single_observation_space),
                                   ("action", spec.action_space, env.single_action_space)):
            if mine != theirs:
                raise ValueError(f"the {type(spec).__name__} model's {what} space {mine} is not the environment's "
                                 f"{theirs}; build the environment to match the model (obs_size, action_mode)")
        return SB3Policy(spec)
    if callable(spec):
        return CallablePolicy(spec)
    raise TypeError(f"policy={spec!r} is invalid: expected one of {POLICIES}, a callable fn(obs, info), or a "
                    "stable-baselines3 model")


# ----------------------------------------------------------------------------------------------- transitions


def _view(obs: Observation) -> torch.Tensor:
    return obs["view"] if isinstance(obs, Mapping) else obs


def _rows_where(mask: torch.Tensor, yes: torch.Tensor, no: torch.Tensor) -> torch.Tensor:
    """Rows of ``yes`` where ``mask`` (``bool [N]``) holds, of ``no`` elsewhere (``[N, ...]`` tensors)."""
    return torch.where(mask.view(-1, *([1] * (no.dim() - 1))), yes, no)


def round_seed(seed: int, round_index: int) -> int:
    """The environment and policy seed of round ``round_index`` of a collector seeded with ``seed``."""
    return int(np.random.SeedSequence([seed % 2**63, round_index]).generate_state(1, np.uint64)[0] % 2**63)


def pair_indices(num_views: int, pairs: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``int64 [P]`` indices ``(i, j)`` of the view pairs ``(x, x')`` of an episode of ``num_views`` views.

    ``"all"``: every ordered pair ``i != j`` (``P = V (V - 1)``), row-major in ``i``; ``"consecutive"``: ``(t, t + 1)``
    (``P = V - 1``).
    """
    if pairs not in PAIRINGS:
        raise ValueError(f"pairs={pairs!r} is invalid: expected one of {PAIRINGS}")
    if pairs == "consecutive":
        first = torch.arange(num_views - 1)
        return first, first + 1
    i, j = torch.meshgrid(torch.arange(num_views), torch.arange(num_views), indexing="ij")
    keep = i != j
    return i[keep], j[keep]


class TransitionCollector:
    """Steps a vector environment under a behaviour policy, one episode per environment per round, and pairs each
    episode's views into transitions.

    Round ``r`` resets the environment with :func:`round_seed` ``(seed, r)`` and the policy with the same seed, plays
    ``max_episode_steps`` steps, and returns, for each environment whose views belong to one episode, the pairs of
    :func:`pair_indices`: ``x`` is view ``i``, ``x'`` view ``j``, the anchor a view other than both drawn uniformly
    (``x'`` when the episode has only two views). Views after an episode's end (search success) belong to another
    episode and are left out. With a seeded policy a round is a pure function of ``(seed, r)``.

    Args:
        env: A :class:`~view_env.vector.ViewTransformVectorEnv` (possibly wrapped) with a ``max_episode_steps``
            and ``SAME_STEP`` or ``DISABLED`` autoreset.
        policy: Anything :func:`make_policy` takes (default: ``"rrc"`` in an absolute-action environment, else the
            random walk).
        seed: Seed of the rounds.
        pairs: ``"all"`` (default for ``"rrc"``) or ``"consecutive"`` (default otherwise).

    Raises:
        TypeError, ValueError: Another environment, an autoreset mode or episode length the rounds cannot use,
            an unknown pairing or policy.
    """

    def __init__(self, env: VectorEnv, policy: PolicySpec = None, *, seed: int = 0, pairs: str | None = None) -> None:
        base = env.unwrapped
        if not isinstance(base, ViewTransformVectorEnv):
            raise TypeError(f"TransitionCollector steps a ViewTransformVectorEnv, got {type(base).__name__}")
        mode = env.metadata.get("autoreset_mode")
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.DISABLED):
            raise ValueError(f"TransitionCollector needs autoreset_mode SAME_STEP or DISABLED (an episode's last view "
                             f"must be its own), got {mode}")
        steps = base.params.max_episode_steps
        if steps is None:
            raise ValueError("TransitionCollector plays one episode per round and needs max_episode_steps (an int)")
        self.env, self.base, self.seed = env, base, seed
        self.policy = make_policy(policy, env, seed)
        self.pairs = pairs if pairs is not None else ("all" if isinstance(self.policy, RandomResizedCrop)
                                                      else "consecutive")
        self.num_envs = env.num_envs
        self.num_views = steps + 1
        self.first, self.second = (t.to(base.device) for t in pair_indices(self.num_views, self.pairs))
        self.obs_size = base.params.obs_size
        self.num_categories = base.num_categories
        self.disabled = mode == AutoresetMode.DISABLED
        #: Transitions per round when no episode can end early (``task="none"``), else ``None``.
        self.round_size = self.num_envs * len(self.first) if base.task == "none" else None

    @property
    def metadata(self) -> dict[str, Any]:
        """What the transitions are: dataset, environment arguments, policy, pairing and seed (stored with shards)."""
        dataset = self.base.bank.dataset
        root = getattr(dataset, "root", None)
        env_kwargs = {
            "num_envs": self.num_envs, "dataset": dataset.name, "root": None if root is None else str(root),
            "split": getattr(dataset, "split", None), "device": str(self.base.device), "task": self.base.task,
            "temporal": self.base.temporal, **dataclasses.asdict(self.base.params),
        }
        return {"obs_size": self.obs_size, "num_categories": self.num_categories, "dataset": dataset.name,
                "env_kwargs": env_kwargs, "policy": self.policy.name, "pairs": self.pairs,
                "views_per_episode": self.num_views, "seed": self.seed}

    def _episode(self, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Play one episode per environment: ``[N, V, ...]`` views, boxes, augs, annotations, image indices and
        sizes, and ``bool [N, V]`` whether each view belongs to the environment's first episode."""
        obs, info = self.env.reset(seed=seed)
        self.policy.reset(seed)
        keys = ("box", "aug", "annotation", "image_index", "image_size")
        record: dict[str, list[torch.Tensor]] = {"view": [_view(obs)], **{key: [info[key]] for key in keys}}
        valid = [torch.ones(self.num_envs, dtype=torch.bool, device=self.base.device)]
        ended = torch.zeros_like(valid[0])
        for t in range(self.num_views - 1):
            actions = self.policy(obs, info)
            obs, _, terminated, truncated, info = self.env.step(actions)
            view, state = _view(obs), {key: info[key] for key in keys}
            final = info.get("_final_obs")
            if final is not None:  # SAME_STEP: an ended episode's last view is in final_obs, not obs
                view = _rows_where(final, _view(info["final_obs"]), view)
                state = {key: _rows_where(final, info["final_info"][key], value) for key, value in state.items()}
            record["view"].append(view)
            for key in keys:
                record[key].append(state[key])
            valid.append(~ended)
            ended = ended | terminated | truncated
            if self.disabled and t < self.num_views - 2 and bool(ended.any()):
                obs, info = self.env.reset(options={"reset_mask": terminated | truncated})  # later views: invalid
        return {key: torch.stack(values, dim=1) for key, values in record.items()}, torch.stack(valid, dim=1)

    def round(self, index: int) -> Transitions:
        """The transitions of round ``index`` (a transition dict on the environment's device, environment-major)."""
        seed = round_seed(self.seed, index)
        episode, valid = self._episode(seed)  # (N, V, ...), (N, V)
        first, second = self.first, self.second  # (P,)
        num_views, device = self.num_views, self.base.device
        ok = valid[:, first] & valid[:, second]  # (N, P)
        # The anchor: a uniformly drawn valid view other than x and x' (x' itself when there is none).
        others = torch.arange(num_views, device=device)
        candidates = valid[:, None, :] & (others != first[:, None]) & (others != second[:, None])  # (N, P, V)
        count = candidates.sum(-1)  # (N, P)
        generator = torch.Generator(device).manual_seed(seed)
        u = torch.rand(count.shape, generator=generator, device=device)
        pick = (u * count).long()  # the pick-th candidate, 0-based
        chosen = candidates & (candidates.cumsum(-1) == (pick + 1)[..., None])
        anchor = torch.where(count > 0, chosen.to(torch.uint8).argmax(-1), second[None, :])  # (N, P)
        env_row, pair = ok.nonzero(as_tuple=True)
        i, j, k = first[pair], second[pair], anchor[env_row, pair]

        def at(key: str, view: torch.Tensor) -> torch.Tensor:
            return episode[key][env_row, view]

        box, next_box, aug = at("box", i), at("box", j), at("aug", i)
        return {
            "view": at("view", i), "next_view": at("view", j), "box": box, "next_box": next_box, "aug": aug,
            "next_aug": at("aug", j), "rel_box": relative_box(box, next_box, aug[:, AUGMENTATIONS.index("flip")]),
            "annotation": at("annotation", j), "image_index": at("image_index", i),
            "next_image_index": at("image_index", j), "anchor_view": at("view", k),
            "view_annotation": at("annotation", i), "next_image_size": at("image_size", j),
        }

    def stream(self, start: int = 0) -> Iterator[Transitions]:
        """Rounds ``0, 1, ...`` as one transition dict each, from transition offset ``start`` on (for ever).

        Raises:
            ValueError: ``start > 0`` when rounds can differ in size (episodes that end early).
        """
        if self.round_size is None and start:
            raise ValueError("this environment's episodes can end early, so rounds differ in size and a stream "
                             f"cannot start at offset {start}; use task='none'")
        index, skip = divmod(start, self.round_size) if start else (0, 0)
        while True:
            batch = self.round(index)
            yield {key: value[skip:] for key, value in batch.items()} if skip else batch
            index, skip = index + 1, 0

    def __iter__(self) -> Iterator[Transitions]:
        return self.stream(0)

    def collect(self, buffer: ReplayBuffer, num_transitions: int, progress: bool = True) -> int:
        """Add ``num_transitions`` transitions (whole rounds, the last one cut) to ``buffer``; returns the count."""
        if (buffer.obs_size, buffer.num_categories) != (self.obs_size, self.num_categories):
            raise ValueError(f"the buffer holds obs_size={buffer.obs_size}, num_categories={buffer.num_categories} "
                             f"but the environment makes obs_size={self.obs_size}, "
                             f"num_categories={self.num_categories}")
        added = 0
        with tqdm(total=num_transitions, unit="transition", unit_scale=True, desc="collect",
                  disable=not progress) as bar:
            for batch in self:
                take = min(num_transitions - added, int(batch["view"].shape[0]))
                buffer.add({key: value[:take] for key, value in batch.items()})
                added += take
                bar.update(take)
                if added >= num_transitions:
                    break
        return added


# ----------------------------------------------------------------------------------------------- command line


def _is_policy(value: str) -> bool:
    """Whether ``value`` names a behaviour policy: one of :data:`POLICIES` or ``ALGO:PATH`` of a saved model."""
    if value in POLICIES:
        return True
    algorithm, _, path = value.partition(":")
    saved = bool(path) and (Path(path).is_file() or Path(f"{path}.zip").is_file())
    return algorithm.lower() in SB3_ALGORITHMS and saved


def _is_device(value: str) -> bool:
    """Whether ``value`` is a torch device this machine has."""
    try:
        device = torch.device(value)
    except RuntimeError:
        return False
    return device.type != "cuda" or torch.cuda.is_available()


@dataclasses.dataclass
class CollectConfig:
    """Arguments of ``python -m agents.collect``; each field's help is its flag's help (:mod:`agents.cli`)."""

    env: str = option(help="data source of the environment", choices=sorted(DATASETS))
    out: Path = option(help="directory for the shards and index.json")
    num_transitions: int = option(help="transitions to write")
    num_envs: int = option(64, "environments stepped together (one episode each per round)")
    obs_size: int = option(64, "side of the square views, pixels")
    device: str = option("cpu", "where the environment runs (cpu, cuda, cuda:N)")
    seed: int = option(0, "seed of the rounds (environment and policy)")
    root: str | None = option(None, "dataset root (default: the source's environment variable or cache)")
    split: str | None = option(None, "dataset split (shapes and coco: train or val; default train)")
    policy: str = option("rrc", f"{' or '.join(POLICIES)} (the paper's independent RandomResizedCrop views, the "
                         f"random walk), or ALGO:PATH, a saved stable-baselines3 model, ALGO in "
                         f"{list(SB3_ALGORITHMS)}")
    views: int = option(4, "views per image for rrc (every ordered pair is a transition)")
    max_episode_steps: int = option(16, "episode length of the random walk and of stable-baselines3 policies")
    augmentations: str = option("flip", "comma-separated augmentations of the environment (view_env.AUGMENTATIONS)")
    shard_size: int = option(DEFAULT_SHARD_SIZE, "transitions per shard file")
    shard_format: str = option("pt", "pt (torch files, the fastest to read) or tar (WebDataset shards: one sample "
                               "per transition, one .npy member per field, readable by any webdataset pipeline)",
                               choices=SHARD_FORMATS)
    overwrite: bool = option(False, "replace the shards already in --out")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("num_transitions", "num_envs", "obs_size", "max_episode_steps", "shard_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        check_env_value("obs_size", self.obs_size)
        check(self.views >= 2, "views", self.views, "an integer >= 2 (a transition needs two views of an image)")
        check(_is_device(self.device), "device", self.device,
              "a torch device this machine has (e.g. cpu, cuda, cuda:1; CUDA only where it is available)")
        check(_is_policy(self.policy), "policy", self.policy,
              f"one of {list(POLICIES)} or ALGO:PATH with ALGO in {list(SB3_ALGORITHMS)} and PATH a saved "
              "stable-baselines3 model that exists")
        unknown = [name for name in self.augmentation_names if name not in AUGMENTATIONS]
        check(not unknown, "augmentations", self.augmentations,
              f"comma-separated names from {list(AUGMENTATIONS)} (unknown: {unknown})")

    @property
    def augmentation_names(self) -> tuple[str, ...]:
        """``augmentations`` split at the commas."""
        return tuple(name for name in self.augmentations.split(",") if name)


def parse_config(argv: Sequence[str] | None = None) -> tuple[CollectConfig, argparse.ArgumentParser]:
    """The typed configuration from ``argv`` (default: ``sys.argv[1:]``), and the parser for later errors."""
    return cli.parse(CollectConfig, argv, prog="python -m agents.collect",
                     description="Step a ViewTransform vector environment under a behaviour policy and write its "
                                 "transitions (view, relative box, next view, annotation) to shard files for "
                                 "agents.pretrain.")


def load_sb3_model(spec: str, device: str) -> Any:
    """Load ``ALGO:PATH``, a saved stable-baselines3 model (stable-baselines3 is imported here, only when used)."""
    import stable_baselines3

    algorithm, _, path = spec.partition(":")
    classes = {name: getattr(stable_baselines3, name.upper()) for name in SB3_ALGORITHMS}
    return classes[algorithm.lower()].load(path, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m agents.collect``; returns the exit status."""
    config, parser = parse_config(argv)
    index_path = config.out / INDEX_NAME
    if index_path.exists() and not config.overwrite:
        parser.error(f"--out {config.out} already holds transition shards ({index_path}); pass --overwrite or "
                     "choose another directory")
    augmentations = config.augmentation_names
    policy: Any = config.policy
    if config.policy == "rrc":
        env_kwargs = rrc_env_kwargs(config.views, augmentations=augmentations)
    else:
        env_kwargs = {"action_mode": "continuous", "max_episode_steps": config.max_episode_steps,
                      "augmentations": augmentations}
        if config.policy != "uniform":
            policy = load_sb3_model(config.policy, config.device)
            if isinstance(policy.action_space, gym.spaces.Discrete):
                env_kwargs["action_mode"] = "discrete"
    try:
        env = ViewTransformVectorEnv(config.num_envs, dataset=config.env, root=config.root, split=config.split,
                                     device=config.device, obs_size=config.obs_size, **env_kwargs)
        collector = TransitionCollector(env, policy, seed=config.seed)
    except (ValueError, DatasetNotFoundError, DatasetFormatError) as error:
        parser.error(str(error))
    start = time.perf_counter()
    dataset = write_shards(config.out, collector, config.num_transitions, config.shard_size,
                           overwrite=config.overwrite, progress=True, shard_format=config.shard_format)
    seconds = time.perf_counter() - start
    env.close()
    size = sum(path.stat().st_size for path in dataset.shard_paths)
    meta = dataset.metadata
    split = meta["env_kwargs"]["split"]
    print(f"wrote {len(dataset):,} transitions in {len(dataset.shard_paths)} shards ({size / 1e6:.1f} MB) to "
          f"{config.out}\n"
          f"  index:  {index_path}\n"
          f"  data:   {meta['dataset']}{f' ({split})' if split else ''}, {meta['obs_size']}-px views, "
          f"{meta['num_categories']} categories, {env_kwargs['action_mode']} actions, policy {meta['policy']} "
          f"({meta['pairs']} pairs of {meta['views_per_episode']} views per episode), seed {config.seed}\n"
          f"  speed:  {len(dataset) / seconds:,.0f} transitions/s ({config.num_envs} environments on {config.device}, "
          f"shard writing included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
