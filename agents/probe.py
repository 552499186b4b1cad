"""Frozen-feature probes that measure an encoder on a held-out split, kept apart from pretraining (as DINO's
``eval_linear.py`` / ``eval_knn.py``).

Data flow: two image banks (train, val) -> :func:`probe_data` renders whole-image views and per-object crops with
their targets -> :func:`encode_views` runs the frozen encoder once per view and keeps its pooled features and its
tokens -> the probes, each a plain function of features or tokens (so each can be checked on toy inputs) ->
:func:`run_probes` gathers one encoder's scores, :func:`probe_encoders` several encoders' (with a colour-grid floor
row), and :func:`format_probe_table` prints them side by side.

Probes (all trained on train features and scored on val features):

- ``presence_map``: linear multi-label object presence (:func:`presence_probe`): a linear layer trained with BCE
  on whole-image features; mean average precision over the categories present in val (:func:`mean_average_precision`).
- ``box_top1``: object classification given a box (:func:`classification_probe`): a linear softmax classifier on
  the features of object crops; top-1 accuracy.
- ``knn_top1``: weighted k-NN (:func:`knn_probe`, k=20, T=0.07, DINO's ``eval_knn`` weighting) on the features of
  the object crops (the box probe's crops and labels: the memory bank is the train crops). DINO's k-NN runs on
  object-centric ImageNet images; a Shapes view holds two to eight objects, and an earlier version, which classed a
  whole view by its largest object, could not rank encoders (chance 0.109, random init 0.114, the labels-trained
  encoder 0.132; docs/benchmarks.md at commit 9df6dd7).
- ``count_acc``, ``count_mae``: object counting (:func:`counting_probe`, meant for Shapes' 2 to 8 objects): ridge
  linear regression from whole-image features to the number of objects; accuracy of the rounded prediction and
  mean absolute error of the raw prediction.
- ``attn_presence_map``, ``attn_box_top1``: the same presence and box tasks through an attentive probe on the
  frozen tokens (:func:`attentive_presence_probe`, :func:`attentive_classification_probe`). The paper finds the
  gains of annotation bootstrapping in probes that attend to tokens, while a linear probe on a pooled feature
  barely moves; these two keys are where to look for them.

Attentive probe (:class:`AttentiveProbe`: AIM's attention-pooling classifier; V-JEPA's pooler adds a residual MLP,
left out here): the tokens are standardised per channel with the mean and std of the train tokens (AIM's
``BatchNorm1d(affine=False)``, frozen at the train statistics; the per-token LayerNorm of V-JEPA's pooler would
erase the brightness and contrast of the colour grid's 3-channel tokens); one learned query, split into ``heads``
heads, cross-attends to them (keys and values: bias-free linear maps of the tokens, ``width`` channels); the heads'
outputs, concatenated, go through a linear layer to the logits. There is no position embedding: the probe reads what
the tokens carry. With one query the attention is linear in the tokens, so it is evaluated as ``logit_ht = x_t .
(W_kh^T q_h) / sqrt(width / heads)`` and ``out_h = W_vh (sum_t softmax_t(logit_ht) x_t)``: the same function as
multi-head attention, at ``O(T * E * heads)`` per image instead of ``O(T * E * width)`` (``E`` channels a token).
The query starts at zero (uniform attention: the probe starts as a linear probe on the mean token and learns where
to look), keys and values at ``N(0, 1 / E)`` from a generator seeded with ``seed``, the output layer at zero. It is
trained like the linear probes (AdamW, cosine learning rate, minibatches from a seeded permutation, one CPU thread;
deterministic on CPU, the global random state untouched), with cross-entropy (box classification, top-1) or BCE
(presence, mAP). The tokens are extracted once under ``torch.no_grad`` and cached in bfloat16 (float32's range in 2
bytes: 10,000 crops of 64 tokens x 128 channels take 164 MB); each minibatch is cast to float32.

Encoder contract: a callable (usually an ``nn.Module`` already on ``device``) from ``uint8 [B, 3, S, S]`` views
(0-255: the encoder normalises them itself, as :class:`agents.models.ViewEncoder` does with the ImageNet mean and
std; every encoder the project hands out is one) to either pooled features, a tensor ``[B, D]``, or an object
with ``.tokens [B, T, E]`` and ``.pooled [B, D]`` (``agents.models.EncoderOutput``, :class:`EncodedViews`). The
pooled probes read ``.pooled`` and the attentive probes ``.tokens``. A pooled-only encoder gets every pooled probe,
and its attentive probes run on a single token, the pooled vector: attention over one token is the identity, so
there they are linear probes (through the value map) on the standardised pooled feature, and say nothing about
tokens.

Colour-grid floor (:class:`ColourGridEncoder`): the mean colour of each cell of a 4 x 4 grid of the view, as an
encoder (tokens: the 16 cells' colours ``[B, 16, 3]``, without their positions; pooled: those 48 numbers, in
place), so that a table can carry the floor of what colour and coarse layout alone solve, measured with exactly the
protocol of the encoders it is set against.

Object crops (:func:`crop_boxes`): each object's box grown to a square with a 10% margin of its longer side on
each side, enlarged where needed to ``min_area`` of the image's area (by default 0.05, the environment's default
``min_scale``: the smallest view the pretrainer trains on) with the same centre, then shifted into the image; a
crop always contains its box. Without that floor 40 to 60% of Shapes' object crops (by generator version) were
smaller than any view the encoder was trained on.

Command line (the flags are the fields of :class:`ProbeConfig`): one of ``--checkpoint`` (read by
``agents.checkpoint.load_encoder``), ``--export`` (``agents.export.load_export``) or ``--timm NAME`` (a fresh timm
model, a baseline), probed under :class:`ProbeProtocol`, the protocol of the pretrainer's own end-of-run probes
(the protocol's fields default to the checkpoint's or the card's run)::

    python -m agents.probe --checkpoint runs/shapes/checkpoint.pt --random-init --out probes.json

It prints a table of scores (the encoder's, optionally its random init's, and the floors: the colour grid's and
chance) and writes them, with the protocol, as JSON to ``--out``; :func:`probe_from_config` returns that record to a
caller and :func:`probe_encoder` probes any encoder from Python.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from agents import cli
from agents.checkpoint import CheckpointError, load_encoder
from agents.cli import check, option
from agents.models import IMAGENET_MEAN, IMAGENET_STD
from view_env import EnvParams, default_canvas_size, render_views
from view_env.data import DatasetNotFoundError, ImageBank, load_dataset

__all__ = [
    "ATTENTIVE_EPOCHS",
    "CHANCE",
    "COLOUR_GRID",
    "MIN_CROP_AREA",
    "AttentiveProbe",
    "ColourGridEncoder",
    "EncodedViews",
    "Encoder",
    "ProbeConfig",
    "ProbeData",
    "ProbeProtocol",
    "ProbeSplit",
    "TokenOutput",
    "attentive_classification_probe",
    "attentive_presence_probe",
    "average_precision",
    "chance_scores",
    "classification_probe",
    "colour_grid_features",
    "counting_probe",
    "crop_boxes",
    "encode_views",
    "extract_features",
    "format_probe_table",
    "knn_probe",
    "main",
    "mean_average_precision",
    "normalise_views",
    "presence_probe",
    "probe_data",
    "probe_encoder",
    "probe_encoders",
    "probe_from_config",
    "run_probes",
]

#: Each object crop is the object's box grown by this fraction of its longer side on every side.
CROP_MARGIN = 0.1
#: Smallest object crop, as a fraction of the image's area: the environment's default ``min_scale``, the smallest
#: view the pretrainer trains on.
MIN_CROP_AREA: float = EnvParams.min_scale
#: Passes over the cached train tokens of each attentive probe (see :func:`run_probes` for the time it takes).
ATTENTIVE_EPOCHS = 20
#: Row name of the colour-grid floor in :func:`probe_encoders`.
COLOUR_GRID = "colour grid"
#: Row name of the image-blind chance scores (:func:`chance_scores`) in :func:`probe_encoders`.
CHANCE = "chance"
#: Datasets with the object labels the probes need.
LABELLED_DATASETS = ("shapes", "coco")


# ----------------------------------------------------------------------------------------------------------------
# Probe data: views, crops and targets rendered from the banks.


@dataclass(frozen=True, eq=False)
class ProbeSplit:
    """Everything the probes need from one split; ``N`` images, ``B`` objects, ``A`` categories, view side ``S``.

    Attributes:
        views: ``uint8 [N, 3, S, S]`` whole-image views (box ``[0, 0, 1, 1]``).
        presence: ``float32 [N, A]`` multi-hot: 1 where the image holds at least one object of the category.
        counts: ``int64 [N]`` number of annotated objects in each image.
        crops: ``uint8 [B, 3, S, S]`` one view per object (see :func:`crop_boxes`).
        crop_boxes: ``float32 [B, 4]`` the normalised ``(x0, y0, x1, y1)`` box each crop was rendered from.
        crop_labels: ``int64 [B]`` category of each object.
        crop_image: ``int64 [B]`` row in :attr:`views` of the image each object belongs to.
        image_index: ``int64 [N]`` row of each image in the bank the split was rendered from.
    """

    views: Tensor
    presence: Tensor
    counts: Tensor
    crops: Tensor
    crop_boxes: Tensor
    crop_labels: Tensor
    crop_image: Tensor
    image_index: Tensor

    def __len__(self) -> int:
        return int(self.views.shape[0])


@dataclass(frozen=True, eq=False)
class ProbeData:
    """The train and val splits of the probes, rendered at ``view_size``, over ``num_categories`` categories, with
    object crops of at least ``min_crop_area`` of their image (see :func:`crop_boxes`)."""

    train: ProbeSplit
    val: ProbeSplit
    num_categories: int
    view_size: int
    min_crop_area: float = MIN_CROP_AREA


def crop_boxes(boxes: Tensor, sizes: Tensor, margin: float = CROP_MARGIN, min_area: float = MIN_CROP_AREA) -> Tensor:
    """The square context crop of each object box, in normalised image coordinates.

    Rule: in pixels of the original image (so crops are not distorted), a square centred on the box whose side is
    the largest of the box's longer side times ``1 + 2 * margin``, ``sqrt(min_area * width * height)`` (a square
    of ``min_area`` of the image's area) and one pixel; then shifted into the image where it sticks out and, only
    where it is larger than the image, clipped to it (only then can it fall short of ``min_area``). A crop
    therefore always contains its box, and a crop enlarged to the minimum area keeps the box's centre unless it
    had to be shifted in. ``min_area=0`` gives the plain context crop.

    Args:
        boxes: ``float32 [B, 4]`` normalised ``(x0, y0, x1, y1)`` object boxes.
        sizes: ``int64 [B, 2]`` original ``(height, width)`` of each object's image.
        margin: Context on each side as a fraction of the box's longer side, ``>= 0``.
        min_area: Smallest crop as a fraction of the image's area, in ``[0, 1]``; by default the environment's
            default ``min_scale``, the smallest view the pretrainer sees.

    Returns:
        ``float32 [B, 4]`` normalised crop boxes with ``x1 > x0`` and ``y1 > y0``.

    Raises:
        ValueError: ``margin < 0`` or ``min_area`` outside ``[0, 1]``.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 (a fraction of the box's longer side), got {margin}")
    if not 0 <= min_area <= 1:
        raise ValueError(f"min_area must be a fraction of the image's area in [0, 1], got {min_area}")
    extent = sizes.flip(-1).to(torch.float32).repeat(1, 2)  # (B, 4): W, H, W, H
    pixels = boxes * extent  # (B, 4) in original pixels
    centre = (pixels[:, :2] + pixels[:, 2:]) / 2  # (B, 2)
    longer = (pixels[:, 2:] - pixels[:, :2]).amax(-1, keepdim=True)  # (B, 1)
    smallest = (min_area * extent[:, :1] * extent[:, 1:2]).sqrt()  # (B, 1): side of a square of min_area
    half = torch.maximum(longer * (1 + 2 * margin), smallest).clamp_min(1.0) / 2  # at least one pixel wide
    limit = extent[:, :2]  # (B, 2): W, H
    low = torch.minimum((centre - half).clamp_min(0), limit - 2 * half).clamp_min(0)  # shift in, then clip
    high = torch.minimum(low + 2 * half, limit)
    return (torch.cat([low, high], -1) / extent).clamp(0, 1)


def _subset(count: int, max_images: int | None, seed: int) -> Tensor:
    """Sorted ``int64`` rows of a random subset of at most ``max_images`` of ``count`` images (all when ``None``)."""
    if max_images is None or max_images >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:max_images].sort().values


def _render_split(bank: ImageBank, rows: Tensor, view_size: int, min_crop_area: float, name: str) -> ProbeSplit:
    device = bank.device
    rows = rows.to(device)
    labels = bank.labels[rows]  # (N, M), -1 padding
    boxes = bank.boxes[rows]  # (N, M, 4)
    valid = labels >= 0
    num_categories = bank.num_categories
    if not bool(valid.any()):
        raise ValueError(
            f"{name} holds no annotated objects in the {len(rows)} images used: the probes need category labels"
        )
    bad = labels[valid & (labels >= num_categories)]
    if bad.numel():
        raise ValueError(f"{name} has category label {int(bad[0])}, outside [0, {num_categories})")

    n = len(rows)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).expand(n, 4).contiguous()
    views = render_views(bank.images, rows, whole, view_size)  # (N, 3, S, S)

    presence = torch.zeros(n, num_categories, dtype=torch.float32, device=device)
    image_row, slot = valid.nonzero(as_tuple=True)  # (B,), (B,) in image-major order
    presence[image_row, labels[image_row, slot]] = 1.0

    object_boxes = boxes[image_row, slot]  # (B, 4)
    crops_at = crop_boxes(object_boxes, bank.sizes[rows][image_row], min_area=min_crop_area)
    crops = render_views(bank.images, rows[image_row], crops_at, view_size)  # (B, 3, S, S)
    return ProbeSplit(
        views=views,
        presence=presence,
        counts=valid.sum(1),
        crops=crops,
        crop_boxes=crops_at,
        crop_labels=labels[image_row, slot],
        crop_image=image_row,
        image_index=rows,
    )


def probe_data(
    bank_train: ImageBank,
    bank_val: ImageBank,
    view_size: int,
    max_images: int | None = None,
    seed: int = 0,
    *,
    min_crop_area: float = MIN_CROP_AREA,
) -> ProbeData:
    """Render the probes' views, crops and targets from a train and a val bank (on the banks' devices).

    Whole-image views are the whole canvas (box ``[0, 0, 1, 1]``, stretched like the bank); each object gets a
    :func:`crop_boxes` crop: its box grown to a square with a 10% margin, enlarged where needed to at least
    ``min_crop_area`` of the image's area (same centre, shifted into the image). Everything is rendered up front:
    ``3 * S * S`` bytes per image and per object (12 KiB at 64 px; the default Shapes train split holds about
    50,000 objects), so use ``max_images`` on large sets.

    Args:
        bank_train: Images the probes are trained on (the k-NN memory bank).
        bank_val: Held-out images the probes are scored on; same categories as ``bank_train``.
        view_size: Side ``S`` of every rendered view and crop.
        max_images: Use a random subset of at most this many images of each bank (all by default).
        seed: Seed of that subset.
        min_crop_area: Smallest object crop as a fraction of its image's area, in ``[0, 1]`` (by default the
            environment's default ``min_scale``, the smallest view the pretrainer trains on; 0 for the plain
            context crop).

    Raises:
        ValueError: The banks disagree on the categories, there are none, ``view_size`` or ``max_images`` is not a
            positive integer, ``min_crop_area`` is outside ``[0, 1]``, or a bank holds no annotated object (or a
            label outside the categories).
    """
    if bank_train.num_categories != bank_val.num_categories:
        raise ValueError(
            f"bank_train has {bank_train.num_categories} categories but bank_val has {bank_val.num_categories}: "
            "both splits must come from the same dataset"
        )
    if bank_train.num_categories < 1:
        raise ValueError(f"the banks have num_categories = {bank_train.num_categories}; the probes need labels")
    if isinstance(view_size, bool) or not isinstance(view_size, int) or view_size < 1:
        raise ValueError(f"view_size must be a positive integer (pixels), got {view_size!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    if not 0 <= min_crop_area <= 1:
        raise ValueError(f"min_crop_area must be a fraction of the image's area in [0, 1], got {min_crop_area}")
    splits = [
        _render_split(bank, _subset(len(bank), max_images, seed), view_size, min_crop_area, name)
        for bank, name in ((bank_train, "bank_train"), (bank_val, "bank_val"))
    ]
    return ProbeData(*splits, bank_train.num_categories, view_size, min_crop_area)


# ----------------------------------------------------------------------------------------------------------------
# Frozen features and tokens.


class TokenOutput(Protocol):
    """What a token encoder returns (``agents.models.EncoderOutput`` is one): ``tokens [B, T, E]`` and ``pooled
    [B, D]``."""

    tokens: Tensor
    pooled: Tensor


#: The encoder contract: ``uint8 [B, 3, S, S]`` views (0-255; the encoder normalises them itself, as
#: :class:`agents.models.ViewEncoder` does) -> pooled ``[B, D]`` or a :class:`TokenOutput`.
Encoder = Callable[[Tensor], Tensor | TokenOutput]


class EncodedViews(NamedTuple):
    """Tokens and pooled features of a set of views (the shape of ``agents.models.EncoderOutput``).

    tokens: ``[N, T, E]`` tokens (cached in bfloat16 by :func:`encode_views`; a pooled-only encoder's single token
        is its pooled vector, ``T = 1``, ``E = D``).
    pooled: ``float32 [N, D]`` one vector per view.
    """

    tokens: Tensor
    pooled: Tensor


def _imagenet_statistics(device: torch.device) -> tuple[Tensor, Tensor]:
    """``float32 [1, 3, 1, 1]`` mean and std (:data:`agents.models.IMAGENET_MEAN`, ``IMAGENET_STD``) on ``device``."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def normalise_views(views: Tensor) -> Tensor:
    """``uint8 [N, 3, S, S]`` views -> ``float32 [N, 3, S, S]``: scaled to ``[0, 1]``, then ``(x - mean) / std``
    per channel with :data:`agents.models.IMAGENET_MEAN` and ``IMAGENET_STD``: what
    :class:`agents.models.ViewEncoder` does before its encoder, for callers holding a bare one."""
    mean, std = _imagenet_statistics(views.device)
    return (views.to(torch.float32) / 255.0 - mean) / std


def _split_output(output: Any, rows: int) -> tuple[Tensor, Tensor]:
    """``(tokens [b, T, E], pooled [b, D])`` of one encoder call on ``rows`` views (see :data:`Encoder`)."""
    if isinstance(output, Tensor):
        if output.dim() != 2 or output.shape[0] != rows:
            raise ValueError(
                f"the encoder returned a tensor of shape {tuple(output.shape)} for {rows} views; expected pooled "
                "features [B, D] (or an object with .tokens [B, T, D] and .pooled [B, D])"
            )
        return output[:, None], output
    tokens, pooled = getattr(output, "tokens", None), getattr(output, "pooled", None)
    if not isinstance(tokens, Tensor) or not isinstance(pooled, Tensor):
        raise ValueError(
            f"the encoder returned a {type(output).__name__}; expected a tensor [B, D] of pooled features or an "
            "object with tensors .tokens [B, T, D] and .pooled [B, D] (such as agents.models.EncoderOutput)"
        )
    bad_tokens = tokens.dim() != 3 or tokens.shape[0] != rows or tokens.shape[1] < 1
    if bad_tokens or pooled.dim() != 2 or pooled.shape[0] != rows:
        raise ValueError(
            f"the encoder returned tokens of shape {tuple(tokens.shape)} and pooled features of shape "
            f"{tuple(pooled.shape)} for {rows} views; expected tokens [B, T, E] with T >= 1 and pooled [B, D]"
        )
    return tokens, pooled


def _encode(
    encoder: Encoder,
    views: Tensor,
    batch_size: int,
    device: str | torch.device,
    token_dtype: torch.dtype | None,
    progress: bool,
    desc: str,
) -> tuple[Tensor | None, Tensor]:
    """Run the frozen encoder over ``views``: ``(tokens [N, T, E] in token_dtype or None, pooled float32 [N, D])``
    on ``device``; tokens are kept only when ``token_dtype`` is given."""
    if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[1] != 3:
        raise ValueError(f"views must be uint8 [N, 3, S, S], got {views.dtype} {tuple(views.shape)}")
    if views.shape[0] == 0:
        raise ValueError(f"views is empty ({tuple(views.shape)}): there is nothing to extract features from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = encoder.training if isinstance(encoder, nn.Module) else False
    if isinstance(encoder, nn.Module):
        encoder.eval()
    token_chunks, pooled_chunks = [], []
    try:
        with torch.no_grad():
            for first in tqdm(range(0, views.shape[0], batch_size), desc=desc, unit="batch", disable=not progress):
                batch = views[first : first + batch_size].to(device)  # uint8 (b, 3, S, S)
                tokens, pooled = _split_output(encoder(batch), batch.shape[0])
                pooled_chunks.append(pooled.to(device=device, dtype=torch.float32))
                if token_dtype is not None:
                    token_chunks.append(tokens.to(device=device, dtype=token_dtype))
    finally:
        if isinstance(encoder, nn.Module):
            encoder.train(was_training)
    return (torch.cat(token_chunks) if token_dtype is not None else None), torch.cat(pooled_chunks)


def extract_features(
    encoder: Encoder,
    views: Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    progress: bool = False,
    desc: str = "features",
) -> Tensor:
    """Pooled features of the frozen encoder: batches of ``uint8`` views, under ``torch.no_grad``, with an
    ``nn.Module`` in eval mode (its previous mode is restored afterwards).

    Args:
        encoder: ``uint8 [B, 3, S, S] -> [B, D]`` pooled features, or an object with ``.pooled [B, D]`` and
            ``.tokens [B, T, E]`` (see :data:`Encoder`); an ``nn.Module`` should already be on ``device``.
        views: ``uint8 [N, 3, S, S]``, on any device.
        batch_size: Views per encoder call.
        device: Where the encoder runs and the features are returned.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        ``float32 [N, D]`` on ``device``.

    Raises:
        ValueError: ``views`` is empty or not ``uint8 [N, 3, S, S]``, ``batch_size < 1``, or the encoder does not
            return one feature row per view.
    """
    return _encode(encoder, views, batch_size, device, None, progress, desc)[1]


def encode_views(
    encoder: Encoder,
    views: Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    token_dtype: torch.dtype = torch.bfloat16,
    progress: bool = False,
    desc: str = "features",
) -> EncodedViews:
    """Tokens and pooled features of the frozen encoder, from one pass over the views (as :func:`extract_features`:
    normalised views, ``torch.no_grad``, eval mode restored afterwards).

    Args:
        encoder: See :data:`Encoder`. A pooled-only encoder (returning a tensor ``[B, D]``) gets one token per view,
            its pooled vector.
        views: ``uint8 [N, 3, S, S]``, on any device.
        batch_size: Views per encoder call.
        device: Where the encoder runs and the outputs are kept.
        token_dtype: The tokens' cache dtype: bfloat16 by default (float32's range in half its memory).
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        :class:`EncodedViews` with ``tokens [N, T, E]`` in ``token_dtype`` and ``pooled float32 [N, D]`` on
        ``device``.

    Raises:
        ValueError: As :func:`extract_features`, or the encoder's tokens are not ``[B, T, E]``.
    """
    tokens, pooled = _encode(encoder, views, batch_size, device, token_dtype, progress, desc)
    return EncodedViews(tokens, pooled)


class ColourGridEncoder(nn.Module):
    """The colour-grid floor as an encoder: the mean colour of each cell of a ``grid x grid`` split of the view.

    It sees colour and coarse layout but no shape; probes on it measure how much of a task colour alone solves,
    the floor a learned encoder must beat. It takes the same ``uint8`` views as any encoder, so a floor row is
    measured with exactly the protocol of the rows it is set against.

    Forward: ``uint8 [B, 3, S, S]`` with ``S`` divisible by ``grid`` -> :class:`EncodedViews` with
    ``tokens float32 [B, grid * grid, 3]`` (each cell's mean RGB in ``[0, 1]``, cells row-major) and ``pooled
    float32 [B, 3 * grid * grid]`` (the same numbers, channel-major: 48 at ``grid=4``).
    """

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive integer (cells per side), got {grid!r}")
        self.grid = grid

    def forward(self, views: Tensor) -> EncodedViews:
        if views.dim() != 4 or views.shape[1] != 3 or views.shape[-1] % self.grid or views.shape[-2] % self.grid:
            raise ValueError(
                f"views of shape {tuple(views.shape)} do not fit grid={self.grid}: expected [B, 3, S, S] with S "
                f"divisible by {self.grid}"
            )
        if views.dtype != torch.uint8:
            raise ValueError(f"the colour grid takes uint8 views (0-255), got {views.dtype}")
        cells = F.adaptive_avg_pool2d(views.float() / 255.0, self.grid)  # (B, 3, grid, grid) in [0, 1]
        return EncodedViews(tokens=cells.flatten(2).transpose(1, 2), pooled=cells.flatten(1))


def colour_grid_features(views: Tensor, grid: int = 4) -> Tensor:
    """The colour-grid floor of ``uint8`` views: :class:`ColourGridEncoder`'s pooled features.

    Args:
        views: ``uint8 [N, 3, S, S]`` with ``S`` divisible by ``grid``.
        grid: Cells per side.

    Returns:
        ``float32 [N, 3 * grid * grid]`` in ``[0, 1]``, channel-major.
    """
    if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[1] != 3:
        raise ValueError(f"views must be uint8 [N, 3, S, S], got {views.dtype} {tuple(views.shape)}")
    return ColourGridEncoder(grid)(views).pooled


# ----------------------------------------------------------------------------------------------------------------
# Probes on features.


#: What a probe's input is called, its layout and the name of its last dimension, by number of dimensions.
_LAYOUTS = {2: ("features", "[N, D]", "D"), 3: ("tokens", "[N, T, E]", "E")}


def _check_pair(name: str, features: Tensor, targets: Tensor, ndim: int = 2) -> None:
    what, layout, _ = _LAYOUTS[ndim]
    if features.dim() != ndim:
        raise ValueError(f"{name} {what} must be {layout}, got shape {tuple(features.shape)}")
    if features.numel() == 0:
        raise ValueError(f"{name} {what} are empty ({tuple(features.shape)})")
    if targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name} {what} have {features.shape[0]} rows but the targets have {targets.shape[0]} "
            f"(shape {tuple(targets.shape)}): they must match"
        )


def _check_split_pair(train: Tensor, train_targets: Tensor, val: Tensor, val_targets: Tensor, ndim: int = 2) -> None:
    _check_pair("train", train, train_targets, ndim)
    _check_pair("val", val, val_targets, ndim)
    what, _, width = _LAYOUTS[ndim]
    if train.shape[-1] != val.shape[-1]:
        raise ValueError(
            f"train {what} have {width} = {train.shape[-1]} but val {what} have {width} = {val.shape[-1]}"
        )


def _standardise(train: Tensor, val: Tensor) -> tuple[Tensor, Tensor]:
    """Standardise both with the train mean and std per feature (a constant feature is only centred)."""
    mean = train.mean(0)
    std = train.std(0, correction=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train - mean) / std, (val - mean) / std


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread inside the block (restored after).

    A minibatch step of a linear probe is too small to gain from intra-op threads; synchronising them costs more
    than the step (measured 5 to 20 times slower with 2 threads than with 1 on a 2-core machine under load). An
    attentive probe's step (256 rows of 64 tokens x 128 channels) gained only about 10% from a second thread.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool,
    desc: str,
) -> nn.Module:
    """Fit ``model`` to ``loss(model(inputs[rows]), targets[rows])`` with AdamW and a cosine learning rate; return
    it frozen (eval mode, no gradients).

    Minibatches come from a permutation per epoch drawn from a generator seeded with ``seed``, so training is
    deterministic on CPU and does not touch the global random state. On CPU it runs on one thread.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    n = inputs.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)
    model.train()
    with torch.enable_grad(), _one_cpu_thread(inputs.device), bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(inputs.device)
            for first in range(0, n, batch_size):
                rows = order[first : first + batch_size]
                value = loss(model(inputs[rows]), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
            bar.set_postfix(loss=f"{value.item():.4f}")
    return model.eval().requires_grad_(False)


def _train_linear(
    features: Tensor, targets: Tensor, out_dim: int, loss: Callable[[Tensor, Tensor], Tensor], **fit: Any
) -> nn.Module:
    """Fit a zero-initialised linear layer ``[N, D] -> [N, out_dim]`` by :func:`_fit` (keyword arguments ``fit``)."""
    layer = nn.utils.skip_init(nn.Linear, features.shape[1], out_dim, device=features.device)  # no global RNG
    nn.init.zeros_(layer.weight)  # a convex problem: zero is a fine, seed-free start
    nn.init.zeros_(layer.bias)
    return _fit(layer, features, targets, loss, **fit)


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """Average precision of one ranking: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, from
    the highest score down (without ties: the mean of the precision at the rank of each positive).

    Args:
        scores: ``float [N]``; higher means more likely positive.
        targets: ``[N]``, any dtype; a value > 0 marks a positive.

    Raises:
        ValueError: The sizes differ, or there is no positive (AP is undefined).
    """
    if scores.dim() != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be [N] alike")
    positives = (targets > 0).to(torch.float64)
    total = positives.sum()
    if total <= 0:
        raise ValueError(f"targets hold no positive among {targets.shape[0]}: average precision is undefined")
    ordered_scores, order = scores.to(torch.float64).sort(descending=True, stable=True)
    true_pos = positives[order].cumsum(0)  # (N,)
    ranks = torch.arange(1, len(order) + 1, dtype=torch.float64, device=scores.device)
    last_of_tie = torch.ones_like(ordered_scores, dtype=torch.bool)  # thresholds: the last row of each tie group
    last_of_tie[:-1] = ordered_scores[1:] != ordered_scores[:-1]
    precision = (true_pos / ranks)[last_of_tie]
    recall = (true_pos / total)[last_of_tie]
    step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((step * precision).sum())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean of :func:`average_precision` over the categories with at least one positive.

    Args:
        scores: ``float [N, A]``.
        targets: ``[N, A]`` multi-hot (0/1).

    Raises:
        ValueError: The shapes differ, or no category has a positive.
    """
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be [N, A] alike")
    present = (targets > 0).any(0).nonzero().flatten().tolist()
    if not present:
        raise ValueError(f"no category of {targets.shape[1]} is present in the {targets.shape[0]} targets")
    return sum(average_precision(scores[:, a], targets[:, a]) for a in present) / len(present)


def _check_presence(train_presence: Tensor, val_presence: Tensor) -> None:
    if train_presence.dim() != 2 or val_presence.dim() != 2 or train_presence.shape[1] != val_presence.shape[1]:
        raise ValueError(
            f"train_presence {tuple(train_presence.shape)} and val_presence {tuple(val_presence.shape)} must be "
            "[N, A] with the same A"
        )
    if not bool((val_presence > 0).any()):
        raise ValueError(f"val_presence {tuple(val_presence.shape)} has no positive: no category is present")


def presence_probe(
    train_features: Tensor,
    train_presence: Tensor,
    val_features: Tensor,
    val_presence: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Linear multi-label object presence: a linear layer on standardised features trained with BCE on train,
    scored on val as the mean average precision over the categories present in val.

    Args:
        train_features: ``float32 [N, D]``.
        train_presence: ``float32 [N, A]`` multi-hot.
        val_features: ``float32 [M, D]``.
        val_presence: ``float32 [M, A]`` multi-hot.

    Returns:
        mAP in ``[0, 1]``.

    Raises:
        ValueError: Empty or mismatched inputs, or no category present in val.
    """
    _check_split_pair(train_features, train_presence, val_features, val_presence)
    _check_presence(train_presence, val_presence)
    train, val = _standardise(train_features, val_features)
    layer = _train_linear(
        train,
        train_presence.to(train.device, torch.float32),
        train_presence.shape[1],
        F.binary_cross_entropy_with_logits,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
        desc="probe: presence",
    )
    return mean_average_precision(layer(val), val_presence.to(val.device))


def _check_labels(name: str, labels: Tensor, num_classes: int) -> None:
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(f"{name} must be int64 [N], got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} holds labels in [{int(labels.min())}, {int(labels.max())}], outside [0, {num_classes})"
        )


def classification_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Linear softmax classification (object classification given a box, on crop features): a linear layer on
    standardised features trained with cross-entropy on train; top-1 accuracy on val.

    Args:
        train_features: ``float32 [N, D]``.
        train_labels: ``int64 [N]`` in ``[0, num_classes)``.
        val_features: ``float32 [M, D]``.
        val_labels: ``int64 [M]`` in ``[0, num_classes)``.
        num_classes: Number of classes ``A``.

    Returns:
        Top-1 accuracy in ``[0, 1]``.
    """
    _check_split_pair(train_features, train_labels, val_features, val_labels)
    _check_labels("train_labels", train_labels, num_classes)
    _check_labels("val_labels", val_labels, num_classes)
    train, val = _standardise(train_features, val_features)
    layer = _train_linear(
        train,
        train_labels.to(train.device),
        num_classes,
        F.cross_entropy,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
        desc="probe: box classification",
    )
    return float((layer(val).argmax(1) == val_labels.to(val.device)).to(torch.float32).mean())


def knn_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted k-NN top-1, as DINO's ``eval_knn``: cosine similarity between L2-normalised features, the ``k``
    most similar train rows vote for their class with weight ``exp(similarity / temperature)``.

    Rows labelled -1 (images without objects) are left out of both the memory bank and the queries.

    Args:
        train_features: ``float32 [N, D]``, the memory bank.
        train_labels: ``int64 [N]`` in ``[0, num_classes)`` or -1.
        val_features: ``float32 [M, D]``, the queries.
        val_labels: ``int64 [M]`` in ``[0, num_classes)`` or -1.
        num_classes: Number of classes ``A``.
        k: Neighbours per query (at most ``N``).
        temperature: ``T`` of the vote weights.
        chunk: Queries per similarity matrix (bounds memory at ``chunk x N``).

    Returns:
        Top-1 accuracy in ``[0, 1]``.
    """
    _check_split_pair(train_features, train_labels, val_features, val_labels)
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    keep_train, keep_val = train_labels >= 0, val_labels >= 0
    if not bool(keep_train.any()) or not bool(keep_val.any()):
        raise ValueError("train_labels and val_labels each need at least one labelled row (not -1)")
    bank_labels, query_labels = train_labels[keep_train], val_labels[keep_val]
    _check_labels("train_labels", bank_labels, num_classes)
    _check_labels("val_labels", query_labels, num_classes)
    bank = F.normalize(train_features[keep_train.to(train_features.device)], dim=1)  # (N, D)
    queries = F.normalize(val_features[keep_val.to(val_features.device)], dim=1).to(bank.device)  # (M, D)
    bank_labels, query_labels = bank_labels.to(bank.device), query_labels.to(bank.device)
    k = min(k, bank.shape[0])
    correct = 0
    for first in range(0, queries.shape[0], chunk):
        similarity = queries[first : first + chunk] @ bank.T  # (m, N)
        top, index = similarity.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(top.shape[0], num_classes, device=bank.device)  # (m, A)
        votes.scatter_add_(1, bank_labels[index], (top / temperature).exp())
        correct += int((votes.argmax(1) == query_labels[first : first + chunk]).sum())
    return correct / queries.shape[0]


def counting_probe(
    train_features: Tensor, train_counts: Tensor, val_features: Tensor, val_counts: Tensor, *, ridge: float = 1e-3
) -> tuple[float, float]:
    """Object counting by linear regression: ridge least squares (closed form, in float64, no randomness) from
    standardised features to the count.

    Args:
        train_features: ``float32 [N, D]``.
        train_counts: ``[N]`` objects per image (integers).
        val_features: ``float32 [M, D]``.
        val_counts: ``[M]``.
        ridge: L2 penalty, relative to the number of train rows (the features are standardised).

    Returns:
        ``(accuracy, mae)``: the fraction of val images whose rounded prediction equals the count, and the mean
        absolute error of the raw prediction.
    """
    _check_split_pair(train_features, train_counts, val_features, val_counts)
    if train_counts.dim() != 1 or val_counts.dim() != 1:
        raise ValueError(f"counts must be [N], got {tuple(train_counts.shape)} and {tuple(val_counts.shape)}")
    train, val = _standardise(train_features.cpu().double(), val_features.cpu().double())
    target = train_counts.cpu().double()
    offset = target.mean()
    gram = train.T @ train + ridge * train.shape[0] * torch.eye(train.shape[1], dtype=torch.float64)  # (D, D)
    weight = torch.linalg.solve(gram, train.T @ (target - offset))  # (D,)
    prediction = val @ weight + offset  # (M,)
    truth = val_counts.cpu().double()
    accuracy = float((prediction.round() == truth).double().mean())
    return accuracy, float((prediction - truth).abs().mean())

# ----------------------------------------------------------------------------------------------------------------
# Attentive probes on frozen tokens.


def _token_statistics(tokens: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """``float32 [E]`` mean and std per channel over every row and position of ``tokens [N, T, E]`` (accumulated in
    float64, ``chunk`` rows at a time, so a bfloat16 cache is never copied whole); a constant channel gets std 1."""
    total = torch.zeros(tokens.shape[-1], dtype=torch.float64, device=tokens.device)
    squares = torch.zeros_like(total)
    for first in range(0, tokens.shape[0], chunk):
        block = tokens[first : first + chunk].to(torch.float64).flatten(0, 1)  # (n * T, E)
        total += block.sum(0)
        squares += block.square().sum(0)
    count = tokens.shape[0] * tokens.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


class AttentiveProbe(nn.Module):
    """One learned query cross-attending to frozen tokens, then a linear layer (AIM's attention-pooling classifier).

    Forward: ``tokens [B, T, E]`` (any float dtype; cast to float32) -> ``float32 [B, num_outputs]`` logits:

    - ``x = (tokens - mean) / std`` per channel (the train tokens' statistics, fixed);
    - per head ``h`` (``d = width / heads`` channels each), with the query ``q_h [d]`` and the bias-free key and
      value maps ``W_kh, W_vh [d, E]``: ``a_ht = softmax_t(q_h . W_kh x_t / sqrt(d))`` and ``out_h = sum_t a_ht W_vh
      x_t``, computed as ``x_t . (W_kh^T q_h)`` and ``W_vh (sum_t a_ht x_t)`` (the same numbers, ``heads`` dot
      products per token instead of ``2 * width``), with the standardisation folded into the key direction and
      the pooled token rather than applied to every token;
    - ``logits = head(concat_h out_h)``.

    Init (from ``generator``, so a seed fixes it): query zero (uniform attention, the mean token), key and value
    maps ``N(0, 1 / E)``, head zero.

    Args:
        token_dim: ``E``, channels per token.
        num_outputs: Logits per row.
        width: Channels of the keys and values, all heads together.
        heads: Attention heads; must divide ``width``.
        mean: ``float32 [E]`` per-channel mean subtracted from the tokens (zero by default).
        std: ``float32 [E]`` per-channel std the tokens are divided by (one by default).
        generator: Random source of the init (the global random state by default).
    """

    def __init__(
        self,
        token_dim: int,
        num_outputs: int,
        *,
        width: int = 128,
        heads: int = 4,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(token_dim, num_outputs, width, heads) < 1 or width % heads:
            raise ValueError(
                f"AttentiveProbe needs positive token_dim, num_outputs, width and heads with heads dividing width, "
                f"got token_dim={token_dim}, num_outputs={num_outputs}, width={width}, heads={heads}"
            )
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and tuple(value.shape) != (token_dim,):
                raise ValueError(f"{name} must be [E] = [{token_dim}], got shape {tuple(value.shape)}")
        self.heads, self.head_dim = heads, width // heads
        self.register_buffer("mean", torch.zeros(token_dim) if mean is None else mean.to(torch.float32).cpu())
        self.register_buffer("std", torch.ones(token_dim) if std is None else std.to(torch.float32).cpu())
        self.query = nn.Parameter(torch.zeros(heads, self.head_dim))
        scale = token_dim**-0.5
        self.keys = nn.Parameter(torch.randn(heads, self.head_dim, token_dim, generator=generator) * scale)
        self.values = nn.Parameter(torch.randn(heads, self.head_dim, token_dim, generator=generator) * scale)
        self.head = nn.utils.skip_init(nn.Linear, width, num_outputs)  # initialised here, not by the global RNG
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens.to(torch.float32)  # (B, T, E), not standardised: that is folded into the two steps below
        directions = torch.einsum("hd,hde->he", self.query, self.keys) * self.head_dim**-0.5 / self.std  # (H, E)
        attention = (x @ directions.T).softmax(dim=1)  # (B, T, H) over the tokens; the mean's term is constant in t
        pooled = (torch.einsum("bth,bte->bhe", attention, x) - self.mean) / self.std  # (B, H, E)
        return self.head(torch.einsum("bhe,hde->bhd", pooled, self.values).flatten(1))  # (B, A)


def _train_attentive(
    tokens: Tensor,
    targets: Tensor,
    out_dim: int,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    width: int,
    heads: int,
    seed: int,
    **fit: Any,
) -> nn.Module:
    """Fit an :class:`AttentiveProbe` on ``tokens [N, T, E]`` standardised with their own statistics, by :func:`_fit`
    (keyword arguments ``fit``); the init and the minibatch order both come from ``seed``."""
    mean, std = _token_statistics(tokens)
    generator = torch.Generator().manual_seed(seed)
    model = AttentiveProbe(tokens.shape[-1], out_dim, width=width, heads=heads, mean=mean, std=std,
                           generator=generator).to(tokens.device)
    return _fit(model, tokens, targets, loss, seed=seed, **fit)


def _predict(model: nn.Module, inputs: Tensor, batch_size: int) -> Tensor:
    """``model`` over ``inputs`` in chunks of ``4 * batch_size`` rows (bounds the float32 copy of a token cache)."""
    with torch.no_grad():
        return torch.cat([model(inputs[first : first + 4 * batch_size])
                          for first in range(0, inputs.shape[0], 4 * batch_size)])


def attentive_presence_probe(
    train_tokens: Tensor,
    train_presence: Tensor,
    val_tokens: Tensor,
    val_presence: Tensor,
    *,
    epochs: int = ATTENTIVE_EPOCHS,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    width: int = 128,
    heads: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Multi-label object presence through an :class:`AttentiveProbe` on whole-image tokens, trained with BCE on
    train; mean average precision on val over the categories present there.

    Args:
        train_tokens: ``[N, T, E]`` (e.g. bfloat16 from :func:`encode_views`).
        train_presence: ``float32 [N, A]`` multi-hot.
        val_tokens: ``[M, T', E]``.
        val_presence: ``float32 [M, A]`` multi-hot.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over ``epochs`` passes.
        width, heads: The probe's size (see :class:`AttentiveProbe`).
        seed: Seed of the init and of the minibatch order.
        progress: Show a progress bar.

    Returns:
        mAP in ``[0, 1]``.

    Raises:
        ValueError: Empty or mismatched inputs (tokens not ``[N, T, E]``, different ``E``), or no category present
            in val.
    """
    _check_split_pair(train_tokens, train_presence, val_tokens, val_presence, ndim=3)
    _check_presence(train_presence, val_presence)
    model = _train_attentive(
        train_tokens,
        train_presence.to(train_tokens.device, torch.float32),
        train_presence.shape[1],
        F.binary_cross_entropy_with_logits,
        width=width,
        heads=heads,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        progress=progress,
        desc="probe: attentive presence",
    )
    return mean_average_precision(_predict(model, val_tokens, batch_size), val_presence.to(val_tokens.device))


def attentive_classification_probe(
    train_tokens: Tensor,
    train_labels: Tensor,
    val_tokens: Tensor,
    val_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = ATTENTIVE_EPOCHS,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    width: int = 128,
    heads: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Classification (object classification given a box, on crop tokens) through an :class:`AttentiveProbe`,
    trained with cross-entropy on train; top-1 accuracy on val.

    Args:
        train_tokens: ``[N, T, E]`` (e.g. bfloat16 from :func:`encode_views`).
        train_labels: ``int64 [N]`` in ``[0, num_classes)``.
        val_tokens: ``[M, T', E]``.
        val_labels: ``int64 [M]`` in ``[0, num_classes)``.
        num_classes: Number of classes ``A``.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over ``epochs`` passes.
        width, heads: The probe's size (see :class:`AttentiveProbe`).
        seed: Seed of the init and of the minibatch order.
        progress: Show a progress bar.

    Returns:
        Top-1 accuracy in ``[0, 1]``.

    Raises:
        ValueError: Empty or mismatched inputs (tokens not ``[N, T, E]``, different ``E``), or labels outside
            ``[0, num_classes)``.
    """
    _check_split_pair(train_tokens, train_labels, val_tokens, val_labels, ndim=3)
    _check_labels("train_labels", train_labels, num_classes)
    _check_labels("val_labels", val_labels, num_classes)
    model = _train_attentive(
        train_tokens,
        train_labels.to(train_tokens.device),
        num_classes,
        F.cross_entropy,
        width=width,
        heads=heads,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        progress=progress,
        desc="probe: attentive box classification",
    )
    predicted = _predict(model, val_tokens, batch_size).argmax(1)
    return float((predicted == val_labels.to(val_tokens.device)).to(torch.float32).mean())


# ----------------------------------------------------------------------------------------------------------------
# All probes together, the table, and the command line.


def chance_scores(data: ProbeData) -> dict[str, float]:
    """What every probe scores without looking at the image: the chance row of a probe table.

    Each task's best image-blind prediction, fitted on ``data.train`` and scored on ``data.val``: for presence, the
    mean over the categories present in val of their val prevalence (the expected average precision of scores
    independent of the image); for box classification, the accuracy of always naming the most frequent train crop
    label (k-NN classifies the same crops, so it shares that value); for counting, the train mean count as every
    prediction (accuracy of its rounding, mean absolute error). The attentive probes share the presence and box
    values.

    Returns:
        The keys of :func:`run_probes`.
    """
    train, val = data.train, data.val
    present = val.presence[:, (val.presence > 0).any(0)]
    presence = float(present.float().mean())
    box = float((val.crop_labels == torch.bincount(train.crop_labels).argmax()).float().mean())
    mean_count = train.counts.double().mean()
    truth = val.counts.double()
    return {"presence_map": presence, "box_top1": box, "knn_top1": box,
            "count_acc": float((mean_count.round() == truth).double().mean()),
            "count_mae": float((mean_count - truth).abs().mean()),
            "attn_presence_map": presence, "attn_box_top1": box}


def run_probes(
    encoder: Encoder,
    data: ProbeData,
    device: str | torch.device = "cpu",
    epochs: int = 100,
    progress: bool = True,
    *,
    batch_size: int = 256,
    seed: int = 0,
    attentive_epochs: int = ATTENTIVE_EPOCHS,
) -> dict[str, float]:
    """Encode ``data`` once with the frozen encoder (:func:`encode_views`: pooled features and bfloat16 tokens) and
    run every probe.

    Time on 2 busy CPU cores at the pretrainer's probe size (2,000 train images with 10,000 object crops, 1,000
    val images; 64 tokens of 128 channels): the two attentive probes train in about 9 s at the default 20 epochs
    (four times that with 512 channels), the linear probes in about 3 s at 100; the tokens' bfloat16 cache takes
    about 300 MB.

    Args:
        encoder: ``uint8 [B, 3, S, S]`` views -> pooled ``[B, D]``, or an object with ``.tokens
            [B, T, E]`` and ``.pooled [B, D]`` (see :data:`Encoder`). A pooled-only encoder's attentive probes run
            on one token, its pooled vector.
        data: From :func:`probe_data`.
        device: Where the encoder and the probes run.
        epochs: Passes over the train features of each linear probe.
        progress: Progress bars on feature extraction and probe training.
        batch_size: Views per encoder call and rows per probe minibatch.
        seed: Seed of the probes' init and minibatch order.
        attentive_epochs: Passes over the train tokens of each attentive probe.

    Returns:
        ``presence_map``, ``box_top1``, ``knn_top1``, ``count_acc`` (in ``[0, 1]``), ``count_mae`` (objects),
        ``attn_presence_map`` and ``attn_box_top1`` (in ``[0, 1]``).
    """
    encoded = {
        f"{split} {kind}": encode_views(
            encoder,
            getattr(getattr(data, split), kind),
            batch_size,
            device,
            progress=progress,
            desc=f"features: {split} {kind}",
        )
        for split in ("train", "val")
        for kind in ("views", "crops")
    }
    train, val = data.train, data.val
    train_views, val_views = encoded["train views"].pooled, encoded["val views"].pooled
    train_crops, val_crops = encoded["train crops"].pooled, encoded["val crops"].pooled
    linear = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "progress": progress}
    scores = {
        "presence_map": presence_probe(train_views, train.presence, val_views, val.presence, **linear),
        "box_top1": classification_probe(
            train_crops, train.crop_labels, val_crops, val.crop_labels, data.num_categories, **linear
        ),
        "knn_top1": knn_probe(train_crops, train.crop_labels, val_crops, val.crop_labels, data.num_categories),
    }
    scores["count_acc"], scores["count_mae"] = counting_probe(train_views, train.counts, val_views, val.counts)
    attentive = {**linear, "epochs": attentive_epochs}
    scores["attn_presence_map"] = attentive_presence_probe(
        encoded["train views"].tokens, train.presence, encoded["val views"].tokens, val.presence, **attentive
    )
    scores["attn_box_top1"] = attentive_classification_probe(
        encoded["train crops"].tokens,
        train.crop_labels,
        encoded["val crops"].tokens,
        val.crop_labels,
        data.num_categories,
        **attentive,
    )
    return scores


def probe_encoders(
    encoders: Mapping[str, Encoder],
    data: ProbeData,
    device: str | torch.device = "cpu",
    epochs: int = 100,
    progress: bool = True,
    *,
    colour_grid: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    attentive_epochs: int = ATTENTIVE_EPOCHS,
) -> dict[str, dict[str, float]]:
    """:func:`run_probes` for each encoder, with the same data, seed and settings: the rows of a probe table.

    Args:
        encoders: Row name (e.g. ``"pretrained"``, ``"random init"``) -> encoder (see :data:`Encoder`).
        data: From :func:`probe_data`.
        colour_grid: Add the floors: the colour-grid row (:class:`ColourGridEncoder`, grid 4; needs
            ``data.view_size`` divisible by 4) named :data:`COLOUR_GRID`, then the image-blind scores
            (:func:`chance_scores`) named :data:`CHANCE`, as the last two rows.
        device, epochs, progress, batch_size, seed, attentive_epochs: As :func:`run_probes`.

    Returns:
        Row name -> scores, in the order of ``encoders`` (then the floors).

    Raises:
        ValueError: No encoder and no floor row, or an encoder is named :data:`COLOUR_GRID` or :data:`CHANCE`
            while the floors are on.
    """
    rows = dict(encoders)
    if colour_grid:
        for name in (COLOUR_GRID, CHANCE):
            if name in rows:
                raise ValueError(f"an encoder is named {name!r}, a floor row's name; rename it or pass "
                                 "colour_grid=False")
        rows[COLOUR_GRID] = ColourGridEncoder()
    if not rows:
        raise ValueError("encoders is empty and colour_grid is False: there is nothing to probe")
    settings = {"batch_size": batch_size, "seed": seed, "attentive_epochs": attentive_epochs}
    table = {name: run_probes(encoder, data, device, epochs, progress, **settings) for name, encoder in rows.items()}
    if colour_grid:
        table[CHANCE] = chance_scores(data)
    return table


#: A cell of a probe table: a score, or the ``(mean, std)`` of a score over runs.
Score = float | tuple[float, float]


def format_probe_table(rows: Mapping[str, Mapping[str, Score]], digits: int = 4, *, markdown: bool = False) -> str:
    """Several encoders' scores side by side: one line per encoder (row name first), one column per score key (in
    the order they first appear); a score a row lacks shows as ``-``, a ``(mean, std)`` pair as ``mean ± std``.

    Args:
        rows: Row name (e.g. ``"pretrained"``, ``"random init"``, ``"colour grid"``) -> score key -> value.
        digits: Decimals of each value.
        markdown: A Markdown table (``| encoder | key | ... |``) instead of aligned plain-text columns.

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("rows is empty: pass {encoder name: {score key: value}}")

    def cell(value: Score) -> str:
        if isinstance(value, tuple):
            return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
        return f"{value:.{digits}f}"

    keys = list(dict.fromkeys(key for scores in rows.values() for key in scores))
    cells = {name: [cell(scores[key]) if key in scores else "-" for key in keys] for name, scores in rows.items()}
    if markdown:
        lines = ["| encoder | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        return "\n".join(lines + [f"| {name} | " + " | ".join(values) + " |" for name, values in cells.items()])
    first = max(len("encoder"), *(len(name) for name in rows))
    widths = [max(len(key), *(len(values[i]) for values in cells.values())) for i, key in enumerate(keys)]
    lines = [f"{'encoder':<{first}}" + "".join(f"  {key:>{w}}" for key, w in zip(keys, widths, strict=True)),
             "-" * first + "".join("  " + "-" * w for w in widths)]
    lines += [f"{name:<{first}}" + "".join(f"  {v:>{w}}" for v, w in zip(values, widths, strict=True))
              for name, values in cells.items()]
    return "\n".join(lines)


def _config_value(config: Any, name: str) -> Any:
    """Field ``name`` of a checkpoint's config (a mapping or a dataclass), or ``None`` when it has none."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


# ----------------------------------------------------------------------------------------------------------------
# The protocol: one description of what is measured, shared by the pretrainer's end-of-run probes and the CLI.

def _check_protocol_values(owner: Any) -> None:
    """The protocol fields :class:`ProbeProtocol` and :class:`ProbeConfig` share, each named by its flag (``None``
    means the default where a field allows it)."""
    for name in ("view_size", "canvas_size", "train_images", "val_images"):
        value = getattr(owner, name)
        check(value is None or (isinstance(value, int) and value >= 1), name, value,
              "an integer >= 1 (or none for the default)")
    for name in ("epochs", "attentive_epochs"):
        value = getattr(owner, name)
        check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
    check(owner.min_crop_area is None or 0 <= owner.min_crop_area <= 1, "min_crop_area", owner.min_crop_area,
          "a fraction of the image's area in [0, 1]")


#: Train images of the default protocol (the pretrainer's ``--probe-train-images``).
PROTOCOL_TRAIN_IMAGES = 2000


@dataclass(frozen=True)
class ProbeProtocol:
    """Everything that decides a probe score besides the encoder: the images, the crops and the probes' settings.

    The pretrainer's end-of-run probes use :meth:`from_pretrain` of the run's config, ``python -m agents.probe``
    the same protocol read from a checkpoint, an export's card, or its flags, so scores from both compare.

    Attributes:
        dataset, root: The labelled source (``shapes`` or ``coco``) and its root (``None``: its default).
        view_size: Side of every view and crop, in pixels (the encoder's view size).
        canvas_size: Side of the image bank's canvas; ``None``: :func:`view_env.default_canvas_size` of
            ``view_size``, as the environment fits it.
        train_images: Train images the probes are fitted on, drawn as ``numpy.random.default_rng(seed)
            .permutation(len(train))[:train_images]`` (sorted); ``None``: every train image.
        val_images: Val images scored; ``None`` (default): the whole split; else drawn like ``train_images`` with
            ``seed + 7``.
        min_crop_area: Smallest object crop as a fraction of the image (:func:`crop_boxes`): the smallest view
            the encoder was trained on (the pretrainer's ``crop_scale[0]``).
        seed: Seed of the image draws and of the probes' initialisation and minibatch order.
        epochs, attentive_epochs: Passes of each linear and attentive probe.
    """

    dataset: str = "shapes"
    root: str | None = None
    view_size: int = 32
    canvas_size: int | None = None
    train_images: int | None = PROTOCOL_TRAIN_IMAGES
    val_images: int | None = None
    min_crop_area: float = MIN_CROP_AREA
    seed: int = 0
    epochs: int = 100
    attentive_epochs: int = ATTENTIVE_EPOCHS

    def __post_init__(self) -> None:
        check(self.dataset in LABELLED_DATASETS, "dataset", self.dataset,
              f"a dataset with object labels ({' or '.join(LABELLED_DATASETS)})")
        check(self.view_size is not None, "view_size", self.view_size, "an integer >= 1")
        _check_protocol_values(self)

    @classmethod
    def from_pretrain(cls, config: Any, **overrides: Any) -> ProbeProtocol:
        """The protocol of a pretraining run's end-of-run probes (``config``: an ``agents.config.PretrainConfig``
        or its dict): its dataset and root, ``obs_size``, ``probe_train_images``, ``crop_scale[0]`` and
        ``seed``; ``overrides`` replace any field.

        Raises:
            ValueError: The run's data has no object labels and no ``dataset`` override is given.
        """
        env = _config_value(config, "env") or "shapes"
        values: dict[str, Any] = {
            "dataset": env,
            "root": _config_value(config, "root") if env in LABELLED_DATASETS else None,
            "view_size": int(_config_value(config, "obs_size") or cls.view_size),
            "train_images": _config_value(config, "probe_train_images") or PROTOCOL_TRAIN_IMAGES,
            "min_crop_area": float((_config_value(config, "crop_scale") or (MIN_CROP_AREA,))[0]),
            "seed": int(_config_value(config, "seed") or 0),
        }
        if "dataset" in overrides and overrides["dataset"] != env and "root" not in overrides:
            values["root"] = None  # the run's root belongs to the run's dataset
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["dataset"] not in LABELLED_DATASETS:
            raise ValueError(f"the encoder was trained on {values['dataset']!r}, which has no object labels; pass "
                             f"--dataset {'|'.join(LABELLED_DATASETS)} to probe it on a labelled set")
        return cls(**values)

    @property
    def canvas(self) -> int:
        """The bank's canvas side: ``canvas_size``, or the environment's rule for ``view_size``."""
        return self.canvas_size if self.canvas_size is not None else default_canvas_size(self.view_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _draw(self, count: int, wanted: int | None, seed: int) -> list[int]:
        if wanted is None or wanted >= count:
            return list(range(count))
        return sorted(np.random.default_rng(seed).permutation(count)[:wanted].tolist())

    def data(self, progress: bool = False) -> ProbeData:
        """The protocol's rendered views, crops and targets (:func:`probe_data` on its two banks).

        Raises:
            DatasetNotFoundError: The dataset is not where ``root`` says.
        """
        canvas = self.canvas
        banks = []
        for split, wanted, seed in (("train", self.train_images, self.seed), ("val", self.val_images, self.seed + 7)):
            kwargs: dict[str, Any] = {"root": self.root, "split": split}
            if self.dataset == "shapes":
                kwargs["progress"] = progress
            dataset = load_dataset(self.dataset, **kwargs)
            banks.append(ImageBank.from_dataset(dataset, canvas_size=canvas,
                                                indices=self._draw(len(dataset), wanted, seed), progress=progress))
        return probe_data(*banks, view_size=self.view_size, seed=self.seed, min_crop_area=self.min_crop_area)


def probe_encoder(
    encoders: Encoder | Mapping[str, Encoder],
    protocol: ProbeProtocol,
    device: str | torch.device = "cpu",
    *,
    floor: bool = True,
    progress: bool = True,
    data: ProbeData | None = None,
) -> dict[str, Any]:
    """Probe any frozen encoder (or several, as rows of one table) under ``protocol``.

    Args:
        encoders: An encoder or ``{row name: encoder}``; each takes ``uint8 [B, 3, S, S]`` views (wrap a bare
            module that takes normalised floats in :class:`agents.models.ViewEncoder`) and returns pooled ``[B,
            D]`` or ``.tokens [B, T, E]`` and ``.pooled [B, D]``, on ``device``. A single encoder is the row
            ``"encoder"``.
        protocol: What to measure (:class:`ProbeProtocol`).
        device: Where the encoders and the probes run.
        floor: Add the floor rows (:data:`COLOUR_GRID`, :data:`CHANCE`).
        progress: Progress bars.
        data: ``protocol.data()`` already rendered (several calls on one protocol share it).

    Returns:
        ``{"protocol": protocol.to_dict(), "canvas_size": the canvas used, "images": {"train", "val"}, "objects":
        {"train", "val"}, "scores": {row: run_probes' scores}}``.
    """
    rows = dict(encoders) if isinstance(encoders, Mapping) else {"encoder": encoders}
    data = protocol.data(progress) if data is None else data
    table = probe_encoders(rows, data, device=device, epochs=protocol.epochs, progress=progress, colour_grid=floor,
                           seed=protocol.seed, attentive_epochs=protocol.attentive_epochs)
    return {
        "protocol": protocol.to_dict(),
        "canvas_size": protocol.canvas,
        "images": {"train": len(data.train), "val": len(data.val)},
        "objects": {"train": len(data.train.crop_labels), "val": len(data.val.crop_labels)},
        "scores": table,
    }


# ----------------------------------------------------------------------------------------------------------------
# Command line.


@dataclass
class ProbeConfig:
    """Arguments of ``python -m agents.probe``; each field's help is its flag's help (:mod:`agents.cli`).

    Exactly one of ``checkpoint``, ``export`` and ``timm`` names the encoder. The protocol's fields default to
    what the encoder was trained with (a checkpoint's config, an export's card), else to :class:`ProbeProtocol`'s
    defaults, so that a checkpoint probed here scores what the pretrainer's own end-of-run probes scored.
    """

    checkpoint: Path | None = option(None, "a checkpoint written by agents.pretrain (its --out DIR/checkpoint.pt)")
    export: Path | None = option(None, "an export directory written by agents.export")
    timm: str | None = option(None, "a timm model name, built from scratch (nothing is downloaded): a baseline")
    out: Path | None = option(None, "write the scores, with the protocol, as JSON to this file")
    device: str = option("cpu", "where the encoder and the probes run")
    dataset: str | None = option(None, "labelled dataset (default: the encoder's training env, else shapes)",
                                 choices=LABELLED_DATASETS)
    root: str | None = option(None, "the dataset's root (default: the encoder's, else the dataset's default)")
    view_size: int | None = option(None, "view side in pixels (default: the encoder's obs_size; 32 for --timm)")
    patch_size: int | None = option(None, "ViT patch size of a --timm model (default: timm's)")
    canvas_size: int | None = option(None, "image bank canvas side (default: view_env.default_canvas_size of the "
                                     "view size, as the environment fits it)")
    train_images: int | None = option(None, "train images the probes are fitted on (default: the run's "
                                      f"probe_train_images, else {PROTOCOL_TRAIN_IMAGES}; none: all)")
    all_train_images: bool = option(False, "fit on every train image instead (not the pretrainer's protocol)")
    val_images: int | None = option(None, "val images scored (default: the whole split)")
    min_crop_area: float | None = option(None, "smallest object crop, a fraction of the image's area (default: "
                                         f"the run's crop_scale[0], else {MIN_CROP_AREA})")
    seed: int | None = option(None, "seed of the image draws and the probes (default: the run's, else 0)")
    epochs: int = option(100, "epochs of each linear probe")
    attentive_epochs: int = option(ATTENTIVE_EPOCHS, "epochs of each attentive probe")
    floor: bool = option(True, "add the floor rows, the colour grid and chance (--no-floor leaves them out)")
    random_init: bool = option(False, "add a row for the same architecture at random init (the pretrainer's "
                               "\"random init\" row: the run's network built from torch seed seed + 1)")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        given = [name for name in ("checkpoint", "export", "timm") if getattr(self, name) is not None]
        check(len(given) == 1, "checkpoint", self.checkpoint,
              f"exactly one of --checkpoint, --export and --timm (given: {given or 'none'})")
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint).expanduser()
            check(self.checkpoint.is_file(), "checkpoint", self.checkpoint,
                  "the path of a checkpoint written by agents.pretrain (it does not exist)")
        if self.export is not None:
            self.export = Path(self.export).expanduser()
            check(self.export.is_dir(), "export", self.export,
                  "a directory written by python -m agents.export (it does not exist)")
        check(not (self.random_init and self.export is not None), "random_init", self.random_init,
              "off with --export (an export holds the encoder only; probe its checkpoint for a random-init row)")
        check(not (self.all_train_images and self.train_images is not None), "all_train_images",
              self.all_train_images, "off when --train-images is given")
        check(self.patch_size is None or self.patch_size >= 1, "patch_size", self.patch_size,
              "an integer >= 1 (or none for the default)")
        _check_protocol_values(self)  # before anything is read: bad flags are usage errors


def _encoder_to_probe(config: ProbeConfig) -> tuple[dict[str, Encoder], Any, dict[str, Any]]:
    """The CLI's rows ``{name: uint8-in encoder}``, the training config to read the protocol from (a mapping or
    ``None``), and where the encoder came from."""
    if config.checkpoint is not None:
        encoder, trained = load_encoder(config.checkpoint, config.device)
        rows: dict[str, Encoder] = {"checkpoint": encoder}
        if config.random_init:
            from agents.network import random_init_encoder  # the network modules load only when asked

            rows["random init"] = random_init_encoder(trained).to(config.device).eval()
        return rows, trained, {"checkpoint": str(config.checkpoint)}
    if config.export is not None:
        from agents.export import load_export

        encoder, card = load_export(config.export, config.device)
        return {"export": encoder}, card.get("config") or {"obs_size": card.get("view_size")}, {
            "export": str(config.export)}
    from agents.models import TIMM_PREFIX, ViewEncoder, build_encoder

    view_size = config.view_size or ProbeProtocol.view_size
    torch.manual_seed(config.seed or 0)
    encoder = ViewEncoder(build_encoder(TIMM_PREFIX + config.timm, view_size, config.patch_size))
    rows = {f"timm:{config.timm}": encoder.to(config.device).eval()}
    return rows, {"obs_size": view_size}, {"timm": config.timm, "patch_size": config.patch_size}


def probe_from_config(config: ProbeConfig) -> dict[str, Any]:
    """What ``python -m agents.probe`` does: the record of :func:`probe_encoder` plus ``source`` (where the
    encoder came from).

    Raises:
        CheckpointError: The checkpoint or export is unreadable.
        ValueError: The encoder was trained on data without labels and no ``dataset`` is given, or an unknown
            timm name.
    """
    rows, trained, source = _encoder_to_probe(config)
    overrides = {"dataset": config.dataset, "root": config.root, "view_size": config.view_size,
                 "canvas_size": config.canvas_size, "train_images": config.train_images,
                 "val_images": config.val_images, "min_crop_area": config.min_crop_area, "seed": config.seed,
                 "epochs": config.epochs, "attentive_epochs": config.attentive_epochs}
    protocol = ProbeProtocol.from_pretrain(trained, **overrides)
    if config.all_train_images:
        protocol = dataclasses.replace(protocol, train_images=None)
    record = probe_encoder(rows, protocol, config.device, floor=config.floor, progress=config.progress)
    return {"source": source, **record}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.probe``: probe a checkpoint's, an export's or a fresh timm model's encoder (and the
    colour-grid floor, unless ``--no-floor``) under the pretrainer's protocol, print a table and write JSON
    (``--out``). Returns the exit status: 0, or 2 when the encoder or the data is unusable (bad flags exit with
    status 2 through argparse)."""
    config, _ = cli.parse(ProbeConfig, argv, prog="python -m agents.probe", description=__doc__.split("\n\n")[0])
    try:
        record = probe_from_config(config)
    except (CheckpointError, ValueError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    protocol = record["protocol"]
    print(f"probes on {protocol['dataset']} val ({record['images']['val']} images, fitted on "
          f"{record['images']['train']} train images; {protocol['view_size']}-px views, crops >= "
          f"{protocol['min_crop_area']:g} of the image, seed {protocol['seed']}):")
    print(format_probe_table(record["scores"]))
    if config.out is not None:
        out = config.out.expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
