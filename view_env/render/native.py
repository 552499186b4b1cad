"""The native backend: the fused C++ kernel of ``native.cpp``, compiled on first use and called through ctypes.

``native.cpp`` ships as package data. The first render on CPU compiles it with ``$CXX`` (else ``g++``, ``clang++``
or ``c++``), tuned for this CPU where the compiler can (``-march=native``) and portable otherwise, into the
view_env cache folder (``$VIEW_ENV_CACHE`` or ``~/.cache/view_env``, subfolder ``native``), under a name that hashes
everything the binary depends on (source, compiler and its version, flags, CPU), so a later process loads it
without compiling. When no compiler works, :data:`KERNEL` says why, warns once, and the renderer falls back to the
torch backend; ``VIEW_ENV_NATIVE=0`` turns the kernel off without a warning.

:data:`RENDER_PARAMETERS` is the one Python copy of the C signature of ``view_env_render``: ctypes' ``argtypes`` and
every call are built from it.

Why C++ and not numba (issue 10 asked to decide by measurement): a numba port of the same per-view pipeline, with
``prange`` over views, rendered the ``benchmarks/render_speed.py`` views 3.6 to 12 times slower than this kernel on
the 2-core machine of commit 6520bc9 (medians), and with ``fastmath`` (which also moves pixels by a level) still 1.2
to 1.4 times slower from 256 views on, against a bar of 10%; so the kernel stays C++.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch

from view_env.data.base import cache_dir
from view_env.render.params import ViewAug, blur_radius

#: The C++ source, a resource of this package.
SOURCE = "native.cpp"
#: The parameters of ``extern "C" int view_env_render(...)`` in ``native.cpp``, in order: name, ctypes type and,
#: for a pointer, the dtype of the contiguous CPU tensor it points into (``None`` for an integer). A null pointer
#: for an augmentation parameter means the identity for all views.
RENDER_PARAMETERS: tuple[tuple[str, type, torch.dtype | None], ...] = (
    ("bank", ctypes.c_void_p, torch.uint8),  # [P, 3, C, C]
    ("canvas", ctypes.c_int64, None),  # C
    ("index", ctypes.c_void_p, torch.int64),  # [N]
    ("boxes", ctypes.c_void_p, torch.float32),  # [N, 4]
    ("n", ctypes.c_int64, None),  # N
    ("size", ctypes.c_int64, None),  # S
    ("flip", ctypes.c_void_p, torch.bool),  # [N]
    ("brightness", ctypes.c_void_p, torch.float32),  # [N]
    ("contrast", ctypes.c_void_p, torch.float32),  # [N]
    ("saturation", ctypes.c_void_p, torch.float32),  # [N]
    ("hue", ctypes.c_void_p, torch.float32),  # [N]
    ("grayscale", ctypes.c_void_p, torch.bool),  # [N]
    ("blur_sigma", ctypes.c_void_p, torch.float32),  # [N]
    ("blur_radius", ctypes.c_void_p, torch.int64),  # [N]
    ("out", ctypes.c_void_p, torch.uint8),  # [N, 3, S, S], written
    ("num_threads", ctypes.c_int64, None),  # threads to render on, the caller's included
)
_PARAMETER_NAMES = frozenset(name for name, _, _ in RENDER_PARAMETERS)

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


def source_text() -> str:
    """The C++ source of the kernel, read from the installed package."""
    return resources.files(__package__).joinpath(SOURCE).read_text(encoding="utf-8")


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(wanted)))


def _compile(source: str, compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile ``source`` to ``target`` (atomically); return an error message, or ``None`` on success."""
    partial = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # unique per writer
    command = [compiler, *flags, "-x", "c++", "-", "-o", str(partial)]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, input=source, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            return f"{' '.join(command)} failed: {result.stderr.strip()[-800:]}"
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{' '.join(command)}: {error}"
    return None


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    library.view_env_render.argtypes = [ctype for _, ctype, _ in RENDER_PARAMETERS]
    library.view_env_render.restype = ctypes.c_int
    return library


def _build() -> tuple[ctypes.CDLL | None, list[str]]:
    """Load the kernel from the cache, compiling it there first if needed: the library, or the errors met."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    if compiler is None:
        return None, ["no C++ compiler found (looked for $CXX, g++, clang++, c++)"]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        version = str(error)
    source, errors = source_text(), []
    for arch in _ARCH_FLAGS:
        flags = (*_COMPILE_FLAGS, *arch)
        key = "\0".join([source, compiler, version, *flags, platform.machine(), _cpu_fingerprint()])
        path = cache_dir() / "native" / f"render-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
        if path.exists():
            try:
                return _load(path), errors
            except OSError as error:
                errors.append(f"cannot load {path}: {error}; rebuilding it")
        error = _compile(source, compiler, flags, path)
        if error is None:
            try:
                return _load(path), errors
            except OSError as load_error:
                error = f"cannot load {path}: {load_error}"
        errors.append(error)
    return None, errors


class NativeKernel:
    """The compiled kernel of this process, with explicit state: not tried yet, loaded, or unavailable (and why).

    The first :meth:`library` call builds or loads it, under a lock so that threads rendering at once build it
    once; later calls return the outcome. :meth:`reset` forgets it (after changing ``CXX``, ``VIEW_ENV_NATIVE`` or
    ``VIEW_ENV_CACHE``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tried = False
        self._library: ctypes.CDLL | None = None
        self._failure = "not tried yet"

    def library(self) -> ctypes.CDLL | None:
        """The loaded kernel, built on first use; ``None`` (with a warning, once) if it can't be."""
        if not self._tried:
            with self._lock:
                if not self._tried:
                    self._library, self._failure = self._first_use()
                    self._tried = True
        return self._library

    def _first_use(self) -> tuple[ctypes.CDLL | None, str]:
        if os.environ.get("VIEW_ENV_NATIVE", "1") == "0":
            return None, "turned off by VIEW_ENV_NATIVE=0"
        library, errors = _build()
        if library is not None:
            return library, "available"
        failure = "; ".join(errors)
        warnings.warn(
            f"view_env.render: the compiled CPU renderer is unavailable ({failure}). Rendering on CPU falls back "
            "to batched torch operations, which are about as slow as a per-image PIL loop. Install g++ or point "
            "CXX at a C++17 compiler; set VIEW_ENV_NATIVE=0 to use the torch path without this warning.",
            RuntimeWarning,
            stacklevel=5,  # the caller of render_views or crop_resize
        )
        return None, failure

    @property
    def status(self) -> str:
        """``"available"``, ``"not tried yet"``, or why the kernel is unavailable."""
        return self._failure

    def reset(self) -> None:
        """Forget the outcome, so that the next use builds or loads the kernel again."""
        with self._lock:
            self._tried, self._library, self._failure = False, None, "not tried yet"

    def render(
        self, images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, out_size: int, aug: ViewAug | None
    ) -> torch.Tensor:
        """The whole pipeline for validated CPU inputs, over ``torch.get_num_threads()`` threads; ``uint8 [N, 3,
        S, S]``. Raises ``RuntimeError`` if the kernel is unavailable, ``MemoryError`` if it ran out of memory."""
        library = self.library()
        if library is None:
            raise RuntimeError(f"the compiled renderer is unavailable: {self.status}")
        n = image_index.shape[0]
        out = torch.empty(n, 3, out_size, out_size, dtype=torch.uint8)
        augmentation: dict[str, torch.Tensor | None] = dict.fromkeys(
            ("flip", "brightness", "contrast", "saturation", "hue", "grayscale", "blur_sigma", "blur_radius")
        )
        if aug is not None:
            augmentation = {name: getattr(aug, name) for name in augmentation if name != "blur_radius"}
            augmentation["blur_radius"] = blur_radius(aug.blur_sigma, out_size, out_size)
        arguments = {"bank": images, "canvas": images.shape[-1], "index": image_index, "boxes": boxes, "n": n}
        arguments |= {"size": out_size, **augmentation, "out": out, "num_threads": torch.get_num_threads()}
        if library.view_env_render(*_c_arguments(arguments)) != 0:
            raise MemoryError(f"the compiled renderer ran out of memory rendering {n} views of {out_size} px")
        return out


def _c_arguments(arguments: dict[str, object]) -> list[object]:
    """``arguments`` (by parameter name) in :data:`RENDER_PARAMETERS` order: tensors as pointers, after checking
    their dtype (a contiguous copy is made where needed; it lives in ``arguments`` until the call returns)."""
    if arguments.keys() != _PARAMETER_NAMES:
        raise TypeError(f"view_env_render takes {sorted(_PARAMETER_NAMES)}, got {sorted(arguments)}")
    values: list[object] = []
    for name, _, dtype in RENDER_PARAMETERS:
        value = arguments[name]
        if dtype is None or value is None:
            values.append(value)
            continue
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or not value.is_cpu:
            raise TypeError(f"view_env_render's {name} must be a {dtype} CPU tensor, got {value!r:.80}")
        arguments[name] = value = value.contiguous()
        values.append(value.data_ptr())
    return values


#: The compiled kernel of this process.
KERNEL = NativeKernel()
