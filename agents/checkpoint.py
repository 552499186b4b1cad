"""Checkpoints that describe themselves: config, weights, optimiser and step, loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes), written to a
temporary file in the same folder and moved into place with :func:`os.replace`, so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.config import LEGACY_DEFAULTS, PretrainConfig
from agents.models import CaptionTokenizer, ViewEncoder
from agents.network import build_network

FORMAT = "view_env-agents-gvf"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


def config_to_dict(config: PretrainConfig) -> dict[str, Any]:
    """The config as plain values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_checkpoint(path: str | Path, *, config: PretrainConfig, step: int, model: dict[str, torch.Tensor],
                    target: dict[str, torch.Tensor], optimizer: dict[str, Any], extra: dict[str, Any] | None = None
                    ) -> Path:
    """Write a checkpoint atomically and return its path.

    Args:
        path: Destination file.
        config: The run's configuration.
        step: Optimiser steps completed.
        model: The online network's ``state_dict``.
        target: The target network's ``state_dict``.
        optimizer: The optimiser's ``state_dict``.
        extra: More plain values to keep (e.g. the caption tokenizer's vocabulary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": config_to_dict(config), "step": int(step),
               "model": model, "target": target, "optimizer": optimizer, "extra": extra or {}}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Returns:
        The checkpoint dict, with ``"config"`` turned back into a :class:`PretrainConfig`.

    Raises:
        CheckpointError: The file is missing, unreadable or corrupt, or is not a checkpoint of this pretrainer.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.pt written by "
                              "`python -m agents.pretrain --out DIR` (DIR/checkpoint.pt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {type(error).__name__}: "
                              f"{error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a checkpoint of agents.pretrain (format {found!r}, expected "
                              f"{FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; this code reads "
                              f"version {VERSION}")
    config = dict(payload["config"])
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{path} holds config fields {unknown} that this version does not know")
    config = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in config}, **config}  # written before k existed
    config["augmentations"] = tuple(config.get("augmentations", ()))
    payload["config"] = PretrainConfig(**config)
    return payload


def load_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PretrainConfig]:
    """Rebuild the online network a checkpoint describes and load its weights.

    Raises:
        CheckpointError: As :func:`load_checkpoint`, or when the weights do not fit the model its config describes.
    """
    payload = load_checkpoint(path, map_location=device)
    config, extra = payload["config"], payload["extra"]
    tokenizer = CaptionTokenizer.from_state_dict(extra["tokenizer"]) if "tokenizer" in extra else None
    network = build_network(config, int(extra.get("num_categories", 0)), tokenizer)
    try:
        network.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes (a checkpoint of "
                              f"another model?): {str(error).splitlines()[0]}") from error
    return network.to(device), config


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PretrainConfig]:
    """The frozen encoder of a checkpoint (eval mode) and the run's config, for :mod:`agents.probe`.

    The encoder is a :class:`agents.models.ViewEncoder`: ``uint8 [B, 3, S, S]`` views in (normalised inside, as
    the pretrainer normalised them), an ``EncoderOutput`` (``tokens [B, T, D]``, ``pooled [B, D]``) out; its
    ``.encoder`` is the bare module, which takes normalised floats.
    """
    network, config = load_network(path, device)
    return ViewEncoder(network.encoder).to(device).eval(), config
