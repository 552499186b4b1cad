"""The stable-baselines3 adapter: :class:`SB3VecEnv` makes the vector environment an SB3 ``VecEnv``.

Imported through :mod:`view_env.wrappers` (``from view_env.wrappers import SB3VecEnv``), which loads
stable-baselines3 only when this adapter is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from view_env.vector import ViewTransformVectorEnv

_INFO_KEYS = ("annotation", "box", "image_index", "aug", "target_category")


def _flatten(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, dict):
        out: dict[str, torch.Tensor] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/") or "obs": value}


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy ``[N, ...]`` tensors of any dtypes to numpy with one device-to-host transfer.

    Every tensor is reinterpreted as bytes, the rows are concatenated into one ``uint8 [N, total]`` buffer, the
    buffer crosses once, and the host splits it and reinterprets each part with its dtype and shape.
    """
    if not tensors:
        return {}
    n = next(iter(tensors.values())).shape[0]
    parts, layout = [], []
    for key, tensor in tensors.items():
        was_bool = tensor.dtype == torch.bool
        tensor = tensor.detach().to(torch.uint8) if was_bool else tensor.detach()
        flat = tensor.contiguous().reshape(n, -1).view(torch.uint8)  # (N, bytes per row)
        parts.append(flat)
        layout.append((key, tuple(tensor.shape), torch.empty(0, dtype=tensor.dtype).numpy().dtype, was_bool,
                       flat.shape[1]))
    host = torch.cat(parts, dim=1).cpu().numpy()
    out, start = {}, 0
    for key, shape, dtype, was_bool, width in layout:
        chunk = np.ascontiguousarray(host[:, start : start + width]).view(dtype).reshape(shape)
        out[key] = chunk.astype(np.bool_) if was_bool else chunk
        start += width
    return out


class SB3VecEnv(VecEnv):
    """A stable-baselines3 ``VecEnv`` over a :class:`~view_env.vector.ViewTransformVectorEnv`.

    Each step moves observations, rewards, dones and infos to the host in one batched copy. Ended
    environments are reset in the same step (the vector environment's SAME_STEP autoreset); their last
    observation is in ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]`` says whether
    the episode was cut by the step limit rather than terminated. ``infos[i]`` also holds the environment's
    ``annotation``, ``box``, ``image_index`` and ``aug`` (and ``target`` for search).

    Args:
        env: The vector environment (autoreset mode SAME_STEP), or the arguments to build one.
    """

    def __init__(self, env: ViewTransformVectorEnv | None = None, **kwargs: Any) -> None:
        if env is None:
            env = ViewTransformVectorEnv(**kwargs)
        elif kwargs:
            raise ValueError(f"pass either env= or the arguments to build one, not both (got {sorted(kwargs)})")
        env = getattr(env, "unwrapped", env)
        if not isinstance(env, ViewTransformVectorEnv):
            raise TypeError(f"SB3VecEnv wraps a ViewTransformVectorEnv, got {type(env).__name__}")
        if env.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"SB3VecEnv needs autoreset_mode SAME_STEP (stable-baselines3 resets ended environments "
                             f"in the same step), got {env.autoreset_mode.name}")
        self.env = env
        self.render_mode = env.render_mode
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: Any = None

    def reset(self) -> Any:
        seed = self._seeds[0]
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return self._unflatten(to_host(_flatten(obs)))

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        tensors = _flatten(obs)
        tensors.update({"_reward": reward, "_terminated": terminated, "_truncated": truncated})
        tensors.update({f"_info/{k}": info[k] for k in _INFO_KEYS if k in info})
        if "final_obs" in info and bool(info["_final_obs"].any()):  # present every step; copied only when used
            tensors.update({f"_final/{k}": v for k, v in _flatten(info["final_obs"]).items()})
        host = to_host(tensors)
        dones = host["_terminated"] | host["_truncated"]
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key in _INFO_KEYS:
            if f"_info/{key}" in host:
                for i, value in enumerate(host[f"_info/{key}"]):
                    infos[i][key] = value
        if dones.any():
            final = self._unflatten({k[len("_final/"):]: v for k, v in host.items() if k.startswith("_final/")})
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = (
                    {k: v[i] for k, v in final.items()} if isinstance(final, dict) else final[i]
                )
                infos[i]["TimeLimit.truncated"] = bool(host["_truncated"][i] and not host["_terminated"][i])
        obs_host = self._unflatten({k: v for k, v in host.items() if not k.startswith("_")})
        return obs_host, host["_reward"].astype(np.float32), dones, infos

    def _unflatten(self, host: dict[str, np.ndarray]) -> Any:
        if isinstance(self.observation_space, gym.spaces.Dict):
            return {k: host[k] for k in self.observation_space.spaces}
        return host["obs"]

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.env, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if self._indices(indices) != list(range(self.num_envs)):
            raise ValueError("the environments share their attributes: set_attr applies to all of them or none")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
