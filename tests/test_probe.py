"""Frozen-feature probes: near-perfect on separable toy features, chance on random ones; AP against hand-computed
rankings; probe data from a tiny Shapes set; the whole run; one protocol shared by the pretrainer's end-of-run probes
and the command line (checkpoints, exports, timm models), checked on real checkpoints."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from agents import probe
from agents.models import IMAGENET_MEAN, IMAGENET_STD, ViewEncoder
from agents.probe import (
    CHANCE,
    COLOUR_GRID,
    AttentiveProbe,
    ColourGridEncoder,
    EncodedViews,
    attentive_classification_probe,
    attentive_presence_probe,
    average_precision,
    chance_scores,
    classification_probe,
    colour_grid_features,
    counting_probe,
    crop_boxes,
    encode_views,
    extract_features,
    format_probe_table,
    knn_probe,
    mean_average_precision,
    normalise_views,
    presence_probe,
    probe_data,
    probe_encoders,
    run_probes,
)
from view_env.data import ImageBank, ShapesDataset
from view_env.data.shapes import CATEGORIES
from view_env.render import render_views

NUM_CLASSES = 5


def _tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return ViewEncoder(nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ))


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
    crops = crop_boxes(boxes, sizes, min_area=0.0)  # the plain context crop
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
        objects = bank.boxes[valid]  # (B, 4), image-major like the crops
        assert (split.crop_boxes[:, :2] <= objects[:, :2] + 1e-6).all()
        assert (split.crop_boxes[:, 2:] >= objects[:, 2:] - 1e-6).all()
        side = (split.crop_boxes[:, 2:] - split.crop_boxes[:, :2]) * bank.sizes[split.crop_image].flip(-1)
        torch.testing.assert_close(side[:, 0], side[:, 1])  # square images: every crop fits and stays square
        expected = render_views(bank.images, split.crop_image, split.crop_boxes, 32)
        assert torch.equal(split.crops, expected)
    assert len(data.train) == 24 and len(data.val) == 8 and data.num_categories == len(CATEGORIES)


def test_probe_data_max_images_draws_a_seeded_subset(banks):
    small = probe_data(*banks, view_size=16, max_images=5, seed=3)
    again = probe_data(*banks, view_size=16, max_images=5, seed=3)
    assert len(small.train) == 5 and len(small.val) == 5
    assert torch.equal(small.train.image_index, again.train.image_index)
    assert small.train.image_index.tolist() == sorted(set(small.train.image_index.tolist()))


def test_extract_features_normalises_and_restores_mode():
    views = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    encoder = ViewEncoder(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(192), nn.Dropout(0.5)))
    encoder.train()
    features = extract_features(encoder, views, batch_size=3)
    assert encoder.training and features.shape == (10, 192) and features.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = ((views.float() / 255 - mean) / std).flatten(1) / (1 + 1e-5) ** 0.5  # fresh BN in eval: identity
    torch.testing.assert_close(features, expected)
    plain = extract_features(lambda x: x.float().mean((2, 3)), views, batch_size=4)  # any callable works
    assert plain.shape == (10, 3)


def test_run_probes_end_to_end(data):
    encoder = _tiny_encoder()
    scores = run_probes(encoder, data, epochs=2, progress=False, attentive_epochs=2)
    assert list(scores) == ["presence_map", "box_top1", "knn_top1", "count_acc", "count_mae", "attn_presence_map",
                            "attn_box_top1"]
    for name in ("presence_map", "box_top1", "knn_top1", "count_acc", "attn_presence_map", "attn_box_top1"):
        assert 0.0 <= scores[name] <= 1.0, (name, scores[name])
    assert scores["count_mae"] >= 0.0
    crops = {split: extract_features(encoder, getattr(data, split).crops) for split in ("train", "val")}
    knn = knn_probe(crops["train"], data.train.crop_labels, crops["val"], data.val.crop_labels, data.num_categories)
    assert scores["knn_top1"] == knn  # k-NN classifies the object crops, the box probe's inputs
    assert run_probes(encoder, data, epochs=2, progress=False, attentive_epochs=2) == scores


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
    with pytest.raises(ValueError, match=f"{len(CATEGORIES)} categories but bank_val has 7"):
        probe_data(bank_train, other, view_size=16)
    with pytest.raises(ValueError, match="view_size must be a positive integer.*0"):
        probe_data(bank_train, bank_val, view_size=0)
    with pytest.raises(ValueError, match="max_images must be >= 1 or None, got 0"):
        probe_data(bank_train, bank_val, view_size=16, max_images=0)


# ------------------------------------------------------------------------------------------- attentive probes


def _marked_tokens(n: int, seed: int, tokens: int = 16, dim: int = 16) -> dict[str, torch.Tensor]:
    """Toy token sets in which the answer sits in marked tokens at random positions, among distractors.

    Channels ``0..NUM_CLASSES - 1`` one-hot a class, channel ``NUM_CLASSES`` is the marker. Every token one-hots a
    random class (a distractor); for ``labels`` one token at a random position also carries the marker and one-hots
    the label; for ``presence`` each present class gets its own marked token. The mean token therefore holds the
    answer only as one count among ``tokens`` random ones, while attending to the marker recovers it exactly.
    """
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(dim)

    def distractors() -> torch.Tensor:
        return eye[torch.randint(0, NUM_CLASSES, (n, tokens), generator=g)] + 0.05 * torch.randn(n, tokens, dim,
                                                                                               generator=g)

    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x_label = distractors()
    rows = torch.arange(n)
    x_label[rows, torch.randint(0, tokens, (n,), generator=g)] = eye[labels] + eye[NUM_CLASSES]
    presence = (torch.rand(n, NUM_CLASSES, generator=g) < 0.3).float()
    presence[rows, labels] = 1.0  # at least one object per image
    x_presence = distractors()
    slots = torch.rand(n, tokens, generator=g).argsort(1)[:, :NUM_CLASSES]  # distinct positions, one per class
    for a in range(NUM_CLASSES):
        marked = presence[:, a] > 0
        x_presence[rows[marked], slots[marked, a]] = eye[a] + eye[NUM_CLASSES]
    return {"labels": labels, "x_label": x_label, "presence": presence, "x_presence": x_presence}


def test_attentive_probes_find_the_marked_token_where_a_linear_probe_on_the_mean_cannot():
    train, val = _marked_tokens(600, seed=1), _marked_tokens(300, seed=2)
    # The classification probe reads a bfloat16 cache (as encode_views makes), the presence probe float32.
    top1 = attentive_classification_probe(train["x_label"].bfloat16(), train["labels"], val["x_label"].bfloat16(),
                                          val["labels"], NUM_CLASSES, batch_size=64)
    mean_ap = attentive_presence_probe(train["x_presence"], train["presence"], val["x_presence"], val["presence"],
                                       batch_size=64)
    linear_top1 = classification_probe(train["x_label"].mean(1), train["labels"], val["x_label"].mean(1),
                                       val["labels"], NUM_CLASSES, batch_size=64)
    linear_ap = presence_probe(train["x_presence"].mean(1), train["presence"], val["x_presence"].mean(1),
                               val["presence"], batch_size=64)
    assert top1 > 0.98 and mean_ap > 0.98, (top1, mean_ap)  # measured 1.0 and 1.0 over 4 seeds
    assert linear_top1 < 0.5 and linear_ap < 0.8, (linear_top1, linear_ap)  # measured <= 0.38, 0.72; chance 0.2, 0.44


def test_attentive_probes_are_at_chance_on_random_tokens():
    g = torch.Generator().manual_seed(3)
    train, val = torch.randn(400, 8, 16, generator=g), torch.randn(200, 8, 16, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (600,), generator=g)
    presence = (torch.rand(600, NUM_CLASSES, generator=g) < 0.3).float()
    top1 = attentive_classification_probe(train, labels[:400], val, labels[400:], NUM_CLASSES, batch_size=64)
    mean_ap = attentive_presence_probe(train, presence[:400], val, presence[400:], batch_size=64)
    assert top1 < 0.35 and mean_ap < 0.45, (top1, mean_ap)  # chance: 0.2 and the prevalence 0.3


def test_attentive_probe_is_deterministic_for_a_seed_and_ignores_the_global_rng():
    train, val = _marked_tokens(200, seed=4), _marked_tokens(100, seed=5)
    args = (train["x_label"], train["labels"], val["x_label"], val["labels"], NUM_CLASSES)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(attentive_presence_probe(train["x_presence"], train["presence"], val["x_presence"],
                                             val["presence"], epochs=3, batch_size=64, seed=7))
        runs.append(attentive_classification_probe(*args, epochs=3, batch_size=64, seed=7))
    assert runs[:2] == runs[2:]
    state = torch.get_rng_state()
    attentive_classification_probe(*args, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_attentive_probe_equals_multi_head_attention_over_standardised_tokens():
    g = torch.Generator().manual_seed(6)
    tokens = 3 + 2 * torch.randn(5, 7, 12, generator=g)
    mean, std = tokens.mean((0, 1)), tokens.std((0, 1), correction=0)
    model = AttentiveProbe(12, 4, width=8, heads=2, mean=mean, std=std, generator=g)
    with torch.no_grad():
        model.query.normal_(generator=g)
        model.head.weight.normal_(generator=g)
    # The reference: x standardised per channel; q, k, v as multi-head attention with one query; a linear head.
    x = (tokens - mean) / std  # (B, T, E)
    q = model.query[None, :, None, :].expand(5, -1, -1, -1)  # (B, H, 1, d)
    k = torch.einsum("bte,hde->bhtd", x, model.keys)  # (B, H, T, d)
    v = torch.einsum("bte,hde->bhtd", x, model.values)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, 1, d)
    expected = model.head(out.flatten(1))
    torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-5)
    # With one token attention is the identity: the probe is linear in the standardised token.
    single = AttentiveProbe(12, 4, width=8, heads=2, generator=g)
    torch.nn.init.normal_(single.head.weight, generator=g)
    one = tokens[:, :1]
    linear = single.head(torch.einsum("be,hde->bhd", one[:, 0], single.values).flatten(1))
    torch.testing.assert_close(single(one), linear, rtol=1e-4, atol=1e-5)


def test_encode_views_returns_tokens_and_pooled_and_a_pooled_encoder_gets_one_token():
    views = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)

    def token_encoder(x: torch.Tensor) -> EncodedViews:
        patches = torch.nn.functional.unfold(normalise_views(x), 4, stride=4).transpose(1, 2)  # (B, 4, 48)
        return EncodedViews(tokens=patches, pooled=patches.amax(1))

    encoded = encode_views(token_encoder, views, batch_size=4)
    normalised = normalise_views(views)
    expected = torch.nn.functional.unfold(normalised, 4, stride=4).transpose(1, 2)
    assert encoded.tokens.shape == (6, 4, 48) and encoded.tokens.dtype == torch.bfloat16
    assert encoded.pooled.dtype == torch.float32
    torch.testing.assert_close(encoded.tokens.float(), expected, rtol=1e-2, atol=1e-2)  # bfloat16: 8 bits
    torch.testing.assert_close(encoded.pooled, expected.amax(1))
    torch.testing.assert_close(extract_features(token_encoder, views), expected.amax(1))
    full = encode_views(token_encoder, views, token_dtype=torch.float32)
    torch.testing.assert_close(full.tokens, expected)
    pooled_only = encode_views(lambda x: x.float().mean((2, 3)), views)
    assert pooled_only.tokens.shape == (6, 1, 3)
    torch.testing.assert_close(pooled_only.tokens[:, 0].float(), pooled_only.pooled, rtol=1e-2, atol=1e-2)


def test_colour_grid_encoder_against_hand_computed_cells():
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8)
    constant = colour.view(1, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    out = ColourGridEncoder()(constant)
    assert out.tokens.shape == (2, 16, 3) and out.pooled.shape == (2, 48)
    torch.testing.assert_close(out.tokens, (colour / 255.0).expand(2, 16, 3))
    torch.testing.assert_close(out.pooled, (colour / 255.0).repeat_interleave(16).expand(2, 48))  # channel-major
    # Top half red, bottom half blue: the cells are row-major, so tokens 0-7 are red and 8-15 blue.
    halves = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    halves[0, 0, :4], halves[0, 2, 4:] = 255, 255
    tokens = ColourGridEncoder()(halves).tokens[0]
    torch.testing.assert_close(tokens[:8], torch.tensor([1.0, 0.0, 0.0]).expand(8, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens[8:], torch.tensor([0.0, 0.0, 1.0]).expand(8, 3), atol=1e-6, rtol=0)
    # A 2 x 2 grid of an 8 x 8 view with one white pixel in the top-left cell: that cell's mean is 1/16.
    dot = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    dot[0, :, 0, 0] = 255
    torch.testing.assert_close(colour_grid_features(dot, grid=2)[0, [0, 1, 4, 8]],
                               torch.tensor([1 / 16, 0.0, 1 / 16, 1 / 16]), atol=1e-6, rtol=0)


def test_min_crop_area_enlarges_small_crops_and_keeps_large_ones():
    # (height, width) 100 x 200: the minimum crop is a square of sqrt(0.05 * 20000) = 31.62 px.
    sizes = torch.tensor([[100, 200]] * 3)
    boxes = torch.tensor([[0.5, 0.5, 0.51, 0.52],  # 2 x 2 px in the middle
                          [0.0, 0.0, 0.01, 0.01],  # a tiny box in the corner
                          [0.3, 0.2, 0.55, 0.6]])  # 50 x 40 px: its 60 px context square is larger
    crops = crop_boxes(boxes, sizes, min_area=0.05)
    area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    torch.testing.assert_close(area[:2], torch.tensor([0.05, 0.05]))
    pixels = (crops[:, 2:] - crops[:, :2]) * torch.tensor([200.0, 100.0])
    torch.testing.assert_close(pixels[:2], torch.full((2, 2), 1000**0.5))  # square in pixels
    torch.testing.assert_close((crops[0, :2] + crops[0, 2:]) / 2, (boxes[0, :2] + boxes[0, 2:]) / 2)  # same centre
    assert crops[1, :2].tolist() == [0.0, 0.0]  # shifted into the image
    assert (crops[:, :2] <= boxes[:, :2]).all() and (crops[:, 2:] >= boxes[:, 2:]).all()
    torch.testing.assert_close(crops[2], crop_boxes(boxes[2:], sizes[2:], min_area=0.0)[0])
    torch.testing.assert_close(pixels[2], torch.tensor([60.0, 60.0]))
    whole = crop_boxes(boxes[:1], sizes[:1], min_area=1.0)  # larger than the image's height: clipped to it
    torch.testing.assert_close(whole * torch.tensor([200.0, 100.0, 200.0, 100.0]),
                               torch.tensor([[101.0 - 70.71, 0.0, 101.0 + 70.71, 100.0]]), atol=0.02, rtol=0)


def test_probe_data_crops_cover_at_least_the_minimum_area(banks):
    for min_area in (0.0, 0.05, 0.2):
        data = probe_data(*banks, view_size=16, min_crop_area=min_area)
        assert data.min_crop_area == min_area
        for split in (data.train, data.val):
            area = (split.crop_boxes[:, 2] - split.crop_boxes[:, 0]) * (split.crop_boxes[:, 3] - split.crop_boxes[:, 1])
            assert float(area.min()) >= min_area - 1e-5  # square images: no crop is clipped below the floor
    assert probe.MIN_CROP_AREA == probe.EnvParams.min_scale == 0.05


def test_probes_with_tokens_and_the_floor_row_on_shapes(data):
    class TokenConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 4, stride=4)

        def forward(self, x: torch.Tensor) -> EncodedViews:
            tokens = self.conv(normalise_views(x)).flatten(2).transpose(1, 2)  # (B, 64, 8)
            return EncodedViews(tokens=tokens, pooled=tokens.mean(1))

    rows = probe_encoders({"conv": TokenConv()}, data, epochs=2, progress=False, attentive_epochs=2)
    assert list(rows) == ["conv", COLOUR_GRID, CHANCE]
    assert rows[CHANCE] == chance_scores(data)
    for scores in rows.values():
        assert {"attn_presence_map", "attn_box_top1"} <= set(scores)
        assert all(0.0 <= scores[key] <= 1.0 for key in scores if key != "count_mae"), scores
    floor = run_probes(ColourGridEncoder(), data, epochs=2, progress=False, attentive_epochs=2)
    assert floor == rows[COLOUR_GRID]  # exactly the protocol of run_probes


def test_format_probe_table_lines_up_rows_and_marks_missing_scores():
    table = format_probe_table({"pretrained": {"box_top1": 0.5, "count_mae": 12.25},
                                "colour grid": {"box_top1": 0.125}})
    assert table.splitlines() == [
        "encoder      box_top1  count_mae",
        "-----------  --------  ---------",
        "pretrained     0.5000    12.2500",
        "colour grid    0.1250          -",
    ]
    assert format_probe_table({"a": {"x": 1 / 3}}, digits=2).splitlines()[-1] == "a        0.33"


def test_new_inputs_raise_value_errors_naming_the_value(banks, data):
    tokens, labels = torch.zeros(4, 3, 16), torch.zeros(4, dtype=torch.int64)
    presence = torch.ones(4, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"train tokens must be \[N, T, E\], got shape \(4, 16\)"):
        attentive_classification_probe(tokens[:, 0], labels, tokens, labels, NUM_CLASSES)
    with pytest.raises(ValueError, match="val tokens are empty"):
        attentive_presence_probe(tokens, presence, tokens[:0], presence[:0])
    with pytest.raises(ValueError, match="train tokens have E = 16 but val tokens have E = 8"):
        attentive_classification_probe(tokens, labels, tokens[..., :8], labels, NUM_CLASSES)
    with pytest.raises(ValueError, match="4 rows but the targets have 3"):
        attentive_presence_probe(tokens, presence[:3], tokens, presence)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        attentive_classification_probe(tokens, labels + 3, tokens, labels, 3)
    with pytest.raises(ValueError, match="heads dividing width.*width=10, heads=4"):
        AttentiveProbe(16, 2, width=10, heads=4)
    views = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="returned a dict; expected a tensor"):
        encode_views(lambda x: {"tokens": x}, views)
    with pytest.raises(ValueError, match=r"tokens of shape \(2, 3, 8, 8\) and pooled features of shape \(2, 3\)"):
        encode_views(lambda x: EncodedViews(tokens=x, pooled=x.float().mean((2, 3))), views)
    with pytest.raises(ValueError, match=r"\(2, 3, 6, 6\) do not fit grid=4"):
        ColourGridEncoder()(torch.zeros(2, 3, 6, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match="the colour grid takes uint8 views"):
        ColourGridEncoder()(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="grid must be a positive integer.*0"):
        ColourGridEncoder(0)
    with pytest.raises(ValueError, match="min_area must be a fraction of the image's area in \\[0, 1\\], got 1.5"):
        crop_boxes(torch.zeros(1, 4), torch.ones(1, 2, dtype=torch.int64), min_area=1.5)
    with pytest.raises(ValueError, match="min_crop_area must be a fraction.*got -0.1"):
        probe_data(*banks, view_size=16, min_crop_area=-0.1)
    with pytest.raises(ValueError, match="rows is empty"):
        format_probe_table({})
    with pytest.raises(ValueError, match="named 'colour grid'"):
        probe_encoders({COLOUR_GRID: _tiny_encoder()}, data, progress=False)
    with pytest.raises(ValueError, match="named 'chance', a floor row's name"):
        probe_encoders({CHANCE: _tiny_encoder()}, data, progress=False)
    with pytest.raises(ValueError, match="encoders is empty"):
        probe_encoders({}, data, colour_grid=False)


@pytest.mark.parametrize("flag, value, message", [
    ("--train-images", "0", "--train-images 0 is invalid: expected an integer >= 1"),
    ("--val-images", "0", "--val-images 0 is invalid: expected an integer >= 1"),
    ("--view-size", "0", "--view-size 0 is invalid"),
    ("--canvas-size", "0", "--canvas-size 0 is invalid"),
    ("--epochs", "0", "--epochs 0 is invalid"),
    ("--attentive-epochs", "0", "--attentive-epochs 0 is invalid"),
    ("--min-crop-area", "1.5", "--min-crop-area 1.5 is invalid: expected a fraction of the image's area in [0, 1]"),
    ("--dataset", "images", "argument --dataset: invalid choice: 'images'"),
    ("--seed", "x", "argument --seed: invalid int (or none) value: 'x'"),
])
def test_cli_names_the_flag_of_each_bad_value(tmp_path, capsys, flag, value, message):
    """Bad flags are usage errors found before anything is read (the file is not a checkpoint at all)."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not read")
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--checkpoint", str(checkpoint), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _split(presence, counts, crop_labels):
    from agents.probe import ProbeSplit

    n, b = len(counts), len(crop_labels)
    return ProbeSplit(views=torch.zeros(n, 3, 4, 4, dtype=torch.uint8), presence=torch.tensor(presence).float(),
                      counts=torch.tensor(counts),
                      crops=torch.zeros(b, 3, 4, 4, dtype=torch.uint8), crop_boxes=torch.zeros(b, 4),
                      crop_labels=torch.tensor(crop_labels), crop_image=torch.zeros(b, dtype=torch.int64),
                      image_index=torch.arange(n))


def test_chance_scores_by_hand():
    from agents.probe import ProbeData, chance_scores

    # train: crop label 2 is the most frequent, mean count 2.25
    train = _split([[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 1, 0]], [1, 2, 3, 3], [2, 2, 0, 1, 2])
    # val: category 2 never present (left out of the mean); 2 of 4 crops are label 2
    val = _split([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], [2, 2, 4, 0], [2, 0, 2, 1])
    scores = chance_scores(ProbeData(train=train, val=val, num_categories=3, view_size=4))
    assert scores["presence_map"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert scores["box_top1"] == pytest.approx(0.5) and scores["attn_box_top1"] == scores["box_top1"]
    assert scores["knn_top1"] == scores["box_top1"]  # k-NN classifies the same crops
    assert scores["count_acc"] == pytest.approx(2 / 4)  # round(2.25) = 2 matches two of the val counts
    assert scores["count_mae"] == pytest.approx((0.25 + 0.25 + 1.75 + 2.25) / 4)
    assert scores["attn_presence_map"] == scores["presence_map"]
