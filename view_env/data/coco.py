"""Reader for the COCO 2017 layout: images plus ``instances_*.json`` and ``captions_*.json``.

Layout::

    <root>/train2017/*.jpg
    <root>/val2017/*.jpg
    <root>/annotations/instances_train2017.json   (required: lists the images, boxes and categories)
    <root>/annotations/captions_train2017.json    (optional: five captions per image in COCO)

Category index: COCO category ids are not contiguous (1..90 with gaps in 2017). The reader maps them to a
contiguous index ``0..K-1`` by ascending id, so for COCO 2017 id 1 (person) is index 0 and id 90 (toothbrush) is
index 79. ``CocoDataset.category_ids[k]`` gives the original id of index ``k``.

Boxes: COCO's ``[x, y, width, height]`` in pixels become ``(x0, y0, x1, y1)`` pixels, clipped to the image. Boxes
with no area after clipping are dropped (a few exist in COCO) and counted in ``CocoDataset.dropped_boxes``.
Crowd annotations (``iscrowd`` 1) are kept: they mark where objects of that category are.

Images are decoded lazily, one at a time, by :meth:`CocoDataset.read`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from view_env.data.base import ImageDataset, ImageRecord, cache_dir, resolve_inside
from view_env.data.errors import DatasetFormatError, DatasetNotFoundError

#: Environment variable naming the COCO root when ``root=`` is not given.
COCO_ROOT_ENV = "VIEW_ENV_COCO_ROOT"

COCO_LAYOUT = """  <root>/{split}/*.jpg
  <root>/annotations/instances_{split}.json
  <root>/annotations/captions_{split}.json   (optional)"""


def load_json(path: Path) -> Any:
    """Read a JSON file, turning syntax errors into a :class:`DatasetFormatError` that names the file and position."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(
            path, f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except UnicodeDecodeError as error:
        raise DatasetFormatError(path, f"not UTF-8 text: {error}") from error


def _require_list(document: Any, key: str, path: Path) -> list[Any]:
    if not isinstance(document, dict):
        raise DatasetFormatError(path, f"expected a JSON object at the top level, found {type(document).__name__}")
    value = document.get(key)
    if not isinstance(value, list):
        found = "missing" if value is None else type(value).__name__
        raise DatasetFormatError(path, f"expected a list under {key!r} (COCO schema), found {found}")
    return value


def _field(entry: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetFormatError(path, f"{where} has no {key!r} field: {str(entry)[:120]}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetFormatError(path, f"{where} field {key!r} has the wrong type: {value!r}")
    return value


def find_coco_root(root: str | Path | None, split_folder: str) -> Path:
    """Locate a COCO root holding ``annotations/instances_<split_folder>.json``.

    Looks at ``root`` when given, else ``$VIEW_ENV_COCO_ROOT``, else ``<cache>/coco``.

    Raises:
        DatasetNotFoundError: Naming the expected layout and every place it looked.
    """
    candidates: list[tuple[Path, str]] = []
    if root is not None:
        candidates.append((Path(root).expanduser(), "root= argument"))
    else:
        env = os.environ.get(COCO_ROOT_ENV)
        if env:
            candidates.append((Path(env).expanduser(), f"${COCO_ROOT_ENV}"))
        candidates.append((cache_dir() / "coco", "default cache folder ($VIEW_ENV_CACHE/coco)"))
    looked = []
    for candidate, origin in candidates:
        instances = candidate / "annotations" / f"instances_{split_folder}.json"
        if instances.is_file():
            return candidate
        reason = "folder does not exist" if not candidate.is_dir() else f"no annotations/instances_{split_folder}.json"
        looked.append(f"{candidate} ({origin}: {reason})")
    if root is None and not os.environ.get(COCO_ROOT_ENV):
        looked.append(f"${COCO_ROOT_ENV} (unset)")
    raise DatasetNotFoundError(
        f"COCO split {split_folder!r}", COCO_LAYOUT.format(split=split_folder), looked
    )


class CocoDataset(ImageDataset):
    """Images, boxes, categories and captions of one split in the COCO 2017 layout.

    Args:
        root: Dataset root; ``None`` reads ``$VIEW_ENV_COCO_ROOT`` (then ``<cache>/coco``).
        split: ``"train"``, ``"val"`` (joined with ``year``) or a full folder name such as ``"val2017"``.
        year: Year suffix of the split folders.
        captions: Read ``captions_<split>.json`` when present.

    Raises:
        DatasetNotFoundError: The root or the instances file is missing.
        DatasetFormatError: An annotation file is malformed, refers to unknown ids, or names a file outside root.
    """

    name = "coco"

    def __init__(
        self, root: str | Path | None = None, split: str = "train", *, year: str = "2017", captions: bool = True
    ) -> None:
        split_folder = f"{split}{year}" if split in ("train", "val", "test", "unlabeled") else split
        self.root = find_coco_root(root, split_folder)
        self.split = split_folder
        self.image_dir = self.root / split_folder
        instances_path = self.root / "annotations" / f"instances_{split_folder}.json"
        instances = load_json(instances_path)
        index_of_category = self._read_categories(instances, instances_path)
        position, file_names, sizes = self._read_images(instances, instances_path)
        boxes, labels = self._read_boxes(instances, instances_path, position, sizes, index_of_category)
        captions_path = self.root / "annotations" / f"captions_{split_folder}.json"
        self.has_captions = captions and captions_path.is_file()
        caption_lists = _read_captions(captions_path, position) if self.has_captions else defaultdict(list)
        self.records = [
            ImageRecord(
                key=f"{split_folder}/{file_names[i]}",
                width=sizes[i][0],
                height=sizes[i][1],
                boxes=np.asarray(boxes[image_id], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels[image_id], dtype=np.int64),
                captions=tuple(caption_lists[image_id]),
            )
            for i, image_id in enumerate(self.image_ids)
        ]

    def _read_categories(self, instances: dict, instances_path: Path) -> dict[int, int]:
        """Sets ``category_ids`` and ``categories`` (sorted by id); returns the contiguous index of each id."""
        categories = sorted(_require_list(instances, "categories", instances_path), key=lambda c: _field(
            c, "id", int, instances_path, "category"))
        self.category_ids: tuple[int, ...] = tuple(c["id"] for c in categories)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DatasetFormatError(instances_path, f"duplicate category ids in {list(self.category_ids)}")
        self.categories = tuple(str(_field(c, "name", str, instances_path, "category")) for c in categories)
        return {cid: k for k, cid in enumerate(self.category_ids)}

    def _read_images(self, instances: dict, instances_path: Path
                     ) -> tuple[dict[int, int], list[str], list[tuple[int, int]]]:
        """Sets ``image_ids`` and ``paths``; returns each id's position, the file names and (width, height)."""
        self.image_ids: list[int] = []
        self.paths: list[Path] = []
        file_names: list[str] = []
        sizes: list[tuple[int, int]] = []
        position: dict[int, int] = {}
        for entry in _require_list(instances, "images", instances_path):
            image_id = _field(entry, "id", int, instances_path, "image")
            if image_id in position:
                raise DatasetFormatError(instances_path, f"image id {image_id} is listed twice")
            file_name = _field(entry, "file_name", str, instances_path, f"image {image_id}")
            width = _field(entry, "width", int, instances_path, f"image {image_id}")
            height = _field(entry, "height", int, instances_path, f"image {image_id}")
            if width <= 0 or height <= 0:
                raise DatasetFormatError(instances_path, f"image {image_id} has size {width}x{height}")
            position[image_id] = len(self.image_ids)
            self.image_ids.append(image_id)
            self.paths.append(resolve_inside(self.image_dir, file_name, instances_path))
            file_names.append(file_name)
            sizes.append((width, height))
        return position, file_names, sizes

    def _read_boxes(self, instances: dict, instances_path: Path, position: dict[int, int],
                    sizes: list[tuple[int, int]], index_of_category: dict[int, int]
                    ) -> tuple[dict[int, list[list[float]]], dict[int, list[int]]]:
        """Boxes clipped to their image, in pixels ``(x0, y0, x1, y1)``, and their category indices, per image id;
        counts the boxes left empty by clipping in ``dropped_boxes``."""
        boxes: dict[int, list[list[float]]] = defaultdict(list)
        labels: dict[int, list[int]] = defaultdict(list)
        self.dropped_boxes = 0
        for entry in _require_list(instances, "annotations", instances_path):
            image_id = _field(entry, "image_id", int, instances_path, "annotation")
            category_id = _field(entry, "category_id", int, instances_path, "annotation")
            bbox = _field(entry, "bbox", list, instances_path, f"annotation of image {image_id}")
            if image_id not in position:
                raise DatasetFormatError(instances_path, f"annotation refers to unknown image id {image_id}")
            if category_id not in index_of_category:
                raise DatasetFormatError(
                    instances_path, f"annotation of image {image_id} has unknown category id {category_id}"
                )
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
                raise DatasetFormatError(instances_path, f"bbox of image {image_id} is not 4 numbers: {bbox!r}")
            width, height = sizes[position[image_id]]
            x, y, w, h = (float(v) for v in bbox)
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                self.dropped_boxes += 1
                continue
            boxes[image_id].append([x0, y0, x1, y1])
            labels[image_id].append(index_of_category[category_id])
        return boxes, labels

    def _open(self, index: int) -> Path:
        return self.paths[index]


def _read_captions(captions_path: Path, position: dict[int, int]) -> dict[int, list[str]]:
    """The captions of each image id in a ``captions_<split>.json``."""
    caption_lists: dict[int, list[str]] = defaultdict(list)
    for entry in _require_list(load_json(captions_path), "annotations", captions_path):
        image_id = _field(entry, "image_id", int, captions_path, "caption")
        text = _field(entry, "caption", str, captions_path, f"caption of image {image_id}")
        if image_id not in position:
            raise DatasetFormatError(captions_path, f"caption refers to unknown image id {image_id}")
        caption_lists[image_id].append(text.strip())
    return caption_lists
