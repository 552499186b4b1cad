"""Tests of the procedural Shapes generator: scenes, captions, the COCO layout on disk and its safety rules."""

from __future__ import annotations

import colorsys
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from view_env.data import ShapesDataset, shapes
from view_env.data.errors import DatasetFormatError
from view_env.data.shapes import (
    CATEGORIES,
    COLOURS,
    GENERATOR_VERSION,
    SHAPES,
    TEXTURES,
    box_relations,
    colour_word,
    default_shapes_root,
    ensure_shapes,
    generate_scene,
    write_shapes,
)

SIZE = 64
REPO_ROOT = Path(__file__).resolve().parents[1]


def _scenes(count: int = 40, split: str = "train", size: int = SIZE) -> list[shapes.Scene]:
    return [generate_scene(0, split, index, size) for index in range(count)]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_categories_are_shapes_never_colours() -> None:
    assert CATEGORIES == SHAPES and 8 <= len(CATEGORIES) <= 12
    assert len(set(CATEGORIES)) == len(CATEGORIES)
    assert not {word for name in CATEGORIES for word in name.split(" ")} & (set(COLOURS) | set(TEXTURES))
    assert "solid" in TEXTURES


def test_colour_word_hand_checked() -> None:
    assert colour_word(0.0, 1.0, 1.0) == colour_word(0.99, 0.8, 0.6) == "red"
    assert colour_word(0.62, 0.9, 0.8) == "blue"
    assert colour_word(1 / 3, 0.7, 0.5) == "green"
    assert colour_word(0.08, 0.9, 0.95) == "orange"
    assert colour_word(0.08, 0.9, 0.45) == "brown"
    assert colour_word(0.5, 0.1, 0.9) == "white"
    assert colour_word(0.5, 0.1, 0.5) == "grey"


def test_object_colours_are_drawn_independently_of_the_shape() -> None:
    """Each object's colour word is the word of its drawn colour, and every shape comes in many colours."""
    words: dict[str, set[str]] = {shape: set() for shape in SHAPES}
    for scene in _scenes(100):
        assert scene.rgb.dtype == np.float32 and scene.rgb.shape == (len(scene.labels), 3)
        for label, colour, rgb in zip(scene.labels.tolist(), scene.colours, scene.rgb.tolist(), strict=True):
            assert colour in COLOURS and colour == colour_word(*colorsys.rgb_to_hsv(*(v / 255.0 for v in rgb)))
            words[SHAPES[label]].add(colour)
    assert all(len(seen) >= 6 for seen in words.values()), words


def test_background_varies_across_the_image() -> None:
    """The background is several independently drawn colours, not one tint: its quadrants' mean colours differ."""
    spreads = []
    for index in range(40):
        background, kind = shapes._background(np.random.default_rng([0, 0, index]), SIZE)
        assert background.dtype == np.float32 and background.shape == (SIZE, SIZE, 3)
        assert kind in shapes._BACKGROUND_WORDS
        assert 0.0 <= background.min() and background.max() <= 255.0
        half = SIZE // 2
        quadrants = background.reshape(2, half, 2, half, 3).mean(axis=(1, 3)).reshape(4, 3)
        spreads.append(np.linalg.norm(quadrants[:, None] - quadrants[None], axis=-1).max())
    assert np.median(spreads) > 30.0, spreads


def test_generate_scene_is_deterministic() -> None:
    first, second = generate_scene(3, "val", 5, SIZE), generate_scene(3, "val", 5, SIZE)
    assert first.image.tobytes() == second.image.tobytes()
    np.testing.assert_array_equal(first.boxes, second.boxes)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.captions == second.captions
    other = generate_scene(3, "train", 5, SIZE)
    assert other.image.tobytes() != first.image.tobytes()


def test_scene_fields_counts_and_box_bounds() -> None:
    for scene in _scenes():
        count = len(scene.labels)
        assert shapes.MIN_OBJECTS <= count <= shapes.MAX_OBJECTS
        assert scene.image.mode == "RGB" and scene.image.size == (SIZE, SIZE)
        assert scene.boxes.dtype == np.int64 and scene.boxes.shape == (count, 4)
        assert scene.labels.dtype == np.int64 and scene.areas.dtype == np.int64
        assert ((scene.labels >= 0) & (scene.labels < len(CATEGORIES))).all()
        x0, y0, x1, y1 = scene.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
        width, height = x1 - x0, y1 - y0
        assert (width > 0).all() and (height > 0).all()
        assert (np.maximum(width, height) <= np.ceil(shapes.MAX_SIZE_FRACTION * SIZE) + 1).all()
        assert len(scene.textures) == count and set(scene.textures) <= set(TEXTURES)


def test_boxes_and_areas_are_the_visible_pixels() -> None:
    for scene in _scenes():
        instance_map = scene.instance_map
        assert instance_map.shape == (SIZE, SIZE)
        assert set(np.unique(instance_map).tolist()) <= {-1, *range(len(scene.labels))}
        for k, (x0, y0, x1, y1) in enumerate(scene.boxes.tolist()):
            ys, xs = np.nonzero(instance_map == k)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            assert len(xs) == scene.areas[k]


def test_every_object_keeps_enough_of_itself_visible() -> None:
    for index in range(40):
        rng = np.random.default_rng([0, 0, index])
        objects, instance_map = shapes._place_objects(rng, SIZE)
        for k, obj in enumerate(objects):
            visible = np.count_nonzero(instance_map == k)
            assert visible >= shapes.MIN_VISIBLE_FRACTION * obj.area > 0
            # Everything outside the object's own mask belongs to someone else.
            assert not (instance_map[obj.region][~obj.mask] == k).any()


def test_captions_are_five_and_name_a_present_category() -> None:
    for scene in _scenes():
        present = {CATEGORIES[label] for label in scene.labels.tolist()}
        absent = set(CATEGORIES) - present
        assert len(scene.captions) == 5
        for caption in scene.captions:
            assert any(name in caption for name in present), caption
            assert not any(re.search(rf"\b{name}(e?s)?\b", caption) for name in absent), caption


def test_box_relations_hand_checked() -> None:
    left, right = np.array([0, 0, 10, 10]), np.array([20, 5, 30, 15])
    assert box_relations(left, right, 100) == ("left of", "next to")
    assert box_relations(right, left, 100) == ("right of", "next to")
    top, bottom = np.array([40, 0, 60, 20]), np.array([45, 80, 55, 90])
    assert box_relations(top, bottom, 100) == ("above",)
    assert box_relations(bottom, top, 100) == ("below",)
    overlapping = np.array([5, 5, 15, 15])
    assert box_relations(left, overlapping, 100) == ("next to",)


_OBJECT = r"((?:(?:" + "|".join(TEXTURES) + r") )?\w+ \w+)"
_DIRECTIONS = {
    "is to the left of": "left of",
    "is left of": "left of",
    "sits to the left of": "left of",
    "is to the right of": "right of",
    "is above": "above",
    "sits above": "above",
    "is higher up than": "above",
    "is below": "below",
    "is in front of": "front",
    "partly covers": "front",
}
_RELATION = re.compile(rf"^The {_OBJECT} ({'|'.join(_DIRECTIONS)}) the {_OBJECT}\.$")


def _find(scene: shapes.Scene, phrase: str) -> int:
    """The one object that a definite phrase such as ``"striped red circle"`` names."""
    words = phrase.split(" ")
    texture = words[0] if len(words) == 3 else None
    name = " ".join(words[-2:])
    matches = [
        k
        for k, label in enumerate(scene.labels.tolist())
        if f"{scene.colours[k]} {SHAPES[label]}" == name and texture in (None, scene.textures[k])
    ]
    if texture is None:
        assert len(matches) == 1, (phrase, scene.captions)
    return matches[0]


def test_relations_in_captions_hold() -> None:
    checked = 0
    for scene in _scenes(80, size=128):
        for caption in scene.captions:
            match = _RELATION.match(caption)
            if match is None:
                continue
            a, b = _find(scene, match.group(1)), _find(scene, match.group(3))
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = scene.boxes[a].tolist(), scene.boxes[b].tolist()
            relation = _DIRECTIONS[match.group(2)]
            if relation == "left of":
                assert ax1 <= bx0, caption
            elif relation == "right of":
                assert bx1 <= ax0, caption
            elif relation == "above":
                assert ay1 <= by0, caption
            elif relation == "below":
                assert by1 <= ay0, caption
            else:  # drawn later, and the boxes meet
                assert a > b and max(ax0, bx0) < min(ax1, bx1) and max(ay0, by0) < min(ay1, by1), caption
            checked += 1
    assert checked >= 20


def test_write_shapes_layout_and_schema(tmp_path: Path) -> None:
    root = write_shapes(tmp_path / "set", num_train=4, num_val=2, image_size=SIZE, seed=1, workers=1, progress=False)
    assert root == tmp_path / "set"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no staging folder left behind
    assert json.loads((root / "shapes.json").read_text())["num_train"] == 4
    for split, count in (("train", 4), ("val", 2)):
        instances = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        captions = json.loads((root / "annotations" / f"captions_{split}2017.json").read_text())
        assert len(instances["images"]) == count and captions["images"] == instances["images"]
        for image in instances["images"]:
            assert set(image) >= {"id", "file_name", "width", "height"}
            assert re.fullmatch(r"\d{12}\.jpg", image["file_name"])
            with Image.open(root / f"{split}2017" / image["file_name"]) as decoded:
                assert decoded.size == (SIZE, SIZE) and decoded.format == "JPEG"
        assert instances["categories"][0] == {"id": 1, "name": CATEGORIES[0], "supercategory": "shape"}
        assert [c["id"] for c in instances["categories"]] == list(range(1, len(CATEGORIES) + 1))
        for annotation in instances["annotations"]:
            assert set(annotation) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            assert annotation["iscrowd"] == 0 and all(isinstance(v, int) for v in annotation["bbox"])
        per_image = [a["image_id"] for a in captions["annotations"]]
        assert all(per_image.count(image["id"]) == 5 for image in instances["images"])
        assert all(set(a) == {"id", "image_id", "caption"} for a in captions["annotations"])
    # The json describes exactly what generate_scene produces.
    scene = generate_scene(1, "val", 1, SIZE)
    val = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    image_id = val["images"][1]["id"]
    rows = [a for a in val["annotations"] if a["image_id"] == image_id]
    assert [a["category_id"] - 1 for a in rows] == scene.labels.tolist()
    assert [a["bbox"] for a in rows] == [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in scene.boxes.tolist()]
    assert [a["area"] for a in rows] == scene.areas.tolist()


def test_worker_count_does_not_change_the_output(tmp_path: Path) -> None:
    one = write_shapes(tmp_path / "one", num_train=4, num_val=2, image_size=SIZE, workers=1, progress=False)
    two = write_shapes(tmp_path / "two", num_train=4, num_val=2, image_size=SIZE, workers=2, progress=False)
    assert _tree_bytes(one) == _tree_bytes(two)


def test_existing_complete_root_is_returned_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_shapes(tmp_path / "set", num_train=2, num_val=1, image_size=SIZE, workers=1, progress=False)
    before = _tree_bytes(root)
    marker_time = (root / "shapes.json").stat().st_mtime_ns
    assert ensure_shapes(root, num_train=2, num_val=1, image_size=SIZE) == root
    assert write_shapes(root, num_train=2, num_val=1, image_size=SIZE, workers=1) == root
    assert _tree_bytes(root) == before and (root / "shapes.json").stat().st_mtime_ns == marker_time
    assert capsys.readouterr() == ("", "")


def test_existing_different_root_is_refused(tmp_path: Path) -> None:
    root = write_shapes(tmp_path / "set", num_train=2, num_val=1, image_size=SIZE, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="another folder") as caught:
        write_shapes(root, num_train=2, num_val=1, image_size=SIZE, seed=7, workers=1, progress=False)
    assert str(root) in str(caught.value) and '"seed": 7' in str(caught.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a data set")
    with pytest.raises(FileExistsError, match="no Shapes marker"):
        ensure_shapes(foreign, num_train=2, num_val=1, image_size=SIZE, progress=False)
    assert (foreign / "notes.txt").read_text() == "not a data set"


def test_empty_root_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    root = write_shapes(tmp_path / "set", num_train=2, num_val=0, image_size=SIZE, workers=1, progress=False)
    assert (root / "shapes.json").is_file()
    assert json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"] == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_train": 0}, "num_train must be an integer >= 1, got 0"),
        ({"num_val": -1}, "num_val must be an integer >= 0, got -1"),
        ({"image_size": 31}, "image_size must be an integer >= 32, got 31"),
        ({"seed": -2}, "seed must be an integer >= 0, got -2"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, arguments: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_shapes(tmp_path / "set", **{"num_train": 2, "num_val": 1, "image_size": SIZE, **arguments})
    assert not (tmp_path / "set").exists()


def test_bad_scene_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'test'"):
        generate_scene(0, "test", 0, SIZE)
    with pytest.raises(ValueError, match="got 16"):
        generate_scene(0, "train", 0, 16)
    with pytest.raises(TypeError, match="2.5"):
        generate_scene(0, "train", 2.5, SIZE)  # type: ignore[arg-type]


def test_default_root_lives_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEW_ENV_CACHE", str(tmp_path))
    assert default_shapes_root() == tmp_path / f"{GENERATOR_VERSION}-10000-1000-128-0"
    root = ensure_shapes(num_train=2, num_val=1, image_size=SIZE, seed=3, progress=False)
    assert root == tmp_path / f"{GENERATOR_VERSION}-2-1-64-3" and (root / "shapes.json").is_file()


def test_a_set_of_another_generator_version_is_never_read(tmp_path: Path) -> None:
    root = write_shapes(tmp_path / "set", num_train=2, num_val=1, image_size=SIZE, workers=1, progress=False)
    marker = json.loads((root / "shapes.json").read_text())
    (root / "shapes.json").write_text(json.dumps({**marker, "generator": "shapes-v1"}))
    with pytest.raises(DatasetFormatError, match=f"generator 'shapes-v1', not the current '{GENERATOR_VERSION}'"):
        ShapesDataset(root, split="train", progress=False)
    with pytest.raises(FileExistsError, match="shapes-v1"):
        ensure_shapes(root, num_train=2, num_val=1, image_size=SIZE, progress=False)


def test_ensure_shapes_from_two_processes_at_once(tmp_path: Path) -> None:
    script = (
        "import sys; from view_env.data.shapes import ensure_shapes; "
        "print(ensure_shapes(sys.argv[1], num_train=12, num_val=2, image_size=64, progress=False))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    root = tmp_path / "set"
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(root)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs == [str(root), str(root)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]
    assert len(list((root / "train2017").iterdir())) == 12
