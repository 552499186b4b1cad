"""Video frames as images: video files and folders of frames (EpicKitchens style), with temporal neighbours.

A :class:`VideoDataset` root is a single video file, or a folder searched recursively for video files
(``.mp4 .avi .mkv .webm .mov``, any case) and for *frame folders*: any folder that directly holds image files is one
video whose frames are those images in natural order of the numbers in their names, e.g. the EpicKitchens layout
``P01/rgb_frames/P01_01/frame_0000000001.jpg``. A video is named by its path relative to the root (without the
extension for files); one record is made per kept frame, keyed ``"<video>:<frame:06d>"``, where the frame is the
0-based position in the whole video (so EpicKitchens' ``frame_0000000001.jpg`` is frame 0).

Why PyAV decodes the video files: PyAV's wheels bundle their own FFmpeg build, so ``pip install 'view-env[video]'``
is all it takes, with nothing to install on the system; it exposes FFmpeg's demuxer and decoder directly, so frames
can be counted at load time by reading packets without decoding any, and a frame is found exactly by its
presentation timestamp after seeking to the keyframe before it and decoding forward, which makes reads
frame-accurate for every codec FFmpeg knows. The alternatives each fall short: torchvision's video API is
deprecated, torchcodec needs the system's FFmpeg shared libraries, and OpenCV's frame seeking
(``CAP_PROP_POS_FRAMES``) is approximate for many codecs. PyAV stays an optional extra: folders of frames are read
with Pillow alone and never import it.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from view_env.data.base import IMAGE_EXTENSIONS, DecodedImage, ImageDataset, ImageRecord, decode_image
from view_env.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    NoReadableImagesError,
    SkippedImagesWarning,
    UnreadableImageError,
)

if TYPE_CHECKING:
    import av.container
    import av.video.frame
    import av.video.stream

#: File extensions (lower case) read as video files.
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})

#: Environment variable consulted for the root when none is given.
ROOT_ENV_VAR = "VIEW_ENV_VIDEO_ROOT"

_LAYOUT = """\
  <root> is one video file (.mp4, .avi, .mkv, .webm, .mov), or a folder searched recursively for
  - video files, e.g. <root>/P01/videos/P01_01.MP4
  - folders of frames (any folder directly holding .jpg/.jpeg/.png/.webp/.bmp files is one video),
    e.g. <root>/P01/rgb_frames/P01_01/frame_0000000001.jpg"""

#: Unreadable videos named in the skip warning; the rest are only counted.
_EXAMPLES_SHOWN = 5

#: Open video files each reading thread keeps, most recently used first out of eviction.
_OPEN_VIDEOS_PER_THREAD = 2

#: Reduced-size decoding shrinks by at most this power-of-two factor, like JPEG's DCT scaling.
_MAX_REDUCTION = 8

_DIGITS = re.compile(r"(\d+)")


def _import_av() -> ModuleType:
    """Import PyAV, or explain how to install it.

    Raises:
        ImportError: PyAV is not installed; the message gives the ``pip`` command.
    """
    try:
        return importlib.import_module("av")
    except ImportError as error:
        raise ImportError(
            "reading video files needs PyAV, which is not installed; install it with "
            "`pip install 'view-env[video]'` (folders of frames work without it)"
        ) from error


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort key ordering ``frame_2.jpg`` before ``frame_10.jpg``; the full name breaks ties (``1.jpg``/``01.jpg``)."""
    parts = _DIGITS.split(name)
    # Even positions are text, odd positions are numbers, so tuples compare like with like.
    return (*(int(part) if i % 2 else part for i, part in enumerate(parts)), name)


@dataclass(frozen=True)
class _Video:
    """One readable video found at load time.

    Attributes:
        name: Identity: path relative to the root, ``/``-separated, without the extension for files.
        path: The video file or the frame folder.
        width: Frame width in pixels.
        height: Frame height in pixels.
        frame_names: For frame folders, the frame file names in frame order; empty for video files.
        pts: For video files, ``int64 [F]`` presentation timestamps (``stream.time_base`` units) of the frames in
            frame order; ``None`` for frame folders.
        keyframes: For video files, ``int64 [K]`` ascending frame indices of keyframes, always starting with 0
            (the start of the stream is always a place to decode from); ``None`` for frame folders.
    """

    name: str
    path: Path
    width: int
    height: int
    frame_names: tuple[str, ...] = ()
    pts: np.ndarray | None = None
    keyframes: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_names) if self.pts is None else len(self.pts)


class _Skipped(Exception):
    """A video found at load time cannot be read; the message says why."""


def _probe_frame_folder(name: str, folder: Path, files: list[str]) -> _Video:
    """Index a folder of frames; the first frame whose header reads gives the size of them all.

    Raises:
        _Skipped: No frame's header can be read.
    """
    frame_names = tuple(sorted(files, key=_natural_key))
    for frame_name in frame_names:
        try:
            with Image.open(folder / frame_name) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        if width > 0 and height > 0:
            return _Video(name, folder, width, height, frame_names=frame_names)
    raise _Skipped(f"none of its {len(frame_names)} frame images can be opened")


def _probe_video_file(pyav: ModuleType, name: str, path: Path) -> _Video:
    """Index a video file by demuxing its packets, without decoding any frame.

    Every packet of the first video stream is one frame; sorting their presentation timestamps (``pts``, or ``dts``
    when a container stores no ``pts``) gives the frame order, whatever the codec's reordering (B-frames).

    Raises:
        _Skipped: The file cannot be opened or demuxed; has no video stream, no frames or no frame size; or is
            truncated: its header lists more frames than its data holds and the data ends before the stream's
            duration (a truncated MP4 usually fails to open at all, having lost its index at the end).
    """
    try:
        with pyav.open(str(path)) as container:
            if not container.streams.video:
                raise _Skipped("it has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            declared_frames = stream.frames  # from the container header; 0 when it keeps no count (Matroska)
            declared_end = None if stream.duration is None else (stream.start_time or 0) + stream.duration
            timestamps: list[int] = []
            key_timestamps: list[int] = []
            packets = 0
            data_end = None
            for packet in container.demux(stream):
                timestamp = packet.pts if packet.pts is not None else packet.dts
                if timestamp is None or packet.size == 0:
                    continue  # the final flush packet
                packets += 1
                end = timestamp + (packet.duration or 0)
                data_end = end if data_end is None else max(data_end, end)
                if packet.is_discard:
                    continue  # decoded only as a reference; the decoder drops its frame (edit lists)
                timestamps.append(timestamp)
                if packet.is_keyframe:
                    key_timestamps.append(timestamp)
    except pyav.FFmpegError as error:
        raise _Skipped(f"{type(error).__name__}: {error}") from error
    if not timestamps:
        raise _Skipped("its video stream has no frames")
    if width <= 0 or height <= 0:
        raise _Skipped(f"its video stream has no frame size ({width}x{height})")
    # Duplicate timestamps would make two frames indistinguishable when decoding; keep one frame per timestamp.
    pts = np.unique(np.asarray(timestamps, dtype=np.int64))
    interval = (int(pts[-1]) - int(pts[0])) // max(len(pts) - 1, 1)
    if 0 < packets < declared_frames and (declared_end is None or (data_end or 0) + interval < declared_end):
        raise _Skipped(f"truncated: its header lists {declared_frames} frames but its data holds only {packets}")
    keyframes = np.union1d([0], np.searchsorted(pts, np.asarray(key_timestamps, dtype=np.int64))).astype(np.int64)
    return _Video(name, path, width, height, pts=pts, keyframes=keyframes)


def _reduced_size(width: int, height: int, min_side: int | None) -> tuple[int, int]:
    """``width x height`` divided by the largest of 1, 2, 4 and 8 that keeps both sides >= ``min_side``."""
    if min_side is None:
        return width, height
    factor = 1
    while factor < _MAX_REDUCTION and -(-width // (2 * factor)) >= min_side and -(-height // (2 * factor)) >= min_side:
        factor *= 2
    return -(-width // factor), -(-height // factor)


class _OpenVideo:
    """An open video file and where its decoder stands, so that reading forward never seeks.

    ``position`` is the frame index of the last decoded frame (``current``), or one before the frame decoding is
    expected to resume at; decoding continues from there when the target lies ahead and no keyframe lies between,
    otherwise it seeks to the keyframe at or before the target and decodes forward, identifying frames by ``pts``.
    """

    def __init__(self, pyav: ModuleType, path: Path, pts: np.ndarray, keyframes: np.ndarray) -> None:
        self._pyav = pyav
        self._path = path
        self._pts = pts
        self._keyframes = keyframes
        self.container: av.container.InputContainer
        self._stream: av.video.stream.VideoStream
        self._frames: Generator[av.video.frame.VideoFrame, None, None] | None = None
        self.position = -1
        self.current: av.video.frame.VideoFrame | None = None
        self._restart()

    def close(self) -> None:
        """Close the file; the object is unusable afterwards."""
        if self._frames is not None:
            self._frames.close()
        self.container.close()

    def frame(self, index: int) -> av.video.frame.VideoFrame:
        """Decode frame ``index`` (0-based, in presentation order).

        Raises:
            av.FFmpegError: The decoder failed.
            EOFError: The stream ended before frame ``index``.
        """
        if self.current is not None and self.position == index:
            return self.current
        keyframe = int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])
        if index < self.position or keyframe > self.position + 1:
            self._seek(keyframe)
        found = self._decode_until(index)
        if found is None:
            # The seek landed after the target (inexact container index): decode from the very start instead.
            self._restart()
            found = self._decode_until(index)
        if found is None:
            raise EOFError(f"decoding overshot frame {index} even from the start of the stream")
        return found

    def _restart(self) -> None:
        """(Re)open the file and position the decoder at its first frame."""
        if self._frames is not None:
            self.close()
        self.container = self._pyav.open(str(self._path))
        self._stream = self.container.streams.video[0]
        self._frames = self.container.decode(self._stream)
        self.position = -1
        self.current = None

    def _seek(self, keyframe: int) -> None:
        """Move the decoder to keyframe ``keyframe`` (a frame index)."""
        if keyframe == 0:
            self._restart()
            return
        if self._frames is not None:
            self._frames.close()
        self.container.seek(int(self._pts[keyframe]), stream=self._stream, backward=True, any_frame=False)
        self._frames = self.container.decode(self._stream)
        self.position = keyframe - 1
        self.current = None

    def _decode_until(self, index: int) -> av.video.frame.VideoFrame | None:
        """Decode forward to frame ``index``; ``None`` if a later frame comes first.

        A frame's index is the position of its ``pts`` in the load-time table; a frame without a known ``pts`` is
        taken to follow the previous one.
        """
        for frame in self._frames:
            timestamp = frame.pts if frame.pts is not None else frame.dts
            found = int(np.searchsorted(self._pts, timestamp)) if timestamp is not None else -1
            if found < 0 or found >= len(self._pts) or self._pts[found] != timestamp:
                found = self.position + 1
            self.position, self.current = found, frame
            if found == index:
                return frame
            if found > index:
                return None
        raise EOFError(f"the stream ended at frame {self.position}, before frame {index}")


class VideoDataset(ImageDataset):
    """Frames of video files and of folders of frames, as an :class:`ImageDataset` with temporal neighbours.

    Records are ``ImageRecord(key=f"{video}:{frame:06d}", width, height, video=video, frame=frame)`` for frames
    ``0, frame_stride, 2 * frame_stride, ...`` of each video (at most ``max_frames_per_video`` of them), videos in
    sorted order of their names; there are no boxes and no captions (``categories`` is empty).

    Args:
        root: A video file, or a folder searched recursively (see the module docstring for the layout);
            ``None`` reads ``$VIEW_ENV_VIDEO_ROOT``.
        frame_stride: Keep every ``frame_stride``-th frame of each video, starting with frame 0; at least 1.
        max_frames_per_video: Keep at most this many frames (after striding) of each video; ``None`` keeps all.

    Attributes:
        root: The root in use: the argument, else ``$VIEW_ENV_VIDEO_ROOT`` (user folder expanded).
        videos: Names of the videos, in order; ``video_of`` indexes into it.
        video_of: ``int64 [len]`` the video number (into ``videos``) of each record.
        frame_of: ``int64 [len]`` the frame index, inside its video, of each record.

    Raises:
        DatasetNotFoundError: No root was given and ``$VIEW_ENV_VIDEO_ROOT`` is unset, or the root does not exist.
        DatasetFormatError: The root holds no video files and no frame folders, is a file of another kind, or two
            videos share a name.
        NoReadableImagesError: Videos were found but none can be read.
        ImportError: A video file was found and PyAV is not installed.
        ValueError: ``frame_stride`` or ``max_frames_per_video`` is below 1.

    Warns:
        SkippedImagesWarning: Once per load when some videos cannot be read, with the count and examples.

    Reading: frame folders decode the frame's image file; video files are decoded with PyAV, frame-accurately. Each
    reading thread keeps its last few videos open with the decoder's position, so reading the frames of a video in
    increasing order decodes forward without seeking.
    """

    name = "video"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        frame_stride: int = 1,
        max_frames_per_video: int | None = None,
    ) -> None:
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1 (1 keeps every frame), got {frame_stride!r}")
        if max_frames_per_video is not None and max_frames_per_video < 1:
            raise ValueError(
                f"max_frames_per_video must be >= 1, or None to keep every frame, got {max_frames_per_video!r}"
            )
        self.frame_stride = frame_stride
        self.max_frames_per_video = max_frames_per_video
        self.root = _resolve_root(root)
        self._av: ModuleType | None = None
        self._videos = self._find_videos()
        self.videos: tuple[str, ...] = tuple(video.name for video in self._videos)

        records: list[ImageRecord] = []
        video_of: list[np.ndarray] = []
        frame_of: list[np.ndarray] = []
        starts: list[int] = []
        for number, video in enumerate(self._videos):
            frames = np.arange(0, video.num_frames, frame_stride, dtype=np.int64)[:max_frames_per_video]
            starts.append(len(records))
            records.extend(
                ImageRecord(
                    key=f"{video.name}:{frame:06d}",
                    width=video.width,
                    height=video.height,
                    video=video.name,
                    frame=int(frame),
                )
                for frame in frames
            )
            video_of.append(np.full(len(frames), number, dtype=np.int64))
            frame_of.append(frames)
        self.records = records
        self.video_of: np.ndarray = np.concatenate(video_of)
        self.frame_of: np.ndarray = np.concatenate(frame_of)
        self._video_start = np.asarray(starts, dtype=np.int64)
        self._video_length = np.diff(np.append(self._video_start, len(records)))
        self._local = threading.local()

    def _find_videos(self) -> list[_Video]:
        """Find, index and sort the videos under the root; skip (and warn about) unreadable ones."""
        found: list[tuple[str, Path, list[str] | None]] = []  # (name, path, frame file names or None for a file)
        if self.root.is_file():
            if self.root.suffix.lower() not in VIDEO_EXTENSIONS:
                raise DatasetFormatError(
                    self.root,
                    f"not a video file (extension {self.root.suffix!r}); give a {'/'.join(sorted(VIDEO_EXTENSIONS))} "
                    "file, or a folder of videos and frame folders",
                )
            found.append((self.root.stem, self.root, None))
        else:
            for folder, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                relative = Path(folder).relative_to(self.root)
                frames = [f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
                if frames:
                    name = relative.as_posix() if relative.parts else self.root.resolve().name
                    found.append((name, Path(folder), frames))
                for filename in sorted(filenames):
                    if not filename.startswith(".") and Path(filename).suffix.lower() in VIDEO_EXTENSIONS:
                        found.append(((relative / Path(filename).stem).as_posix(), Path(folder) / filename, None))
        if not found:
            raise DatasetFormatError(
                self.root,
                "no video files and no folders of frames found here; expected layout:\n" + _LAYOUT,
            )
        found.sort(key=lambda item: item[0])
        for (name, path, _), (next_name, next_path, _) in zip(found, found[1:], strict=False):
            if name == next_name:
                raise DatasetFormatError(
                    self.root,
                    f"two videos are both named {name!r}: {path} and {next_path}; rename or move one of them",
                )
        if any(frames is None for _, _, frames in found):
            self._av = _import_av()

        videos: list[_Video] = []
        skipped: list[str] = []
        for name, path, frames in found:
            try:
                if frames is None:
                    assert self._av is not None
                    videos.append(_probe_video_file(self._av, name, path))
                else:
                    videos.append(_probe_frame_folder(name, path, frames))
            except _Skipped as reason:
                skipped.append(f"{path} ({reason})")
        if skipped:
            examples = "; ".join(skipped[:_EXAMPLES_SHOWN]) + ("; ..." if len(skipped) > _EXAMPLES_SHOWN else "")
            if not videos:
                raise NoReadableImagesError(
                    self.root, f"none of the {len(skipped)} videos found can be read: {examples}"
                )
            warnings.warn(
                f"skipped {len(skipped)} of {len(found)} videos under {self.root} that cannot be read: {examples}",
                SkippedImagesWarning,
                stacklevel=3,
            )
        return videos

    def __getstate__(self) -> dict[str, Any]:
        # Open files stay with the thread that opened them; a copy (e.g. in a worker process) opens its own.
        # PyAV is re-imported on first use, since modules do not pickle.
        state = self.__dict__.copy()
        del state["_local"]
        state["_av"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def read(self, index: int, min_side: int | None = None) -> DecodedImage:
        """Decode frame ``index`` as RGB (see :meth:`ImageDataset.read`).

        For video files, ``min_side`` shrinks the frame by a power of two (at most 1/8) while both sides stay at
        least ``min_side``, as JPEG reduced-size decoding does; the returned width and height are the original ones.

        Raises:
            UnreadableImageError: The frame file or the video cannot be decoded, with the reason.
            ImportError: The record is from a video file and PyAV is not installed.
        """
        key = self.records[index].key
        number, frame = int(self.video_of[index]), int(self.frame_of[index])
        video = self._videos[number]
        if video.pts is None:
            return decode_image(video.path / video.frame_names[frame], key, min_side)
        size = _reduced_size(video.width, video.height, min_side)
        return DecodedImage(self._decode_video_frame(number, frame, key, size), video.width, video.height)

    def _decode_video_frame(self, number: int, frame: int, key: str, size: tuple[int, int]) -> Image.Image:
        """Decode ``frame`` of video file ``number`` to RGB of ``size`` (width, height), through this thread's cache
        of open videos."""
        if self._av is None:
            self._av = _import_av()
        pyav = self._av
        cache: OrderedDict[int, _OpenVideo] | None = getattr(self._local, "open_videos", None)
        if cache is None:
            cache = self._local.open_videos = OrderedDict()
        opened = cache.pop(number, None)
        try:
            if opened is None:
                video = self._videos[number]
                assert video.pts is not None and video.keyframes is not None  # a video file, not a frame folder
                opened = _OpenVideo(pyav, video.path, video.pts, video.keyframes)
            decoded = opened.frame(frame)
            if size == (decoded.width, decoded.height):
                image = decoded.to_image()
            else:
                image = decoded.to_image(width=size[0], height=size[1], interpolation="AREA")
        except (pyav.FFmpegError, OSError, EOFError) as error:
            if opened is not None:
                opened.close()
            raise UnreadableImageError(key, f"{type(error).__name__}: {error}") from error
        cache[number] = opened
        while len(cache) > _OPEN_VIDEOS_PER_THREAD:
            cache.popitem(last=False)[1].close()
        return image

    def neighbour(self, index: int, offset: int) -> int | None:
        """The record ``offset`` kept frames after (``offset < 0``: before) record ``index`` in the same video.

        Args:
            index: A record index, ``0 <= index < len(self)``.
            offset: Steps in kept (strided) frames; 0 returns ``index``.

        Returns:
            The neighbour's record index, or ``None`` when it would fall outside the video.
        """
        found = int(self.neighbours(np.asarray([index], dtype=np.int64), offset)[0])
        return None if found < 0 else found

    def neighbours(self, indices: np.ndarray, offset: int) -> np.ndarray:
        """Vectorised :meth:`neighbour`.

        Args:
            indices: Integer record indices of any shape ``[...]``, each in ``[0, len(self))``.
            offset: Steps in kept (strided) frames, the same for all.

        Returns:
            ``int64 [...]`` neighbour record indices, ``-1`` where the neighbour falls outside the video.

        Raises:
            IndexError: An index is outside ``[0, len(self))``.
        """
        indices = np.asarray(indices)
        if not np.issubdtype(indices.dtype, np.integer) and indices.size:
            raise TypeError(f"indices must be integers, got dtype {indices.dtype}")
        indices = indices.astype(np.int64, copy=False)
        bad = (indices < 0) | (indices >= len(self))
        if bad.any():
            raise IndexError(
                f"record index {int(indices[bad].flat[0])} is outside [0, {len(self)}); pass indices of records"
            )
        videos = self.video_of[indices]  # [...]
        starts = self._video_start[videos]
        position = indices - starts + offset  # position of the neighbour inside its video's kept frames
        inside = (position >= 0) & (position < self._video_length[videos])
        return np.where(inside, starts + position, -1).astype(np.int64)

    def describe(self) -> str:
        """A short summary: videos, frames kept, stride."""
        return (
            f"{self.name}: {len(self)} frames from {len(self.videos)} videos under {self.root} "
            f"(frame_stride={self.frame_stride}, max_frames_per_video={self.max_frames_per_video})"
        )


def _resolve_root(root: str | Path | None) -> Path:
    """The root argument, else ``$VIEW_ENV_VIDEO_ROOT``; it must exist.

    Raises:
        DatasetNotFoundError: Neither is set, or the chosen one does not exist; names both.
    """
    configured = os.environ.get(ROOT_ENV_VAR) or None
    if root is not None:
        candidate: Path | None = Path(root).expanduser()
        looked = [
            f"root argument: {candidate}" + ("" if candidate.exists() else " (does not exist)"),
            f"${ROOT_ENV_VAR}: not consulted because a root was given",
        ]
    elif configured is not None:
        candidate = Path(configured).expanduser()
        looked = [
            "root argument: not given",
            f"${ROOT_ENV_VAR}: {candidate}" + ("" if candidate.exists() else " (does not exist)"),
        ]
    else:
        candidate = None
        looked = ["root argument: not given", f"${ROOT_ENV_VAR}: unset"]
    if candidate is None or not candidate.exists():
        raise DatasetNotFoundError(
            f"Video dataset (pass root= or set ${ROOT_ENV_VAR})",
            _LAYOUT,
            looked,
        )
    return candidate
