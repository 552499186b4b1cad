"""A plain per-environment implementation of the ViewTransform MDP with PIL and numpy: the benchmark's baseline.

It does what one ``ViewTransform`` environment does, the way one would write it without batching: the same
discrete actions, legal-box projection, random initial views, rendering (PIL crop + antialiased resize, flip,
``ImageEnhance`` brightness/contrast/saturation, a hue shift in HSV, grayscale, Gaussian blur) and coverage
annotations on a 16 x 16 grid, one environment at a time. With ``augment=False`` it is the minimal version: the
nine geometric actions only, crop + resize + coverage, no augmentation code at all. Gymnasium's ``SyncVectorEnv``
and ``AsyncVectorEnv`` batch it. It imports neither torch nor view_env, so ``AsyncVectorEnv`` workers stay light.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

AUGMENTATIONS = ("flip", "brightness", "contrast", "saturation", "hue", "grayscale", "blur")
IDENTITY = (0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
TOGGLED = (1.0, 1.5, 1.5, 0.25, 0.15, 1.0, 1.5)
MOVES = [(0, 0, 1, 1), (-0.25, 0, 1, 1), (0.25, 0, 1, 1), (0, -0.25, 1, 1), (0, 0.25, 1, 1),
         (0, 0, 0.8, 0.8), (0, 0, 1.25, 1.25), (0, 0, 1.25, 0.8), (0, 0, 0.8, 1.25)]


class PILViewEnv(gym.Env):
    """One ViewTransform environment over shared canvases (square RGB PIL images) and their boxes."""

    metadata = {"render_modes": []}

    def __init__(self, images: list[Image.Image], boxes: list[np.ndarray], labels: list[np.ndarray],
                 aspects: np.ndarray, num_categories: int, obs_size: int = 64, max_episode_steps: int = 16,
                 augment: bool = True) -> None:
        self.images = images  # shared by every environment of a vector, never copied
        self.boxes, self.labels, self.aspects = boxes, labels, aspects
        self.num_categories = num_categories
        self.obs_size = obs_size
        self.max_episode_steps = max_episode_steps
        self.observation_space = gym.spaces.Box(0, 255, (3, obs_size, obs_size), np.uint8)
        self.augment = augment
        self.action_space = gym.spaces.Discrete(len(MOVES) + (len(AUGMENTATIONS) if augment else 0))
        t = (np.arange(16) + 0.5) / 16
        self._grid = t

    def _legal(self, cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
        aspect = self.aspects[self.slot]
        area = min(max(w * h, 0.05), 1.0)
        log_ratio = min(max(math.log(w / h * aspect), -math.log(2)), math.log(2))
        ratio = math.exp(log_ratio) / aspect
        w, h = min(math.sqrt(area * ratio), 1.0), min(math.sqrt(area / ratio), 1.0)
        cx = min(max(cx, w / 2), 1 - w / 2)
        cy = min(max(cy, h / 2), 1 - h / 2)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        u = self.np_random.random(5)
        self.slot = int(u[0] * len(self.images))
        area = math.exp(math.log(0.25) * (1 - u[1]))
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * u[2]) / self.aspects[self.slot]
        w, h = min(math.sqrt(area * ratio), 1.0), min(math.sqrt(area / ratio), 1.0)
        self.box = self._legal(w / 2 + (1 - w) * u[3], h / 2 + (1 - h) * u[4], w, h)
        self.aug = list(IDENTITY)
        self.steps = 0
        return self._render(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        if action < len(MOVES):
            dx, dy, fw, fh = MOVES[action]
            self.box = self._legal((x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * h, w * fw, h * fh)
        else:
            k = action - len(MOVES)
            self.aug[k] = TOGGLED[k] if self.aug[k] == IDENTITY[k] else IDENTITY[k]
        self.steps += 1
        return self._render(), 0.0, False, self.steps >= self.max_episode_steps, self._info()

    def _render(self) -> np.ndarray:
        image = self.images[self.slot]
        side = image.size[0]
        x0, y0, x1, y1 = (v * side for v in self.box)
        view = image.resize((self.obs_size, self.obs_size), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
        if not self.augment:
            return np.asarray(view).transpose(2, 0, 1)
        flip, brightness, contrast, saturation, hue, gray, blur = self.aug
        if flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if brightness != 1:
            view = ImageEnhance.Brightness(view).enhance(brightness)
        if contrast != 1:
            view = ImageEnhance.Contrast(view).enhance(contrast)
        if saturation != 1:
            view = ImageEnhance.Color(view).enhance(saturation)
        if hue:
            hsv = np.array(view.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(hue * 255)) % 256
            # frombytes: Image.fromarray's mode argument is deprecated (Pillow 13 removes it)
            view = Image.frombytes("HSV", view.size, hsv.tobytes()).convert("RGB")
        if gray:
            view = view.convert("L").convert("RGB")
        if blur:
            view = view.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(view).transpose(2, 0, 1)

    def _info(self) -> dict[str, Any]:
        x0, y0, x1, y1 = self.box
        xs = x0 + self._grid * (x1 - x0)
        ys = y0 + self._grid * (y1 - y0)
        annotation = np.zeros(self.num_categories, dtype=np.float32)
        boxes, labels = self.boxes[self.slot], self.labels[self.slot]
        for c in np.unique(labels):
            covered = np.zeros((16, 16), dtype=bool)
            for bx0, by0, bx1, by1 in boxes[labels == c]:
                covered |= ((ys >= by0) & (ys < by1))[:, None] & ((xs >= bx0) & (xs < bx1))[None, :]
            annotation[c] = covered.mean()
        return {"annotation": annotation, "box": np.array(self.box, dtype=np.float32), "image_index": self.slot}
