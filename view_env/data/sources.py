"""Every image source by name, and the Shapes dataset as a COCO dataset generated on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from view_env.data.base import ImageDataset
from view_env.data.coco import CocoDataset
from view_env.data.folder import ImageFolderDataset


class ShapesDataset(CocoDataset):
    """The generated Shapes scenes, read back through the COCO reader.

    Args:
        root: Where the set lives; ``None`` uses the cache (``$VIEW_ENV_CACHE``, default ``~/.cache/view_env``).
            A folder holding a finished set (its ``shapes.json`` marker) is read whatever settings made it, as long
            as the current generator version made it (an older set raises ``DatasetFormatError``); a missing set
            is generated there first with the settings below, with a progress bar.
        split: ``"train"`` or ``"val"``.
        num_train, num_val, image_size, seed: The generator's settings (the default set: 10,000 + 1,000 images
            of 128 px, seed 0).
        progress: Show the generator's progress bar.
    """

    name = "shapes"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        num_train: int = 10000,
        num_val: int = 1000,
        image_size: int = 128,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        from view_env.data.shapes import ensure_shapes, finished_shapes_root  # the generator loads only when asked

        location = finished_shapes_root(root) if root is not None else None  # a finished set, whatever its settings
        if location is None:
            location = ensure_shapes(
                root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, progress=progress
            )
        super().__init__(location, split)


def _video_dataset(*args: Any, **kwargs: Any) -> ImageDataset:
    from view_env.data.video import VideoDataset  # PyAV is optional: imported only when asked for

    return VideoDataset(*args, **kwargs)


def _webdataset_shards(*args: Any, **kwargs: Any) -> Any:
    from view_env.data.stream import WebDatasetShards  # webdataset is imported only when a stream is read

    return WebDatasetShards(*args, **kwargs)


#: Constructors by source name; each takes ``root=`` first. ``webdataset`` is a stream, not an indexable
#: :class:`ImageDataset`: the environments put it in a :class:`~view_env.data.stream.StreamingImagePool`.
DATASETS: dict[str, Any] = {
    "shapes": ShapesDataset,
    "coco": CocoDataset,
    "images": ImageFolderDataset,
    "video": _video_dataset,
    "webdataset": _webdataset_shards,
}


def load_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Build the source called ``name`` (one of :data:`DATASETS`) with ``kwargs`` (``webdataset``: a
    :class:`~view_env.data.stream.WebDatasetShards`).

    Raises:
        ValueError: ``name`` is not a known source.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
