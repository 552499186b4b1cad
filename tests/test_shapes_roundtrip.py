"""A tiny Shapes set made through the command line and read back through the COCO reader, exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from view_env.data import CocoDataset, ImageBank, ShapesDataset
from view_env.data.shapes import CATEGORIES, generate_scene


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    command = [sys.executable, "-m", "view_env.data", "make-shapes", "--root", str(root), "--num-train", "6",
               "--num-val", "3", "--image-size", "64", "--seed", "5", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "Shapes set ready" in done.stdout
    return root


@pytest.mark.parametrize(("split", "count"), [("train", 6), ("val", 3)])
def test_boxes_categories_and_captions_round_trip_exactly(shapes_root, split, count):
    dataset = CocoDataset(shapes_root, split=split)
    assert dataset.categories == CATEGORIES
    assert len(dataset) == count
    for index, record in enumerate(dataset.records):
        scene = generate_scene(seed=5, split=split, index=index, image_size=64)
        np.testing.assert_array_equal(record.boxes, scene.boxes.astype(np.float32))
        np.testing.assert_array_equal(record.labels, scene.labels)
        assert record.captions == scene.captions
        assert (record.width, record.height) == (64, 64)
        pixels = np.asarray(dataset.read(index).image, dtype=np.int16)
        # JPEG at quality 95 without chroma subsampling stays close to the generated pixels.
        assert np.abs(pixels - np.asarray(scene.image, dtype=np.int16)).mean() < 3


def test_shapes_dataset_reads_an_existing_set_and_banks_it(shapes_root):
    dataset = ShapesDataset(shapes_root, split="val")
    assert dataset.name == "shapes" and len(dataset) == 3
    bank = ImageBank.from_dataset(dataset, canvas_size=32, progress=False)
    assert bank.images.shape == (3, 3, 32, 32)
    assert bank.num_categories == len(CATEGORIES)


def test_make_shapes_rejects_bad_arguments(tmp_path):
    command = [sys.executable, "-m", "view_env.data", "make-shapes", "--root", str(tmp_path / "x"),
               "--num-train", "0", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "num_train" in done.stderr and "0" in done.stderr
