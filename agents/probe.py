"""Frozen-feature probes that measure an encoder on a held-out split, kept apart from pretraining (as DINO's
``eval_linear.py`` / ``eval_knn.py``).

Data flow: two image banks (train, val) -> :func:`probe_data` renders whole-image views and per-object crops with
their targets -> :func:`extract_features` runs the frozen encoder -> four probes, each a plain function of features
(so each can be checked on toy features) -> :func:`run_probes` gathers their scores.

Probes (all trained on train features and scored on val features):

- ``presence_map``: linear multi-label object presence (:func:`presence_probe`): a linear layer trained with BCE
  on whole-image features; mean average precision over the categories present in val (:func:`mean_average_precision`).
- ``box_top1``: object classification given a box (:func:`classification_probe`): a linear softmax classifier on
  the features of object crops; top-1 accuracy.
- ``knn_top1``: weighted k-NN (:func:`knn_probe`, k=20, T=0.07, DINO's ``eval_knn`` weighting) on whole-image
  features; an image's class is the category of its largest object (by area).
- ``count_acc``, ``count_mae``: object counting (:func:`counting_probe`, meant for Shapes' 2 to 8 objects): ridge
  linear regression from whole-image features to the number of objects; accuracy of the rounded prediction and
  mean absolute error of the raw prediction.

Encoder contract: a callable (usually an ``nn.Module`` already on ``device``) from ``float32 [B, 3, S, S]`` views,
scaled to ``[0, 1]`` and then normalised with the ImageNet mean and std (done here, by :func:`normalise_views`), to
pooled features ``[B, D]``.

Command line (the checkpoint is read by ``agents.checkpoint.load_encoder``)::

    python -m agents.probe --checkpoint runs/shapes/checkpoint.pt --out probes.json --max-images 2000

It prints a table of scores and writes them, with what was measured, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from view_env.data import ImageBank, load_dataset
from view_env.render import render_views

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ProbeData",
    "ProbeSplit",
    "average_precision",
    "classification_probe",
    "counting_probe",
    "crop_boxes",
    "extract_features",
    "knn_probe",
    "main",
    "mean_average_precision",
    "normalise_views",
    "presence_probe",
    "probe_data",
    "run_probes",
]

#: ImageNet channel statistics used to normalise views in ``[0, 1]`` before they enter the encoder.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Each object crop is the object's box grown by this fraction of its longer side on every side.
CROP_MARGIN = 0.1


# ----------------------------------------------------------------------------------------------------------------
# Probe data: views, crops and targets rendered from the banks.


@dataclass(frozen=True, eq=False)
class ProbeSplit:
    """Everything the probes need from one split; ``N`` images, ``B`` objects, ``A`` categories, view side ``S``.

    Attributes:
        views: ``uint8 [N, 3, S, S]`` whole-image views (box ``[0, 0, 1, 1]``).
        presence: ``float32 [N, A]`` multi-hot: 1 where the image holds at least one object of the category.
        counts: ``int64 [N]`` number of annotated objects in each image.
        image_class: ``int64 [N]`` category of the image's largest object (by box area); -1 for an image without
            objects (left out of the k-NN probe).
        crops: ``uint8 [B, 3, S, S]`` one view per object (see :func:`crop_boxes`).
        crop_boxes: ``float32 [B, 4]`` the normalised ``(x0, y0, x1, y1)`` box each crop was rendered from.
        crop_labels: ``int64 [B]`` category of each object.
        crop_image: ``int64 [B]`` row in :attr:`views` of the image each object belongs to.
        image_index: ``int64 [N]`` row of each image in the bank the split was rendered from.
    """

    views: Tensor
    presence: Tensor
    counts: Tensor
    image_class: Tensor
    crops: Tensor
    crop_boxes: Tensor
    crop_labels: Tensor
    crop_image: Tensor
    image_index: Tensor

    def __len__(self) -> int:
        return int(self.views.shape[0])


@dataclass(frozen=True, eq=False)
class ProbeData:
    """The train and val splits of the probes, rendered at ``view_size``, over ``num_categories`` categories."""

    train: ProbeSplit
    val: ProbeSplit
    num_categories: int
    view_size: int


def crop_boxes(boxes: Tensor, sizes: Tensor, margin: float = CROP_MARGIN) -> Tensor:
    """The square context crop of each object box, in normalised image coordinates.

    Each box is grown to a square in pixel space (of the original image, so crops are not distorted) whose side is
    the box's longer side times ``1 + 2 * margin``, centred on the box, then shifted into the image where it sticks
    out and, only when it is larger than the image, clipped to it. A crop therefore always contains its box.

    Args:
        boxes: ``float32 [B, 4]`` normalised ``(x0, y0, x1, y1)`` object boxes.
        sizes: ``int64 [B, 2]`` original ``(height, width)`` of each object's image.
        margin: Context on each side as a fraction of the box's longer side.

    Returns:
        ``float32 [B, 4]`` normalised crop boxes with ``x1 > x0`` and ``y1 > y0``.
    """
    extent = sizes.flip(-1).to(torch.float32).repeat(1, 2)  # (B, 4): W, H, W, H
    pixels = boxes * extent  # (B, 4) in original pixels
    centre = (pixels[:, :2] + pixels[:, 2:]) / 2  # (B, 2)
    longer = (pixels[:, 2:] - pixels[:, :2]).amax(-1, keepdim=True)  # (B, 1)
    half = (longer * (1 + 2 * margin)).clamp_min(1.0) / 2  # at least one original pixel wide
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


def _render_split(bank: ImageBank, rows: Tensor, view_size: int, name: str) -> ProbeSplit:
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
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (N, M) normalised
    largest = area.masked_fill(~valid, -1.0).argmax(1)  # (N,); the area ratio is the pixel-area ratio
    image_class = labels.gather(1, largest[:, None]).squeeze(1).masked_fill(~valid.any(1), -1)

    object_boxes = boxes[image_row, slot]  # (B, 4)
    crops_at = crop_boxes(object_boxes, bank.sizes[rows][image_row])
    crops = render_views(bank.images, rows[image_row], crops_at, view_size)  # (B, 3, S, S)
    return ProbeSplit(
        views=views,
        presence=presence,
        counts=valid.sum(1),
        image_class=image_class,
        crops=crops,
        crop_boxes=crops_at,
        crop_labels=labels[image_row, slot],
        crop_image=image_row,
        image_index=rows,
    )


def probe_data(
    bank_train: ImageBank, bank_val: ImageBank, view_size: int, max_images: int | None = None, seed: int = 0
) -> ProbeData:
    """Render the probes' views, crops and targets from a train and a val bank (on the banks' devices).

    Whole-image views are the whole canvas (box ``[0, 0, 1, 1]``, stretched like the bank); each object gets a
    :func:`crop_boxes` crop. Everything is rendered up front: ``3 * S * S`` bytes per image and per object (12 KiB
    at 64 px; the default Shapes train split holds about 50,000 objects), so use ``max_images`` on large sets.

    Args:
        bank_train: Images the probes are trained on (the k-NN memory bank).
        bank_val: Held-out images the probes are scored on; same categories as ``bank_train``.
        view_size: Side ``S`` of every rendered view and crop.
        max_images: Use a random subset of at most this many images of each bank (all by default).
        seed: Seed of that subset.

    Raises:
        ValueError: The banks disagree on the categories, there are none, ``view_size`` or ``max_images`` is not a
            positive integer, or a bank holds no annotated object (or a label outside the categories).
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
    train = _render_split(bank_train, _subset(len(bank_train), max_images, seed), view_size, "bank_train")
    val = _render_split(bank_val, _subset(len(bank_val), max_images, seed), view_size, "bank_val")
    return ProbeData(train=train, val=val, num_categories=bank_train.num_categories, view_size=view_size)


# ----------------------------------------------------------------------------------------------------------------
# Frozen features.


def normalise_views(views: Tensor) -> Tensor:
    """``uint8 [N, 3, S, S]`` views -> ``float32 [N, 3, S, S]``: scaled to ``[0, 1]``, then ``(x - mean) / std``
    per channel with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` (the input convention of every encoder)."""
    mean = torch.tensor(IMAGENET_MEAN, device=views.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=views.device).view(1, 3, 1, 1)
    return (views.to(torch.float32) / 255.0 - mean) / std


def extract_features(
    encoder: Callable[[Tensor], Tensor],
    views: Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    progress: bool = False,
    desc: str = "features",
) -> Tensor:
    """Features of the frozen encoder: batches of views normalised by :func:`normalise_views`, under
    ``torch.no_grad``, with an ``nn.Module`` in eval mode (its previous mode is restored afterwards).

    Args:
        encoder: ``float32 [B, 3, S, S] -> [B, D]`` pooled features; an ``nn.Module`` should already be on
            ``device``.
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
    chunks = []
    try:
        with torch.no_grad():
            for first in tqdm(range(0, views.shape[0], batch_size), desc=desc, unit="batch", disable=not progress):
                batch = normalise_views(views[first : first + batch_size].to(device))  # (b, 3, S, S)
                features = encoder(batch)
                if features.dim() != 2 or features.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"the encoder returned features of shape {tuple(features.shape)} for {batch.shape[0]} "
                        "views; expected pooled features [B, D]"
                    )
                chunks.append(features.to(device=device, dtype=torch.float32))
    finally:
        if isinstance(encoder, nn.Module):
            encoder.train(was_training)
    return torch.cat(chunks)  # (N, D)


# ----------------------------------------------------------------------------------------------------------------
# Probes on features.


def _check_pair(name: str, features: Tensor, targets: Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"{name} features must be [N, D], got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{name} features are empty ({tuple(features.shape)})")
    if targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name} features have {features.shape[0]} rows but the targets have {targets.shape[0]} "
            f"(shape {tuple(targets.shape)}): they must match"
        )


def _check_split_pair(train: Tensor, train_targets: Tensor, val: Tensor, val_targets: Tensor) -> None:
    _check_pair("train", train, train_targets)
    _check_pair("val", val, val_targets)
    if train.shape[1] != val.shape[1]:
        raise ValueError(f"train features have D = {train.shape[1]} but val features have D = {val.shape[1]}")


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
    than the step (measured 5 to 20 times slower with 2 threads than with 1 on a 2-core machine under load).
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


def _train_linear(
    features: Tensor,
    targets: Tensor,
    out_dim: int,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool,
    desc: str,
) -> nn.Linear:
    """Fit a zero-initialised linear layer ``[N, D] -> [N, out_dim]`` with AdamW and a cosine learning rate.

    Minibatches come from a permutation per epoch drawn from a generator seeded with ``seed``, so training is
    deterministic on CPU and does not touch the global random state. On CPU it runs on one thread.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    n, dim = features.shape
    layer = nn.Linear(dim, out_dim, device=features.device)
    nn.init.zeros_(layer.weight)  # a convex problem: zero is a fine, seed-free start
    nn.init.zeros_(layer.bias)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)
    with torch.enable_grad(), _one_cpu_thread(features.device), bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(features.device)
            for first in range(0, n, batch_size):
                rows = order[first : first + batch_size]
                value = loss(layer(features[rows]), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
            bar.set_postfix(loss=f"{value.item():.4f}")
    return layer.requires_grad_(False)


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
    if train_presence.dim() != 2 or train_presence.shape[1] != val_presence.shape[1]:
        raise ValueError(
            f"train_presence {tuple(train_presence.shape)} and val_presence {tuple(val_presence.shape)} must be "
            "[N, A] with the same A"
        )
    if not bool((val_presence > 0).any()):
        raise ValueError(f"val_presence {tuple(val_presence.shape)} has no positive: no category is present")
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
# All probes together, and the command line.


def run_probes(
    encoder: Callable[[Tensor], Tensor],
    data: ProbeData,
    device: str | torch.device = "cpu",
    epochs: int = 100,
    progress: bool = True,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Extract the frozen encoder's features of ``data`` and run every probe.

    Args:
        encoder: ``float32 [B, 3, S, S]`` normalised views -> ``[B, D]`` (see :func:`extract_features`).
        data: From :func:`probe_data`.
        device: Where the encoder and the probes run.
        epochs: Passes over the train features of each linear probe.
        progress: Progress bars on feature extraction and probe training.
        batch_size: Views per encoder call and rows per probe minibatch.
        seed: Seed of the linear probes' minibatch order.

    Returns:
        ``presence_map``, ``box_top1``, ``knn_top1``, ``count_acc`` (in ``[0, 1]``) and ``count_mae`` (objects).
    """
    features = {
        f"{split} {kind}": extract_features(
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
    train_views, val_views = features["train views"], features["val views"]
    linear = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "progress": progress}
    scores = {
        "presence_map": presence_probe(train_views, train.presence, val_views, val.presence, **linear),
        "box_top1": classification_probe(
            features["train crops"],
            train.crop_labels,
            features["val crops"],
            val.crop_labels,
            data.num_categories,
            **linear,
        ),
        "knn_top1": knn_probe(train_views, train.image_class, val_views, val.image_class, data.num_categories),
    }
    scores["count_acc"], scores["count_mae"] = counting_probe(train_views, train.counts, val_views, val.counts)
    return scores


def _config_value(config: Any, name: str) -> Any:
    """Field ``name`` of a checkpoint's config (a mapping or a dataclass), or ``None`` when it has none."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def _format_table(scores: Mapping[str, float]) -> str:
    width = max(len("probe"), *(len(name) for name in scores))
    lines = [f"{'probe':<{width}}  score", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in scores.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``python -m agents.probe``: probe a checkpoint's encoder; print a table and write JSON. Returns the scores."""
    parser = argparse.ArgumentParser(prog="python -m agents.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by agents.pretrain")
    parser.add_argument("--out", help="write the scores as JSON to this file")
    parser.add_argument("--device", default="cpu", help="where the encoder and the probes run (default: cpu)")
    parser.add_argument("--max-images", type=int, help="at most this many images of each split (default: all)")
    parser.add_argument(
        "--dataset", choices=("shapes", "coco"), help="labelled dataset (default: the checkpoint's env, else shapes)"
    )
    parser.add_argument("--root", help="the dataset's root (default: the checkpoint's, else the dataset's default)")
    parser.add_argument("--view-size", type=int, help="view side in pixels (default: the checkpoint's obs_size)")
    parser.add_argument("--canvas-size", type=int, default=128, help="image bank canvas side (default: 128)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of each linear probe (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset and the probes")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.exists():
        parser.error(
            f"checkpoint {str(checkpoint)!r} does not exist; pass the path of a checkpoint written by agents.pretrain"
        )
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")

    from agents.checkpoint import load_encoder  # the checkpoint format lives with the pretrainer

    encoder, config = load_encoder(checkpoint, args.device)
    # What the checkpoint was trained on is the default: its view size, dataset and root.
    trained_on = _config_value(config, "env")
    dataset_name = args.dataset or trained_on or "shapes"
    if dataset_name not in ("shapes", "coco"):
        parser.error(f"the checkpoint was trained on {dataset_name!r}, which has no labels; pass --dataset shapes|coco")
    root = args.root or (_config_value(config, "root") if dataset_name == trained_on else None)
    view_size = args.view_size if args.view_size is not None else int(_config_value(config, "obs_size") or 64)
    progress = not args.no_progress
    banks = []
    for split in ("train", "val"):
        dataset = load_dataset(dataset_name, root=root, split=split)
        rows = _subset(len(dataset), args.max_images, args.seed).tolist()
        banks.append(ImageBank.from_dataset(dataset, canvas_size=args.canvas_size, indices=rows, progress=progress))
    data = probe_data(*banks, view_size=view_size)
    scores = run_probes(encoder, data, device=args.device, epochs=args.epochs, progress=progress, seed=args.seed)
    print(_format_table(scores))
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "checkpoint": str(checkpoint),
            "dataset": dataset_name,
            "root": root,
            "view_size": view_size,
            "images": {"train": len(data.train), "val": len(data.val)},
            "objects": {"train": len(data.train.crop_labels), "val": len(data.val.crop_labels)},
            "epochs": args.epochs,
            "seed": args.seed,
            "scores": scores,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main()
