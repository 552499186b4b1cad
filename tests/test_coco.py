"""The COCO reader on a hand-written annotation file, and every bad input it must refuse clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_image, write_json

from view_env.data import CocoDataset, DatasetFormatError, DatasetNotFoundError


def _instances(file_names=("a.jpg", "b.png")):
    return {
        "images": [
            {"id": 42, "file_name": file_names[0], "width": 40, "height": 30},
            {"id": 7, "file_name": file_names[1], "width": 20, "height": 50},
        ],
        # Non-contiguous ids, listed out of order: the index follows ascending id.
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 5.25], "area": 1, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 90, "bbox": [30, 20, 20, 20], "area": 1, "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 50], "area": 1, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [5, 5, 0, 4], "area": 0, "iscrowd": 0},
        ],
    }


@pytest.fixture
def coco_root(tmp_path):
    write_image(tmp_path / "val2017" / "a.jpg", (40, 30))
    write_image(tmp_path / "val2017" / "b.png", (20, 50), mode="L")
    write_json(tmp_path / "annotations" / "instances_val2017.json", _instances())
    write_json(tmp_path / "annotations" / "captions_val2017.json", {"annotations": [
        {"id": 1, "image_id": 7, "caption": " A tall grey image. "},
        {"id": 2, "image_id": 42, "caption": "A red one."},
        {"id": 3, "image_id": 7, "caption": "Second caption."},
    ]})
    return tmp_path


def test_hand_written_coco_is_read_exactly(coco_root):
    dataset = CocoDataset(coco_root, split="val")
    assert dataset.categories == ("person", "car", "toothbrush")
    assert dataset.category_ids == (1, 3, 90)
    assert dataset.image_ids == [42, 7]
    first, second = dataset.records
    assert (first.key, first.width, first.height) == ("val2017/a.jpg", 40, 30)
    # [x, y, w, h] -> (x0, y0, x1, y1), clipped to the 40x30 image.
    np.testing.assert_array_equal(first.boxes, np.array([[1.5, 2.0, 11.5, 7.25], [30, 20, 40, 30]], np.float32))
    np.testing.assert_array_equal(first.labels, [1, 2])
    assert first.captions == ("A red one.",)
    np.testing.assert_array_equal(second.boxes, np.array([[0, 0, 20, 50]], np.float32))
    np.testing.assert_array_equal(second.labels, [0])
    assert second.captions == ("A tall grey image.", "Second caption.")
    assert dataset.dropped_boxes == 1  # the zero-width box
    assert dataset.max_boxes == 2


def test_images_decode_lazily_to_rgb(coco_root):
    dataset = CocoDataset(coco_root, split="val2017")
    decoded = dataset.read(1)
    assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (20, 50)


def test_root_from_environment_variable(coco_root, monkeypatch):
    monkeypatch.setenv("VIEW_ENV_COCO_ROOT", str(coco_root))
    assert len(CocoDataset(split="val")) == 2


def test_missing_root_names_layout_and_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("VIEW_ENV_COCO_ROOT", str(tmp_path / "from_env"))
    monkeypatch.setenv("VIEW_ENV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as caught:
        CocoDataset(split="val")
    message = str(caught.value)
    assert "instances_val2017.json" in message and "val2017/*.jpg" in message
    assert str(tmp_path / "from_env") in message and "VIEW_ENV_COCO_ROOT" in message
    assert str(tmp_path / "cache" / "coco") in message
    with pytest.raises(DatasetNotFoundError, match="root= argument"):
        CocoDataset(tmp_path / "nowhere", split="val")


def test_malformed_json_names_the_file(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match=r"instances_val2017\.json: malformed JSON at line 1"):
        CocoDataset(coco_root, split="val")


def test_malformed_captions_name_the_file(coco_root):
    (coco_root / "annotations" / "captions_val2017.json").write_text("not json")
    with pytest.raises(DatasetFormatError, match=r"captions_val2017\.json"):
        CocoDataset(coco_root, split="val")


@pytest.mark.parametrize("bad_name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.jpg"])
def test_file_names_cannot_escape_the_root(coco_root, bad_name):
    write_json(coco_root / "annotations" / "instances_val2017.json", _instances((bad_name, "b.png")))
    with pytest.raises(DatasetFormatError, match="escapes the dataset root|is absolute") as caught:
        CocoDataset(coco_root, split="val")
    assert bad_name in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("images"), "expected a list under 'images'"),
        (lambda d: d["annotations"][0].update(image_id=999), "unknown image id 999"),
        (lambda d: d["annotations"][0].update(category_id=5), "unknown category id 5"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "not 4 numbers"),
        (lambda d: d["images"][0].pop("width"), "no 'width' field"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 42 is listed twice"),
    ],
)
def test_schema_errors_name_the_problem(coco_root, mutate, match):
    document = _instances()
    mutate(document)
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match=match) as caught:
        CocoDataset(coco_root, split="val")
    assert str(path) in str(caught.value)
