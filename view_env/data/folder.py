"""Image folders and WebDataset-style ``.tar`` shards: how web crawls such as CC12M are stored.

Folder layout (searched recursively; extensions are case-insensitive)::

    <root>/**/<name>.{jpg,jpeg,png,webp,bmp}
    <root>/**/<name>.txt          optional sidecar: each non-empty line is one caption of <name>.<ext>
    <root>/**/*.tar               WebDataset shards found in the folder are read too

Shard layout (what ``img2dataset`` writes for CC12M): an uncompressed tar whose members are grouped by key, the
member name up to the first dot of its base name::

    000000001.jpg   000000001.txt   000000001.json   000000002.jpg ...

A key with an image member becomes one image; its ``.txt`` member, if any, gives the caption(s). Other members
(``.json``, ``.npy``) are ignored. Shards may also be given as a file, a glob (``shards/*.tar``) or a brace range
(``cc12m/{00000..01242}.tar``).

Grayscale, palette and RGBA images are converted to RGB (transparent pixels over white). Nothing is decoded when
the dataset is built; shards are indexed by reading their tar headers only.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from view_env.data.base import IMAGE_EXTENSIONS, ImageDataset, ImageRecord
from view_env.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    NoReadableImagesError,
    SkippedImagesWarning,
)

#: Environment variable naming the image folder or shard pattern when ``root=`` is not given.
IMAGE_ROOT_ENV = "VIEW_ENV_IMAGE_ROOT"

FOLDER_LAYOUT = """  <root>/**/*.{jpg,jpeg,png,webp,bmp}   (optional sidecar <name>.txt captions)
  or <root>/**/*.tar WebDataset shards (key.jpg + key.txt members)
  or a shard file, glob or brace range such as shards/{00000..00099}.tar"""

_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand numeric brace ranges as WebDataset does: ``a/{00..02}.tar`` -> ``a/00.tar a/01.tar a/02.tar``.

    The width of the first bound sets the zero padding. Several ranges expand as a product.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ValueError(f"brace range {{{first}..{last}}} in {pattern!r} counts down; write {{{last}..{first}}}")
    expanded = []
    for number in range(int(first), int(last) + 1):
        head = pattern[: match.start()] + str(number).zfill(len(first))
        expanded.extend(head + rest for rest in expand_braces(pattern[match.end():]))
    return expanded


def expand_patterns(root: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Every existing path that ``root`` names (a path, a glob, a brace range, or a sequence of them; ``~``
    expanded, globs sorted), and a note for each pattern that named nothing (``"<pattern> (glob matched nothing)"``,
    ``"<path> (does not exist)"``)."""
    patterns = [root] if isinstance(root, (str, Path)) else list(root)
    found: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        for expanded in expand_braces(os.path.expanduser(str(pattern))):
            if glob.has_magic(expanded):
                matches = sorted(glob.glob(expanded))
                found.extend(Path(m) for m in matches)
                if not matches:
                    missing.append(f"{expanded} (glob matched nothing)")
            elif os.path.exists(expanded):
                found.append(Path(expanded))
            else:
                missing.append(f"{expanded} (does not exist)")
    return found, missing


def _read_captions(data: bytes | str) -> tuple[str, ...]:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset key and extension of a member name: ``dir/000001.seg.png`` -> (``dir/000001``, ``seg.png``)."""
    folder, base = os.path.split(name)
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower() if dot else ""


class ImageFolderDataset(ImageDataset):
    """Every image under a folder (recursively) and in WebDataset ``.tar`` shards, with optional captions.

    Args:
        root: A folder, a ``.tar`` shard, a glob or brace pattern of shards, or a list of any of these.
            ``None`` reads ``$VIEW_ENV_IMAGE_ROOT``.
        captions: Read sidecar ``.txt`` files and ``.txt`` shard members as captions.

    Raises:
        DatasetNotFoundError: Nothing exists at the root (naming every place looked).
        DatasetFormatError: The root holds no image and no shard, or no shard could be read.
    """

    name = "images"

    def __init__(self, root: str | Path | Sequence[str | Path] | None = None, *, captions: bool = True) -> None:
        roots = self._expand_roots(root)
        self.root = roots[0] if len(roots) == 1 else None
        self.records = []
        # One entry per record: a file path, or (shard number, byte offset, size) inside a tar shard.
        self._sources: list[Path | tuple[int, int, int]] = []
        self.shards: list[Path] = []
        self.skipped_shards: list[str] = []
        for path in roots:
            if path.is_dir():
                self._add_folder(path, captions)
            else:
                self._add_shard(path, captions)
        if self.skipped_shards:
            warnings.warn(
                f"skipped {len(self.skipped_shards)} unreadable tar shard(s) (or their unreadable tail): "
                + "; ".join(self.skipped_shards[:5]),
                SkippedImagesWarning,
                stacklevel=2,
            )
        if not self.records:
            where = ", ".join(str(p) for p in roots)
            if self.shards and len(self.skipped_shards) == len(self.shards):
                raise NoReadableImagesError(where, "no shard could be read; see the warning above for each reason")
            raise DatasetFormatError(
                where,
                f"holds no images (extensions {sorted(IMAGE_EXTENSIONS)}) and no WebDataset .tar shards with image "
                "members",
            )
        self._local = threading.local()

    @staticmethod
    def _expand_roots(root: str | Path | Sequence[str | Path] | None) -> list[Path]:
        looked: list[str] = []
        if root is None:
            env = os.environ.get(IMAGE_ROOT_ENV)
            if not env:
                raise DatasetNotFoundError("image folder", FOLDER_LAYOUT, [f"${IMAGE_ROOT_ENV} (unset)",
                                                                          "root= argument (not given)"])
            root = env
        found, missing = expand_patterns(root)
        looked.extend(missing)
        if looked:
            raise DatasetNotFoundError("image folder or shard", FOLDER_LAYOUT, looked)
        return found

    def _add_folder(self, folder: Path, captions: bool) -> None:
        files: list[Path] = []
        for directory, subdirs, names in os.walk(folder, followlinks=True):
            subdirs.sort()
            for name in sorted(names):
                files.append(Path(directory) / name)
        for path in files:
            extension = path.suffix.lower()
            if extension == ".tar":
                self._add_shard(path, captions)
            elif extension in IMAGE_EXTENSIONS:
                sidecar = path.with_suffix(".txt")
                text = ()
                if captions and sidecar.is_file():
                    text = _read_captions(sidecar.read_bytes())
                self.records.append(ImageRecord(key=str(path.relative_to(folder)), captions=text))
                self._sources.append(path)

    def _add_shard(self, path: Path, captions: bool) -> None:
        shard = len(self.shards)
        self.shards.append(path)
        members: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        try:
            with open(path, "rb") as handle:
                magic = handle.read(6)
            compression = next((name for prefix, name in _COMPRESSED if magic.startswith(prefix)), None)
            if compression is not None:
                raise tarfile.ReadError(
                    f"{compression}-compressed shards are not supported: decompress it first (WebDataset shards "
                    "are plain tar files)"
                )
            with tarfile.open(path, mode="r:") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = _split_key(member.name)
                    if key not in members:
                        members[key] = {}
                        order.append(key)
                    members[key][extension] = member
        except (tarfile.TarError, OSError) as error:
            # Keep what was indexed before a truncated or corrupt part; the shard is reported once.
            self.skipped_shards.append(f"{path}: {type(error).__name__}: {error}")
        with open(path, "rb") if members else io.BytesIO() as handle:
            for key in order:
                group = members[key]
                image = next((group[e] for e in group if f".{e}" in IMAGE_EXTENSIONS), None)
                if image is None:
                    continue
                text: tuple[str, ...] = ()
                if captions and "txt" in group:
                    handle.seek(group["txt"].offset_data)
                    text = _read_captions(handle.read(group["txt"].size))
                self.records.append(ImageRecord(key=f"{path.name}:{key}", captions=text))
                self._sources.append((shard, image.offset_data, image.size))

    def _open(self, index: int) -> Path | IO[bytes]:
        source = self._sources[index]
        if isinstance(source, Path):
            return source
        shard, offset, size = source
        # One open handle per shard and thread: the image bank reads from a thread pool.
        handles = self._local.__dict__.setdefault("handles", {})
        handle = handles.get(shard)
        if handle is None:
            handle = handles[shard] = open(self.shards[shard], "rb")
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise OSError(f"shard {self.shards[shard]} ends early: wanted {size} bytes at offset {offset}")
        return io.BytesIO(data)
