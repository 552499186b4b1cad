"""The ViewTransform MDP as pure functions on batched tensors: parameters, state, reset, step, annotations.

Nothing here holds mutable state or loops over environments (the layout of gymnax): :class:`EnvParams` are frozen
constants, :class:`EnvData` a frozen bundle of the image bank's tensors that the MDP reads, :class:`EnvState` a
frozen bundle of ``[N, ...]`` tensors, and :func:`reset`, :func:`step` and :func:`annotate` map them to new values
without changing their inputs. The environment classes in :mod:`view_env.vector` only validate, call these
functions, render, and keep Gymnasium's autoreset bookkeeping.

Coordinates: a view box is ``(x0, y0, x1, y1)`` in normalised image coordinates (``[0, 1]`` across the original
image, whatever its size). Its *pixel aspect* is ``(x1 - x0) * W / ((y1 - y0) * H)`` for an image of ``W x H``
pixels; a view of pixel aspect 1 renders without distortion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from view_env import rng
from view_env.rng import Key

#: Augmentations in the order of the augmentation state's columns (``info["aug"]``).
AUGMENTATIONS: tuple[str, ...] = ("flip", "brightness", "contrast", "saturation", "hue", "grayscale", "blur")
#: The identity value of each augmentation (the state at reset).
IDENTITY: dict[str, float] = {
    "flip": 0.0, "brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "grayscale": 0.0, "blur": 0.0,
}
#: The value a discrete toggle action switches an augmentation to (and back from).
TOGGLED: dict[str, float] = {
    "flip": 1.0, "brightness": 1.5, "contrast": 1.5, "saturation": 0.25, "hue": 0.15, "grayscale": 1.0, "blur": 1.5,
}
#: The values each augmentation column takes in the environment: :func:`strength_to_aug` maps the strengths
#: ``[-1, 1]`` onto these ranges (flip and grayscale are booleans, 0 or 1).
AUG_RANGES: dict[str, tuple[float, float]] = {
    "flip": (0.0, 1.0), "brightness": (0.5, 1.5), "contrast": (0.5, 1.5), "saturation": (0.0, 2.0),
    "hue": (-0.15, 0.15), "grayscale": (0.0, 1.0), "blur": (0.0, 1.5),
}
#: Augmentations whose column is a boolean (0 or 1).
BOOLEAN_AUGS: tuple[str, ...] = ("flip", "grayscale")
#: Discrete geometric actions, in action-index order; augmentation toggles follow them.
GEOMETRY_ACTIONS: tuple[str, ...] = (
    "noop", "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "wider", "taller",
)
ACTION_MODES = ("discrete", "continuous", "absolute")
#: Search difficulty levels: the :class:`EnvParams` fields each level sets (arguments given beside
#: ``difficulty=`` take precedence). Chosen by measurement (docs/envs.md, "Difficulty levels"): ``"easy"`` and
#: ``"medium"`` have geometric actions only, start from the whole image and search for a large target (at least 10%
#: or 5% of the image) within 4 or 8 steps; ``"hard"`` is the default search.
DIFFICULTIES: dict[str, dict[str, object]] = {
    "easy": {"augmentations": (), "init_scale": (1.0, 1.0), "min_target_area": 0.1, "max_episode_steps": 4},
    "medium": {"augmentations": (), "init_scale": (1.0, 1.0), "min_target_area": 0.05, "max_episode_steps": 8},
    "hard": {},
}
OBS_MODES = ("view", "dict")
#: Laws of the initial view's area (:attr:`EnvParams.init_area`).
INIT_AREAS = ("log-uniform", "uniform")
#: Draws of (area, aspect) the ``"uniform"`` law tries before it shrinks a view to fit, as torchvision's
#: RandomResizedCrop tries 10 before it falls back to a centre crop.
RRC_TRIES = 10


def retry_columns(params: EnvParams) -> int:
    """Uniform draws :func:`initial_boxes` takes as ``retries`` under ``params``: ``2 * (RRC_TRIES - 1)`` for the
    ``"uniform"`` area law (an area and an aspect per further try), 0 for ``"log-uniform"`` (it shrinks the first
    draw to fit, as it always did)."""
    return 2 * (RRC_TRIES - 1) if params.init_area == "uniform" else 0

Task = str | Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EnvParams:
    """Constants of a ViewTransform environment. Every field has a default; see docs/envs.md.

    Attributes:
        obs_size: Side ``S`` of the rendered square view, in pixels.
        max_episode_steps: Episodes are truncated after this many steps; ``None`` never truncates (the single
            environment made by ``gym.make`` leaves truncation to Gymnasium's ``TimeLimit`` wrapper).
        action_mode: ``"discrete"`` (primitive moves and augmentation toggles), ``"continuous"`` (the relative
            box of the new view in the old one's frame) or ``"absolute"`` (the new view's box in image
            coordinates: a jump to any view, e.g. an independent RandomResizedCrop draw).
        obs_mode: ``"view"`` (the image alone) or ``"dict"`` (``view``, ``box``, ``target``).
        augmentations: The enabled augmentations, a subset of :data:`AUGMENTATIONS` in that order.
        min_scale: Smallest view area as a fraction of the image area.
        max_aspect: Largest pixel aspect ratio of a view (and smallest is its inverse).
        pan_fraction: A discrete pan moves the view by this fraction of its own width or height.
        zoom_factor: A discrete zoom scales the view's sides by this factor.
        aspect_factor: A discrete wider/taller scales width and height by this factor in opposite directions.
        max_pan: Continuous ``dx, dy`` in ``[-1, 1]`` move the view by up to this many view widths/heights.
        max_log_scale: Continuous log-scale in ``[-1, 1]`` scales the view's sides by up to ``exp`` of this.
        max_log_aspect: Continuous log-aspect in ``[-1, 1]`` changes the aspect by up to ``exp`` of this.
        init_scale: Range of the initial view's area (fraction of the image), drawn by ``init_area``; ``(1, 1)``
            starts every episode from the whole image.
        init_area: How the initial view's area is drawn in ``init_scale``: ``"log-uniform"`` (default: every
            scale equally often, for the search levels) or ``"uniform"`` (uniform in the area itself, as
            torchvision's ``RandomResizedCrop``, timm's and big_vision's inception crop draw it: the paper's
            views; its mean area over ``(0.05, 1)`` is 0.46 of a square image, against 0.32 log-uniformly).
        init_aspect: Range of the initial view's pixel aspect, drawn log-uniformly.
        init_augment: Begin each episode with every enabled augmentation at a random strength, drawn uniformly in
            ``[-1, 1]`` as a uniform continuous action would (see :func:`strength_to_aug`); ``False`` begins at the
            identity.
        coverage_grid: ``None`` (default): annotations are exact areas (:func:`coverage`); ``G``: measured on a
            ``G x G`` grid of points inside the view, an approximation to ``1 / G**2`` (:func:`grid_coverage`),
            faster only for images with many boxes (about 32 or more per image).
        success_coverage: Search succeeds when the target covers this fraction of the view (or, for targets too
            small to reach it at ``min_scale``, 80% of what they can reach).
        task: The reward: ``"none"`` (reward-free), ``"search"`` (see :func:`task_reward`) or a callable from the
            annotations ``float32 [N, A]`` to rewards ``[N]``.
        target: The search target: ``"random"`` (each episode draws one from its image; needs ``obs_mode="dict"``
            so that the target is observed) or a category index (every episode searches for it, in an image that
            holds it; works with ``obs_mode="view"``). The vector environment also takes a category name.
        min_target_area: Search only: the target is drawn among objects whose box covers at least this fraction of
            the image's area, in an image that holds one (``0``: any object). Larger targets are easier to find.
    """

    obs_size: int = 64
    max_episode_steps: int | None = 16
    action_mode: str = "discrete"
    obs_mode: str = "view"
    augmentations: tuple[str, ...] = AUGMENTATIONS
    min_scale: float = 0.05
    max_aspect: float = 2.0
    pan_fraction: float = 0.25
    zoom_factor: float = 1.25
    aspect_factor: float = 1.25
    max_pan: float = 0.5
    max_log_scale: float = math.log(1.5)
    max_log_aspect: float = math.log(1.5)
    init_scale: tuple[float, float] = (0.25, 1.0)
    init_area: str = "log-uniform"
    init_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    init_augment: bool = False
    coverage_grid: int | None = None
    success_coverage: float = 0.3
    task: Task = "none"
    target: str | int = "random"
    min_target_area: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        need(isinstance(self.obs_size, int) and self.obs_size >= 8, "obs_size", "an integer >= 8 (pixels)")
        need(self.max_episode_steps is None or (isinstance(self.max_episode_steps, int)
                                                and self.max_episode_steps >= 1), "max_episode_steps",
             "an integer >= 1 or None")
        need(self.action_mode in ACTION_MODES, "action_mode", f"one of {ACTION_MODES}")
        need(self.obs_mode in OBS_MODES, "obs_mode", f"one of {OBS_MODES}")
        unknown = [a for a in self.augmentations if a not in AUGMENTATIONS]
        need(not unknown and len(set(self.augmentations)) == len(self.augmentations), "augmentations",
             f"distinct names from {AUGMENTATIONS}")
        object.__setattr__(self, "augmentations", tuple(a for a in AUGMENTATIONS if a in self.augmentations))
        need(0 < self.min_scale <= 1, "min_scale", "a fraction of the image area in (0, 1]")
        need(self.max_aspect >= 1, "max_aspect", "a ratio >= 1")
        need(self.pan_fraction > 0, "pan_fraction", "> 0")
        need(self.zoom_factor > 1, "zoom_factor", "> 1")
        need(self.aspect_factor > 1, "aspect_factor", "> 1")
        need(len(self.init_scale) == 2 and self.min_scale <= self.init_scale[0] <= self.init_scale[1] <= 1,
             "init_scale", f"(low, high) with min_scale={self.min_scale} <= low <= high <= 1")
        need(self.init_area in INIT_AREAS, "init_area", f"one of {INIT_AREAS}")
        need(len(self.init_aspect) == 2 and 0 < self.init_aspect[0] <= self.init_aspect[1], "init_aspect",
             "(low, high) with 0 < low <= high")
        need(isinstance(self.init_augment, bool), "init_augment", "True or False")
        need(self.coverage_grid is None or (isinstance(self.coverage_grid, int) and self.coverage_grid >= 2),
             "coverage_grid", "None (exact) or an integer >= 2")
        need(0 < self.success_coverage <= 1, "success_coverage", "a fraction in (0, 1]")
        need(self.task in ("none", "search") or callable(self.task), "task",
             "'none', 'search' or a callable on the annotation")
        fixed = isinstance(self.target, int) and not isinstance(self.target, bool)
        need(self.target == "random" or (fixed and self.target >= 0), "target",
             "'random' or a category index >= 0 (the vector environment also takes a category name)")
        if fixed and self.task != "search":
            raise ValueError(f"target={self.target!r} is given but task={self.task!r}: a target needs task='search'")
        need(isinstance(self.min_target_area, (int, float)) and 0 <= self.min_target_area < 1, "min_target_area",
             "a fraction of the image area in [0, 1)")
        if self.min_target_area > 0 and self.task != "search":
            raise ValueError(f"min_target_area={self.min_target_area!r} is given but task={self.task!r}: it selects "
                             "search targets, so it needs task='search'")
        if self.task == "search" and self.target == "random" and self.obs_mode != "dict":
            raise ValueError("task='search' with target='random' needs obs_mode='dict', so that the target is part of "
                             f"the observation; got obs_mode={self.obs_mode!r} (or pass a fixed target=, e.g. "
                             "target='circle', for image-only observations)")

    @property
    def num_actions(self) -> int:
        """Size of the discrete action space: the geometric moves, then one toggle per enabled augmentation."""
        return len(GEOMETRY_ACTIONS) + len(self.augmentations)

    @property
    def action_dim(self) -> int:
        """Length of a continuous or absolute action: four box entries (``dx, dy, log-scale, log-aspect``, or
        ``x0, y0, x1, y1``), then one strength per enabled augmentation."""
        return 4 + len(self.augmentations)

    def action_names(self) -> tuple[str, ...]:
        """Name of each discrete action, by index."""
        return GEOMETRY_ACTIONS + tuple(f"toggle_{a}" for a in self.augmentations)


@dataclass(frozen=True)
class EnvData:
    """The image bank's tensors that the MDP reads (``P`` bank slots, ``M`` boxes per image), on one device.

    Attributes:
        sizes: ``int64 [P, 2]`` original ``(height, width)`` of each image.
        boxes: ``float32 [P, M, 4]`` object boxes, normalised ``(x0, y0, x1, y1)``.
        labels: ``int64 [P, M]`` their categories, ``-1`` for padding (which comes last).
        num_categories: ``A``, the length of an annotation vector.
        neighbours: ``int64 [P, 2]`` the slot of each slot's previous and next frame (itself where there is none)
            for the temporal actions of video, or ``None`` without them.
        target_slots: ``int64 [T]`` the slots whose image holds an eligible search target (the fixed
            ``EnvParams.target``, and at least ``EnvParams.min_target_area`` of the image), from which episodes
            draw their image; ``None`` when every image is eligible (a random target of any size).
    """

    sizes: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    num_categories: int
    neighbours: torch.Tensor | None = None
    target_slots: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        """``P``."""
        return self.sizes.shape[0]


@dataclass(frozen=True)
class EnvState:
    """Per-environment state, every field a tensor with leading dimension ``N`` on one device.

    Attributes:
        slot: ``int64 [N]`` image bank slot of the image being viewed.
        box: ``float32 [N, 4]`` view box ``(x0, y0, x1, y1)``, normalised.
        aug: ``float32 [N, 7]`` augmentation state, columns as in :data:`AUGMENTATIONS`.
        step: ``int64 [N]`` steps taken in the current episode.
        episode: ``int64 [N]`` episodes begun by each environment (the random stream's counter).
        target: ``int64 [N]`` search target category, ``-1`` when there is none.
        target_coverage: ``float32 [N]`` coverage of the target that counts as success.
    """

    slot: torch.Tensor
    box: torch.Tensor
    aug: torch.Tensor
    step: torch.Tensor
    episode: torch.Tensor
    target: torch.Tensor
    target_coverage: torch.Tensor

    @classmethod
    def empty(cls, num_envs: int, device: torch.device) -> EnvState:
        """A state of ``num_envs`` environments, all viewing slot 0 in full, to be overwritten by :func:`reset`."""
        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        box = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).repeat(num_envs, 1)
        return cls(zeros(num_envs), box, identity_aug(num_envs, device), zeros(num_envs), zeros(num_envs),
                   zeros(num_envs) - 1, zeros(num_envs, dtype=torch.float32))

    def where(self, mask: torch.Tensor, other: EnvState) -> EnvState:
        """Take ``other``'s rows where ``mask`` (``bool [N]``) holds and keep this state's elsewhere."""
        merged = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            m = mask.view(-1, *([1] * (mine.dim() - 1)))
            merged[f.name] = torch.where(m, theirs, mine)
        return EnvState(**merged)

    def rows(self, index: torch.Tensor) -> EnvState:
        """The state of the environments in ``index`` (``int64 [K]``), a new ``K``-row state."""
        return EnvState(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def put(self, index: torch.Tensor, other: EnvState) -> EnvState:
        """A new state: this one with the rows in ``index`` (``int64 [K]``) replaced by ``other``'s ``K`` rows."""
        return EnvState(**{f.name: getattr(self, f.name).index_copy(0, index, getattr(other, f.name))
                           for f in fields(self)})


def identity_aug(num_envs: int, device: torch.device) -> torch.Tensor:
    """``float32 [N, 7]``: every augmentation at its identity value."""
    values = torch.tensor([IDENTITY[a] for a in AUGMENTATIONS], dtype=torch.float32, device=device)
    return values.repeat(num_envs, 1)


def image_aspect(sizes: torch.Tensor) -> torch.Tensor:
    """``float32 [N]`` width / height of each image, from ``int64 [N, 2]`` (height, width) sizes."""
    return sizes[:, 1].float() / sizes[:, 0].float()


def legal_box(cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor, aspect: torch.Tensor,
              params: EnvParams) -> torch.Tensor:
    """Project a view given by centre and size (all ``float32 [N]``, normalised) onto the legal views.

    In order: the pixel aspect is clamped to ``[1 / max_aspect, max_aspect]`` keeping the area; the area is raised
    to at least ``min_scale`` keeping the aspect; each side is capped at the whole image; the box is shifted to lie
    inside the image. (Only an image more elongated than ``max_aspect`` can end with a smaller area, when its short
    side caps the view.)

    Args:
        aspect: ``float32 [N]`` image width / height in pixels.

    Returns:
        ``float32 [N, 4]`` boxes ``(x0, y0, x1, y1)``.
    """
    area = (w * h).clamp_min(1e-12)
    log_ratio = torch.log(w / h * aspect).clamp(-math.log(params.max_aspect), math.log(params.max_aspect))
    area = area.clamp(min=params.min_scale, max=1.0)
    ratio = torch.exp(log_ratio) / aspect  # normalised w / h giving the clamped pixel aspect
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = torch.minimum(torch.maximum(cx, w / 2), 1 - w / 2)
    cy = torch.minimum(torch.maximum(cy, h / 2), 1 - h / 2)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _unpack(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x0, y0, x1, y1 = box.unbind(-1)
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def initial_boxes(uniforms: torch.Tensor, aspect: torch.Tensor, params: EnvParams,
                  retries: torch.Tensor | None = None) -> torch.Tensor:
    """Random initial views, like RandomResizedCrop: area drawn by ``params.init_area`` in ``params.init_scale``,
    log-uniform pixel aspect in ``params.init_aspect``, uniform position.

    ``"uniform"`` is torchvision's law: area uniform, and a draw that does not fit in the image (a side longer than
    the image's) is drawn again, up to :data:`RRC_TRIES` draws in all (``retries``); ``"log-uniform"`` draws the
    area's logarithm uniformly and takes the first draw. A view that still does not fit is shrunk about its aspect
    until it does (where torchvision falls back to a centre crop), so the pixel aspect always stays within
    ``init_aspect``.

    Args:
        uniforms: ``float32 [N, 4]`` uniform draws in ``[0, 1)``: area, aspect, horizontal and vertical position.
        aspect: ``float32 [N]`` image width / height.
        params: The environment's parameters.
        retries: ``float32 [N, 2 * k]`` further uniform draws, an (area, aspect) pair per further try
            (:func:`retry_columns` of them for ``params``); ``None``: no further try.

    Returns:
        ``float32 [N, 4]`` legal boxes.
    """
    area_u, ratio_u = uniforms[:, :1], uniforms[:, 1:2]  # (N, 1): the first try
    if retries is not None and retries.shape[1]:
        area_u, ratio_u = torch.cat([area_u, retries[:, 0::2]], 1), torch.cat([ratio_u, retries[:, 1::2]], 1)
    lo, hi = params.init_scale
    if params.init_area == "uniform":
        area = lo + (hi - lo) * area_u  # (N, T)
    else:
        area = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * area_u)
    alo, ahi = (math.log(v) for v in params.init_aspect)
    ratio = torch.exp(alo + (ahi - alo) * ratio_u) / aspect[:, None]
    w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # (N, T) in image widths / heights
    first = ((w <= 1) & (h <= 1)).to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits, else 0
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fit = torch.minimum(1 / w, 1 / h).clamp(max=1.0)  # shrink, keeping the aspect, where a side exceeds the image
    w, h = w * fit, h * fit
    cx = w / 2 + (1 - w) * uniforms[:, 2]
    cy = h / 2 + (1 - h) * uniforms[:, 3]
    return legal_box(cx, cy, w, h, aspect, params)


def apply_discrete(box: torch.Tensor, aug: torch.Tensor, action: torch.Tensor, aspect: torch.Tensor,
                   params: EnvParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply discrete actions (``int64 [N]``, see :meth:`EnvParams.action_names`) to views and augmentations.

    Returns:
        New ``float32 [N, 4]`` boxes and ``float32 [N, 7]`` augmentation state.
    """
    cx, cy, w, h = _unpack(box)
    pan, zoom, stretch = params.pan_fraction, params.zoom_factor, params.aspect_factor
    # Per-action multipliers and offsets, looked up by index: no branching per environment.
    table = torch.tensor(
        [  # dx (view widths), dy (view heights), width factor, height factor
            [0, 0, 1, 1], [-pan, 0, 1, 1], [pan, 0, 1, 1], [0, -pan, 1, 1], [0, pan, 1, 1],
            [0, 0, 1 / zoom, 1 / zoom], [0, 0, zoom, zoom], [0, 0, stretch, 1 / stretch], [0, 0, 1 / stretch, stretch],
        ] + [[0, 0, 1, 1]] * len(params.augmentations),
        dtype=torch.float32, device=box.device,
    )
    move = table[action]
    new_box = legal_box(cx + move[:, 0] * w, cy + move[:, 1] * h, w * move[:, 2], h * move[:, 3], aspect,
                        params)
    toggle = action - len(GEOMETRY_ACTIONS)  # index into params.augmentations, negative for geometric actions
    new_aug = aug.clone()
    for k, name in enumerate(params.augmentations):
        column = AUGMENTATIONS.index(name)
        hit = toggle == k
        at_identity = aug[:, column] == IDENTITY[name]
        flipped = torch.where(at_identity, TOGGLED[name], IDENTITY[name])
        new_aug[:, column] = torch.where(hit, flipped, aug[:, column])
    return new_box, new_aug


def strength_to_aug(name: str, strength: torch.Tensor) -> torch.Tensor:
    """Map a continuous strength in ``[-1, 1]`` to the augmentation's parameter.

    ``flip`` and ``grayscale``: on when the strength is positive; ``brightness``, ``contrast``: ``1 + 0.5 s``;
    ``saturation``: ``1 + s`` (0 is grayscale, 2 doubles it); ``hue``: ``0.15 s``; ``blur``: Gaussian sigma
    ``1.5 max(s, 0)`` output pixels.
    """
    if name in ("flip", "grayscale"):
        return (strength > 0).float()
    if name in ("brightness", "contrast"):
        return 1 + 0.5 * strength
    if name == "saturation":
        return 1 + strength
    if name == "hue":
        return 0.15 * strength
    if name == "blur":
        return 1.5 * strength.clamp_min(0)
    raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS}")


def apply_continuous(box: torch.Tensor, aug: torch.Tensor, action: torch.Tensor, aspect: torch.Tensor,
                     params: EnvParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply continuous actions ``float32 [N, 4 + A]`` in ``[-1, 1]``: the relative box, then strengths.

    The first four entries are the new view in the frame of the old one: ``dx, dy`` (centre shift in view
    widths/heights, times ``max_pan``), log-scale (sides times ``exp(s * max_log_scale)``) and log-aspect (width
    times and height divided by ``exp(s * max_log_aspect / 2)``). Each enabled augmentation's strength sets its
    parameter through :func:`strength_to_aug`.
    """
    action = action.clamp(-1, 1)
    cx, cy, w, h = _unpack(box)
    scale = torch.exp(action[:, 2] * params.max_log_scale)
    stretch = torch.exp(action[:, 3] * params.max_log_aspect / 2)
    new_box = legal_box(cx + action[:, 0] * params.max_pan * w, cy + action[:, 1] * params.max_pan * h,
                        w * scale * stretch, h * scale / stretch, aspect, params)
    return new_box, augment(aug, action[:, 4:], params)


def apply_absolute(box: torch.Tensor, aug: torch.Tensor, action: torch.Tensor, aspect: torch.Tensor,
                   params: EnvParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply absolute actions ``float32 [N, 4 + A]``: the new view's box, then augmentation strengths.

    The first four entries are the corners ``x0, y0, x1, y1`` of the new view in normalised image coordinates
    (clamped to ``[0, 1]``; the box spans them in whichever order they come), projected onto the legal views like
    every other move; the strengths in ``[-1, 1]`` set each enabled augmentation through :func:`strength_to_aug`.
    The old box does not matter: an absolute action can jump to any view of the image.
    """
    corners = action[:, :4].clamp(0, 1)
    low, high = torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])
    centre, size = (low + high) / 2, high - low
    new_box = legal_box(centre[:, 0], centre[:, 1], size[:, 0], size[:, 1], aspect, params)
    return new_box, augment(aug, action[:, 4:].clamp(-1, 1), params)


def augment(aug: torch.Tensor, strengths: torch.Tensor, params: EnvParams) -> torch.Tensor:
    """Set each enabled augmentation of ``aug`` (``float32 [N, 7]``) from its strength (``float32 [N, A]`` in
    ``[-1, 1]``, columns in the order of ``params.augmentations``); a new tensor."""
    new_aug = aug.clone()
    for k, name in enumerate(params.augmentations):
        new_aug[:, AUGMENTATIONS.index(name)] = strength_to_aug(name, strengths[:, k])
    return new_aug


def coverage(view: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_categories: int,
             grid: int | None = None) -> torch.Tensor:
    """Fraction of each view covered by objects of each category: the annotation vector, exact.

    For category ``c``: the area of (the union of the boxes of category ``c``) intersected with the view, divided
    by the view's area; overlapping boxes of one category count once. Computed by coordinate compression, batched
    and without a loop over environments or categories:

    1. the boxes are clipped to the view; their x-edges cut the view into vertical strips, within which every box
       either spans the strip or misses it;
    2. in each strip, the union length of the spanning boxes' y-intervals, per category, is a sweep over the boxes
       sorted by (category, start): each interval adds the part of it beyond the running maximum of the earlier
       ends. Starts and ends are integer ranks among the y-edges, offset by ``category * 2M``, so the order and the
       running maximum are exact and never mix two categories;
    3. the area of a box's new part is its length times the strip's width, summed per category.

    The cost is ``O(N M^2)`` for ``M`` boxes per image (``[N, 2M, M]`` intermediates).

    Args:
        view: ``float32 [N, 4]`` view boxes, normalised.
        boxes: ``float32 [N, M, 4]`` object boxes of each environment's image, normalised.
        labels: ``int64 [N, M]`` their categories, ``-1`` for padding.
        num_categories: ``A``.
        grid: ``None`` for the exact area; ``G`` for :func:`grid_coverage` on a ``G x G`` grid.

    Returns:
        ``float32 [N, A]`` in ``[0, 1]``.
    """
    if grid is not None:
        return grid_coverage(view, boxes, labels, num_categories, grid)
    n, m = labels.shape
    if num_categories == 0 or m == 0:
        return torch.zeros((n, num_categories), dtype=torch.float32, device=view.device)
    vx0, vy0, vx1, vy1 = (view[:, k : k + 1] for k in range(4))  # (N, 1)
    x0 = torch.minimum(torch.maximum(boxes[..., 0], vx0), vx1)  # (N, M): the boxes clipped to the view
    x1 = torch.minimum(torch.maximum(boxes[..., 2], vx0), vx1)
    y0 = torch.minimum(torch.maximum(boxes[..., 1], vy0), vy1)
    y1 = torch.minimum(torch.maximum(boxes[..., 3], vy0), vy1)
    edges = torch.cat([y0, y1], dim=1).sort(dim=1).values  # (N, 2M) the y-edges
    stride = 2 * m
    category = torch.where(labels >= 0, labels, num_categories)  # padding goes to a discarded extra category
    start = category * stride + torch.searchsorted(edges, y0.contiguous())  # (N, M) exact integer keys
    end = category * stride + torch.searchsorted(edges, y1.contiguous())
    order = start.argsort(dim=1)  # by category, then by start
    start, end, category = start.gather(1, order), end.gather(1, order), category.gather(1, order)
    x0, x1 = x0.gather(1, order), x1.gather(1, order)
    xs = torch.cat([x0, x1], dim=1).sort(dim=1).values  # (N, 2M)
    width = xs[:, 1:] - xs[:, :-1]  # (N, S): the strips, S = 2M - 1
    middle = (xs[:, 1:] + xs[:, :-1]) / 2
    spans = (x0[:, None, :] <= middle[:, :, None]) & (middle[:, :, None] < x1[:, None, :])  # (N, S, M)
    start = start[:, None, :].expand_as(spans)
    end = torch.where(spans, end[:, None, :], start)  # a box that misses a strip is an empty interval there
    earlier = torch.cummax(end, dim=2).values
    earlier = torch.cat([torch.full_like(earlier[..., :1], -1), earlier[..., :-1]], dim=2)  # exclusive running max
    offset = (category * stride)[:, None, :]
    low = (torch.maximum(start, earlier) - offset).clamp(0, stride - 1)  # (N, S, M) ranks of the new part
    high = (end - offset).clamp(0, stride - 1)
    edges = edges[:, None, :].expand(-1, width.shape[1], -1)
    length = (edges.gather(2, high) - edges.gather(2, low)).clamp_min(0)  # (N, S, M)
    area = torch.zeros((n, num_categories + 1), dtype=torch.float32, device=view.device)
    area.scatter_add_(1, category, (length * width[:, :, None]).sum(dim=1))
    view_area = ((vx1 - vx0) * (vy1 - vy0)).clamp_min(1e-12)
    return (area[:, :num_categories] / view_area).clamp(0, 1)


def grid_coverage(view: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_categories: int,
                  grid: int) -> torch.Tensor:
    """:func:`coverage` measured on a grid of points: an approximation (``coverage_grid=G``).

    The view is sampled at the centres of a ``grid x grid`` lattice of cells; a point counts for category ``c``
    when it lies inside any box of category ``c`` (half-open: ``x0 <= x < x1``). Overlapping boxes of one category
    count once, so the value is the area of the union, measured to ``1 / grid**2``.

    Args:
        view: ``float32 [N, 4]`` view boxes, normalised.
        boxes: ``float32 [N, M, 4]`` object boxes of each environment's image, normalised.
        labels: ``int64 [N, M]`` their categories, ``-1`` for padding.
        num_categories: ``A``.
        grid: ``G``.

    Returns:
        ``float32 [N, A]`` in ``[0, 1]``.
    """
    n, m = labels.shape
    if num_categories == 0 or m == 0:
        return torch.zeros((n, num_categories), dtype=torch.float32, device=view.device)
    t = (torch.arange(grid, device=view.device, dtype=torch.float32) + 0.5) / grid  # (G,)
    xs = view[:, 0:1] + t * (view[:, 2:3] - view[:, 0:1])  # (N, G)
    ys = view[:, 1:2] + t * (view[:, 3:4] - view[:, 1:2])  # (N, G)
    in_x = (xs[:, None, :] >= boxes[:, :, 0:1]) & (xs[:, None, :] < boxes[:, :, 2:3])  # (N, M, G)
    in_y = (ys[:, None, :] >= boxes[:, :, 1:2]) & (ys[:, None, :] < boxes[:, :, 3:4])  # (N, M, G)
    inside = (in_y[:, :, :, None] & in_x[:, :, None, :]).view(n, m, grid * grid).to(torch.uint8)  # (N, M, G²)
    # The boxes of one category are OR-ed into the row of that category's first box: a union over at most M rows,
    # much cheaper than a dense (N, G², A) table when an image holds few of the A categories.
    same = labels[:, :, None] == labels[:, None, :]  # (N, M, M)
    first = same.to(torch.uint8).argmax(dim=2)  # (N, M); argmax returns the first maximal index
    union = torch.zeros_like(inside).scatter_reduce_(1, first[:, :, None].expand(-1, -1, grid * grid), inside, "amax")
    area = union.sum(-1, dtype=torch.int32).float() / grid**2  # (N, M): non-zero only in first rows
    column = torch.where(labels >= 0, labels, num_categories)  # padding goes to a discarded extra column
    out = torch.zeros((n, num_categories + 1), dtype=torch.float32, device=view.device)
    out.scatter_reduce_(1, column, area, "amax")
    return out[:, :num_categories]


def draw_targets(uniforms: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, params: EnvParams,
                 fixed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a search target per environment: the category of a uniformly drawn eligible object of its image, or
    ``fixed``. An object is eligible when its box covers at least ``params.min_target_area`` of the image.

    Args:
        uniforms: ``float32 [N]`` uniform draws.
        labels: ``int64 [N, M]`` object categories (``-1`` padding, which comes last).
        boxes: ``float32 [N, M, 4]`` object boxes.
        fixed: A category index every environment searches for, instead of a drawn one.

    Returns:
        ``int64 [N]`` targets (``-1`` for an image without an eligible object, or without the fixed target) and
        ``float32 [N]`` the coverage that counts as success: ``min(success_coverage, 0.8 * a / min_scale)`` with
        ``a`` the area of the target's largest object, so that every target can be reached.
    """
    if labels.shape[1] == 0:
        return torch.full(labels.shape[:1], -1, dtype=torch.int64, device=labels.device), torch.ones_like(uniforms)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (N, M)
    eligible = (labels >= 0) & (area >= params.min_target_area)  # (N, M)
    if fixed is not None:
        eligible &= labels == fixed
    count = eligible.sum(dim=1)  # (N,)
    pick = (uniforms * count).long().clamp(max=max(labels.shape[1] - 1, 0))  # the pick-th eligible object
    first = (eligible.long().cumsum(dim=1) > pick[:, None]) & eligible  # True from the picked object on
    chosen = first.long().argmax(dim=1)  # (N,) its column
    target = torch.where(count > 0, labels.gather(1, chosen[:, None]).squeeze(1), -1)
    largest = torch.where(labels == target[:, None], area, 0).amax(dim=1)
    reachable = 0.8 * (largest / params.min_scale).clamp(max=1.0)
    return target, torch.minimum(torch.full_like(reachable, params.success_coverage), reachable)


def eligible_slots(params: EnvParams, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor | None:
    """``int64 [T]``: the bank slots whose image holds an eligible search target (see :func:`draw_targets`), for
    :attr:`EnvData.target_slots`; ``None`` when every image is (no search, or a random target of any size).

    Args:
        labels: ``int64 [P, M]`` object categories of the bank (``-1`` padding).
        boxes: ``float32 [P, M, 4]`` their boxes, normalised.
    """
    if params.task != "search" or (params.target == "random" and params.min_target_area <= 0):
        return None
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    eligible = (labels >= 0) & (area >= params.min_target_area)
    if params.target != "random":
        eligible &= labels == int(params.target)
    return eligible.any(dim=1).nonzero().flatten()


def reset(params: EnvParams, data: EnvData, state: EnvState, mask: torch.Tensor, key: Key) -> EnvState:
    """Begin a new episode in the environments where ``mask`` (``bool [N]``) holds; the others keep their state.

    The new episode of environment ``i`` is drawn from the hash of ``(key.seed, key.env_ids[i], episode)``: its
    image slot, its initial view (:func:`initial_boxes`), its initial augmentation (with ``init_augment``) and,
    for ``task="search"``, its target (:func:`draw_targets`). Pure: the inputs are not changed.

    Returns:
        The new state (``N`` rows).
    """
    episode = state.episode + mask.long()  # the counter of a fresh episode
    extra = retry_columns(params)  # drawn after the others: the first columns do not depend on the area law
    u = rng.uniform(key.seed, key.env_ids, episode, 6 + len(params.augmentations) + extra)
    if data.target_slots is not None:  # an image that holds an eligible target
        pick = (u[:, 0] * len(data.target_slots)).long().clamp(max=len(data.target_slots) - 1)
        slot = data.target_slots[pick]
    else:
        slot = (u[:, 0] * data.num_images).long().clamp(max=data.num_images - 1)
    aspect = image_aspect(data.sizes[slot])
    augs = 6 + len(params.augmentations)
    box = initial_boxes(u[:, 1:5], aspect, params, u[:, augs:])
    if params.task == "search":
        fixed = None if params.target == "random" else int(params.target)
        target, target_coverage = draw_targets(u[:, 5], data.labels[slot], data.boxes[slot], params, fixed)
    else:
        target, target_coverage = torch.full_like(slot, -1), torch.ones_like(u[:, 5])
    aug = identity_aug(len(slot), box.device)
    if params.init_augment:
        aug = augment(aug, u[:, 6:augs] * 2 - 1, params)
    fresh = EnvState(slot, box, aug, torch.zeros_like(slot), episode, target, target_coverage)
    return state.where(mask, fresh)


def move(params: EnvParams, data: EnvData, state: EnvState, action: torch.Tensor) -> EnvState:
    """Apply one validated action per environment and advance the step counter; pure.

    With temporal links (``data.neighbours``) the action space has two more entries: discrete actions
    ``num_actions`` and ``num_actions + 1`` (previous and next frame, no move in space), or a last continuous
    entry below -0.5 (previous frame) or above 0.5 (next frame) beside the spatial move.
    """
    temporal = 0
    if data.neighbours is not None:
        if params.action_mode == "discrete":
            base = params.num_actions
            temporal = torch.where(action == base, -1, torch.where(action == base + 1, 1, 0))
            action = torch.where(temporal != 0, 0, action)  # a temporal action is a no-op in space
        else:
            temporal = torch.round(action[:, -1].clamp(-1, 1)).long()
            action = action[:, :-1]
    aspect = image_aspect(data.sizes[state.slot])
    if params.action_mode == "discrete":
        box, aug = apply_discrete(state.box, state.aug, action, aspect, params)
    elif params.action_mode == "continuous":
        box, aug = apply_continuous(state.box, state.aug, action, aspect, params)
    else:
        box, aug = apply_absolute(state.box, state.aug, action, aspect, params)
    slot = state.slot
    if data.neighbours is not None:
        links = data.neighbours[slot]
        slot = torch.where(temporal < 0, links[:, 0], torch.where(temporal > 0, links[:, 1], slot))
    return replace(state, slot=slot, box=box, aug=aug, step=state.step + 1)


def annotate(params: EnvParams, data: EnvData, state: EnvState) -> torch.Tensor:
    """``float32 [N, A]``: the annotations of each environment's view (:func:`coverage`)."""
    return coverage(state.box, data.boxes[state.slot], data.labels[state.slot], data.num_categories,
                    params.coverage_grid)


def step(params: EnvParams, data: EnvData, state: EnvState, action: torch.Tensor,
         restart: torch.Tensor | None = None, key: Key | None = None
         ) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of every environment: move, annotate, reward, end; pure.

    Args:
        action: ``int64 [N]`` (discrete) or ``float32 [N, D]``, validated beforehand.
        restart: ``bool [N]``: environments that begin a new episode (drawn with ``key``, as :func:`reset` draws
            it) instead of acting, with reward 0 and neither terminated nor truncated (Gymnasium's ``NEXT_STEP``
            autoreset); ``None``: every environment acts.

    Returns:
        The new state, its annotations ``float32 [N, A]``, rewards ``float32 [N]`` (:func:`task_reward`),
        ``terminated`` and ``truncated`` (``bool [N]``; truncated after ``max_episode_steps`` unless terminated).
    """
    moved = move(params, data, state, action)
    if restart is not None:
        if key is None:
            raise ValueError("restart= needs the key= that draws the new episodes")
        moved = reset(params, data, moved, restart, key)  # the episode counter is still the previous one
    annotation = annotate(params, data, moved)
    reward, terminated = task_reward(params.task, annotation, moved)
    limit = params.max_episode_steps
    truncated = (moved.step >= limit) & ~terminated if limit is not None else torch.zeros_like(terminated)
    if restart is not None:
        reward = torch.where(restart, 0.0, reward)
        terminated, truncated = terminated & ~restart, truncated & ~restart
    return moved, annotation, reward, terminated, truncated


def task_reward(task: Task, annotation: torch.Tensor, state: EnvState) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward ``float32 [N]`` and termination ``bool [N]`` of a task after a step.

    ``"none"``: zero, never terminates. ``"search"``: 1 when the target covers at least its success coverage of the
    view, which terminates the episode. A callable gets ``annotation`` (``float32 [N, A]``) and returns rewards
    ``[N]``; it never terminates.
    """
    n = annotation.shape[0]
    never = torch.zeros(n, dtype=torch.bool, device=annotation.device)
    if task == "none":
        return torch.zeros(n, dtype=torch.float32, device=annotation.device), never
    if task == "search":
        has_target = state.target >= 0
        reached = annotation.gather(1, state.target.clamp_min(0)[:, None]).squeeze(1) >= state.target_coverage
        success = has_target & reached
        return success.float(), success
    reward = task(annotation)
    if not isinstance(reward, torch.Tensor) or reward.shape != (n,):
        raise ValueError(
            f"the task callable must return a tensor of shape ({n},), got "
            f"{tuple(reward.shape) if isinstance(reward, torch.Tensor) else type(reward).__name__}"
        )
    return reward.to(torch.float32), never
