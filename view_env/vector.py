"""The native vector environment: ``num_envs`` ViewTransform environments as tensors on one device.

The class is a thin shell: it validates arguments and actions, holds the current (frozen)
:class:`~view_env.core.EnvState`, calls the pure :func:`view_env.core.reset` and :func:`view_env.core.step`, renders
with :mod:`view_env.render`, and keeps Gymnasium's autoreset bookkeeping (which environments have ended,
``final_obs``). See docs/envs.md for the environment card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from view_env import core
from view_env.data import ImageBank, ImageDataset, ImagePool, default_canvas_size, load_dataset
from view_env.data.stream import StreamingImagePool, WebDatasetShards
from view_env.render import ViewAug, render_views

#: Largest dataset decoded whole into a static bank; larger ones stream through an :class:`ImagePool` this big.
DEFAULT_MAX_IMAGES = 20000
_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(core.EnvParams))


def _as_autoreset(mode: AutoresetMode | str) -> AutoresetMode:
    if isinstance(mode, AutoresetMode):
        return mode
    for member in AutoresetMode:
        if str(mode).lower().replace("_", "") in (member.value.lower(), member.name.lower().replace("_", "")):
            return member
    raise ValueError(f"autoreset_mode={mode!r} is invalid: expected one of {[m.name for m in AutoresetMode]}")


def aug_from_state(aug: torch.Tensor) -> ViewAug:
    """The renderer's per-view parameters from the ``float32 [N, 7]`` augmentation state."""
    flip, brightness, contrast, saturation, hue, grayscale, blur = aug.unbind(-1)
    return ViewAug(flip=flip > 0.5, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                   grayscale=grayscale > 0.5, blur_sigma=blur)


class ViewTransformVectorEnv(VectorEnv):
    """``num_envs`` ViewTransform environments stepped as one batch on ``device`` (torch tensors in and out).

    Args:
        num_envs: Number of environments ``N``.
        dataset: A source name (``"shapes"``, ``"coco"``, ``"images"``, ``"video"``, ``"webdataset"``), an
            :class:`~view_env.data.ImageDataset`, or :class:`~view_env.data.stream.WebDatasetShards` (a stream of
            shards, always read through a :class:`~view_env.data.stream.StreamingImagePool` of ``max_images``).
        root: Dataset root, passed to the source (``None``: its environment variable or cache).
        split: Dataset split for COCO and Shapes.
        bank: A ready :class:`~view_env.data.ImageBank` (then ``dataset``, ``root``, ``split`` are not used).
        device: Where state, images and outputs live.
        canvas_size: Side of the bank's square canvas; default
            :func:`~view_env.data.default_canvas_size` of ``obs_size`` (``2 * obs_size`` within ``[128, 256]``).
        max_images: Decode at most this many images into a static bank; a larger dataset streams through an
            :class:`~view_env.data.ImagePool` of this capacity (default 20,000).
        task: ``"none"``, ``"search"`` or a callable on the annotation tensor.
        target: With ``task="search"``: ``"random"`` (each episode draws its target; needs ``obs_mode="dict"``) or
            a fixed target, a category name (``"circle"``) or index, searched for in images that hold it (image-only
            observations work).
        difficulty: With ``task="search"``: ``"easy"``, ``"medium"`` or ``"hard"`` (see
            :data:`~view_env.core.DIFFICULTIES`), a preset of the fields below; fields given beside it win.
            ``None`` (default) is the default search (``"hard"``).
        autoreset_mode: ``"same_step"`` (default), ``"next_step"`` or ``"disabled"``.
        render_mode: ``None`` or ``"rgb_array"``.
        temporal: Add the Video environment's temporal actions (previous/next frame).
        dataset_kwargs: More keyword arguments for the source.
        progress: Show progress bars while preparing data.
        check_actions: Check the values of every step's actions (integers in range, finite floats) and that no
            ended environment is stepped under ``"disabled"`` autoreset: one fused check, the step's only wait for
            the device. ``False`` skips it, so that nothing in a step waits for the device (out-of-range actions
            are then clamped, not refused).
        **params: Fields of :class:`~view_env.core.EnvParams` (``obs_size``, ``max_episode_steps``,
            ``action_mode``, ``obs_mode``, ``augmentations``, ``min_scale``, ...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        dataset: str | ImageDataset = "shapes",
        root: str | None = None,
        split: str | None = None,
        bank: ImageBank | None = None,
        device: str | torch.device = "cpu",
        canvas_size: int | None = None,
        max_images: int | None = None,
        task: core.Task = "none",
        target: str | int = "random",
        difficulty: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        render_mode: str | None = None,
        temporal: bool = False,
        dataset_kwargs: Mapping[str, Any] | None = None,
        progress: bool = True,
        check_actions: bool = True,
        **params: Any,
    ) -> None:
        unknown = sorted(set(params) - set(_PARAM_NAMES))
        if unknown:
            raise TypeError(
                f"unknown keyword argument(s) {unknown} for a ViewTransform environment; expected environment "
                f"arguments (dataset, root, split, bank, device, canvas_size, max_images, task, target, difficulty, "
                f"autoreset_mode, render_mode, temporal, dataset_kwargs, progress, check_actions) or EnvParams fields "
                f"{list(_PARAM_NAMES)}"
            )
        if difficulty is not None:
            if not isinstance(difficulty, str) or difficulty not in core.DIFFICULTIES:
                raise ValueError(f"difficulty={difficulty!r} is invalid: expected one of {list(core.DIFFICULTIES)} "
                                 "(or None)")
            if task != "search":
                raise ValueError(f"difficulty={difficulty!r} is given but task={task!r}: difficulty levels are "
                                 "levels of the search task, so they need task='search'")
            params = {**core.DIFFICULTIES[difficulty], **params}
        if isinstance(params.get("augmentations"), list):
            params["augmentations"] = tuple(params["augmentations"])
        if not (isinstance(target, str) and target == "random") and task != "search":
            raise ValueError(f"target={target!r} is given but task={task!r}: a target needs task='search'")
        named = isinstance(target, str) and target != "random"
        self.params = core.EnvParams(task=task, target=0 if named else target, **params)  # a name is resolved below
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is invalid: expected an integer >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is invalid: expected None or 'rgb_array'")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.check_actions = bool(check_actions)
        # On the CPU there is no device to wait for: the rows that restart are gathered (nonzero) and only they are
        # rendered again. Elsewhere every row's first view is rendered and selected with torch.where, so that the
        # step never waits for the device to say how many rows restarted.
        self._compact_restarts = self.device.type == "cpu"
        self.render_mode = render_mode
        self.autoreset_mode = _as_autoreset(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.bank = self._make_bank(bank, dataset, root, split, canvas_size, max_images, dataset_kwargs, progress)
        self.num_categories = self.bank.num_categories
        if task == "search" and self.num_categories == 0:
            raise ValueError(f"task='search' needs a dataset with object categories; {self.bank.dataset.name!r} "
                             "has none")
        if self.params.target != "random":
            self.params = dataclasses.replace(self.params, target=self._target_index(target))
        self._target_slots = self._find_target_slots()
        self.temporal = temporal
        self._neighbours = self._temporal_links() if temporal else None

        s = self.params.obs_size
        view_space = gym.spaces.Box(0, 255, (3, s, s), np.uint8)
        if self.params.obs_mode == "view":
            self.single_observation_space = view_space
        else:
            self.single_observation_space = gym.spaces.Dict({
                "view": view_space,
                "box": gym.spaces.Box(0.0, 1.0, (4,), np.float32),
                "target": gym.spaces.Box(0.0, 1.0, (self.num_categories,), np.float32),
            })
        extra = 2 if temporal else 0
        if self.params.action_mode == "discrete":
            self.single_action_space = gym.spaces.Discrete(self.params.num_actions + extra)
        else:
            dim = self.params.action_dim + (1 if temporal else 0)
            low = np.full(dim, -1.0, np.float32)
            if self.params.action_mode == "absolute":
                low[:4] = 0.0  # the new view's corners, in normalised image coordinates
            self.single_action_space = gym.spaces.Box(low, np.ones(dim, np.float32), (dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        self._env_ids = torch.arange(num_envs, device=self.device)
        self._key = core.Key(int(np.random.SeedSequence().entropy % 2**63), self._env_ids)
        self.state = core.EnvState.empty(num_envs, self.device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._all = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    @property
    def task(self) -> core.Task:
        """The reward (``params.task``): ``"none"``, ``"search"`` or a callable on the annotations."""
        return self.params.task

    @property
    def ended(self) -> torch.Tensor:
        """``bool [N]``: environments whose episode has ended and not begun again (only ever set under the
        ``next_step`` and ``disabled`` autoreset modes); a copy."""
        return self._ended.clone()

    @property
    def data(self) -> core.EnvData:
        """The bank's tensors the MDP reads, as :func:`view_env.core.step` takes them (rebuilt per call: a pool's
        tensors change when it refreshes)."""
        bank = self.bank
        return core.EnvData(bank.sizes, bank.boxes, bank.labels, self.num_categories, self._neighbours,
                            self._target_slots)

    # ----------------------------------------------------------------------------------------------- set-up

    def _make_bank(self, bank: ImageBank | None, dataset: str | ImageDataset, root: str | None, split: str | None,
                   canvas_size: int | None, max_images: int | None, dataset_kwargs: Mapping[str, Any] | None,
                   progress: bool) -> ImageBank:
        if bank is not None:
            given = {k: v for k, v in {"root": root, "split": split, "canvas_size": canvas_size,
                                       "max_images": max_images, "dataset_kwargs": dataset_kwargs}.items()
                     if v is not None}
            if given:
                raise ValueError(f"bank= is given, so {sorted(given)} would be ignored: pass either a bank or the "
                                 "arguments to build one")
            if bank.device != self.device:
                raise ValueError(f"the bank lives on {bank.device} but device={self.device}; build the bank on the "
                                 "environment's device")
            return bank
        if isinstance(dataset, str):
            kwargs = dict(dataset_kwargs or {})
            if root is not None:
                kwargs["root"] = root
            if split is not None:
                if dataset not in ("shapes", "coco"):
                    raise ValueError(f"split={split!r} is only meaningful for 'shapes' and 'coco', not {dataset!r}")
                kwargs["split"] = split
            if dataset == "shapes":
                kwargs.setdefault("progress", progress)
            source = load_dataset(dataset, **kwargs)
        elif isinstance(dataset, (ImageDataset, WebDatasetShards)):
            if root is not None or split is not None or dataset_kwargs:
                raise ValueError("dataset= is an ImageDataset already; root=, split= and dataset_kwargs= would be "
                                 "ignored")
            source = dataset
        else:
            raise TypeError(f"dataset={dataset!r} is invalid: expected a source name or an ImageDataset")
        if canvas_size is None:
            canvas_size = default_canvas_size(self.params.obs_size)
        limit = DEFAULT_MAX_IMAGES if max_images is None else max_images
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_images={max_images!r} is invalid: expected an integer >= 1")
        if isinstance(source, WebDatasetShards):  # a stream: its length is unknown, it always goes in a pool
            return StreamingImagePool(source, limit, canvas_size=canvas_size, device=self.device, progress=progress)
        if len(source) > limit:
            return ImagePool(source, limit, canvas_size=canvas_size, device=self.device, progress=progress)
        return ImageBank.from_dataset(source, canvas_size=canvas_size, device=self.device, progress=progress)

    def _target_index(self, target: str | int) -> int:
        """The category index of a fixed search target given by name or index, checked against the dataset."""
        categories = tuple(self.bank.dataset.categories)
        if isinstance(target, str):
            if target not in categories:
                raise ValueError(f"target={target!r} is not a category of {self.bank.dataset.name!r}: expected "
                                 f"'random' or one of {list(categories)}")
            return categories.index(target)
        if target >= len(categories):
            raise ValueError(f"target={target!r} is not a category index of {self.bank.dataset.name!r}: expected "
                             f"'random', a name or an index in [0, {len(categories)})")
        return int(target)

    def _find_target_slots(self) -> torch.Tensor | None:
        """``int64 [T]``: the bank slots whose image holds an eligible search target (``None``: every slot)."""
        slots = core.eligible_slots(self.params, self.bank.labels, self.bank.boxes)
        if slots is not None and len(slots) == 0:
            target = self.params.target
            what = "an object" if target == "random" else f"a {self.bank.dataset.categories[target]!r}"
            size = (f" covering at least min_target_area={self.params.min_target_area} of the image"
                    if self.params.min_target_area > 0 else "")
            raise ValueError(f"target={'random' if target == 'random' else self.bank.dataset.categories[target]!r}:"
                             f" no image in the bank holds {what}{size}, so no episode could succeed; choose another "
                             "target, a smaller min_target_area or a larger bank (max_images)")
        return slots

    def _temporal_links(self) -> torch.Tensor:
        """``int64 [P, 2]``: the bank slot of each slot's previous and next frame (itself where there is none)."""
        dataset = self.bank.dataset
        if not hasattr(dataset, "neighbours"):
            raise ValueError(f"temporal=True needs a video dataset with temporal neighbours; "
                             f"{dataset.name!r} has none")
        if isinstance(self.bank, ImagePool):
            raise ValueError("temporal=True needs every frame resident; raise max_images above the number of frames")
        index = self.bank.dataset_index.cpu().numpy()
        slot_of = np.full(len(dataset), -1, dtype=np.int64)
        slot_of[index] = np.arange(len(index))
        links = []
        for offset in (-1, 1):
            neighbour = dataset.neighbours(index, offset)
            slots = np.where(neighbour >= 0, slot_of[np.maximum(neighbour, 0)], -1)
            links.append(np.where(slots >= 0, slots, np.arange(len(index))))
        return torch.as_tensor(np.stack(links, axis=1), device=self.device)

    # ----------------------------------------------------------------------------------------------- API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, Any]]:
        """Reset every environment, or those in ``options["reset_mask"]`` (``bool [N]``, tensor or array).

        ``seed`` restarts the random streams: environment ``i``'s episodes then depend on ``(seed, i)`` only.
        """
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; the only option is 'reset_mask'")
        if seed is not None:
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
                raise TypeError(f"seed={seed!r} is invalid: expected an int or None")
            self._key = core.Key(int(seed), self._env_ids)
            self.state = core.EnvState.empty(self.num_envs, self.device)
            if mask is not None:
                raise ValueError("pass either seed= (which resets every environment) or a reset_mask, not both")
        if mask is None:
            mask = self._all
        else:
            mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask,
                                   device=self.device)
            if mask.shape != (self.num_envs,) or mask.dtype != torch.bool:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got "
                                 f"shape {tuple(mask.shape)} and dtype {mask.dtype}")
        self._reset_where(mask)
        self._ended = self._ended & ~mask
        annotation = core.annotate(self.params, self.data, self.state)
        return self._observe(), self._info(annotation)

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step every environment; see docs/envs.md for the autoreset behaviour of each mode.

        Nothing here waits for the device beyond the one fused check of ``check_actions`` (and the host I/O of an
        :class:`~view_env.data.ImagePool` bank): off the CPU the autoreset is computed for every row and selected
        with masks; on the CPU, where reading costs nothing, only the rows that ended are reset and rendered.
        Under ``"same_step"``, ``info["final_obs"]`` and ``info["final_info"]`` are always present, valid where
        ``info["_final_obs"]`` / ``info["_final_info"]`` hold (other rows of ``final_obs`` are unspecified).
        """
        action = self._check_action(actions)
        previous = self.state
        pool = isinstance(self.bank, ImagePool)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and not pool:
            # Environments that ended on the previous step begin a new episode instead of acting.
            self.state, annotation, reward, terminated, truncated = core.step(
                self.params, self.data, previous, action, restart=self._ended, key=self._key)
        else:
            self.state, annotation, reward, terminated, truncated = core.step(self.params, self.data, previous,
                                                                              action)
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:  # a pool refreshes its images first (host I/O)
                restarting = self._ended
                if bool(restarting.any()):
                    self.state = self.state.where(restarting, previous)
                    self._reset_where(restarting)
                    annotation = core.annotate(self.params, self.data, self.state)
                reward = torch.where(restarting, 0.0, reward)
                terminated, truncated = terminated & ~restarting, truncated & ~restarting
        done = terminated | truncated
        obs = self._observe()
        info = self._info(annotation)
        self._ended = done
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            self._ended = torch.zeros_like(done)
            if self._compact_restarts or pool:
                # Only the rows that restarted are reset, rendered and annotated again. final_obs is valid where
                # _final_obs holds; its other rows are left unwritten (uninitialised memory costs nothing to
                # allocate, where zeroing or copying every observation would cost as much as a render at 224 px).
                rows = done.nonzero().flatten()  # on the CPU its length is known without waiting
                final_obs = _empty_with_rows(obs, rows)
                final_annotation = annotation
                if len(rows):
                    if pool:
                        self._reset_where(done)
                    else:
                        key = core.Key(self._key.seed, self._key.env_ids[rows])
                        every = torch.ones(len(rows), dtype=torch.bool, device=self.device)
                        fresh = core.reset(self.params, self.data, self.state.rows(rows), every, key)
                        self.state = self.state.put(rows, fresh)
                    _assign_rows(obs, rows, self._observe(rows))
                    annotation = annotation.clone()
                    annotation[rows] = core.annotate(self.params, self.data, self.state.rows(rows))
            else:  # every row, selected without asking the device which rows restarted
                self.state = core.reset(self.params, self.data, self.state, done, self._key)
                final_obs = obs
                obs = _where_rows(done, self._observe(), obs)
                final_annotation = annotation
                annotation = torch.where(done[:, None], core.annotate(self.params, self.data, self.state),
                                         annotation)
            info["final_info"] = dict(info, annotation=final_annotation)
            info["_final_info"] = done
            info.update(self._info(annotation))
            info["final_obs"] = final_obs
            info["_final_obs"] = done
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: ``uint8 [N, C, C, 3]`` numpy, each whole image with its view's box."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to the constructor")
            return None
        return draw_boxes(self.bank.images[self.state.slot], self.state.box).permute(0, 2, 3, 1).cpu().numpy()

    def close_extras(self, **kwargs: Any) -> None:
        if isinstance(self.bank, ImagePool):
            self.bank.close()

    # ----------------------------------------------------------------------------------------------- internals

    def _reset_where(self, mask: torch.Tensor) -> None:
        if isinstance(self.bank, ImagePool):
            busy = torch.zeros(len(self.bank), dtype=torch.bool, device=self.device)
            busy[self.state.slot[~mask]] = True
            self.bank.refresh(busy=busy)
            self._target_slots = self._find_target_slots()
        self.state = core.reset(self.params, self.data, self.state, mask, self._key)

    def _check_action(self, actions: Any) -> torch.Tensor:
        """The actions as a tensor on the device; with ``check_actions``, their values (and, under ``"disabled"``
        autoreset, that no ended environment is stepped) in one fused check, the only wait for the device."""
        n = self.num_envs
        if isinstance(actions, (list, tuple)):
            actions = np.asarray(actions)
        if not isinstance(actions, (np.ndarray, torch.Tensor)):
            raise TypeError(f"actions must be a numpy array or torch tensor, got {type(actions).__name__}")
        tensor = actions if isinstance(actions, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(actions))
        disabled = self.autoreset_mode == AutoresetMode.DISABLED
        if isinstance(self.single_action_space, gym.spaces.Discrete):
            k = int(self.single_action_space.n)
            if tensor.shape != (n,):
                raise ValueError(f"discrete actions must have shape ({n},) for num_envs={n}, got {tuple(tensor.shape)}")
            if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
                raise TypeError(f"discrete actions must be integers in [0, {k}), got dtype {tensor.dtype}")
            tensor = tensor.to(self.device, torch.int64)
            if not self.check_actions:
                return tensor.clamp(0, k - 1)
            bad = (tensor < 0) | (tensor >= k)
            if bool((bad | self._ended).any() if disabled else bad.any()):  # the one fused check
                self._refuse_ended()
                where = bad.nonzero().flatten()[:5].tolist()
                raise ValueError(f"discrete actions must lie in [0, {k}); environments {where} got "
                                 f"{tensor[bad][:5].tolist()}")
            return tensor
        d = self.single_action_space.shape[0]
        mode = self.params.action_mode
        if tensor.shape != (n, d):
            raise ValueError(f"{mode} actions must have shape ({n}, {d}) for num_envs={n}, got "
                             f"{tuple(tensor.shape)}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"{mode} actions must be floating point (see the action space's bounds), got dtype "
                            f"{tensor.dtype}")
        tensor = tensor.to(self.device, torch.float32)
        if not self.check_actions:
            return tensor.nan_to_num(0.0, 1.0, -1.0)
        bad = ~torch.isfinite(tensor).all(dim=1)
        if bool((bad | self._ended).any() if disabled else bad.any()):  # the one fused check
            self._refuse_ended()
            where = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{mode} actions must be finite; environments {where} hold NaN or inf: "
                             f"{tensor[where].tolist()}")
        return tensor

    def _refuse_ended(self) -> None:
        if self.autoreset_mode == AutoresetMode.DISABLED and bool(self._ended.any()):
            ended = self._ended.nonzero().flatten().tolist()
            raise RuntimeError(f"environments {ended[:10]} have ended and autoreset_mode is DISABLED: call "
                               "reset(options={'reset_mask': mask}) for them before stepping")

    def _observe(self, rows: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """The observations of every environment, or of the environments in ``rows`` only."""
        slot, box, aug, target = self.state.slot, self.state.box, self.state.aug, self.state.target
        if rows is not None:
            slot, box, aug, target = slot[rows], box[rows], aug[rows], target[rows]
        # The state is valid by construction: no value checks, and a blur bound, so that nothing reads the device.
        view = render_views(self.bank.images, slot, box, self.params.obs_size, aug_from_state(aug), check=False,
                            max_blur_sigma=core.AUG_RANGES["blur"][1])
        if self.params.obs_mode == "view":
            return view
        onehot = torch.zeros((len(slot), self.num_categories), dtype=torch.float32, device=self.device)
        if self.num_categories:
            onehot.scatter_(1, target.clamp_min(0)[:, None], (target >= 0).float()[:, None])
        return {"view": view, "box": box.clone(), "target": onehot}

    def _info(self, annotation: torch.Tensor) -> dict[str, Any]:
        info = {
            "annotation": annotation,
            "box": self.state.box.clone(),
            "image_index": self.bank.dataset_index[self.state.slot],
            "image_size": self.bank.sizes[self.state.slot],
            "aug": self.state.aug.clone(),
        }
        if self.task == "search":
            info["target_category"] = self.state.target.clone()  # not "target": that is the observation's one-hot
        info.update({f"_{key}": self._all for key in list(info)})
        return info


def _where_rows(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """Observation ``new`` where ``mask`` (``bool [N]``) holds, else ``old`` (tensors or dicts of tensors, or a
    scalar)."""
    if isinstance(new, dict):
        return {k: _where_rows(mask, new[k], old[k] if isinstance(old, dict) else old) for k in new}
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


def _empty_with_rows(full: Any, rows: torch.Tensor) -> Any:
    """A new observation shaped like ``full`` (tensor or dict of tensors, ``[N, ...]``) holding its ``rows``; the
    other rows are uninitialised."""
    if isinstance(full, dict):
        return {k: _empty_with_rows(full[k], rows) for k in full}
    out = torch.empty_like(full)
    out[rows] = full[rows]
    return out


def _assign_rows(full: Any, rows: torch.Tensor, part: Any) -> None:
    """Write ``part`` into ``rows`` of observation ``full`` in place."""
    if isinstance(full, dict):
        for k in full:
            _assign_rows(full[k], rows, part[k])
    else:
        full[rows] = part


def draw_boxes(images: torch.Tensor, boxes: torch.Tensor, colour: tuple[int, int, int] = (255, 32, 32),
               thickness: int = 2) -> torch.Tensor:
    """Draw each box's outline on its image.

    Args:
        images: ``uint8 [N, 3, H, W]``.
        boxes: ``float32 [N, 4]`` normalised ``(x0, y0, x1, y1)``.

    Returns:
        ``uint8 [N, 3, H, W]``, a new tensor.
    """
    n, _, height, width = images.shape
    xs = torch.arange(width, device=images.device)[None, :]
    ys = torch.arange(height, device=images.device)[None, :]
    x0 = (boxes[:, 0:1] * width).floor()
    x1 = (boxes[:, 2:3] * width).ceil() - 1
    y0 = (boxes[:, 1:2] * height).floor()
    y1 = (boxes[:, 3:4] * height).ceil() - 1
    in_x = (xs >= x0) & (xs <= x1)  # (N, W)
    in_y = (ys >= y0) & (ys <= y1)  # (N, H)
    edge_x = in_x & ((xs - x0 < thickness) | (x1 - xs < thickness))
    edge_y = in_y & ((ys - y0 < thickness) | (y1 - ys < thickness))
    outline = (edge_y[:, :, None] & in_x[:, None, :]) | (in_y[:, :, None] & edge_x[:, None, :])  # (N, H, W)
    paint = torch.tensor(colour, dtype=torch.uint8, device=images.device).view(1, 3, 1, 1)
    return torch.where(outline[:, None], paint, images)

