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

Backends. On CPU a small C++ kernel (:mod:`view_env.render.native`: ``native.cpp``, compiled once with the
machine's ``g++`` into the view_env cache and loaded with ``ctypes``) renders each view start to finish while it
sits in cache, over all of torch's intra-op threads; it is over ten times faster than a per-image PIL loop, which
stock ``grid_sample`` and ``roi_align`` are not (``benchmarks/render_speed.py``). Everywhere else (CUDA, or a CPU
where the kernel cannot be built) the kernels run as batched torch operations (:mod:`view_env.render.torch_kernels`):
the resize as two matmuls with per-view weight matrices. Both backends implement the same arithmetic and agree to
within one level. ``VIEW_ENV_NATIVE=0`` turns the compiled kernel off; ``CXX`` picks the compiler.

Files: this module holds the public kernels, which validate (:mod:`view_env.render.validate`) and pick a backend;
:mod:`view_env.render.params` holds the parameter types both backends take.
"""

from __future__ import annotations

from typing import Literal

import torch

from view_env.render import torch_kernels
from view_env.render.native import KERNEL
from view_env.render.params import ViewAug, blur_kernel_size
from view_env.render.validate import (
    BOX_TOLERANCE,
    check_aug,
    check_factor,
    check_tensor,
    check_view_inputs,
    check_views,
)

__all__ = [
    "BOX_TOLERANCE",
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


def native_backend_available() -> bool:
    """Whether the compiled CPU kernel is built and loaded (compiling it on the first call, about 2 s, then cached
    in the view_env cache folder)."""
    return KERNEL.library() is not None


def _use_native(backend: object, device: torch.device) -> bool:
    """Whether to use the compiled kernel; raises if ``backend`` is unknown or ``"native"`` cannot be honoured."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if device.type != "cpu":
        if backend == "native":
            raise ValueError(f"backend='native' renders on CPU only, but the images are on {device}; use 'auto'")
        return False
    if KERNEL.library() is None:
        if backend == "native":
            raise RuntimeError(f"backend='native' is unavailable: {KERNEL.status}")
        return False
    return True



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
    return render_views(images, image_index, boxes, out_size, None, backend=backend)  # no augmentation


def horizontal_flip(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left to right the views where ``mask`` (``bool [N]``) is set; ``views`` ``[N, 3, H, W]``, any dtype."""
    views = check_views(views)
    check_tensor("mask", mask, torch.bool, (views.shape[0],), views.device)
    return torch_kernels.flip(views, mask)


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
    views = check_views(views)
    n, device = views.shape[0], views.device
    factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    for name, value in factors.items():
        check_factor(name, value, n, device, name)
    if n == 0:
        return views.clone()
    x, bound = torch_kernels.to_float(views)
    return torch_kernels.from_float(torch_kernels.color_jitter(x, brightness, contrast, saturation, hue, bound), views)


def grayscale(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the views where ``mask`` (``bool [N]``) is set by their luma on all three channels
    (``rgb_to_grayscale(..., num_output_channels=3)``); ``views`` ``[N, 3, H, W]`` uint8 or float, kept."""
    views = check_views(views)
    check_tensor("mask", mask, torch.bool, (views.shape[0],), views.device)
    x, _ = torch_kernels.to_float(views)
    return torch_kernels.from_float(torch_kernels.grayscale(x, mask), views)


def gaussian_blur(views: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each view with its own ``sigma`` (``float32 [N]`` >= 0, pixels; 0 leaves a view as is).

    The kernel size is :func:`blur_kernel_size` (radius capped at ``min(H, W) - 1``), the padding is reflect, as
    torchvision's ``gaussian_blur``. ``views`` ``[N, 3, H, W]`` uint8 or float; shape, dtype, device kept.
    """
    views = check_views(views)
    check_factor("sigma", sigma, views.shape[0], views.device, "blur_sigma")
    x, _ = torch_kernels.to_float(views)
    return torch_kernels.from_float(torch_kernels.gaussian_blur(x, sigma), views)


def render_views(
    images: torch.Tensor,
    image_index: torch.Tensor,
    boxes: torch.Tensor,
    out_size: int,
    aug: ViewAug | None = None,
    *,
    backend: Backend = "auto",
    check: bool = True,
    max_blur_sigma: float | None = None,
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
        check: Check the values of the inputs (indices in range, boxes inside the image, augmentation parameters
            in their domains), which reads them from the device. ``False`` checks only types, shapes and devices:
            for callers whose inputs are valid by construction, such as the environments.
        max_blur_sigma: An upper bound on ``aug.blur_sigma`` known to the caller: the torch path then sizes its
            blur kernels from it and applies every stage to every view, so that rendering never waits for the
            device (with ``check=False``).

    Returns:
        ``uint8 [N, 3, S, S]`` on the images' device.

    Raises:
        TypeError, ValueError, IndexError: An input has the wrong type, dtype, shape, device or value; the message
            names it and what was expected.
    """
    n = check_view_inputs(images, image_index, boxes, out_size, values=check)
    if aug is not None:
        check_aug(aug, n, images.device, values=check)
    native = _use_native(backend, images.device)
    if n == 0:
        return torch.empty(0, 3, out_size, out_size, dtype=torch.uint8, device=images.device)
    if native:
        return KERNEL.render(images, image_index, boxes, out_size, aug)
    return torch_kernels.render(images, image_index, boxes, out_size, aug, max_blur_sigma)
