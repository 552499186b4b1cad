"""An exported encoder loads back (with timm alone for timm encoders) and gives the checkpoint's features."""

from __future__ import annotations

import json

import pytest
import torch

from agents.checkpoint import CheckpointError, load_encoder
from agents.config import PretrainConfig
from agents.export import CARD, WEIGHTS, load_export, main
from agents.pretrain import train


def pretrained(tiny_shapes, tmp_path, **overrides):
    config = PretrainConfig(root=str(tiny_shapes), obs_size=32, embed_dim=32, value_depth=1, value_dim=32,
                            num_next_actions=4, total_steps=3, batch_size=8, buffer_size=64, num_envs=4,
                            warmup_steps=1, checkpoint_every=3, out=str(tmp_path / "run"), probe=False,
                            progress=False, tensorboard=False, **overrides)
    train(config)
    return tmp_path / "run" / "checkpoint.pt"


def views(seed: int = 0) -> torch.Tensor:
    """``uint8 [2, 3, 32, 32]``: what the project's encoders take."""
    return torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [{"encoder": "cnn"}, {"encoder": "timm:resnet18"},
                                       {"encoder": "timm:vit_tiny_patch16_224", "patch_size": 8},
                                       {"encoder": "vit_tiny", "encoder_depth": 1, "encoder_dim": 64}])
def test_export_reloads_to_the_checkpoints_features(tiny_shapes, tmp_path, overrides, capsys):
    checkpoint = pretrained(tiny_shapes, tmp_path, **overrides)
    out = tmp_path / "export"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out / WEIGHTS}" in capsys.readouterr().out
    card = json.loads((out / CARD).read_text())
    assert card["architecture"] == overrides["encoder"] and card["view_size"] == 32
    assert card["trained"]["steps"] == 3 and len(card["mean"]) == 3
    reference, _ = load_encoder(checkpoint)
    encoder, _ = load_export(out)
    with torch.no_grad():
        expected, got = reference(views()), encoder(views())
    torch.testing.assert_close(got.pooled, expected.pooled)
    torch.testing.assert_close(got.tokens, expected.tokens)
    # timm alone reads it: timm: encoders and the vit_* presets (timm ViTs); the cnn has no timm counterpart.
    assert ("timm_name" in card) == (overrides["encoder"] != "cnn")
    if "timm_name" in card:
        import timm

        model = timm.create_model(card["timm_name"], pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(out / WEIGHTS)}, **card["timm_kwargs"])
        with torch.no_grad():
            # timm's model takes what the card says: [0, 1] RGB normalised with its mean and std.
            mean, std = (torch.tensor(card[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
            features = model.eval().forward_features((views().float() / 255 - mean) / std)
            pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, expected.pooled)


def test_bad_exports_are_refused(tiny_shapes, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(corrupt), "--out", str(tmp_path / "x")]) == 2
    assert f"checkpoint {corrupt} is corrupt or not a torch file" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds no export"):
        load_export(tmp_path / "empty")
    checkpoint = pretrained(tiny_shapes, tmp_path)
    main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")])
    (tmp_path / "export" / WEIGHTS).write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="the export is corrupt"):
        load_export(tmp_path / "export")
