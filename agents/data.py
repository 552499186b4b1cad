"""Logged view transitions for offline, policy-agnostic GVF pretraining: the record, a replay buffer, shard files.

A *transition* is one environment step ``(x, a, x')`` of the ViewTransform MDP, stored as a dict of tensors with
leading dimension ``B`` (see :func:`transition_fields`):

- ``view``, ``next_view``: ``uint8 [B, 3, S, S]``, x and x' (x' is the episode's last view where it ended).
- ``box``, ``next_box``: ``float32 [B, 4]``, their normalised view boxes ``(x0, y0, x1, y1)``.
- ``aug``, ``next_aug``: ``float32 [B, 7]``, their augmentation states (columns ``view_env.core.AUGMENTATIONS``).
- ``rel_box``: ``float32 [B, 4]``, ``next_box`` in the view's own frame, x's flip included
  (:func:`relative_box`): the geometric part of the action.
- ``annotation``: ``float32 [B, A]``, the coverage annotation of x' (the environment's labels).
- ``image_index``, ``next_image_index``: ``int64 [B]``, dataset indices of the images of x and x' (they differ
  only when a video environment's temporal action changed the frame).
- ``anchor_view``: ``uint8 [B, 3, S, S]``, a third view of x's episode (neither x nor, where the episode has one,
  x'): another view of the same image, the annotation of the ``views`` and ``prototypes`` sources.
- ``view_annotation``: ``float32 [B, A]``, the coverage annotation of x (the ``labels`` source's base loss).
- ``next_image_size``: ``int64 [B, 2]``, ``(height, width)`` in pixels of x''s image, so that the learner can draw
  legal next views of x' (:func:`view_env.core.initial_boxes` needs the image's aspect).

The learner sees the action only as ``rel_box`` plus :func:`relative_aug` of ``aug`` and ``next_aug``, whatever
action space the behaviour policy used, so it never needs to know the policy. A transition never crosses an episode
boundary.

:class:`ReplayBuffer` keeps transitions in preallocated tensors on a device. :func:`write_shards` logs them to
``.pt`` shard files, or WebDataset ``.tar`` shards (one sample per transition, ``.npy`` members), plus an
``index.json``; :class:`ShardDataset` reads either back (``weights_only=True``, ``allow_pickle=False``) and streams
them in order, each rank its share of the shards, in worker processes if asked.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm import tqdm

from view_env import AUGMENTATIONS, EnvParams, initial_boxes

#: Version of the shard format written by :func:`write_shards`; readers refuse any other. Version 2: flip-aware
#: ``rel_box``, an anchor other than x, ``next_image_size``.
FORMAT_VERSION = 2
#: Name of the index file of a shard directory.
INDEX_NAME = "index.json"
#: Default number of transitions per shard file (about 100 MB at 64-px views).
DEFAULT_SHARD_SIZE = 4096
#: Shard containers :func:`write_shards` writes: ``pt`` (one ``torch.save`` of columnar tensors per shard, the fastest
#: to read) or ``tar`` (WebDataset: one sample per transition, one ``.npy`` member per field, readable by any
#: webdataset pipeline; read here through webdataset's tar iterator).
SHARD_FORMATS = ("pt", "tar")
#: Key of the first sample of a ``tar`` shard: ``__metadata__.json`` holds the format version and the metadata.
TAR_METADATA_KEY = "__metadata__"

Transitions = dict[str, torch.Tensor]


def transition_fields(obs_size: int, num_categories: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Per-transition shape (without the batch dimension) and dtype of every field, in storage order.

    Args:
        obs_size: Side ``S`` of the square views.
        num_categories: Length ``A`` of the annotation vector (0 for sources without categories).
    """
    view = ((3, obs_size, obs_size), torch.uint8)
    box = ((4,), torch.float32)
    aug = ((len(AUGMENTATIONS),), torch.float32)
    index = ((), torch.int64)
    return {
        "view": view, "next_view": view, "box": box, "next_box": box, "aug": aug, "next_aug": aug, "rel_box": box,
        "annotation": ((num_categories,), torch.float32), "image_index": index, "next_image_index": index,
        "anchor_view": view, "view_annotation": ((num_categories,), torch.float32),
        "next_image_size": ((2,), torch.int64),
    }


def check_transitions(transitions: Mapping[str, torch.Tensor], obs_size: int, num_categories: int,
                      source: str = "transitions") -> int:
    """Check that ``transitions`` hold exactly the fields of :func:`transition_fields` with one batch size.

    Args:
        source: What the transitions came from, named in the error (e.g. a shard's path).

    Returns:
        The batch size ``B``.

    Raises:
        ValueError: A field is missing, unexpected, or has the wrong dtype or shape.
    """
    fields = transition_fields(obs_size, num_categories)
    missing, extra = sorted(set(fields) - set(transitions)), sorted(set(transitions) - set(fields))
    if missing or extra:
        raise ValueError(f"{source}: expected the transition fields {list(fields)}; missing {missing}, "
                         f"unexpected {extra}")
    n = None
    for key, (shape, dtype) in fields.items():
        value = transitions[key]
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape[1:]) != shape:
            got = (f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            expected = ", ".join(["B", *map(str, shape)])
            raise ValueError(f"{source}: field {key!r} must be a {dtype} tensor of shape [{expected}] "
                             f"(obs_size={obs_size}, num_categories={num_categories}), got {got}")
        if n is None:
            n = value.shape[0]
        elif value.shape[0] != n:
            raise ValueError(f"{source}: field {key!r} holds {value.shape[0]} transitions but 'view' holds {n}")
    return int(n or 0)


def relative_box(box: torch.Tensor, next_box: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """``next_box`` in the frame of the view ``box`` *as that view shows it*: the relative-box action.

    With ``w = x1 - x0`` and ``h = y1 - y0`` of ``box``, an unflipped view maps image point ``(u, v)`` to view point
    ``((u - x0) / w, (v - y0) / h)``; a view that the renderer mirrors left to right (``flip``) maps it to
    ``(1 - (u - x0) / w, (v - y0) / h)``. The result is the next box's corners in those view coordinates, with
    ``x0 <= x1``: ``((x0' - x0) / w, (y0' - y0) / h, (x1' - x0) / w, (y1' - y0) / h)`` unflipped and
    ``(1 - (x1' - x0) / w, (y0' - y0) / h, 1 - (x0' - x0) / w, (y1' - y0) / h)`` flipped. So a box to the right
    in the image is to the left in a flipped view, as the model sees it; ``box`` itself maps to ``(0, 0, 1, 1)``.

    Args:
        box: ``float32 [..., 4]`` normalised boxes ``(x0, y0, x1, y1)`` with positive sides.
        next_box: ``float32 [..., 4]`` boxes in the same image coordinates.
        flip: ``[...]`` whether each view ``box`` is shown mirrored (bool, or the float flip column of an
            augmentation state, mirrored above 0.5); ``None``: none is.

    Returns:
        ``float32 [..., 4]``.
    """
    x0, y0, x1, y1 = box.unbind(-1)
    w, h = x1 - x0, y1 - y0
    nx0, ny0, nx1, ny1 = next_box.unbind(-1)
    left, right = (nx0 - x0) / w, (nx1 - x0) / w
    if flip is not None:
        mirrored = flip > 0.5 if flip.is_floating_point() else flip.bool()
        left, right = torch.where(mirrored, 1 - right, left), torch.where(mirrored, 1 - left, right)
    return torch.stack([left, (ny0 - y0) / h, right, (ny1 - y0) / h], dim=-1)


def absolute_box(box: torch.Tensor, rel_box: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`relative_box`: the image box whose coordinates in the (possibly mirrored) view ``box`` are
    ``rel_box``.

    Args:
        box: ``float32 [..., 4]`` normalised boxes.
        rel_box: ``float32 [..., 4]`` relative boxes.
        flip: ``[...]`` whether each view is mirrored, as in :func:`relative_box`.

    Returns:
        ``float32 [..., 4]`` normalised boxes.
    """
    x0, y0, x1, y1 = box.unbind(-1)
    w, h = x1 - x0, y1 - y0
    rx0, ry0, rx1, ry1 = rel_box.unbind(-1)
    if flip is not None:
        mirrored = flip > 0.5 if flip.is_floating_point() else flip.bool()
        rx0, rx1 = torch.where(mirrored, 1 - rx1, rx0), torch.where(mirrored, 1 - rx0, rx1)
    return torch.stack([x0 + rx0 * w, y0 + ry0 * h, x0 + rx1 * w, y0 + ry1 * h], dim=-1)


def pair_iou(box: torch.Tensor, next_box: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each view's box and its next view's box (row by row, not all pairs): how much
    of the image a transition's two views share. The paper finds bootstrapping's gains grow as the crops overlap
    less; this measures the overlap of the transitions a run trains on (``pair_iou`` and ``pair_disjoint``, the
    fraction of pairs that share no pixel, among :func:`agents.pretrain.train`'s step metrics).

    Args:
        box: ``float32 [..., 4]`` normalised boxes ``(x0, y0, x1, y1)`` with positive sides.
        next_box: ``float32 [..., 4]`` boxes in the same image coordinates.

    Returns:
        ``float32 [...]`` in ``[0, 1]``: 1 for equal boxes, 0 for boxes that share no area.
    """
    low, high = torch.maximum(box[..., :2], next_box[..., :2]), torch.minimum(box[..., 2:], next_box[..., 2:])
    inter = (high - low).clamp_min(0).prod(-1)
    area = (box[..., 2:] - box[..., :2]).prod(-1) + (next_box[..., 2:] - next_box[..., :2]).prod(-1)
    return inter / (area - inter)


def relative_aug(aug: torch.Tensor, next_aug: torch.Tensor) -> torch.Tensor:
    """The augmentation part of the action: ``next_aug`` with its flip made relative to the current view's.

    Columns as :data:`view_env.AUGMENTATIONS`. The flip column becomes 1 where x' is mirrored with respect to x
    (exactly one of the two is flipped), since the relative box is already in x's own (possibly mirrored) frame;
    the colour columns are x''s own parameters, which do not depend on x.

    Args:
        aug: ``float32 [..., 7]`` augmentation state of x.
        next_aug: ``float32 [..., 7]`` augmentation state of x'.

    Returns:
        ``float32 [..., 7]``.
    """
    flip = AUGMENTATIONS.index("flip")
    out = next_aug.clone()
    out[..., flip] = ((aug[..., flip] > 0.5) != (next_aug[..., flip] > 0.5)).to(next_aug.dtype)
    return out


def random_resized_crops(uniforms: torch.Tensor, image_size: torch.Tensor, params: EnvParams,
                         retries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent RandomResizedCrop views of images: the boxes and augmentation strengths of absolute actions.

    The box is drawn as the environment draws its first view (:func:`view_env.initial_boxes`: area drawn by
    ``params.init_area`` in ``params.init_scale``, again while it does not fit under the ``"uniform"`` law, pixel
    aspect log-uniform in ``params.init_aspect``, uniform position, then the legal projection), so every box lies
    inside its image; each enabled augmentation gets a strength uniform in ``[-1, 1]``.

    Args:
        uniforms: ``float32 [..., 4 + A]`` uniform draws in ``[0, 1)`` (``A = len(params.augmentations)``).
        image_size: ``int64 [..., 2]`` ``(height, width)`` of each view's image, same leading shape.
        params: The environment's parameters.
        retries: ``float32 [..., 2 * k]`` uniform draws of the further tries of the ``"uniform"`` area law
            (``view_env.core.retry_columns(params)`` of them), same leading shape; ``None``: none.

    Returns:
        ``float32 [..., 4]`` boxes ``(x0, y0, x1, y1)`` and ``float32 [..., A]`` strengths.
    """
    lead = uniforms.shape[:-1]
    flat = uniforms.reshape(-1, uniforms.shape[-1])
    sizes = image_size.reshape(-1, 2).to(torch.float32)
    extra = None if retries is None else retries.reshape(-1, retries.shape[-1])
    boxes = initial_boxes(flat[:, :4], sizes[:, 1] / sizes[:, 0], params, extra)
    return boxes.reshape(*lead, 4), (flat[:, 4:] * 2 - 1).reshape(*lead, -1)


def concat_transitions(batches: Iterable[Mapping[str, torch.Tensor]]) -> Transitions:
    """Concatenate transition dicts along the batch dimension (every dict must hold the same keys)."""
    batches = list(batches)
    if not batches:
        raise ValueError("concat_transitions needs at least one batch")
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


class ReplayBuffer:
    """A ring buffer of transitions in preallocated tensors on ``device``.

    Memory: ``capacity * (6 * S * S + 4 * (26 + A) + 16)`` bytes: 24.8 kB per transition at 64 px with 30
    categories, so 100,000 transitions take 2.5 GB.

    Args:
        capacity: Most transitions held; once full, each :meth:`add` overwrites the oldest.
        obs_size: Side ``S`` of the views.
        num_categories: Length ``A`` of the annotation vector.
        device: Where the storage lives.
    """

    def __init__(self, capacity: int, obs_size: int, num_categories: int,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} is invalid: expected an integer >= 1")
        self.capacity = capacity
        self.obs_size = obs_size
        self.num_categories = num_categories
        self.device = torch.device(device)
        self.fields = transition_fields(obs_size, num_categories)
        self.storage: Transitions = {
            key: torch.empty((capacity, *shape), dtype=dtype, device=self.device)
            for key, (shape, dtype) in self.fields.items()
        }
        self.position = 0  # the row the next transition goes to
        self.size = 0  # rows filled

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: Mapping[str, torch.Tensor]) -> None:
        """Append ``B`` transitions (on any device) in one vectorised write per field.

        When ``B`` exceeds the capacity only the last ``capacity`` of them are kept.
        """
        n = check_transitions(transitions, self.obs_size, self.num_categories)
        if n == 0:
            return
        keep = min(n, self.capacity)
        start = (self.position + n - keep) % self.capacity
        head = min(keep, self.capacity - start)  # rows before the ring wraps; the other keep - head go to the front
        for key, store in self.storage.items():
            value = transitions[key][n - keep:].to(self.device, non_blocking=True)
            store[start : start + head].copy_(value[:head])  # two slice copies: much faster than index_copy_
            store[: keep - head].copy_(value[head:])
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement from the filled rows.

        Args:
            generator: Source of randomness (on any device); ``None`` uses torch's global generator.

        Returns:
            A transition dict with leading dimension ``batch_size``, on the buffer's device.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer; add transitions first")
        device = generator.device if generator is not None else self.device
        rows = torch.randint(self.size, (batch_size,), generator=generator, device=device).to(self.device)
        return {key: store[rows] for key, store in self.storage.items()}

    def state_dict(self) -> dict[str, Any]:
        """The filled rows and ring position: ints and tensors only, so ``torch.load(weights_only=True)`` reads it."""
        return {
            "capacity": self.capacity, "obs_size": self.obs_size, "num_categories": self.num_categories,
            "position": self.position, "size": self.size,
            "transitions": {key: store[: self.size] for key, store in self.storage.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; capacity, view size and categories must match."""
        for key in ("capacity", "obs_size", "num_categories"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"the replay buffer state has {key}={state.get(key)!r} but this buffer has "
                                 f"{key}={getattr(self, key)!r}")
        size, position = int(state["size"]), int(state["position"])
        if not (0 <= size <= self.capacity and 0 <= position < self.capacity):
            raise ValueError(f"the replay buffer state has size={size}, position={position}; expected values in "
                             f"[0, {self.capacity}]")
        n = check_transitions(state["transitions"], self.obs_size, self.num_categories, "replay buffer state")
        if n != size:
            raise ValueError(f"the replay buffer state holds {n} transitions but says size={size}")
        for key, store in self.storage.items():
            store[:size] = state["transitions"][key].to(self.device)
        self.size, self.position = size, position


# ----------------------------------------------------------------------------------------------- shard files


class ShardFormatError(ValueError):
    """A shard directory's index or shard file is unreadable, malformed, or inconsistent with the rest."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


@runtime_checkable
class TransitionSource(Protocol):
    """An iterable of transition batches that describes itself (e.g. ``agents.collect.TransitionCollector``)."""

    @property
    def metadata(self) -> dict[str, Any]: ...

    def __iter__(self) -> Iterator[Transitions]: ...


def _plain(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as JSON values (tuples become lists, anything else its repr), as index and shards store it."""
    return json.loads(json.dumps(dict(metadata), default=repr))


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary_path)`` then move the result onto ``path`` in one step."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _complete_metadata(meta: dict[str, Any], batch: Mapping[str, torch.Tensor], directory: Path) -> dict[str, Any]:
    """``meta`` with the view size and category count of ``batch`` and the format version, as JSON values."""
    found = {"obs_size": int(batch["view"].shape[-1]), "num_categories": int(batch["annotation"].shape[-1])}
    for key, value in found.items():
        if meta.get(key, value) != value:
            raise ValueError(f"metadata for {directory} says {key}={meta[key]!r} but the transitions have {value}")
    return _plain({**meta, **found, "format_version": FORMAT_VERSION})


def shard_name(number: int, shard_format: str = "pt") -> str:
    """File name of shard ``number`` in a shard directory (``shard-00003.pt``, ``shard-00003.tar``)."""
    return f"shard-{number:05d}.{shard_format}"


def _write_tar_shard(path: Path, meta: Mapping[str, Any], shard: Transitions, first: int) -> None:
    """A WebDataset shard: the metadata sample, then transition ``first + i`` as key ``%09d`` with one ``.npy``
    member per field (``000000042.view.npy``, ``000000042.rel_box.npy``, ...)."""
    import webdataset as wds

    columns = {key: value.numpy() for key, value in shard.items()}
    count = len(next(iter(columns.values())))
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": TAR_METADATA_KEY,
                    "json": json.dumps({"format_version": FORMAT_VERSION, "metadata": meta}).encode()})
        for i in range(count):
            sink.write({"__key__": f"{first + i:09d}", **{f"{key}.npy": column[i] for key, column in columns.items()}})


def _read_tar_shard(path: Path) -> tuple[dict[str, Any], Transitions]:
    """``(payload without transitions, transitions)`` of a ``tar`` shard, read through webdataset's tar iterator;
    members are decoded with ``numpy.load(allow_pickle=False)`` (as ``.pt`` shards load with ``weights_only``)."""
    import io

    import numpy as np
    import webdataset as wds

    def stop(error: Exception) -> bool:
        raise error

    header: dict[str, Any] | None = None
    columns: dict[str, list[Any]] = {}
    with open(path, "rb") as handle:
        files = wds.tariterators.tar_file_iterator(handle, handler=stop)
        for sample in wds.tariterators.group_by_keys(({**f, "__url__": str(path)} for f in files), handler=stop):
            if header is None:
                if sample["__key__"] != TAR_METADATA_KEY or "json" not in sample:
                    raise ValueError(f"its first sample is {sample['__key__']!r}, not the {TAR_METADATA_KEY!r} "
                                     "sample write_shards puts first")
                header = json.loads(sample["json"])
                continue
            fields = {k[: -len(".npy")] for k in sample if k.endswith(".npy")}
            if columns and fields != set(columns):
                raise ValueError(f"sample {sample['__key__']!r} has fields {sorted(fields)}, the first had "
                                 f"{sorted(columns)}")
            for key in fields:
                columns.setdefault(key, []).append(np.load(io.BytesIO(sample[f"{key}.npy"]), allow_pickle=False))
    if header is None:
        raise ValueError("it holds no samples")
    transitions = {key: torch.from_numpy(np.stack(values)) for key, values in columns.items()}
    return header, transitions


def _take_over(directory: Path, overwrite: bool) -> list[str]:
    """Prepare ``directory`` for new shards: refuse a shard directory unless ``overwrite``, else delete its index
    (until the new index lands the directory reads as unfinished, never as mixed) and return its shard files."""
    index_path = directory / INDEX_NAME
    if not index_path.exists():
        return []
    if not overwrite:
        raise FileExistsError(f"{index_path} exists: {directory} already holds transition shards; choose another "
                              "directory or pass overwrite=True (--overwrite)")
    try:
        old_files = [entry["file"] for entry in json.loads(index_path.read_text())["shards"]]
    except (ValueError, KeyError, TypeError):
        old_files = []
    index_path.unlink()
    return old_files


class _ShardWriter:
    """Copies batches into one preallocated staging shard of ``rows`` transitions and saves it whenever it is full.

    The staging shard is reused: fresh 100 MB allocations per shard cost more in page faults than the copies
    themselves. It is allocated at the first batch, when the view size and the categories become known.
    """

    def __init__(self, directory: Path, shard_size: int, rows: int, metadata: dict[str, Any],
                 shard_format: str = "pt") -> None:
        self.directory, self.shard_size, self.rows, self.meta = directory, shard_size, rows, metadata
        self.shard_format = shard_format
        self.written = 0  # transitions saved so far: the first key of the next tar shard
        self.staging: Transitions = {}
        self.filled = 0
        self.entries: list[dict[str, Any]] = []  # the index's shard entries, in order

    def add(self, batch: Mapping[str, torch.Tensor], limit: int | None) -> int:
        """Copy the first ``limit`` transitions of ``batch`` (all when ``None``), saving shards as they fill up;
        returns how many were taken."""
        if not self.staging:
            self.meta = _complete_metadata(self.meta, batch, self.directory)
            self.staging = {key: torch.empty((self.rows, *shape), dtype=dtype) for key, (shape, dtype) in
                            transition_fields(self.meta["obs_size"], self.meta["num_categories"]).items()}
        n = check_transitions(batch, self.meta["obs_size"], self.meta["num_categories"])
        take = n if limit is None else min(n, limit)
        done = 0
        while done < take:  # a batch may straddle shards
            k = min(take - done, self.shard_size - self.filled)
            for key, store in self.staging.items():
                store[self.filled : self.filled + k].copy_(batch[key][done : done + k].detach())
            self.filled, done = self.filled + k, done + k
            if self.filled == self.shard_size:
                self.flush()
        return take

    def flush(self) -> None:
        """Save the staged transitions as the next shard (a no-op when none are staged)."""
        count = self.filled
        if not count:
            return
        # A full staging shard is saved as is; a partial one as copies, since torch.save writes a view's whole storage.
        shard = self.staging if count == self.shard_size else {k: v[:count].clone() for k, v in self.staging.items()}
        name = shard_name(len(self.entries), self.shard_format)
        if self.shard_format == "tar":
            first = self.written
            _atomic_write(self.directory / name, lambda tmp: _write_tar_shard(tmp, self.meta, shard, first))
        else:
            payload = {"format_version": FORMAT_VERSION, "metadata": self.meta, "transitions": shard}
            _atomic_write(self.directory / name, lambda tmp: torch.save(payload, tmp))
        self.entries.append({"file": name, "count": count})
        self.written += count
        self.filled = 0


def write_shards(
    directory: str | Path,
    transitions: Iterable[Mapping[str, torch.Tensor]],
    num_transitions: int | None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    shard_format: str = "pt",
) -> ShardDataset:
    """Log transitions to ``directory`` as shard files ``shard-NNNNN.pt`` (or ``.tar``) and an ``index.json``.

    A ``pt`` shard is ``torch.save`` of ``{"format_version", "metadata", "transitions"}`` (CPU tensors, at most
    ``shard_size`` transitions). A ``tar`` shard is a WebDataset shard: a first sample ``__metadata__.json`` (format
    version and metadata), then one sample per transition, key ``%09d`` (its position in the whole log), one
    ``<field>.npy`` member per field of :func:`transition_fields` (any webdataset pipeline reads it, e.g.
    ``webdataset.WebDataset(url).decode()``). Every shard is written to a temporary file and moved into place, so a
    crash never leaves a torn file; the index, written the same way, comes last, so a directory without one is an
    unfinished run.

    Args:
        directory: Created if needed.
        transitions: Batches of transitions (dicts as in :func:`transition_fields`), e.g. a
            ``TransitionCollector`` (whose ``metadata`` is then used) or a list of dicts.
        num_transitions: Exactly this many are written (an error if ``transitions`` run out first); ``None``
            writes everything a finite iterable yields.
        shard_size: Transitions per shard (the last shard may hold fewer).
        metadata: Describes the data (dataset name, environment arguments, ...); stored in the index and every
            shard as JSON values. ``obs_size``, ``num_categories`` and ``format_version`` are filled in.
        overwrite: Replace an existing shard directory (its old shards are deleted); otherwise that is an error.
        progress: Show a progress bar.
        shard_format: One of :data:`SHARD_FORMATS`: ``pt`` (default, fastest to read) or ``tar`` (WebDataset).

    Returns:
        The written directory as a :class:`ShardDataset`.
    """
    directory = Path(directory)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} is invalid: expected an integer >= 1")
    if shard_format not in SHARD_FORMATS:
        raise ValueError(f"shard_format={shard_format!r} is invalid: expected one of {SHARD_FORMATS}")
    if num_transitions is not None and (not isinstance(num_transitions, int) or num_transitions < 0):
        raise ValueError(f"num_transitions={num_transitions!r} is invalid: expected an integer >= 0 or None")
    old_files = _take_over(directory, overwrite)
    if metadata is None and isinstance(transitions, TransitionSource):
        metadata = transitions.metadata
    directory.mkdir(parents=True, exist_ok=True)
    rows = shard_size if num_transitions is None else min(shard_size, num_transitions)
    writer = _ShardWriter(directory, shard_size, rows, dict(metadata or {}), shard_format)
    written = 0
    batches = iter(transitions)
    with tqdm(total=num_transitions, unit="transition", unit_scale=True, desc="write shards",
              disable=not progress) as bar:
        while num_transitions is None or written < num_transitions:  # never pulls a batch it would not use
            batch = next(batches, None)
            if batch is None:
                break
            take = writer.add(batch, None if num_transitions is None else num_transitions - written)
            written += take
            bar.update(take)
    if num_transitions is not None and written < num_transitions:
        raise ValueError(f"the transitions ran out after {written} of num_transitions={num_transitions}; "
                         f"{directory} has no index and is incomplete")
    writer.flush()
    if not written:
        raise ValueError(f"no transitions to write to {directory}: the iterable was empty or num_transitions=0")
    index = {"format_version": FORMAT_VERSION, "num_transitions": written, "metadata": writer.meta,
             "shards": writer.entries}
    _atomic_write(directory / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    for stale in set(old_files) - {entry["file"] for entry in writer.entries}:
        if Path(stale).name == stale:
            (directory / stale).unlink(missing_ok=True)
    return ShardDataset(directory)


class ShardDataset:
    """The transitions of a shard directory written by :func:`write_shards`, read lazily one shard at a time.

    Opening reads and checks ``index.json`` and that every listed shard exists; a shard's content is read (``.pt``
    with ``torch.load(weights_only=True)``, ``.tar`` through webdataset's tar iterator with
    ``numpy.load(allow_pickle=False)``) and checked only when needed, so a dataset larger than memory works:
    :meth:`stream` reads the shards in written order, one at a time (in worker processes if asked), and never holds
    more than a few of them in memory.

    Raises:
        FileNotFoundError: The index or a shard it lists is missing (the message names the file).
        ShardFormatError: The index or a shard is corrupt, from another format version, holds the wrong fields
            or count, or its metadata differs from the index's (the message names the file).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.index_path = self.directory / INDEX_NAME
        if not self.index_path.is_file():
            raise FileNotFoundError(f"{self.index_path} not found: {self.directory} is not a finished transition shard "
                                    "directory (write one with `python -m agents.collect --out DIR ...`)")
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ShardFormatError(self.index_path, f"cannot be read as JSON ({error})") from error
        try:
            version, meta, shards = index["format_version"], index["metadata"], index["shards"]
            files = [str(entry["file"]) for entry in shards]
            counts = [int(entry["count"]) for entry in shards]
            obs_size, num_categories = int(meta["obs_size"]), int(meta["num_categories"])
        except (KeyError, TypeError, ValueError) as error:
            raise ShardFormatError(self.index_path, f"is not a shard index: expected format_version, metadata (with "
                                   f"obs_size, num_categories) and shards [{{file, count}}] ({error!r})") from error
        if version != FORMAT_VERSION:
            raise ShardFormatError(self.index_path, f"has format_version={version!r}; this reader reads version "
                                   f"{FORMAT_VERSION} only (write the shards again)")
        for name in files:
            if Path(name).name != name or name in ("", ".", ".."):
                raise ShardFormatError(self.index_path, f"lists shard {name!r}, which is not a plain file name")
            if not (self.directory / name).is_file():
                raise FileNotFoundError(f"{self.directory / name} not found: it is listed in {self.index_path}")
        self.metadata: dict[str, Any] = meta
        self.obs_size, self.num_categories = obs_size, num_categories
        self.shard_paths = [self.directory / name for name in files]
        self.counts = counts

    def __len__(self) -> int:
        return sum(self.counts)

    def __repr__(self) -> str:
        return (f"ShardDataset({str(self.directory)!r}: {len(self)} transitions in {len(self.shard_paths)} shards, "
                f"obs_size={self.obs_size}, num_categories={self.num_categories})")

    def load_shard(self, number: int) -> Transitions:
        """Read and check shard ``number``: a transition dict of CPU tensors, ``[count, ...]`` per field."""
        path = self.shard_paths[number]
        try:
            if path.suffix == ".tar":
                header, transitions = _read_tar_shard(path)
                payload = {**header, "transitions": transitions}
            else:
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path} not found: it is listed in {self.index_path}") from error
        except Exception as error:  # torch.load raises many types on a torn or foreign file
            raise ShardFormatError(path, f"cannot be read as a transition shard ({type(error).__name__}: {error}); "
                                   "it is corrupt or not a shard: write the directory again") from error
        if not isinstance(payload, dict) or not {"format_version", "metadata", "transitions"} <= set(payload):
            raise ShardFormatError(path, "is not a transition shard: expected a dict with format_version, metadata "
                                   "and transitions")
        if payload["format_version"] != FORMAT_VERSION:
            raise ShardFormatError(path, f"has format_version={payload['format_version']!r}, expected "
                                   f"{FORMAT_VERSION}")
        if payload["metadata"] != self.metadata:
            differ = sorted(k for k in set(payload["metadata"]) | set(self.metadata)
                            if payload["metadata"].get(k) != self.metadata.get(k))
            raise ShardFormatError(path, f"has metadata that differs from {self.index_path} in {differ}: shards of "
                                   "different runs are mixed")
        transitions = payload["transitions"]
        if not isinstance(transitions, dict):
            raise ShardFormatError(path, "holds no transition dict")
        try:
            n = check_transitions(transitions, self.obs_size, self.num_categories, str(path))
        except ValueError as error:
            raise ShardFormatError(path, str(error).removeprefix(f"{path}: ")) from error
        if n != self.counts[number]:
            raise ShardFormatError(path, f"holds {n} transitions but {self.index_path} lists {self.counts[number]}")
        return transitions

    def stream(self, start: int = 0, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
               loop: bool = True) -> Iterator[Transitions]:
        """The transitions of this rank's shards in written order, from offset ``start``, as one dict per shard.

        Rank ``r`` of ``world_size`` reads the shards ``r, r + world_size, ...`` (disjoint shares); with ``loop``
        it starts over after the last one, so the stream never ends. Offsets count transitions of this rank's
        sequence (its shards, looped), so ``stream(n)`` continues exactly where a stream that yielded ``n``
        transitions stopped. Shards are read by a ``torch.utils.data.DataLoader`` over :class:`ShardStream`, in
        ``num_workers`` processes (0: this one), in order whatever the worker count.

        Raises:
            ValueError: A bad offset, rank or worker count, or a rank without shards.
        """
        dataset = ShardStream(self, start, rank=rank, world_size=world_size, loop=loop)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                             persistent_workers=False, prefetch_factor=2 if num_workers else None)
        return iter(loader)


class ShardStream(torch.utils.data.IterableDataset):
    """An iterable over a :class:`ShardDataset`'s transitions in written order (see :meth:`ShardDataset.stream`).

    Each item is the transitions of one shard (the first one cut at ``start``). Under a DataLoader with ``k``
    workers, worker ``w`` reads the ``w``-th, ``(w + k)``-th, ... shard visits, and the DataLoader returns its
    workers' items round-robin, so the order is the written order for any ``k``.
    """

    def __init__(self, shards: ShardDataset, start: int = 0, *, rank: int = 0, world_size: int = 1,
                 loop: bool = True) -> None:
        super().__init__()
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}, world_size={world_size!r} are invalid: expected 0 <= rank < world_size")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start={start!r} is invalid: expected an integer offset >= 0")
        self.shards = shards
        self.numbers = list(range(rank, len(shards.shard_paths), world_size))
        if not self.numbers:
            raise ValueError(f"{shards.directory} holds {len(shards.shard_paths)} shards, too few for rank {rank} of "
                             f"{world_size}: every rank needs at least one; write more, smaller shards "
                             "(--shard-size)")
        self.length = sum(shards.counts[i] for i in self.numbers)  # transitions in one pass of this rank's shards
        if start >= self.length and not loop:
            raise ValueError(f"start={start} is past the {self.length} transitions of rank {rank}'s shards")
        self.start, self.loop = start, loop

    def _visits(self) -> Iterator[tuple[int, int]]:
        """``(shard number, first row)`` of every shard visit from ``start`` on, in order."""
        offset, position = self.start % self.length, 0
        while True:
            for number in self.numbers:
                count = self.shards.counts[number]
                if position + count > offset:
                    yield number, max(0, offset - position)
                position += count
            if not self.loop:
                return
            offset, position = 0, 0

    def __iter__(self) -> Iterator[Transitions]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for visit, (number, first) in enumerate(self._visits()):
            if visit % workers == worker:
                shard = self.shards.load_shard(number)
                yield shard if first == 0 else {key: value[first:] for key, value in shard.items()}


class ReplayFeeder:
    """Keeps a :class:`ReplayBuffer` fed from an endless stream of transitions at a stated replay ratio.

    The buffer is first filled to capacity ``C``; then, before optimiser step ``s``, the stream has delivered
    ``C + floor(s * B / R)`` transitions in all (``B`` the batch size, ``R`` the replay ratio). Each transition thus
    lives ``C * R / B`` steps in the buffer and is sampled ``R`` times on average (``B / C`` per step). Memory is the
    buffer's, whatever the length of the run.

    The stream is any function ``open(start) -> iterator of transition dicts`` that continues exactly at offset
    ``start`` of a deterministic sequence (:meth:`ShardDataset.stream`,
    :meth:`agents.collect.TransitionCollector.stream`). That makes resuming exact: :meth:`resume` replays the last
    ``C`` transitions before the saved offset into the same buffer rows.

    Args:
        buffer: The ring buffer (empty).
        open_stream: Opens the stream at an offset.
        batch_size: ``B``.
        replay_ratio: ``R > 0``.
    """

    def __init__(self, buffer: ReplayBuffer, open_stream: Callable[[int], Iterator[Transitions]], batch_size: int,
                 replay_ratio: float) -> None:
        if not replay_ratio > 0:
            raise ValueError(f"replay_ratio={replay_ratio!r} is invalid: expected a number > 0 (how many times each "
                             "transition is sampled on average)")
        self.buffer, self.open_stream = buffer, open_stream
        self.batch_size, self.replay_ratio = batch_size, float(replay_ratio)
        self.delivered = 0  # transitions taken from the stream so far
        self.seconds = 0.0  # time spent collecting and adding them
        self._stream: Iterator[Transitions] | None = None
        self._pending: Transitions | None = None  # the unread rest of the stream's last chunk

    def target(self, step: int) -> int:
        """Transitions the stream must have delivered before optimiser step ``step``."""
        return self.buffer.capacity + math.floor(step * self.batch_size / self.replay_ratio)

    def resume(self, delivered: int) -> None:
        """Rebuild the buffer as it was after ``delivered`` transitions (its last ``C`` rows, in the same slots)."""
        keep = min(delivered, self.buffer.capacity)
        self.buffer.position, self.buffer.size = (delivered - keep) % self.buffer.capacity, 0
        self.delivered = delivered - keep
        self._stream, self._pending = self.open_stream(self.delivered), None
        self.take(keep)

    def advance(self, step: int) -> int:
        """Deliver what step ``step`` needs; returns the number of transitions added."""
        return self.take(self.target(step) - self.delivered)

    def take(self, count: int) -> int:
        """Take exactly ``count`` more transitions from the stream into the buffer; returns ``count``."""
        began = time.perf_counter()
        if self._stream is None:
            self._stream = self.open_stream(self.delivered)
        added = 0
        while added < count:
            chunk = self._pending if self._pending is not None else next(self._stream)
            n = int(chunk["view"].shape[0])
            take = min(n, count - added)
            self.buffer.add({key: value[:take] for key, value in chunk.items()})
            self._pending = {key: value[take:] for key, value in chunk.items()} if take < n else None
            added += take
        self.delivered += added
        self.seconds += time.perf_counter() - began
        return added
