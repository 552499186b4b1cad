"""Image sources and the device-resident image bank.

Sources: :class:`CocoDataset` (COCO 2017 layout), :class:`ShapesDataset` (generated scenes in that layout),
:class:`ImageFolderDataset` (folders and WebDataset ``.tar`` shards, indexed), :class:`WebDatasetShards` (shards
streamed in order, read through a :class:`StreamingImagePool`) and ``VideoDataset`` (video files and frame
folders; ``view_env.data.video``). :class:`ImageBank` and :class:`ImagePool` put decoded images on a device.
See docs/datasets.md.
"""

from __future__ import annotations

from view_env.data.bank import ImageBank, ImagePool, default_canvas_size
from view_env.data.base import ImageDataset, ImageRecord, cache_dir
from view_env.data.coco import CocoDataset
from view_env.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    NoReadableImagesError,
    SkippedImagesWarning,
    UnreadableImageError,
)
from view_env.data.folder import ImageFolderDataset
from view_env.data.sources import DATASETS, ShapesDataset, load_dataset
from view_env.data.stream import StreamingImagePool, WebDatasetShards

__all__ = [
    "DATASETS",
    "CocoDataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageBank",
    "ImageDataset",
    "ImageFolderDataset",
    "ImagePool",
    "ImageRecord",
    "NoReadableImagesError",
    "ShapesDataset",
    "SkippedImagesWarning",
    "StreamingImagePool",
    "UnreadableImageError",
    "WebDatasetShards",
    "cache_dir",
    "default_canvas_size",
    "load_dataset",
]
