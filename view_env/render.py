"""Batched view rendering: every view of a batch drawn from the image bank in one call, ``uint8`` out.

The renderer is a set of pure kernels in the style of ``torchvision.transforms.v2.functional``: explicit
per-view parameters in, pixels out, no random numbers drawn and no state kept. The environment draws or steps the
parameters (a :class:`ViewAug` and the view boxes) and calls :func:`render_views`.

Pipeline of :func:`render_views`, per view, in this order:

1. crop + resize (:func:`crop_resize`): the box ``(x0, y0, x1, y1)`` in normalised image coordinates is resampled
   to ``S x S`` with PIL's / torchvision's antialiased bilinear filter: a triangle filter whose support grows with
   the downscale factor, so a zoomed-out view (many canvas pixels per output pixel) is averaged rather than
   aliased, and plain bilinear interpolation when zoomed in. Pixels just outside the box contribute to the edge
   outputs, as with ``PIL.Image.resize(box=...)``; at the canvas edge the weights are renormalised.
2. horizontal flip (:func:`horizontal_flip`).
3. colour jitter (:func:`color_jitter`): brightness, then contrast, then saturation, then hue, with
   torchvision's semantics (``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``;
   factor 1, or hue 0, is the identity).
4. grayscale (:func:`grayscale`): ``rgb_to_grayscale`` with three output channels.
5. Gaussian blur (:func:`gaussian_blur`): ``sigma`` in output pixels, kernel size from :func:`blur_kernel_size`,
   reflect padding, as torchvision's ``gaussian_blur``.

All of it is computed in ``float32`` and rounded to ``uint8`` once at the end (torchvision on ``uint8`` inputs
rounds after every step instead, so the two differ by a level or so on some pixels).

Backends. On CPU a small C++ kernel (source below, compiled once with the machine's ``g++`` into the view_env
cache and loaded with ``ctypes``) renders each view start to finish while it sits in cache, over all of torch's
intra-op threads; it is over ten times faster than a per-image PIL loop, which stock ``grid_sample`` and
``roi_align`` are not (``benchmarks/render_speed.py``). Everywhere else (CUDA, or a CPU where the kernel cannot be
built) the kernels run as batched torch operations: the resize as two matmuls with per-view weight matrices. Both
backends implement the same arithmetic and agree to within one level. ``VIEW_ENV_NATIVE=0`` turns the compiled
kernel off; ``CXX`` picks the compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from view_env.data.base import cache_dir

__all__ = [
    "ViewAug",
    "blur_kernel_size",
    "color_jitter",
    "crop_resize",
    "gaussian_blur",
    "grayscale",
    "horizontal_flip",
    "native_backend_available",
    "render_views",
]

Backend = Literal["auto", "native", "torch"]
_BACKENDS = ("auto", "native", "torch")

#: Boxes may overshoot ``[0, 1]`` by this much (accumulated float error in the environment's box arithmetic).
BOX_TOLERANCE = 1e-4
#: Luma weights of ``rgb_to_grayscale`` (ITU-R 601-2, as torchvision and PIL).
_LUMA = (0.2989, 0.587, 0.114)
#: The torch backend renders views in chunks whose float32 temporaries hold at most this many elements each: it
#: bounds memory on any device and, on CPU, keeps temporaries small enough to be recycled rather than page-faulted.
_CHUNK_ELEMENTS = {"cpu": 1 << 22, "other": 1 << 26}


@dataclass(frozen=True, eq=False)
class ViewAug:
    """Per-view augmentation parameters: each field is a tensor of shape ``[N]`` on the images' device.

    Attributes:
        flip: ``bool``; mirror the view left to right.
        brightness: ``float32 >= 0``; the ``adjust_brightness`` factor (1 is the identity).
        contrast: ``float32 >= 0``; the ``adjust_contrast`` factor (1 is the identity).
        saturation: ``float32 >= 0``; the ``adjust_saturation`` factor (1 is the identity, 0 is gray).
        hue: ``float32`` in ``[-0.5, 0.5]``; the ``adjust_hue`` shift in turns of the hue circle (0 is the identity).
        grayscale: ``bool``; replace the view by its luma on all three channels.
        blur_sigma: ``float32 >= 0``; Gaussian blur sigma in output pixels (0 is no blur).
    """

    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur_sigma: torch.Tensor

    @classmethod
    def identity(cls, n: int, device: torch.device | str | None = None) -> ViewAug:
        """Parameters that leave ``n`` views unchanged, on ``device`` (CPU by default)."""
        ones = torch.ones(n, dtype=torch.float32, device=device)
        zeros = torch.zeros(n, dtype=torch.float32, device=device)
        off = torch.zeros(n, dtype=torch.bool, device=device)
        return cls(
            flip=off,
            brightness=ones,
            contrast=ones.clone(),
            saturation=ones.clone(),
            hue=zeros,
            grayscale=off.clone(),
            blur_sigma=zeros.clone(),
        )


# ----------------------------------------------------------------------------------------------------------------
# Validation: every error names the offending value and what was expected.


def _check_tensor(
    name: str, value: object, dtype: torch.dtype, shape: tuple[int | str, ...], device: torch.device
) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype {dtype}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    expected = "[" + ", ".join(str(s) for s in shape) + "]"
    if value.ndim != len(shape) or any(isinstance(s, int) and s != d for s, d in zip(shape, value.shape, strict=True)):
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device}, but the images are on {device}; move it to {device}")
    return value


def _check_out_size(out_size: object) -> int:
    if isinstance(out_size, bool) or not isinstance(out_size, int):
        raise TypeError(f"out_size must be an int (the side S of the square views), got {out_size!r}")
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    return out_size


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 torch.Tensor [P, 3, C, C], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] < 1:
        raise ValueError(f"images must have shape [P, 3, C, C] (RGB on a square canvas), got {list(images.shape)}")
    return images


def _first_bad(bad: torch.Tensor) -> int | None:
    """Index of the first ``True`` in ``bad`` (``[N]`` bool), or ``None``: a single device sync when all is well."""
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0, 0])


def _check_view_inputs(images: object, image_index: object, boxes: object, out_size: object) -> int:
    """Validate the geometric inputs of :func:`crop_resize` / :func:`render_views`; return ``N``."""
    images = _check_images(images)
    out_size = _check_out_size(out_size)
    device = images.device
    index = _check_tensor("image_index", image_index, torch.int64, ("N",), device)
    n = index.shape[0]
    boxes = _check_tensor("boxes", boxes, torch.float32, (n, 4), device)
    if n == 0:
        return 0
    low, high = torch.aminmax(index)
    low, high = int(low), int(high)
    if low < 0 or high >= images.shape[0]:
        bad = low if low < 0 else high
        raise IndexError(
            f"image_index holds {bad}, but the bank has {images.shape[0]} images: indices must lie "
            f"in [0, {images.shape[0]})"
        )
    x0, y0, x1, y1 = boxes.unbind(1)
    ok = torch.isfinite(boxes).all(1) & (x1 > x0) & (y1 > y0)
    ok &= ((boxes >= -BOX_TOLERANCE) & (boxes <= 1 + BOX_TOLERANCE)).all(1)
    row = _first_bad(~ok)
    if row is not None:
        shown = [float(f"{v:.6g}") for v in boxes[row].tolist()]
        raise ValueError(
            f"boxes[{row}] = {shown} is not a box (x0, y0, x1, y1) in normalised image "
            f"coordinates: expected finite values in [0, 1] with x1 > x0 and y1 > y0"
        )
    return n


_AUG_RANGES: dict[str, tuple[float, float, str]] = {
    "brightness": (0.0, float("inf"), "a factor >= 0"),
    "contrast": (0.0, float("inf"), "a factor >= 0"),
    "saturation": (0.0, float("inf"), "a factor >= 0"),
    "hue": (-0.5, 0.5, "a shift in [-0.5, 0.5]"),
    "blur_sigma": (0.0, float("inf"), "a sigma >= 0 in output pixels"),
}


def _check_factor(
    name: str, value: object, n: int, device: torch.device, low: float, high: float, expected: str
) -> torch.Tensor:
    value = _check_tensor(name, value, torch.float32, (n,), device)
    if n:
        row = _first_bad(~(torch.isfinite(value) & (value >= low) & (value <= high)))
        if row is not None:
            raise ValueError(f"{name}[{row}] = {float(value[row]):.6g} is out of range: expected {expected}")
    return value


def _check_aug(aug: object, n: int, device: torch.device) -> ViewAug:
    if not isinstance(aug, ViewAug):
        raise TypeError(f"aug must be a ViewAug (or None for no augmentation), got {type(aug).__name__}")
    _check_tensor("aug.flip", aug.flip, torch.bool, (n,), device)
    _check_tensor("aug.grayscale", aug.grayscale, torch.bool, (n,), device)
    for name in _AUG_RANGES:
        _check_tensor(f"aug.{name}", getattr(aug, name), torch.float32, (n,), device)
    if n:
        # All ranges in one pass and one device sync; the slow path finds and names the first bad value.
        values = torch.stack([getattr(aug, name) for name in _AUG_RANGES])  # (5, N)
        lows, highs = torch.tensor([bounds[:2] for bounds in _AUG_RANGES.values()], device=device).T[..., None]
        if not bool((torch.isfinite(values) & (values >= lows) & (values <= highs)).all()):
            for name, (low, high, expected) in _AUG_RANGES.items():
                _check_factor(f"aug.{name}", getattr(aug, name), n, device, low, high, expected)
    return aug


def _check_views(views: object) -> torch.Tensor:
    if not isinstance(views, torch.Tensor):
        raise TypeError(f"views must be a torch.Tensor [N, 3, H, W], got {type(views).__name__}")
    if views.dtype != torch.uint8 and not views.is_floating_point():
        raise TypeError(f"views must be uint8 (0..255) or floating point (0..1), got {views.dtype}")
    if views.ndim != 4 or views.shape[1] != 3:
        raise ValueError(f"views must have shape [N, 3, H, W], got {list(views.shape)}")
    return views


def _check_backend(backend: object, device: torch.device) -> bool:
    """Whether to use the compiled kernel."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if device.type != "cpu":
        if backend == "native":
            raise ValueError(f"backend='native' renders on CPU only, but the images are on {device}; use 'auto'")
        return False
    if _native_library() is None:
        if backend == "native":
            raise RuntimeError(f"backend='native' is unavailable: {_native_status()}")
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Parameters shared by both backends.


def blur_kernel_size(sigma: torch.Tensor) -> torch.Tensor:
    """Odd Gaussian kernel size for each ``sigma`` (``float32 [N]``, output pixels); ``int64 [N]``.

    torchvision's ``GaussianBlur`` pairs a kernel size ``k`` with the default sigma ``0.15 k + 0.35``; this is the
    smallest odd ``k >= 3`` whose default sigma reaches ``sigma`` (``sigma`` 1 -> 5, 2 -> 11, 3.5 -> 21), and 1
    (no blur) for ``sigma == 0``. :func:`gaussian_blur` further caps the radius at ``S - 1`` (reflect padding).
    """
    size = torch.ceil((sigma - 0.35) / 0.15 - 1e-3).to(torch.int64)
    size = (size + (1 - size % 2)).clamp(min=3)  # odd, at least 3
    return torch.where(sigma > 0, size, torch.ones_like(size))


def _blur_radius(sigma: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``int64 [N]`` kernel radius ``(blur_kernel_size - 1) / 2``, capped so that reflect padding stays inside."""
    return ((blur_kernel_size(sigma) - 1) // 2).clamp_(max=max(min(height, width) - 1, 0))


# ----------------------------------------------------------------------------------------------------------------
# Torch backend: batched over N, any device. Images are float32 in [0, bound] (255 for uint8 views, 1 for float).


def _resize_weights(start: torch.Tensor, stop: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """``float32 [N, out_size, in_size]``: antialiased bilinear weights mapping pixels ``[start, stop)`` onto
    ``out_size`` outputs (PIL's / torchvision's triangle filter, support scaled by the downscale factor)."""
    device = start.device
    scale = (stop - start) / out_size  # (N,) input pixels per output pixel
    support = scale.clamp(min=1.0)  # (N,)
    centers = start[:, None] + (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale[:, None]
    pixels = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # (C,) pixel centres
    weights = (1 - ((pixels - centers[..., None]) / support[:, None, None]).abs()).clamp_(min=0)  # (N, S, C)
    return weights / weights.sum(-1, keepdim=True)


def _crop_resize_torch(
    images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int
) -> torch.Tensor:
    """``float32 [N, 3, S, S]`` in [0, 255]: separable resampling as two matmuls with per-view weights."""
    canvas = images.shape[-1]
    pixels = boxes * canvas  # (N, 4) box in canvas pixels
    wx = _resize_weights(pixels[:, 0], pixels[:, 2], canvas, out_size)  # (N, S, C)
    wy = _resize_weights(pixels[:, 1], pixels[:, 3], canvas, out_size)  # (N, S, C)
    canvases = images[image_index].float()  # (N, 3, C, C)
    return wy[:, None] @ canvases @ wx[:, None].transpose(-1, -2)  # (N, 3, S, S)


def _flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` luma of ``[N, 3, H, W]``."""
    r, g, b = x.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` for each view (``x`` ``[N, 3, H, W]`` >= 0, ``hue`` ``[N]``).

    RGB -> HSV as torchvision (and PIL) compute it; HSV -> RGB in the closed form ``v - v s clamp(min(k, 4 - k),
    0, 1)`` with ``k = (n + 6 h) mod 6`` and ``n = 5, 3, 1`` for r, g, b, which equals torchvision's sector table.
    """
    r, g, b = x.unbind(-3)
    minc, maxc = torch.aminmax(x, dim=-3)  # (N, H, W)
    flat = maxc == minc
    saturation = (maxc - minc) / torch.where(flat, torch.ones_like(maxc), maxc)
    spread = torch.where(flat, torch.ones_like(maxc), maxc - minc)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / spread.unsqueeze(-3)).unbind(-3)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h * (1.0 / 6.0) + 1.0
    h = h - h.floor()
    h = h + hue.view(-1, 1, 1)
    h = h - h.floor()
    h6, vs = h * 6.0, maxc * saturation
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n
        k = torch.where(k >= 6.0, k - 6.0, k)
        channels.append(maxc - vs * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3)


def _color_jitter_torch(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    bound: float,
) -> torch.Tensor:
    factor = brightness.view(-1, 1, 1, 1)
    x = (x * factor).clamp_(0, bound)
    factor = contrast.view(-1, 1, 1, 1)
    mean = _luma(x).mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    x = (factor * x + (1 - factor) * mean).clamp_(0, bound)
    factor = saturation.view(-1, 1, 1, 1)
    x = (factor * x + (1 - factor) * _luma(x)).clamp_(0, bound)
    shifted = hue != 0
    if bool(shifted.any()):
        x = torch.where(shifted.view(-1, 1, 1, 1), _shift_hue(x, hue), x)
    return x


def _grayscale_torch(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), _luma(x).expand_as(x), x)


def _gaussian_blur_torch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with per-view kernels: one grouped convolution per axis over the whole batch."""
    n, _, height, width = x.shape
    radius = _blur_radius(sigma, height, width)  # (N,)
    widest = int(radius.max()) if n else 0
    if widest == 0:
        return x
    offsets = torch.arange(-widest, widest + 1, device=x.device, dtype=torch.float32)  # (K,)
    # Views blurred less than the widest get zero taps beyond their own radius; sigma 0 leaves only the centre.
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-6)[:, None]) ** 2)  # (N, K)
    kernel = kernel * (offsets.abs() <= radius[:, None])
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, dim=0)  # (3N, K)
    planes = F.pad(x.reshape(1, 3 * n, height, width), (widest,) * 4, mode="reflect")
    planes = F.conv2d(planes, kernel[:, None, None, :], groups=3 * n)  # along x
    planes = F.conv2d(planes, kernel[:, None, :, None], groups=3 * n)  # along y
    return planes.reshape(n, 3, height, width)


def _to_float(views: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Views as float32 in their own range, and that range's upper bound."""
    if views.dtype == torch.uint8:
        return views.float(), 255.0
    return views.to(torch.float32), 1.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and saturate, as the compiled kernel does."""
    return (x + 0.5).floor_().clamp_(0, 255).to(torch.uint8)


def _from_float(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _to_uint8(x) if like.dtype == torch.uint8 else x.to(like.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Native backend: one fused C++ kernel for CPU, compiled on first use and cached.

_NATIVE_SOURCE = r"""
// Fused view renderer: crop + antialiased resize, flip, colour jitter, grayscale, Gaussian blur, uint8 out.
// Each thread renders whole views one at a time, so every intermediate of a view stays in cache.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

// SIMD through GCC/Clang vector extensions: 16 float lanes with AVX-512, else 8 (lowered to what the CPU has).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vfloat load(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return (vfloat)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  vfloat v;
  for (int l = 0; l < kLanes; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }

// A 1-D linear map with k taps per output: output o = sum_t w[o * k + t] * input[idx[o * k + t]].
struct Taps {
  int k = 0;
  std::vector<int32_t> idx;
  std::vector<float> w;
  int lo = 0, hi = 0;  // the inputs [lo, hi) that carry weight
};

// PIL's and torchvision's antialiased bilinear resize of the input interval [start, stop) (pixels of an axis of
// n) onto out pixels: a triangle filter whose support grows with the downscale factor (plain bilinear when
// upscaling), renormalised where it leaves the image. reverse lists the outputs right to left (a flip).
void resize_taps(double start, double stop, int n, int out, bool reverse, Taps& t) {
  const double scale = (stop - start) / out;
  const double support = std::max(scale, 1.0);
  t.k = 2 * static_cast<int>(std::ceil(support)) + 1;
  t.idx.assign(static_cast<size_t>(out) * t.k, 0);
  t.w.assign(static_cast<size_t>(out) * t.k, 0.0f);
  t.lo = n;
  t.hi = 0;
  for (int o = 0; o < out; ++o) {
    const double center = start + (o + 0.5) * scale;
    const int first = std::max(static_cast<int>(std::floor(center - support + 0.5)), 0);
    const int last = std::min(static_cast<int>(std::floor(center + support + 0.5)), n);
    const int count = std::min(last - first, t.k);
    const size_t row = static_cast<size_t>(reverse ? out - 1 - o : o) * t.k;
    auto weight = [&](int i) { return std::max(0.0, 1.0 - std::fabs((first + i - center + 0.5) / support)); };
    double total = 0.0;
    for (int i = 0; i < count; ++i) total += weight(i);
    if (count <= 0 || total <= 0.0) {  // a box outside the image, which callers reject: nearest pixel
      const int nearest = std::min(std::max(static_cast<int>(std::floor(center)), 0), n - 1);
      t.idx[row] = nearest;
      t.w[row] = 1.0f;
      t.lo = std::min(t.lo, nearest);
      t.hi = std::max(t.hi, nearest + 1);
      continue;
    }
    for (int i = 0; i < count; ++i) {
      t.idx[row + i] = first + i;
      t.w[row + i] = static_cast<float>(weight(i) / total);
    }
    for (int i = count; i < t.k; ++i) t.idx[row + i] = first;  // zero weight, index kept in range
    t.lo = std::min(t.lo, first);
    t.hi = std::max(t.hi, first + count);
  }
}

// Gaussian taps of the given radius, with torch's "reflect" padding (the edge pixel is not repeated).
void blur_taps(int n, int radius, double sigma, Taps& t) {
  t.k = 2 * radius + 1;
  t.idx.assign(static_cast<size_t>(n) * t.k, 0);
  t.w.assign(static_cast<size_t>(n) * t.k, 0.0f);
  std::vector<double> g(t.k);
  double total = 0.0;
  for (int i = 0; i < t.k; ++i) {
    const double x = (i - radius) / sigma;
    g[i] = std::exp(-0.5 * x * x);
    total += g[i];
  }
  for (int o = 0; o < n; ++o) {
    for (int i = 0; i < t.k; ++i) {
      int j = o - radius + i;
      j = j < 0 ? -j : (j >= n ? 2 * (n - 1) - j : j);
      t.idx[static_cast<size_t>(o) * t.k + i] = j;
      t.w[static_cast<size_t>(o) * t.k + i] = static_cast<float>(g[i] / total);
    }
  }
}

// out[o][x] = sum_t w[o][t] * in[idx[o][t] - shift][x] for x < width: vectorised over the contiguous x, four
// vectors of outputs held in registers across the taps.
template <typename T>
void row_pass(const T* in, int64_t in_stride, int shift, int width, const Taps& t, int rows, float* out,
              int64_t out_stride) {
  for (int o = 0; o < rows; ++o) {
    float* dst = out + o * out_stride;
    const int32_t* idx = t.idx.data() + static_cast<size_t>(o) * t.k;
    const float* w = t.w.data() + static_cast<size_t>(o) * t.k;
    int taps = t.k;
    while (taps > 1 && w[taps - 1] == 0.0f) --taps;
    auto row = [&](int i) { return in + static_cast<int64_t>(idx[i] - shift) * in_stride; };
    int x = 0;
    for (; x + 4 * kLanes <= width; x += 4 * kLanes) {
      const T* s = row(0) + x;
      vfloat a0 = w[0] * load(s), a1 = w[0] * load(s + kLanes);
      vfloat a2 = w[0] * load(s + 2 * kLanes), a3 = w[0] * load(s + 3 * kLanes);
      for (int i = 1; i < taps; ++i) {
        s = row(i) + x;
        const float wi = w[i];
        a0 += wi * load(s);
        a1 += wi * load(s + kLanes);
        a2 += wi * load(s + 2 * kLanes);
        a3 += wi * load(s + 3 * kLanes);
      }
      store(dst + x, a0);
      store(dst + x + kLanes, a1);
      store(dst + x + 2 * kLanes, a2);
      store(dst + x + 3 * kLanes, a3);
    }
    for (; x + kLanes <= width; x += kLanes) {
      vfloat a = w[0] * load(row(0) + x);
      for (int i = 1; i < taps; ++i) a += w[i] * load(row(i) + x);
      store(dst + x, a);
    }
    for (; x < width; ++x) {
      float a = w[0] * static_cast<float>(row(0)[x]);
      for (int i = 1; i < taps; ++i) a += w[i] * static_cast<float>(row(i)[x]);
      dst[x] = a;
    }
  }
}

#if defined(__AVX__)
// One 8 x 8 block of out[c][r] = in[r][c], in registers.
inline void transpose_8x8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * in_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// out[c][r] = in[r][c] for in of rows x cols.
void transpose(const float* __restrict in, int rows, int cols, float* __restrict out) {
  int r0 = 0;
#if defined(__AVX__)
  for (; r0 + 8 <= rows; r0 += 8) {
    const float* src = in + static_cast<int64_t>(r0) * cols;
    int c = 0;
    for (; c + 8 <= cols; c += 8) transpose_8x8(src + c, cols, out + static_cast<int64_t>(c) * rows + r0, rows);
    for (; c < cols; ++c) {
      for (int r = 0; r < 8; ++r) out[static_cast<int64_t>(c) * rows + r0 + r] = src[int64_t{r} * cols + c];
    }
  }
#endif
  for (int r = r0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) out[static_cast<int64_t>(c) * rows + r] = in[static_cast<int64_t>(r) * cols + c];
  }
}

inline float clamp255(float x) { return std::min(std::max(x, 0.0f), 255.0f); }
inline float luma(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

// Mean luma of the view after the brightness factor (what adjust_contrast sees), in lane-wise partial sums.
float mean_luma(const float* R, const float* G, const float* B, int64_t n, float f) {
  constexpr int L = 16;
  float acc[L] = {};
  int64_t p = 0;
  for (; p + L <= n; p += L) {
    for (int l = 0; l < L; ++l) acc[l] += luma(clamp255(f * R[p + l]), clamp255(f * G[p + l]), clamp255(f * B[p + l]));
  }
  double total = 0.0;
  for (int l = 0; l < L; ++l) total += acc[l];
  for (; p < n; ++p) total += luma(clamp255(f * R[p]), clamp255(f * G[p]), clamp255(f * B[p]));
  return static_cast<float>(total / static_cast<double>(n));
}

// One HSV -> RGB channel in closed form: v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 and
// n = 5, 3, 1 for r, g, b. It equals torchvision's sector table and has no branches, so the loop vectorises.
inline float hsv_channel(float n, float h6, float v, float vs) {
  float k = n + h6;
  k = k >= 6.0f ? k - 6.0f : k;
  return v - vs * std::min(std::max(std::min(k, 4.0f - k), 0.0f), 1.0f);
}

// torchvision's adjust_hue on one pixel: RGB -> HSV (as PIL), rotate H, HSV -> RGB.
inline void shift_hue(float& r, float& g, float& b, float shift) {
  const float maxc = std::max(r, std::max(g, b)), minc = std::min(r, std::min(g, b));
  const bool flat = maxc == minc;
  const float s = (maxc - minc) / (flat ? 1.0f : maxc);
  const float spread = flat ? 1.0f : maxc - minc;
  const float rc = (maxc - r) / spread, gc = (maxc - g) / spread, bc = (maxc - b) / spread;
  float h = maxc == r ? bc - gc : (maxc == g ? 2.0f + rc - bc : 4.0f + gc - rc);
  h = h * (1.0f / 6.0f) + 1.0f;
  h -= std::floor(h);
  h += shift;
  h -= std::floor(h);
  const float h6 = h * 6.0f, vs = maxc * s;
  r = hsv_channel(5.0f, h6, maxc, vs);
  g = hsv_channel(3.0f, h6, maxc, vs);
  b = hsv_channel(1.0f, h6, maxc, vs);
}

// Brightness, contrast (towards the mean luma), saturation, hue and grayscale in one pass, each step clamped to
// [0, 255] as torchvision's _blend does. Factors at their identity values leave a pixel exactly as it was.
template <bool kHue, bool kGray>
void jitter(float* __restrict R, float* __restrict G, float* __restrict B, int64_t n, float brightness,
            float contrast, float mean, float saturation, float hue) {
  const float contrast_offset = (1.0f - contrast) * mean, desaturation = 1.0f - saturation;
  for (int64_t p = 0; p < n; ++p) {
    float r = clamp255(brightness * R[p]), g = clamp255(brightness * G[p]), b = clamp255(brightness * B[p]);
    r = clamp255(contrast * r + contrast_offset);
    g = clamp255(contrast * g + contrast_offset);
    b = clamp255(contrast * b + contrast_offset);
    const float y = desaturation * luma(r, g, b);
    r = clamp255(saturation * r + y);
    g = clamp255(saturation * g + y);
    b = clamp255(saturation * b + y);
    if (kHue) shift_hue(r, g, b, hue);
    if (kGray) r = g = b = luma(r, g, b);
    R[p] = r;
    G[p] = g;
    B[p] = b;
  }
}

// Round half up and saturate.
void quantise(const float* __restrict in, int64_t n, uint8_t* __restrict out) {
  for (int64_t p = 0; p < n; ++p) out[p] = static_cast<uint8_t>(clamp255(in[p]) + 0.5f);
}

struct Args {
  const uint8_t* bank;
  int64_t canvas;
  const int64_t* index;
  const float* boxes;
  int64_t size;
  const uint8_t* flip;
  const float* brightness;
  const float* contrast;
  const float* saturation;
  const float* hue;
  const uint8_t* grayscale;
  const float* blur_sigma;
  const int64_t* blur_radius;
  uint8_t* out;
};

struct Scratch {
  std::vector<float> a, b, c;
  Taps x, y, blur;
};

void render_one(const Args& p, int64_t v, Scratch& s) {
  const int C = static_cast<int>(p.canvas), S = static_cast<int>(p.size);
  const int64_t plane = static_cast<int64_t>(S) * S;
  const uint8_t* image = p.bank + p.index[v] * 3 * p.canvas * p.canvas;
  const float* box = p.boxes + 4 * v;
  const bool flip = p.flip != nullptr && p.flip[v] != 0;
  resize_taps(static_cast<double>(box[0]) * C, static_cast<double>(box[2]) * C, C, S, flip, s.x);
  resize_taps(static_cast<double>(box[1]) * C, static_cast<double>(box[3]) * C, C, S, false, s.y);
  const int x0 = s.x.lo, W = s.x.hi - s.x.lo;
  // a and b hold one channel at a time, c the whole view: the working set of a 224 px view fits in L2.
  s.a.resize(static_cast<size_t>(std::max<int64_t>(static_cast<int64_t>(S) * W, plane)));
  s.b.resize(s.a.size());
  s.c.resize(static_cast<size_t>(3 * plane));
  float* a = s.a.data();
  float* b = s.b.data();
  // Vertical pass over the columns under the box -> a[i][x]; transpose -> b[x][i]; horizontal pass -> c[c][j][i].
  // The view stays transposed (rows are output columns j, so reversed x taps flip it) until the end.
  for (int c = 0; c < 3; ++c) {
    row_pass<uint8_t>(image + static_cast<int64_t>(c) * C * C + x0, C, 0, W, s.y, S, a, W);
    transpose(a, S, W, b);
    row_pass<float>(b, S, x0, S, s.x, S, s.c.data() + c * plane, S);
  }
  float* R = s.c.data();
  float* G = R + plane;
  float* B = G + plane;
  const float brightness = p.brightness != nullptr ? p.brightness[v] : 1.0f;
  const float contrast = p.contrast != nullptr ? p.contrast[v] : 1.0f;
  const float saturation = p.saturation != nullptr ? p.saturation[v] : 1.0f;
  const float hue = p.hue != nullptr ? p.hue[v] : 0.0f;
  const bool gray = p.grayscale != nullptr && p.grayscale[v] != 0;
  if (brightness != 1.0f || contrast != 1.0f || saturation != 1.0f || hue != 0.0f || gray) {
    const float mean = contrast != 1.0f ? mean_luma(R, G, B, plane, brightness) : 0.0f;
    if (hue != 0.0f) {
      gray ? jitter<true, true>(R, G, B, plane, brightness, contrast, mean, saturation, hue)
           : jitter<true, false>(R, G, B, plane, brightness, contrast, mean, saturation, hue);
    } else {
      gray ? jitter<false, true>(R, G, B, plane, brightness, contrast, mean, saturation, hue)
           : jitter<false, false>(R, G, B, plane, brightness, contrast, mean, saturation, hue);
    }
  }
  uint8_t* out = p.out + v * 3 * plane;
  const int radius = p.blur_radius != nullptr ? static_cast<int>(p.blur_radius[v]) : 0;
  if (radius > 0) blur_taps(S, radius, p.blur_sigma[v], s.blur);
  for (int c = 0; c < 3; ++c) {
    if (radius > 0) {
      row_pass<float>(s.c.data() + c * plane, S, 0, S, s.blur, S, a, S);  // along j, the image's x
      transpose(a, S, S, b);
      row_pass<float>(b, S, 0, S, s.blur, S, a, S);  // along i, the image's y; now in [i][j] order
      quantise(a, plane, out + c * plane);
    } else {
      transpose(s.c.data() + c * plane, S, S, b);
      quantise(b, plane, out + c * plane);
    }
  }
}

}  // namespace

// Renders views [0, n) into out (uint8 [n, 3, size, size]) on up to num_threads threads. Null augmentation
// pointers mean identity. Returns 0, or -1 when a worker failed (out of memory).
extern "C" int view_env_render(const uint8_t* bank, int64_t canvas, const int64_t* index, const float* boxes,
                               int64_t n, int64_t size, const uint8_t* flip, const float* brightness,
                               const float* contrast, const float* saturation, const float* hue,
                               const uint8_t* grayscale, const float* blur_sigma, const int64_t* blur_radius,
                               uint8_t* out, int64_t num_threads) {
  const Args args{bank, canvas, index, boxes, size, flip, brightness, contrast, saturation, hue, grayscale,
                  blur_sigma, blur_radius, out};
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto work = [&]() {
    try {
      Scratch scratch;
      for (int64_t v = next.fetch_add(1); v < n; v = next.fetch_add(1)) render_one(args, v, scratch);
    } catch (...) {
      failed = true;
      next = n;
    }
  };
  std::vector<std::thread> workers;
  try {
    for (int64_t t = 1; t < std::min<int64_t>(num_threads, n); ++t) workers.emplace_back(work);
  } catch (...) {
    // No more threads to be had: those already started and this one share the views.
  }
  work();
  for (auto& worker : workers) worker.join();
  return failed ? -1 : 0;
}
"""

_COMPILE_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-Wno-psabi",
)
#: Tried in order: tuned for this CPU (AVX-512 / AVX2 where present), then portable.
_ARCH_FLAGS = (("-march=native",), ())
_native_failure = "not tried yet"


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(wanted)))


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile the kernel to ``target`` (atomically); return an error message, or ``None`` on success."""
    partial = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # unique per writer
    command = [compiler, *flags, "-x", "c++", "-", "-o", str(partial)]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, input=_NATIVE_SOURCE, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            return f"{' '.join(command)} failed: {result.stderr.strip()[-800:]}"
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{' '.join(command)}: {error}"
    return None


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    library.view_env_render.argtypes = [pointer, integer, pointer, pointer, integer, integer, *[pointer] * 9, integer]
    library.view_env_render.restype = ctypes.c_int
    return library


@functools.cache
def _native_library() -> ctypes.CDLL | None:
    """The compiled kernel, built into the view_env cache on first use; ``None`` (with a warning) if it can't be."""
    global _native_failure
    if os.environ.get("VIEW_ENV_NATIVE", "1") == "0":
        _native_failure = "turned off by VIEW_ENV_NATIVE=0"
        return None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    if compiler is None:
        errors = ["no C++ compiler found (looked for $CXX, g++, clang++, c++)"]
    else:
        errors = []
        try:
            version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as error:
            version = str(error)
        for arch in _ARCH_FLAGS:
            flags = (*_COMPILE_FLAGS, *arch)
            key = "\0".join([_NATIVE_SOURCE, compiler, version, *flags, platform.machine(), _cpu_fingerprint()])
            path = cache_dir() / "native" / f"render-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
            if path.exists():
                try:
                    return _load(path)
                except OSError as error:
                    errors.append(f"cannot load {path}: {error}; rebuilding it")
            error = _compile(compiler, flags, path)
            if error is None:
                try:
                    return _load(path)
                except OSError as load_error:
                    error = f"cannot load {path}: {load_error}"
            errors.append(error)
    _native_failure = "; ".join(errors)
    warnings.warn(
        f"view_env.render: the compiled CPU renderer is unavailable ({_native_failure}). Rendering on CPU falls "
        "back to batched torch operations, which are about as slow as a per-image PIL loop. Install g++ or point "
        "CXX at a C++17 compiler; set VIEW_ENV_NATIVE=0 to use the torch path without this warning.",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _native_status() -> str:
    return "available" if _native_library() is not None else _native_failure


def native_backend_available() -> bool:
    """Whether the compiled CPU kernel is built and loaded (compiling it on the first call, about 2 s, then cached
    in the view_env cache folder)."""
    return _native_library() is not None


def _render_torch(
    images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int, aug: ViewAug | None
) -> torch.Tensor:
    """The pipeline as batched torch operations, chunk by chunk of views; ``uint8 [N, 3, S, S]``."""
    n, canvas = image_index.shape[0], images.shape[-1]
    out = torch.empty(n, 3, out_size, out_size, dtype=torch.uint8, device=images.device)
    budget = _CHUNK_ELEMENTS["cpu" if images.device.type == "cpu" else "other"]
    step = max(1, budget // (3 * max(canvas, out_size) ** 2))
    for first in range(0, n, step):
        part = slice(first, first + step)
        x = _crop_resize_torch(images, image_index[part], boxes[part], out_size)  # (n, 3, S, S) in [0, 255]
        if aug is not None:
            x = _flip(x, aug.flip[part])
            x = _color_jitter_torch(
                x, aug.brightness[part], aug.contrast[part], aug.saturation[part], aug.hue[part], 255.0
            )
            x = _grayscale_torch(x, aug.grayscale[part])
            x = _gaussian_blur_torch(x, aug.blur_sigma[part])
        out[part] = _to_uint8(x)
    return out


def _render_native(
    images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int, aug: ViewAug | None
) -> torch.Tensor:
    library = _native_library()
    assert library is not None  # checked by _check_backend
    n = image_index.shape[0]
    out = torch.empty(n, 3, out_size, out_size, dtype=torch.uint8)
    # Contiguous copies (no-ops for the usual contiguous inputs) stay referenced until the call returns.
    images, image_index, boxes = images.contiguous(), image_index.contiguous(), boxes.contiguous()
    if aug is None:
        parameters: list[torch.Tensor | None] = [None] * 8
    else:
        parameters = [
            aug.flip,
            aug.brightness,
            aug.contrast,
            aug.saturation,
            aug.hue,
            aug.grayscale,
            aug.blur_sigma,
            _blur_radius(aug.blur_sigma, out_size, out_size),
        ]
        parameters = [p.contiguous() for p in parameters]
    status = library.view_env_render(
        images.data_ptr(),
        images.shape[-1],
        image_index.data_ptr(),
        boxes.data_ptr(),
        n,
        out_size,
        *[None if p is None else p.data_ptr() for p in parameters],
        out.data_ptr(),
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError(f"the compiled renderer ran out of memory rendering {n} views of {out_size} px")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Public kernels.


def crop_resize(
    images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Crop each view's box from its canvas and resize it to ``S x S`` with antialiasing.

    Args:
        images: ``uint8 [P, 3, C, C]`` image bank.
        image_index: ``int64 [N]`` bank row of each view, in ``[0, P)``.
        boxes: ``float32 [N, 4]`` boxes ``(x0, y0, x1, y1)`` in normalised image coordinates, ``x1 > x0``,
            ``y1 > y0``, within ``[0, 1]`` (up to :data:`BOX_TOLERANCE`).
        out_size: Side ``S`` of the square output.
        backend: ``"auto"`` (compiled kernel on CPU when available, else torch), ``"native"`` or ``"torch"``.

    Returns:
        ``uint8 [N, 3, S, S]`` on the images' device.
    """
    n = _check_view_inputs(images, image_index, boxes, out_size)
    native = _check_backend(backend, images.device)
    if n == 0:
        return torch.empty(0, 3, out_size, out_size, dtype=torch.uint8, device=images.device)
    if native:
        return _render_native(images, image_index, boxes, out_size, None)
    return _render_torch(images, image_index, boxes, out_size, None)


def horizontal_flip(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left to right the views where ``mask`` (``bool [N]``) is set; ``views`` ``[N, 3, H, W]``, any dtype."""
    views = _check_views(views)
    _check_tensor("mask", mask, torch.bool, (views.shape[0],), views.device)
    return _flip(views, mask)


def color_jitter(
    views: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue, per view, with torchvision's semantics.

    Args:
        views: ``[N, 3, H, W]``, ``uint8`` (0..255) or floating point (0..1).
        brightness: ``float32 [N]`` factors ``>= 0`` (1 is the identity).
        contrast: ``float32 [N]`` factors ``>= 0`` (1 is the identity).
        saturation: ``float32 [N]`` factors ``>= 0`` (1 is the identity).
        hue: ``float32 [N]`` shifts in ``[-0.5, 0.5]`` (0 is the identity).

    Returns:
        The jittered views, same shape, dtype and device; computed in float32, rounded once for ``uint8``.
    """
    views = _check_views(views)
    n, device = views.shape[0], views.device
    factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    for name, value in factors.items():
        _check_factor(name, value, n, device, *_AUG_RANGES[name])
    if n == 0:
        return views.clone()
    x, bound = _to_float(views)
    return _from_float(_color_jitter_torch(x, brightness, contrast, saturation, hue, bound), views)


def grayscale(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the views where ``mask`` (``bool [N]``) is set by their luma on all three channels
    (``rgb_to_grayscale(..., num_output_channels=3)``); ``views`` ``[N, 3, H, W]`` uint8 or float, kept."""
    views = _check_views(views)
    _check_tensor("mask", mask, torch.bool, (views.shape[0],), views.device)
    x, _ = _to_float(views)
    return _from_float(_grayscale_torch(x, mask), views)


def gaussian_blur(views: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each view with its own ``sigma`` (``float32 [N]`` >= 0, pixels; 0 leaves a view as is).

    The kernel size is :func:`blur_kernel_size` (radius capped at ``min(H, W) - 1``), the padding is reflect, as
    torchvision's ``gaussian_blur``. ``views`` ``[N, 3, H, W]`` uint8 or float; shape, dtype, device kept.
    """
    views = _check_views(views)
    _check_factor("sigma", sigma, views.shape[0], views.device, *_AUG_RANGES["blur_sigma"])
    x, _ = _to_float(views)
    return _from_float(_gaussian_blur_torch(x, sigma), views)


def render_views(
    images: torch.Tensor,
    image_index: torch.Tensor,
    boxes: torch.Tensor,
    out_size: int,
    aug: ViewAug | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Render N views from the image bank in one call: crop + resize, flip, colour jitter, grayscale, blur.

    The order of operations is the module's pipeline (see the module docstring); everything is computed in
    float32 and rounded to ``uint8`` once.

    Args:
        images: ``uint8 [P, 3, C, C]`` image bank (contiguous, or it is copied).
        image_index: ``int64 [N]`` bank row of each view, in ``[0, P)``.
        boxes: ``float32 [N, 4]`` view boxes ``(x0, y0, x1, y1)`` in normalised image coordinates.
        out_size: Side ``S`` of the square views.
        aug: Per-view :class:`ViewAug` parameters, or ``None`` for none.
        backend: ``"auto"`` (compiled kernel on CPU when available, else torch), ``"native"`` or ``"torch"``.

    Returns:
        ``uint8 [N, 3, S, S]`` on the images' device.

    Raises:
        TypeError, ValueError, IndexError: An input has the wrong type, dtype, shape, device or value; the message
            names it and what was expected.
    """
    n = _check_view_inputs(images, image_index, boxes, out_size)
    if aug is not None:
        _check_aug(aug, n, images.device)
    native = _check_backend(backend, images.device)
    if n == 0:
        return torch.empty(0, 3, out_size, out_size, dtype=torch.uint8, device=images.device)
    if native:
        return _render_native(images, image_index, boxes, out_size, aug)
    return _render_torch(images, image_index, boxes, out_size, aug)
