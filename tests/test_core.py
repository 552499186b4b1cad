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


# ------------------------------------------------------------------------------------------ the pure reset and step


def _data(temporal: bool = False) -> core.EnvData:
    """Three images of different shapes with a few labelled boxes (and, optionally, frame links 0 <-> 1 <-> 2)."""
    sizes = torch.tensor([[60, 80], [100, 50], [64, 64]])
    boxes = torch.tensor([[[0.1, 0.1, 0.6, 0.5], [0.5, 0.4, 0.9, 0.9], [0, 0, 0, 0]],
                          [[0.0, 0.0, 1.0, 0.3], [0, 0, 0, 0], [0, 0, 0, 0]],
                          [[0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.8, 0.9], [0.6, 0.0, 1.0, 0.2]]])
    labels = torch.tensor([[0, 2, -1], [1, -1, -1], [2, 2, 0]])
    neighbours = torch.tensor([[0, 1], [0, 2], [1, 2]]) if temporal else None
    return core.EnvData(sizes, boxes, labels, num_categories=3, neighbours=neighbours)


def _snapshot(value):
    if isinstance(value, core.EnvState):
        return {f: getattr(value, f).clone() for f in value.__dataclass_fields__}
    if isinstance(value, core.EnvData):
        return {f: None if getattr(value, f) is None else getattr(value, f).clone()
                for f in ("sizes", "boxes", "labels", "neighbours")}
    return value.clone()


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, core.EnvState):
        return _equal(_snapshot(a), _snapshot(b))
    return a is None and b is None or torch.equal(a, b)


def _actions(params: core.EnvParams, n: int, temporal: bool, generator: torch.Generator) -> torch.Tensor:
    if params.action_mode == "discrete":
        return torch.randint(0, params.num_actions + (2 if temporal else 0), (n,), generator=generator)
    action = torch.rand(n, params.action_dim + (1 if temporal else 0), generator=generator) * 2 - 1
    if params.action_mode == "absolute":
        action[:, :4] = (action[:, :4] + 1) / 2
    return action


@pytest.mark.parametrize("temporal", [False, True])
@pytest.mark.parametrize("params", [
    core.EnvParams(), core.EnvParams(action_mode="continuous", init_augment=True, max_episode_steps=3),
    core.EnvParams(action_mode="absolute", obs_mode="dict", task="search"),
    core.EnvParams(task=lambda annotation: annotation.sum(-1)),
], ids=["discrete", "continuous", "absolute-search", "callable-task"])
def test_reset_and_step_are_pure_functions(params, temporal):
    """Same inputs give the same outputs, bit for bit; no input is changed; the outputs are new tensors."""
    n, data = 6, _data(temporal)
    key = core.Key(7, torch.arange(n))
    empty = core.EnvState.empty(n, torch.device("cpu"))
    everything = torch.ones(n, dtype=torch.bool)
    before = (_snapshot(empty), _snapshot(data), key.env_ids.clone())
    state = core.reset(params, data, empty, everything, key)
    assert _equal(state, core.reset(params, data, empty, everything, key))
    assert _equal((_snapshot(empty), _snapshot(data), key.env_ids), before)
    assert (state.episode == 1).all() and (state.step == 0).all()

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        action = _actions(params, n, temporal, g)
        inputs = (_snapshot(state), _snapshot(data), action.clone())
        out = core.step(params, data, state, action)
        assert _equal(out, core.step(params, data, state, action))
        assert _equal((_snapshot(state), _snapshot(data), action), inputs), "step changed an input"
        new_state, annotation, reward, terminated, truncated = out
        assert all(getattr(new_state, f) is not getattr(state, f) for f in ("box", "aug", "step"))
        assert annotation.shape == (n, 3) and reward.shape == terminated.shape == truncated.shape == (n,)
        assert (new_state.step == state.step + 1).all()
        torch.testing.assert_close(annotation, core.annotate(params, data, new_state), rtol=0, atol=0)
        if params.max_episode_steps is not None:
            assert torch.equal(truncated, (new_state.step >= params.max_episode_steps) & ~terminated)
        state = new_state

    # A masked reset changes only the masked rows, and draws them from (seed, env, episode) alone.
    mask = torch.tensor([True, False, True, False, False, True])
    again = core.reset(params, data, state, mask, key)
    for f in ("slot", "box", "aug", "step", "episode", "target", "target_coverage"):
        assert torch.equal(getattr(again, f)[~mask], getattr(state, f)[~mask]), f
    assert (again.step[mask] == 0).all() and (again.episode[mask] == state.episode[mask] + 1).all()
    other_batch = core.reset(params, data, state.rows(torch.tensor([2])), torch.tensor([True]),
                             core.Key(7, torch.tensor([2])))
    assert _equal(other_batch, again.rows(torch.tensor([2])))


def test_temporal_actions_follow_the_frame_links():
    params, data = core.EnvParams(), _data(temporal=True)
    state = core.reset(params, data, core.EnvState.empty(8, torch.device("cpu")), torch.ones(8, dtype=torch.bool),
                       core.Key(0, torch.arange(8)))
    assert len(set(state.slot.tolist())) == 3  # every image is viewed by some environment
    stay = core.move(params, data, state, torch.zeros(8, dtype=torch.int64))  # noop: same slot, same box
    previous = core.move(params, data, state, torch.full((8,), params.num_actions))
    following = core.move(params, data, state, torch.full((8,), params.num_actions + 1))
    assert previous.slot.tolist() == data.neighbours[state.slot, 0].tolist()
    assert following.slot.tolist() == data.neighbours[state.slot, 1].tolist()
    assert torch.equal(previous.box, stay.box) and torch.equal(following.box, stay.box)  # no move in space


def test_state_and_data_are_frozen_and_the_task_is_checked():
    import dataclasses

    state = core.EnvState.empty(2, torch.device("cpu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.box = torch.zeros(2, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        _data().labels = torch.zeros(1)
    with pytest.raises(ValueError, match="task=42 is invalid"):
        core.EnvParams(task=42)
    with pytest.raises(ValueError, match="needs obs_mode='dict'"):
        core.EnvParams(task="search")


# ------------------------------------------------------------------------------------------ exact annotations


def _shapely_coverage(view, boxes, labels, num_categories):
    """Reference: shapely's polygon union of each category's boxes, clipped to the view, over the view's area."""
    from shapely.geometry import box as rectangle
    from shapely.ops import unary_union

    out = torch.zeros(len(view), num_categories, dtype=torch.float64)
    for i in range(len(view)):
        window = rectangle(*view[i].tolist())
        for c in range(num_categories):
            parts = [rectangle(*boxes[i, j].tolist()) for j in range(boxes.shape[1]) if labels[i, j] == c]
            if parts:
                out[i, c] = unary_union(parts).intersection(window).area / window.area
    return out


def _random_boxes(n, m, generator, low=0.0, high=1.0):
    corners = low + (high - low) * torch.rand(n, m, 2, 2, generator=generator)
    return torch.cat([corners.amin(2), corners.amax(2)], dim=-1)


@pytest.mark.parametrize("case", ["random", "one-category-overlapping", "tiny-objects", "padding-and-outside"])
def test_exact_coverage_matches_polygon_clipping(case):
    g = torch.Generator().manual_seed({"random": 0, "one-category-overlapping": 1, "tiny-objects": 2,
                                       "padding-and-outside": 3}[case])
    n, m, a = 64, 6, 4
    views = _random_boxes(n, 1, g)[:, 0]
    boxes = _random_boxes(n, m, g)
    labels = torch.randint(0, a, (n, m), generator=g)
    if case == "one-category-overlapping":  # every box of category 2, most of them overlapping each other
        labels[:] = 2
        boxes = _random_boxes(n, m, g, 0.3, 0.7)
    elif case == "tiny-objects":  # objects smaller than 1% of the view, inside it
        w, h = views[:, 2:3] - views[:, 0:1], views[:, 3:4] - views[:, 1:2]
        side = 0.08 * torch.rand(n, m, 2, generator=g)  # at most 0.08 x 0.08 = 0.64% of the view
        corner = torch.rand(n, m, 2, generator=g) * (1 - side)
        x0, y0 = views[:, 0:1] + corner[..., 0] * w, views[:, 1:2] + corner[..., 1] * h
        boxes = torch.stack([x0, y0, x0 + side[..., 0] * w, y0 + side[..., 1] * h], dim=-1)
    elif case == "padding-and-outside":  # padded rows (-1, zero boxes) last; some boxes entirely outside the view
        labels[:, 4:] = -1
        boxes[:, 4:] = 0
        boxes[:, 0] = torch.tensor([1.5, 1.5, 2.0, 2.0])
    got = core.coverage(views, boxes, labels, a)
    reference = _shapely_coverage(views, boxes, labels, a)
    torch.testing.assert_close(got.double(), reference, rtol=0, atol=1e-5)
    if case == "tiny-objects":
        assert (got.sum(1) > 0).all(), "an object smaller than one grid cell must still be seen"
        assert float(reference.max()) < 0.065


def test_exact_coverage_hand_computed_and_where_the_grid_is_wrong():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0], [0.9, 0.1, 0.93, 0.13]]])
    labels = torch.tensor([[0, 1, 0, 2]])
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    # car: 0.5 + 0.25; person 1/16; the speck (category 2) 0.03 x 0.03, which no point of a 16 x 16 grid hits.
    torch.testing.assert_close(core.coverage(whole, boxes, labels, 3), torch.tensor([[0.75, 1 / 16, 0.0009]]))
    assert float(core.grid_coverage(whole, boxes, labels, 3, grid=16)[0, 2]) == 0.0
    # A view over the car's right edge (x 0.4 to 0.5 of it) holding the whole speck: view area 0.6 x 0.2.
    view = torch.tensor([[0.4, 0.0, 1.0, 0.2]])
    expected = torch.tensor([[0.1 * 0.2 / 0.12, 0.0, 0.03 * 0.03 / 0.12]])
    torch.testing.assert_close(core.coverage(view, boxes, labels, 3), expected)
    # The grid mode stays available, and is what coverage(grid=G) and EnvParams(coverage_grid=G) select.
    torch.testing.assert_close(core.coverage(view, boxes, labels, 3, grid=8),
                               core.grid_coverage(view, boxes, labels, 3, 8))
    assert core.EnvParams().coverage_grid is None
    with pytest.raises(ValueError, match="coverage_grid=1 is invalid"):
        core.EnvParams(coverage_grid=1)
