"""The single environment that ``gym.make`` returns: numpy in and out, as Gymnasium users expect.

It is a one-environment :class:`~view_env.vector.ViewTransformVectorEnv` on the CPU with autoreset disabled, so
everything (rendering, annotations, seeding) is the very same code as the batched environment.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from view_env.vector import ViewTransformVectorEnv, draw_boxes


def _numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    return value[0].cpu().numpy()


class ViewTransformEnv(gym.Env):
    """One ViewTransform environment with numpy observations; see :class:`ViewTransformVectorEnv` for arguments.

    ``max_episode_steps`` defaults to ``None`` here: ``gym.make`` adds Gymnasium's ``TimeLimit`` (16 steps unless
    ``gym.make(..., max_episode_steps=K)``). Pass ``max_episode_steps=K`` when constructing the class directly.
    A search ``difficulty=`` that shortens episodes truncates them itself (before any longer ``TimeLimit``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, *, render_mode: str | None = None, max_episode_steps: int | None = None, **kwargs: Any) -> None:
        for forbidden in ("num_envs", "autoreset_mode"):
            if forbidden in kwargs:
                raise TypeError(f"{forbidden}= is not an argument of the single environment; use "
                                "gym.make_vec(..., num_envs=N) for a batch")
        device = torch.device(kwargs.pop("device", "cpu"))
        if max_episode_steps is not None or kwargs.get("difficulty") is None:  # else the level's episode length
            kwargs["max_episode_steps"] = max_episode_steps
        self.vector = ViewTransformVectorEnv(1, device=device, render_mode=render_mode,
                                             autoreset_mode=AutoresetMode.DISABLED, **kwargs)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.render_mode = render_mode
        self.params = self.vector.params

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and not getattr(self, "_seeded", False):
            seed = int(self.np_random.integers(2**62))  # seeded from Gymnasium's own generator
        self._seeded = True
        obs, info = self.vector.reset(seed=seed, options=options)
        return _numpy(obs), self._info(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if isinstance(self.action_space, gym.spaces.Discrete):
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer, np.ndarray)):
                raise TypeError(f"action must be an integer in [0, {self.action_space.n}), got {action!r}")
            batch = np.asarray(action).reshape(1)
            if np.asarray(action).ndim != 0:
                raise ValueError(f"action must be a scalar integer, got an array of shape {np.shape(action)}")
        else:
            batch = np.asarray(action)
            if batch.shape != self.action_space.shape:
                raise ValueError(f"action must have shape {self.action_space.shape}, got {batch.shape}")
            batch = batch[None]
        if bool(self.vector.ended.any()):
            raise RuntimeError("the episode has ended: call reset() before step()")
        obs, reward, terminated, truncated, info = self.vector.step(batch)
        return _numpy(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info(info)

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: ``uint8 [C, C, 3]`` (``C`` the canvas size): the whole image at its true
        aspect ratio, letterboxed in black to a constant square frame (as video recorders need), with the current
        view's box drawn in red."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        bank, state = self.vector.bank, self.vector.state
        frame = draw_boxes(bank.images[state.slot], state.box).float()  # (1, 3, C, C)
        height, width = bank.sizes[state.slot[0]].tolist()
        side = bank.canvas_size
        h, w = (side, max(1, round(side * width / height))) if height >= width else (
            max(1, round(side * height / width)), side)
        frame = torch.nn.functional.interpolate(frame, size=(h, w), mode="bilinear", antialias=True,
                                                align_corners=False)
        out = torch.zeros((side, side, 3), dtype=torch.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        out[top : top + h, left : left + w] = frame[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu()
        return out.numpy()

    def close(self) -> None:
        self.vector.close()

    @staticmethod
    def _info(info: dict[str, Any]) -> dict[str, Any]:
        return {k: _numpy(v) for k, v in info.items() if not k.startswith("_")}
