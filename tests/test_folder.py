"""Image folders and WebDataset tar shards, read from real files the tests write."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encoded_image as _encoded
from conftest import write_image, write_shard
from PIL import Image

from view_env.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    ImageBank,
    ImageFolderDataset,
    NoReadableImagesError,
    SkippedImagesWarning,
)
from view_env.data.folder import expand_braces


def test_folder_is_recursive_and_converts_modes(tmp_path):
    write_image(tmp_path / "a.JPG", colour=(250, 0, 0))
    write_image(tmp_path / "sub" / "b.png", mode="L", colour=(0, 250, 0))
    write_image(tmp_path / "sub" / "deeper" / "c.webp", colour=(0, 0, 250))
    write_image(tmp_path / "d.bmp", colour=(10, 20, 30))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent: composited over white
    rgba.save(tmp_path / "e.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "a.txt").write_text("first caption\n\n  second caption  \n")
    dataset = ImageFolderDataset(tmp_path)
    keys = [r.key for r in dataset.records]
    assert keys == ["a.JPG", "d.bmp", "e.png", "sub/b.png", "sub/deeper/c.webp"]
    assert dataset.records[0].captions == ("first caption", "second caption")
    assert dataset.records[1].captions == ()
    assert dataset.num_categories == 0 and dataset.max_boxes == 0
    for index in range(len(dataset)):
        assert dataset.read(index).image.mode == "RGB"
    gray = np.asarray(dataset.read(3).image)
    assert np.all(gray[..., 0] == gray[..., 1])
    assert np.asarray(dataset.read(2).image).min() == 255


def test_tar_shards_group_members_by_key(tmp_path):
    write_shard(tmp_path / "shards" / "00000.tar", {
        "000001": {"jpg": _encoded((255, 0, 0)), "txt": b"a red rectangle", "json": b"{}"},
        "000002": {"png": _encoded((0, 255, 0), "PNG")},
        "000003": {"txt": b"caption without an image"},
        # "seg.png" is another field of the same key (a mask), not its image.
        "dir/000004": {"seg.png": _encoded((9, 9, 9), "PNG"), "webp": _encoded((0, 0, 255), "WEBP")},
    })
    write_shard(tmp_path / "shards" / "00001.tar", {"000005": {"jpeg": _encoded((9, 9, 9)), "txt": b"grey"}})
    for root in (tmp_path / "shards", str(tmp_path / "shards" / "{00000..00001}.tar"),
                 str(tmp_path / "shards" / "*.tar"), [tmp_path / "shards" / "00000.tar", tmp_path / "shards" /
                                                     "00001.tar"]):
        dataset = ImageFolderDataset(root)
        assert [r.key for r in dataset.records] == [
            "00000.tar:000001", "00000.tar:000002", "00000.tar:dir/000004", "00001.tar:000005"]
        assert [r.captions for r in dataset.records] == [("a red rectangle",), (), (), ("grey",)]
    colours = [np.asarray(dataset.read(i).image)[8, 12] for i in range(len(dataset))]
    np.testing.assert_allclose(colours, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)], atol=8)


def test_brace_expansion():
    assert expand_braces("s/{008..011}.tar") == ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
    assert expand_braces("{0..1}-{0..1}") == ["0-0", "0-1", "1-0", "1-1"]
    with pytest.raises(ValueError, match="counts down"):
        expand_braces("{3..1}.tar")


def test_missing_root_and_unset_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("VIEW_ENV_IMAGE_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError, match="VIEW_ENV_IMAGE_ROOT"):
        ImageFolderDataset()
    with pytest.raises(DatasetNotFoundError, match="does not exist") as caught:
        ImageFolderDataset(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(caught.value)
    with pytest.raises(DatasetNotFoundError, match="glob matched nothing"):
        ImageFolderDataset(str(tmp_path / "*.tar"))
    monkeypatch.setenv("VIEW_ENV_IMAGE_ROOT", str(tmp_path / "from_env"))
    with pytest.raises(DatasetNotFoundError, match="from_env"):
        ImageFolderDataset()


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetFormatError, match="holds no images") as caught:
        ImageFolderDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(caught.value)


def test_corrupt_images_are_skipped_counted_and_reported_once(tmp_path):
    write_image(tmp_path / "good1.jpg")
    write_image(tmp_path / "good2.png")
    (tmp_path / "bad1.jpg").write_bytes(b"definitely not a jpeg")
    good = (tmp_path / "good1.jpg").read_bytes()
    (tmp_path / "bad2.jpg").write_bytes(good[: len(good) // 2])  # truncated
    dataset = ImageFolderDataset(tmp_path)
    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 of 4 images") as caught:
        bank = ImageBank.from_dataset(dataset, canvas_size=16, progress=False)
    assert len(caught) == 1
    assert "bad1.jpg" in str(caught[0].message)
    assert len(bank) == 2 and bank.num_skipped == 2
    assert [dataset.records[i].key for i in bank.dataset_index.tolist()] == ["good1.jpg", "good2.png"]


def test_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(NoReadableImagesError, match="none of the images could be read"):
        ImageBank.from_dataset(ImageFolderDataset(tmp_path), canvas_size=16, progress=False)


def test_corrupt_truncated_and_compressed_shards(tmp_path):
    good = write_shard(tmp_path / "good.tar", {"a": {"jpg": _encoded((1, 2, 3))}})
    data = good.read_bytes()
    (tmp_path / "gz.tar").write_bytes(b"\x1f\x8b" + data)
    truncated = write_shard(tmp_path / "trunc.tar", {"b": {"jpg": _encoded((4, 5, 6))},
                                                     "c": {"jpg": _encoded((7, 8, 9), size=(300, 300))}})
    truncated.write_bytes(truncated.read_bytes()[:1500])
    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 unreadable tar shard") as caught:
        dataset = ImageFolderDataset(tmp_path)
    message = str(caught[0].message)
    assert "gz.tar" in message and "gzip-compressed" in message and "trunc.tar" in message
    assert [r.key for r in dataset.records][:2] == ["good.tar:a", "trunc.tar:b"]
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.tar").write_bytes(b"\x1f\x8b" + data)
    with pytest.warns(SkippedImagesWarning), pytest.raises(NoReadableImagesError, match="no shard could be read"):
        ImageFolderDataset(tmp_path / "only")
