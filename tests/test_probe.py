"""Frozen-feature probes: near-perfect on separable toy features, chance on random ones; AP against hand-computed
rankings; probe data from a tiny Shapes set; the whole run and the command line with a stand-in checkpoint loader."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch
from torch import nn

from agents import probe
from agents.probe import (
    average_precision,
    classification_probe,
    counting_probe,
    crop_boxes,
    extract_features,
    knn_probe,
    mean_average_precision,
    presence_probe,
    probe_data,
    run_probes,
)
from view_env.data import ImageBank, ShapesDataset
from view_env.render import render_views

NUM_CLASSES = 5


def _tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


@pytest.fixture(scope="module")
def banks(tiny_shapes) -> tuple[ImageBank, ImageBank]:
    return tuple(ImageBank.from_dataset(ShapesDataset(tiny_shapes, split=split), canvas_size=64, progress=False)
                 for split in ("train", "val"))


@pytest.fixture(scope="module")
def data(banks) -> probe.ProbeData:
    return probe_data(*banks, view_size=32)


def _toy(n: int, separable: bool, seed: int) -> dict[str, torch.Tensor]:
    """Labels, multi-hot presence and counts of ``n`` rows, with features (``x_*``) that encode them (plus a little
    noise) when ``separable``, else pure noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    presence = (torch.rand(n, NUM_CLASSES, generator=g) < 0.3).float()
    counts = torch.randint(0, 9, (n,), generator=g)
    noise = lambda d: 0.01 * torch.randn(n, d, generator=g)  # noqa: E731
    if separable:
        features = {
            "x_label": nn.functional.one_hot(labels, NUM_CLASSES).float() + noise(NUM_CLASSES),
            "x_presence": presence + noise(NUM_CLASSES),
            "x_count": nn.functional.one_hot(counts, 9).float() + noise(9),
        }
    else:
        features = {key: torch.randn(n, 16, generator=g) for key in ("x_label", "x_presence", "x_count")}
    return {"labels": labels, "presence": presence, "counts": counts, **features}


@pytest.mark.parametrize("separable", [True, False])
def test_probes_perfect_on_separable_features_and_chance_on_noise(separable):
    train, val = _toy(400, separable, seed=1), _toy(200, separable, seed=2)
    knn = knn_probe(train["x_label"], train["labels"], val["x_label"], val["labels"], NUM_CLASSES)
    top1 = classification_probe(
        train["x_label"], train["labels"], val["x_label"], val["labels"], NUM_CLASSES, epochs=50
    )
    mean_ap = presence_probe(train["x_presence"], train["presence"], val["x_presence"], val["presence"], epochs=50)
    count_acc, count_mae = counting_probe(train["x_count"], train["counts"], val["x_count"], val["counts"])
    if separable:
        assert knn == 1.0 and top1 == 1.0 and count_acc == 1.0
        assert mean_ap > 0.999 and count_mae < 0.1
    else:  # chance: 1/5 for the classes, the prevalence 0.3 for presence, about 1/9 for the counts
        assert knn < 0.35 and top1 < 0.35 and mean_ap < 0.45
        assert count_acc < 0.25 and count_mae > 1.5


def test_linear_probes_are_deterministic():
    train, val = _toy(300, False, seed=3), _toy(100, False, seed=4)
    runs = [classification_probe(train["x_label"], train["labels"], val["x_label"], val["labels"], NUM_CLASSES,
                                 epochs=3, batch_size=64) for _ in range(2)]
    assert runs[0] == runs[1]


def test_average_precision_against_hand_computed_rankings():
    # Positives at ranks 1, 3 and 5: AP = (1/1 + 2/3 + 3/5) / 3.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0, 1])) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # The order of the rows does not matter, only the scores.
    shuffled = torch.tensor([3, 0, 4, 1, 2])
    assert average_precision(scores[shuffled], torch.tensor([0, 1, 1, 0, 1])) == pytest.approx(0.7555555)
    # A tie is one threshold: [0.5, 0.5] with one positive reaches recall 1 at precision 1/2.
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)
    # Category 1 has no positive and is left out of the mean; category 0 is ranked perfectly.
    table = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0], [0, 0]])
    assert mean_average_precision(table, targets) == pytest.approx(1.0)


def test_crop_boxes_are_square_in_pixels_contain_the_box_and_stay_inside():
    boxes = torch.tensor([[0.4, 0.4, 0.5, 0.6], [0.0, 0.0, 0.1, 0.05], [0.2, 0.1, 0.9, 0.3], [0.5, 0.5, 0.5, 0.5]])
    sizes = torch.tensor([[100, 200], [100, 200], [100, 200], [100, 200]])  # (height, width)
    crops = crop_boxes(boxes, sizes)
    assert (crops[:, :2] <= boxes[:, :2]).all() and (crops[:, 2:] >= boxes[:, 2:]).all()
    assert (crops >= 0).all() and (crops <= 1).all() and (crops[:, 2:] > crops[:, :2]).all()
    pixels = (crops[:, 2:] - crops[:, :2]) * torch.tensor([200.0, 100.0])
    # The first two fit: squares of 1.2 x the longer side (the second shifted in from the corner).
    torch.testing.assert_close(pixels[:2], torch.tensor([[24.0, 24.0], [24.0, 24.0]]))
    assert crops[1, :2].tolist() == [0.0, 0.0]
    # The third (140 px wide in a 100 px tall image) is clipped to the image's height; the point gets one pixel.
    torch.testing.assert_close(pixels[2], torch.tensor([168.0, 100.0]))
    torch.testing.assert_close(pixels[3], torch.tensor([1.0, 1.0]))


def test_probe_data_shapes_targets_and_crops(banks, data):
    bank_train, bank_val = banks
    for split, bank in ((data.train, bank_train), (data.val, bank_val)):
        n, a = len(bank), bank.num_categories
        valid = bank.labels >= 0
        b = int(valid.sum())
        assert split.views.shape == (n, 3, 32, 32) and split.views.dtype == torch.uint8
        assert split.crops.shape == (b, 3, 32, 32) and split.crops.dtype == torch.uint8
        assert split.presence.shape == (n, a) and split.presence.dtype == torch.float32
        assert split.counts.tolist() == valid.sum(1).tolist()
        assert split.crop_labels.tolist() == bank.labels[valid].tolist()
        assert split.crop_boxes.shape == (b, 4) and split.crop_image.shape == (b,)
        for row in range(n):
            present = sorted(set(bank.labels[row][valid[row]].tolist()))
            assert split.presence[row].nonzero().flatten().tolist() == present
            area = (bank.boxes[row, :, 2] - bank.boxes[row, :, 0]) * (bank.boxes[row, :, 3] - bank.boxes[row, :, 1])
            assert split.image_class[row] == bank.labels[row, area.masked_fill(~valid[row], -1).argmax()]
        objects = bank.boxes[valid]  # (B, 4), image-major like the crops
        assert (split.crop_boxes[:, :2] <= objects[:, :2] + 1e-6).all()
        assert (split.crop_boxes[:, 2:] >= objects[:, 2:] - 1e-6).all()
        side = (split.crop_boxes[:, 2:] - split.crop_boxes[:, :2]) * bank.sizes[split.crop_image].flip(-1)
        torch.testing.assert_close(side[:, 0], side[:, 1])  # square images: every crop fits and stays square
        expected = render_views(bank.images, split.crop_image, split.crop_boxes, 32)
        assert torch.equal(split.crops, expected)
    assert len(data.train) == 24 and len(data.val) == 8 and data.num_categories == 30


def test_probe_data_max_images_draws_a_seeded_subset(banks):
    small = probe_data(*banks, view_size=16, max_images=5, seed=3)
    again = probe_data(*banks, view_size=16, max_images=5, seed=3)
    assert len(small.train) == 5 and len(small.val) == 5
    assert torch.equal(small.train.image_index, again.train.image_index)
    assert small.train.image_index.tolist() == sorted(set(small.train.image_index.tolist()))


def test_extract_features_normalises_and_restores_mode():
    views = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(192), nn.Dropout(0.5))
    encoder.train()
    features = extract_features(encoder, views, batch_size=3)
    assert encoder.training and features.shape == (10, 192) and features.dtype == torch.float32
    mean = torch.tensor(probe.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(probe.IMAGENET_STD).view(1, 3, 1, 1)
    expected = ((views.float() / 255 - mean) / std).flatten(1) / (1 + 1e-5) ** 0.5  # fresh BN in eval: identity
    torch.testing.assert_close(features, expected)
    plain = extract_features(lambda x: x.mean((2, 3)), views, batch_size=4)  # any callable works
    assert plain.shape == (10, 3)


def test_run_probes_end_to_end(data):
    encoder = _tiny_encoder()
    scores = run_probes(encoder, data, epochs=2, progress=False)
    assert list(scores) == ["presence_map", "box_top1", "knn_top1", "count_acc", "count_mae"]
    for name in ("presence_map", "box_top1", "knn_top1", "count_acc"):
        assert 0.0 <= scores[name] <= 1.0, (name, scores[name])
    assert scores["count_mae"] >= 0.0
    assert run_probes(encoder, data, epochs=2, progress=False) == scores


@pytest.fixture
def fake_loader(monkeypatch, tiny_shapes):
    """A stand-in for agents.checkpoint.load_encoder: a tiny random conv encoder and a config naming the data."""
    calls = []

    def load_encoder(path, device):
        calls.append((str(path), device))
        return _tiny_encoder(), {"env": "shapes", "root": str(tiny_shapes), "obs_size": 32}

    monkeypatch.setitem(sys.modules, "agents.checkpoint", types.SimpleNamespace(load_encoder=load_encoder))
    return calls


def test_cli_prints_a_table_and_writes_json(tiny_shapes, tmp_path, fake_loader, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"stand-in")
    out = tmp_path / "results" / "probes.json"
    scores = probe.main(["--checkpoint", str(checkpoint), "--out", str(out), "--canvas-size", "64", "--epochs", "2",
                         "--max-images", "20", "--no-progress"])
    assert fake_loader == [(str(checkpoint), "cpu")]
    record = json.loads(out.read_text())
    assert record["scores"] == scores and record["view_size"] == 32  # the config's data and view size
    assert record["dataset"] == "shapes" and record["root"] == str(tiny_shapes)
    assert record["images"] == {"train": 20, "val": 8}
    table = capsys.readouterr().out
    for name, value in scores.items():
        assert f"{name}" in table and f"{value:.4f}" in table


def test_cli_missing_checkpoint_names_it(tmp_path, fake_loader, capsys):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(SystemExit):
        probe.main(["--checkpoint", str(missing)])
    assert str(missing) in capsys.readouterr().err and fake_loader == []


def test_bad_inputs_raise_value_errors_naming_the_value(banks):
    train = _toy(20, True, seed=5)
    with pytest.raises(ValueError, match="empty"):
        extract_features(_tiny_encoder(), torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, S, S\]"):
        extract_features(_tiny_encoder(), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        extract_features(lambda x: x, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="20 rows but the targets have 19"):
        knn_probe(train["x_label"], train["labels"][:19], train["x_label"], train["labels"], NUM_CLASSES)
    with pytest.raises(ValueError, match="empty"):
        counting_probe(train["x_count"][:0], train["counts"][:0], train["x_count"], train["counts"])
    with pytest.raises(ValueError, match="D = 5 but val features have D = 9"):
        counting_probe(train["x_label"], train["counts"], train["x_count"], train["counts"])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        classification_probe(train["x_label"], train["labels"], train["x_label"], train["labels"], 3, epochs=1)
    with pytest.raises(ValueError, match="no positive"):
        presence_probe(train["x_presence"], train["presence"], train["x_presence"], torch.zeros(20, NUM_CLASSES))
    with pytest.raises(ValueError, match="no positive"):
        average_precision(torch.rand(4), torch.zeros(4))
    bank_train, bank_val = banks
    unlabelled = copy.copy(bank_val)
    unlabelled.labels = torch.full_like(bank_val.labels, -1)
    with pytest.raises(ValueError, match="bank_val holds no annotated objects"):
        probe_data(bank_train, unlabelled, view_size=16)
    other = copy.copy(bank_val)
    other.dataset = types.SimpleNamespace(num_categories=7)
    with pytest.raises(ValueError, match="30 categories but bank_val has 7"):
        probe_data(bank_train, other, view_size=16)
    with pytest.raises(ValueError, match="view_size must be a positive integer.*0"):
        probe_data(bank_train, bank_val, view_size=0)
    with pytest.raises(ValueError, match="max_images must be >= 1 or None, got 0"):
        probe_data(bank_train, bank_val, view_size=16, max_images=0)


def test_cli_refuses_a_dataset_without_labels(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"stand-in")
    loader = types.SimpleNamespace(load_encoder=lambda path, device: (_tiny_encoder(), {"env": "images"}))
    monkeypatch.setitem(sys.modules, "agents.checkpoint", loader)
    with pytest.raises(SystemExit):
        probe.main(["--checkpoint", str(checkpoint)])
    assert "'images', which has no labels" in capsys.readouterr().err
