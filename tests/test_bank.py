"""The image bank and the refreshed pool: pixels, sizes and annotations stay aligned with the dataset."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import write_image, write_json
from PIL import Image

from view_env.data import CocoDataset, ImageBank, ImagePool


def _colour(i: int) -> tuple[int, int, int]:
    return (10 * i % 256, 255 - 10 * i % 256, 40)


@pytest.fixture
def coco12(tmp_path):
    """12 images of varied sizes, each a solid colour that identifies it, with i % 3 boxes each."""
    images, annotations = [], []
    for i in range(12):
        width, height = 30 + 7 * i, 60 - 2 * i
        write_image(tmp_path / "train2017" / f"{i:03d}.png", (width, height), _colour(i))
        images.append({"id": 100 + i, "file_name": f"{i:03d}.png", "width": width, "height": height})
        for k in range(i % 3):
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": k + 1,
                                "bbox": [k, 2 * k, width / 2, height / 4], "area": 1, "iscrowd": 0})
    write_json(tmp_path / "annotations" / "instances_train2017.json", {
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(3)]})
    return CocoDataset(tmp_path, "train")


def _check_aligned(bank: ImageBank, dataset: CocoDataset) -> None:
    for slot, index in enumerate(bank.dataset_index.tolist()):
        record = dataset.records[index]
        pixel = bank.images[slot, :, 3, 3].tolist()
        assert pixel == list(_colour(index)), (slot, index)
        assert bank.sizes[slot].tolist() == [record.height, record.width]
        count = len(record.labels)
        assert bank.labels[slot, :count].tolist() == record.labels.tolist()
        assert (bank.labels[slot, count:] == -1).all()
        scale = torch.tensor([record.width, record.height] * 2, dtype=torch.float32)
        torch.testing.assert_close(bank.boxes[slot, :count] * scale, torch.from_numpy(record.boxes))
        assert (bank.boxes[slot, count:] == 0).all()


def test_bank_matches_pil_resize_and_records(coco12):
    bank = ImageBank.from_dataset(coco12, canvas_size=16, progress=False, num_workers=2)
    assert bank.images.shape == (12, 3, 16, 16) and bank.images.dtype == torch.uint8
    assert bank.boxes.shape == (12, 2, 4) and bank.labels.shape == (12, 2)
    assert bank.dataset_index.tolist() == list(range(12))
    _check_aligned(bank, coco12)
    reference = np.asarray(coco12.read(5).image.resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(bank.images[5].permute(1, 2, 0).numpy(), reference)
    assert "12 images at 16px" in repr(bank)


def test_bank_subset_and_bad_arguments(coco12):
    bank = ImageBank.from_dataset(coco12, canvas_size=8, indices=[7, 2], progress=False)
    assert bank.dataset_index.tolist() == [7, 2]
    _check_aligned(bank, coco12)
    with pytest.raises(IndexError, match=r"\[12\]"):
        ImageBank.from_dataset(coco12, indices=[0, 12], progress=False)
    with pytest.raises(ValueError, match="canvas_size must be an integer >= 8"):
        ImageBank.from_dataset(coco12, canvas_size=4, progress=False)
    with pytest.raises(ValueError, match="indices is empty"):
        ImageBank.from_dataset(coco12, indices=[], progress=False)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        ImageBank.from_dataset(coco12, num_workers=0, progress=False)


def test_jpeg_reduced_decoding_keeps_the_original_size(tmp_path):
    write_image(tmp_path / "big.jpg", (640, 480))
    from view_env.data import ImageFolderDataset

    dataset = ImageFolderDataset(tmp_path)
    decoded = dataset.read(0, min_side=64)
    assert (decoded.width, decoded.height) == (640, 480)
    assert min(decoded.image.size) >= 64 and decoded.image.size[0] < 640
    bank = ImageBank.from_dataset(dataset, canvas_size=64, progress=False)
    assert bank.sizes.tolist() == [[480, 640]]


def test_pool_refresh_replaces_slots_and_keeps_annotations_aligned(coco12):
    with ImagePool(coco12, capacity=4, canvas_size=8, seed=3, progress=False, num_workers=1) as pool:
        assert len(pool) == 4 and pool.boxes.shape == (4, coco12.max_boxes, 4)
        first = pool.dataset_index.tolist()
        _check_aligned(pool, coco12)
        seen = set(first)
        deadline = time.monotonic() + 20
        while len(seen) < 12 and time.monotonic() < deadline:
            if pool.refresh(max_images=2) == 0:
                time.sleep(0.01)
            _check_aligned(pool, coco12)
            seen.update(pool.dataset_index.tolist())
        assert seen == set(range(12)), "the background loader should reach every image of the dataset"
        assert pool.refresh(max_images=0) == 0
    assert not pool._thread.is_alive()


def test_pool_bad_arguments(coco12):
    with pytest.raises(ValueError, match="capacity must be a positive"):
        ImagePool(coco12, capacity=0, progress=False)
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        ImagePool(coco12, capacity=2, prefetch=0, progress=False)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bank_lives_on_the_requested_device(coco12, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the CUDA placement is checked where one exists")
    bank = ImageBank.from_dataset(coco12, canvas_size=8, device=device, progress=False)
    for tensor in (bank.images, bank.sizes, bank.dataset_index, bank.boxes, bank.labels):
        assert tensor.device.type == device


def test_pool_refresh_leaves_busy_slots_alone(coco12):
    with ImagePool(coco12, capacity=6, canvas_size=8, seed=1, progress=False, num_workers=1) as pool:
        busy = torch.tensor([True, False, True, False, True, True])
        before = pool.dataset_index.clone()
        pixels = pool.images.clone()
        replaced = 0
        deadline = time.monotonic() + 20
        while replaced < 4 and time.monotonic() < deadline:
            replaced += pool.refresh(busy=busy)
            time.sleep(0.01)
            assert torch.equal(pool.dataset_index[busy], before[busy])
            assert torch.equal(pool.images[busy], pixels[busy])
            _check_aligned(pool, coco12)
        assert replaced >= 4
