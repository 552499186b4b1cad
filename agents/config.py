"""The pretrainer's typed configuration, its command line, and the presets.

Every field of :class:`PretrainConfig` is a command-line flag of ``python -m agents.pretrain`` (``gamma`` ->
``--gamma``, ``total_steps`` -> ``--total-steps``), its help written next to the field (:mod:`agents.cli`);
``--preset NAME`` starts from a preset and later flags override it. A preset's docstring gives the command and the
probe result it should reach.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents import cli
from agents.cli import check, flag_name, option
from agents.gvf import BACKUPS
from agents.models import ENCODERS, TIMM_PREFIX
from agents.sources import DINO_TEACHERS, SOURCES
from view_env import AUGMENTATIONS, INIT_AREAS, EnvParams

ENV_NAMES = ("shapes", "coco", "images", "video", "webdataset")
#: Behaviour policies the pretrainer can collect with (see :mod:`agents.collect`).
POLICY_NAMES = ("rrc", "uniform")
#: The default augmentations of the collected views: flips and colour jitter.
DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("flip", "brightness", "contrast", "saturation", "hue")
#: Fields added with a default that behaves otherwise than the code before them: a config written before a field
#: existed (a checkpoint, a comparison table's JSON) ran with this value, not with the field's default.
LEGACY_DEFAULTS: dict[str, Any] = {"crop_area": "log-uniform"}


def check_env_value(name: str, value: Any) -> None:
    """Check ``value`` of the environment parameter ``name`` by view_env's own rule (:class:`view_env.EnvParams`),
    naming the flag it came from (``--name``).

    Raises:
        ValueError: ``--name VALUE: <view_env's message>``.
    """
    try:
        EnvParams(**{name: value})
    except ValueError as error:
        raise ValueError(f"{flag_name(name)} {value!r}: {error}") from None


@dataclass
class PretrainConfig:
    """Configuration of one pretraining run; each field's help is its ``--flag``'s help."""

    env: str = option("shapes", "The view_env data source (``shapes``, ``coco``, ``images``, ``video``, or "
                      "``webdataset``: shards streamed in order, each rank its share, for sets larger than memory).")
    root: str | None = option(None, "Dataset root (default: the source's environment variable or cache); for "
                              "``webdataset`` a shard pattern such as ``shards/{00000..00099}.tar``.")
    max_images: int = option(20000, "Images resident in the environment's bank; a larger source (and always a "
                             "``webdataset`` stream) flows through a pool of this many, refreshed as episodes "
                             "reset.")
    split: str = option("train", "Split to pretrain on (``shapes`` and ``coco``); probes use ``val``.")
    annotations: str = option("labels", "Annotation source: ``views`` (SimCLR), ``prototypes`` (DINO), ``captions`` "
                              "(CLIP) or ``labels`` (the environment's annotation vector).")
    encoder: str = option("cnn", "``cnn`` (a 4-layer CNN, the CPU recipe), ``vit_tiny``, ``vit_small``, "
                          "``resnet18``, or ``timm:NAME`` for any timm model with spatial features, built from "
                          "scratch (e.g. ``timm:vit_tiny_patch16_224`` with ``--patch-size 8``, ``timm:resnet18``).")
    encoder_depth: int | None = option(None, "Override of the ViT depth (blocks); ``None`` keeps the preset's.")
    encoder_dim: int | None = option(None, "Override of the ViT width; ``None`` keeps the preset's.")
    patch_size: int | None = option(None, "ViT patch size; ``None`` fits it to the view size.")
    pool: str = option("mean", "ViT feature pooling: ``mean`` of the patch tokens or the ``cls`` token.")
    obs_size: int = option(32, "Side of the views in pixels.")
    embed_dim: int = option(128, "Width ``d`` of ``phi``, ``psi`` and the value features.")
    gamma: float = option(0.5, "Discount of the TD target; 0 is the one-step preprint variant.")
    backup: str = option("max", "``max`` (optimal GVF, as in the paper) or ``mean`` (GVF of the candidate-view "
                         "policy).")
    bootstrap_weight: float = option(1.0, "``lambda``, the weight of the bootstrapping loss; 0 gives the base "
                                     "method.")
    num_next_actions: int = option(8, "``K``, candidate next views drawn per transition for the backup.")
    action_tokens: bool = option(True, "Give the value head the action; ``False`` is the \"action tokens removed\" "
                                 "ablation.")
    action_bins: int = option(16, "Bins per relative-box coordinate.")
    value_depth: int = option(1, "Transformer decoder layers of the value head.")
    value_dim: int = option(64, "Width of the value head's decoder.")
    ema_momentum: float | None = option(None, "Initial EMA momentum of the target network (annealed to 1 by a "
                                        "cosine); ``None`` chooses it from the run's length "
                                        "(``agents.gvf.auto_ema_momentum``: 0.996, or less in runs too short for "
                                        "it).")
    target_network: bool = option(True, "Keep an EMA target network; ``False`` is the \"no target network\" "
                                  "ablation: the TD target and DINO's teacher come from the online network's "
                                  "current parameters, without a gradient (momentum 0).")
    num_prototypes: int = option(256, "Prototypes of the ``prototypes`` source.")
    text_dim: int = option(128, "Width of the ``captions`` source's text tower (trained from scratch). 128 wide and 2 "
                           "deep: a CLIP step of 0.34 s on 2 CPU cores, against 1.02 s at 256 x 4 (docs/gvf.md).")
    text_depth: int = option(2, "Blocks of the ``captions`` source's text tower.")
    dino_teacher: str = option("centering", "Teacher of the ``prototypes`` source: ``centering`` (DINO: centred, "
                               "sharpened softmax) or ``sinkhorn`` (DINOv2 / SwAV: Sinkhorn-Knopp balanced over the "
                               "batch).")
    teacher_temperature: float = option(0.04, "Sharpening temperature of the ``prototypes`` teacher.")
    koleo_weight: float = option(0.0, "Weight of the KoLeo spreading term on the student's view features "
                                 "(``prototypes``; DINOv2 uses 0.1).")
    total_steps: int = option(1200, "Optimiser steps. 1,200 (the comparison table's budget) keeps the default "
                              "run within 10 minutes on 2 cores without native bf16, where 1,500 took 13 "
                              "(docs/gvf.md).")
    batch_size: int = option(256, "Transitions per step (per process).")
    lr: float = option(2e-3, "Peak AdamW learning rate (cosine schedule after a linear warm-up).")
    weight_decay: float = option(0.05, "AdamW weight decay (not applied to biases, norms, temperatures, tokens and "
                                 "position embeddings).")
    warmup_steps: int | None = option(None, "Linear warm-up steps; ``None`` is 5% of ``total_steps`` (at least 1).")
    policy: str = option("rrc", "Behaviour policy of the collecting environments: ``rrc`` (the paper's independent "
                         "RandomResizedCrop views, every ordered pair a transition) or ``uniform`` (a random walk "
                         "of ``max_episode_steps`` relative moves, consecutive pairs).")
    views: int = option(4, "Views per image under ``rrc`` (``V``; ``V (V - 1)`` transitions each).")
    crop_scale: tuple[float, ...] = option((0.05, 1.0), "RandomResizedCrop area range (fractions of the image), as "
                                           "``low,high``; also the range of the backup's candidate next views and "
                                           "the smallest probe crop.")
    crop_ratio: tuple[float, ...] = option((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range, as "
                                           "``low,high``.")
    crop_area: str = option("uniform", "How a view's area is drawn in ``crop_scale``: ``uniform`` (torchvision's "
                            "RandomResizedCrop, the paper's views; mean area 0.46 of a square image over 0.05-1) or "
                            "``log-uniform`` (smaller views, mean 0.32: the law of runs before this field existed).")
    buffer_size: int = option(8192, "Transitions held by the replay ring buffer (per process); memory does not "
                              "grow beyond it.")
    replay_ratio: float = option(2.0, "Times each transition is sampled on average: after the buffer is first "
                                 "filled, ``batch_size / replay_ratio`` fresh transitions enter it per step.")
    num_envs: int = option(64, "Environments collecting (per process), one episode each per round.")
    max_episode_steps: int = option(16, "Episode length of the ``uniform`` random walk.")
    augmentations: tuple[str, ...] = option(DEFAULT_AUGMENTATIONS,
                                            "Augmentations of the collected views (comma-separated on the command "
                                            "line).")
    max_pan: float = option(0.5, "Largest pan of one random-walk move, in view widths.")
    data: str | None = option(None, "A directory of transition shards written by ``python -m agents.collect`` to "
                              "stream instead of collecting.")
    device: str = option("cpu", "``cpu``, ``cuda`` or ``cuda:N``.")
    seed: int = option(0, "Seed of data collection, initialisation and batches.")
    out: str = option("runs/default", "Output directory (checkpoints, probe results).")
    resume: bool = option(False, "Continue from ``<out>/checkpoint.pt``.")
    checkpoint_every: int = option(100, "Steps between checkpoints.")
    probe: bool = option(True, "Run the probes (pretrained, random-init and colour-grid encoders) at the end.")
    probe_train_images: int = option(2000, "Train-split images used to fit the probes.")
    num_workers: int = option(0, "Processes reading transition shards (``--data``; 0: the main process).")
    bf16: bool = option(True, "bf16 autocast of the loss on CUDA and on CPUs with native bf16 kernels (AVX512-BF16, "
                        "AMX); float32 elsewhere. On 2 AVX512-BF16 cores it makes a step 1.4 to 1.7 times faster "
                        "(compare the transitions/s a run prints with --no-bf16); on AVX512 CPUs without it bf16 is "
                        "emulated, and float32 was 1.7 times faster (agents.pretrain.native_cpu_bf16).")
    progress: bool = option(True, "Show progress bars.")
    tensorboard: bool = option(True, "Log training curves to TensorBoard (rank 0 only under DDP): losses, learning "
                               "rate, EMA momentum, target drift, bootstrap cross-entropy against uniform, views/s, "
                               "collection fraction and the final probes.")
    log_dir: str | None = option(None, "Where the TensorBoard event files go (default: ``<out>/tensorboard``; "
                                 "watch with ``tensorboard --logdir <out>``).")

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            check(ok, name, getattr(self, name), expected)

        if isinstance(self.augmentations, str):
            self.augmentations = tuple(a for a in self.augmentations.split(",") if a)
        self.augmentations = tuple(self.augmentations)
        for name in ("crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = tuple(float(v) for v in value.split(","))
                except ValueError:
                    value = None
                check(value is not None, name, getattr(self, name), "two numbers 'low,high'")
            setattr(self, name, tuple(float(v) for v in value))
        need(self.env in ENV_NAMES, "env", f"one of {ENV_NAMES}")
        need(self.annotations in SOURCES, "annotations", f"one of {SOURCES}")
        need(not (self.env == "webdataset" and self.annotations == "captions"), "annotations",
             "views, prototypes or labels with --env webdataset: the caption source reads captions by image index, "
             "which a stream has not; use --env images, which indexes the same shards")
        need(not (self.env == "webdataset" and self.root is None), "root",
             "a shard pattern with --env webdataset (e.g. shards/{00000..00099}.tar)")
        need(self.encoder in ENCODERS or (self.encoder.startswith(TIMM_PREFIX) and len(self.encoder) > 5), "encoder",
             f"one of {ENCODERS} or timm:NAME")
        need(self.pool in ("mean", "cls"), "pool", "'mean' or 'cls'")
        need(0.0 <= self.gamma < 1.0, "gamma", "a discount in [0, 1)")
        need(self.backup in BACKUPS, "backup", f"one of {BACKUPS}")
        need(self.text_dim % 4 == 0, "text_dim", "a multiple of 4 (the text tower's 4 attention heads)")
        need(self.dino_teacher in DINO_TEACHERS, "dino_teacher", f"one of {DINO_TEACHERS}")
        need(self.teacher_temperature > 0, "teacher_temperature", "a temperature > 0")
        need(self.koleo_weight >= 0, "koleo_weight", "a weight >= 0")
        need(self.bootstrap_weight >= 0, "bootstrap_weight", ">= 0")
        for name in ("obs_size", "embed_dim", "num_next_actions", "action_bins", "total_steps", "batch_size",
                     "buffer_size", "num_envs", "max_episode_steps", "checkpoint_every", "num_prototypes",
                     "value_depth", "value_dim", "probe_train_images", "max_images", "text_dim", "text_depth"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an integer >= 1")
        check_env_value("obs_size", self.obs_size)
        need(self.batch_size >= 2, "batch_size", "at least 2 (the annotations are the batch)")
        need(self.buffer_size >= self.batch_size, "buffer_size", f">= batch_size ({self.batch_size})")
        need(self.replay_ratio > 0, "replay_ratio", "a number > 0 (how many times each transition is sampled)")
        need(self.policy in POLICY_NAMES, "policy", f"one of {POLICY_NAMES} (a behaviour policy name)")
        need(isinstance(self.views, int) and self.views >= 2, "views", "an integer >= 2 (a transition needs two "
             "views of an image)")
        need(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale",
             "'low,high' area fractions with 0 < low <= high <= 1")
        need(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio",
             "'low,high' aspect ratios with 0 < low <= high")
        need(self.ema_momentum is None or 0.0 <= self.ema_momentum <= 1.0, "ema_momentum",
             "a value in [0, 1] or None (chosen from the run's length)")
        need(self.crop_area in INIT_AREAS, "crop_area", f"one of {', '.join(INIT_AREAS)}")
        need(self.lr > 0, "lr", "a learning rate > 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.warmup_steps is None or (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0),
             "warmup_steps", "an integer >= 0 or None (5% of total_steps)")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "an integer >= 0")
        unknown = [a for a in self.augmentations if a not in AUGMENTATIONS]
        need(not unknown, "augmentations", f"names from {AUGMENTATIONS} (unknown: {unknown})")

    @property
    def warmup(self) -> int:
        """The warm-up length in steps: ``warmup_steps``, or 5% of the run (at least 1 step)."""
        return self.warmup_steps if self.warmup_steps is not None else max(1, round(0.05 * self.total_steps))


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """A parser with one flag per :class:`PretrainConfig` field (:mod:`agents.cli`), plus ``--preset``."""
    parser = cli.build_parser(PretrainConfig, "python -m agents.pretrain", description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS,
                        help="start from a preset (see agents/config.py); later flags override it")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> PretrainConfig:
    """Parse command-line flags into a :class:`PretrainConfig` (preset first, then explicit flags).

    Raises:
        SystemExit: An unknown flag or a value its check refuses (status 2; the message names the flag).
    """
    parser = build_parser(__doc__)
    values = cli.given(parser, argv)
    preset = values.pop("preset", None)
    return cli.make(PretrainConfig, {**(PRESETS[preset].overrides if preset else {}), **values}, parser)


@dataclass(frozen=True)
class Preset:
    """A named configuration; the docstring says what to run and what it reaches."""

    overrides: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


PRESETS: dict[str, Preset] = {
    "shapes-labels-cpu": Preset(
        {},
        "The default (`make run`): the labels GVF on Shapes, the 4-layer CNN at 32 px, the paper's RandomResizedCrop "
        "pairs (4 views per image), 1,200 steps of 256 transitions on CPU.\n"
        "Command: python -m agents.pretrain --preset shapes-labels-cpu\n"
        "Reaches (Shapes val, mean of seeds 0, 1, 2, code of commit b82734b, the views' area uniform as torchvision "
        "draws it; 2 Intel Xeon cores in float32, docs/gvf.md): presence mAP 0.455, box top-1 0.335, k-NN top-1 "
        "0.326, count accuracy 0.209, attentive presence mAP 0.446, attentive box top-1 0.438 (random init: 0.423, "
        "0.198, 0.151, 0.186, 0.421, 0.226; colour-grid floor: 0.402, 0.119, 0.185, 0.145, 0.402, 0.119), above "
        "random init and the floor on every probe by more than the seed spread. With the earlier log-uniform areas "
        "(commit 3e24aff, 534 to 578 s wall each on the same machine): 0.451, 0.332, 0.322, 0.217, 0.436, 0.439; at "
        "1,500 steps (2 AMD EPYC cores under bf16, 7.0 to 7.7 min): 0.450, 0.386, 0.371, 0.229, 0.448, 0.485.",
    ),
    "shapes-views-cpu": Preset(
        {"annotations": "views", "total_steps": 1200,
         "augmentations": (*DEFAULT_AUGMENTATIONS, "grayscale")},
        "AB-SimCLR on Shapes at the CPU scale, 1,200 steps, with random grayscale beside the default jitter (the hue "
        "jitter leaves colours recognisable across views, so SimCLR can match views by colour; grey views take that "
        "shortcut away: the SimCLR rows of docs/benchmarks.md against their no-grayscale rows).\n"
        "Command: python -m agents.pretrain --preset shapes-views-cpu\n"
        "Measured before crop_area existed, with views of log-uniform area (crop_area='log-uniform'; "
        "the default is now torchvision's uniform law).\n"
        "Reaches (Shapes val, seed 0, the AB-SimCLR row of docs/benchmarks.md, code of commit f6a6cae on "
        "2 Intel Xeon cores in float32, 17 min): presence mAP 0.433, box top-1 0.256, k-NN top-1 0.226, count "
        "accuracy 0.221, attentive presence mAP 0.417, attentive box top-1 0.355 (random init on that machine: 0.421, "
        "0.202, 0.155, 0.184, 0.419, 0.228; colour grid k-NN 0.192; SimCLR with grayscale at the same 1,200 steps: "
        "0.432, 0.258, 0.214, 0.206, 0.424, 0.341). Without grayscale (commit 61d906b, probed again at c789cc6): "
        "0.432, 0.252, 0.191, 0.199, 0.423, 0.352.",
    ),
    "shapes-prototypes-cpu": Preset(
        {"annotations": "prototypes", "total_steps": 1200, "dino_teacher": "sinkhorn", "augmentations": ("flip",)},
        "AB-DINO on Shapes at the CPU scale, 1,200 steps, with a Sinkhorn-Knopp teacher and flips only: with the "
        "default colour jitter DINO's teacher is uniform within about 100 steps whatever its kind, temperature, EMA "
        "or KoLeo term (benchmarks/dino_collapse.py, docs/benchmarks.md). Command: python -m agents.pretrain "
        "--preset shapes-prototypes-cpu\n"
        "Measured before crop_area existed, with views of log-uniform area (crop_area='log-uniform'; "
        "the default is now torchvision's uniform law).\n"
        "Reaches (Shapes val, seed 0, the AB-DINO row of docs/benchmarks.md, code of commit 8c801ed on 2 CPU cores, "
        "6.5 min): presence mAP 0.436, box top-1 0.201, k-NN top-1 0.141, count accuracy 0.180, attentive presence "
        "mAP 0.436, attentive box top-1 0.267 (random init: 0.421, 0.198, 0.148, 0.179, 0.424, 0.222; DINO at the "
        "same steps: 0.436, 0.191, 0.145, 0.210, 0.439, 0.236; k-NN on object crops, probed again at c789cc6).",
    ),
    "shapes-captions-cpu": Preset(
        {"annotations": "captions", "total_steps": 1200, "lr": 5e-4, "augmentations": ()},
        "AB-CLIP on Shapes at the CPU scale, 1,200 steps, at lr 5e-4 and crops only (at the default 2e-3 both towers "
        "collapse to one embedding within 20 steps; colour jitter and flips would falsify the captions' colour words "
        "and left / right: benchmarks/clip_collapse.py, docs/gvf.md). Command: python -m agents.pretrain --preset "
        "shapes-captions-cpu\n"
        "Measured before crop_area existed, with views of log-uniform area (crop_area='log-uniform'; "
        "the default is now torchvision's uniform law).\n"
        "Reaches (Shapes val, seed 0, the AB-CLIP row of docs/benchmarks.md, code of commit 0c8df7c on 2 CPU cores, "
        "10.8 min): presence mAP 0.445, box top-1 0.229, k-NN top-1 0.178, count accuracy 0.205, attentive presence "
        "mAP 0.442, attentive box top-1 0.291 (random init: 0.421, 0.198, 0.148, 0.179, 0.424, 0.222; CLIP at the "
        "same steps: 0.442, 0.225, 0.185, 0.178, 0.442, 0.283; k-NN on object crops, probed again at c789cc6).",
    ),
    "coco-views-gpu": Preset(
        {"env": "coco", "annotations": "views", "encoder": "vit_small", "obs_size": 96, "batch_size": 256,
         "total_steps": 50000, "buffer_size": 65536, "num_envs": 1024, "device": "cuda", "lr": 5e-4,
         "value_depth": 2, "value_dim": 192, "augmentations": ("flip",)},
        "AB-SimCLR on COCO with a ViT-S at 96 px on one GPU (the paper's setting at reduced resolution: flip only, "
        "as the paper's ablation found colour augmentations of the views to hurt on COCO).\n"
        "Command: python -m agents.pretrain --preset coco-views-gpu --root /data/coco\n"
        "Reaches: not measured yet (no GPU was available to the session that wrote it).",
    ),
}
