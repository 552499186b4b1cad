"""The TorchRL route: torchrl's GymWrapper around the vector environment, in both observation modes."""

from __future__ import annotations

import pytest
import torch

torchrl_envs = pytest.importorskip("torchrl.envs", reason="torchrl is in the dev extras")
from torchrl.envs.utils import check_env_specs  # noqa: E402

from view_env.vector import ViewTransformVectorEnv  # noqa: E402


@pytest.mark.parametrize("kwargs", [{}, {"task": "search", "obs_mode": "dict"},
                                    {"task": "search", "target": "circle", "action_mode": "continuous"}],
                         ids=["view", "dict-search", "view-search-continuous"])
def test_gym_wrapper_specs_and_a_rollout(tiny_shapes, kwargs):
    base = ViewTransformVectorEnv(4, dataset="shapes", root=str(tiny_shapes), split="train", obs_size=16,
                                  max_episode_steps=3, progress=False, **kwargs)
    env = torchrl_envs.GymWrapper(base, device="cpu")
    check_env_specs(env)
    rollout = env.rollout(7, break_when_any_done=False)
    assert rollout.batch_size == torch.Size([4, 7])
    views = rollout["view" if kwargs.get("obs_mode") == "dict" else "observation"]
    assert views.dtype == torch.uint8 and views.shape == (4, 7, 3, 16, 16)
    assert rollout["next", "annotation"].shape == (4, 7, base.num_categories)
    done = rollout["next", "done"][..., 0]  # (4, 7)
    assert done[:, :3].any(dim=1).all(), "every first episode ends by its third step"
    if "task" not in kwargs:  # no success to end an episode early: truncation at steps 3 and 6
        assert done[:, [2, 5]].all() and done.sum() == 8
    if kwargs.get("obs_mode") == "dict":
        assert rollout["target"].shape == (4, 7, base.num_categories)
