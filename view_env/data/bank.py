"""The image bank: decoded images resident on a device, so one kernel call renders every view.

An :class:`ImageBank` holds ``P`` images resized (stretched) to a square ``C x C`` canvas as ``uint8
[P, 3, C, C]`` on a chosen device, with each image's original size, so a view box given in normalised image
coordinates maps to the canvas directly and its true aspect ratio is still known. Annotations come along as padded
tensors. An :class:`ImagePool` is a bank of fixed capacity over a dataset larger than memory: a background thread
decodes images from the whole dataset, and :meth:`ImagePool.refresh` swaps them into the resident slots.

Images that cannot be decoded are skipped, counted and reported once with a :class:`SkippedImagesWarning`; a bank
in which no image could be read raises :class:`NoReadableImagesError`.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from view_env.data.base import ImageDataset
from view_env.data.errors import NoReadableImagesError, SkippedImagesWarning, UnreadableImageError


class _Loaded:
    """One decoded image ready to enter a bank: canvas pixels plus normalised annotations."""

    __slots__ = ("index", "pixels", "height", "width", "boxes", "labels", "captions")

    def __init__(self, dataset: ImageDataset, index: int, canvas_size: int) -> None:
        decoded = dataset.read(index, min_side=canvas_size)
        record = dataset.records[index]
        resized = decoded.image.resize((canvas_size, canvas_size), Image.Resampling.BILINEAR)
        self.index = index
        self.pixels = np.array(resized, dtype=np.uint8)  # (C, C, 3), writable
        # Annotations are in the coordinate frame of the recorded size where the source states one.
        self.width = record.width or decoded.width
        self.height = record.height or decoded.height
        scale = np.array([self.width, self.height, self.width, self.height], dtype=np.float32)
        self.boxes = np.clip(record.boxes / scale, 0.0, 1.0).astype(np.float32)  # (K, 4) normalised xyxy
        self.labels = record.labels
        self.captions = record.captions


def _default_workers(num_workers: int | None) -> int:
    if num_workers is None:
        return max(1, min(8, os.cpu_count() or 1))
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return num_workers


def _load_many(
    dataset: ImageDataset, indices: Sequence[int], canvas_size: int, executor: ThreadPoolExecutor, chunk: int = 32
) -> Iterator[_Loaded | UnreadableImageError]:
    """Decode ``indices`` in order with the executor's threads; contiguous chunks keep video decoding sequential."""

    def load_chunk(part: Sequence[int]) -> list[_Loaded | UnreadableImageError]:
        out: list[_Loaded | UnreadableImageError] = []
        for index in part:
            try:
                out.append(_Loaded(dataset, int(index), canvas_size))
            except UnreadableImageError as error:
                out.append(error)
        return out

    chunks = [indices[i : i + chunk] for i in range(0, len(indices), chunk)]
    for results in executor.map(load_chunk, chunks):
        yield from results


def _warn_skipped(failures: list[UnreadableImageError], total: int, dataset: ImageDataset) -> None:
    examples = "; ".join(f"{f.key} ({f.reason})" for f in failures[:3])
    warnings.warn(
        f"{dataset.name}: skipped {len(failures)} of {total} images that could not be read, e.g. {examples}",
        SkippedImagesWarning,
        stacklevel=3,
    )


def default_canvas_size(obs_size: int) -> int:
    """The default side of the bank's square canvas for views of ``obs_size`` pixels: twice the view, kept within
    ``[128, 256]`` (enough resolution for a zoomed-in view, bounded memory for large views)."""
    return min(256, max(128, 2 * obs_size))


def _check_canvas(canvas_size: int) -> None:
    if not isinstance(canvas_size, int) or isinstance(canvas_size, bool) or canvas_size < 8:
        raise ValueError(f"canvas_size must be an integer >= 8 (pixels), got {canvas_size!r}")


class ImageBank:
    """Decoded images and their annotations as tensors on one device.

    Attributes:
        images: ``uint8 [P, 3, C, C]`` images stretched to the square canvas.
        sizes: ``int64 [P, 2]`` original ``(height, width)`` of each image.
        dataset_index: ``int64 [P]`` position of each image in :attr:`dataset`.
        boxes: ``float32 [P, M, 4]`` instance boxes ``(x0, y0, x1, y1)`` normalised to ``[0, 1]``; padding is 0.
        labels: ``int64 [P, M]`` contiguous category index of each box; padding is -1.
        captions: ``P`` tuples of caption strings (host memory).
        dataset: The source the images came from.
        num_skipped: How many images could not be read and were left out.
    """

    def __init__(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor,
        dataset_index: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        captions: list[tuple[str, ...]],
        dataset: ImageDataset,
        num_skipped: int = 0,
    ) -> None:
        self.images = images
        self.sizes = sizes
        self.dataset_index = dataset_index
        self.boxes = boxes
        self.labels = labels
        self.captions = captions
        self.dataset = dataset
        self.num_skipped = num_skipped

    @property
    def canvas_size(self) -> int:
        """Side ``C`` of the square canvas."""
        return int(self.images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_categories(self) -> int:
        return self.dataset.num_categories

    @property
    def categories(self) -> tuple[str, ...]:
        return self.dataset.categories

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.dataset.name}: {len(self)} images at {self.canvas_size}px on {self.device}, "
            f"{self.boxes.shape[1]} box slots, {self.num_skipped} skipped)"
        )

    def refresh(self, max_images: int | None = None, busy: torch.Tensor | None = None) -> int:
        """Swap newly decoded images into the bank. A static bank has none: returns 0."""
        return 0

    @classmethod
    def from_dataset(
        cls,
        dataset: ImageDataset,
        *,
        canvas_size: int = 128,
        device: str | torch.device = "cpu",
        indices: Sequence[int] | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> ImageBank:
        """Decode ``dataset`` (or the images at ``indices``) into a bank on ``device``.

        Args:
            dataset: Any :class:`ImageDataset`.
            canvas_size: Side ``C`` of the square canvas each image is resized to.
            device: Where the tensors live.
            indices: Positions in ``dataset`` to load, in bank order; all of them by default.
            num_workers: Decoding threads (PIL releases the GIL while decoding); default ``min(8, cpu_count)``.
            progress: Show a progress bar.

        Raises:
            NoReadableImagesError: Not a single image could be decoded.
        """
        _check_canvas(canvas_size)
        order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        bad = [i for i in order if not 0 <= i < len(dataset)]
        if bad:
            raise IndexError(f"indices {bad[:5]} are outside the dataset of {len(dataset)} images")
        if not order:
            raise ValueError("an image bank needs at least one image; indices is empty")
        pixels = torch.empty((len(order), canvas_size, canvas_size, 3), dtype=torch.uint8)
        loaded: list[_Loaded] = []
        failures: list[UnreadableImageError] = []
        with ThreadPoolExecutor(_default_workers(num_workers), thread_name_prefix="view_env-decode") as executor:
            bar = tqdm(total=len(order), desc=f"decoding {dataset.name}", unit="img", disable=not progress)
            for item in _load_many(dataset, order, canvas_size, executor):
                if isinstance(item, UnreadableImageError):
                    failures.append(item)
                else:
                    pixels[len(loaded)] = torch.from_numpy(item.pixels)
                    item.pixels = None  # the canvas now lives in `pixels`; free the copy
                    loaded.append(item)
                bar.update(1)
            bar.close()
        if not loaded:
            raise NoReadableImagesError(
                f"{dataset.name} ({len(order)} images)",
                f"none of the images could be read; first failure: {failures[0]}",
            )
        if failures:
            _warn_skipped(failures, len(order), dataset)
        width = max((len(item.labels) for item in loaded), default=0)
        boxes, labels = _pad_annotations(loaded, width)
        device = torch.device(device)
        return cls(
            images=pixels[: len(loaded)].permute(0, 3, 1, 2).contiguous().to(device),
            sizes=torch.tensor([[item.height, item.width] for item in loaded], dtype=torch.int64, device=device),
            dataset_index=torch.tensor([item.index for item in loaded], dtype=torch.int64, device=device),
            boxes=boxes.to(device),
            labels=labels.to(device),
            captions=[item.captions for item in loaded],
            dataset=dataset,
            num_skipped=len(failures),
        )


def _pad_annotations(items: Sequence[_Loaded], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack variable-length annotations into ``float32 [n, width, 4]`` boxes and ``int64 [n, width]`` labels."""
    boxes = torch.zeros((len(items), width, 4), dtype=torch.float32)
    labels = torch.full((len(items), width), -1, dtype=torch.int64)
    for row, item in enumerate(items):
        count = min(len(item.labels), width)
        if count:
            boxes[row, :count] = torch.from_numpy(item.boxes[:count])
            labels[row, :count] = torch.from_numpy(np.asarray(item.labels[:count], dtype=np.int64))
    return boxes, labels


class ImagePool(ImageBank):
    """A bank of fixed capacity over a dataset larger than memory, refreshed by a background loader.

    The pool starts with ``capacity`` images drawn at random. A daemon thread then keeps decoding images (a
    fresh random permutation of the dataset per pass) into a bounded queue; each :meth:`refresh` call swaps the
    ready ones into the oldest slots. Call :meth:`refresh` between environment steps (never concurrently with a
    render), and :meth:`close` (or use ``with``) to stop the thread. Which images are resident at a given step
    depends on decoding speed, so a pool is not bit-for-bit reproducible; use a static :class:`ImageBank` where
    that matters.

    Args:
        dataset: Any :class:`ImageDataset`.
        capacity: Number of resident images ``P``.
        canvas_size: Side ``C`` of the canvas.
        device: Where the resident tensors live.
        seed: Seed of the order in which images are drawn.
        num_workers: Decoding threads.
        prefetch: Most decoded images waiting for a refresh (default: ``capacity // 4``, at least 1).
        progress: Show a progress bar for the initial fill.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        capacity: int,
        *,
        canvas_size: int = 128,
        device: str | torch.device = "cpu",
        seed: int = 0,
        num_workers: int | None = None,
        prefetch: int | None = None,
        progress: bool = True,
    ) -> None:
        _check_canvas(canvas_size)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive number of images, got {capacity!r}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._rng = np.random.default_rng(seed)
        self._workers = _default_workers(num_workers)
        self._max_boxes = dataset.max_boxes
        first = self._rng.permutation(len(dataset))[:capacity]
        bank = ImageBank.from_dataset(
            dataset, canvas_size=canvas_size, device=device, indices=first, num_workers=num_workers,
            progress=progress,
        )
        boxes = torch.zeros((len(bank), self._max_boxes, 4), dtype=torch.float32, device=bank.device)
        labels = torch.full((len(bank), self._max_boxes), -1, dtype=torch.int64, device=bank.device)
        boxes[:, : bank.boxes.shape[1]] = bank.boxes
        labels[:, : bank.labels.shape[1]] = bank.labels
        super().__init__(bank.images, bank.sizes, bank.dataset_index, boxes, labels, bank.captions, dataset,
                         bank.num_skipped)
        self._next_slot = 0
        self._initial_skipped = bank.num_skipped
        self._reported = bank.num_skipped > 0
        self._ready: queue.Queue[_Loaded] = queue.Queue(maxsize=prefetch or max(1, capacity // 4))
        self._failures: list[UnreadableImageError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="view_env-pool", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        with ThreadPoolExecutor(self._workers, thread_name_prefix="view_env-pool-decode") as executor:
            while not self._stop.is_set():
                order = self._rng.permutation(len(self.dataset))
                produced = 0
                for start in range(0, len(order), 64):
                    for item in _load_many(self.dataset, order[start : start + 64], self.canvas_size, executor):
                        if isinstance(item, UnreadableImageError):
                            self._failures.append(item)
                            continue
                        produced += 1
                        if not self._offer(item):
                            return
                if produced == 0:
                    return  # a whole pass decoded nothing new: keep the resident images, stop spinning

    def _offer(self, item: _Loaded) -> bool:
        """Put ``item`` in the ready queue, waiting while it is full; ``False`` once the pool is closing."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def refresh(self, max_images: int | None = None, busy: torch.Tensor | None = None) -> int:
        """Swap up to ``max_images`` decoded images (all that are ready by default) into the oldest free slots.

        Args:
            max_images: Most slots to replace.
            busy: ``bool [P]`` slots that must keep their image (e.g. those an environment is viewing).

        Never blocks. Returns how many slots were replaced.
        """
        free = torch.arange(len(self)) if busy is None else (~busy.cpu()).nonzero().flatten()
        # Oldest first: free slots from the rotating pointer onwards, then those before it.
        free = torch.cat([free[free >= self._next_slot], free[free < self._next_slot]])
        items: list[_Loaded] = []
        limit = len(free) if max_images is None else min(max_images, len(free))
        while len(items) < limit:
            try:
                items.append(self._ready.get_nowait())
            except queue.Empty:
                break
        self.num_skipped = self._initial_skipped + len(self._failures)
        if self._failures and not self._reported:
            self._reported = True
            _warn_skipped(self._failures, len(self.dataset), self.dataset)
        if not items:
            return 0
        slots = free[: len(items)]
        self._next_slot = int(slots[-1] + 1) % len(self)
        pixels = torch.from_numpy(np.stack([item.pixels for item in items])).permute(0, 3, 1, 2)
        boxes, labels = _pad_annotations(items, self._max_boxes)
        device_slots = slots.to(self.device)
        self.images.index_copy_(0, device_slots, pixels.to(self.device))
        self.sizes.index_copy_(
            0, device_slots, torch.tensor([[i.height, i.width] for i in items], dtype=torch.int64, device=self.device)
        )
        self.dataset_index.index_copy_(
            0, device_slots, torch.tensor([i.index for i in items], dtype=torch.int64, device=self.device)
        )
        self.boxes.index_copy_(0, device_slots, boxes.to(self.device))
        self.labels.index_copy_(0, device_slots, labels.to(self.device))
        self._swap_host(slots.tolist(), items)
        return len(items)

    def _swap_host(self, slots: list[int], items: Sequence[_Loaded]) -> None:
        """Host-side per-slot data of the images just swapped into ``slots`` (their captions)."""
        for slot, item in zip(slots, items, strict=True):
            self.captions[slot] = item.captions

    def close(self) -> None:
        """Stop the background loader and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
