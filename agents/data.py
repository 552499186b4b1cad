"""Logged view transitions for offline, policy-agnostic GVF pretraining: the record, a replay buffer, shard files.

A *transition* is one environment step ``(x, a, x')`` of the ViewTransform MDP, stored as a dict of tensors with
leading dimension ``B`` (see :func:`transition_fields`):

- ``view``, ``next_view``: ``uint8 [B, 3, S, S]``, x and x' (x' is the episode's last view where it ended).
- ``box``, ``next_box``: ``float32 [B, 4]``, their normalised view boxes ``(x0, y0, x1, y1)``.
- ``aug``, ``next_aug``: ``float32 [B, 7]``, their augmentation states (columns ``view_env.core.AUGMENTATIONS``).
- ``rel_box``: ``float32 [B, 4]``, ``next_box`` in the frame of ``box`` (:func:`relative_box`): the action.
- ``annotation``: ``float32 [B, A]``, the coverage annotation of x' (the environment's labels).
- ``image_index``, ``next_image_index``: ``int64 [B]``, dataset indices of the images of x and x' (they differ
  only when a video environment's temporal action changed the frame).
- ``anchor_view``: ``uint8 [B, 3, S, S]``, the first view of x's episode: another view of the same image, the
  annotation of the ``views`` and ``prototypes`` sources.
- ``view_annotation``: ``float32 [B, A]``, the coverage annotation of x (the ``labels`` source's base loss).

The learner sees the action only as ``rel_box`` (plus ``next_aug``), whatever action space the behaviour policy used,
so it never needs to know the policy. A transition never crosses an episode boundary.

:class:`ReplayBuffer` keeps transitions in preallocated tensors on a device. :func:`write_shards` logs them to
``.pt`` shard files plus an ``index.json``; :class:`ShardDataset` reads them back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm import tqdm

from view_env.core import AUGMENTATIONS

#: Version of the shard format written by :func:`write_shards`; readers refuse any other.
FORMAT_VERSION = 1
#: Name of the index file of a shard directory.
INDEX_NAME = "index.json"
#: Default number of transitions per shard file (about 100 MB at 64-px views).
DEFAULT_SHARD_SIZE = 4096

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


def relative_box(box: torch.Tensor, next_box: torch.Tensor) -> torch.Tensor:
    """``next_box`` expressed in the frame of ``box``: the relative-box action the learner sees.

    With ``w = x1 - x0`` and ``h = y1 - y0`` of ``box``, the result is
    ``((x0' - x0) / w, (y0' - y0) / h, (x1' - x0) / w, (y1' - y0) / h)``; ``box`` itself maps to ``(0, 0, 1, 1)``.

    Args:
        box: ``float32 [..., 4]`` normalised boxes ``(x0, y0, x1, y1)`` with positive sides.
        next_box: ``float32 [..., 4]`` boxes in the same image coordinates.

    Returns:
        ``float32 [..., 4]``.
    """
    x0, y0, x1, y1 = box.unbind(-1)
    w, h = x1 - x0, y1 - y0
    nx0, ny0, nx1, ny1 = next_box.unbind(-1)
    return torch.stack([(nx0 - x0) / w, (ny0 - y0) / h, (nx1 - x0) / w, (ny1 - y0) / h], dim=-1)


def absolute_box(box: torch.Tensor, rel_box: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`relative_box`: the box whose coordinates in the frame of ``box`` are ``rel_box``.

    Args:
        box: ``float32 [..., 4]`` normalised boxes.
        rel_box: ``float32 [..., 4]`` relative boxes.

    Returns:
        ``float32 [..., 4]`` normalised boxes.
    """
    x0, y0, x1, y1 = box.unbind(-1)
    w, h = x1 - x0, y1 - y0
    rx0, ry0, rx1, ry1 = rel_box.unbind(-1)
    return torch.stack([x0 + rx0 * w, y0 + ry0 * h, x0 + rx1 * w, y0 + ry1 * h], dim=-1)


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


def shard_name(number: int) -> str:
    """File name of shard ``number`` in a shard directory."""
    return f"shard-{number:05d}.pt"


def write_shards(
    directory: str | Path,
    transitions: Iterable[Mapping[str, torch.Tensor]],
    num_transitions: int | None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ShardDataset:
    """Log transitions to ``directory`` as shard files ``shard-NNNNN.pt`` and an ``index.json``.

    Each shard is ``torch.save`` of ``{"format_version", "metadata", "transitions"}`` (CPU tensors, at most
    ``shard_size`` transitions), written to a temporary file and moved into place, so a crash never leaves a torn
    file; the index, written the same way, comes last, so a directory without one is an unfinished run.

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

    Returns:
        The written directory as a :class:`ShardDataset`.
    """
    directory = Path(directory)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} is invalid: expected an integer >= 1")
    if num_transitions is not None and (not isinstance(num_transitions, int) or num_transitions < 0):
        raise ValueError(f"num_transitions={num_transitions!r} is invalid: expected an integer >= 0 or None")
    index_path = directory / INDEX_NAME
    old_files: list[str] = []
    if index_path.exists():
        if not overwrite:
            raise FileExistsError(f"{index_path} exists: {directory} already holds transition shards; choose another "
                                  "directory or pass overwrite=True (--overwrite)")
        try:
            old_files = [entry["file"] for entry in json.loads(index_path.read_text())["shards"]]
        except (ValueError, KeyError, TypeError):
            old_files = []
        index_path.unlink()  # until the new index lands, the directory reads as unfinished, never as mixed
    if metadata is None and isinstance(transitions, TransitionSource):
        metadata = transitions.metadata
    meta = dict(metadata or {})
    directory.mkdir(parents=True, exist_ok=True)

    entries: list[dict[str, Any]] = []
    # One preallocated staging shard, reused: fresh 100 MB allocations per shard cost more in page faults than the
    # copies themselves.
    staging: Transitions = {}
    filled = written = 0

    def flush(count: int) -> None:
        # A full staging shard is saved as is; a partial one as copies, since torch.save writes a view's whole storage.
        shard = staging if count == shard_size else {key: value[:count].clone() for key, value in staging.items()}
        name = shard_name(len(entries))
        payload = {"format_version": FORMAT_VERSION, "metadata": meta, "transitions": shard}
        _atomic_write(directory / name, lambda tmp: torch.save(payload, tmp))
        entries.append({"file": name, "count": count})

    batches = iter(transitions)
    bar = tqdm(total=num_transitions, unit="transition", unit_scale=True, desc="write shards", disable=not progress)
    with bar:
        while num_transitions is None or written < num_transitions:  # never pulls a batch it would not use
            batch = next(batches, None)
            if batch is None:
                break
            if not staging:  # the first batch: the view size and categories are now known
                meta = _complete_metadata(meta, batch, directory)
                rows = shard_size if num_transitions is None else min(shard_size, num_transitions)
                staging = {key: torch.empty((rows, *shape), dtype=dtype) for key, (shape, dtype) in
                           transition_fields(meta["obs_size"], meta["num_categories"]).items()}
            n = check_transitions(batch, meta["obs_size"], meta["num_categories"])
            take = n if num_transitions is None else min(n, num_transitions - written)
            done = 0
            while done < take:  # a batch may straddle shards
                k = min(take - done, shard_size - filled)
                for key, store in staging.items():
                    store[filled : filled + k].copy_(batch[key][done : done + k].detach())
                filled, done = filled + k, done + k
                if filled == shard_size:
                    flush(shard_size)
                    filled = 0
            written += take
            bar.update(take)
    if num_transitions is not None and written < num_transitions:
        raise ValueError(f"the transitions ran out after {written} of num_transitions={num_transitions}; "
                         f"{directory} has no index and is incomplete")
    if filled:
        flush(filled)
    if not written:
        raise ValueError(f"no transitions to write to {directory}: the iterable was empty or num_transitions=0")
    index = {"format_version": FORMAT_VERSION, "num_transitions": written, "metadata": meta, "shards": entries}
    _atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    for stale in set(old_files) - {entry["file"] for entry in entries}:
        if Path(stale).name == stale:
            (directory / stale).unlink(missing_ok=True)
    return ShardDataset(directory)


class ShardDataset:
    """The transitions of a shard directory written by :func:`write_shards`, read lazily one shard at a time.

    Opening reads and checks ``index.json`` and that every listed shard exists; a shard's content is read (with
    ``torch.load(weights_only=True)``) and checked only when needed, so a dataset larger than memory works:
    :meth:`iter_batches` keeps ``shards_in_memory`` shards resident. :meth:`fill` and :meth:`load_all` read
    everything.

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

    def load_all(self) -> Transitions:
        """Every transition, in written order, as one dict of CPU tensors (needs them all in memory)."""
        return concat_transitions(self.load_shard(i) for i in range(len(self.shard_paths)))

    def fill(self, buffer: ReplayBuffer) -> int:
        """Add every transition to ``buffer`` in written order (a smaller buffer keeps the last ones).

        Returns:
            The number of transitions added.
        """
        if (buffer.obs_size, buffer.num_categories) != (self.obs_size, self.num_categories):
            raise ValueError(f"the buffer holds obs_size={buffer.obs_size}, num_categories={buffer.num_categories} "
                             f"but {self.directory} holds obs_size={self.obs_size}, "
                             f"num_categories={self.num_categories}")
        for number in range(len(self.shard_paths)):
            buffer.add(self.load_shard(number))
        return len(self)

    def iter_batches(self, batch_size: int, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu", *, drop_last: bool = False,
                     shards_in_memory: int = 4) -> Iterator[Transitions]:
        """One pass over every transition in random order, in batches moved to ``device``.

        Shards are visited in a random order, ``shards_in_memory`` at a time; the rows of those shards (and the
        previous group's remainder) are shuffled together and cut into batches. Every transition appears exactly
        once per pass.

        Args:
            batch_size: Transitions per batch ``B``.
            generator: Source of randomness (any device); ``None`` uses torch's global generator.
            drop_last: Leave out the final batch when it holds fewer than ``batch_size``.
            shards_in_memory: Shards resident at a time (more mixes better, costs memory).

        Yields:
            Transition dicts with leading dimension ``B``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: expected an integer >= 1")
        if not isinstance(shards_in_memory, int) or shards_in_memory < 1:
            raise ValueError(f"shards_in_memory={shards_in_memory!r} is invalid: expected an integer >= 1")
        draw_device = generator.device if generator is not None else "cpu"

        def permutation(n: int) -> torch.Tensor:
            return torch.randperm(n, generator=generator, device=draw_device).cpu()

        order = permutation(len(self.shard_paths)).tolist()
        leftover: Transitions | None = None
        for start in range(0, len(order), shards_in_memory):
            parts = [self.load_shard(i) for i in order[start : start + shards_in_memory]]
            pool = concat_transitions(([leftover] if leftover is not None else []) + parts)
            rows = permutation(pool["view"].shape[0])
            full = len(rows) // batch_size * batch_size
            for b in range(0, full, batch_size):
                yield {key: value[rows[b : b + batch_size]].to(device) for key, value in pool.items()}
            leftover = {key: value[rows[full:]] for key, value in pool.items()}
        if leftover is not None and leftover["view"].shape[0] and not drop_last:
            yield {key: value.to(device) for key, value in leftover.items()}
