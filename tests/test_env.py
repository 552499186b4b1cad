"""The ViewTransform environments: spaces, autoreset modes, seeding, tasks, checkers, SB3, and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import one_object_coco, write_image
from gymnasium.vector import AutoresetMode

import view_env  # noqa: F401  (registers the ids)
from view_env.data.shapes import CATEGORIES
from view_env.vector import ViewTransformVectorEnv


def make(tiny_shapes, num_envs=4, **kwargs):
    kwargs.setdefault("progress", False)
    return ViewTransformVectorEnv(num_envs, dataset="shapes", root=str(tiny_shapes), **kwargs)


def test_spaces_and_outputs(tiny_shapes):
    env = make(tiny_shapes, num_envs=5)
    obs, info = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (5, 3, 64, 64) and obs.dtype == torch.uint8
    assert env.single_action_space == gym.spaces.Discrete(16)
    assert env.observation_space.shape == (5, 3, 64, 64)
    for key, shape in {"annotation": (5, len(CATEGORIES)), "box": (5, 4), "image_index": (5,), "aug": (5, 7)}.items():
        assert info[key].shape == shape and info[f"_{key}"].all()
    obs, reward, terminated, truncated, info = env.step(torch.zeros(5, dtype=torch.int64))
    assert reward.dtype == torch.float32 and (reward == 0).all()
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool


def test_annotation_matches_a_hand_computed_view(tmp_path):
    root = one_object_coco(tmp_path, [0, 0, 50, 100])  # the left half of a 100 x 100 image
    env = ViewTransformVectorEnv(2, dataset="coco", root=str(root), init_scale=(1.0, 1.0), init_aspect=(1.0, 1.0),
                                 progress=False)
    _, info = env.reset(seed=0)
    torch.testing.assert_close(info["annotation"], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    # Zoom in (sides / 1.25, centred): the view spans x in [0.1, 0.9]; the left half covers 0.4 / 0.8 of it.
    _, _, _, _, info = env.step(torch.tensor([5, 5]))
    torch.testing.assert_close(info["box"][0], torch.tensor([0.1, 0.1, 0.9, 0.9]))
    torch.testing.assert_close(info["annotation"][:, 0], torch.tensor([0.5, 0.5]), atol=1 / 16, rtol=0)
    # Pan left twice: x in [0.0, 0.8]: the object covers 0.5 / 0.8 of the view (to the grid's 1/16).
    for _ in range(2):
        _, _, _, _, info = env.step(torch.tensor([1, 1]))
    torch.testing.assert_close(info["annotation"][:, 0], torch.tensor([0.625, 0.625]), atol=1 / 16, rtol=0)


def test_same_step_autoreset_reports_final_observation(tiny_shapes):
    env = make(tiny_shapes, num_envs=3, max_episode_steps=2)
    env.reset(seed=1)
    obs, _, _, truncated, info = env.step(torch.tensor([6, 6, 6]))
    # final_obs is always there (the step never asks the device whether an episode ended); its mask says none did.
    assert not truncated.any() and not info["_final_obs"].any() and not info["_final_info"].any()
    assert info["final_obs"].shape == obs.shape
    before = env.state.episode.clone()
    obs, _, _, truncated, info = env.step(torch.tensor([5, 5, 5]))
    assert truncated.all()
    assert info["_final_obs"].all() and info["final_obs"].shape == obs.shape
    assert info["final_info"]["box"].shape == (3, 4)
    assert not torch.equal(info["final_obs"], obs), "the returned observation is the new episode's"
    assert (env.state.episode == before + 1).all() and (env.state.step == 0).all()
    torch.testing.assert_close(info["box"], env.state.box)


def test_next_step_autoreset(tiny_shapes):
    env = make(tiny_shapes, num_envs=2, max_episode_steps=2, autoreset_mode="next_step")
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    env.reset(seed=2)
    env.step(torch.tensor([1, 1]))
    obs_end, _, _, truncated, info = env.step(torch.tensor([1, 1]))
    assert truncated.all() and "final_obs" not in info
    obs, reward, terminated, truncated, _ = env.step(torch.tensor([2, 2]))
    assert (reward == 0).all() and not terminated.any() and not truncated.any()
    assert (env.state.step == 0).all(), "the action on the reset step is ignored"
    reference = make(tiny_shapes, num_envs=2, max_episode_steps=2, autoreset_mode="next_step")
    reference.reset(seed=2)
    reference.reset(options={"reset_mask": np.array([True, True])})
    # After a manual reset the episode counter moves on exactly as autoreset did.
    torch.testing.assert_close(reference.state.box, env.state.box)


def test_disabled_autoreset_needs_a_masked_reset(tiny_shapes):
    env = make(tiny_shapes, num_envs=3, max_episode_steps=1, autoreset_mode=AutoresetMode.DISABLED)
    env.reset(seed=3)
    _, _, _, truncated, _ = env.step(torch.tensor([0, 0, 0]))
    assert truncated.all()
    with pytest.raises(RuntimeError, match="reset_mask"):
        env.step(torch.tensor([0, 0, 0]))
    mask = torch.tensor([True, False, True])
    box_before = env.state.box.clone()
    env.reset(options={"reset_mask": mask})
    torch.testing.assert_close(env.state.box[1], box_before[1])
    assert env.state.step.tolist() == [0, 1, 0]
    with pytest.raises(RuntimeError, match=r"\[1\]"):
        env.step(torch.tensor([0, 0, 0]))
    env.reset(options={"reset_mask": np.array([False, True, False])})
    env.step(torch.tensor([0, 0, 0]))


@pytest.mark.parametrize("action_mode", ["discrete", "continuous"])
def test_environment_i_depends_only_on_seed_and_i(tiny_shapes, action_mode):
    small = make(tiny_shapes, num_envs=2, max_episode_steps=3, action_mode=action_mode)
    large = make(tiny_shapes, num_envs=5, max_episode_steps=3, action_mode=action_mode)
    g = torch.Generator().manual_seed(0)
    obs_s, _ = small.reset(seed=11)
    obs_l, _ = large.reset(seed=11)
    torch.testing.assert_close(obs_s, obs_l[:2], rtol=0, atol=0)
    for _ in range(8):  # across two autoresets
        if action_mode == "discrete":
            actions = torch.randint(0, small.single_action_space.n, (5,), generator=g)
        else:
            actions = torch.rand(5, small.single_action_space.shape[0], generator=g) * 2 - 1
        obs_s, r_s, _, tr_s, info_s = small.step(actions[:2])
        obs_l, r_l, _, tr_l, info_l = large.step(actions)
        torch.testing.assert_close(obs_s, obs_l[:2], rtol=0, atol=0)
        torch.testing.assert_close(info_s["box"], info_l["box"][:2], rtol=0, atol=0)
        assert torch.equal(tr_s, tr_l[:2])
    other = make(tiny_shapes, num_envs=2, max_episode_steps=3, action_mode=action_mode)
    assert not torch.equal(other.reset(seed=12)[0], small.reset(seed=11)[0])


def test_search_rewards_and_terminates_on_success(tmp_path):
    big = one_object_coco(tmp_path / "big", [0, 0, 100, 100])
    env = ViewTransformVectorEnv(2, dataset="coco", root=str(big), task="search", obs_mode="dict", progress=False)
    obs, info = env.reset(seed=0)
    assert obs["target"].tolist() == [[1.0, 0.0], [1.0, 0.0]] and info["target_category"].tolist() == [0, 0]
    _, reward, terminated, truncated, info = env.step(torch.tensor([0, 0]))
    assert reward.tolist() == [1.0, 1.0] and terminated.all() and not truncated.any()
    assert info["_final_obs"].all()
    # A target covering 0.02 of the image needs the view zoomed onto it; the initial views are not.
    small = one_object_coco(tmp_path / "small", [0, 0, 10, 20])
    env = ViewTransformVectorEnv(1, dataset="coco", root=str(small), task="search", obs_mode="dict",
                                 init_scale=(1.0, 1.0), max_episode_steps=100, progress=False)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(torch.tensor([0]))
    assert reward.item() == 0 and not terminated.item()
    for _ in range(30):  # zoom in and pan to the top-left corner until found
        _, reward, terminated, _, _ = env.step(torch.tensor([5]))
        _, reward2, terminated2, _, _ = env.step(torch.tensor([1]))
        _, reward3, terminated3, _, _ = env.step(torch.tensor([3]))
        if (terminated | terminated2 | terminated3).item():
            break
    assert (reward + reward2 + reward3).item() == 1.0


def test_callable_task(tiny_shapes):
    env = make(tiny_shapes, num_envs=3, task=lambda annotation: annotation.sum(dim=1))
    _, info = env.reset(seed=0)
    _, reward, terminated, _, info = env.step(torch.zeros(3, dtype=torch.int64))
    torch.testing.assert_close(reward, info["annotation"].sum(dim=1))
    assert not terminated.any()


def test_dict_observation_and_render(tiny_shapes):
    env = make(tiny_shapes, num_envs=2, obs_mode="dict", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"view", "box", "target"} and obs["target"].shape == (2, len(CATEGORIES))
    assert env.observation_space["view"].shape == (2, 3, 64, 64)
    frames = env.render()
    assert frames.shape == (2, 128, 128, 3) and frames.dtype == np.uint8
    red = (frames[..., 0] == 255) & (frames[..., 1] == 32) & (frames[..., 2] == 32)
    assert red.sum(axis=(1, 2)).min() > 100, "the view's outline is drawn"


def test_gym_make_and_make_vec(tiny_shapes):
    env = gym.make("ViewTransform-Shapes-v0", root=str(tiny_shapes), progress=False, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (3, 64, 64) and info["annotation"].shape == (len(CATEGORIES),)
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
    assert steps == 16 and truncated and isinstance(reward, float)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3
    vec = gym.make_vec("ViewTransform-Shapes-v0", num_envs=3, root=str(tiny_shapes), progress=False)
    assert isinstance(vec.unwrapped, ViewTransformVectorEnv) and vec.unwrapped.params.max_episode_steps == 16
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 3, 64, 64)


def test_both_env_checkers(tiny_shapes):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for kwargs in ({}, {"action_mode": "continuous"}, {"task": "search", "obs_mode": "dict"}):
        env = gym.make("ViewTransform-Shapes-v0", root=str(tiny_shapes), progress=False, **kwargs)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)


def test_temporal_action_moves_between_frames(tmp_path):
    for k in range(5):
        write_image(tmp_path / "clip" / f"frame_{k + 1:04d}.jpg", (32, 24), (40 * k, 0, 0))
    env = ViewTransformVectorEnv(1, dataset="video", root=str(tmp_path), temporal=True, progress=False)
    _, info = env.reset(seed=0)
    nxt, prev = env.single_action_space.n - 1, env.single_action_space.n - 2
    start = info["image_index"].item()
    _, _, _, _, info = env.step(torch.tensor([nxt]))
    assert info["image_index"].item() == min(start + 1, 4)
    _, _, _, _, info = env.step(torch.tensor([prev]))
    _, _, _, _, info = env.step(torch.tensor([prev]))
    assert info["image_index"].item() == max(min(start + 1, 4) - 2, 0)


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (torch.zeros(3, dtype=torch.int64), ValueError, r"shape \(4,\)"),
        (torch.zeros(4, dtype=torch.float32), TypeError, "integers"),
        (torch.tensor([0, 1, 16, 2]), ValueError, r"environments \[2\] got \[16\]"),
        (torch.tensor([0, -1, 0, 0]), ValueError, r"\[0, 16\)"),
        ("left", TypeError, "numpy array or torch tensor"),
    ],
)
def test_bad_discrete_actions(tiny_shapes, actions, error, match):
    env = make(tiny_shapes)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(actions)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_continuous_actions(tiny_shapes, bad):
    env = make(tiny_shapes, num_envs=2, action_mode="continuous")
    env.reset(seed=0)
    actions = np.zeros((2, 11), dtype=np.float32)
    actions[1, 3] = bad
    with pytest.raises(ValueError, match=r"environments \[1\] hold NaN or inf"):
        env.step(actions)
    with pytest.raises(ValueError, match=r"shape \(2, 11\)"):
        env.step(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="floating point"):
        env.step(np.zeros((2, 11), dtype=np.int64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"obs_sise": 64}, TypeError, r"unknown keyword argument\(s\) \['obs_sise'\]"),
        ({"task": "search"}, ValueError, "task='search' with target='random' needs obs_mode='dict'"),
        ({"task": "search", "target": "hexagonal"}, ValueError,
         r"target='hexagonal' is not a category of 'shapes': expected 'random' or one of \['circle'"),
        ({"task": "search", "target": 10}, ValueError, r"target=10 is not a category index of 'shapes'.*\[0, 10\)"),
        ({"task": "search", "target": -1}, ValueError, "target=-1 is invalid"),
        ({"target": "circle"}, ValueError, "target='circle' is given but task='none': a target needs task='search'"),
        ({"target": 3}, ValueError, "target=3 is given but task='none'"),
        ({"task": "find"}, ValueError, "task='find' is invalid"),
        ({"autoreset_mode": "sometimes"}, ValueError, "autoreset_mode='sometimes'"),
        ({"render_mode": "human"}, ValueError, "render_mode='human'"),
        ({"action_mode": "joystick"}, ValueError, "action_mode='joystick'"),
        ({"temporal": True}, ValueError, "temporal=True needs a video dataset"),
        ({"split": "val", "dataset_kwargs": {"nope": 1}}, TypeError, "nope"),
    ],
)
def test_bad_keyword_arguments(tiny_shapes, kwargs, error, match):
    with pytest.raises(error, match=match):
        make(tiny_shapes, **kwargs)


def test_contradictory_data_arguments(tiny_shapes):
    env = make(tiny_shapes, num_envs=1)
    with pytest.raises(ValueError, match=r"bank= is given, so \['root'\] would be ignored"):
        ViewTransformVectorEnv(1, bank=env.bank, root="/somewhere")
    with pytest.raises(ValueError, match="num_envs=0"):
        ViewTransformVectorEnv(0, bank=env.bank)
    with pytest.raises(TypeError, match="num_envs= is not an argument of the single environment"):
        gym.make("ViewTransform-Shapes-v0", root=str(tiny_shapes), num_envs=4)
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([1])})


def test_sb3_vec_env_runs_ppo(tiny_shapes):
    from stable_baselines3 import PPO

    from view_env.wrappers import SB3VecEnv

    venv = SB3VecEnv(make(tiny_shapes, num_envs=4, max_episode_steps=4))
    obs = venv.reset()
    assert obs.shape == (4, 3, 64, 64) and obs.dtype == np.uint8
    for _ in range(4):
        obs, rewards, dones, infos = venv.step(np.array([0, 1, 2, 3]))
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert infos[0]["terminal_observation"].shape == (3, 64, 64) and infos[0]["annotation"].shape == (len(CATEGORIES),)
    model = PPO("CnnPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"normalize_images": True, "features_extractor_kwargs": {"features_dim": 32}})
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64


def test_sb3_vec_env_runs_dqn_on_dict_search(tiny_shapes):
    from stable_baselines3 import DQN

    from view_env.wrappers import SB3VecEnv

    venv = SB3VecEnv(make(tiny_shapes, num_envs=2, task="search", obs_mode="dict", max_episode_steps=4))
    model = DQN("MultiInputPolicy", venv, buffer_size=200, learning_starts=16, batch_size=8, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(total_timesteps=48)
    assert model.num_timesteps >= 48


def test_single_env_render_is_letterboxed_to_a_constant_frame(tmp_path):
    root = one_object_coco(tmp_path, [0, 0, 50, 25], size=(200, 100))
    env = gym.make("ViewTransform-COCO-v0", root=str(root), render_mode="rgb_array", progress=False)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    assert (frame[:30] == 0).all() and (frame[-30:] == 0).all(), "a 2:1 image leaves black bands above and below"
    assert (frame[40:88] != 0).any()


def test_large_datasets_stream_through_a_pool(tiny_shapes):
    from view_env.data import ImagePool

    env = make(tiny_shapes, num_envs=3, max_images=8, max_episode_steps=2)
    assert isinstance(env.bank, ImagePool) and len(env.bank) == 8
    env.reset(seed=0)
    seen = set()
    for _ in range(40):
        _, _, _, _, info = env.step(torch.zeros(3, dtype=torch.int64))
        seen.update(info["image_index"].tolist())
        # The annotation always describes the image the environment views.
        slot = env.state.slot
        assert torch.equal(env.bank.dataset_index[slot], info["image_index"])
    env.close()
    assert not env.bank._thread.is_alive()


def test_the_vector_env_is_the_pure_core_plus_rendering(tiny_shapes):
    """Driving view_env.core by hand (as docs/envs.md shows) reproduces the vector env's observations, annotations
    and rewards bit for bit, as long as no episode ends (the autoreset bookkeeping is the class's own)."""
    from view_env import core
    from view_env.render import render_views
    from view_env.vector import aug_from_state

    env = make(tiny_shapes, num_envs=5, obs_size=16, action_mode="continuous", max_episode_steps=None,
               task=lambda annotation: annotation[:, 0])
    obs, info = env.reset(seed=11)
    params, data = env.params, env.data
    state = core.reset(params, data, core.EnvState.empty(5, env.device), torch.ones(5, dtype=torch.bool),
                       core.Key(11, torch.arange(5)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        assert torch.equal(obs, render_views(env.bank.images, state.slot, state.box, params.obs_size,
                                             aug_from_state(state.aug)))
        action = torch.rand(5, params.action_dim, generator=generator) * 2 - 1
        obs, reward, terminated, truncated, info = env.step(action)
        state, annotation, expected_reward, *_ = core.step(params, data, state, action)
        assert torch.equal(info["annotation"], annotation) and torch.equal(reward, expected_reward)


def test_search_for_a_fixed_target_with_image_only_observations(tiny_shapes):
    """``target="circle"``: every episode searches for a circle in an image that holds one; the observation is the
    view alone, and the reward is 1 exactly when the circle covers its success coverage of the view."""
    env = make(tiny_shapes, num_envs=6, task="search", target="circle", obs_mode="view", action_mode="continuous",
               max_episode_steps=5)
    circle = CATEGORIES.index("circle")
    by_index = make(tiny_shapes, num_envs=6, task="search", target=circle, action_mode="continuous",
                    max_episode_steps=5)
    assert env.params.target == by_index.params.target == circle
    obs, info = env.reset(seed=4)
    by_index.reset(seed=4)
    assert isinstance(obs, torch.Tensor) and obs.shape == (6, 3, 64, 64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        assert (info["target_category"] == circle).all()
        assert (env.bank.labels[env.state.slot] == circle).any(dim=1).all(), "an image without a circle"
        assert torch.equal(env.state.slot, by_index.state.slot)
        action = torch.rand(6, env.params.action_dim, generator=generator) * 2 - 1
        obs, reward, terminated, truncated, info = env.step(action)
        by_index.step(action)
        final = info.get("final_info", info)
        reached = final["annotation"][:, circle] >= env.state.target_coverage
        rows = ~info.get("_final_obs", torch.zeros(6, dtype=torch.bool))  # rows that did not restart this step
        assert torch.equal(reward.bool()[rows], reached[rows]) and torch.equal(terminated, reward.bool())


def test_a_fixed_target_that_no_image_holds_is_refused(tmp_path):
    root = one_object_coco(tmp_path / "coco", [10, 10, 30, 30])  # categories 'thing' (one box) and 'other' (none)
    env = ViewTransformVectorEnv(1, dataset="coco", root=str(root), task="search", target="thing", progress=False)
    assert env.params.target == 0
    with pytest.raises(ValueError, match="target='other': no image in the bank holds a 'other'"):
        ViewTransformVectorEnv(1, dataset="coco", root=str(root), task="search", target="other", progress=False)


@pytest.mark.parametrize("env_id, observation", [("ViewTransform-Shapes-Search-v0", dict),
                                                 ("ViewTransform-Shapes-SearchCircle-v0", torch.Tensor)])
def test_registered_search_ids(tiny_shapes, env_id, observation):
    envs = gym.make_vec(env_id, num_envs=3, root=str(tiny_shapes), split="train", obs_size=32, progress=False)
    obs, info = envs.reset(seed=0)
    assert isinstance(obs, observation) and envs.unwrapped.task == "search"
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert reward.shape == (3,)
    envs.close()
