"""Tests of :mod:`view_env.data.video`: indexing, frame-accurate decoding, neighbours and bad input.

Videos are tiny (12 frames of 32x24) and written here; frame ``i`` is a solid colour of its own, so a decoded
frame tells which frame it is, up to the codec's small colour loss.
"""

from __future__ import annotations

import pickle
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from view_env.data import video as video_module
from view_env.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    NoReadableImagesError,
    SkippedImagesWarning,
    UnreadableImageError,
)
from view_env.data.video import ROOT_ENV_VAR, VideoDataset

NUM_FRAMES = 12
WIDTH, HEIGHT = 32, 24
#: Largest per-channel difference between a decoded frame's mean colour and the colour written; consecutive frames
#: differ by 20 in two channels, so a frame within this tolerance is that frame and no other.
TOLERANCE = 8.0

#: (file name, codec, B-frames): a keyframe every 3 frames in all of them; B-frames make decode order differ from
#: presentation order.
FORMATS = [
    ("clip.mp4", "libx264", 2),
    ("clip.mkv", "libx264", 2),
    ("clip.avi", "mpeg4", 2),
    ("clip.webm", "libvpx", 0),
]


def frame_colour(frame: int) -> np.ndarray:
    """The solid RGB colour of frame ``frame``: ``int64 [3]``."""
    return np.array([20 * frame, 240 - 20 * frame, 160 * (frame % 2)], dtype=np.int64)


def frame_image(frame: int) -> Image.Image:
    return Image.fromarray(np.broadcast_to(frame_colour(frame).astype(np.uint8), (HEIGHT, WIDTH, 3)).copy())


def write_video(
    path: Path, codec: str = "libx264", b_frames: int = 2, num_frames: int = NUM_FRAMES, options: dict | None = None
) -> Path:
    """Write ``num_frames`` solid-colour frames with a keyframe every 3 frames."""
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 3
        stream.codec_context.max_b_frames = b_frames
        if codec == "libx264":
            stream.codec_context.options = {"g": "3", "keyint_min": "3", "bf": str(b_frames)}
        for frame in range(num_frames):
            picture = av.VideoFrame.from_image(frame_image(frame))
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return path


def write_frame_folder(folder: Path, num_frames: int = NUM_FRAMES) -> Path:
    """Write frames as ``frame_1.png`` ... (unpadded numbers, so only natural sorting orders them right)."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame in range(num_frames):
        frame_image(frame).save(folder / f"frame_{frame + 1}.png")
    return folder


def decoded_frame(dataset: VideoDataset, index: int) -> int:
    """Which frame ``dataset.read(index)`` shows; fails if it is no frame's colour."""
    mean = np.asarray(dataset.read(index).image, dtype=np.float64).mean(axis=(0, 1))
    errors = [np.abs(mean - frame_colour(frame)).max() for frame in range(NUM_FRAMES)]
    best = int(np.argmin(errors))
    assert errors[best] <= TOLERANCE, f"record {index}: mean colour {mean} is no frame's colour"
    return best


@pytest.fixture(params=FORMATS, ids=[name for name, _, _ in FORMATS])
def video_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    name, codec, b_frames = request.param
    return write_video(tmp_path / name, codec, b_frames)


def test_video_file_records(video_file: Path) -> None:
    dataset = VideoDataset(video_file)
    assert len(dataset) == NUM_FRAMES
    assert dataset.videos == ("clip",)
    assert [r.key for r in dataset] == [f"clip:{frame:06d}" for frame in range(NUM_FRAMES)]
    assert all(r.video == "clip" and (r.width, r.height) == (WIDTH, HEIGHT) for r in dataset)
    assert [r.frame for r in dataset] == list(range(NUM_FRAMES))
    assert dataset.categories == () and dataset.max_boxes == 0
    assert all(len(r.boxes) == 0 and r.captions == () for r in dataset)
    assert dataset.video_of.dtype == np.int64 and dataset.frame_of.dtype == np.int64
    np.testing.assert_array_equal(dataset.video_of, np.zeros(NUM_FRAMES))
    np.testing.assert_array_equal(dataset.frame_of, np.arange(NUM_FRAMES))


def test_reads_every_frame_in_order(video_file: Path) -> None:
    dataset = VideoDataset(video_file)
    for index in range(len(dataset)):
        decoded = dataset.read(index)
        assert decoded.image.mode == "RGB" and decoded.image.size == (WIDTH, HEIGHT)
        assert (decoded.width, decoded.height) == (WIDTH, HEIGHT)
        assert decoded_frame(dataset, index) == index


def test_reads_frames_in_random_order(video_file: Path) -> None:
    dataset = VideoDataset(video_file)
    order = list(range(NUM_FRAMES)) * 2
    random.Random(0).shuffle(order)
    assert [decoded_frame(dataset, index) for index in order] == order


def test_reading_forward_does_not_seek(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = VideoDataset(write_video(tmp_path / "clip.mp4"))
    seeks: list[int] = []
    seek = video_module._OpenVideo._seek

    def recording_seek(self: video_module._OpenVideo, keyframe: int) -> None:
        seeks.append(keyframe)
        seek(self, keyframe)

    monkeypatch.setattr(video_module._OpenVideo, "_seek", recording_seek)
    for index in range(len(dataset)):
        assert decoded_frame(dataset, index) == index
    assert seeks == []
    # Going back seeks to the keyframe at or before the target (keyframes are frames 0, 3, 6, 9).
    assert decoded_frame(dataset, 7) == 7
    assert seeks == [6]


def test_min_side_shrinks_but_reports_the_original_size(tmp_path: Path) -> None:
    dataset = VideoDataset(write_video(tmp_path / "clip.mp4"))
    decoded = dataset.read(5, min_side=10)
    assert decoded.image.size == (16, 12)
    assert (decoded.width, decoded.height) == (WIDTH, HEIGHT)
    assert dataset.read(5, min_side=24).image.size == (WIDTH, HEIGHT)


def test_frame_folder_sorts_frames_naturally(tmp_path: Path) -> None:
    write_frame_folder(tmp_path / "P01" / "rgb_frames" / "P01_01")
    dataset = VideoDataset(tmp_path)
    assert dataset.videos == ("P01/rgb_frames/P01_01",)
    assert dataset[10].key == "P01/rgb_frames/P01_01:000010"
    assert (dataset[0].width, dataset[0].height) == (WIDTH, HEIGHT)
    for index in range(NUM_FRAMES):
        np.testing.assert_array_equal(np.asarray(dataset.read(index).image), np.asarray(frame_image(index)))


def test_frame_stride_and_max_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4")
    strided = VideoDataset(path, frame_stride=5)
    assert [r.frame for r in strided] == [0, 5, 10]
    assert [r.key for r in strided] == ["clip:000000", "clip:000005", "clip:000010"]
    assert [decoded_frame(strided, index) for index in range(len(strided))] == [0, 5, 10]
    capped = VideoDataset(path, frame_stride=4, max_frames_per_video=2)
    np.testing.assert_array_equal(capped.frame_of, [0, 4])
    assert [decoded_frame(capped, index) for index in (1, 0)] == [4, 0]


def test_mixed_root_with_a_file_and_a_frame_folder(tmp_path: Path) -> None:
    write_video(tmp_path / "b" / "clip.MP4")
    write_frame_folder(tmp_path / "a" / "frames", num_frames=5)
    (tmp_path / "notes.txt").write_text("not a video")
    dataset = VideoDataset(tmp_path, frame_stride=2)
    assert dataset.videos == ("a/frames", "b/clip")
    assert [r.key for r in dataset][:4] == ["a/frames:000000", "a/frames:000002", "a/frames:000004", "b/clip:000000"]
    np.testing.assert_array_equal(dataset.video_of, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(dataset.frame_of, [0, 2, 4, 0, 2, 4, 6, 8, 10])
    assert [decoded_frame(dataset, index) for index in range(len(dataset))] == list(dataset.frame_of)


def test_neighbours_stay_inside_their_video(tmp_path: Path) -> None:
    write_frame_folder(tmp_path / "a", num_frames=5)
    write_frame_folder(tmp_path / "b", num_frames=7)
    dataset = VideoDataset(tmp_path, frame_stride=2)  # a: frames 0, 2, 4 -> records 0-2; b: 0, 2, 4, 6 -> 3-6
    assert len(dataset) == 7
    assert dataset.neighbour(0, 1) == 1
    assert dataset.neighbour(0, 2) == 2
    assert dataset.neighbour(2, 1) is None  # last of a; record 3 is b's first frame
    assert dataset.neighbour(3, -1) is None
    assert dataset.neighbour(6, -3) == 3
    assert dataset.neighbour(6, 1) is None
    assert dataset.neighbour(4, 0) == 4
    indices = np.array([[0, 1, 2], [3, 5, 6]])
    np.testing.assert_array_equal(dataset.neighbours(indices, 1), [[1, 2, -1], [4, 6, -1]])
    np.testing.assert_array_equal(dataset.neighbours(indices, -1), [[-1, 0, 1], [-1, 4, 5]])
    assert dataset.neighbours(np.zeros(0, dtype=np.int64), 1).shape == (0,)
    assert dataset.neighbours(indices, 1).dtype == np.int64
    with pytest.raises(IndexError, match="7"):
        dataset.neighbours(np.array([7]), 1)
    with pytest.raises(IndexError, match="-1"):
        dataset.neighbour(-1, 1)


def test_concurrent_reads_from_threads(tmp_path: Path) -> None:
    write_video(tmp_path / "one.mp4")
    write_video(tmp_path / "two.mkv")
    dataset = VideoDataset(tmp_path)
    order = list(range(len(dataset))) * 2
    random.Random(1).shuffle(order)
    with ThreadPoolExecutor(max_workers=4) as pool:
        shown = list(pool.map(lambda index: decoded_frame(dataset, index), order))
    assert shown == [int(dataset.frame_of[index]) for index in order]


def test_pickled_dataset_reads(tmp_path: Path) -> None:
    dataset = VideoDataset(write_video(tmp_path / "clip.mp4"))
    assert decoded_frame(dataset, 4) == 4  # opens the file in this thread's cache
    copy = pickle.loads(pickle.dumps(dataset))
    assert [decoded_frame(copy, index) for index in (4, 5, 1)] == [4, 5, 1]


def test_root_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_frame_folder(tmp_path / "clip", num_frames=3)
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path))
    assert VideoDataset().videos == ("clip",)


def test_frame_folder_at_the_root_is_named_after_it(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "P01_01", num_frames=3)
    assert [r.key for r in VideoDataset(folder)] == ["P01_01:000000", "P01_01:000001", "P01_01:000002"]


def test_no_root_and_no_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_ENV_VAR, raising=False)
    with pytest.raises(DatasetNotFoundError, match=r"root argument: not given(.|\n)*\$VIEW_ENV_VIDEO_ROOT: unset"):
        VideoDataset()


def test_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="nowhere \\(does not exist\\)(.|\n)*VIEW_ENV_VIDEO_ROOT") as error:
        VideoDataset(missing)
    assert "rgb_frames" in str(error.value)  # names the expected layout
    monkeypatch.setenv(ROOT_ENV_VAR, str(missing))
    with pytest.raises(DatasetNotFoundError, match=r"\$VIEW_ENV_VIDEO_ROOT: .*nowhere \(does not exist\)"):
        VideoDataset()


def test_folder_without_videos(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetFormatError, match="empty: no video files and no folders of frames"):
        VideoDataset(tmp_path / "empty")


def test_root_file_that_is_not_a_video(tmp_path: Path) -> None:
    frame_image(0).save(tmp_path / "still.png")
    with pytest.raises(DatasetFormatError, match="still.png: not a video file"):
        VideoDataset(tmp_path / "still.png")


def test_two_videos_with_one_name(tmp_path: Path) -> None:
    write_frame_folder(tmp_path / "clip", num_frames=2)
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="two videos are both named 'clip'"):
        VideoDataset(tmp_path)


@pytest.mark.parametrize(("argument", "value"), [("frame_stride", 0), ("max_frames_per_video", 0)])
def test_bad_sampling_arguments(tmp_path: Path, argument: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{argument} must be >= 1.*got 0"):
        VideoDataset(tmp_path, **{argument: value})


def write_corrupt_videos(folder: Path) -> list[Path]:
    """Random bytes, a truncated MP4 (index lost) and a truncated fast-start MP4 (data cut short)."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = folder / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths = [noise]
    for name, options in (("cut.mp4", None), ("cut_faststart.mp4", {"movflags": "faststart"})):
        path = write_video(folder / name, num_frames=60, options=options)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        paths.append(path)
    return paths


def test_corrupt_videos_are_skipped_with_one_warning(tmp_path: Path) -> None:
    corrupt = write_corrupt_videos(tmp_path)
    write_video(tmp_path / "good.mp4")
    with pytest.warns(SkippedImagesWarning) as warned:
        dataset = VideoDataset(tmp_path)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "skipped 3 of 4 videos" in message
    assert all(str(path) in message for path in corrupt)
    assert "truncated" in message
    assert dataset.videos == ("good",)
    assert decoded_frame(dataset, 11) == 11


def test_no_readable_video(tmp_path: Path) -> None:
    write_corrupt_videos(tmp_path)
    with pytest.raises(NoReadableImagesError, match=f"{tmp_path}: none of the 3 videos found can be read"):
        VideoDataset(tmp_path)


def test_video_deleted_after_loading_is_an_unreadable_image(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4")
    dataset = VideoDataset(path)
    path.unlink()
    with pytest.raises(UnreadableImageError, match="clip:000003"):
        dataset.read(3)


def test_frame_folders_work_without_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_frame_folder(tmp_path / "frames", num_frames=3)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails
    dataset = VideoDataset(tmp_path)
    np.testing.assert_array_equal(np.asarray(dataset.read(2).image), np.asarray(frame_image(2)))
    (tmp_path / "clip.mp4").write_bytes(b"any bytes: the import fails before the file is opened")
    with pytest.raises(ImportError, match=r"pip install 'view-env\[video\]'"):
        VideoDataset(tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'view-env\[video\]'"):
        VideoDataset(tmp_path / "clip.mp4")
