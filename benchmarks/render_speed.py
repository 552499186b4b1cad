"""Micro-benchmark: the batched view renderer against a per-image PIL loop and stock torch kernels, on CPU.

Each method renders N views of S px with random boxes (the whole image to 5% of its area, aspect 1/2 to 2) from
a bank of C px canvases, all with random colour jitter.

- ``PIL loop``: what a per-environment implementation does for each view: crop + resize (``Image.resize(box=...)``,
  antialiased bilinear), flip, ImageEnhance brightness / contrast / colour, hue through HSV, grayscale and blur.
- ``PIL b/c/s``: the same loop stopped after the ImageEnhance steps (an environment without hue, grayscale, blur).
- ``render``: :func:`view_env.render.render_views` with the full jitter, through the compiled CPU kernel
  (``native``) and the batched torch path (``torch``).
- ``grid_sample`` (bilinear, no antialias) and ``roi_align`` (adaptive sampling, which averages): crop + resize
  alone, from a float32 copy of the bank made beforehand, so lower bounds for those routes.

Times are the best of several calls, all measured in the same run.

Run:  python benchmarks/render_speed.py                      (N in 1 16 256 1024, S in 64 224; about two minutes)
      python benchmarks/render_speed.py --batches 256 --sizes 64 --no-stock
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF1
from PIL import Image, ImageEnhance, ImageFilter
from torchvision.ops import roi_align

from agents import cli
from agents.cli import check, option
from view_env import default_canvas_size
from view_env.render import ViewAug, native_backend_available, render_views


def random_views(n: int, num_images: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, ViewAug]:
    """``int64 [N]`` indices, ``float32 [N, 4]`` boxes and a random :class:`ViewAug` like an environment's."""
    index = torch.randint(0, num_images, (n,), generator=generator)
    area = torch.exp(torch.empty(n).uniform_(np.log(0.05), 0.0, generator=generator))
    aspect = torch.exp(torch.empty(n).uniform_(np.log(0.5), np.log(2.0), generator=generator))
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    x0 = torch.rand(n, generator=generator) * (1 - width)
    y0 = torch.rand(n, generator=generator) * (1 - height)
    boxes = torch.stack([x0, y0, x0 + width, y0 + height], 1)
    boxes[torch.rand(n, generator=generator) < 0.25] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # whole image

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) < p

    aug = ViewAug(
        flip=coin(0.5),
        brightness=uniform(0.6, 1.4),
        contrast=uniform(0.6, 1.4),
        saturation=uniform(0.6, 1.4),
        hue=uniform(-0.1, 0.1),
        grayscale=coin(0.2),
        blur_sigma=torch.where(coin(0.2), uniform(0.1, 2.0), 0.0),
    )
    return index, boxes, aug


def pil_loop(
    pil_images: list[Image.Image], index: torch.Tensor, boxes: torch.Tensor, size: int, aug: ViewAug, full: bool = True
) -> torch.Tensor:
    """The per-image baseline: one PIL pipeline per view, stacked into ``uint8 [N, 3, S, S]``. ``full=False``
    stops after ImageEnhance brightness / contrast / colour (no hue, grayscale or blur)."""
    canvas = pil_images[0].width
    out = np.empty((len(index), size, size, 3), dtype=np.uint8)
    rows = zip(
        index.tolist(),
        (boxes * canvas).tolist(),
        aug.flip.tolist(),
        aug.brightness.tolist(),
        aug.contrast.tolist(),
        aug.saturation.tolist(),
        aug.hue.tolist(),
        aug.grayscale.tolist(),
        aug.blur_sigma.tolist(),
        strict=True,
    )
    for i, (k, box, flip, brightness, contrast, saturation, hue, gray, sigma) in enumerate(rows):
        image = pil_images[k].resize((size, size), Image.Resampling.BILINEAR, box=tuple(box))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(brightness)
        image = ImageEnhance.Contrast(image).enhance(contrast)
        image = ImageEnhance.Color(image).enhance(saturation)
        if full:
            image = TF1.adjust_hue(image, hue)
            if gray:
                image = image.convert("L").convert("RGB")
            if sigma > 0:
                image = image.filter(ImageFilter.GaussianBlur(sigma))
        out[i] = np.asarray(image)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def grid_sample_views(bank_float: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    n = len(index)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = boxes[:, 2] - boxes[:, 0]
    theta[:, 0, 2] = boxes[:, 0] + boxes[:, 2] - 1
    theta[:, 1, 1] = boxes[:, 3] - boxes[:, 1]
    theta[:, 1, 2] = boxes[:, 1] + boxes[:, 3] - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    out = F.grid_sample(bank_float[index], grid, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def roi_align_views(bank_float: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    rois = torch.cat([index[:, None].float(), boxes * bank_float.shape[-1]], 1)
    out = roi_align(bank_float, rois, [size, size], spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def best_seconds(min_time: float, function: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Fastest wall time of ``function(*args, **kwargs)`` over repeats filling ``min_time`` (after a warm-up): as
    with ``timeit``, slower repeats measure other processes and memory reclaim, not the code."""
    function(*args, **kwargs)
    times: list[float] = []
    while len(times) < 50 and (len(times) < 3 or sum(times) < min_time) and sum(times) < 4 * min_time:
        start = time.perf_counter()
        function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    bank: torch.Tensor,
    pil_images: list[Image.Image],
    index: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    aug: ViewAug,
    min_time: float,
    native: bool,
    stock: bool,
) -> dict[str, float]:
    """Seconds per call of every method on the same views."""
    times = {
        "pil": best_seconds(min_time, pil_loop, pil_images, index, boxes, size, aug),
        "pil_bcs": best_seconds(min_time, pil_loop, pil_images, index, boxes, size, aug, full=False),
    }
    if native:
        times["native"] = best_seconds(min_time, render_views, bank, index, boxes, size, aug, backend="native")
    times["torch"] = best_seconds(min_time, render_views, bank, index, boxes, size, aug, backend="torch")
    if stock:
        bank_float = bank.float()
        times["grid"] = best_seconds(min_time, grid_sample_views, bank_float, index, boxes, size)
        times["roi"] = best_seconds(min_time, roi_align_views, bank_float, index, boxes, size)
    return times


@dataclass
class RenderArgs:
    """Arguments of ``benchmarks/render_speed.py``."""

    batches: list[int] = option([1, 16, 256, 1024], "numbers of views N")
    sizes: list[int] = option([64, 224], "view sizes S (canvas: view_env.default_canvas_size, 128 / 256)")
    images: int = option(256, "images in the bank")
    min_time: float = option(0.3, "seconds of repeats per measurement")
    stock: bool = option(True, "also time grid_sample and roi_align (--no-stock skips them)")

    def __post_init__(self) -> None:
        check(min(self.batches) >= 1, "batches", self.batches, "integers >= 1")
        check(min(self.sizes) >= 1, "sizes", self.sizes, "integers >= 1")
        check(self.images >= 1, "images", self.images, "an integer >= 1")
        check(self.min_time > 0, "min_time", self.min_time, "a number of seconds > 0")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(RenderArgs, argv, description=__doc__)

    native = native_backend_available()
    print(
        f"# render_speed: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, compiled kernel {'on' if native else 'unavailable'}"
    )
    print(
        "Times in ms per call (best of repeats). PIL b/c/s stops after ImageEnhance brightness / contrast / colour; "
        "grid_sample and roi_align do crop + resize only. views/s and 'native x' use the best render backend.\n"
    )
    columns = [
        "S",
        "C",
        "N",
        "PIL loop",
        "PIL b/c/s",
        "render native",
        "render torch",
        "grid_sample",
        "roi_align",
        "views/s",
        "native x PIL",
        "native x PIL b/c/s",
        "torch x PIL",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    generator = torch.Generator().manual_seed(0)
    for size in args.sizes:
        canvas = default_canvas_size(size)
        bank = torch.randint(0, 256, (args.images, 3, canvas, canvas), dtype=torch.uint8, generator=generator)
        pil_images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in bank]
        for n in args.batches:
            index, boxes, aug = random_views(n, args.images, generator)
            times = measure(bank, pil_images, index, boxes, size, aug, args.min_time, native, args.stock)
            ms = {key: f"{value * 1e3:.2f}" for key, value in times.items()}
            best = times.get("native", times["torch"])
            row = [
                size,
                canvas,
                n,
                ms["pil"],
                ms["pil_bcs"],
                ms.get("native", "-"),
                ms["torch"],
                ms.get("grid", "-"),
                ms.get("roi", "-"),
                f"{n / best:,.0f}",
                *(f"{times[k] / best:.1f}" for k in ("pil", "pil_bcs")),
                f"{times['pil'] / times['torch']:.1f}",
            ]
            print("| " + " | ".join(str(value) for value in row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
