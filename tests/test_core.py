"""Pure MDP functions: annotation coverage against hand-computed cases, legal boxes, actions, targets, RNG."""

from __future__ import annotations

import math

import pytest
import torch

from view_env import core, rng

P = core.EnvParams()


def test_coverage_hand_computed():
    # One image with a car on the left half, a person in the top-left quarter (overlapping the car) and a second
    # car in the bottom-right quarter; categories: 0 car, 1 person, 2 (absent).
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1, 0, -1]])
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    got = core.coverage(whole, boxes, labels, 3, grid=16)
    # car: left half (0.5) + bottom-right quarter (0.25), counted once where they touch; person: 1/16.
    torch.testing.assert_close(got, torch.tensor([[0.75, 1 / 16, 0.0]]))
    # A view of the top-left quarter: the car fills it, the person a quarter of it.
    quarter = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    torch.testing.assert_close(core.coverage(quarter, boxes, labels, 3, grid=16), torch.tensor([[1.0, 0.25, 0.0]]))
    # A view straddling the car's right edge: x in [0.25, 0.75] over y in [0, 0.5]: half of it is car.
    straddle = torch.tensor([[0.25, 0.0, 0.75, 0.5]])
    torch.testing.assert_close(core.coverage(straddle, boxes, labels, 3, grid=16), torch.tensor([[0.5, 0.0, 0.0]]))


def test_coverage_batched_equals_unbatched_and_handles_no_categories():
    g = torch.Generator().manual_seed(0)
    n, m = 7, 5
    corners = torch.rand(n, m, 2, 2, generator=g)
    boxes = torch.cat([corners.amin(2), corners.amax(2)], dim=-1)
    labels = torch.randint(-1, 4, (n, m), generator=g)
    view = torch.tensor([[0.1, 0.2, 0.9, 0.7]]).repeat(n, 1)
    batched = core.coverage(view, boxes, labels, 4, grid=8)
    for i in range(n):
        torch.testing.assert_close(batched[i : i + 1], core.coverage(view[i : i + 1], boxes[i : i + 1],
                                                                     labels[i : i + 1], 4, grid=8))
    assert core.coverage(view, boxes, labels, 0, grid=8).shape == (n, 0)
    assert core.coverage(view[:0], boxes[:0], labels[:0], 4, grid=8).shape == (0, 4)


def _aspect(box, image_aspect):
    return ((box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1]) * image_aspect)


def test_legal_box_enforces_bounds():
    aspect = torch.tensor([1.0, 1.5, 0.5, 1.0])
    cx = torch.tensor([0.0, 0.9, 0.5, 0.5])
    cy = torch.tensor([0.5, 0.1, 1.0, 0.5])
    w = torch.tensor([0.01, 3.0, 0.2, 0.9])
    h = torch.tensor([0.01, 3.0, 0.9, 0.05])
    box = core.legal_box(cx, cy, w, h, aspect, P)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    assert (box >= -1e-6).all() and (box <= 1 + 1e-6).all()
    assert (area >= P.min_scale - 1e-5).all()
    ratio = _aspect(box, aspect)
    assert (ratio <= P.max_aspect + 1e-4).all() and (ratio >= 1 / P.max_aspect - 1e-4).all()
    torch.testing.assert_close(box[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # capped at the whole image


def test_discrete_actions_move_as_named():
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]]).repeat(9, 1)
    aug = core.identity_aug(9, torch.device("cpu"))
    new, _ = core.apply_discrete(box, aug, torch.arange(9), torch.ones(9), P)
    cx, cy = (new[:, 0] + new[:, 2]) / 2, (new[:, 1] + new[:, 3]) / 2
    w, h = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    names = P.action_names()
    torch.testing.assert_close(new[names.index("noop")], box[0])
    assert cx[names.index("pan_left")] == pytest.approx(0.5 - 0.125)
    assert cx[names.index("pan_right")] == pytest.approx(0.5 + 0.125)
    assert cy[names.index("pan_up")] == pytest.approx(0.5 - 0.125)
    assert cy[names.index("pan_down")] == pytest.approx(0.5 + 0.125)
    assert w[names.index("zoom_in")] == pytest.approx(0.5 / 1.25)
    assert w[names.index("zoom_out")] == pytest.approx(0.5 * 1.25)
    assert w[names.index("wider")] / h[names.index("wider")] == pytest.approx(1.25**2)
    assert h[names.index("taller")] / w[names.index("taller")] == pytest.approx(1.25**2)


def test_toggles_switch_augmentations_on_and_off():
    n = len(P.augmentations)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1)
    aug = core.identity_aug(n, torch.device("cpu"))
    action = torch.arange(n) + len(core.GEOMETRY_ACTIONS)
    _, on = core.apply_discrete(box, aug, action, torch.ones(n), P)
    for k, name in enumerate(P.augmentations):
        column = core.AUGMENTATIONS.index(name)
        assert on[k, column] == core.TOGGLED[name]
        others = [c for c in range(len(core.AUGMENTATIONS)) if c != column]
        torch.testing.assert_close(on[k, others], aug[k, others])
    _, off = core.apply_discrete(box, on, action, torch.ones(n), P)
    torch.testing.assert_close(off, aug)


def test_continuous_relative_box():
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    aug = core.identity_aug(1, torch.device("cpu"))
    action = torch.zeros(1, P.action_dim)
    action[0, 0] = 0.5  # move right by 0.5 * max_pan view widths
    action[0, 2] = -1.0  # shrink the sides by exp(-max_log_scale)
    new, new_aug = core.apply_continuous(box, aug, action, torch.ones(1), P)
    w = new[0, 2] - new[0, 0]
    assert w == pytest.approx(0.5 * math.exp(-P.max_log_scale), rel=1e-5)
    assert (new[0, 0] + new[0, 2]) / 2 == pytest.approx(0.5 + 0.5 * P.max_pan * 0.5, rel=1e-5)
    torch.testing.assert_close(new_aug, aug)  # strength 0 is every augmentation's identity
    action[0, 4:] = 1.0
    _, strong = core.apply_continuous(box, aug, action, torch.ones(1), P)
    expected = [core.strength_to_aug(name, torch.tensor([1.0])).item() for name in P.augmentations]
    torch.testing.assert_close(strong[0], torch.tensor(expected))


def test_targets_are_present_and_reachable():
    labels = torch.tensor([[3, 5, -1], [-1, -1, -1], [2, 2, 2]])
    boxes = torch.tensor([[[0, 0, 0.1, 0.1], [0, 0, 0.8, 0.8], [0, 0, 0, 0]],
                          [[0, 0, 0, 0]] * 3,
                          [[0, 0, 0.5, 0.5]] * 3])
    target, needed = core.draw_targets(torch.tensor([0.0, 0.5, 0.99]), labels, boxes, P)
    assert target.tolist() == [3, -1, 2]
    # The 0.1 x 0.1 object covers at most 0.01 / 0.05 of the smallest view: success at 80% of that.
    assert needed[0] == pytest.approx(0.8 * 0.01 / 0.05)
    assert needed[2] == pytest.approx(P.success_coverage)


def test_rng_depends_only_on_its_coordinates():
    ids = torch.arange(10)
    episodes = torch.arange(10) % 3
    full = rng.uniform(7, ids, episodes, 5)
    torch.testing.assert_close(rng.uniform(7, ids[4:6], episodes[4:6], 5), full[4:6])
    assert not torch.equal(rng.uniform(8, ids, episodes, 5), full)
    assert ((full >= 0) & (full < 1)).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [("obs_size", 4), ("action_mode", "joystick"), ("obs_mode", "pixels"), ("augmentations", ("sepia",)),
     ("min_scale", 0.0), ("init_scale", (0.01, 1.0)), ("max_episode_steps", 0), ("success_coverage", 2.0)],
)
def test_bad_params_name_the_value(field, value):
    with pytest.raises(ValueError, match=field):
        core.EnvParams(**{field: value})


def _coverage_reference(view, boxes, labels, num_categories, grid):
    """A plain Python loop over environments, grid points and boxes."""
    out = torch.zeros(len(view), num_categories)
    for n in range(len(view)):
        x0, y0, x1, y1 = view[n].tolist()
        for j in range(grid):
            for i in range(grid):
                x = x0 + (i + 0.5) / grid * (x1 - x0)
                y = y0 + (j + 0.5) / grid * (y1 - y0)
                hit = set()
                for (bx0, by0, bx1, by1), label in zip(boxes[n].tolist(), labels[n].tolist(), strict=True):
                    if label >= 0 and bx0 <= x < bx1 and by0 <= y < by1:
                        hit.add(label)
                for label in hit:
                    out[n, label] += 1 / grid**2
    return out


def test_coverage_matches_a_python_loop_on_random_scenes():
    g = torch.Generator().manual_seed(1)
    n, m, a = 6, 7, 4
    corners = torch.rand(n, m, 2, 2, generator=g)
    boxes = torch.cat([corners.amin(2), corners.amax(2)], dim=-1)
    labels = torch.randint(-1, a, (n, m), generator=g)
    start = torch.rand(n, 2, generator=g) * 0.5
    view = torch.cat([start, start + 0.2 + torch.rand(n, 2, generator=g) * 0.3], dim=1)
    got = core.coverage(view, boxes, labels, a, grid=8)
    torch.testing.assert_close(got, _coverage_reference(view, boxes, labels, a, 8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", core.AUGMENTATIONS)
def test_strengths_map_onto_the_published_augmentation_ranges(name):
    """``view_env.AUG_RANGES`` is the one statement of each column's range: strengths in [-1, 1] land inside it and
    the ends of the strength range reach its ends (booleans take exactly 0 and 1)."""
    low, high = core.AUG_RANGES[name]
    values = core.strength_to_aug(name, torch.linspace(-1, 1, 201))
    assert float(values.min()) == pytest.approx(low) and float(values.max()) == pytest.approx(high)
    if name in core.BOOLEAN_AUGS:
        assert set(values.tolist()) == {0.0, 1.0}
    assert low <= core.IDENTITY[name] <= high


def test_default_canvas_size_rule():
    from view_env import default_canvas_size

    assert [default_canvas_size(s) for s in (16, 32, 64, 96, 128, 224)] == [128, 128, 128, 192, 256, 256]
