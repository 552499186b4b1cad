"""Gymnasium's wrappers on what gym.make_vec returns: the torch-native RecordEpisodeStatistics against Gymnasium's
own (on numpy, through ArrayConversion) as the reference, and the wrappers that work as they are."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import vector as gym_vector

import view_env  # noqa: F401  (registers the ids)
from view_env.wrappers import NormalizeObservation, NormalizeReward, RecordEpisodeStatistics


def make_vec(tiny_shapes, **kwargs):
    kwargs = {"num_envs": 4, "root": str(tiny_shapes), "split": "train", "obs_size": 16, "progress": False,
              "max_episode_steps": 5, **kwargs}
    return gym.make_vec("ViewTransform-Shapes-v0", **kwargs)


def _run(env, actions, seed=0):
    """Episode statistics and observations over a fixed action sequence."""
    env.reset(seed=seed)
    episodes, rewards = [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(np.asarray(torch.as_tensor(reward).cpu()))
        if "episode" in info:
            mask = np.asarray(torch.as_tensor(info["_episode"]).cpu())
            episodes.append({k: np.asarray(torch.as_tensor(v).cpu())[mask] for k, v in info["episode"].items()}
                            | {"envs": np.nonzero(mask)[0]})
    return episodes, rewards


@pytest.mark.parametrize("autoreset_mode", ["same_step", "next_step"])
def test_torch_record_episode_statistics_matches_gymnasiums(tiny_shapes, autoreset_mode):
    """The same episodes, returns and lengths as Gymnasium's wrapper on the numpy-converted env, with search
    rewards and success terminations mixed with truncations."""
    kwargs = {"task": "search", "target": "circle", "action_mode": "continuous", "autoreset_mode": autoreset_mode}
    generator = np.random.default_rng(0)
    actions = [generator.uniform(-1, 1, (4, 11)).astype(np.float32) for _ in range(23)]
    ours, _ = _run(RecordEpisodeStatistics(make_vec(tiny_shapes, **kwargs)), [torch.from_numpy(a) for a in actions])
    reference_env = gym_vector.RecordEpisodeStatistics(
        gym_vector.ArrayConversion(make_vec(tiny_shapes, **kwargs), env_xp=torch, target_xp=np))
    theirs, _ = _run(reference_env, actions)
    assert len(ours) == len(theirs) >= 4
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine["envs"], reference["envs"])
        np.testing.assert_array_equal(mine["l"], reference["l"])
        np.testing.assert_allclose(mine["r"], reference["r"])
    wrapped = RecordEpisodeStatistics(make_vec(tiny_shapes, **kwargs))
    _run(wrapped, [torch.from_numpy(a) for a in actions])
    assert list(wrapped.length_queue) == list(reference_env.length_queue)
    assert wrapped.episode_count == reference_env.episode_count


def test_record_episode_statistics_masked_reset_and_key_clash(tiny_shapes):
    env = RecordEpisodeStatistics(make_vec(tiny_shapes, autoreset_mode="disabled", max_episode_steps=3))
    env.reset(seed=1)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(4, dtype=torch.long))
    assert info["_episode"].all() and (info["episode"]["l"] == 3).all()
    assert info["episode"]["r"].dtype == torch.float32 and info["episode"]["l"].device == torch.device("cpu")
    mask = torch.tensor([True, False, True, False])
    env.reset(options={"reset_mask": mask})
    assert env.episode_lengths.tolist() == [0, 3, 0, 3]
    clash = RecordEpisodeStatistics(make_vec(tiny_shapes, max_episode_steps=1), stats_key="annotation")
    clash.reset(seed=0)
    with pytest.raises(ValueError, match="the info key 'annotation' exists already"):
        clash.step(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("wrapper", ["ClipAction", "RescaleAction"])
def test_gymnasium_action_wrappers_work_as_they_are(tiny_shapes, wrapper):
    base = make_vec(tiny_shapes, action_mode="continuous")
    env = gym_vector.ClipAction(base) if wrapper == "ClipAction" else gym_vector.RescaleAction(base, 0.0, 1.0)
    obs, _ = env.reset(seed=0)
    for _ in range(6):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 3)
    assert isinstance(obs, torch.Tensor) and obs.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("wrapper", ["NormalizeObservation", "NormalizeReward", "RecordEpisodeStatistics"])
def test_numpy_wrappers_after_array_conversion(tiny_shapes, wrapper):
    """The documented route for Gymnasium's other wrappers: ArrayConversion to numpy first."""
    base = make_vec(tiny_shapes, task="search", target="circle",
                    autoreset_mode="next_step" if wrapper == "NormalizeObservation" else "same_step")
    env = getattr(gym_vector, wrapper)(gym_vector.ArrayConversion(base, env_xp=torch, target_xp=np))
    obs, _ = env.reset(seed=0)
    for _ in range(8):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(obs, np.ndarray) and isinstance(reward, np.ndarray) and np.isfinite(obs).all()


def test_sb3_adapter_is_loaded_on_first_use():
    import subprocess
    import sys

    code = ("import sys, view_env.wrappers; assert 'stable_baselines3' not in sys.modules; "
            "from view_env.wrappers import SB3VecEnv; assert 'stable_baselines3' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gymnasium_wrappers_on_the_single_environment(tiny_shapes):
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("ViewTransform-Shapes-SearchCircle-v0", root=str(tiny_shapes),
                                                        split="train", obs_size=16, progress=False,
                                                        max_episode_steps=4))
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (3, 16, 16)
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert info["episode"]["l"] >= 1 and info["episode"]["r"] == float(terminated)


@pytest.mark.parametrize("autoreset_mode", ["same_step", "next_step"])
def test_torch_normalize_reward_matches_gymnasiums(tiny_shapes, autoreset_mode):
    # A dense reward (the coverage of the first category) so that the statistics move at every step.
    kwargs = {"task": lambda annotation: annotation[:, 0], "action_mode": "continuous",
              "autoreset_mode": autoreset_mode}
    generator = np.random.default_rng(1)
    actions = [generator.uniform(-1, 1, (4, 11)).astype(np.float32) for _ in range(20)]
    _, ours = _run(NormalizeReward(make_vec(tiny_shapes, **kwargs), gamma=0.9), [torch.from_numpy(a) for a in actions])
    reference = gym_vector.NormalizeReward(
        gym_vector.ArrayConversion(make_vec(tiny_shapes, **kwargs), env_xp=torch, target_xp=np), gamma=0.9)
    _, theirs = _run(reference, actions)
    assert sum(float(np.abs(r).sum()) for r in theirs) > 0, "no reward in the run: the comparison would be empty"
    for mine, expected in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)


def test_torch_normalize_observation_matches_gymnasiums(tiny_shapes):
    kwargs = {"autoreset_mode": "next_step", "max_episode_steps": 3}
    ours = NormalizeObservation(make_vec(tiny_shapes, **kwargs))
    reference = gym_vector.NormalizeObservation(
        gym_vector.ArrayConversion(make_vec(tiny_shapes, **kwargs), env_xp=torch, target_xp=np))
    assert ours.single_observation_space == reference.single_observation_space
    mine, _ = ours.reset(seed=2)
    theirs, _ = reference.reset(seed=2)
    for step in range(7):
        np.testing.assert_allclose(mine.numpy(), theirs, rtol=1e-4, atol=1e-4)
        action = np.full(4, step % 9)
        mine, *_ = ours.step(torch.from_numpy(action))
        theirs, *_ = reference.step(action)
    assert mine.dtype == torch.float32 and abs(float(mine.mean())) < 1.0
    ours.update_running_mean = False
    frozen = ours.obs_rms.mean.clone()
    ours.step(torch.zeros(4, dtype=torch.long))
    assert torch.equal(ours.obs_rms.mean, frozen)
    with pytest.raises(ValueError, match="needs autoreset_mode NEXT_STEP or DISABLED"):
        NormalizeObservation(make_vec(tiny_shapes))
    with pytest.raises(TypeError, match="needs image observations"):
        NormalizeObservation(make_vec(tiny_shapes, obs_mode="dict", autoreset_mode="next_step"))
    with pytest.raises(ValueError, match="does not support partial resets"):
        ours.reset(options={"reset_mask": torch.tensor([True, False, True, True])})


def test_record_video_on_the_single_environment(tiny_shapes, tmp_path):
    pytest.importorskip("moviepy", reason="Gymnasium's RecordVideo writes its files with moviepy (the dev extras)")
    env = gym.wrappers.RecordVideo(
        gym.make("ViewTransform-Shapes-v0", root=str(tiny_shapes), split="train", obs_size=16, progress=False,
                 render_mode="rgb_array", max_episode_steps=5),
        str(tmp_path / "videos"), episode_trigger=lambda episode: True, disable_logger=True)
    env.reset(seed=0)
    for _ in range(5):
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
