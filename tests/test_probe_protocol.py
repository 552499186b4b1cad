"""One probe protocol for any encoder: ``python -m agents.probe`` on a checkpoint scores exactly what the
pretrainer's own end-of-run probes scored, an export scores what its checkpoint scores, a fresh timm model is probed
alike, and every encoder the project hands out takes uint8 views. Real checkpoints, trained here."""

from __future__ import annotations

import json

import pytest
import torch

from agents import probe
from agents.checkpoint import load_encoder
from agents.config import PretrainConfig
from agents.export import load_export
from agents.export import main as export_main
from agents.gvf import GVFNetwork
from agents.models import ViewEncoder
from agents.network import build_network, build_view_encoder, random_init_encoder
from agents.pretrain import train
from agents.probe import CHANCE, COLOUR_GRID, ProbeProtocol


@pytest.fixture(scope="module")
def run(tiny_shapes, tmp_path_factory):
    """A 3-step run with its end-of-run probes, fitted on 16 of the 24 train images."""
    out = tmp_path_factory.mktemp("run")
    config = PretrainConfig(root=str(tiny_shapes), annotations="views", obs_size=32, embed_dim=32, value_depth=1,
                            value_dim=32, num_next_actions=4, total_steps=3, batch_size=8, buffer_size=64,
                            num_envs=4, warmup_steps=1, out=str(out), probe=True, probe_train_images=16,
                            progress=False, seed=3)
    summary = train(config)
    return config, summary, out


def views(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_the_cli_on_a_checkpoint_scores_what_the_pretrainer_scored(run, tmp_path, capsys):
    config, summary, out = run
    own = json.loads((out / "probe.json").read_text())
    result = tmp_path / "probe.json"
    assert probe.main(["--checkpoint", str(out / "checkpoint.pt"), "--random-init", "--out", str(result),
                       "--no-progress"]) == 0
    record = json.loads(result.read_text())
    assert record["scores"]["checkpoint"] == own["pretrained"]
    assert record["scores"]["random init"] == own["random init"]
    assert record["scores"][COLOUR_GRID] == own[COLOUR_GRID]
    # The protocol is the run's: its data, view size, train subset, smallest crop and seed.
    assert record["protocol"] == ProbeProtocol.from_pretrain(config).to_dict()
    assert record["protocol"]["train_images"] == 16 and record["images"] == {"train": 16, "val": 8}
    assert record["protocol"]["seed"] == 3 and record["protocol"]["min_crop_area"] == config.crop_scale[0]
    printed = capsys.readouterr().out
    assert "fitted on 16 train images" in printed and "checkpoint" in printed and "random init" in printed
    # Fitting on every train image is a different protocol, and says so.
    wider = probe.probe_from_config(probe.ProbeConfig(checkpoint=out / "checkpoint.pt", all_train_images=True,
                                                      floor=False, progress=False))
    assert wider["images"]["train"] == 24 and wider["protocol"]["train_images"] is None


def test_train_returns_the_network_and_its_timings(run):
    config, summary, out = run
    assert isinstance(summary["network"], GVFNetwork)
    assert set(summary["timings"]) == {"fill_s", "collect_s", "optimise_s", "probe_s"}
    assert all(value >= 0 for value in summary["timings"].values()) and summary["timings"]["probe_s"] > 0
    assert "network" not in json.loads((out / "summary.json").read_text())
    reference, _ = load_encoder(out / "checkpoint.pt")
    mine = ViewEncoder(summary["network"].encoder).eval()
    with torch.no_grad():
        torch.testing.assert_close(mine(views()).pooled, reference(views()).pooled)


def test_an_export_scores_what_its_checkpoint_scores(run, tmp_path):
    config, _, out = run
    assert export_main(["--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "export")]) == 0
    exported = probe.probe_from_config(probe.ProbeConfig(export=tmp_path / "export", floor=False, progress=False))
    checkpoint = probe.probe_from_config(probe.ProbeConfig(checkpoint=out / "checkpoint.pt", floor=False,
                                                           progress=False))
    assert exported["scores"]["export"] == checkpoint["scores"]["checkpoint"]
    assert exported["protocol"] == checkpoint["protocol"]
    encoder, card = load_export(tmp_path / "export")
    assert isinstance(encoder, ViewEncoder) and "uint8" in card["input"]


def test_a_fresh_timm_model_is_probed_under_the_same_protocol(tiny_shapes, tmp_path):
    record = probe.probe_from_config(probe.ProbeConfig(timm="resnet18", root=str(tiny_shapes), train_images=12,
                                                       epochs=2, attentive_epochs=2, progress=False))
    assert list(record["scores"]) == ["timm:resnet18", COLOUR_GRID, CHANCE]
    assert record["protocol"]["view_size"] == 32 and record["images"]["train"] == 12
    assert set(record["scores"]["timm:resnet18"]) == set(record["scores"][COLOUR_GRID])


def test_the_encoder_alone_is_the_networks_encoder():
    config = PretrainConfig(encoder="cnn", obs_size=32, seed=5)
    torch.manual_seed(6)
    whole = build_network(config, num_categories=3).encoder
    torch.manual_seed(6)
    alone = build_view_encoder(config)
    state = torch.get_rng_state()
    fresh = random_init_encoder(config)  # torch seed seed + 1 = 6, the global state untouched
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(alone.encoder.state_dict()[name], tensor) and torch.equal(fresh.encoder.state_dict()[name],
                                                                                     tensor), name
    assert not fresh.training and alone.dim == whole.dim and alone.num_tokens == whole.num_tokens
    with torch.no_grad():  # uint8 in, normalised inside
        x = views()
        mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        torch.testing.assert_close(alone.eval()(x).pooled, whole.eval()((x.float() / 255 - mean) / std).pooled)
    with pytest.raises(ValueError, match=r"takes uint8 views \[B, 3, S, S\].*got torch.float32"):
        alone(torch.zeros(1, 3, 32, 32))


def test_bad_input_is_a_clear_error(run, tmp_path, capsys):
    _, _, out = run
    with pytest.raises(SystemExit) as exit_info:
        probe.main([])
    assert exit_info.value.code == 2 and "exactly one of --checkpoint, --export and --timm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--checkpoint", str(out / "checkpoint.pt"), "--timm", "resnet18"])
    assert "given: ['checkpoint', 'timm']" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(SystemExit):
        probe.main(["--checkpoint", str(missing)])
    assert f"--checkpoint {missing} is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--export", str(tmp_path / "no-export")])
    assert "a directory written by python -m agents.export" in capsys.readouterr().err
    assert probe.main(["--timm", "no_such_model_xyz", "--no-progress"]) == 2
    assert "'no_such_model_xyz' is not a timm model" in capsys.readouterr().err
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "model_card.json").write_text("{")
    (tmp_path / "torn" / "model.safetensors").write_bytes(b"\0" * 10)
    assert probe.main(["--export", str(tmp_path / "torn")]) == 2
    assert "the export is corrupt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'images', which has no object labels; pass --dataset shapes|coco"):
        ProbeProtocol.from_pretrain({"env": "images", "obs_size": 32})
    with pytest.raises(ValueError, match="--train-images 0 is invalid"):
        ProbeProtocol(train_images=0)
    with pytest.raises(ValueError, match="--dataset 'images' is invalid"):
        ProbeProtocol(dataset="images")
