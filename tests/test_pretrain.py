"""The pretrainer: loss falls, checkpoints round-trip, kill-and-resume is exact, DDP keeps ranks equal, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from agents.checkpoint import CheckpointError, load_checkpoint, load_encoder, load_network
from agents.config import PretrainConfig, parse_config
from agents.pretrain import main, train
from view_env import default_canvas_size
from view_env.data.shapes import CATEGORIES


def tiny(tiny_shapes, tmp_path, **overrides) -> PretrainConfig:
    values = dict(root=str(tiny_shapes), obs_size=32, embed_dim=32, value_depth=1, value_dim=32,
                  num_next_actions=4, total_steps=8, batch_size=8, buffer_size=64, num_envs=4, warmup_steps=2,
                  checkpoint_every=2, out=str(tmp_path / "run"), probe=False, progress=False)
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.mark.parametrize("annotations", ["labels", "views", "captions"])
def test_every_source_trains_and_its_loss_falls(tiny_shapes, tmp_path, annotations):
    config = tiny(tiny_shapes, tmp_path, annotations=annotations, total_steps=60, lr=3e-3, buffer_size=256,
                  batch_size=16)
    summary = train(config)
    losses = summary["losses"]
    assert summary["step"] == 60 and len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)


def test_the_prototype_source_trains(tiny_shapes, tmp_path):
    """DINO's loss need not fall in a short run from a collapsed start (centring spreads the teacher, so the
    cross-entropy can rise); the run must stay finite and move every part of the network. The loss itself is
    checked against a plain reference in tests/test_gvf.py."""
    config = tiny(tiny_shapes, tmp_path, annotations="prototypes", total_steps=20, lr=3e-3, buffer_size=256,
                  batch_size=16)
    torch.manual_seed(config.seed)
    from agents.network import build_network

    initial = build_network(config, len(CATEGORIES)).state_dict()
    summary = train(config)
    assert all(math.isfinite(loss) for loss in summary["losses"])
    network, _ = load_network(tmp_path / "run" / "checkpoint.pt")
    for part in ("encoder", "phi_head", "value_head", "source.prototypes", "source.prototypes_ab"):
        moved = [not torch.equal(value, initial[name]) for name, value in network.state_dict().items()
                 if name.startswith(part) and value.is_floating_point()]
        assert moved and any(moved), f"{part} did not train"


def test_checkpoint_round_trip(tiny_shapes, tmp_path):
    config = tiny(tiny_shapes, tmp_path, annotations="captions", total_steps=4)
    train(config)
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert payload["step"] == 4 and payload["config"] == config
    assert "tokenizer" in payload["extra"] and payload["extra"]["num_categories"] == len(CATEGORIES)
    # The first fill of 64, then batch / replay ratio = 4 fresh transitions before each of steps 1, 2, 3.
    assert payload["extra"]["delivered"] == 64 + 3 * 8 // 2
    network, loaded_config = load_network(tmp_path / "run" / "checkpoint.pt")
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, payload["model"][name]), name
    encoder, _ = load_encoder(tmp_path / "run" / "checkpoint.pt")
    features = encoder(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.pooled.shape == (2, 256) and features.tokens.shape == (2, 16, 256)
    assert loaded_config.annotations == "captions" and not encoder.training


@pytest.mark.parametrize("annotations", ["views", "prototypes"])
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_shapes, tmp_path, annotations):
    """The replay buffer is rebuilt from the stream and the run continues bit for bit (BatchNorm statistics, the
    DINO centre and the optimiser state included)."""
    straight = tiny(tiny_shapes, tmp_path / "a", annotations=annotations, replay_ratio=0.5)
    train(straight)
    interrupted = tiny(tiny_shapes, tmp_path / "b", annotations=annotations, replay_ratio=0.5)
    train(interrupted, stop_after=5)  # killed after step 5: the last checkpoint is from step 4
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["step"] == 4
    train(tiny(tiny_shapes, tmp_path / "b", annotations=annotations, replay_ratio=0.5, resume=True))
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
               "-m", "agents.pretrain", "--root", str(tiny_shapes), "--value-dim", "32",
               "--obs-size", "32", "--embed-dim", "32", "--value-depth", "1", "--num-next-actions", "4",
               "--total-steps", "4", "--batch-size", "8", "--buffer-size", "32", "--num-envs", "4",
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
    with pytest.raises(CheckpointError, match=r"another model: \['value_dim'\]"):
        train(tiny(tiny_shapes, tmp_path, total_steps=4, value_dim=64, resume=True))
    with pytest.raises(CheckpointError, match=r"another data stream: \['views'\]"):
        train(tiny(tiny_shapes, tmp_path, total_steps=4, views=3, resume=True))
    path = tmp_path / "run" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["embed_dim"] = 16  # weights no longer fit the config
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_network(path)


def test_a_checkpoint_from_before_crop_area_loads_with_the_law_it_was_trained_with(tiny_shapes, tmp_path):
    """Runs before ``crop_area`` existed drew their views' area log-uniformly: their checkpoints say so on loading
    (agents.config.LEGACY_DEFAULTS), while a new run draws it uniformly, as torchvision's RandomResizedCrop."""
    train(tiny(tiny_shapes, tmp_path, total_steps=2))
    path = tmp_path / "run" / "checkpoint.pt"
    assert load_checkpoint(path)["config"].crop_area == "uniform" == PretrainConfig().crop_area
    payload = torch.load(path, weights_only=True)
    del payload["config"]["crop_area"]
    torch.save(payload, path)
    assert load_checkpoint(path)["config"].crop_area == "log-uniform"
    with pytest.raises(CheckpointError, match=r"another data stream: \['crop_area'\]"):
        train(tiny(tiny_shapes, tmp_path, total_steps=4, resume=True))


def test_bad_arguments(tiny_shapes, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(["--annotations", "pixels"])
    assert "--annotations 'pixels' is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--gamma", "1.5"])
    assert "--gamma 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not divide"):
        train(tiny(tiny_shapes, tmp_path, encoder="vit_tiny", patch_size=5))
    for flags, message in ((["--policy", "greedy"], "--policy 'greedy' is invalid"),
                           (["--views", "1"], "--views 1 is invalid"),
                           (["--replay-ratio", "0"], "--replay-ratio 0.0 is invalid"),
                           (["--replay-ratio", "-2"], "--replay-ratio -2.0 is invalid"),
                           (["--num-workers", "-1"], "--num-workers -1 is invalid"),
                           (["--weight-decay", "-1"], "--weight-decay -1.0 is invalid"),
                           (["--crop-scale", "0.5,0.1"], "--crop-scale")):
        with pytest.raises(SystemExit):
            parse_config(flags)
        assert message in capsys.readouterr().err, flags
    code = main(["--root", str(tiny_shapes), "--out", str(tmp_path / "r"), "--resume", "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name, value", [
    *((name, 0) for name in ("obs_size", "embed_dim", "num_next_actions", "action_bins", "total_steps",
                             "batch_size", "buffer_size", "num_envs", "max_episode_steps", "checkpoint_every",
                             "num_prototypes", "value_depth", "value_dim", "probe_train_images")),
    ("env", "mnist"), ("annotations", "pixels"), ("encoder", "vgg"), ("pool", "max"), ("gamma", 1.0),
    ("backup", "softmax"), ("bootstrap_weight", -1.0), ("replay_ratio", 0.0), ("policy", "greedy"), ("views", 1),
    ("crop_scale", (0.5, 0.1)), ("crop_ratio", (2.0, 1.0)), ("crop_area", "normal"), ("ema_momentum", 1.5),
    ("lr", 0.0),
    ("weight_decay", -1.0), ("warmup_steps", -1), ("num_workers", -1), ("augmentations", ("sepia",)),
])
def test_each_invalid_field_names_its_own_flag(name, value):
    """Every check of PretrainConfig reports the field it checks (not a neighbour checked in the same breath)."""
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ValueError, match=rf"^{flag} .* is invalid: expected ") as error:
        PretrainConfig(**{name: value})
    assert str(error.value).startswith(f"{flag} {value!r} is invalid")


def test_a_view_size_the_environment_refuses_names_the_flag():
    with pytest.raises(ValueError, match=r"^--obs-size 4: obs_size=4 is invalid: expected an integer >= 8"):
        PretrainConfig(obs_size=4)


def test_command_line_runs_and_probes(tiny_shapes, tmp_path, capsys):
    args = ["--root", str(tiny_shapes), "--value-dim", "32", "--obs-size", "32",
            "--embed-dim", "32", "--value-depth", "1", "--total-steps", "3", "--batch-size", "8",
            "--buffer-size", "32", "--num-envs", "4", "--warmup-steps", "1", "--probe-train-images", "24",
            "--out", str(tmp_path / "cli"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "random init" in out and "presence_map" in out
    results = json.loads((tmp_path / "cli" / "probe.json").read_text())
    assert set(results) == {"pretrained", "random init", "colour grid", "chance"}
    assert {"attn_box_top1", "attn_presence_map", "box_top1"} <= set(results["pretrained"])


def test_probe_command_on_a_real_checkpoint(tiny_shapes, tmp_path, capsys):
    from agents import probe

    train(tiny(tiny_shapes, tmp_path, total_steps=2))
    assert probe.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "p.json"),
                       "--epochs", "5", "--no-progress"]) == 0
    record = json.loads((tmp_path / "p.json").read_text())
    scores = record["scores"]["checkpoint"]
    assert set(scores) >= {"presence_map", "box_top1", "knn_top1", "count_acc", "count_mae"}
    # the environment's canvas rule
    assert record["canvas_size"] == default_canvas_size(record["protocol"]["view_size"])
    out = capsys.readouterr().out
    assert "presence_map" in out and f"{scores['presence_map']:.4f}" in out
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert probe.main(["--checkpoint", str(corrupt), "--no-progress"]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("shard_format", ["pt", "tar"])
def test_training_from_collected_shards(tiny_shapes, tmp_path, shard_format):
    from agents import collect

    shards = tmp_path / "shards"
    code = collect.main(["--env", "shapes", "--root", str(tiny_shapes), "--out", str(shards), "--num-transitions",
                         "64", "--num-envs", "4", "--obs-size", "32", "--shard-size", "32",
                         "--shard-format", shard_format])
    assert code == 0 and {p.suffix for p in shards.iterdir() if p.name != "index.json"} == {f".{shard_format}"}
    summary = train(tiny(tiny_shapes, tmp_path, data=str(shards), total_steps=3, annotations="views",
                         buffer_size=16, batch_size=8, replay_ratio=1.0))
    assert summary["step"] == 3 and summary["delivered"] == 16 + 2 * 8  # streamed in order, past the first fill
    with pytest.raises(ValueError, match="32-px views but --obs-size is 48"):
        train(tiny(tiny_shapes, tmp_path, data=str(shards), obs_size=48))


def test_every_preset_is_a_valid_configuration():
    from agents.config import PRESETS

    for name, preset in PRESETS.items():
        config = parse_config(["--preset", name])
        for field, value in preset.overrides.items():
            assert getattr(config, field) == (tuple(value) if isinstance(value, list) else value), (name, field)
        assert "Command: python -m agents.pretrain --preset " + name in preset.doc


def test_without_a_target_network_the_target_is_the_online_network(tiny_shapes, tmp_path):
    """The "no target network" ablation: momentum 0 at every step, so after each update the target holds exactly
    the online parameters (the next step's TD target is the online network's, without a gradient)."""
    config = tiny(tiny_shapes, tmp_path, annotations="views", total_steps=4, target_network=False)
    summary = train(config)
    assert summary["ema_base_momentum"] == 0.0
    assert all(m["momentum"] == 0.0 for m in summary["metrics"])
    assert summary["target_drift"] == 0.0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for name, value in checkpoint["model"].items():
        assert torch.equal(value, checkpoint["target"][name]), name
    with_target = train(tiny(tiny_shapes, tmp_path / "ema", annotations="views", total_steps=4, ema_momentum=0.99))
    assert with_target["ema_base_momentum"] > 0.9 and with_target["target_drift"] > 0
    assert parse_config(["--no-target-network"]).target_network is False


def test_each_step_records_how_much_its_two_views_overlap(tiny_shapes, tmp_path):
    """``pair_iou`` / ``pair_disjoint``: the batch's mean IoU of x and x' and the fraction of pairs sharing no pixel
    (the paper: gains grow as the crops overlap less). Two crops each covering at least half of the image always
    overlap; crops of at most a quarter of it often do not."""
    large = train(tiny(tiny_shapes, tmp_path / "large", annotations="views", total_steps=6, crop_scale=(0.5, 1.0)))
    small = train(tiny(tiny_shapes, tmp_path / "small", annotations="views", total_steps=6, crop_scale=(0.05, 0.25)))
    assert all(m["pair_disjoint"] == 0.0 and 0.0 < m["pair_iou"] <= 1.0 for m in large["metrics"])
    mean = {name: sum(m["pair_iou"] for m in run["metrics"]) / 6 for name, run in (("large", large), ("small", small))}
    assert mean["small"] < mean["large"], mean
    assert sum(m["pair_disjoint"] for m in small["metrics"]) > 0


def test_training_curves_go_to_tensorboard(tiny_shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.pretrain import CurveLog, read_curves

    summary = train(tiny(tiny_shapes, tmp_path, annotations="views", total_steps=6))
    log_dir = tmp_path / "run" / "tensorboard"
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/base", "loss/bootstrap", "bootstrap/target_entropy", "bootstrap/uniform",
            "schedule/lr", "schedule/ema_momentum", "target/drift", "speed/views_per_second",
            "speed/collect_fraction", "data/pair_iou", "data/pair_disjoint"} <= tags
    losses = events.Scalars("loss/total")
    assert [e.step for e in losses] == list(range(6))
    assert [round(e.value, 4) for e in losses] == [round(v, 4) for v in summary["losses"]]
    for tag, key in (("bootstrap/uniform", "uniform"), ("schedule/lr", "lr"), ("loss/bootstrap", "bootstrap")):
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([m[key] for m in summary["metrics"]],
                                                                        rel=1e-5)
    # read_curves: the same events through TensorBoard's reader, thinned on request.
    curves = read_curves(log_dir, ["loss/total", "target/drift", "no/such/tag"])
    assert set(curves) == {"loss/total", "target/drift"}
    assert curves["loss/total"] == [(e.step, e.value) for e in losses]
    assert [step for step, _ in read_curves(log_dir, ["loss/total"], points=3)["loss/total"]] == [0, 2, 5]
    with pytest.raises(FileNotFoundError, match="holds no TensorBoard event file"):
        read_curves(tmp_path)
    probes = CurveLog(tmp_path / "probes")
    probes.probes(6, {"pretrained": {"box_top1": 0.5}, "random init": {"box_top1": 0.25}})
    probes.close()
    events = EventAccumulator(str(tmp_path / "probes"))
    events.Reload()
    assert events.Scalars("probe/random_init/box_top1")[0].value == pytest.approx(0.25)


def test_no_tensorboard_writes_no_events(tiny_shapes, tmp_path):
    train(tiny(tiny_shapes, tmp_path, total_steps=2, tensorboard=False))
    assert not (tmp_path / "run" / "tensorboard").exists()
    custom = tmp_path / "curves"
    train(tiny(tiny_shapes, tmp_path, total_steps=2, log_dir=str(custom), out=str(tmp_path / "other")))
    assert any(custom.glob("events.out.tfevents.*"))


def test_a_timm_encoder_pretrains_and_reloads(tiny_shapes, tmp_path):
    config = tiny(tiny_shapes, tmp_path, encoder="timm:vit_tiny_patch16_224", patch_size=8, total_steps=3)
    summary = train(config)
    assert summary["step"] == 3 and all(math.isfinite(v) for v in summary["losses"])
    network, loaded = load_network(tmp_path / "run" / "checkpoint.pt")
    assert loaded.encoder == "timm:vit_tiny_patch16_224" and network.encoder.num_tokens == 16
    with pytest.raises(SystemExit):
        parse_config(["--encoder", "timm:"])


def test_bf16_autocast_only_where_the_cpu_computes_bf16_natively():
    """oneDNN calls bf16 "supported" on any AVX512 CPU, where it is emulated and slower than float32 (docstring of
    ``native_cpu_bf16``); the rule reads the CPU's own flags, checked here against ``/proc/cpuinfo``."""
    from agents.pretrain import native_cpu_bf16, use_bf16

    cpu = torch.device("cpu")
    assert not use_bf16(PretrainConfig(bf16=False), cpu)
    assert use_bf16(PretrainConfig(), cpu) == native_cpu_bf16()
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from (not Linux)")
    flags = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    assert native_cpu_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
