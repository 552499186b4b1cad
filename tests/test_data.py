"""Logged view transitions: relative boxes, episode boundaries, the replay buffer, shard files, policies, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.collect import (
    CallablePolicy,
    SB3Policy,
    TransitionCollector,
    UniformRelativeBox,
    main,
    make_policy,
    transitions_from_step,
)
from agents.data import (
    INDEX_NAME,
    ReplayBuffer,
    ShardDataset,
    ShardFormatError,
    absolute_box,
    concat_transitions,
    relative_box,
    transition_fields,
    write_shards,
)
from view_env.vector import ViewTransformVectorEnv

OBS = 16  # small views keep the tests fast


def make_env(tiny_shapes, num_envs=4, **kwargs):
    kwargs.setdefault("action_mode", "continuous")
    kwargs.setdefault("obs_size", OBS)
    return ViewTransformVectorEnv(num_envs, dataset="shapes", root=str(tiny_shapes), progress=False, **kwargs)


def collect_batches(tiny_shapes, steps, seed=0, **kwargs):
    collector = TransitionCollector(make_env(tiny_shapes, **kwargs), seed=seed)
    return [collector.next_batch() for _ in range(steps)]


def synthetic(n, start=0, obs_size=4, num_categories=3):
    """``n`` transitions whose ``image_index`` counts from ``start`` (a unique row id) and fields derive from it."""
    ids = torch.arange(start, start + n)
    out = {}
    for key, (shape, dtype) in transition_fields(obs_size, num_categories).items():
        value = ids.view(-1, *([1] * len(shape))).expand(n, *shape)
        out[key] = (value % 251).to(dtype) if dtype == torch.uint8 else value.to(dtype).clone()
    return out


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
    for batch in collect_batches(tiny_shapes, 5):
        torch.testing.assert_close(absolute_box(batch["box"], batch["rel_box"]), batch["next_box"])
        assert batch["rel_box"].dtype == torch.float32 and batch["rel_box"].shape == (4, 4)


# ----------------------------------------------------------------------------------------------- episode boundaries


def test_no_transition_crosses_an_episode_boundary(tiny_shapes):
    env = make_env(tiny_shapes, num_envs=3, max_episode_steps=2)
    steps = []
    step = env.step

    def recording_step(actions):
        out = step(actions)
        steps.append(out)
        return out

    env.step = recording_step
    collector = TransitionCollector(env, seed=3)
    batches = [collector.next_batch() for _ in range(6)]
    for t, batch in enumerate(batches):
        obs, _, _, truncated, info = steps[t]
        assert torch.equal(batch["image_index"], batch["next_image_index"])
        if t % 2 == 1:  # every episode ends at its second step
            assert truncated.all() and info["_final_obs"].all()
            assert torch.equal(batch["next_view"], info["final_obs"])
            assert not torch.equal(batch["next_view"], obs), "x' must be the last view, not the next episode's first"
            for key in ("box", "aug", "annotation", "image_index"):
                assert torch.equal(batch[f"next_{key}" if key != "annotation" else key], info["final_info"][key])
            if t + 1 < len(batches):  # the next transition starts from the new episode's first view
                assert torch.equal(batches[t + 1]["view"], obs) and torch.equal(batches[t + 1]["box"], info["box"])
        else:
            assert not truncated.any() and torch.equal(batch["next_view"], obs)
            assert torch.equal(batch["next_box"], info["box"]) and torch.equal(batch["annotation"], info["annotation"])
        if t % 2 == 1:  # within an episode x is the previous step's x'
            assert torch.equal(batch["view"], batches[t - 1]["next_view"])
            assert torch.equal(batch["box"], batches[t - 1]["next_box"])
        # The anchor is the episode's first view (x itself at an episode's first step); x's annotation is the
        # previous step's x' annotation within an episode.
        first = batches[t - t % 2]["view"]
        assert torch.equal(batch["anchor_view"], first)
        if t % 2 == 1:
            assert torch.equal(batch["view_annotation"], batches[t - 1]["annotation"])


def test_transitions_from_step_picks_final_rows_only():
    """Where only some environments end, only their x' comes from final_obs / final_info."""
    n, s = 3, 4

    def state(fill):
        return {"box": torch.tensor([[0.0, 0.0, 0.5, 0.5]] * n) + fill, "aug": torch.full((n, 7), fill),
                "annotation": torch.full((n, 2), fill), "image_index": torch.full((n,), int(fill * 10))}

    obs, info = torch.zeros(n, 3, s, s, dtype=torch.uint8), state(0.0)
    next_obs = torch.full((n, 3, s, s), 1, dtype=torch.uint8)
    ended = torch.tensor([False, True, False])
    next_info = {**state(0.2), "final_obs": torch.full((n, 3, s, s), 2, dtype=torch.uint8), "_final_obs": ended,
                 "final_info": state(0.1), "_final_info": ended}
    batch = transitions_from_step(obs, info, next_obs, next_info)
    assert batch["next_view"][:, 0, 0, 0].tolist() == [1, 2, 1]
    torch.testing.assert_close(batch["next_aug"][:, 0], torch.tensor([0.2, 0.1, 0.2]))
    torch.testing.assert_close(batch["annotation"][:, 0], torch.tensor([0.2, 0.1, 0.2]))
    assert batch["next_image_index"].tolist() == [2, 1, 2]
    torch.testing.assert_close(batch["rel_box"][1], torch.tensor([0.2, 0.2, 1.2, 1.2]))
    # A dict observation (obs_mode="dict") contributes its view.
    dict_batch = transitions_from_step({"view": obs}, info, {"view": next_obs},
                                       {**next_info, "final_obs": {"view": next_info["final_obs"]}})
    assert torch.equal(dict_batch["next_view"], batch["next_view"])


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
    collector = TransitionCollector(make_env(tiny_shapes, num_envs=4), seed=0)
    buffer = ReplayBuffer(10, OBS, collector.num_categories)
    assert collector.collect(buffer, 3, progress=False) == 12
    assert len(buffer) == 10
    with pytest.raises(ValueError, match="obs_size"):
        collector.collect(ReplayBuffer(10, OBS + 1, collector.num_categories), 1, progress=False)


# ----------------------------------------------------------------------------------------------- shards


def test_shards_round_trip_exactly(tiny_shapes, tmp_path):
    collector = TransitionCollector(make_env(tiny_shapes, num_envs=4), seed=0)
    batches = [collector.next_batch() for _ in range(6)]  # 24 transitions
    dataset = write_shards(tmp_path / "shards", batches, 22, shard_size=8, metadata={"dataset": "shapes"})
    assert len(dataset) == 22 and dataset.counts == [8, 8, 6]
    assert (dataset.obs_size, dataset.num_categories) == (OBS, 30)
    expected = {key: value[:22] for key, value in concat_transitions(batches).items()}
    assert_transitions_equal(ShardDataset(tmp_path / "shards").load_all(), expected)
    index = json.loads((tmp_path / "shards" / INDEX_NAME).read_text())
    assert index["num_transitions"] == 22 and [s["file"] for s in index["shards"]] == [p.name for p in
                                                                                       dataset.shard_paths]
    buffer = ReplayBuffer(30, OBS, 30)
    assert dataset.fill(buffer) == 22
    assert_transitions_equal({k: v[:22] for k, v in buffer.storage.items()}, expected)

    # A collector as the source: exactly num_transitions, with its metadata; the collector goes on afterwards.
    source = TransitionCollector(make_env(tiny_shapes, num_envs=4), seed=0)
    logged = write_shards(tmp_path / "from-collector", source, 10, shard_size=4)
    assert logged.counts == [4, 4, 2] and logged.metadata["env_kwargs"]["action_mode"] == "continuous"
    assert logged.metadata["policy"] == "uniform" and logged.metadata["obs_size"] == OBS
    assert_transitions_equal(logged.load_all(), {k: v[:10] for k, v in concat_transitions(batches[:3]).items()})
    assert_transitions_equal(source.next_batch(), batches[3])  # three steps were taken, not four


def test_iter_batches_visits_every_transition_once(tmp_path):
    dataset = write_shards(tmp_path, [synthetic(7, start=0), synthetic(7, start=7), synthetic(7, start=14)], None,
                           shard_size=5)
    assert dataset.counts == [5, 5, 5, 5, 1]
    batches = list(dataset.iter_batches(4, torch.Generator().manual_seed(0), shards_in_memory=2))
    assert [len(b["image_index"]) for b in batches] == [4, 4, 4, 4, 4, 1]
    seen = torch.cat([b["image_index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(21)) and seen.tolist() != list(range(21))
    for batch in batches:
        torch.testing.assert_close(batch["box"][:, 0], batch["image_index"].float())  # rows stay whole
    dropped = list(dataset.iter_batches(4, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(b["image_index"]) for b in dropped] == [4] * 5
    again = list(dataset.iter_batches(4, torch.Generator().manual_seed(0), shards_in_memory=2))
    assert all(torch.equal(a["image_index"], b["image_index"]) for a, b in zip(batches, again, strict=True))


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
        ShardDataset(tmp_path).load_all()

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
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format_version": 1, "metadata": {}, "shards": []}))
    with pytest.raises(ShardFormatError, match=INDEX_NAME):
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
    with pytest.raises(ValueError, match="'greedy'"):
        make_policy("greedy", env)


def test_callable_policy_actions_are_used(tiny_shapes):
    calls = []

    def still(obs, info):  # keep the view: zero relative move, zero scale and aspect change
        calls.append((obs.shape, tuple(info["box"].shape)))
        return torch.zeros(obs.shape[0], 11)

    collector = TransitionCollector(make_env(tiny_shapes, num_envs=3), still, seed=0)
    assert isinstance(collector.policy, CallablePolicy)
    batch = collector.next_batch()
    assert calls == [((3, 3, OBS, OBS), (3, 4))]
    torch.testing.assert_close(batch["rel_box"], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3), atol=1e-5, rtol=0)


def test_sb3_policy_predicts_valid_actions(tiny_shapes, tmp_path):
    from stable_baselines3 import PPO

    from view_env.wrappers import SB3VecEnv

    env = make_env(tiny_shapes, num_envs=2, obs_size=8)
    model = PPO("MlpPolicy", SB3VecEnv(env), n_steps=4, batch_size=4, policy_kwargs={"net_arch": [8]}, seed=0,
                device="cpu")
    collector = TransitionCollector(env, model, seed=0)
    assert isinstance(collector.policy, SB3Policy)
    obs, info = env.reset(seed=0)
    actions = collector.policy(obs, info)
    assert isinstance(actions, np.ndarray) and actions.shape == (2, 11)
    assert env.action_space.contains(actions.astype(np.float32))
    batch = collector.next_batch()
    assert batch["view"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="observation space"):
        make_policy(model, make_env(tiny_shapes, num_envs=2, obs_size=16))
    model.save(tmp_path / "ppo.zip")  # the CLI loads a saved model and builds a matching environment
    out = tmp_path / "run"
    assert main(["--env", "shapes", "--root", str(tiny_shapes), "--out", str(out), "--num-transitions", "4",
                 "--num-envs", "2", "--obs-size", "8", "--policy", f"ppo:{tmp_path / 'ppo.zip'}"]) == 0
    assert ShardDataset(out).metadata["policy"] == "sb3:PPO"


# ----------------------------------------------------------------------------------------------- determinism, CLI


def test_same_seed_same_transitions(tiny_shapes):
    a, b = collect_batches(tiny_shapes, 4, seed=5), collect_batches(tiny_shapes, 4, seed=5)
    for x, y in zip(a, b, strict=True):
        assert_transitions_equal(x, y)
    c = collect_batches(tiny_shapes, 4, seed=6)
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
    expected = collect_batches(tiny_shapes, 3, seed=1)
    assert_transitions_equal(dataset.load_all(), {k: v[:10] for k, v in concat_transitions(expected).items()})
    with pytest.raises(SystemExit):
        main(args)  # the directory holds shards already
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--num-transitions", "3"]) == 0
    assert ShardDataset(out).counts == [3] and sorted(p.name for p in out.iterdir()) == [INDEX_NAME, "shard-00000.pt"]


@pytest.mark.parametrize("flag, value", [("--env", "bogus"), ("--num-transitions", "0"), ("--num-envs", "many"),
                                         ("--device", "tpu:x"), ("--policy", "greedy"), ("--obs-size", "4")])
def test_cli_rejects_bad_values(tiny_shapes, tmp_path, capsys, flag, value):
    args = {"--env": "shapes", "--root": str(tiny_shapes), "--out": str(tmp_path), "--num-transitions": "4",
            "--num-envs": "2"}
    args[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        main([item for pair in args.items() for item in pair])
    assert exit_info.value.code == 2 and value in capsys.readouterr().err


def test_collector_refuses_other_autoreset_modes(tiny_shapes):
    with pytest.raises(ValueError, match="SAME_STEP"):
        TransitionCollector(make_env(tiny_shapes, autoreset_mode="next_step"))
