"""view_env: batched, device-resident Gymnasium environments whose observations are views of images.

Importing the package registers the environments::

    import gymnasium as gym
    import view_env  # noqa: F401  (or gym.make("view_env:ViewTransform-Shapes-v0"))

    env = gym.make("ViewTransform-Shapes-v0")                                   # numpy, one environment
    envs = gym.make_vec("ViewTransform-Shapes-v0", num_envs=256, device="cpu")  # torch tensors, batched
"""

from __future__ import annotations

import gymnasium as gym

from view_env.core import (
    AUG_RANGES,
    AUGMENTATIONS,
    BOOLEAN_AUGS,
    DIFFICULTIES,
    IDENTITY,
    INIT_AREAS,
    RRC_TRIES,
    EnvParams,
    augment,
    identity_aug,
    initial_boxes,
    retry_columns,
    strength_to_aug,
)
from view_env.data import default_canvas_size
from view_env.render import render_views

__all__ = [
    "AUGMENTATIONS", "AUG_RANGES", "BOOLEAN_AUGS", "DIFFICULTIES", "ENV_IDS", "IDENTITY", "INIT_AREAS", "RRC_TRIES",
    "EnvParams", "augment", "default_canvas_size", "identity_aug", "initial_boxes", "render_views", "retry_columns",
    "strength_to_aug",
]

__version__ = "0.1.0"

#: Registered ids and the data source each one reads.
ENV_IDS: dict[str, dict[str, object]] = {
    "ViewTransform-COCO-v0": {"dataset": "coco"},
    "ViewTransform-Shapes-v0": {"dataset": "shapes"},
    "ViewTransform-ImageFolder-v0": {"dataset": "images"},
    "ViewTransform-Video-v0": {"dataset": "video", "temporal": True},
    # Active search on Shapes: a random target per episode, observed beside the view; or one fixed target with
    # image-only observations (what CleanRL's and SB3's CNN agents take).
    "ViewTransform-Shapes-Search-v0": {"dataset": "shapes", "task": "search", "obs_mode": "dict"},
    "ViewTransform-Shapes-SearchCircle-v0": {"dataset": "shapes", "task": "search", "target": "circle"},
    # The same search at the easier difficulty levels (view_env.core.DIFFICULTIES; docs/envs.md has their numbers).
    "ViewTransform-Shapes-SearchCircle-Easy-v0": {"dataset": "shapes", "task": "search", "target": "circle",
                                                  "difficulty": "easy"},
    "ViewTransform-Shapes-SearchCircle-Medium-v0": {"dataset": "shapes", "task": "search", "target": "circle",
                                                    "difficulty": "medium"},
}



def _episode_steps(kwargs: dict[str, object]) -> int:
    """The registered episode length: the difficulty level's, else the default 16."""
    level = DIFFICULTIES.get(str(kwargs.get("difficulty")), {})
    return int(level.get("max_episode_steps", EnvParams.max_episode_steps))  # type: ignore[call-overload]


for _id, _kwargs in ENV_IDS.items():
    if _id not in gym.registry:
        gym.register(
            id=_id,
            entry_point="view_env.single:ViewTransformEnv",
            vector_entry_point="view_env.vector:ViewTransformVectorEnv",
            max_episode_steps=_episode_steps(_kwargs),
            kwargs=dict(_kwargs),
        )
