"""Logged view transitions: relative boxes, autoreset modes, the replay buffer, shard files, policies, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synthetic

from agents.collect import (
    CallablePolicy,
    SB3Policy,
    TransitionCollector,
    UniformRelativeBox,
    main,
    make_policy,
    rrc_env_kwargs,
)
from agents.data import (
    INDEX_NAME,
    ReplayBuffer,
    ShardDataset,
    ShardFormatError,
    absolute_box,
    concat_transitions,
    pair_iou,
    relative_box,
    write_shards,
)
from view_env import AUGMENTATIONS
from view_env.data.shapes import CATEGORIES
from view_env.vector import ViewTransformVectorEnv

OBS = 16  # small views keep the tests fast


def make_env(tiny_shapes, num_envs=4, **kwargs):
    kwargs.setdefault("action_mode", "continuous")
    kwargs.setdefault("obs_size", OBS)
    return ViewTransformVectorEnv(num_envs, dataset="shapes", root=str(tiny_shapes), progress=False, **kwargs)


def collect_batches(tiny_shapes, rounds, seed=0, **kwargs):
    collector = TransitionCollector(make_env(tiny_shapes, **kwargs), seed=seed)
    return [collector.round(r) for r in range(rounds)]


def assert_transitions_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------- relative boxes


def test_relative_box_hand_computed_and_round_trip():
    box = torch.tensor([[0.2, 0.4, 0.6, 0.8]])  # w = h = 0.4
    next_box = torch.tensor([[0.3, 0.5, 0.5, 0.9]])
    rel = relative_box(box, next_box)
    torch.testing.assert_close(rel, torch.tensor([[0.25, 0.25, 0.75, 1.25]]))
    torch.testing.assert_close(absolute_box(box, rel), next_box)
    torch.testing.assert_close(relative_box(box, box), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    # Unbatched and non-square boxes too.
    a, b = torch.tensor([0.1, 0.0, 0.3, 0.5]), torch.tensor([0.0, 0.25, 0.5, 0.5])
    torch.testing.assert_close(relative_box(a, b), torch.tensor([-0.5, 0.5, 2.0, 1.0]))
    torch.testing.assert_close(absolute_box(a, relative_box(a, b)), b)


def test_collected_rel_box_maps_box_to_next_box(tiny_shapes):
    for batch in collect_batches(tiny_shapes, 3, max_episode_steps=4):
        torch.testing.assert_close(absolute_box(batch["box"], batch["rel_box"], batch["aug"][:, 0]),
                                   batch["next_box"])
        assert batch["rel_box"].dtype == torch.float32 and batch["rel_box"].shape == (16, 4)


def test_pair_iou_hand_computed_and_against_torchvision():
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.4, 0.6]])
    nxt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.0, 1.0, 0.5], [0.6, 0.0, 0.9, 0.1]])
    # Equal; half of each shared (0.125 / 0.375); touching edges; apart.
    torch.testing.assert_close(pair_iou(box, nxt), torch.tensor([1.0, 1 / 3, 0.0, 0.0]))
    torchvision_ops = pytest.importorskip("torchvision.ops")
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 64, 2, 2, generator=generator).sort(dim=-1).values  # (box or next, row, x|y, low|high)
    a, b = (c.transpose(1, 2).reshape(64, 4) for c in corners)  # (x0, y0, x1, y1)
    assert bool((a[:, 2:] > a[:, :2]).all() and (b[:, 2:] > b[:, :2]).all())
    torch.testing.assert_close(pair_iou(a, b), torchvision_ops.box_iou(a, b).diagonal())
    assert pair_iou(a[0], b[0]).shape == ()  # unbatched


# ----------------------------------------------------------------------------------------------- autoreset modes


@pytest.mark.parametrize("policy", ["uniform", "rrc"])
def test_same_step_and_disabled_autoreset_give_the_same_rounds(tiny_shapes, policy):
    """Under SAME_STEP an episode's last view comes from final_obs; under DISABLED it is the returned observation:
    either way x' is the episode's own last view, never the next episode's first."""
    kwargs = rrc_env_kwargs(4, augmentations=("flip",)) if policy == "rrc" else {"max_episode_steps": 3}
    same = TransitionCollector(make_env(tiny_shapes, num_envs=3, **kwargs), policy, seed=2)
    disabled = TransitionCollector(make_env(tiny_shapes, num_envs=3, autoreset_mode="disabled", **kwargs), policy,
                                   seed=2)
    for r in range(2):
        assert_transitions_equal(same.round(r), disabled.round(r))


# ----------------------------------------------------------------------------------------------- replay buffer


def test_buffer_ring_wraps():
    buffer = ReplayBuffer(5, obs_size=4, num_categories=3)
    assert len(buffer) == 0
    buffer.add(synthetic(3, start=0))
    assert len(buffer) == 3 and buffer.position == 3
    buffer.add(synthetic(4, start=3))  # rows 3, 4 then wraps to 0, 1
    assert len(buffer) == 5 and buffer.position == 2
    assert buffer.storage["image_index"].tolist() == [5, 6, 2, 3, 4]
    assert buffer.storage["view"][:, 0, 0, 0].tolist() == [5, 6, 2, 3, 4]
    buffer.add(synthetic(12, start=100))  # more than the capacity: the last five, where the ring puts them
    assert len(buffer) == 5 and buffer.position == (2 + 12) % 5
    assert buffer.storage["image_index"].tolist() == [108, 109, 110, 111, 107]
    buffer.add(synthetic(0))
    assert buffer.position == 4


def test_buffer_samples_only_filled_rows_and_round_trips(tmp_path):
    buffer = ReplayBuffer(10, obs_size=4, num_categories=3)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4)
    buffer.add(synthetic(3, start=7))
    batch = buffer.sample(1000, torch.Generator().manual_seed(0))
    assert set(batch["image_index"].tolist()) == {7, 8, 9}
    assert batch["view"].shape == (1000, 3, 4, 4) and batch["view"].dtype == torch.uint8
    torch.testing.assert_close(batch["box"][:, 0], batch["image_index"].float())  # rows stay whole
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    restored = ReplayBuffer(10, obs_size=4, num_categories=3)
    restored.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert len(restored) == 3 and restored.position == 3
    assert_transitions_equal(restored.sample(50, torch.Generator().manual_seed(1)),
                             buffer.sample(50, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(11, obs_size=4, num_categories=3).load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match="'view'"):
        buffer.add({**synthetic(2), "view": torch.zeros(2, 3, 5, 5, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="missing"):
        buffer.add({k: v for k, v in synthetic(2).items() if k != "rel_box"})


def test_collector_fills_a_buffer(tiny_shapes):
    collector = TransitionCollector(make_env(tiny_shapes, num_envs=4, max_episode_steps=2), seed=0)
    buffer = ReplayBuffer(10, OBS, collector.num_categories)
    assert collector.collect(buffer, 9, progress=False) == 9  # a round of 8, then one more
    assert len(buffer) == 9
    assert_transitions_equal({k: v[:8] for k, v in buffer.storage.items()}, collector.round(0))
    with pytest.raises(ValueError, match="obs_size"):
        collector.collect(ReplayBuffer(10, OBS + 1, collector.num_categories), 1, progress=False)


# ----------------------------------------------------------------------------------------------- shards


def load_all(dataset):
    return concat_transitions(dataset.stream(0, loop=False))


def test_shards_round_trip_exactly(tiny_shapes, tmp_path):
    collector = TransitionCollector(make_env(tiny_shapes, num_envs=4, max_episode_steps=3), seed=0)
    batches = [collector.round(r) for r in range(2)]  # 24 transitions
    dataset = write_shards(tmp_path / "shards", batches, 22, shard_size=8, metadata={"dataset": "shapes"})
    assert len(dataset) == 22 and dataset.counts == [8, 8, 6]
    assert (dataset.obs_size, dataset.num_categories) == (OBS, len(CATEGORIES))
    expected = {key: value[:22] for key, value in concat_transitions(batches).items()}
    assert_transitions_equal(load_all(ShardDataset(tmp_path / "shards")), expected)
    index = json.loads((tmp_path / "shards" / INDEX_NAME).read_text())
    assert index["num_transitions"] == 22 and [s["file"] for s in index["shards"]] == [p.name for p in
                                                                                       dataset.shard_paths]

    # A collector as the source: exactly num_transitions, with its metadata.
    source = TransitionCollector(make_env(tiny_shapes, num_envs=4, max_episode_steps=3), seed=0)
    logged = write_shards(tmp_path / "from-collector", source, 10, shard_size=4)
    assert logged.counts == [4, 4, 2] and logged.metadata["env_kwargs"]["action_mode"] == "continuous"
    assert logged.metadata["policy"] == "uniform" and logged.metadata["obs_size"] == OBS
    assert logged.metadata["pairs"] == "consecutive" and logged.metadata["views_per_episode"] == 4
    assert_transitions_equal(load_all(logged), {k: v[:10] for k, v in batches[0].items()})


def test_shard_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=INDEX_NAME):
        ShardDataset(tmp_path)
    dataset = write_shards(tmp_path, [synthetic(6)], None, shard_size=4)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(tmp_path, [synthetic(6)], None)
    first, second = dataset.shard_paths

    second.write_bytes(second.read_bytes()[:100])  # torn
    with pytest.raises(ShardFormatError, match=second.name):
        ShardDataset(tmp_path).load_shard(1)
    first.write_bytes(b"not a shard at all")
    with pytest.raises(ShardFormatError, match=first.name):
        load_all(ShardDataset(tmp_path))

    dataset = write_shards(tmp_path, [synthetic(6)], None, shard_size=4, overwrite=True)
    payload = torch.load(first, weights_only=True)
    torch.save({**payload, "metadata": {**payload["metadata"], "obs_size": 99}}, first)
    with pytest.raises(ShardFormatError, match=rf"{first.name}.*metadata.*obs_size"):
        dataset.load_shard(0)
    torch.save({**payload, "transitions": synthetic(3)}, first)
    with pytest.raises(ShardFormatError, match=rf"{first.name}.*holds 3 transitions"):
        dataset.load_shard(0)

    second.unlink()
    with pytest.raises(FileNotFoundError, match=second.name):
        ShardDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text("{ not json")
    with pytest.raises(ShardFormatError, match=INDEX_NAME):
        ShardDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format_version": 1, "metadata": {"obs_size": 4,
                                                   "num_categories": 3}, "shards": []}))
    with pytest.raises(ShardFormatError, match="format_version=1"):  # shards of the format before flip-aware boxes
        ShardDataset(tmp_path)


# ----------------------------------------------------------------------------------------------- policies


def test_uniform_policy_draws_valid_actions(tiny_shapes):
    env = make_env(tiny_shapes, num_envs=5)
    policy = make_policy(None, env, seed=1)
    assert isinstance(policy, UniformRelativeBox)
    actions = policy(None, {})
    assert actions.shape == (5, 11) and actions.dtype == torch.float32
    assert env.action_space.contains(actions.numpy())
    discrete_env = make_env(tiny_shapes, num_envs=5, action_mode="discrete")
    discrete = make_policy("uniform", discrete_env, seed=0)
    draws = torch.cat([discrete(None, {}) for _ in range(40)])
    assert draws.dtype == torch.int64 and set(draws.tolist()) <= set(range(16)) and len(set(draws.tolist())) > 8
    discrete.reset(3)
    first = discrete(None, {})
    discrete.reset(3)
    assert torch.equal(first, discrete(None, {})), "reset(seed) restarts the draws"
    with pytest.raises(ValueError, match="'greedy'"):
        make_policy("greedy", env)


def test_callable_policy_actions_are_used(tiny_shapes):
    calls = []

    def still(obs, info):  # keep the view: zero relative move, zero scale and aspect change
        calls.append((obs.shape, tuple(info["box"].shape)))
        return torch.zeros(obs.shape[0], 11)

    collector = TransitionCollector(make_env(tiny_shapes, num_envs=3, max_episode_steps=1), still, seed=0)
    assert isinstance(collector.policy, CallablePolicy)
    batch = collector.round(0)
    assert calls == [((3, 3, OBS, OBS), (3, 4))]
    torch.testing.assert_close(batch["rel_box"], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3), atol=1e-5, rtol=0)


def test_sb3_policy_predicts_valid_actions(tiny_shapes, tmp_path):
    from stable_baselines3 import PPO

    from view_env.wrappers import SB3VecEnv

    env = make_env(tiny_shapes, num_envs=2, obs_size=8, max_episode_steps=2)
    model = PPO("MlpPolicy", SB3VecEnv(env), n_steps=4, batch_size=4, policy_kwargs={"net_arch": [8]}, seed=0,
                device="cpu")
    collector = TransitionCollector(env, model, seed=0)
    assert isinstance(collector.policy, SB3Policy)
    obs, info = env.reset(seed=0)
    actions = collector.policy(obs, info)
    assert isinstance(actions, np.ndarray) and actions.shape == (2, 11)
    assert env.action_space.contains(actions.astype(np.float32))
    batch = collector.round(0)
    assert batch["view"].shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="observation space"):
        make_policy(model, make_env(tiny_shapes, num_envs=2, obs_size=16))
    model.save(tmp_path / "ppo.zip")  # the CLI loads a saved model and builds a matching environment
    out = tmp_path / "run"
    assert main(["--env", "shapes", "--root", str(tiny_shapes), "--out", str(out), "--num-transitions", "4",
                 "--num-envs", "2", "--obs-size", "8", "--augmentations", ",".join(AUGMENTATIONS), "--policy",
                 f"ppo:{tmp_path / 'ppo.zip'}"]) == 0
    assert ShardDataset(out).metadata["policy"] == "sb3:PPO"


# ----------------------------------------------------------------------------------------------- determinism, CLI


def test_same_seed_same_transitions(tiny_shapes):
    a, b = collect_batches(tiny_shapes, 2, seed=5), collect_batches(tiny_shapes, 2, seed=5)
    for x, y in zip(a, b, strict=True):
        assert_transitions_equal(x, y)
    c = collect_batches(tiny_shapes, 2, seed=6)
    assert not torch.equal(a[0]["rel_box"], c[0]["rel_box"])


def test_cli_end_to_end(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--env", "shapes", "--root", str(tiny_shapes), "--out", str(out), "--num-transitions", "10",
            "--num-envs", "4", "--obs-size", str(OBS), "--shard-size", "4", "--seed", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "10 transitions in 3 shards" in printed and "transitions/s" in printed
    dataset = ShardDataset(out)
    assert len(dataset) == 10 and dataset.metadata["env_kwargs"]["num_envs"] == 4
    assert dataset.metadata["seed"] == 1 and dataset.metadata["dataset"] == "shapes"
    assert dataset.metadata["policy"] == "rrc" and dataset.metadata["pairs"] == "all"  # the paper's data by default
    env = make_env(tiny_shapes, num_envs=4, **rrc_env_kwargs(4, augmentations=("flip",)))
    expected = TransitionCollector(env, seed=1).round(0)
    assert_transitions_equal(load_all(dataset), {k: v[:10] for k, v in expected.items()})
    with pytest.raises(SystemExit):
        main(args)  # the directory holds shards already
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--num-transitions", "3"]) == 0
    assert ShardDataset(out).counts == [3] and sorted(p.name for p in out.iterdir()) == [INDEX_NAME, "shard-00000.pt"]


@pytest.mark.parametrize("flag, value", [("--env", "bogus"), ("--num-transitions", "0"), ("--num-envs", "many"),
                                         ("--device", "tpu:x"), ("--policy", "greedy"), ("--obs-size", "4"),
                                         ("--views", "1"), ("--augmentations", "sepia")])
def test_cli_rejects_bad_values(tiny_shapes, tmp_path, capsys, flag, value):
    args = {"--env": "shapes", "--root": str(tiny_shapes), "--out": str(tmp_path), "--num-transitions": "4",
            "--num-envs": "2"}
    args[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and value in err and flag in err  # the message names the flag and its value


def test_collector_refuses_other_autoreset_modes(tiny_shapes):
    with pytest.raises(ValueError, match="SAME_STEP or DISABLED"):
        TransitionCollector(make_env(tiny_shapes, autoreset_mode="next_step"))
    with pytest.raises(ValueError, match="max_episode_steps"):
        TransitionCollector(make_env(tiny_shapes, max_episode_steps=None))
