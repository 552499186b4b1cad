"""Export a pretrained encoder to take away: plain safetensors weights and a model card.

    python -m agents.export --checkpoint runs/ab-simclr/checkpoint.pt --out exports/ab-simclr

writes ``OUT/model.safetensors`` (the frozen encoder's weights, nothing else of the GVF network) and
``OUT/model_card.json`` (architecture, view size, input normalisation, the data and steps it was trained on, and the
run's probe scores when ``probe.json`` lies beside the checkpoint). Load it back:

- a timm encoder (``--encoder timm:NAME``, and the ``vit_tiny`` / ``vit_small`` presets, which are timm ViTs) with
  timm alone::

      timm.create_model(NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file="OUT/model.safetensors"),
                        **card["timm_kwargs"])

- any encoder with ``agents.export.load_export("OUT")``, which returns it as an :class:`agents.models.ViewEncoder`
  (``uint8 [B, 3, S, S]`` views in, normalised inside -> tokens ``[B, T, D]`` and pooled ``[B, D]``), and the card;
  ``python -m agents.probe --export OUT`` probes it under the pretrainer's protocol.

The bare weights (what timm loads) take RGB views of ``view_size`` pixels scaled to ``[0, 1]`` and normalised with
the card's ``mean`` and ``std`` (ImageNet statistics), as the pretrainer fed them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.checkpoint import CheckpointError, config_to_dict, load_checkpoint, load_network
from agents.models import IMAGENET_MEAN, IMAGENET_STD, TimmEncoder, ViewEncoder, build_encoder
from agents.network import encoder_overrides

WEIGHTS, CARD = "model.safetensors", "model_card.json"
CARD_FORMAT = "agents-encoder-export"


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's encoder as ``OUT/model.safetensors`` plus ``OUT/model_card.json``; returns ``OUT``.

    Raises:
        CheckpointError: The checkpoint is missing, corrupt, or not of this pretrainer.
    """
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    network, config = load_network(checkpoint)
    step = int(load_checkpoint(checkpoint)["step"])
    encoder = network.encoder
    timm_model = encoder.model if isinstance(encoder, TimmEncoder) else None  # timm: and the vit_* presets
    weights = (timm_model if timm_model is not None else encoder).state_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, str(out / WEIGHTS))
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "architecture": config.encoder,
        "build": {"image_size": config.obs_size, "patch_size": config.patch_size, **encoder_overrides(config)},
        "view_size": config.obs_size,
        "input": "RGB float [B, 3, S, S] in [0, 1], then (x - mean) / std per channel (load_export's ViewEncoder "
                 "takes uint8 [B, 3, S, S] and does this itself)",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "dim": int(encoder.dim), "num_tokens": int(encoder.num_tokens),
        "outputs": "tokens [B, T, D] and pooled [B, D] (agents.models.EncoderOutput)",
        "trained": {"steps": step, "env": config.env, "root": config.root, "split": config.split,
                    "annotations": config.annotations, "gamma": config.gamma,
                    "bootstrap_weight": config.bootstrap_weight, "policy": config.policy},
        "config": config_to_dict(config),
        "checkpoint": str(checkpoint),
    }
    if timm_model is not None:
        card["timm_name"] = encoder.name
        card["timm_kwargs"] = encoder.timm_kwargs
    probes = checkpoint.parent / "probe.json"
    if probes.is_file():
        card["probes"] = json.loads(probes.read_text())
    (out / CARD).write_text(json.dumps(card, indent=2))
    return out


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The exported encoder as a :class:`agents.models.ViewEncoder` (``uint8`` views in; eval mode, on ``device``)
    and its model card.

    Raises:
        CheckpointError: ``directory`` holds no export, or its files are corrupt.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CARD).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} holds no export ({CARD} and {WEIGHTS}); write one with "
                              "`python -m agents.export --checkpoint PATH --out DIR`")
    try:
        card = json.loads((directory / CARD).read_text())
        weights = load_file(str(directory / WEIGHTS))
    except Exception as error:  # a torn JSON or safetensors file
        raise CheckpointError(f"{directory}: the export is corrupt: {type(error).__name__}: {error}") from error
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{directory / CARD} is not a model card of agents.export")
    build = dict(card["build"])
    encoder = build_encoder(card["architecture"], build.pop("image_size"), build.pop("patch_size"), **build)
    target = encoder.model if isinstance(encoder, TimmEncoder) else encoder
    target.load_state_dict(weights)
    return ViewEncoder(encoder).to(device).eval(), card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by agents.pretrain")
    parser.add_argument("--out", required=True, help="the directory to write the export into")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out / WEIGHTS} and {out / CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
