"""The torch backend: every step of the pipeline as batched torch operations over N views, on any device.

Views are ``float32 [N, 3, H, W]`` in ``[0, bound]`` (255 for uint8 views, 1 for float ones) between the steps and
rounded to ``uint8`` once at the end. The kernels take parameters that :mod:`view_env.render.validate` has checked
and do no checking of their own. The resize is two matmuls with per-view weight matrices; the blur is one grouped
convolution per axis over the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from view_env.render.params import ViewAug, blur_radius, max_blur_radius

#: Luma weights of ``rgb_to_grayscale`` (ITU-R 601-2, as torchvision and PIL).
LUMA = (0.2989, 0.587, 0.114)
#: Views are rendered in chunks whose float32 temporaries hold at most this many elements each: it bounds memory on
#: any device and, on CPU, keeps temporaries small enough to be recycled rather than page-faulted.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "other": 1 << 26}


def resize_weights(start: torch.Tensor, stop: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """``float32 [N, out_size, in_size]``: antialiased bilinear weights mapping pixels ``[start, stop)`` onto
    ``out_size`` outputs (PIL's / torchvision's triangle filter, support scaled by the downscale factor)."""
    device = start.device
    scale = (stop - start) / out_size  # (N,) input pixels per output pixel
    support = scale.clamp(min=1.0)  # (N,)
    centers = start[:, None] + (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale[:, None]
    pixels = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # (C,) pixel centres
    weights = (1 - ((pixels - centers[..., None]) / support[:, None, None]).abs()).clamp_(min=0)  # (N, S, C)
    return weights / weights.sum(-1, keepdim=True)


def crop_resize(images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """``float32 [N, 3, S, S]`` in [0, 255]: separable resampling as two matmuls with per-view weights."""
    canvas = images.shape[-1]
    pixels = boxes * canvas  # (N, 4) box in canvas pixels
    wx = resize_weights(pixels[:, 0], pixels[:, 2], canvas, out_size)  # (N, S, C)
    wy = resize_weights(pixels[:, 1], pixels[:, 3], canvas, out_size)  # (N, S, C)
    canvases = images[image_index].float()  # (N, 3, C, C)
    return wy[:, None] @ canvases @ wx[:, None].transpose(-1, -2)  # (N, 3, S, S)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, 3, H, W]`` mirrored left to right where ``mask`` (``bool [N]``) is set."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` luma of ``[N, 3, H, W]``."""
    r, g, b = x.unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
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


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    bound: float,
    skip_unshifted: bool = True,
) -> torch.Tensor:
    """Brightness, contrast (towards the mean luma), saturation, then hue, each clamped to ``[0, bound]``.

    ``skip_unshifted`` skips the hue rotation when no view needs it (which reads the device); ``False`` applies it
    to every view and keeps the unshifted ones with ``torch.where``."""
    factor = brightness.view(-1, 1, 1, 1)
    x = (x * factor).clamp_(0, bound)
    factor = contrast.view(-1, 1, 1, 1)
    mean = luma(x).mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    x = (factor * x + (1 - factor) * mean).clamp_(0, bound)
    factor = saturation.view(-1, 1, 1, 1)
    x = (factor * x + (1 - factor) * luma(x)).clamp_(0, bound)
    shifted = hue != 0
    if not skip_unshifted or bool(shifted.any()):
        x = torch.where(shifted.view(-1, 1, 1, 1), shift_hue(x, hue), x)
    return x


def grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with its luma on all three channels where ``mask`` (``bool [N]``) is set."""
    return torch.where(mask.view(-1, 1, 1, 1), luma(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, widest: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with per-view kernels: one grouped convolution per axis over the whole batch.

    ``widest``: the largest kernel radius, known to the caller (:func:`max_blur_radius`); ``None`` reads it from
    ``sigma`` on the device."""
    n, _, height, width = x.shape
    radius = blur_radius(sigma, height, width)  # (N,)
    if widest is None:
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


def to_float(views: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Views as float32 in their own range, and that range's upper bound."""
    if views.dtype == torch.uint8:
        return views.float(), 255.0
    return views.to(torch.float32), 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and saturate, as the compiled kernel does."""
    return (x + 0.5).floor_().clamp_(0, 255).to(torch.uint8)


def from_float(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` back in the dtype of ``like``: rounded once for ``uint8``."""
    return to_uint8(x) if like.dtype == torch.uint8 else x.to(like.dtype)


def render(
    images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int, aug: ViewAug | None,
    max_blur_sigma: float | None = None,
) -> torch.Tensor:
    """The pipeline as batched torch operations, chunk by chunk of views; ``uint8 [N, 3, S, S]``.

    With ``max_blur_sigma`` (an upper bound on ``aug.blur_sigma``), nothing reads the device: every stage runs on
    every view and the blur kernels are sized from the bound."""
    widest = None if max_blur_sigma is None else max_blur_radius(max_blur_sigma, out_size, out_size)
    n, canvas = image_index.shape[0], images.shape[-1]
    out = torch.empty(n, 3, out_size, out_size, dtype=torch.uint8, device=images.device)
    budget = CHUNK_ELEMENTS["cpu" if images.device.type == "cpu" else "other"]
    step = max(1, budget // (3 * max(canvas, out_size) ** 2))
    for first in range(0, n, step):
        part = slice(first, first + step)
        x = crop_resize(images, image_index[part], boxes[part], out_size)  # (n, 3, S, S) in [0, 255]
        if aug is not None:
            x = flip(x, aug.flip[part])
            x = color_jitter(x, aug.brightness[part], aug.contrast[part], aug.saturation[part], aug.hue[part], 255.0,
                             skip_unshifted=max_blur_sigma is None)
            x = grayscale(x, aug.grayscale[part])
            x = gaussian_blur(x, aug.blur_sigma[part], widest)
        out[part] = to_uint8(x)
    return out
