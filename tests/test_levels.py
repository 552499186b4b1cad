"""Search difficulty levels: the presets, the target-size filter they use, their registered ids and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import one_object_coco

import view_env  # noqa: F401  (registers the ids)
from view_env import core
from view_env.vector import ViewTransformVectorEnv


def test_each_level_sets_its_fields_and_arguments_beside_it_win(tmp_path):
    root = one_object_coco(tmp_path / "coco", [5, 5, 60, 60])  # one 'thing' over 30% of the image
    common = {"dataset": "coco", "root": str(root), "task": "search", "target": "thing", "progress": False}
    for level, fields in core.DIFFICULTIES.items():
        env = ViewTransformVectorEnv(2, difficulty=level, **common)
        defaults = core.EnvParams(task="search", target=env.params.target)
        for name in ("augmentations", "init_scale", "min_target_area", "max_episode_steps"):
            assert getattr(env.params, name) == fields.get(name, getattr(defaults, name)), (level, name)
    env = ViewTransformVectorEnv(2, difficulty="medium", max_episode_steps=12, min_target_area=0.0, **common)
    assert env.params.max_episode_steps == 12 and env.params.min_target_area == 0.0
    assert env.params.augmentations == () and env.single_action_space.n == len(core.GEOMETRY_ACTIONS)
    easy = core.DIFFICULTIES["easy"]
    assert easy["min_target_area"] > core.DIFFICULTIES["medium"]["min_target_area"]  # easier: larger targets
    assert easy["max_episode_steps"] < core.DIFFICULTIES["medium"]["max_episode_steps"]


def draw_reference(uniform: float, labels: list[int], areas: list[float], min_area: float, fixed: int | None
                   ) -> int:
    """The target a Python loop draws: the k-th eligible object, k = floor(uniform * count)."""
    eligible = [label for label, area in zip(labels, areas, strict=True)
                if label >= 0 and area >= min_area and (fixed is None or label == fixed)]
    if not eligible:
        return -1
    return fixed if fixed is not None else eligible[min(int(uniform * len(eligible)), len(eligible) - 1)]


@pytest.mark.parametrize("min_area, fixed", [(0.0, None), (0.05, None), (0.2, None), (0.05, 2), (0.0, 1)])
def test_targets_are_drawn_among_large_enough_objects(min_area, fixed):
    g = torch.Generator().manual_seed(0)
    n, m = 400, 6
    corner = torch.rand(n, m, 2, generator=g) * 0.7
    side = torch.rand(n, m, 2, generator=g) * 0.5 + 0.01
    boxes = torch.cat([corner, (corner + side).clamp(max=1.0)], dim=-1)
    count = torch.randint(0, m + 1, (n,), generator=g)
    labels = torch.where(torch.arange(m)[None] < count[:, None], torch.randint(0, 4, (n, m), generator=g), -1)
    uniforms = torch.rand(n, generator=g)
    params = core.EnvParams(task="search", obs_mode="dict", min_target_area=min_area)
    target, coverage = core.draw_targets(uniforms, labels, boxes, params, fixed)
    areas = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).tolist()
    for i in range(n):
        assert int(target[i]) == draw_reference(float(uniforms[i]), labels[i].tolist(), areas[i], min_area, fixed)
    found = target >= 0
    assert bool((coverage[found] > 0).all()) and bool((coverage <= params.success_coverage).all())
    if min_area > 0:
        assert bool((target >= 0).any()) and bool((target == -1).any())


def test_every_episode_searches_for_a_large_enough_target(tiny_shapes):
    env = ViewTransformVectorEnv(32, root=str(tiny_shapes), split="train", task="search", obs_mode="dict",
                                 min_target_area=0.08, progress=False)
    area = (env.bank.boxes[..., 2] - env.bank.boxes[..., 0]) * (env.bank.boxes[..., 3] - env.bank.boxes[..., 1])
    assert len(env.data.target_slots) < len(env.bank)  # some images hold no object that large
    env.reset(seed=0)
    for _ in range(10):
        state = env.state
        large = (env.bank.labels[state.slot] == state.target[:, None]) & (area[state.slot] >= 0.08)
        assert bool(large.any(dim=1).all()), "an episode whose target has no object of at least 8% of the image"
        env.step(torch.randint(0, env.single_action_space.n, (32,)))


def test_easy_id_ends_its_episodes_within_four_steps(tmp_path):
    root = one_object_coco(tmp_path / "coco", [5, 5, 60, 60])  # one 'thing' over 30% of the image
    env = gym.make("ViewTransform-Shapes-SearchCircle-Easy-v0", dataset="coco", root=str(root), target="thing",
                   progress=False)
    assert env.spec.max_episode_steps == 4 and env.unwrapped.params.max_episode_steps == 4
    direct = view_env.single.ViewTransformEnv(dataset="coco", root=str(root), task="search", target="thing",
                                              difficulty="easy", progress=False)
    assert direct.params.max_episode_steps == 4  # the level's length, without gym.make's TimeLimit
    for made in (env, direct):
        made.reset(seed=0)
        steps = 0
        for _ in range(5):
            _, _, terminated, truncated, _ = made.step(6)  # zoom out: never reaches the coverage
            steps += 1
            if terminated or truncated:
                break
        assert steps <= 4 and (terminated or truncated)
    envs = gym.make_vec("ViewTransform-Shapes-SearchCircle-Medium-v0", num_envs=2, dataset="coco", root=str(root),
                        target="thing", progress=False)
    assert envs.params.max_episode_steps == 8 and envs.single_action_space.n == len(core.GEOMETRY_ACTIONS)


def test_bad_levels_and_target_sizes_are_refused(tmp_path, tiny_shapes):
    root = one_object_coco(tmp_path / "coco", [10, 10, 30, 30])  # 'thing' over 9% of the image
    common = {"dataset": "coco", "root": str(root), "progress": False}
    with pytest.raises(ValueError, match=r"difficulty='impossible' is invalid: expected one of \['easy', 'medium', "
                                         r"'hard'\]"):
        ViewTransformVectorEnv(1, task="search", target="thing", difficulty="impossible", **common)
    with pytest.raises(ValueError, match="difficulty='easy' is given but task='none'"):
        ViewTransformVectorEnv(1, difficulty="easy", **common)
    with pytest.raises(ValueError, match="min_target_area=0.1 is given but task='none'"):
        ViewTransformVectorEnv(1, min_target_area=0.1, **common)
    for bad in (-0.1, 1.0, "big"):
        with pytest.raises(ValueError, match=f"min_target_area={bad!r} is invalid"):
            ViewTransformVectorEnv(1, task="search", target="thing", min_target_area=bad, **common)
    with pytest.raises(ValueError, match="target='thing': no image in the bank holds a 'thing' covering at least "
                                         "min_target_area=0.1 of the image"):
        ViewTransformVectorEnv(1, task="search", target="thing", difficulty="easy", **common)
    with pytest.raises(ValueError, match="no image in the bank holds an object covering at least"):
        ViewTransformVectorEnv(1, task="search", obs_mode="dict", min_target_area=0.5, **common)
    assert np.isclose(ViewTransformVectorEnv(1, task="search", target="thing", difficulty="medium",
                                             **common).params.min_target_area, 0.05)
