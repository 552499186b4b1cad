"""Networks of the annotation-bootstrapping GVF pretrainer: encoders, action tokens, value head, heads, text tower.

Pure ``nn.Module`` s (plus two plain tokenizers); nothing here knows about devices, training or the environment.
Data flow of one transition ``(x, a, x')``::

    x [B, 3, S, S] --encoder--> tokens [B, T, D], pooled [B, D] --ProjectionHead (phi)--> p(l | x)
    a (relative box, aug) --ActionTokenizer--> int64 [B, K, n] --ValueHead (phi_AB, reads tokens)--> Q(l | x, a)
    captions --CaptionTokenizer--> int64 [B, L] --TextTransformer--> [B, dim] --ProjectionHead (psi)--> psi(l)

Choices the paper leaves open (documented where they are made, summarised in docs/gvf.md):

- ViT (timm's ``VisionTransformer``, configured here) patch size fitted to the view: the smallest divisor of ``S``
  giving a grid of 8 to 14 tokens a side (:func:`fit_patch_size`); encoder ``tokens`` are the patch tokens only (no
  CLS), ``pooled`` the CLS token or the patch mean.
- Action tokens: each box coordinate in 16 uniform bins over ``[-1, 2]``; each augmentation column its own
  vocabulary (2 bins for flip/grayscale, 9 for the continuous ones so that the identity value sits in the middle
  of a bin rather than on an edge), see :class:`ActionTokenizer`.
- Value head: 2 pre-norm decoder layers at width 192, 4 heads; the memory gets a fixed 2-D sin-cos position
  embedding so that encoders without positional tokens (ResNet) still tell the head where each token is.
- Text tower: causal, pooled at the last non-pad token (the ``<eos>`` the tokenizer appends), as in CLIP.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from view_env import AUG_RANGES, AUGMENTATIONS, BOOLEAN_AUGS

__all__ = [
    "ENCODERS",
    "TIMM_PREFIX",
    "TimmEncoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ActionTokenizer",
    "CaptionTokenizer",
    "ConvEncoder",
    "EncoderOutput",
    "ProjectionHead",
    "ResNetEncoder",
    "Temperature",
    "TextTransformer",
    "ValueHead",
    "ViewEncoder",
    "VisionTransformer",
    "build_encoder",
    "fit_patch_size",
]

#: ImageNet channel statistics: every encoder takes views scaled to ``[0, 1]`` and then normalised per channel as
#: ``(x - mean) / std`` with them (:class:`agents.gvf.GVFNetwork` and :class:`ViewEncoder` do it, so that what
#: the project hands out takes ``uint8`` views).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Names accepted by :func:`build_encoder`.
ENCODERS: tuple[str, ...] = ("cnn", "vit_tiny", "vit_small", "resnet18")

#: ViT presets: width, depth, heads (timm's ViT-Ti and ViT-S).
VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": {"dim": 192, "depth": 12, "heads": 3},
    "vit_small": {"dim": 384, "depth": 12, "heads": 6},
}

#: Token grid side (tokens per row) that :func:`fit_patch_size` aims for, inclusive.
GRID_RANGE: tuple[int, int] = (8, 14)


class EncoderOutput(NamedTuple):
    """What every encoder returns.

    tokens: ``float [B, T, D]`` spatial tokens, row-major over the ``sqrt(T) x sqrt(T)`` grid.
    pooled: ``float [B, D]`` one vector per image (ViT: final-norm CLS token; ResNet: global average).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor


class ViewEncoder(nn.Module):
    """An encoder with its input convention inside: ``uint8 [B, 3, S, S]`` views (0-255) -> :class:`EncoderOutput`.

    It scales the views to ``[0, 1]``, normalises them with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`, and
    runs ``encoder`` (any module taking normalised ``float [B, 3, S, S]``). This is what the project hands out
    (:func:`agents.checkpoint.load_encoder`, :func:`agents.export.load_export`,
    :func:`agents.network.build_view_encoder`) and what the probes take. It holds no parameters of its own:
    ``state_dict`` keys are the wrapped encoder's under ``encoder.``.

    Attributes:
        encoder: The wrapped encoder; ``dim``, ``image_size`` and ``num_tokens`` are read through from it.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        # In uint8 units, so that normalising is one subtraction and one division (as GVFNetwork.encode does).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("dim", "image_size", "num_tokens", "grid_size"):
                return getattr(self._modules["encoder"], name)
            raise

    def forward(self, views: torch.Tensor) -> EncoderOutput:
        if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[1] != 3:
            raise ValueError(f"a ViewEncoder takes uint8 views [B, 3, S, S] with values 0-255, got {views.dtype} "
                             f"{tuple(views.shape)}; convert float images with (x * 255).round().to(torch.uint8), "
                             "or call .encoder on views you have normalised yourself")
        return self.encoder((views.float() - self.mean) / self.std)


def init_weights(module: nn.Module) -> None:
    """timm-style init: ``Linear`` and ``Embedding`` weights truncated normal (std 0.02), biases 0, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------------------
# Transformer blocks shared by the ViT, the value head and the text tower


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, C]`` -> ``[B, heads, L, C // heads]``."""
    B, L, C = x.shape
    return x.view(B, L, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, L, c]`` -> ``[B, L, heads * c]``."""
    B, H, L, c = x.shape
    return x.transpose(1, 2).reshape(B, L, H * c)


def check_heads(dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
        raise ValueError(f"width {dim} is not divisible by heads {heads}; choose heads among the divisors of {dim}")


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``: ``[B, L, C]`` -> ``[B, L, C]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, C)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # (B, h, L, c)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, h, L, c)
        return self.proj(merge_heads(y))  # (B, L, C)


class CrossAttention(nn.Module):
    """Queries ``[B, L, C]`` attend to a memory ``[B, T, C]``; returns ``[B, L, C]``.

    No query sees another query, so any number of independent query groups can share one call (see :class:`ValueHead`).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x), self.heads)  # (B, h, L, c)
        k, v = (split_heads(t, self.heads) for t in self.kv(memory).chunk(2, dim=-1))  # (B, h, T, c)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))  # (B, L, C)


class MLP(nn.Sequential):
    """``Linear(dim, hidden) -> GELU -> Linear(hidden, out)`` on the last axis."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-norm transformer encoder block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; ``[B, L, C]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------------------------
# Encoders


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fit_patch_size(image_size: int) -> int:
    """The ViT patch size for a view of ``image_size`` pixels when none is given.

    Rule: the smallest divisor ``p`` of ``image_size`` whose grid ``image_size // p`` has 8 to 14 tokens a side,
    i.e. the finest grid that stays at most 14 x 14 (ViT-S/16 at 224 px). Examples: 32 -> 4 (8 x 8 tokens),
    64 -> 8 (8 x 8), 96 -> 8 (12 x 12), 128 -> 16 (8 x 8), 224 -> 16 (14 x 14).

    Raises:
        ValueError: no divisor of ``image_size`` gives such a grid (e.g. a prime size); the message lists the
            valid patch sizes to pass explicitly.
    """
    low, high = GRID_RANGE
    for p in divisors(image_size):
        if low <= image_size // p <= high:
            return p
    raise ValueError(f"no patch size divides image_size {image_size} into a {low}x{low} to {high}x{high} token "
                     f"grid; pass patch_size explicitly (divisors of {image_size}: {divisors(image_size)}) "
                     f"or use a view size such as {8 * round(image_size / 8) or 8}")


def check_image(x: torch.Tensor, image_size: int) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f"expected images [B, 3, {image_size}, {image_size}], got {list(x.shape)}")





class ResNetEncoder(nn.Module):
    """torchvision ResNet-18 from scratch (``weights=None``), stem adapted to small views.

    ``small_stem`` (default: ``image_size <= 96``) replaces the 7x7 stride-2 convolution and the max-pool by one
    3x3 stride-1 convolution (the CIFAR variant), so a 64 px view ends in an 8 x 8 map instead of 2 x 2.

    Forward: ``float [B, 3, S, S]`` -> :class:`EncoderOutput` with ``tokens [B, H * W, 512]`` the last feature map
    flattened row-major (``H = W = S / 8`` with the small stem, ``S / 32`` otherwise, rounded up) and
    ``pooled [B, 512]`` its global average.
    """

    def __init__(self, image_size: int, small_stem: bool | None = None) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size, self.dim = image_size, 512
        self.small_stem = image_size <= 96 if small_stem is None else small_stem
        net = torchvision.models.resnet18(weights=None)
        if self.small_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        grid = image_size
        for _ in range(3 if self.small_stem else 5):  # each stride-2 stage (padded) maps a side n to ceil(n / 2)
            grid = -(-grid // 2)
        self.grid_size, self.num_tokens = grid, grid * grid

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> last feature map ``[B, 512, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        check_image(x, self.image_size)
        fmap = self.features(x)  # (B, 512, H, W)
        return EncoderOutput(tokens=fmap.flatten(2).transpose(1, 2), pooled=fmap.mean(dim=(2, 3)))


class ConvEncoder(nn.Module):
    """A small CNN for the CPU recipe: four 3x3 convolutions, each followed by BatchNorm and ReLU.

    The first keeps the resolution, the other three halve it (stride 2), so a 32 px view ends in a 4 x 4 map and a
    64 px view in 8 x 8. With the default widths ``(32, 64, 128, 256)`` it has 0.39M parameters and costs about
    15M multiply-adds per 32 px view, some 20 times less than the 4-block ViT the ViT presets use: on two CPU cores
    it sees about ten times more views in the same time, which is what learning shape from 10^5 views needs
    (docs/gvf.md). Runs in ``channels_last`` memory format (faster convolutions on CPU).

    Forward: ``float [B, 3, S, S]`` -> :class:`EncoderOutput` with ``tokens [B, H * W, D]`` the last feature map
    flattened row-major (``H = W = ceil(S / 8)``, ``D`` the last width) and ``pooled [B, D]`` its global average.
    """

    def __init__(self, image_size: int, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        widths = tuple(widths)
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        layers: list[nn.Module] = []
        grid, previous = image_size, 3
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            grid = -(-grid // stride)
            previous = width
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.image_size, self.dim = image_size, previous
        self.grid_size, self.num_tokens = grid, grid * grid
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        check_image(x, self.image_size)
        fmap = self.net(x.contiguous(memory_format=torch.channels_last))  # (B, D, H, W)
        return EncoderOutput(tokens=fmap.flatten(2).transpose(1, 2), pooled=fmap.mean(dim=(2, 3)))


#: Prefix of an encoder name built by timm (``timm:NAME``, any model of ``timm.list_models()``).
TIMM_PREFIX = "timm:"


class TimmEncoder(nn.Module):
    """A timm model as an encoder: ``float [B, 3, S, S]`` -> :class:`EncoderOutput` from ``forward_features``.

    Built from scratch (``pretrained=False``: nothing is downloaded), without a classifier. Transformers (features
    ``[B, N, D]``) give their patch tokens (the ``num_prefix_tokens`` class/register tokens dropped) and the pooled
    feature of their own head (``forward_head(..., pre_logits=True)``); CNNs (feature maps ``[B, D, H, W]``, or
    ``[B, H, W, D]`` for the models whose ``output_fmt`` is ``NHWC``, such as Swin) give the ``H x W`` positions as
    tokens and their global average as the pooled feature.

    Args:
        name: A timm model name, e.g. ``vit_tiny_patch16_224`` or ``resnet18``.
        image_size: View side S; passed to timm as ``img_size`` where the model takes one (ViTs).
        patch_size: ViT patch size (``None``: timm's); refused for models without patches.
        model_kwargs: More arguments of the timm model (e.g. ``embed_dim``, ``depth``), kept in ``timm_kwargs``.

    Raises:
        ValueError: An unknown timm name, a patch size for a model without one, or a model whose
            ``forward_features`` returns no tokens (not ``[B, N, D]`` or ``[B, D, H, W]``).
    """

    def __init__(self, name: str, image_size: int, patch_size: int | None = None, **model_kwargs: object) -> None:
        super().__init__()
        import timm  # imported only when a timm encoder is asked for

        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8] or ["vit_tiny_patch16_224", "resnet18"]
            raise ValueError(f"encoder 'timm:{name}': {name!r} is not a timm model; for example {close} "
                             "(timm.list_models() lists them all)")
        kwargs: dict[str, object] = {"pretrained": False, "num_classes": 0}
        #: The size arguments timm took (``img_size``, ``patch_size``): what timm needs to rebuild the model.
        self.timm_kwargs: dict[str, object] = {"img_size": image_size,
                                               **({"patch_size": patch_size} if patch_size is not None else {}),
                                               **model_kwargs}
        try:
            self.model = timm.create_model(name, **kwargs, **self.timm_kwargs)
        except TypeError as error:  # models without img_size / patch_size arguments (CNNs)
            if patch_size is not None:
                raise ValueError(f"encoder 'timm:{name}' takes no patch_size (got {patch_size}): {error}") from error
            self.timm_kwargs = {}
            self.model = timm.create_model(name, **kwargs)
        self.name, self.image_size = name, image_size
        with torch.no_grad():
            was_training = self.model.training
            features = self.model.eval().forward_features(torch.zeros(1, 3, image_size, image_size))
            self.model.train(was_training)
        if features.ndim == 3:
            self.prefix = int(getattr(self.model, "num_prefix_tokens", 0))
            self.num_tokens, self.dim = features.shape[1] - self.prefix, features.shape[2]
        elif features.ndim == 4:
            self.prefix = -1  # a feature map: NCHW, or NHWC for the models that say so (Swin, Sequencer)
            self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC"
            channels = features.shape[3] if self.channels_last else features.shape[1]
            self.dim, self.num_tokens = channels, features.shape[1] * features.shape[2] * features.shape[3] // channels
        else:
            raise ValueError(f"encoder 'timm:{name}': forward_features returns shape {list(features.shape)}, not "
                             "tokens [B, N, D] or a feature map [B, D, H, W]; choose a model with spatial features")
        if self.num_tokens < 1:
            raise ValueError(f"encoder 'timm:{name}' gives no spatial tokens at {image_size} px")
        self.grid_size = math.isqrt(self.num_tokens)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        features = self.model.forward_features(x)
        if self.prefix < 0:
            tokens = features.flatten(1, 2) if self.channels_last else features.flatten(2).transpose(1, 2)  # (B, HW, D)
            return EncoderOutput(tokens, tokens.mean(dim=1))
        return EncoderOutput(features[:, self.prefix:], self.model.forward_head(features, pre_logits=True))


class VisionTransformer(TimmEncoder):
    """The project's ViT presets as a thin configuration of timm's ``VisionTransformer``, from scratch.

    timm builds it (``vit_tiny_patch16_224`` with ``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
    ``num_heads``, ``mlp_ratio`` set here): conv patch embedding, CLS token, learned position embeddings, pre-norm
    blocks, a final LayerNorm on every token (``fc_norm=False``), timm's init. What is ours: the patch size fitted
    to the view (:func:`fit_patch_size`) and the pooling. Forward: ``float [B, 3, S, S]`` (normalised) ->
    :class:`EncoderOutput` with ``tokens [B, T, D]`` the final-norm patch tokens (``T = (S / patch_size) ** 2``, CLS
    excluded so that ``T`` is a square grid like the ResNet's) and ``pooled [B, D]``: with ``pool="cls"`` the
    final-norm CLS token (timm's ``global_pool="token"``); with ``pool="mean"`` the average of the patch tokens
    (``global_pool="avg"``, which a small ViT trained for a few hundred steps learns much faster: on Shapes after
    1,000 steps of the labels GVF, box classification from frozen features was 0.39 top-1 with the patch mean
    against 0.33 with the CLS token, measured with the ViT this project had before it used timm's).

    An export of it loads with timm alone (the card's ``timm_name`` and ``timm_kwargs``).
    """

    def __init__(self, image_size: int, patch_size: int | None = None, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_ratio: float = 4.0, pool: str = "cls") -> None:
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool {pool!r} is invalid: expected 'cls' or 'mean'")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if patch_size is None:
            patch_size = fit_patch_size(image_size)
        elif patch_size < 1 or image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}; valid patch sizes "
                             f"for {image_size} px: {divisors(image_size)[:-1]}, or patch_size=None to fit one")
        check_heads(dim, heads)
        super().__init__("vit_tiny_patch16_224", image_size, patch_size, embed_dim=dim, depth=depth, num_heads=heads,
                         mlp_ratio=mlp_ratio, global_pool="token" if pool == "cls" else "avg", fc_norm=False)
        self.pool, self.patch_size = pool, patch_size

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        check_image(x, self.image_size)
        return super().forward(x)


def build_encoder(name: str, image_size: int, patch_size: int | None = None, **overrides: object) -> nn.Module:
    """Build the encoder ``name`` (one of :data:`ENCODERS`) for square views of ``image_size`` pixels.

    Every encoder maps ``float [B, 3, S, S]`` to :class:`EncoderOutput` and has the attributes ``dim`` (D),
    ``image_size``, ``grid_size`` and ``num_tokens`` (T).

    Args:
        name: ``"cnn"`` (:class:`ConvEncoder`, D 256), ``"vit_tiny"`` (D 192, depth 12, heads 3), ``"vit_small"``
            (D 384, depth 12, heads 6), ``"resnet18"`` (D 512), or ``"timm:NAME"`` (:class:`TimmEncoder`).
        image_size: view side S in pixels.
        patch_size: ViT patch size; ``None`` fits it to the view (:func:`fit_patch_size`). ViT only.
        overrides: ViT: ``dim``, ``depth``, ``heads``, ``mlp_ratio``, ``pool``; ResNet: ``small_stem``; CNN:
            ``widths``.

    Raises:
        ValueError: unknown name or override, a patch size for the ResNet, or a patch size that does not divide
            ``image_size``.
    """
    if name.startswith(TIMM_PREFIX):
        if overrides:
            raise ValueError(f"encoder {name!r} is timm's own configuration; it takes no overrides "
                             f"{sorted(overrides)} (choose another timm model name instead)")
        return TimmEncoder(name[len(TIMM_PREFIX):], image_size, patch_size)
    allowed = {"cnn": ("widths",), "resnet18": ("small_stem",)}.get(name, ("dim", "depth", "heads", "mlp_ratio",
                                                                          "pool"))
    unknown = sorted(set(overrides) - set(allowed))
    if name in ENCODERS and unknown:
        raise ValueError(f"unknown overrides {unknown} for {name!r}; expected {', '.join(allowed)}")
    if name in ("cnn", "resnet18") and patch_size is not None:
        raise ValueError(f"patch_size {patch_size} applies only to the ViT encoders, not {name!r}")
    if name in VIT_PRESETS:
        return VisionTransformer(image_size, patch_size, **{**VIT_PRESETS[name], **overrides})
    if name == "cnn":
        return ConvEncoder(image_size, **overrides)
    if name == "resnet18":
        return ResNetEncoder(image_size, **overrides)
    raise ValueError(f"unknown encoder {name!r}; expected one of {ENCODERS}")


# ----------------------------------------------------------------------------------------------------------------
# Action tokens



@dataclass(frozen=True)
class ActionTokenizer:
    """Turns a relative-box action and the augmentation state into integer tokens, one per coordinate/column.

    A value ``v`` in ``[low, high]`` split into ``n`` bins becomes ``floor((v - low) / (high - low) * n)``, clamped
    to ``[0, n - 1]`` (values outside the range land in the end bins), plus the vocabulary offset of its position,
    so every position has a disjoint vocabulary:

    - box: ``x0, y0, x1, y1`` of the next view in the current view's frame (identity ``(0, 0, 1, 1)``), each in
      ``num_bins`` bins over ``[low, high]``: tokens ``[c * num_bins, (c + 1) * num_bins)`` for coordinate ``c``.
      With the defaults (16 bins of width 0.1875 over ``[-1, 2]``) the identity is ``(5, 21, 42, 58)``: both 0 and
      1 lie inside a bin, not on an edge.
    - augmentation (optional), columns as :data:`view_env.core.AUGMENTATIONS`: flip and grayscale in 2 bins over
      ``[0, 1]`` (threshold 0.5); brightness, contrast, saturation, hue and blur in ``aug_bins`` bins over
      :data:`view_env.AUG_RANGES`. The default ``aug_bins=9`` is odd so that the identity of the symmetric ranges
      (brightness/contrast/saturation 1, hue 0) is the centre of the middle bin; with an even count it would sit
      exactly on a bin edge and float noise would flip its token.

    ``NaN`` inputs give undefined tokens. Works on any device; no state.
    """

    num_bins: int = 16
    low: float = -1.0
    high: float = 2.0
    aug_bins: int = 9

    num_box_tokens = 4
    num_aug_tokens = len(AUGMENTATIONS)

    def __post_init__(self) -> None:
        if self.num_bins < 2 or self.aug_bins < 2:
            raise ValueError(f"num_bins ({self.num_bins}) and aug_bins ({self.aug_bins}) must be at least 2")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")

    def aug_vocab(self) -> list[int]:
        """Number of bins of each augmentation column."""
        return [2 if name in BOOLEAN_AUGS else self.aug_bins for name in AUGMENTATIONS]

    @property
    def vocab_size(self) -> int:
        """Total number of distinct tokens (box and augmentation positions together)."""
        return self.num_box_tokens * self.num_bins + sum(self.aug_vocab())

    def offsets(self) -> list[int]:
        """First token id of each of the 11 positions (4 box coordinates, then 7 augmentation columns)."""
        sizes = [self.num_bins] * self.num_box_tokens + self.aug_vocab()
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def __call__(self, rel_box: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """Tokenise actions.

        Args:
            rel_box: ``float [..., 4]`` next view's box ``(x0, y0, x1, y1)`` in the current view's frame.
            aug: optional ``float [..., 7]`` augmentation state of the next view, same leading shape.

        Returns:
            ``int64 [..., 4]``, or ``int64 [..., 11]`` with ``aug``; ids in ``[0, vocab_size)``.
        """
        if rel_box.shape[-1:] != (self.num_box_tokens,) or not rel_box.is_floating_point():
            raise ValueError(f"rel_box must be float [..., 4], got {rel_box.dtype} {list(rel_box.shape)}")
        lows = [self.low] * self.num_box_tokens
        highs = [self.high] * self.num_box_tokens
        bins = [self.num_bins] * self.num_box_tokens
        values = rel_box.float()
        if aug is not None:
            if aug.shape[-1:] != (self.num_aug_tokens,) or not aug.is_floating_point():
                raise ValueError(f"aug must be float [..., {self.num_aug_tokens}] (columns {AUGMENTATIONS}), "
                                 f"got {aug.dtype} {list(aug.shape)}")
            if aug.shape[:-1] != rel_box.shape[:-1]:
                raise ValueError(f"aug leading shape {list(aug.shape[:-1])} differs from rel_box's "
                                 f"{list(rel_box.shape[:-1])}")
            lows += [AUG_RANGES[name][0] for name in AUGMENTATIONS]
            highs += [AUG_RANGES[name][1] for name in AUGMENTATIONS]
            bins += self.aug_vocab()
            values = torch.cat([values, aug.float()], dim=-1)  # (..., 11)
        device = rel_box.device
        low = torch.tensor(lows, dtype=torch.float32, device=device)
        per_unit = [b / (h - lo) for b, h, lo in zip(bins, highs, lows, strict=True)]  # bins per unit of value
        scale = torch.tensor(per_unit, dtype=torch.float32, device=device)
        n = torch.tensor(bins, dtype=torch.float32, device=device)
        index = ((values - low) * scale).floor().clamp(min=torch.zeros_like(n), max=n - 1)  # (..., n)
        offsets = torch.tensor(self.offsets()[: values.shape[-1]], dtype=torch.int64, device=device)
        return index.long() + offsets  # (..., n)


# ----------------------------------------------------------------------------------------------------------------
# Value head phi_AB


def sincos_2d(grid: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (as in MAE) of a ``grid x grid`` map, ``[grid * grid, dim]`` row-major.

    Positions are the token centres in view coordinates ``(u, v)`` in ``[0, 1]`` scaled by 64, so the embedding of
    a place in the view does not depend on the grid size. Half the channels encode ``v`` (rows), half ``u``.
    """
    centres = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) / grid * 64  # (g,)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))  # (C/4,)
    angles = centres[:, None] * omega[None, :]  # (g, C/4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (g, C/2)
    rows = axis[:, None, :].expand(grid, grid, dim // 2)  # (g, g, C/2), varies with the row
    cols = axis[None, :, :].expand(grid, grid, dim // 2)  # (g, g, C/2), varies with the column
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).to(dtype)  # (T, C)


class DecoderBlock(nn.Module):
    """Pre-norm decoder layer on ``K`` independent query groups per view.

    ``x [B, K, L, C]`` (``L`` queries per action), ``memory [B, T, C]`` -> ``[B, K, L, C]``: self-attention within
    each action's group (batch ``B * K``), cross-attention of all ``K * L`` queries of a view to that view's memory
    (batch ``B``; exact, since cross-attention never mixes queries, and the memory's keys and values are computed
    once per view, not once per action), then the MLP. Against repeating the memory per action
    (``repeat_interleave``, batch ``B * K``), forward + backward at B 64, width 192 on 2 CPU cores: 0.28 s vs
    0.44 s for K 8, 1.13 s vs 2.12 s for K 32.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, K, L, C = x.shape
        x = x.reshape(B * K, L, C)
        x = x + self.self_attn(self.norm1(x))  # (B*K, L, C): an action's tokens see only each other
        x = x.reshape(B, K * L, C)
        x = x + self.cross_attn(self.norm2(x), memory)  # (B, K*L, C): every query reads its own view
        x = x + self.mlp(self.norm3(x))
        return x.reshape(B, K, L, C)


class ValueHead(nn.Module):
    """phi_AB: a small transformer decoder from (view tokens, candidate actions) to one vector per action.

    Queries per action: one learned readout token, then the embedded action tokens (token embedding + learned
    per-position embedding), ``L = 1 + n``. The memory is the encoder's tokens, projected to ``dim`` when the widths
    differ, layer-normed, plus :func:`sincos_2d` positions (``memory_positions``; needs a square token grid). After
    ``depth`` :class:`DecoderBlock` s the final-norm readout is projected to ``out_dim``.

    ``actionless=True`` is the "action tokens removed" ablation: the queries are the readout token alone, the action
    only sets ``K``; the head runs once per view and its output is broadcast over the ``K`` actions. It has no
    action embeddings at all (so DDP sees no unused parameters).

    Forward: ``tokens float [B, T, memory_dim]``, ``action_tokens int64 [B, K, n]`` (``n <= num_positions``, ids
    from :class:`ActionTokenizer`) -> ``float [B, K, out_dim]``.
    """

    def __init__(self, memory_dim: int, vocab_size: int, out_dim: int, num_positions: int = 11, dim: int = 192,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0, actionless: bool = False,
                 memory_positions: bool = True) -> None:
        super().__init__()
        check_heads(dim, heads)
        if memory_positions and dim % 4:
            raise ValueError(f"memory_positions needs a width divisible by 4, got dim {dim}")
        self.memory_dim, self.vocab_size, self.out_dim, self.dim = memory_dim, vocab_size, out_dim, dim
        self.num_positions, self.actionless, self.memory_positions = num_positions, actionless, memory_positions
        self.memory_proj = nn.Identity() if memory_dim == dim else nn.Linear(memory_dim, dim)
        self.memory_norm = nn.LayerNorm(dim, eps=1e-6)
        self.readout = nn.Parameter(torch.zeros(dim))
        if not actionless:
            self.action_embed = nn.Embedding(vocab_size, dim)
            self.action_pos = nn.Parameter(torch.zeros(num_positions, dim))
            nn.init.trunc_normal_(self.action_pos, std=0.02)
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, out_dim)
        nn.init.trunc_normal_(self.readout, std=0.02)
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, action_tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.memory_dim:
            raise ValueError(f"tokens must be [B, T, {self.memory_dim}], got {list(tokens.shape)}")
        if action_tokens.ndim != 3 or action_tokens.dtype != torch.int64:
            raise ValueError(f"action_tokens must be int64 [B, K, n], got {action_tokens.dtype} "
                             f"{list(action_tokens.shape)}")
        B, K, n = action_tokens.shape
        if action_tokens.shape[0] != tokens.shape[0]:
            raise ValueError(f"action_tokens batch {B} differs from tokens batch {tokens.shape[0]}")
        if not self.actionless and n > self.num_positions:
            raise ValueError(f"action_tokens has {n} tokens per action, more than num_positions {self.num_positions}")
        memory = self.memory_norm(self.memory_proj(tokens))  # (B, T, C)
        if self.memory_positions:
            T = memory.shape[1]
            grid = math.isqrt(T)
            if grid * grid != T:
                raise ValueError(f"memory_positions needs a square token grid, got T={T}; pass memory_positions=False")
            memory = memory + sincos_2d(grid, self.dim, memory.device, memory.dtype)
        readout = self.readout
        if self.actionless:
            x = readout.expand(B, 1, 1, self.dim)  # (B, 1, 1, C): one readout per view
        else:
            actions = self.action_embed(action_tokens) + self.action_pos[:n]  # (B, K, n, C)
            x = torch.cat([readout.expand(B, K, 1, self.dim), actions], dim=2)  # (B, K, 1 + n, C)
        for block in self.blocks:
            x = block(x, memory)
        out = self.out(self.norm(x[:, :, 0]))  # (B, K or 1, out_dim)
        return out.expand(B, K, self.out_dim)


# ----------------------------------------------------------------------------------------------------------------
# Projection heads and temperature


class ProjectionHead(nn.Module):
    """phi / psi projection: ``Linear -> GELU -> Linear``, optionally L2-normalised.

    Forward: ``float [..., in_dim]`` -> ``float [..., out_dim]``. ``hidden_dim`` defaults to ``max(in_dim, out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.mlp = MLP(in_dim, hidden_dim or max(in_dim, out_dim), out_dim)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        return F.normalize(x, dim=-1) if self.normalize else x


class Temperature(nn.Module):
    """Learned inverse temperature ``t`` of ``softmax(t * phi^T psi)``, stored as ``log t`` (CLIP's logit scale).

    Forward: ``() -> float []`` ``exp(log_t)`` clamped to at most ``max`` (no gradient past the clamp).
    """

    def __init__(self, init: float = 1 / 0.07, max: float = 100.0) -> None:
        super().__init__()
        if not 0 < init <= max:
            raise ValueError(f"need 0 < init <= max, got init {init}, max {max}")
        self.max = max
        self.log_t = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_t.exp().clamp(max=self.max)


# ----------------------------------------------------------------------------------------------------------------
# Text tower (CLIP-style annotation source)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased words: maximal runs of letters, digits and ``_``; punctuation is dropped."""
    return WORD.findall(text.lower())


class CaptionTokenizer:
    """Word-level tokenizer built from a dataset's captions.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the most frequent words (count descending, ties by
    word), so the same captions give the same vocabulary in any order. Saves as plain lists of strings
    (:meth:`state_dict`), loadable with ``torch.load(weights_only=True)``.
    """

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}, got {vocab[: len(SPECIALS)]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary has repeated entries")
        self.vocab = vocab
        self.ids = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def build(cls, captions: Iterable[str], vocab_size: int = 2000, min_count: int = 1) -> CaptionTokenizer:
        """Keep the ``vocab_size - 4`` most frequent words seen at least ``min_count`` times."""
        if vocab_size < len(SPECIALS):
            raise ValueError(f"vocab_size {vocab_size} leaves no room for the {len(SPECIALS)} special tokens")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(word for caption in captions for word in words(caption))
        ranked = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                        key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked[: vocab_size - len(SPECIALS)])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_len: int = 32) -> torch.Tensor:
        """``list[str]`` of ``B`` captions -> ``int64 [B, max_len]``: ``<bos> words <eos> <pad>...``.

        Captions longer than ``max_len - 2`` words are cut; ``<eos>`` is always kept. Unknown words -> ``<unk>``.
        """
        if isinstance(texts, str):
            raise ValueError(f"encode takes a list of captions, got the string {texts[:40]!r}; wrap it in a list")
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (for <bos> and <eos>), got {max_len}")
        out = torch.full((len(texts), max_len), self.pad_id, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [self.ids.get(w, self.unk_id) for w in words(text)][: max_len - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.bos_id, *ids, self.eos_id])
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """``int64 [B, L]`` -> captions, words joined by spaces, special tokens other than ``<unk>`` dropped."""
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return [" ".join(self.vocab[i] for i in row if i not in skip) for row in ids.tolist()]

    def state_dict(self) -> dict[str, list[str]]:
        return {"vocab": list(self.vocab)}

    @classmethod
    def from_state_dict(cls, state: dict[str, list[str]]) -> CaptionTokenizer:
        if not isinstance(state, dict) or "vocab" not in state:
            raise ValueError(f"not a CaptionTokenizer state (expected a dict with 'vocab'), got {type(state).__name__}")
        return cls(state["vocab"])


class TextTransformer(nn.Module):
    """Text tower trained from scratch: token + learned position embeddings, pre-norm blocks, final norm.

    Forward: ``int64 [B, L]`` right-padded ids (``L <= max_len``, pad id 0, as :meth:`CaptionTokenizer.encode`
    makes them) -> ``float [B, dim]``, the final-norm state of the last non-pad token (the ``<eos>``). ``causal``
    (default, as CLIP) lets each token see only earlier ones, so trailing padding cannot reach that token; with
    ``causal=False`` a key-padding mask hides the pads instead. Either way the output ignores padding.
    """

    def __init__(self, vocab_size: int, dim: int = 256, depth: int = 4, heads: int = 4, max_len: int = 32,
                 causal: bool = True, pad_id: int = 0) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.vocab_size, self.dim, self.max_len, self.causal, self.pad_id = vocab_size, dim, max_len, causal, pad_id
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.01)
        self.apply(init_weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype != torch.int64 or ids.shape[1] > self.max_len:
            raise ValueError(f"ids must be int64 [B, L] with L <= {self.max_len}, got {ids.dtype} {list(ids.shape)}")
        B, L = ids.shape
        valid = ids != self.pad_id  # (B, L)
        x = self.token_embed(ids) + self.pos_embed[:L]  # (B, L, C)
        mask = None
        if not self.causal:
            # keys: the non-pad tokens, and always the query itself so that no row is fully masked
            eye = torch.eye(L, dtype=torch.bool, device=ids.device)
            mask = (valid[:, None, :] | eye)[:, None]  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, attn_mask=mask, is_causal=self.causal)
        x = self.norm(x)
        last = (valid.sum(dim=1) - 1).clamp(min=0)  # (B,) index of <eos>
        return x[torch.arange(B, device=ids.device), last]  # (B, C)
