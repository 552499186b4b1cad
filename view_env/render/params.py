"""The per-view parameters both backends take: :class:`ViewAug` and the Gaussian blur's kernel size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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


def blur_kernel_size(sigma: torch.Tensor) -> torch.Tensor:
    """Odd Gaussian kernel size for each ``sigma`` (``float32 [N]``, output pixels); ``int64 [N]``.

    torchvision's ``GaussianBlur`` pairs a kernel size ``k`` with the default sigma ``0.15 k + 0.35``; this is the
    smallest odd ``k >= 3`` whose default sigma reaches ``sigma`` (``sigma`` 1 -> 5, 2 -> 11, 3.5 -> 21), and 1
    (no blur) for ``sigma == 0``. :func:`view_env.render.gaussian_blur` further caps the radius at ``S - 1``
    (reflect padding).
    """
    size = torch.ceil((sigma - 0.35) / 0.15 - 1e-3).to(torch.int64)
    size = (size + (1 - size % 2)).clamp(min=3)  # odd, at least 3
    return torch.where(sigma > 0, size, torch.ones_like(size))


def max_blur_radius(max_sigma: float, height: int, width: int) -> int:
    """The largest :func:`blur_radius` of any sigma up to ``max_sigma``, computed on the host (no device read)."""
    if max_sigma <= 0:
        return 0
    size = max(math.ceil((max_sigma - 0.35) / 0.15 - 1e-3), 3)
    size += 1 - size % 2
    return min((size - 1) // 2, max(min(height, width) - 1, 0))


def blur_radius(sigma: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``int64 [N]`` kernel radius ``(blur_kernel_size - 1) / 2``, capped so that reflect padding stays inside."""
    return ((blur_kernel_size(sigma) - 1) // 2).clamp_(max=max(min(height, width) - 1, 0))
