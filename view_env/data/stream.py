"""Images streamed from WebDataset shards: image sets larger than memory (or than an index of them), read in order.

:class:`WebDatasetShards` names a set of ``.tar`` shards (a file, a glob, a brace range such as
``cc12m/{00000..01242}.tar``, or a list of them) and this process's share of it under ``torchrun``: rank ``r`` of
``W`` reads shards ``r, r + W, r + 2W, ...``, so ranks never see one image twice. Nothing is read when it is
built: unlike :class:`~view_env.data.ImageFolderDataset` it never indexes the shards, so a crawl of millions of
images starts at once.

:class:`StreamingImagePool` is an :class:`~view_env.data.ImagePool` fed by that stream, through the ``webdataset``
library's pipeline stages (shard list, split by worker, tar expansion, a shuffle buffer) in a
:class:`torch.utils.data.DataLoader` with worker processes that decode and resize. It starts with the stream's first
``capacity`` images; a background thread keeps decoded images waiting in a bounded queue, and each
:meth:`~view_env.data.ImagePool.refresh` (the environment calls it at resets) swaps them into the oldest free slots.
Each pass over the shards visits them in a new order (seeded), and the shuffle buffer mixes samples of neighbouring
shards. Memory is bounded by the pool, the queue, the shuffle buffer (compressed samples) and the loader's prefetch,
whatever the size of the set.

Samples that cannot be used (a member that is not a decodable image, a key without an image, a truncated or corrupt
shard) are skipped and counted in :attr:`StreamingImagePool.num_skipped`, reported once with a
:class:`~view_env.data.SkippedImagesWarning`, never fatal. Each problem counts where the reader meets it: a shard
cut inside a member counts twice (the member cut short, then the shard's missing end).

Shard layout (as ``img2dataset`` writes it): members grouped by key, an image member (``.jpg``, ``.jpeg``,
``.png``, ``.webp``, ``.bmp``) and optionally a ``.txt`` caption member (one caption per non-empty line). Other
members are ignored; streamed images carry no boxes or categories.
"""

from __future__ import annotations

import io
import os
import queue
import random
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from view_env.data.bank import ImagePool, _check_canvas, _pad_annotations
from view_env.data.base import IMAGE_EXTENSIONS, decode_image
from view_env.data.errors import DatasetNotFoundError, NoReadableImagesError, SkippedImagesWarning
from view_env.data.folder import _read_captions, expand_patterns

STREAM_LAYOUT = """  a WebDataset .tar shard, a glob (shards/*.tar) or a brace range (shards/{00000..00099}.tar),
  or a list of them; members grouped by key: <key>.jpg (or .png, .webp, ...) and optionally <key>.txt captions"""

_IMAGE_SUFFIXES = tuple(extension.lstrip(".") for extension in sorted(IMAGE_EXTENSIONS))
#: How many skipped samples are kept as examples for the warning (the count itself is exact).
_EXAMPLES = 5


def _distributed_share() -> tuple[int, int]:
    """This process's rank and the world size: ``torch.distributed`` when initialised, else ``RANK`` and
    ``WORLD_SIZE`` as torchrun sets them, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class WebDatasetShards:
    """A set of WebDataset ``.tar`` shards and this rank's share of it, read only as a stream.

    It stands where an :class:`~view_env.data.ImageDataset` would (``dataset="webdataset"`` of the environments),
    but it has no records: its length is unknown until it is read. Streamed images have no boxes or categories.

    Args:
        root: A shard file, a glob, a brace range, or a sequence of them; ``~`` is expanded.
        rank, world_size: This process's share: shards ``rank, rank + world_size, ...`` of the sorted, expanded
            list. Default: ``torch.distributed`` when it is initialised, else ``$RANK`` / ``$WORLD_SIZE``, else one
            process.
        captions: Read ``.txt`` members as captions.
        shuffle_buffer, num_workers, seed: How a :class:`StreamingImagePool` reads it by default (see there), so
            that ``dataset_kwargs`` of an environment can set them.

    Raises:
        DatasetNotFoundError: A pattern matches nothing (naming it), or the list is empty.
        ValueError: The rank is outside ``[0, world_size)``, or there are fewer shards than ranks.
    """

    name = "webdataset"
    categories: tuple[str, ...] = ()
    split = None
    max_boxes = 0
    num_categories = 0

    def __init__(self, root: str | Path | Sequence[str | Path], *, rank: int | None = None,
                 world_size: int | None = None, captions: bool = True, shuffle_buffer: int = 1000,
                 num_workers: int | None = None, seed: int = 0) -> None:
        found, looked = expand_patterns(root)
        looked += [f"{path} (a folder, not a shard)" for path in found if path.is_dir()]
        urls = [str(path) for path in found if not path.is_dir()]
        if looked or not urls:
            raise DatasetNotFoundError("WebDataset shards", STREAM_LAYOUT, looked or ["root= (an empty list)"])
        given_rank, given_world = _distributed_share()
        rank = given_rank if rank is None else rank
        world_size = given_world if world_size is None else world_size
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r} is invalid: expected an integer >= 1")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}, world_size={world_size}: the rank must lie in [0, world_size)")
        if len(urls) < world_size:
            raise ValueError(f"{len(urls)} shard(s) are too few for {world_size} ranks: every rank needs at least one; "
                             "write the set in more shards or run fewer processes")
        self.root = str(root) if isinstance(root, (str, Path)) else None
        self.urls = urls
        self.rank, self.world_size = rank, world_size
        self.captions = captions
        self.shuffle_buffer, self.num_workers, self.seed = shuffle_buffer, num_workers, seed

    @property
    def rank_urls(self) -> list[str]:
        """The shards this rank reads."""
        return self.urls[self.rank :: self.world_size]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.urls)} shards, this rank ({self.rank} of {self.world_size}) reads "
                f"{len(self.rank_urls)}; images are counted as they stream")

    def __repr__(self) -> str:
        return f"WebDatasetShards({self.describe()})"


class _Streamed:
    """One decoded image from the stream, with the fields :class:`~view_env.data.ImagePool` swaps in."""

    __slots__ = ("index", "pixels", "height", "width", "boxes", "labels", "captions", "key")

    def __init__(self, pixels: np.ndarray, height: int, width: int, captions: tuple[str, ...], key: str) -> None:
        self.index = -1  # numbered in the main process, in the order images reach the pool
        self.pixels, self.height, self.width = pixels, height, width
        self.boxes = np.zeros((0, 4), dtype=np.float32)
        self.labels = np.zeros((0,), dtype=np.int64)
        self.captions, self.key = captions, key


class _Skipped:
    """A sample that could not be used, and why."""

    __slots__ = ("key", "reason")

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason


class _PassEnd:
    """One loader worker finished a pass over its shards."""

    __slots__ = ("worker", "produced")

    def __init__(self, worker: int, produced: int) -> None:
        self.worker, self.produced = worker, produced


class DecodedShardStream(torch.utils.data.IterableDataset):
    """The decoding stage: shard samples as canvas-sized images (what a loader worker runs).

    Each pass lists the shards in an order seeded by ``(seed, pass)``, gives worker ``w`` of ``k`` every ``k``-th
    shard (``webdataset.split_by_worker``), expands the tars (``webdataset.tarfile_to_samples``), mixes samples in
    a shuffle buffer (``webdataset.shuffle``, of compressed samples), then decodes and resizes each to the square
    canvas. Yields decoded images, skip records, and one end-of-pass marker per worker and pass.

    Args:
        urls: The shards.
        canvas_size: Side of the square canvas.
        shuffle_buffer: Samples held for shuffling (``<= 1``: the written order, shard order included).
        seed: Seed of the shard order and the shuffle.
        loop: Start a new pass after each one; else stop after one.
        captions: Read ``.txt`` members.
    """

    def __init__(self, urls: Sequence[str], canvas_size: int, *, shuffle_buffer: int = 1000, seed: int = 0,
                 loop: bool = True, captions: bool = True) -> None:
        super().__init__()
        self.urls, self.canvas_size = list(urls), canvas_size
        self.shuffle_buffer, self.seed, self.loop, self.captions = shuffle_buffer, seed, loop, captions

    def _samples(self, epoch: int, errors: list[str]) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        def keep_going(error: Exception) -> bool:  # corrupt shards and members are counted, never fatal
            errors.append(f"{type(error).__name__}: {error}"[:300])
            return True

        urls = list(self.urls)
        if self.shuffle_buffer > 1:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(urls)
        worker = torch.utils.data.get_worker_info()
        def expand(sources: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            """``webdataset.tarfile_to_samples``, closing each shard's file once it is read."""
            def members() -> Iterator[dict[str, Any]]:
                for source in wds.tariterators.url_opener(sources, handler=keep_going):
                    try:
                        yield from wds.tariterators.tar_file_expander([source], handler=keep_going)
                    finally:
                        source["stream"].close()

            return wds.tariterators.group_by_keys(members(), handler=keep_going)

        stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_worker, expand]
        if self.shuffle_buffer > 1:
            salt = (self.seed * 1_000_003 + epoch) * 1009 + (worker.id if worker is not None else 0)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=salt))
        return iter(wds.DataPipeline(*stages))

    def _decode(self, sample: dict[str, Any]) -> _Streamed | _Skipped:
        key = f"{os.path.basename(sample.get('__url__', '?'))}:{sample.get('__key__', '?')}"
        suffix = next((s for s in _IMAGE_SUFFIXES if s in sample), None)
        if suffix is None:
            return _Skipped(key, f"no image member (members: {sorted(k for k in sample if not k.startswith('__'))})")
        try:
            decoded = decode_image(io.BytesIO(sample[suffix]), key, min_side=self.canvas_size)
        except OSError as error:  # UnreadableImageError
            return _Skipped(key, getattr(error, "reason", str(error)))
        canvas = decoded.image.resize((self.canvas_size, self.canvas_size), Image.Resampling.BILINEAR)
        text = _read_captions(sample["txt"]) if self.captions and "txt" in sample else ()
        return _Streamed(np.array(canvas, dtype=np.uint8), decoded.height, decoded.width, text, key)

    def __iter__(self) -> Iterator[_Streamed | _Skipped | _PassEnd]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        epoch = 0
        while True:
            errors: list[str] = []
            produced = 0
            for sample in self._samples(epoch, errors):
                while errors:
                    yield _Skipped(f"shard stream (worker {worker_id})", errors.pop(0))
                item = self._decode(sample)
                produced += isinstance(item, _Streamed)
                yield item
            while errors:
                yield _Skipped(f"shard stream (worker {worker_id})", errors.pop(0))
            yield _PassEnd(worker_id, produced)
            if not self.loop or produced == 0:
                return  # a pass that decoded nothing would spin forever
            epoch += 1


class StreamingImagePool(ImagePool):
    """An image pool fed by a stream of WebDataset shards (see the module docstring).

    Args:
        source: The shards and this rank's share (:class:`WebDatasetShards`, or a pattern given to it).
        capacity: Resident images ``P``. A set smaller than the pool fills about as many slots as it has images
            (a worker that finished its pass may add a few repeats).
        canvas_size: Side ``C`` of the canvas.
        device: Where the resident tensors live.
        seed: Seed of the shard order and the shuffle buffer (default: the source's, 0).
        num_workers: Loader worker processes that read and decode (0: a thread of this process). Default: the
            source's, else ``min(4, cpu_count, shards of this rank)``.
        shuffle_buffer: Compressed samples each worker holds for shuffling (``<= 1``: the written order; default:
            the source's, 1,000).
        prefetch: Most decoded images waiting for a refresh (default ``capacity // 4``, at least 1).
        loop: Stream the shards again after each pass (default), or stop after one.
        progress: Show a progress bar for the initial fill.

    Attributes:
        keys: ``P`` strings, ``"<shard>:<key>"`` of the image in each slot.
        num_streamed: Images that reached the pool (initial fill and refreshes), which also numbers them: a slot's
            ``dataset_index`` is its image's position in that order.
        passes: Complete passes of every worker over its shards.

    Raises:
        NoReadableImagesError: The first pass over the shards yields no image at all.
    """

    def __init__(self, source: WebDatasetShards | str | Path | Sequence[str | Path], capacity: int, *,
                 canvas_size: int = 128, device: str | torch.device = "cpu", seed: int | None = None,
                 num_workers: int | None = None, shuffle_buffer: int | None = None, prefetch: int | None = None,
                 loop: bool = True, progress: bool = True) -> None:
        _check_canvas(canvas_size)
        if not isinstance(source, WebDatasetShards):
            source = WebDatasetShards(source)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive number of images, got {capacity!r}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        seed = source.seed if seed is None else seed
        shuffle_buffer = source.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        num_workers = source.num_workers if num_workers is None else num_workers
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer!r} is invalid: expected an integer >= 0 (0 or 1: the "
                             "written order)")
        urls = source.rank_urls
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1, len(urls))
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r} is invalid: expected an integer >= 0")
        num_workers = min(num_workers, len(urls))  # a worker without a shard would only idle
        self._active_workers = max(1, num_workers)
        stream = DecodedShardStream(urls, canvas_size, shuffle_buffer=shuffle_buffer, seed=seed, loop=loop,
                                    captions=source.captions)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                             prefetch_factor=4 if num_workers else None)
        self._loader_iter = iter(loader)
        self.num_streamed = 0
        self.passes = 0
        self._ended_workers: set[int] = set()
        self._skip_count = 0
        self._skip_examples: list[str] = []
        self._exhausted = False

        items: list[_Streamed] = []
        with tqdm(total=capacity, desc=f"filling pool from {len(urls)} shards", unit="img",
                  disable=not progress) as bar:
            while len(items) < capacity and self.passes == 0:
                item = self._next_item()
                if item is None:
                    break
                items.append(item)
                bar.update(1)
        if not items:
            getattr(self._loader_iter, "_shutdown_workers", lambda: None)()
            raise NoReadableImagesError(f"{source.describe()}", "no image could be read in a whole pass; first "
                                        f"problems: {'; '.join(self._skip_examples) or 'the shards hold no samples'}")
        boxes, labels = _pad_annotations(items, 0)
        device = torch.device(device)
        pixels = torch.from_numpy(np.stack([item.pixels for item in items])).permute(0, 3, 1, 2).contiguous()
        for item in items:
            item.pixels = None
        # ImagePool's own __init__ decodes from an indexable dataset; a stream pool sets the same state itself.
        self.images = pixels.to(device)
        self.sizes = torch.tensor([[i.height, i.width] for i in items], dtype=torch.int64, device=device)
        self.dataset_index = torch.tensor([i.index for i in items], dtype=torch.int64, device=device)
        self.boxes, self.labels = boxes.to(device), labels.to(device)
        self.captions = [item.captions for item in items]
        self.keys = [item.key for item in items]
        self.dataset = source  # type: ignore[assignment]  # the environments read name and categories only
        self.num_skipped = self._skip_count
        self._max_boxes = 0
        self._next_slot = 0
        self._initial_skipped = 0
        self._reported = False
        self._ready: queue.Queue[_Streamed] = queue.Queue(maxsize=prefetch or max(1, capacity // 4))
        self._failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="view_env-stream-pool", daemon=True)
        self._thread.start()
        self._warn_new_skips()

    # ------------------------------------------------------------------------------------------ the stream

    def _next_item(self) -> _Streamed | None:
        """The next decoded image, counting skips and pass ends on the way; ``None`` once the stream ended."""
        while not self._exhausted:
            try:
                item = next(self._loader_iter)
            except StopIteration:
                self._exhausted = True
                return None
            if isinstance(item, _Skipped):
                self._skip_count += 1
                if len(self._skip_examples) < _EXAMPLES:
                    self._skip_examples.append(f"{item.key} ({item.reason})")
            elif isinstance(item, _PassEnd):
                self._ended_workers.add(item.worker)
                if len(self._ended_workers) == self._active_workers:
                    self.passes += 1
                    self._ended_workers = set()
            else:
                item.index = self.num_streamed
                self.num_streamed += 1
                return item
        return None

    def _produce(self) -> None:
        while not self._stop.is_set():
            item = self._next_item()
            if item is None or not self._offer(item):
                return

    def _warn_new_skips(self) -> None:
        self.num_skipped = self._skip_count
        if self._skip_count and not self._reported:
            self._reported = True
            warnings.warn(f"{self.dataset.name}: skipped {self._skip_count} sample(s) of the stream so far that "
                          f"could not be read, e.g. {'; '.join(self._skip_examples[:3])} (counted in num_skipped)",
                          SkippedImagesWarning, stacklevel=3)

    def refresh(self, max_images: int | None = None, busy: torch.Tensor | None = None) -> int:
        """Swap up to ``max_images`` streamed images (all that are ready by default) into the oldest free slots;
        never blocks. Returns how many slots were replaced."""
        swapped = super().refresh(max_images, busy)
        self._warn_new_skips()
        return swapped

    def _swap_host(self, slots: list[int], items: Sequence[Any]) -> None:
        super()._swap_host(slots, items)
        for slot, item in zip(slots, items, strict=True):
            self.keys[slot] = item.key

    @property
    def exhausted(self) -> bool:
        """The stream ended (``loop=False`` after its pass) and every image it produced has been taken."""
        return self._exhausted and self._ready.empty()

    def close(self) -> None:
        """Stop the background reader and the loader's worker processes."""
        super().close()
        shutdown = getattr(getattr(self, "_loader_iter", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __repr__(self) -> str:
        return (f"StreamingImagePool({len(self)} images at {self.canvas_size}px on {self.device}, "
                f"{self.num_streamed} streamed in {self.passes} pass(es), {self.num_skipped} skipped; "
                f"{self.dataset.describe()})")
