"""The pretrainer's network built from its configuration: encoder, annotation source and value head in a
:class:`agents.gvf.GVFNetwork`.

It sits between the configuration and everything that needs the network: ``config -> network -> checkpoint ->
pretrain``, and the probes read the network back through :mod:`agents.checkpoint`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from agents.config import PretrainConfig
from agents.gvf import GVFNetwork
from agents.models import CaptionTokenizer, ViewEncoder, build_encoder
from agents.sources import CaptionSource, LabelSource, PrototypeSource, ViewSource

#: Fields that define the network: a checkpoint resumes only under the same values.
MODEL_FIELDS = ("annotations", "encoder", "encoder_depth", "encoder_dim", "patch_size", "pool", "obs_size", "embed_dim",
                "action_tokens", "action_bins", "value_depth", "value_dim", "num_prototypes", "text_dim", "text_depth")


def encoder_overrides(config: PretrainConfig) -> dict[str, Any]:
    """The keyword overrides :func:`agents.models.build_encoder` gets for ``config`` (the project's ViTs only)."""
    if not config.encoder.startswith("vit"):
        return {}
    overrides: dict[str, Any] = {k: v for k, v in {"depth": config.encoder_depth, "dim": config.encoder_dim}.items()
                                 if v is not None}
    overrides["pool"] = config.pool
    if "dim" in overrides:
        overrides["heads"] = max(1, overrides["dim"] // 64)
    return overrides


def build_network(config: PretrainConfig, num_categories: int, tokenizer: CaptionTokenizer | None = None
                  ) -> GVFNetwork:
    """The online network described by ``config`` (parameters drawn from the current torch seed).

    Args:
        config: The run; only the fields in :data:`MODEL_FIELDS` matter.
        num_categories: Categories of the ``labels`` source (the environment's annotation width).
        tokenizer: The caption vocabulary, needed by the ``captions`` source.

    Raises:
        ValueError: ``annotations="captions"`` without a tokenizer, or an encoder setting its builder refuses.
    """
    encoder = build_encoder(config.encoder, config.obs_size, config.patch_size, **encoder_overrides(config))
    d = config.embed_dim
    if config.annotations == "views":
        source: nn.Module = ViewSource(encoder.dim, d)
    elif config.annotations == "prototypes":
        source = PrototypeSource(encoder.dim, d, num_prototypes=config.num_prototypes, teacher=config.dino_teacher,
                                 teacher_temperature=config.teacher_temperature, koleo_weight=config.koleo_weight)
    elif config.annotations == "captions":
        if tokenizer is None:
            raise ValueError("annotations='captions' needs a caption tokenizer built from the dataset's captions")
        source = CaptionSource(tokenizer, d, text_dim=config.text_dim, text_depth=config.text_depth)
    else:
        source = LabelSource(num_categories, d)
    return GVFNetwork(encoder, source, d, action_bins=config.action_bins, value_depth=config.value_depth,
                      action_tokens=config.action_tokens, value_dim=config.value_dim)


def build_view_encoder(config: PretrainConfig) -> ViewEncoder:
    """The project's encoder of ``config`` alone, ``uint8`` views in (:class:`agents.models.ViewEncoder`): no
    heads, no category count, no tokenizer. Parameters come from the current torch seed, exactly as
    :func:`build_network` draws its encoder (it builds the encoder first), so under one seed both hold the same
    initial encoder."""
    return ViewEncoder(build_encoder(config.encoder, config.obs_size, config.patch_size, **encoder_overrides(config)))


def random_init_encoder(config: PretrainConfig) -> ViewEncoder:
    """The encoder the "random init" probe rows measure: :func:`build_view_encoder` from torch seed ``seed + 1``
    (a run starts from seed ``seed``), in eval mode. The global torch random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return build_view_encoder(config).eval()

