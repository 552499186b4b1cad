"""The contract every image source fulfils, and the decoding helpers they share.

A source (COCO, Shapes, image folders, tar shards, video) is an :class:`ImageDataset`: a sized, indexable
collection of :class:`ImageRecord` metadata, read eagerly and cheaply, plus :meth:`ImageDataset.read`, which
decodes one image lazily. Everything downstream (the image bank, the environments) sees only this contract.

Box convention: ``ImageRecord.boxes`` holds absolute pixel coordinates ``(x0, y0, x1, y1)`` in the original image,
``float32`` of shape ``[K, 4]``; ``ImageRecord.labels`` holds the contiguous category index (``int64`` ``[K]``) into
``ImageDataset.categories``.
"""

from __future__ import annotations

import abc
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from PIL import Image

from view_env.data.errors import DatasetFormatError, UnreadableImageError

#: File extensions (lower case) read as still images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

_NO_BOXES = np.zeros((0, 4), dtype=np.float32)
_NO_LABELS = np.zeros((0,), dtype=np.int64)


@dataclass(frozen=True)
class ImageRecord:
    """Metadata of one image; no pixels.

    Attributes:
        key: Stable identity of the image inside its dataset, e.g. ``"val2017/000000000139.jpg"``,
            ``"shard-000001.tar:000042"`` or ``"P01_01:000120"``.
        width: Original width in pixels, or ``None`` when the source does not know it before decoding.
        height: Original height in pixels, or ``None`` likewise.
        boxes: ``float32 [K, 4]`` instance boxes ``(x0, y0, x1, y1)`` in original pixels.
        labels: ``int64 [K]`` contiguous category index of each box.
        captions: The image's captions (possibly none).
        video: For video frames, the identity of the video; ``None`` otherwise.
        frame: For video frames, the frame index inside the video; ``None`` otherwise.
    """

    key: str
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: _NO_BOXES)
    labels: np.ndarray = field(default_factory=lambda: _NO_LABELS)
    captions: tuple[str, ...] = ()
    video: str | None = None
    frame: int | None = None


class DecodedImage(NamedTuple):
    """An RGB image and the size of the original file before any reduced-size decoding."""

    image: Image.Image
    width: int
    height: int


class ImageDataset(abc.ABC):
    """A lazily decoded collection of images with annotations.

    Subclasses set :attr:`name`, :attr:`categories` and :attr:`records` in ``__init__`` and implement
    :meth:`_open`; sources whose images are not files (video) override :meth:`read` instead.
    """

    #: Short name of the source, e.g. ``"coco"``.
    name: str = "images"
    #: Category names; ``labels`` in records index into this tuple.
    categories: tuple[str, ...] = ()
    #: One record per image.
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def num_categories(self) -> int:
        """Number of annotation categories (0 for sources without labels)."""
        return len(self.categories)

    @property
    def max_boxes(self) -> int:
        """Largest number of boxes on any one image (0 for sources without boxes)."""
        return max((len(r.labels) for r in self.records), default=0)

    def _open(self, index: int) -> str | Path | IO[bytes]:
        """Return what :func:`PIL.Image.open` should read for image ``index`` (a path or a binary file)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _open() or read()")

    def read(self, index: int, min_side: int | None = None) -> DecodedImage:
        """Decode image ``index`` as RGB.

        Args:
            index: Position in the dataset, ``0 <= index < len(self)``.
            min_side: When given, the decoder may return a smaller image whose sides are each at least this
                many pixels (JPEG reduced-size decoding), which is much faster for image banks.

        Raises:
            UnreadableImageError: The file is missing, truncated or not an image.
        """
        key = self.records[index].key
        try:
            source = self._open(index)
        except OSError as error:
            raise UnreadableImageError(key, str(error)) from error
        return decode_image(source, key, min_side)

    def describe(self) -> str:
        """A short human-readable summary: counts of images, boxes, categories and captions."""
        num_boxes = sum(len(r.labels) for r in self.records)
        num_captions = sum(len(r.captions) for r in self.records)
        return (
            f"{self.name}: {len(self)} images, {num_boxes} boxes over {self.num_categories} categories, "
            f"{num_captions} captions"
        )


def decode_image(source: str | Path | IO[bytes], key: str, min_side: int | None = None) -> DecodedImage:
    """Decode ``source`` to an RGB :class:`PIL.Image.Image`, converting grayscale, palette and RGBA.

    Args:
        source: A path or an open binary file.
        key: The image's identity, used in error messages.
        min_side: Optional lower bound on both sides of the decoded image (see :meth:`ImageDataset.read`).

    Raises:
        UnreadableImageError: On any decoding failure, with the reason.
    """
    try:
        with warnings.catch_warnings():
            # A decompression-bomb-sized image is rejected below, not merely warned about.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if min_side is not None and image.format == "JPEG":
                # Reduced-size JPEG decoding (DCT scaling): PIL keeps both sides >= the requested size.
                image.draft("RGB", (min_side, min_side))
            if image.mode != "RGB":
                if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                    # Composite transparent pixels over white, as a browser shows them.
                    image = image.convert("RGBA")
                    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, image)
                image = image.convert("RGB")
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImageError(key, f"{type(error).__name__}: {error}") from error
    if width <= 0 or height <= 0:
        raise UnreadableImageError(key, f"empty image of size {width}x{height}")
    return DecodedImage(image, width, height)


def resolve_inside(root: Path, relative: str, source: str | Path) -> Path:
    """Join ``relative`` onto ``root`` and refuse a result outside ``root``.

    The check is lexical (``..`` and absolute names), not through symlinks: datasets are often laid out with
    symlinked split folders on another disk, which is the user's choice, whereas a ``..`` inside an annotation
    file is never legitimate.

    Args:
        root: The dataset root.
        relative: A file name read from an annotation file.
        source: The annotation file it came from, named in the error.

    Raises:
        DatasetFormatError: ``relative`` is absolute or climbs out of ``root``.
    """
    if not isinstance(relative, str) or not relative:
        raise DatasetFormatError(source, f"file name {relative!r} is not a non-empty string")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or os.path.splitdrive(relative)[0]:
        raise DatasetFormatError(source, f"file name {relative!r} is absolute; file names must be relative to {root}")
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(base, relative))
    if not joined.startswith(base + os.sep):
        raise DatasetFormatError(source, f"file name {relative!r} escapes the dataset root {root}")
    return Path(joined)


def cache_dir() -> Path:
    """The folder for generated data: ``$VIEW_ENV_CACHE``, else ``~/.cache/view_env``."""
    configured = os.environ.get("VIEW_ENV_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "view_env"
