"""The paper's behaviour policy and the rounds of the collector: independent RandomResizedCrop views, every ordered
pair a transition, flip-aware actions whose rendered content is what they say, legal candidate next views."""

from __future__ import annotations

import math

import pytest
import torch

from agents import gvf
from agents.collect import (
    RandomResizedCrop,
    TransitionCollector,
    UniformRelativeBox,
    make_policy,
    pair_indices,
    round_seed,
    rrc_env_kwargs,
)
from agents.config import PretrainConfig
from agents.data import absolute_box, relative_aug, relative_box
from agents.pretrain import next_view_params
from view_env import AUGMENTATIONS, EnvParams
from view_env.core import identity_aug, initial_boxes, retry_columns
from view_env.render import render_views
from view_env.vector import ViewTransformVectorEnv, aug_from_state

OBS = 16
FLIP = AUGMENTATIONS.index("flip")


def rrc_env(tiny_shapes, num_envs=6, views=4, **kwargs):
    env_kwargs = {**rrc_env_kwargs(views, augmentations=("flip", "brightness")), **kwargs}
    return ViewTransformVectorEnv(num_envs, dataset="shapes", root=str(tiny_shapes), obs_size=OBS, progress=False,
                                  **env_kwargs)


def torchvision_crop_areas(height, width, n, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), seed=0):
    """``float32 [n]`` areas (fractions of the image) of torchvision's RandomResizedCrop on an image of this size:
    the independent reference for the behaviour policy's views."""
    from torchvision.transforms import RandomResizedCrop as TorchvisionCrop

    torch.manual_seed(seed)
    image = torch.zeros(1, height, width)
    areas = [h * w for _, _, h, w in (TorchvisionCrop.get_params(image, scale, ratio) for _ in range(n))]
    return torch.tensor(areas, dtype=torch.float32) / (height * width)


@pytest.mark.parametrize("height, width", [(1000, 1000), (600, 1000)])
def test_rrc_views_follow_torchvisions_random_resized_crop(height, width):
    """The paper's views are torchvision's RandomResizedCrop: area uniform in the scale range, a draw that does not
    fit drawn again. The "uniform" law matches it quantile by quantile; the "log-uniform" one (the search levels'
    first views, and the pretrainer's views before crop_area existed) is smaller."""
    n = 20000
    reference = torchvision_crop_areas(height, width, n)
    quantiles = torch.linspace(0.05, 0.95, 19)
    generator = torch.Generator().manual_seed(1)
    aspect = torch.full((n,), width / height)
    areas = {}
    for law in ("uniform", "log-uniform"):
        params = EnvParams(**{k: v for k, v in rrc_env_kwargs(4, area=law).items()
                              if k in ("init_scale", "init_area", "init_aspect", "min_scale", "max_aspect")})
        retries = torch.rand(n, retry_columns(params), generator=generator)
        boxes = initial_boxes(torch.rand(n, 4, generator=generator), aspect, params, retries)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        pixel_ratio = (boxes[:, 2] - boxes[:, 0]) * width / ((boxes[:, 3] - boxes[:, 1]) * height)
        assert pixel_ratio.min() >= 0.75 - 1e-4 and pixel_ratio.max() <= 4 / 3 + 1e-4
        areas[law] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    gap = (areas["uniform"].quantile(quantiles) - reference.quantile(quantiles)).abs().max()
    assert gap < 0.02, f"quantiles of the area differ from torchvision's by {gap:.3f}"
    assert abs(float(areas["uniform"].mean() - reference.mean())) < 0.01
    assert float(areas["log-uniform"].mean()) < float(reference.mean()) - 0.04  # 0.05 to 0.15 smaller
    assert abs(float(areas["log-uniform"].log().mean()) - math.log(0.05) / 2) < 0.05  # log-uniform in (0.05, 1)
    with pytest.raises(ValueError, match="area='normal' is invalid"):
        rrc_env_kwargs(4, area="normal")
    with pytest.raises(ValueError, match="init_area"):
        EnvParams(init_area="normal")


# ----------------------------------------------------------------------------------------------- actions


def test_relative_box_in_the_views_own_frame_flipped_or_not():
    box = torch.tensor([[0.2, 0.4, 0.6, 0.8]])  # w = h = 0.4
    right = torch.tensor([[0.4, 0.5, 0.6, 0.9]])  # the right half of the view, shifted down
    torch.testing.assert_close(relative_box(box, right), torch.tensor([[0.5, 0.25, 1.0, 1.25]]))
    # In a mirrored view the right half of the image box is shown on the left.
    mirrored = relative_box(box, right, torch.tensor([True]))
    torch.testing.assert_close(mirrored, torch.tensor([[0.0, 0.25, 0.5, 1.25]]))
    torch.testing.assert_close(relative_box(box, right, torch.tensor([1.0])), mirrored)  # the float aug column
    torch.testing.assert_close(relative_box(box, box, torch.tensor([True])), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    for flip in (torch.tensor([False]), torch.tensor([True])):
        torch.testing.assert_close(absolute_box(box, relative_box(box, right, flip), flip), right)


def test_relative_aug_makes_the_flip_relative():
    aug = torch.tensor([[1.0, 1.2, 1, 1, 0, 0, 0], [0.0, 1, 1, 1, 0, 0, 0]])
    next_aug = torch.tensor([[1.0, 0.7, 1, 1, 0, 0, 0], [1.0, 1, 1, 1, 0.1, 0, 0]])
    out = relative_aug(aug, next_aug)
    assert out[:, FLIP].tolist() == [0.0, 1.0]  # both flipped: no relative flip; one flipped: mirrored
    torch.testing.assert_close(out[:, 1:], next_aug[:, 1:])


@pytest.mark.parametrize("flip_x, flip_next", [(False, False), (True, False), (False, True), (True, True)])
def test_a_rendered_move_shows_the_content_the_action_says(tiny_shapes, flip_x, flip_next):
    """Crop x's rendered view at the action's relative box, mirror it where the action's flip says so: that is x'."""
    env = rrc_env(tiny_shapes, num_envs=1)
    bank = env.bank
    slot = torch.tensor([3])
    x_box = torch.tensor([[0.1, 0.2, 0.9, 1.0]])
    next_box = torch.tensor([[0.5, 0.4, 0.9, 0.8]])  # the right half of x, at half its size
    big, small = 64, 32
    aug, next_aug = identity_aug(1, torch.device("cpu")), identity_aug(1, torch.device("cpu"))
    aug[:, FLIP], next_aug[:, FLIP] = float(flip_x), float(flip_next)
    x_view = render_views(bank.images, slot, x_box, big, aug_from_state(aug))
    next_view = render_views(bank.images, slot, next_box, small, aug_from_state(next_aug))
    rel = relative_box(x_box, next_box, aug[:, FLIP])[0]
    x0, y0, x1, y1 = (rel * big).round().long().tolist()
    assert (x1 - x0, y1 - y0) == (small, small)
    crop = x_view[0, :, y0:y1, x0:x1].float()
    if relative_aug(aug, next_aug)[0, FLIP] > 0.5:
        crop = crop.flip(-1)
    error = (crop - next_view[0].float()).abs().mean()
    assert error < 6.0, f"the crop differs from x' by {error:.1f} grey levels on average"
    wrong = x_view[0, :, y0:y1, big - x1 : big - x0].float()  # the mirror-image place must not match
    assert (wrong - next_view[0].float()).abs().mean() > 2 * error


# ----------------------------------------------------------------------------------------------- the rrc policy


def test_rrc_policy_draws_independent_legal_views(tiny_shapes):
    env = rrc_env(tiny_shapes, num_envs=200)
    policy = make_policy("rrc", env, seed=0)
    assert isinstance(policy, RandomResizedCrop)
    _, info = env.reset(seed=0)
    actions = policy(None, info)
    assert actions.shape == (200, 6) and env.action_space.contains(actions.numpy())
    _, _, _, _, info = env.step(actions)
    box = info["box"]
    assert ((box >= 0) & (box <= 1)).all()
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    assert area.min() >= 0.05 - 1e-6 and area.max() > 0.6 and area.min() < 0.1  # uniform in (0.05, 1)
    ratio = (box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1])  # Shapes images are square
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert 0.3 < info["aug"][:, FLIP].mean() < 0.7  # flipped half the time, first views included
    _, first = env.reset(seed=1)
    assert 0.3 < first["aug"][:, FLIP].mean() < 0.7


def test_rrc_policy_refuses_environments_it_cannot_drive(tiny_shapes):
    relative = ViewTransformVectorEnv(2, dataset="shapes", root=str(tiny_shapes), obs_size=OBS, progress=False,
                                      action_mode="continuous")
    with pytest.raises(ValueError, match="absolute"):
        RandomResizedCrop(relative)
    with pytest.raises(ValueError, match="init_augment"):
        RandomResizedCrop(rrc_env(tiny_shapes, init_augment=False))
    with pytest.raises(ValueError, match="'greedy' is not a behaviour policy"):
        make_policy("greedy", relative)
    with pytest.raises(ValueError, match="at least 2 views"):
        rrc_env_kwargs(1)
    assert isinstance(make_policy(None, relative), UniformRelativeBox)


# ----------------------------------------------------------------------------------------------- rounds


def test_every_ordered_pair_of_an_episodes_views_is_a_transition(tiny_shapes):
    env = rrc_env(tiny_shapes, num_envs=5, views=4)
    collector = TransitionCollector(env, seed=0)
    assert collector.pairs == "all" and collector.num_views == 4 and collector.round_size == 5 * 12
    batch = collector.round(0)
    assert batch["view"].shape == (60, 3, OBS, OBS)
    assert torch.equal(batch["image_index"], batch["next_image_index"])
    torch.testing.assert_close(absolute_box(batch["box"], batch["rel_box"], batch["aug"][:, FLIP]),
                               batch["next_box"])
    for env_row in range(5):
        rows = slice(12 * env_row, 12 * (env_row + 1))
        boxes = {tuple(b) for b in batch["box"][rows].tolist()}
        assert len(boxes) == 4, "an episode has four views"
        pairs = {(tuple(a), tuple(b)) for a, b in zip(batch["box"][rows].tolist(), batch["next_box"][rows].tolist(),
                                                       strict=True)}
        assert pairs == {(a, b) for a in boxes for b in boxes if a != b}, "every ordered pair exactly once"
    # The anchor is a third view of the episode: neither x nor x'.
    for row in range(60):
        assert not torch.equal(batch["anchor_view"][row], batch["view"][row])
        assert not torch.equal(batch["anchor_view"][row], batch["next_view"][row])
    assert torch.equal(batch["next_image_size"], torch.tensor([[64, 64]]).expand(60, 2))


def test_two_views_pair_both_ways_and_the_anchor_is_the_other_view(tiny_shapes):
    batch = TransitionCollector(rrc_env(tiny_shapes, num_envs=3, views=2), seed=0).round(0)
    assert batch["view"].shape[0] == 6
    assert torch.equal(batch["anchor_view"], batch["next_view"])


def test_rounds_are_pure_functions_of_seed_and_index_and_streams_resume_exactly(tiny_shapes):
    a = TransitionCollector(rrc_env(tiny_shapes), seed=3)
    b = TransitionCollector(rrc_env(tiny_shapes), seed=3)
    for key, value in a.round(2).items():
        assert torch.equal(value, b.round(2)[key]), key
    assert not torch.equal(a.round(0)["box"], a.round(1)["box"])
    assert round_seed(3, 0) != round_seed(3, 1) != round_seed(4, 1)
    size = a.round_size
    stream = a.stream(0)
    whole = torch.cat([next(stream)["box"] for _ in range(3)])
    resumed = b.stream(size + 7)  # in the middle of round 1
    torch.testing.assert_close(next(resumed)["box"], whole[size + 7 : 2 * size])
    torch.testing.assert_close(next(resumed)["box"], whole[2 * size :])


def test_random_walk_pairs_consecutive_views_of_one_episode(tiny_shapes):
    env = ViewTransformVectorEnv(3, dataset="shapes", root=str(tiny_shapes), obs_size=OBS, progress=False,
                                 action_mode="continuous", max_episode_steps=5)
    collector = TransitionCollector(env, seed=1)
    assert collector.pairs == "consecutive" and collector.round_size == 15
    batch = collector.round(0)
    first, second = pair_indices(6, "consecutive")
    assert first.tolist() == [0, 1, 2, 3, 4] and second.tolist() == [1, 2, 3, 4, 5]
    for env_row in range(3):
        rows = slice(5 * env_row, 5 * (env_row + 1))
        assert torch.equal(batch["box"][rows][1:], batch["next_box"][rows][:-1]), "x is the previous x'"
        assert torch.equal(batch["view"][rows][1:], batch["next_view"][rows][:-1])
    assert not any(torch.equal(a, v) for a, v in zip(batch["anchor_view"], batch["view"], strict=True))


def test_views_after_a_search_success_belong_to_another_episode(tiny_shapes):
    """Search episodes end early; their later views are left out, so no transition crosses an episode boundary."""
    env = ViewTransformVectorEnv(8, dataset="shapes", root=str(tiny_shapes), obs_size=OBS, progress=False,
                                 action_mode="continuous", obs_mode="dict", task="search", max_episode_steps=6,
                                 success_coverage=0.05, init_scale=(0.5, 1.0))
    collector = TransitionCollector(env, seed=0)
    assert collector.round_size is None
    episode, valid = collector._episode(round_seed(0, 0))
    assert (~valid).any(), "some search episodes should succeed early at this coverage"
    batch = collector.round(0)
    assert batch["view"].shape[0] == int((valid[:, :-1] & valid[:, 1:]).sum())
    with pytest.raises(ValueError, match="end early"):
        next(collector.stream(5))


# ----------------------------------------------------------------------------------------------- candidate actions


def test_candidate_next_views_are_legal_and_follow_the_behaviour_distribution():
    config = PretrainConfig(augmentations=("flip", "brightness"))
    params = next_view_params(config)
    assert isinstance(params, EnvParams) and params.init_scale == (0.05, 1.0)
    n, k = 512, 8
    g = torch.Generator().manual_seed(0)
    next_box = torch.tensor([[0.1, 0.3, 0.5, 0.6]]).expand(n, 4)
    next_aug = torch.zeros(n, 7)
    next_aug[: n // 2, FLIP] = 1.0
    next_aug[:, 1:4] = 1.0
    sizes = torch.tensor([[120, 200]]).expand(n, 2)  # a landscape image
    rel_box, rel_aug, boxes = gvf.sample_next_actions(next_box, next_aug, sizes, k, params, g)
    assert rel_box.shape == (n, k, 4) and rel_aug.shape == (n, k, 7) and boxes.shape == (n, k, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all(), "every candidate next box lies inside the image"
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    assert area.min() >= 0.05 - 1e-6 and 0.75 < area.max() <= 0.8 + 1e-6  # 4:3 crops of a 5:3 image: <= 0.8
    pixel_ratio = (boxes[..., 2] - boxes[..., 0]) * 200 / ((boxes[..., 3] - boxes[..., 1]) * 120)
    assert pixel_ratio.min() >= 0.75 - 1e-4 and pixel_ratio.max() <= 4 / 3 + 1e-4
    reference = torchvision_crop_areas(120, 200, len(area.flatten()))  # torchvision's law on this image
    assert abs(float(area.mean()) - float(reference.mean())) < 0.015, "RandomResizedCrop's area law"
    flip = next_aug[:, None, FLIP].expand(n, k)
    torch.testing.assert_close(absolute_box(next_box[:, None].expand(n, k, 4), rel_box, flip), boxes)
    assert 0.4 < rel_aug[..., FLIP].mean() < 0.6 and set(rel_aug[..., FLIP].unique().tolist()) == {0.0, 1.0}
    assert rel_aug[..., 1].min() >= 0.5 and rel_aug[..., 1].max() <= 1.5 and rel_aug[..., 1].std() > 0.2
    assert (rel_aug[..., 2:4] == 1.0).all(), "augmentations the run does not use stay at their identity"
