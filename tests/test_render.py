"""The view renderer against a per-sample torchvision (and PIL) reference, on every device and backend.

PSNR bounds, in dB on uint8 pixels:

- 45 where the geometry is the same as the reference's (the box is the whole canvas, or the reference is PIL's
  ``resize(box=...)``, which samples the same points with the same triangle filter): the renderer computes the very
  same filter in float32 and rounds once, so pixels differ by at most a rounding step; every pixel off by one
  level would still give 48.1 dB.
- 45 on the interior and 30 on the whole frame for boxes inside the canvas compared with ``resized_crop``: the
  renderer lets pixels just outside the box feed the edge outputs (as PIL does), ``resized_crop`` clamps at the
  crop, so only a border as wide as the filter's reach differs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import math
import os
import re
import shutil
import signal
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from view_env import render
from view_env.render import ViewAug, blur_kernel_size, native, render_views

EXACT_DB = 45.0
BORDER_DB = 30.0

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")),
]
BACKENDS = ["auto", "torch"]


def smooth_bank(num_images: int, canvas: int, seed: int = 0) -> torch.Tensor:
    """``uint8 [P, 3, C, C]``: smooth colour fields with hard-edged rectangles and mild noise, like photos."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(num_images, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(low, size=(canvas, canvas), mode="bicubic", align_corners=False)
    images += 0.05 * torch.randn(num_images, 3, canvas, canvas, generator=generator)
    for image in images:
        for _ in range(4):
            x0, y0 = torch.randint(0, canvas - canvas // 4, (2,), generator=generator).tolist()
            side = int(torch.randint(2, canvas // 3, (1,), generator=generator))
            image[:, y0 : y0 + side, x0 : x0 + side] = torch.rand(3, 1, 1, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def random_aug(n: int, seed: int = 0, device: str = "cpu") -> ViewAug:
    """Every augmentation on a random subset, over its whole range."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) < p

    aug = ViewAug(
        flip=coin(0.5),
        brightness=uniform(0.5, 1.6),
        contrast=uniform(0.5, 1.6),
        saturation=uniform(0.0, 2.0),
        hue=torch.where(coin(0.8), uniform(-0.5, 0.5), 0.0),
        grayscale=coin(0.3),
        blur_sigma=torch.where(coin(0.5), uniform(0.1, 2.5), 0.0),
    )
    return ViewAug(**{f.name: getattr(aug, f.name).to(device) for f in dataclasses.fields(aug)})


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def reference_view(
    image: torch.Tensor, box: torch.Tensor, size: int, aug: ViewAug | None = None, i: int = 0
) -> torch.Tensor:
    """One view with torchvision.transforms.v2.functional on float32 in [0, 1]; ``box`` on whole canvas pixels."""
    canvas = image.shape[-1]
    left, top, right, bottom = (round(v) for v in (box.double() * canvas).tolist())
    x = TF.resized_crop(image.cpu().float() / 255, top, left, bottom - top, right - left, [size, size], antialias=True)
    if aug is not None:
        if aug.flip[i]:
            x = TF.horizontal_flip(x)
        x = TF.adjust_brightness(x, float(aug.brightness[i]))
        x = TF.adjust_contrast(x, float(aug.contrast[i]))
        x = TF.adjust_saturation(x, float(aug.saturation[i]))
        x = TF.adjust_hue(x, float(aug.hue[i]))
        if aug.grayscale[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        sigma = float(aug.blur_sigma[i])
        if sigma > 0:
            k = min(int(blur_kernel_size(aug.blur_sigma[i : i + 1].cpu())[0]), 2 * size - 1)
            x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
    return to_uint8(x)


def pixel_boxes(boxes_px: list[tuple[int, int, int, int]], canvas: int, device: str) -> torch.Tensor:
    return (torch.tensor(boxes_px, dtype=torch.float32) / canvas).to(device)


@pytest.fixture(scope="module")
def bank() -> torch.Tensor:
    return smooth_bank(4, 128)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize(
    ("canvas", "box_px", "size", "interior"),
    [
        (128, (0, 0, 128, 128), 32, 0),  # 4x zoom-out of the whole canvas
        (128, (0, 0, 128, 128), 16, 0),  # 8x
        (128, (0, 0, 128, 128), 24, 0),  # 5.33x, not a whole factor
        (16, (0, 0, 16, 16), 64, 0),  # 4x zoom-in of the whole canvas
        (128, (32, 16, 96, 80), 64, 0),  # a crop at scale 1: a copy of those pixels
        (128, (16, 16, 112, 112), 24, 2),  # 4x zoom-out inside the canvas
        (128, (0, 32, 128, 96), 8, 2),  # 16x zoom-out of a wide box
        (128, (60, 60, 64, 64), 64, 9),  # 16x zoom-in on 4 canvas pixels
    ],
)
def test_crop_resize_matches_torchvision(
    device: str, backend: str, canvas: int, box_px: tuple[int, int, int, int], size: int, interior: int
) -> None:
    images = smooth_bank(3, canvas).to(device)
    index = torch.tensor([0, 2, 1], device=device)
    boxes = pixel_boxes([box_px] * 3, canvas, device)
    out = render_views(images, index, boxes, size, backend=backend)
    assert torch.equal(out, render.crop_resize(images, index, boxes, size, backend=backend))
    reference = torch.stack([reference_view(images[k], boxes[i], size) for i, k in enumerate(index.tolist())])
    out = out.cpu()
    if interior == 0:
        assert psnr(out, reference) >= EXACT_DB
    else:
        # The edge outputs see pixels outside the box (PIL's box semantics); resized_crop clamps at the crop.
        inside = (..., slice(interior, -interior), slice(interior, -interior))
        assert psnr(out[inside], reference[inside]) >= EXACT_DB
        assert psnr(out, reference) >= BORDER_DB


def test_fractional_boxes_match_pil_box_resize(device: str, backend: str, bank: torch.Tensor) -> None:
    """Boxes off the pixel grid, zoomed in and out, against ``PIL.Image.resize(box=...)`` (the same sampling)."""
    generator = torch.Generator().manual_seed(1)
    n, canvas = 12, bank.shape[-1]
    corner = torch.rand(n, 2, generator=generator) * 0.6
    sides = 0.02 + torch.rand(n, 2, generator=generator) * 0.38  # 2.5 to 51 canvas pixels
    boxes = torch.cat([corner, corner + sides], 1)
    index = torch.arange(n) % bank.shape[0]
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in bank]
    for size in (16, 48):
        out = render_views(bank.to(device), index.to(device), boxes.to(device), size, backend=backend).cpu()
        for i in range(n):
            box = tuple((boxes[i] * canvas).tolist())
            resized = pil[index[i]].resize((size, size), Image.Resampling.BILINEAR, box=box)
            reference = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
            assert psnr(out[i], reference) >= EXACT_DB, (size, boxes[i].tolist())


def test_identity_box_and_aug_is_plain_resize(device: str, backend: str, bank: torch.Tensor) -> None:
    images = bank.to(device)
    index = torch.tensor([3, 0, 1], device=device)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3, device=device)
    aug = ViewAug.identity(3, device)
    out = render_views(images, index, boxes, 40, aug, backend=backend)
    reference = to_uint8(TF.resize(bank[index.cpu()].float() / 255, [40, 40], antialias=True))
    assert psnr(out.cpu(), reference) >= EXACT_DB
    assert torch.equal(out, render_views(images, index, boxes, 40, backend=backend))
    # At the canvas size the view is the canvas itself.
    assert torch.equal(render_views(images, index, boxes, images.shape[-1], aug, backend=backend), images[index])


# ----------------------------------------------------------------------------------------------------------------
# Augmentations


def test_augmentations_match_torchvision(device: str, backend: str, bank: torch.Tensor) -> None:
    """Whole-canvas boxes (exact geometry) with random flip, colour jitter, grayscale and blur."""
    n = 24
    images = bank.to(device)
    index = (torch.arange(n) % bank.shape[0]).to(device)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * n, device=device)
    aug = random_aug(n, seed=2, device=device)
    out = render_views(images, index, boxes, 32, aug, backend=backend).cpu()
    for i, k in enumerate(index.tolist()):
        reference = reference_view(bank[k], boxes[i], 32, aug, i)
        assert psnr(out[i], reference) >= EXACT_DB, {
            f.name: getattr(aug, f.name)[i].item() for f in dataclasses.fields(aug)
        }


def test_each_augmentation_alone(device: str, backend: str, bank: torch.Tensor) -> None:
    images = bank[:1].to(device)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    boxes = torch.tensor([[0.25, 0.0, 0.75, 0.5]], device=device)
    plain = render_views(images, index, boxes, 32, backend=backend)
    identity = ViewAug.identity(1, device)
    settings = {
        "flip": torch.tensor([True]),
        "brightness": torch.tensor([1.4]),
        "contrast": torch.tensor([0.5]),
        "saturation": torch.tensor([0.2]),
        "hue": torch.tensor([-0.3]),
        "grayscale": torch.tensor([True]),
        "blur_sigma": torch.tensor([1.2]),
    }
    for name, value in settings.items():
        aug = dataclasses.replace(identity, **{name: value.to(device)})
        out = render_views(images, index, boxes, 32, aug, backend=backend)
        reference = reference_view(bank[0], boxes[0], 32, aug)
        assert psnr(out.cpu(), reference) >= EXACT_DB, name
        assert not torch.equal(out, plain), f"{name} changed nothing"
    flipped = dataclasses.replace(identity, flip=torch.tensor([True], device=device))
    assert torch.equal(render_views(images, index, boxes, 32, flipped, backend=backend), plain.flip(-1))


def test_public_kernels_match_torchvision(device: str, bank: torch.Tensor) -> None:
    n = 6
    views = TF.resize(bank, [24, 24], antialias=True).repeat(2, 1, 1, 1)[:n]  # (6, 3, 24, 24) uint8
    aug = random_aug(n, seed=3)
    on = {f.name: getattr(aug, f.name).to(device) for f in dataclasses.fields(aug)}
    for dtype in (torch.uint8, torch.float32):
        x = (views if dtype == torch.uint8 else views.float() / 255).to(device)
        outputs = {
            "flip": render.horizontal_flip(x, on["flip"]),
            "jitter": render.color_jitter(x, on["brightness"], on["contrast"], on["saturation"], on["hue"]),
            "gray": render.grayscale(x, on["grayscale"]),
            "blur": render.gaussian_blur(x, on["blur_sigma"]),
        }
        for name, out in outputs.items():
            assert out.dtype == dtype and out.device == x.device and out.shape == x.shape, name
            for i in range(n):
                ref = views[i].float() / 255
                if name == "flip" and aug.flip[i]:
                    ref = TF.horizontal_flip(ref)
                elif name == "jitter":
                    ref = TF.adjust_brightness(ref, float(aug.brightness[i]))
                    ref = TF.adjust_contrast(ref, float(aug.contrast[i]))
                    ref = TF.adjust_saturation(ref, float(aug.saturation[i]))
                    ref = TF.adjust_hue(ref, float(aug.hue[i]))
                elif name == "gray" and aug.grayscale[i]:
                    ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
                elif name == "blur" and aug.blur_sigma[i] > 0:
                    k = int(blur_kernel_size(aug.blur_sigma[i : i + 1])[0])
                    ref = TF.gaussian_blur(ref, [k, k], [float(aug.blur_sigma[i])] * 2)
                got = out[i].cpu() if dtype == torch.uint8 else to_uint8(out[i].cpu())
                assert psnr(got, to_uint8(ref)) >= EXACT_DB, (name, dtype, i)


def test_blur_kernel_size_follows_torchvision_default_sigma() -> None:
    sigma = torch.tensor([0.0, 0.1, 0.8, 1.0, 1.1, 2.0, 3.5, 3.8])
    assert blur_kernel_size(sigma).tolist() == [1, 3, 3, 5, 5, 11, 21, 23]
    # torchvision's default sigma for each odd k maps back to k.
    k = torch.arange(3, 41, 2)
    assert torch.equal(blur_kernel_size(0.15 * k.float() + 0.35), k)


# ----------------------------------------------------------------------------------------------------------------
# The test battery of a kernel: batched vs unbatched, empty batch, no in-place change, dtype and device kept.


def test_batched_matches_unbatched(device: str, backend: str, bank: torch.Tensor) -> None:
    n = 10
    generator = torch.Generator().manual_seed(4)
    corner = torch.rand(n, 2, generator=generator) * 0.5
    boxes = torch.cat([corner, corner + 0.05 + torch.rand(n, 2, generator=generator) * 0.45], 1).to(device)
    index = torch.randint(0, bank.shape[0], (n,), generator=generator).to(device)
    aug = random_aug(n, seed=5, device=device)
    images = bank.to(device)
    batched = render_views(images, index, boxes, 24, aug, backend=backend)
    for i in range(n):
        one = ViewAug(**{f.name: getattr(aug, f.name)[i : i + 1] for f in dataclasses.fields(aug)})
        single = render_views(images, index[i : i + 1], boxes[i : i + 1], 24, one, backend=backend)
        # Matmuls of different batch sizes may round differently; the compiled kernel is exact.
        assert (single[0].int() - batched[i].int()).abs().max() <= 1


def test_empty_batch(device: str, backend: str, bank: torch.Tensor) -> None:
    images = bank.to(device)
    index = torch.zeros(0, dtype=torch.int64, device=device)
    boxes = torch.zeros(0, 4, device=device)
    for out in (
        render_views(images, index, boxes, 24, ViewAug.identity(0, device), backend=backend),
        render_views(images, index, boxes, 24, backend=backend),
        render.crop_resize(images, index, boxes, 24, backend=backend),
    ):
        assert out.shape == (0, 3, 24, 24) and out.dtype == torch.uint8 and out.device == images.device
    views = torch.zeros(0, 3, 8, 8, dtype=torch.uint8, device=device)
    none = torch.zeros(0, device=device)
    off = torch.zeros(0, dtype=torch.bool, device=device)
    assert render.color_jitter(views, none, none, none, none).shape == (0, 3, 8, 8)
    assert render.gaussian_blur(views, none).shape == (0, 3, 8, 8)
    assert render.grayscale(views, off).shape == (0, 3, 8, 8)
    assert render.horizontal_flip(views, off).shape == (0, 3, 8, 8)


def test_inputs_unchanged_and_dtype_device_kept(device: str, backend: str, bank: torch.Tensor) -> None:
    n = 6
    images = bank.to(device)
    index = torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9]] * n, device=device)
    aug = random_aug(n, seed=6, device=device)
    before = [images.clone(), index.clone(), boxes.clone()] + [
        getattr(aug, f.name).clone() for f in dataclasses.fields(aug)
    ]
    out = render_views(images, index, boxes, 16, aug, backend=backend)
    views = out.clone()
    render.color_jitter(views, aug.brightness, aug.contrast, aug.saturation, aug.hue)
    render.gaussian_blur(views, aug.blur_sigma)
    render.grayscale(views, aug.grayscale)
    render.horizontal_flip(views, aug.flip)
    after = [images, index, boxes] + [getattr(aug, f.name) for f in dataclasses.fields(aug)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(views, out)
    assert out.dtype == torch.uint8 and out.device == images.device and out.shape == (n, 3, 16, 16)


def test_non_contiguous_bank(device: str, backend: str, bank: torch.Tensor) -> None:
    images = bank.to(device).transpose(2, 3)  # a view with other strides
    index = torch.tensor([1, 2], device=device)
    boxes = torch.tensor([[0.0, 0.1, 0.5, 0.8], [0.3, 0.3, 1.0, 1.0]], device=device)
    assert torch.equal(
        render_views(images, index, boxes, 20, backend=backend),
        render_views(images.contiguous(), index, boxes, 20, backend=backend),
    )


# ----------------------------------------------------------------------------------------------------------------
# Backends


def test_backends_agree(bank: torch.Tensor) -> None:
    if not render.native_backend_available():
        pytest.skip(f"the compiled CPU kernel is unavailable here: {render.native.KERNEL.status}")
    n = 64
    generator = torch.Generator().manual_seed(7)
    corner = torch.rand(n, 2, generator=generator) * 0.7
    boxes = torch.cat([corner, corner + 0.01 + torch.rand(n, 2, generator=generator) * 0.29], 1)
    boxes[: n // 4] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    index = torch.randint(0, bank.shape[0], (n,), generator=generator)
    aug = random_aug(n, seed=8)
    for size in (8, 33, 64):
        native = render_views(bank, index, boxes, size, aug, backend="native")
        batched_torch = render_views(bank, index, boxes, size, aug, backend="torch")
        assert (native.int() - batched_torch.int()).abs().max() <= 1
        plain = render.crop_resize(bank, index, boxes, size, backend="native")
        assert (plain.int() - render.crop_resize(bank, index, boxes, size, backend="torch").int()).abs().max() <= 1


def test_unavailable_compiler_falls_back_to_torch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bank: torch.Tensor
) -> None:
    index = torch.tensor([0, 1])
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.6]])
    expected = render_views(bank, index, boxes, 16, backend="torch")
    monkeypatch.delenv("VIEW_ENV_NATIVE", raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("VIEW_ENV_CACHE", str(tmp_path))
    render.native.KERNEL.reset()
    try:
        with pytest.warns(RuntimeWarning, match="compiled CPU renderer is unavailable"):
            assert not render.native_backend_available()
        assert torch.equal(render_views(bank, index, boxes, 16), expected)
        with pytest.raises(RuntimeError, match="backend='native' is unavailable"):
            render_views(bank, index, boxes, 16, backend="native")
    finally:
        monkeypatch.undo()
        render.native.KERNEL.reset()


def test_native_backend_is_cpu_only() -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="CPU only"):
        render_views(
            images,
            torch.zeros(1, dtype=torch.int64, device="cuda"),
            torch.tensor([[0, 0, 1.0, 1]], device="cuda"),
            8,
            backend="native",
        )


# ----------------------------------------------------------------------------------------------------------------
# The native kernel: its source file, its C signature, its threads

#: What each C parameter type of view_env_render is declared as in Python: ctypes type and tensor dtypes.
C_TYPES: dict[str, tuple[type, tuple[torch.dtype, ...]]] = {
    "int64_t": (ctypes.c_int64, ()),
    "const uint8_t*": (ctypes.c_void_p, (torch.uint8, torch.bool)),
    "const int64_t*": (ctypes.c_void_p, (torch.int64,)),
    "const float*": (ctypes.c_void_p, (torch.float32,)),
    "uint8_t*": (ctypes.c_void_p, (torch.uint8,)),
}


def _require_native() -> None:
    if not render.native_backend_available():
        pytest.skip(f"the compiled CPU kernel is unavailable here: {render.native.KERNEL.status}")


def _render_threads() -> set[str]:
    """Thread ids of the native kernel's workers (they name themselves ``view_env-render``)."""
    tasks = Path("/proc/self/task")
    named = set()
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() == "view_env-render":
                named.add(task.name)
        except OSError:  # the thread ended meanwhile
            continue
    return named


def _process_threads() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_native_source_is_package_data() -> None:
    source = resources.files("view_env.render").joinpath(native.SOURCE)
    assert source.is_file()
    assert 'extern "C" int view_env_render(' in native.source_text()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["view_env.render"]
    assert any(fnmatch.fnmatch(native.SOURCE, pattern) for pattern in patterns)  # so that a wheel ships it


def test_native_kernel_builds_from_the_source_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bank: torch.Tensor
) -> None:
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")):
        pytest.skip("no C++ compiler here (looked for $CXX, g++, clang++, c++)")
    monkeypatch.delenv("VIEW_ENV_NATIVE", raising=False)
    monkeypatch.setenv("VIEW_ENV_CACHE", str(tmp_path))
    kernel = native.NativeKernel()  # a fresh one: the process-wide KERNEL keeps its library
    assert kernel.status == "not tried yet"
    library = kernel.library()
    assert library is not None, kernel.status
    assert kernel.status == "available"
    built = list((tmp_path / "native").glob("render-*.so"))
    assert len(built) == 1 and Path(library._name) == built[0]
    assert kernel.library() is library  # built once
    index, boxes = torch.tensor([0, 3]), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.7, 0.9]])
    aug = random_aug(2, seed=3)
    expected = render_views(bank, index, boxes, 24, aug, backend="torch")
    assert (kernel.render(bank, index, boxes, 24, aug).int() - expected.int()).abs().max() <= 1


def test_signature_table_matches_the_cpp_declaration() -> None:
    declaration = re.search(r'extern "C" int view_env_render\(([^)]*)\)', native.source_text())
    assert declaration is not None
    parameters = [" ".join(p.split()) for p in declaration.group(1).split(",")]
    declared = [re.fullmatch(r"(.+?\*?)\s*(\w+)", p).groups() for p in parameters]  # [(C type, name)]
    assert [name for _, name in declared] == [name for name, _, _ in native.RENDER_PARAMETERS]
    for (c_type, name), (_, ctype, dtype) in zip(declared, native.RENDER_PARAMETERS, strict=True):
        expected_ctype, dtypes = C_TYPES[c_type.replace(" *", "*")]
        assert ctype is expected_ctype, name
        assert (dtype in dtypes) if dtypes else dtype is None, name
    _require_native()
    function = render.native.KERNEL.library().view_env_render
    assert function.argtypes == [ctype for _, ctype, _ in native.RENDER_PARAMETERS]
    assert function.restype is ctypes.c_int


def test_native_threads_persist_and_follow_torch_num_threads(bank: torch.Tensor) -> None:
    _require_native()
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to count threads")
    n = 12
    generator = torch.Generator().manual_seed(5)
    corner = torch.rand(n, 2, generator=generator) * 0.6
    boxes = torch.cat([corner, corner + 0.05 + torch.rand(n, 2, generator=generator) * 0.35], 1)
    index, aug = torch.randint(0, bank.shape[0], (n,), generator=generator), random_aug(n, seed=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = render_views(bank, index, boxes, 32, aug, backend="native")
        others = _render_threads()  # workers of other copies of the library, e.g. one built into a temporary cache
        torch.set_num_threads(3)
        assert torch.equal(render_views(bank, index, boxes, 32, aug, backend="native"), expected)
        workers, threads = _render_threads() - others, _process_threads()
        assert len(workers) == 2  # the caller renders too
        for _ in range(50):
            assert torch.equal(render_views(bank, index, boxes, 32, aug, backend="native"), expected)
        assert _render_threads() - others == workers  # the same threads, not new ones per call
        assert _process_threads() <= threads
        for num_threads, expected_workers in ((1, 0), (4, 3), (2, 1)):
            torch.set_num_threads(num_threads)
            assert torch.equal(render_views(bank, index, boxes, 32, aug, backend="native"), expected)
            deadline = time.monotonic() + 5.0  # a joined thread may linger in /proc for a moment
            while len(_render_threads() - others) != expected_workers and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(_render_threads() - others) == expected_workers
    finally:
        torch.set_num_threads(before)


def test_native_kernel_renders_in_a_forked_child(bank: torch.Tensor) -> None:
    """A child made by fork() has the parent's pool object but not its threads: it must start its own."""
    _require_native()
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    index, boxes = torch.tensor([0, 1, 2, 3]), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)
    aug = random_aug(4, seed=9)
    expected = render_views(bank, index, boxes, 20, aug, backend="native")  # the parent's pool is running
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a multi-threaded process
        pid = os.fork()
    if pid == 0:
        ok = torch.equal(render_views(bank, index, boxes, 20, aug, backend="native"), expected)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60.0
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("rendering in a forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the forked child rendered different views"


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def _good() -> dict[str, object]:
    return {
        "images": torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
        "image_index": torch.tensor([0, 3]),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.5, 0.9]]),
        "out_size": 8,
        "aug": ViewAug.identity(2),
    }


def _with_aug(**fields: torch.Tensor) -> ViewAug:
    return dataclasses.replace(ViewAug.identity(2), **fields)


BAD_INPUTS = [
    ("images", np.zeros((4, 3, 16, 16), np.uint8), TypeError, "images must be a uint8 torch.Tensor"),
    ("images", torch.zeros(4, 3, 16, 16), TypeError, "images must have dtype torch.uint8, got torch.float32"),
    ("images", torch.zeros(4, 3, 16, 12, dtype=torch.uint8), ValueError, r"\[P, 3, C, C\].*\[4, 3, 16, 12\]"),
    ("images", torch.zeros(3, 16, 16, dtype=torch.uint8), ValueError, r"got \[3, 16, 16\]"),
    ("image_index", torch.tensor([0, 3], dtype=torch.int32), TypeError, "image_index must have dtype torch.int64"),
    ("image_index", torch.tensor([[0, 3]]), ValueError, r"image_index must have shape \[N\], got \[1, 2\]"),
    ("image_index", torch.tensor([0, 4]), IndexError, r"holds 4.*\[0, 4\)"),
    ("image_index", torch.tensor([-1, 0]), IndexError, "holds -1"),
    ("boxes", torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, dtype=torch.float64), TypeError, "boxes must have dtype"),
    ("boxes", torch.zeros(2, 3), ValueError, r"boxes must have shape \[2, 4\], got \[2, 3\]"),
    ("boxes", torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3), ValueError, r"shape \[2, 4\], got \[3, 4\]"),
    ("boxes", torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, float("nan"), 0.5, 0.9]]), ValueError, r"boxes\[1\]"),
    ("boxes", torch.tensor([[0.5, 0.0, 0.5, 1.0], [0.2, 0.3, 0.5, 0.9]]), ValueError, r"boxes\[0\].*x1 > x0"),
    ("boxes", torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.5, 1.5]]), ValueError, r"boxes\[1\].*\[0, 1\]"),
    ("out_size", 0, ValueError, "out_size must be >= 1, got 0"),
    ("out_size", 8.0, TypeError, "out_size must be an int"),
    ("out_size", True, TypeError, "out_size must be an int"),
    ("aug", {"flip": True}, TypeError, "aug must be a ViewAug"),
    ("aug", _with_aug(hue=torch.tensor([0.0, 0.7])), ValueError, r"aug.hue\[1\] = 0.7.*\[-0.5, 0.5\]"),
    ("aug", _with_aug(brightness=torch.tensor([-0.5, 1.0])), ValueError, r"aug.brightness\[0\] = -0.5"),
    ("aug", _with_aug(contrast=torch.tensor([1.0, float("inf")])), ValueError, r"aug.contrast\[1\] = inf"),
    ("aug", _with_aug(blur_sigma=torch.tensor([float("nan"), 0.0])), ValueError, r"aug.blur_sigma\[0\] = nan"),
    ("aug", _with_aug(flip=torch.tensor([1.0, 0.0])), TypeError, "aug.flip must have dtype torch.bool"),
    ("aug", _with_aug(saturation=torch.ones(3)), ValueError, r"aug.saturation must have shape \[2\], got \[3\]"),
    ("backend", "gpu", ValueError, "backend must be one of"),
]


@pytest.mark.parametrize(
    ("name", "value", "error", "match"), BAD_INPUTS, ids=[f"{i}-{case[0]}" for i, case in enumerate(BAD_INPUTS)]
)
def test_bad_input_raises(name: str, value: object, error: type[Exception], match: str) -> None:
    arguments = _good()
    arguments[name] = value
    with pytest.raises(error, match=match):
        render_views(**arguments)


def test_bad_kernel_input_raises() -> None:
    views = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    ones = torch.ones(2)
    with pytest.raises(TypeError, match="views must be uint8.*got torch.int32"):
        render.color_jitter(views.int(), ones, ones, ones, ones * 0)
    with pytest.raises(ValueError, match=r"views must have shape \[N, 3, H, W\], got \[2, 4, 8, 8\]"):
        render.gaussian_blur(torch.zeros(2, 4, 8, 8), ones)
    with pytest.raises(ValueError, match=r"hue\[0\] = 0.6"):
        render.color_jitter(views, ones, ones, ones, torch.tensor([0.6, 0.0]))
    with pytest.raises(ValueError, match=r"mask must have shape \[2\]"):
        render.grayscale(views, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"sigma\[1\] = -1 is out of range"):
        render.gaussian_blur(views, torch.tensor([0.0, -1.0]))
