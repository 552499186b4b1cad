"""Nothing in a step, a reset or a render waits for the device: no ``.item()``, ``.tolist()``, ``.cpu()``,
``.numpy()`` or Python ``bool()``/``int()``/``float()`` of a tensor (on CUDA: ``torch.cuda.set_sync_debug_mode``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest
import torch

from view_env import core
from view_env.render import render_views
from view_env.vector import ViewTransformVectorEnv, aug_from_state

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def reads_raise(allowed: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Make every host read of a tensor raise, except ``allowed[name]`` calls of ``name``; yields the counts."""
    allowed = dict(allowed or {})
    counts = {name: 0 for name in READS}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def guard(name: str):
        def read(self, *args, **kwargs):
            counts[name] += 1
            if counts[name] > allowed.get(name, 0):
                raise AssertionError(f"a step read a tensor from the device: Tensor.{name}")
            return originals[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, guard(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def _rows(obs, mask: torch.Tensor):
    return {k: v[mask] for k, v in obs.items()} if isinstance(obs, dict) else obs[mask]


SETTINGS = [
    {"autoreset_mode": "same_step"},
    {"autoreset_mode": "next_step"},
    {"autoreset_mode": "same_step", "task": "search", "obs_mode": "dict", "init_augment": True},
    {"autoreset_mode": "next_step", "task": "search", "target": "circle", "action_mode": "continuous"},
    {"autoreset_mode": "same_step", "action_mode": "absolute", "init_augment": True},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_steps_read_nothing_from_the_device_and_match_the_checked_env(tiny_shapes, settings):
    common = {"root": str(tiny_shapes), "split": "train", "progress": False, "max_episode_steps": 3, **settings}
    checked = ViewTransformVectorEnv(6, **common)
    free = ViewTransformVectorEnv(6, check_actions=False, **common)
    dense = ViewTransformVectorEnv(6, check_actions=False, **common)
    dense._compact_restarts = False  # the path a GPU takes: every row's first view, selected with torch.where
    generator = torch.Generator().manual_seed(0)
    outputs = [env.reset(seed=5) for env in (checked, free, dense)]
    assert_same(outputs[0], outputs[1])
    assert_same(outputs[0], outputs[2])
    for _ in range(8):  # several episodes end on the way (3-step limit, search successes)
        if checked.params.action_mode == "discrete":
            action = torch.randint(0, checked.single_action_space.n, (6,), generator=generator)
        else:
            action = torch.rand(6, checked.single_action_space.shape[0], generator=generator)
        expected = checked.step(action)
        with reads_raise():
            got_free = free.step(action)
            got_dense = dense.step(action)
        ended = expected[4].get("_final_obs")
        for got in (got_free, got_dense):
            assert_same(expected[:4], got[:4])
            assert_same({k: v for k, v in expected[4].items() if k != "final_obs"},
                        {k: v for k, v in got[4].items() if k != "final_obs"})
            if ended is not None:  # final_obs is valid only where an episode ended
                assert_same(_rows(expected[4]["final_obs"], ended), _rows(got[4]["final_obs"], ended))


def test_a_reset_and_a_render_read_nothing_from_the_device(tiny_shapes):
    env = ViewTransformVectorEnv(4, root=str(tiny_shapes), split="train", progress=False, check_actions=False,
                                 init_augment=True)
    env.reset(seed=0)
    state = env.state
    with reads_raise():
        env.reset(options={"reset_mask": torch.tensor([True, False, True, False])})
        for backend in ("native", "torch"):
            render_views(env.bank.images, state.slot, state.box, 32, aug_from_state(state.aug), backend=backend,
                         check=False, max_blur_sigma=core.AUG_RANGES["blur"][1])


def test_the_action_check_is_one_fused_read(tiny_shapes):
    env = ViewTransformVectorEnv(4, root=str(tiny_shapes), split="train", progress=False, max_episode_steps=2)
    env.reset(seed=0)
    for _ in range(4):
        with reads_raise(allowed={"__bool__": 1}) as counts:
            env.step(torch.zeros(4, dtype=torch.int64))
        assert sum(counts.values()) == 1
    with pytest.raises(ValueError, match=r"discrete actions must lie in \[0, 16\); environments \[2\] got \[99\]"):
        env.step(torch.tensor([0, 0, 99, 0]))


def test_without_checks_bad_actions_are_clamped_not_refused(tiny_shapes):
    env = ViewTransformVectorEnv(2, root=str(tiny_shapes), split="train", progress=False, check_actions=False,
                                 action_mode="continuous")
    env.reset(seed=0)
    obs, *_ = env.step(torch.tensor([[float("nan"), 0.0, 0.0, 0.0] + [0.0] * 7, [float("inf")] * 11]))
    assert obs.shape == (2, 3, 64, 64) and bool(torch.isfinite(env.state.box).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the device-side sync check runs on a "
                    "machine with a GPU")
@pytest.mark.parametrize("autoreset_mode", ["same_step", "next_step"])
def test_cuda_steps_never_synchronise(autoreset_mode):
    env = ViewTransformVectorEnv(64, device="cuda", progress=False, check_actions=False, max_episode_steps=3,
                                 task="search", obs_mode="dict", init_augment=True, autoreset_mode=autoreset_mode)
    env.reset(seed=0)
    actions = torch.randint(0, env.single_action_space.n, (8, 64), device="cuda")
    env.step(actions[0])  # warm-up: first-call allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(1, 8):
            env.step(actions[k])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_device_free_render_equals_the_checked_one(tiny_shapes):
    env = ViewTransformVectorEnv(16, root=str(tiny_shapes), split="train", progress=False, init_augment=True)
    env.reset(seed=3)
    state = env.state
    aug = aug_from_state(state.aug)
    aug = dataclasses.replace(aug, hue=torch.where(torch.arange(16) % 2 == 0, aug.hue, 0.0))  # half unshifted
    assert bool((aug.blur_sigma > 0).any()) and bool((aug.hue != 0).any())
    for backend in ("native", "torch"):
        checked = render_views(env.bank.images, state.slot, state.box, 48, aug, backend=backend)
        free = render_views(env.bank.images, state.slot, state.box, 48, aug, backend=backend, check=False,
                            max_blur_sigma=core.AUG_RANGES["blur"][1])
        assert (checked.int() - free.int()).abs().max() <= 1, backend
