"""Shapes categories need shape: colour alone scores near chance on them, the crops' pixels well above it.

A small set (400 train + 150 val images at 64 px) is written with ``write_shapes`` and probed with the linear
probes of ``agents.probe``. The thresholds are fixed in advance, not fitted to the scores:

- chance on box classification is the frequency of the most common category among the val objects, and chance on
  presence is the mean val prevalence of the present categories (the expected AP of a random ranking);
- "near chance" means at most ``chance + 0.05``: with about 750 val objects the standard error of an accuracy near
  0.1 is about 0.011, so a probe at chance stays below it and a real colour cue (0.25 on the old shape x colour
  generator, chance 0.04) does not;
- "well above chance" means at least twice chance.

The pixel features are a figure-ground map of each crop: each pixel's RGB distance from the mean colour of the
crop's one-pixel frame (mostly background: a crop is its box grown by at least 10% a side), standardised per
crop. Raw pixels cannot serve: object and background colours share their mean, so every pixel's mean given the
category is the same, and a linear probe on raw RGB pixels (or on standardised grayscale, where an object may be
lighter or darker than its background) stays near chance as well (0.115 and 0.127 box top-1 against a chance of
0.115, where the figure-ground map reaches 0.325 and the colour grid 0.106).
"""

from __future__ import annotations

import pytest
import torch

from agents.probe import ProbeData, classification_probe, colour_grid_features, presence_probe, probe_data
from view_env.data import ImageBank, ShapesDataset
from view_env.data.shapes import CATEGORIES, write_shapes

#: Side of the rendered crops and views: the 4 x 4 colour grid has 8 px cells.
VIEW = 32
NEAR_CHANCE_MARGIN = 0.05
WELL_ABOVE_FACTOR = 2.0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ProbeData:
    root = write_shapes(tmp_path_factory.mktemp("categories") / "shapes", num_train=400, num_val=150, image_size=64,
                        seed=0, workers=1, progress=False)
    banks = [ImageBank.from_dataset(ShapesDataset(root, split=split), canvas_size=64, num_workers=1, progress=False)
             for split in ("train", "val")]
    return probe_data(*banks, view_size=VIEW)


def figure_ground(crops: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, S, S]`` crops -> ``float32 [B, S * S]``: each pixel's RGB distance from the mean colour of
    the crop's one-pixel frame, standardised over the crop (zero mean, unit variance)."""
    pixels = crops.to(torch.float32) / 255.0
    frame = torch.ones(crops.shape[-2:], dtype=torch.bool)
    frame[1:-1, 1:-1] = False
    border = pixels[..., frame].mean(-1)  # (B, 3)
    distance = (pixels - border[..., None, None]).norm(dim=1).flatten(1)  # (B, S * S)
    return (distance - distance.mean(1, keepdim=True)) / distance.std(1, keepdim=True).clamp_min(1e-3)


def test_box_classification_needs_shape(data: ProbeData) -> None:
    train, val = data.train, data.val
    assert data.num_categories == len(CATEGORIES)
    chance = float(torch.bincount(val.crop_labels, minlength=data.num_categories).max()) / len(val.crop_labels)

    def top1(features: torch.Tensor, val_features: torch.Tensor) -> float:
        return classification_probe(features, train.crop_labels, val_features, val.crop_labels, data.num_categories)

    colour = top1(colour_grid_features(train.crops), colour_grid_features(val.crops))
    shape = top1(figure_ground(train.crops), figure_ground(val.crops))
    assert colour <= chance + NEAR_CHANCE_MARGIN, f"colour grid box top-1 {colour:.3f}, chance {chance:.3f}"
    assert shape >= WELL_ABOVE_FACTOR * chance, f"figure-ground box top-1 {shape:.3f}, chance {chance:.3f}"


def test_presence_is_not_given_by_colour(data: ProbeData) -> None:
    train, val = data.train, data.val
    prevalence = val.presence.mean(0)
    chance = float(prevalence[prevalence > 0].mean())
    score = presence_probe(colour_grid_features(train.views), train.presence, colour_grid_features(val.views),
                           val.presence)
    assert score <= chance + NEAR_CHANCE_MARGIN, f"colour grid presence mAP {score:.3f}, chance {chance:.3f}"
