"""Networks of the GVF pretrainer: shapes, the patch-size rule, action tokens, the value head, the text tower."""

from __future__ import annotations

import pytest
import torch

from agents.models import (
    ENCODERS,
    ActionTokenizer,
    CaptionTokenizer,
    EncoderOutput,
    ProjectionHead,
    Temperature,
    TextTransformer,
    ValueHead,
    build_encoder,
    fit_patch_size,
)
from view_env.core import AUGMENTATIONS, IDENTITY

TINY_VIT = {"depth": 1, "dim": 48, "heads": 3}


def identity_aug(*shape: int) -> torch.Tensor:
    return torch.tensor([IDENTITY[a] for a in AUGMENTATIONS]).expand(*shape, len(AUGMENTATIONS)).clone()


# ---------------------------------------------------------------------------------------------------------------
# Encoders


@pytest.mark.parametrize("size, grid", [(32, 8), (64, 8), (96, 12)])
@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
def test_vit_shapes(name: str, size: int, grid: int) -> None:
    encoder = build_encoder(name, size, **TINY_VIT)
    out = encoder(torch.randn(2, 3, size, size))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (2, grid * grid, 48) and out.pooled.shape == (2, 48)
    assert encoder.dim == 48 and encoder.num_tokens == grid * grid


def test_vit_224_and_presets() -> None:
    encoder = build_encoder("vit_tiny", 224, depth=1)
    assert encoder.patch_size == 16 and encoder.dim == 192
    out = encoder(torch.randn(1, 3, 224, 224))
    assert out.tokens.shape == (1, 196, 192) and out.pooled.shape == (1, 192)
    assert build_encoder("vit_small", 64, depth=1).dim == 384


@pytest.mark.parametrize("size, patch", [(8, 1), (16, 2), (32, 4), (48, 4), (64, 8), (96, 8), (128, 16), (224, 16)])
def test_patch_size_rule(size: int, patch: int) -> None:
    assert fit_patch_size(size) == patch
    assert 8 <= size // patch <= 14


def test_patch_size_errors() -> None:
    with pytest.raises(ValueError, match=r"patch_size 7 does not divide image_size 64.*\[1, 2, 4, 8, 16, 32\]"):
        build_encoder("vit_tiny", 64, patch_size=7, **TINY_VIT)
    with pytest.raises(ValueError, match="image_size 97"):
        fit_patch_size(97)
    encoder = build_encoder("vit_tiny", 64, patch_size=16, **TINY_VIT)
    assert encoder(torch.randn(1, 3, 64, 64)).tokens.shape == (1, 16, 48)


@pytest.mark.parametrize("size, grid, small", [(32, 4, True), (64, 8, True), (96, 12, True), (100, 4, False)])
def test_resnet_stem(size: int, grid: int, small: bool) -> None:
    encoder = build_encoder("resnet18", size)
    assert encoder.small_stem is small
    assert (encoder.conv1.kernel_size, encoder.conv1.stride) == (((3, 3), (1, 1)) if small else ((7, 7), (2, 2)))
    assert isinstance(encoder.maxpool, torch.nn.Identity) is small
    out = encoder(torch.randn(2, 3, size, size))
    assert out.tokens.shape == (2, grid * grid, 512) and out.pooled.shape == (2, 512)
    assert torch.allclose(out.pooled, out.tokens.mean(dim=1), atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoders_are_random_init(name: str) -> None:
    overrides = TINY_VIT if name.startswith("vit") else {}
    torch.manual_seed(0)
    first = build_encoder(name, 32, **overrides).state_dict()
    torch.manual_seed(0)
    again = build_encoder(name, 32, **overrides).state_dict()
    torch.manual_seed(1)
    other = build_encoder(name, 32, **overrides).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_encoder_bad_input() -> None:
    with pytest.raises(ValueError, match="'vit_huge'.*vit_tiny"):
        build_encoder("vit_huge", 64)
    with pytest.raises(ValueError, match="patch_size 8 applies only"):
        build_encoder("resnet18", 64, patch_size=8)
    with pytest.raises(ValueError, match="width"):
        build_encoder("vit_tiny", 64, dim=32)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\], got \[2, 3, 64, 64\]"):
        build_encoder("vit_tiny", 32, **TINY_VIT)(torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------------------
# Action tokens


def test_action_tokens_identity() -> None:
    tokenizer = ActionTokenizer()
    identity = tokenizer(torch.tensor([0.0, 0.0, 1.0, 1.0]), identity_aug())
    # box: 0 -> bin 5, 1 -> bin 10 of 16 over [-1, 2]; booleans -> bin 0; symmetric augs -> middle bin 4 of 9
    offsets = tokenizer.offsets()
    assert identity.dtype == torch.int64
    assert identity.tolist() == [o + b for o, b in zip(offsets, [5, 5, 10, 10, 0, 4, 4, 4, 4, 0, 0], strict=True)]
    assert tokenizer.vocab_size == 4 * 16 + 2 * 2 + 5 * 9


def test_action_tokens_clamp_and_edges() -> None:
    tokenizer = ActionTokenizer()
    bins = tokenizer(torch.tensor([[-5.0, -1.0, 2.0, 9.0]]))[0] - torch.tensor(tokenizer.offsets()[:4])
    assert bins.tolist() == [0, 0, 15, 15]  # below low and at low -> first bin; at high and above -> last bin
    aug = torch.tensor([1.0, 0.0, 9.0, 1.0, -1.0, 1.0, 1.5])  # flip, brightness, contrast, sat, hue, gray, blur
    tokens = tokenizer(torch.zeros(4), aug) - torch.tensor(tokenizer.offsets())
    assert tokens[4:].tolist() == [1, 0, 8, 4, 0, 1, 8]


def test_action_tokens_disjoint_vocabularies() -> None:
    tokenizer = ActionTokenizer(num_bins=4, aug_bins=3)
    generator = torch.Generator().manual_seed(0)
    box, aug = torch.rand(4096, 4, generator=generator) * 5 - 2, torch.rand(4096, 7, generator=generator) * 4 - 1
    tokens = tokenizer(box, aug)
    seen = [set(tokens[:, i].tolist()) for i in range(11)]
    sizes = [4] * 4 + [2, 3, 3, 3, 3, 2, 3]
    assert [len(s) for s in seen] == sizes
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == tokenizer.vocab_size
    assert tokens.min() == 0 and tokens.max() == tokenizer.vocab_size - 1


def test_action_tokens_shapes_and_errors() -> None:
    tokenizer = ActionTokenizer()
    assert tokenizer(torch.zeros(3, 5, 4)).shape == (3, 5, 4)
    assert tokenizer(torch.zeros(3, 5, 4), torch.zeros(3, 5, 7)).shape == (3, 5, 11)
    assert tokenizer(torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"rel_box must be float \[\.\.\., 4\], got torch.float32 \[3, 5\]"):
        tokenizer(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"got torch.int64"):
        tokenizer(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"aug must be float \[\.\.\., 7\].*\[3, 6\]"):
        tokenizer(torch.zeros(3, 4), torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"\[2\] differs from rel_box's \[3\]"):
        tokenizer(torch.zeros(3, 4), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="num_bins"):
        ActionTokenizer(num_bins=1)


# ---------------------------------------------------------------------------------------------------------------
# Value head


def value_head(**kwargs: object) -> ValueHead:
    torch.manual_seed(0)
    return ValueHead(memory_dim=48, vocab_size=ActionTokenizer().vocab_size, out_dim=16, dim=32, **kwargs).eval()


def random_actions(B: int, K: int, with_aug: bool = True, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    box = torch.rand(B, K, 4, generator=generator) * 3 - 1
    aug = torch.rand(B, K, 7, generator=generator) if with_aug else None
    return ActionTokenizer()(box, aug)


def test_value_head_shape_and_independence() -> None:
    head = value_head()
    tokens = torch.randn(3, 16, 48)
    actions = random_actions(3, 5)
    out = head(tokens, actions)
    assert out.shape == (3, 5, 16)
    alone = torch.stack([torch.stack([head(tokens[b : b + 1], actions[b : b + 1, k : k + 1])[0, 0] for k in range(5)])
                         for b in range(3)])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    assert head(tokens, random_actions(3, 5, with_aug=False)).shape == (3, 5, 16)


def test_value_head_uses_actions_and_view() -> None:
    head = value_head()
    tokens = torch.randn(2, 16, 48)
    actions = random_actions(2, 4)
    out = head(tokens, actions)
    assert not torch.allclose(out, head(tokens, random_actions(2, 4, seed=1)))
    assert not torch.allclose(out, head(torch.randn(2, 16, 48), actions))
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-4  # different candidates, different values


def test_value_head_actionless_ignores_actions() -> None:
    head = value_head(actionless=True)
    tokens = torch.randn(2, 16, 48)
    out = head(tokens, random_actions(2, 4))
    assert out.shape == (2, 4, 16)
    torch.testing.assert_close(out, head(tokens, random_actions(2, 4, seed=1)))
    torch.testing.assert_close(out[:, 0], out[:, 3])
    assert not hasattr(head, "action_embed")


@pytest.mark.parametrize("actionless", [False, True])
def test_value_head_gradients_reach_tokens(actionless: bool) -> None:
    head = value_head(actionless=actionless).train()
    tokens = torch.randn(2, 16, 48, requires_grad=True)
    head(tokens, random_actions(2, 3)).square().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


def test_value_head_on_encoder_tokens() -> None:
    encoder = build_encoder("resnet18", 32)
    head = ValueHead(encoder.dim, ActionTokenizer().vocab_size, out_dim=8, dim=32, depth=1)
    assert head(encoder(torch.randn(2, 3, 32, 32)).tokens, random_actions(2, 3)).shape == (2, 3, 8)


def test_value_head_bad_input() -> None:
    head = value_head()
    tokens = torch.randn(2, 16, 48)
    with pytest.raises(ValueError, match=r"int64 \[B, K, n\], got torch.int64 \[2, 11\]"):
        head(tokens, random_actions(2, 1)[:, 0])
    with pytest.raises(ValueError, match="torch.float32"):
        head(tokens, random_actions(2, 3).float())
    with pytest.raises(ValueError, match="12 tokens per action"):
        head(tokens, torch.zeros(2, 3, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[B, T, 48\], got \[2, 16, 40\]"):
        head(torch.randn(2, 16, 40), random_actions(2, 3))
    with pytest.raises(ValueError, match="batch 3 differs from tokens batch 2"):
        head(tokens, random_actions(3, 3))
    with pytest.raises(ValueError, match="T=15"):
        head(torch.randn(2, 15, 48), random_actions(2, 3))


# ---------------------------------------------------------------------------------------------------------------
# Heads


def test_projection_head_and_temperature() -> None:
    head = ProjectionHead(48, 16, normalize=True)
    out = head(torch.randn(5, 3, 48))
    assert out.shape == (5, 3, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5, 3))
    temperature = Temperature()
    assert temperature().shape == () and temperature().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        temperature.log_t.fill_(10.0)
    assert temperature().item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="init 200"):
        Temperature(init=200)


# ---------------------------------------------------------------------------------------------------------------
# Text tower

CAPTIONS = ["A red circle above a blue square.", "Two red squares", "a green triangle, a red circle"]


def test_caption_tokenizer_vocabulary() -> None:
    tokenizer = CaptionTokenizer.build(CAPTIONS)
    assert tokenizer.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert tokenizer.vocab[4:7] == ["a", "red", "circle"]  # count 4, 3, 2, then ties alphabetical
    assert CaptionTokenizer.build(reversed(CAPTIONS)).vocab == tokenizer.vocab
    assert CaptionTokenizer.build(CAPTIONS, vocab_size=6).vocab == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "red"]
    assert "circle" not in CaptionTokenizer.build(CAPTIONS, min_count=3).vocab


def test_caption_tokenizer_encode() -> None:
    tokenizer = CaptionTokenizer.build(CAPTIONS)
    ids = tokenizer.encode(["A red hexagon!", ""], max_len=8)
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    red = tokenizer.vocab.index("red")
    assert ids[0].tolist() == [2, tokenizer.vocab.index("a"), red, 1, 3, 0, 0, 0]
    assert ids[1].tolist() == [2, 3, 0, 0, 0, 0, 0, 0]
    assert tokenizer.encode(["a a a a a a a a"], max_len=4)[0].tolist() == [2, 4, 4, 3]
    assert tokenizer.decode(ids) == ["a red <unk>", ""]
    assert tokenizer.encode([], max_len=8).shape == (0, 8)
    with pytest.raises(ValueError, match="got the string 'a red'"):
        tokenizer.encode("a red")


def test_caption_tokenizer_state_dict_round_trip(tmp_path) -> None:
    tokenizer = CaptionTokenizer.build(CAPTIONS)
    torch.save({"tokenizer": tokenizer.state_dict()}, tmp_path / "ckpt.pt")
    loaded = CaptionTokenizer.from_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"])
    assert loaded.vocab == tokenizer.vocab
    assert torch.equal(loaded.encode(CAPTIONS), tokenizer.encode(CAPTIONS))
    with pytest.raises(ValueError, match="must start with"):
        CaptionTokenizer.from_state_dict({"vocab": ["a", "b"]})


@pytest.mark.parametrize("causal", [True, False])
def test_text_transformer_ignores_padding(causal: bool) -> None:
    tokenizer = CaptionTokenizer.build(CAPTIONS)
    torch.manual_seed(0)
    text = TextTransformer(tokenizer.vocab_size, dim=32, depth=2, heads=4, max_len=16, causal=causal).eval()
    short = tokenizer.encode(CAPTIONS, max_len=10)
    long = tokenizer.encode(CAPTIONS, max_len=16)
    out = text(short)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, text(long), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], text(tokenizer.encode(CAPTIONS[1:2], max_len=6)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match=r"L <= 16, got torch.int64 \[3, 20\]"):
        text(tokenizer.encode(CAPTIONS, max_len=20))


def test_vit_mean_pooling_averages_the_patch_tokens():
    from agents.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", 32, depth=1, dim=48, heads=2, pool="mean")
    out = encoder(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))
    with pytest.raises(ValueError, match="pool 'max' is invalid"):
        build_encoder("vit_tiny", 32, pool="max")


@pytest.mark.parametrize("name, patch_size, tokens, dim", [("timm:vit_tiny_patch16_224", 8, 16, 192),
                                                          ("timm:resnet18", None, 1, 512)])
def test_timm_encoders_give_tokens_and_a_pooled_feature(name, patch_size, tokens, dim):
    import timm

    encoder = build_encoder(name, 32, patch_size)
    out = encoder(torch.rand(2, 3, 32, 32))
    assert out.tokens.shape == (2, tokens, dim) and out.pooled.shape == (2, dim)
    assert encoder.num_tokens == tokens and encoder.dim == dim
    # The same numbers as timm's own model with the same weights.
    twin = timm.create_model(name[len("timm:"):], pretrained=False, num_classes=0,
                             **({"img_size": 32, "patch_size": patch_size} if patch_size else {}))
    twin.load_state_dict(encoder.model.state_dict())
    features = twin.eval().forward_features(torch.ones(1, 3, 32, 32))
    expected = twin.forward_head(features, pre_logits=True)
    torch.testing.assert_close(encoder.eval()(torch.ones(1, 3, 32, 32)).pooled, expected)


def test_channels_last_timm_models_give_their_positions_as_tokens():
    """Swin's forward_features is NHWC [B, 7, 7, 768] (its output_fmt says so): tokens are the 49 positions of 768
    channels, row-major, and the pooled feature is timm's own head's."""
    encoder = build_encoder("timm:swin_tiny_patch4_window7_224", 224).eval()
    assert (encoder.dim, encoder.num_tokens, encoder.grid_size) == (768, 49, 7)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = encoder(x)
        features = encoder.model.forward_features(x)  # (1, 7, 7, 768)
        expected = encoder.model.forward_head(features, pre_logits=True)
    assert out.tokens.shape == (1, 49, 768)
    torch.testing.assert_close(out.tokens[0, 7 * 2 + 3], features[0, 2, 3])
    torch.testing.assert_close(out.pooled, expected)


def test_bad_timm_encoders_are_refused(monkeypatch):
    import timm

    with pytest.raises(ValueError, match=r"encoder 'timm:no_such_net': 'no_such_net' is not a timm model"):
        build_encoder("timm:no_such_net", 32)
    with pytest.raises(ValueError, match="encoder 'timm:resnet18' takes no patch_size"):
        build_encoder("timm:resnet18", 32, 8)
    with pytest.raises(ValueError, match="timm's own configuration; it takes no overrides"):
        build_encoder("timm:resnet18", 32, depth=2)

    class Pooled(torch.nn.Module):  # a model whose features are already pooled: no tokens to attend to
        training = False

        def forward_features(self, x):
            return x.mean(dim=(2, 3))

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: Pooled())
    with pytest.raises(ValueError, match=r"forward_features returns shape \[1, 3\], not tokens"):
        build_encoder("timm:resnet18", 32)
