"""The pretrainer: loss falls, checkpoints round-trip, kill-and-resume is exact, DDP keeps ranks equal, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from agents.checkpoint import CheckpointError, load_checkpoint, load_encoder, load_network
from agents.config import PretrainConfig, parse_config
from agents.pretrain import main, train


def tiny(tiny_shapes, tmp_path, **overrides) -> PretrainConfig:
    values = dict(root=str(tiny_shapes), encoder_depth=1, encoder_dim=64, obs_size=32, embed_dim=32, value_depth=1,
                  num_next_actions=4, total_steps=8, batch_size=8, num_transitions=64, num_envs=8, warmup_steps=2,
                  checkpoint_every=2, out=str(tmp_path / "run"), probe=False, progress=False)
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.mark.parametrize("annotations", ["labels", "views", "prototypes", "captions"])
def test_every_source_trains_and_its_loss_falls(tiny_shapes, tmp_path, annotations):
    config = tiny(tiny_shapes, tmp_path, annotations=annotations, total_steps=60, lr=3e-3, num_transitions=256,
                  batch_size=16)
    summary = train(config)
    losses = summary["losses"]
    assert summary["step"] == 60 and len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)


def test_checkpoint_round_trip(tiny_shapes, tmp_path):
    config = tiny(tiny_shapes, tmp_path, annotations="captions", total_steps=4)
    train(config)
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert payload["step"] == 4 and payload["config"] == config
    assert "tokenizer" in payload["extra"] and payload["extra"]["num_categories"] == 30
    network, loaded_config = load_network(tmp_path / "run" / "checkpoint.pt")
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, payload["model"][name]), name
    encoder, _ = load_encoder(tmp_path / "run" / "checkpoint.pt")
    features = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 64) and loaded_config.annotations == "captions"


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_shapes, tmp_path):
    straight = tiny(tiny_shapes, tmp_path / "a")
    train(straight)
    interrupted = tiny(tiny_shapes, tmp_path / "b")
    train(interrupted, stop_after=5)  # killed after step 5: the last checkpoint is from step 4
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["step"] == 4
    train(tiny(tiny_shapes, tmp_path / "b", resume=True))
    a = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for part in ("model", "target"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"


@pytest.mark.slow
def test_two_process_gloo_torchrun_keeps_ranks_equal(tiny_shapes, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "agents.pretrain", "--root", str(tiny_shapes), "--encoder-depth", "1", "--encoder-dim", "64",
               "--obs-size", "32", "--embed-dim", "32", "--value-depth", "1", "--num-next-actions", "4",
               "--total-steps", "4", "--batch-size", "8", "--num-transitions", "32", "--num-envs", "8",
               "--warmup-steps", "1", "--out", str(out), "--no-probe", "--no-progress"]
    env = {**os.environ, "VIEW_ENV_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["rank_checksums"]
    assert first == second


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of agents.pretrain"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_model(tiny_shapes, tmp_path):
    train(tiny(tiny_shapes, tmp_path, total_steps=2))
    with pytest.raises(CheckpointError, match=r"another model: \['encoder_dim'\]"):
        train(tiny(tiny_shapes, tmp_path, total_steps=4, encoder_dim=32, resume=True))
    path = tmp_path / "run" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["embed_dim"] = 16  # weights no longer fit the config
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_network(path)


def test_bad_arguments(tiny_shapes, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(["--annotations", "pixels"])
    assert "--annotations 'pixels' is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--gamma", "1.5"])
    assert "--gamma 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not divide"):
        train(tiny(tiny_shapes, tmp_path, patch_size=5))
    code = main(["--root", str(tiny_shapes), "--out", str(tmp_path / "r"), "--resume", "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_command_line_runs_and_probes(tiny_shapes, tmp_path, capsys):
    args = ["--root", str(tiny_shapes), "--encoder-depth", "1", "--encoder-dim", "64", "--obs-size", "32",
            "--embed-dim", "32", "--value-depth", "1", "--total-steps", "3", "--batch-size", "8",
            "--num-transitions", "32", "--num-envs", "8", "--warmup-steps", "1", "--probe-train-images", "24",
            "--out", str(tmp_path / "cli"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "random init" in out and "presence_map" in out
    results = json.loads((tmp_path / "cli" / "probe.json").read_text())
    assert set(results) == {"pretrained", "random init"}


def test_probe_command_on_a_real_checkpoint(tiny_shapes, tmp_path, capsys):
    from agents import probe

    train(tiny(tiny_shapes, tmp_path, total_steps=2))
    scores = probe.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "p.json"),
                         "--epochs", "5", "--no-progress"])
    assert set(scores) >= {"presence_map", "box_top1", "knn_top1", "count_acc", "count_mae"}
    assert json.loads((tmp_path / "p.json").read_text())["scores"] == scores
    assert "presence_map" in capsys.readouterr().out


def test_training_from_collected_shards(tiny_shapes, tmp_path):
    from agents import collect

    shards = tmp_path / "shards"
    code = collect.main(["--env", "shapes", "--root", str(tiny_shapes), "--out", str(shards), "--num-transitions",
                         "64", "--num-envs", "8", "--obs-size", "32", "--shard-size", "32"])
    assert code == 0
    summary = train(tiny(tiny_shapes, tmp_path, data=str(shards), total_steps=3, annotations="views"))
    assert summary["step"] == 3
    with pytest.raises(ValueError, match="32-px views but --obs-size is 48"):
        train(tiny(tiny_shapes, tmp_path, data=str(shards), obs_size=48))
