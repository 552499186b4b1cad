"""Shared fixtures: small real image files written by the tests themselves."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30),
                mode: str = "RGB") -> Path:
    """Write a solid image of ``size`` (width, height) in ``colour`` with a format taken from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def encoded_image(colour, fmt="JPEG", size=(24, 16), mode="RGB") -> bytes:
    """The bytes of a one-colour image file."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """Write a WebDataset shard: ``samples`` maps key -> {extension: bytes}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A 24 + 8 image Shapes set at 64 px, generated once per test session."""
    from view_env.data.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes") / "tiny", num_train=24, num_val=8, image_size=64, seed=0,
                        workers=1, progress=False)


def one_object_coco(root: Path, box: list[float], size: tuple[int, int] = (100, 100)) -> Path:
    """A COCO root holding one image of ``size`` (width, height) with one 'thing' at ``box`` ([x, y, w, h])."""
    write_image(root / "train2017" / "a.png", size)
    write_json(root / "annotations" / "instances_train2017.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]})
    return root


def synthetic(n: int, start: int = 0, obs_size: int = 4, num_categories: int = 3) -> dict[str, torch.Tensor]:
    """``n`` transitions whose ``image_index`` counts from ``start`` (a unique row id) and fields derive from it."""
    from agents.data import transition_fields

    ids = torch.arange(start, start + n)
    out = {}
    for key, (shape, dtype) in transition_fields(obs_size, num_categories).items():
        value = ids.view(-1, *([1] * len(shape))).expand(n, *shape)
        out[key] = (value % 251).to(dtype) if dtype == torch.uint8 else value.to(dtype).clone()
    return out
