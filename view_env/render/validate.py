"""Input validation for the renderer: every error names the offending value and what was expected.

The checks cost one device sync when all is well (one ``any()`` over a whole batch); only when something is wrong
do they look for the first bad view to name it.
"""

from __future__ import annotations

import torch

from view_env.render.params import ViewAug

#: Boxes may overshoot ``[0, 1]`` by this much (accumulated float error in the environment's box arithmetic).
BOX_TOLERANCE = 1e-4

#: The values the kernels accept for each float field of :class:`ViewAug`: ``(low, high, what is expected)``.
#: This is the domain of the operations (torchvision's ``adjust_*``: any factor >= 0, a hue shift of at most half a
#: turn either way, any sigma >= 0), not :data:`view_env.AUG_RANGES`, the narrower ranges the environment draws and
#: steps its augmentation state in (a choice of the task, e.g. hue within +-0.15). The renderer serves any caller
#: inside this domain, so the two are separate facts and neither is derived from the other.
KERNEL_DOMAIN: dict[str, tuple[float, float, str]] = {
    "brightness": (0.0, float("inf"), "a factor >= 0"),
    "contrast": (0.0, float("inf"), "a factor >= 0"),
    "saturation": (0.0, float("inf"), "a factor >= 0"),
    "hue": (-0.5, 0.5, "a shift in [-0.5, 0.5]"),
    "blur_sigma": (0.0, float("inf"), "a sigma >= 0 in output pixels"),
}


def check_tensor(
    name: str, value: object, dtype: torch.dtype, shape: tuple[int | str, ...], device: torch.device
) -> torch.Tensor:
    """``value`` if it is a tensor of ``dtype``, ``shape`` (``str`` entries match any size) on ``device``."""
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


def check_out_size(out_size: object) -> int:
    if isinstance(out_size, bool) or not isinstance(out_size, int):
        raise TypeError(f"out_size must be an int (the side S of the square views), got {out_size!r}")
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    return out_size


def check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 torch.Tensor [P, 3, C, C], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] < 1:
        raise ValueError(f"images must have shape [P, 3, C, C] (RGB on a square canvas), got {list(images.shape)}")
    return images


def first_bad(bad: torch.Tensor) -> int | None:
    """Index of the first ``True`` in ``bad`` (``[N]`` bool), or ``None``: a single device sync when all is well."""
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0, 0])


def check_view_inputs(images: object, image_index: object, boxes: object, out_size: object, values: bool = True
                      ) -> int:
    """Validate the geometric inputs of ``crop_resize`` / ``render_views``; return ``N``. ``values=False`` checks
    types, shapes and devices only (nothing is read from the device)."""
    images = check_images(images)
    out_size = check_out_size(out_size)
    device = images.device
    index = check_tensor("image_index", image_index, torch.int64, ("N",), device)
    n = index.shape[0]
    boxes = check_tensor("boxes", boxes, torch.float32, (n, 4), device)
    if n == 0 or not values:
        return n
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
    row = first_bad(~ok)
    if row is not None:
        shown = [float(f"{v:.6g}") for v in boxes[row].tolist()]
        raise ValueError(
            f"boxes[{row}] = {shown} is not a box (x0, y0, x1, y1) in normalised image "
            f"coordinates: expected finite values in [0, 1] with x1 > x0 and y1 > y0"
        )
    return n


def check_factor(name: str, value: object, n: int, device: torch.device, domain: str) -> torch.Tensor:
    """``value``, a ``float32 [n]`` tensor inside ``KERNEL_DOMAIN[domain]``; the error names the first bad entry."""
    low, high, expected = KERNEL_DOMAIN[domain]
    value = check_tensor(name, value, torch.float32, (n,), device)
    if n:
        row = first_bad(~(torch.isfinite(value) & (value >= low) & (value <= high)))
        if row is not None:
            raise ValueError(f"{name}[{row}] = {float(value[row]):.6g} is out of range: expected {expected}")
    return value


def check_aug(aug: object, n: int, device: torch.device, values: bool = True) -> ViewAug:
    if not isinstance(aug, ViewAug):
        raise TypeError(f"aug must be a ViewAug (or None for no augmentation), got {type(aug).__name__}")
    check_tensor("aug.flip", aug.flip, torch.bool, (n,), device)
    check_tensor("aug.grayscale", aug.grayscale, torch.bool, (n,), device)
    for name in KERNEL_DOMAIN:
        check_tensor(f"aug.{name}", getattr(aug, name), torch.float32, (n,), device)
    if n and values:
        # All ranges in one pass and one device sync; the slow path finds and names the first bad value.
        values = torch.stack([getattr(aug, name) for name in KERNEL_DOMAIN])  # (5, N)
        lows, highs = torch.tensor([bounds[:2] for bounds in KERNEL_DOMAIN.values()], device=device).T[..., None]
        if not bool((torch.isfinite(values) & (values >= lows) & (values <= highs)).all()):
            for name in KERNEL_DOMAIN:
                check_factor(f"aug.{name}", getattr(aug, name), n, device, name)
    return aug


def check_views(views: object) -> torch.Tensor:
    if not isinstance(views, torch.Tensor):
        raise TypeError(f"views must be a torch.Tensor [N, 3, H, W], got {type(views).__name__}")
    if views.dtype != torch.uint8 and not views.is_floating_point():
        raise TypeError(f"views must be uint8 (0..255) or floating point (0..1), got {views.dtype}")
    if views.ndim != 4 or views.shape[1] != 3:
        raise ValueError(f"views must have shape [N, 3, H, W], got {list(views.shape)}")
    return views
