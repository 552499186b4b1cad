"""Wrappers for the vector environment: torch-native versions of Gymnasium's vector wrappers, and adapters.

Gymnasium's vector wrappers do numpy arithmetic on what the environment returns, and the vector environment
returns torch tensors (on its device). Which to use (docs/envs.md, "Wrappers"):

- :class:`RecordEpisodeStatistics`, :class:`NormalizeObservation` and :class:`NormalizeReward` here: Gymnasium's
  wrappers of those names with the same info keys, statistics and autoreset semantics, on torch tensors on the
  environment's device (no numpy round trip).
- ``ClipAction``, ``RescaleAction`` (continuous actions): Gymnasium's own work on the vector environment as it is.
- Every other Gymnasium vector wrapper (``NormalizeObservation``, ``NormalizeReward``, ...): put Gymnasium's
  ``ArrayConversion(env, env_xp=torch, target_xp=numpy)`` (the ``gymnasium[array-api]`` extra) first, as for any
  torch environment; the wrappers then see numpy arrays.
- :class:`SB3VecEnv` (in :mod:`view_env.sb3`, loaded on first use): the stable-baselines3 ``VecEnv`` adapter.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

__all__ = ["NormalizeObservation", "NormalizeReward", "RecordEpisodeStatistics", "RunningMeanStd"]
# (and, loaded on first use: SB3VecEnv and to_host from view_env.sb3)


def __getattr__(name: str) -> Any:
    if name in ("SB3VecEnv", "to_host"):  # the SB3 adapter: stable-baselines3 is imported only when asked for
        from view_env import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'view_env.wrappers' has no attribute {name!r}")


class RecordEpisodeStatistics(VectorWrapper):
    """Gymnasium's vector ``RecordEpisodeStatistics`` for torch tensors: returns and lengths per environment.

    When episodes end in a step, ``info["episode"]`` holds ``r`` (``float32 [N]`` returns), ``l`` (``int64 [N]``
    lengths) and ``t`` (``float32 [N]`` seconds since the episode began), zero where ``info["_episode"]`` (``bool
    [N]``) is False, on the environment's device; the last ``buffer_length`` episodes' values are kept as Python
    numbers in :attr:`return_queue`, :attr:`length_queue` and :attr:`time_queue`. With ``SAME_STEP`` autoreset every
    step counts towards an episode; with ``NEXT_STEP`` the reset step after an episode's end does not.

    Args:
        env: The vector environment (torch tensors out).
        buffer_length: Episodes kept in the queues.
        stats_key: The info key.
    """

    def __init__(self, env: VectorEnv, buffer_length: int = 100, stats_key: str = "episode") -> None:
        super().__init__(env)
        mode = self.env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if not isinstance(mode, AutoresetMode):
            raise TypeError(f"env.metadata['autoreset_mode'] must be an AutoresetMode, got {type(mode).__name__}")
        self._autoreset_mode = mode
        self._stats_key = stats_key
        self.episode_count = 0
        self.time_queue: deque[float] = deque(maxlen=buffer_length)
        self.return_queue: deque[float] = deque(maxlen=buffer_length)
        self.length_queue: deque[int] = deque(maxlen=buffer_length)
        self._begin(None)

    def _begin(self, mask: torch.Tensor | None) -> None:
        """Start the statistics of every environment, or of those in ``mask``."""
        device = getattr(self.env.unwrapped, "device", torch.device("cpu"))
        now = time.perf_counter()
        if mask is None:
            n = self.num_envs
            self.episode_returns = torch.zeros(n, dtype=torch.float64, device=device)
            self.episode_lengths = torch.zeros(n, dtype=torch.int64, device=device)
            self.episode_start_times = torch.full((n,), now, dtype=torch.float64, device=device)
            self.prev_dones = torch.zeros(n, dtype=torch.bool, device=device)
            return
        self.episode_returns[mask] = 0
        self.episode_lengths[mask] = 0
        self.episode_start_times[mask] = now
        self.prev_dones[mask] = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the environment and the statistics (of the environments in ``options["reset_mask"]`` only)."""
        obs, info = self.env.reset(seed=seed, options=options)
        mask = (options or {}).get("reset_mask")
        self._begin(None if mask is None else torch.as_tensor(mask, device=self.episode_returns.device))
        return obs, info

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step the environment and add the statistics of the episodes that ended to ``info``."""
        obs, reward, terminations, truncations, infos = self.env.step(actions)
        rewards = reward.to(self.episode_returns.device, torch.float64)
        if self._autoreset_mode == AutoresetMode.SAME_STEP:
            self.episode_returns += rewards
            self.episode_lengths += 1
        else:  # the step after an episode's end resets it and does not count
            restarted = self.prev_dones
            self.episode_returns = torch.where(restarted, 0.0, self.episode_returns + rewards)
            self.episode_lengths = torch.where(restarted, 0, self.episode_lengths + 1)
            self.episode_start_times[restarted] = time.perf_counter()
        dones = (terminations | truncations).to(self.episode_returns.device)
        self.prev_dones = dones.clone()
        if bool(dones.any()):
            if self._stats_key in infos or f"_{self._stats_key}" in infos:
                raise ValueError(f"the info key {self._stats_key!r} exists already: {sorted(infos)}; pass another "
                                 "stats_key")
            seconds = time.perf_counter() - self.episode_start_times
            infos[self._stats_key] = {"r": torch.where(dones, self.episode_returns, 0.0).float(),
                                      "l": torch.where(dones, self.episode_lengths, 0),
                                      "t": torch.where(dones, seconds, 0.0).float()}
            infos[f"_{self._stats_key}"] = dones
            ended = dones.nonzero().flatten()
            self.episode_count += len(ended)
            self.return_queue.extend(self.episode_returns[ended].tolist())
            self.length_queue.extend(self.episode_lengths[ended].tolist())
            self.time_queue.extend(seconds[ended].tolist())
            if self._autoreset_mode == AutoresetMode.SAME_STEP:  # the ended environments restarted already
                self._begin(dones)
        return obs, reward, terminations, truncations, infos


class RunningMeanStd:
    """Running mean and (population) variance of a stream of ``[B, *shape]`` batches, in float64 on ``device``:
    Gymnasium's ``RunningMeanStd`` (Chan et al.'s parallel update, starting from count ``epsilon``) in torch."""

    def __init__(self, shape: tuple[int, ...] = (), device: torch.device | str = "cpu", epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = epsilon

    def update(self, x: torch.Tensor) -> None:
        """Fold in a batch ``[B, *shape]``."""
        x = x.to(self.mean.device, torch.float64)
        batch_mean, batch_var, batch_count = x.mean(dim=0), x.var(dim=0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count
                    / total) / total
        self.count = total


def _device(env: VectorEnv) -> torch.device:
    return getattr(env.unwrapped, "device", torch.device("cpu"))


class NormalizeObservation(VectorWrapper):
    """Gymnasium's vector ``NormalizeObservation`` for torch tensors: each coordinate of the observation centred and
    scaled by running statistics over every observation seen, returned as ``float32`` on the environment's device.

    Like Gymnasium's, it needs ``autoreset_mode="next_step"`` (or ``"disabled"``), so that no observation of a new
    episode is mixed into a step's batch, and it refuses partial resets. ``update_running_mean = False`` freezes
    the statistics (for evaluation). Image observations only (``obs_mode="view"``).
    """

    def __init__(self, env: VectorEnv, epsilon: float = 1e-8) -> None:
        super().__init__(env)
        if epsilon <= 0:
            raise ValueError(f"epsilon={epsilon!r} is invalid: expected a number > 0")
        mode = self.env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
            raise ValueError(f"NormalizeObservation needs autoreset_mode NEXT_STEP or DISABLED, got {mode}: pass "
                             "autoreset_mode='next_step' to gym.make_vec")
        space = self.env.single_observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"NormalizeObservation needs image observations (obs_mode='view'), got {space}")
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.obs_rms = RunningMeanStd(space.shape, _device(env))
        self.epsilon = epsilon
        self.update_running_mean = True

    def _normalize(self, obs: torch.Tensor) -> torch.Tensor:
        if self.update_running_mean:
            self.obs_rms.update(obs)
        return ((obs.double() - self.obs_rms.mean) / torch.sqrt(self.obs_rms.var + self.epsilon)).float()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        mask = (options or {}).get("reset_mask")
        if mask is not None and not bool(torch.as_tensor(mask).all()):
            raise ValueError("NormalizeObservation does not support partial resets: reset_mask must be all True")
        obs, info = self.env.reset(seed=seed, options=options)
        return self._normalize(obs), info

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return self._normalize(obs), reward, terminated, truncated, info


class NormalizeReward(VectorWrapper):
    """Gymnasium's vector ``NormalizeReward`` for torch tensors: rewards divided by the running standard deviation
    of the discounted return ``G <- gamma (1 - terminated) G + r`` (per environment), same autoreset handling (with
    ``SAME_STEP`` every step is active and an ended return restarts at once; otherwise the reset step is skipped).
    """

    def __init__(self, env: VectorEnv, gamma: float = 0.99, epsilon: float = 1e-8) -> None:
        super().__init__(env)
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma={gamma!r} is invalid: expected a discount in [0, 1]")
        if epsilon <= 0:
            raise ValueError(f"epsilon={epsilon!r} is invalid: expected a number > 0")
        device = _device(env)
        self.return_rms = RunningMeanStd((), device)
        self.accumulated_reward = torch.zeros(self.num_envs, dtype=torch.float32, device=device)
        self.gamma, self.epsilon = gamma, epsilon
        self.update_running_mean = True
        self._prev_dones = torch.zeros(self.num_envs, dtype=torch.bool, device=device)
        self._autoreset_mode = self.env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        if self._autoreset_mode == AutoresetMode.SAME_STEP:
            active = torch.ones_like(self._prev_dones)
        else:
            active = ~self._prev_dones
        updated = self.accumulated_reward * self.gamma * (1 - terminated.float()) + reward
        self.accumulated_reward = torch.where(active, updated, self.accumulated_reward)
        if self.update_running_mean and bool(active.any()):
            self.return_rms.update(self.accumulated_reward[active])
        self._prev_dones = terminated | truncated
        if self._autoreset_mode == AutoresetMode.SAME_STEP:
            self.accumulated_reward = torch.where(self._prev_dones, 0.0, self.accumulated_reward)
        scaled = (reward.double() / torch.sqrt(self.return_rms.var + self.epsilon)).to(reward.dtype)
        return obs, scaled, terminated, truncated, info
