"""Why DINO collapses on Shapes: short runs of the prototypes source's base method under variants of the recipe.

Each variant trains DINO (``--annotations prototypes --bootstrap-weight 0``) for ``--steps`` steps from the table's
recipe plus the variant's overrides, then reports:

- ``base``: the mean base loss over the last 10 steps (``log K`` = 5.545 for 256 prototypes is a student that
  predicts nothing: the collapse);
- ``cosine``: the mean cosine between the *target network's* view features of 256 val whole-image views, run as
  the loss runs it (train mode) (1: every image maps to one feature);
- ``teacher entropy``: of the target's centred teacher on those views (``log K``: a uniform teacher);
- ``prototypes used``: how many prototypes are some view's argmax.

``same-view`` replaces each transition's anchor by ``x`` itself (student and teacher see the same view): a check
that the loss can be fitted at all, not a training recipe.

    python benchmarks/dino_collapse.py                                   # the variants of docs/benchmarks.md
    python benchmarks/dino_collapse.py --variants default sinkhorn-flip --steps 300
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents import cli, pretrain
from agents.checkpoint import load_checkpoint, load_network
from agents.cli import check, option
from agents.config import PretrainConfig

#: name -> PretrainConfig overrides (``"same_view": True`` is the anchor check, handled here).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "teacher-0.07": {"teacher_temperature": 0.07},
    "sinkhorn": {"dino_teacher": "sinkhorn"},
    "sinkhorn-ema-0.996": {"dino_teacher": "sinkhorn", "ema_momentum": 0.996},
    "sinkhorn-lr-5e-4": {"dino_teacher": "sinkhorn", "lr": 5e-4, "ema_momentum": 0.996},
    "koleo": {"koleo_weight": 0.1},
    "sinkhorn-koleo": {"dino_teacher": "sinkhorn", "koleo_weight": 0.1},
    "same-view": {"dino_teacher": "sinkhorn", "ema_momentum": 0.996, "same_view": True},
    "sinkhorn-global-crops": {"dino_teacher": "sinkhorn", "crop_scale": (0.4, 1.0)},
    "sinkhorn-flip": {"dino_teacher": "sinkhorn", "augmentations": ("flip",)},
    "sinkhorn-flip-global-crops": {"dino_teacher": "sinkhorn", "augmentations": ("flip",), "crop_scale": (0.4, 1.0)},
}


@dataclass
class CollapseArgs:
    """Arguments of ``benchmarks/dino_collapse.py``."""

    variants: list[str] = option(list(VARIANTS), f"variants to run, among {', '.join(VARIANTS)}")
    steps: int = option(300, "optimiser steps per variant")
    seed: int = option(0, "seed of every variant")
    out_dir: Path = option(Path("runs/dino_collapse"), "checkpoints (OUT_DIR/VARIANT)")
    root: str | None = option(None, "Shapes root (default: the cache)")
    json: Path | None = option(None, "also write the results as JSON here")

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        check(not unknown, "variants", self.variants, f"names among {', '.join(VARIANTS)} (unknown: {unknown})")
        check(self.steps >= 10, "steps", self.steps, "an integer >= 10 (the loss is averaged over the last 10)")


def _same_view_sampler(sample: Any) -> Any:
    """``agents.pretrain._sample`` with every anchor replaced by the transition's own view ``x``."""

    def sample_same(*args: Any, **kwargs: Any) -> Any:
        batch, generator = sample(*args, **kwargs)
        batch["anchor_view"] = batch["view"]
        return batch, generator

    return sample_same


def run_variant(name: str, args: CollapseArgs) -> dict[str, Any]:
    """Train one variant and measure its teacher on 256 val views (see the module docstring)."""
    overrides = {k: v for k, v in VARIANTS[name].items() if k != "same_view"}
    config = PretrainConfig(annotations="prototypes", bootstrap_weight=0.0, total_steps=args.steps, probe=False,
                            progress=False, tensorboard=False, seed=args.seed, root=args.root,
                            out=str(args.out_dir / name), **overrides)
    sample = pretrain._sample
    if VARIANTS[name].get("same_view"):
        pretrain._sample = _same_view_sampler(sample)
    began = time.perf_counter()
    try:
        summary = pretrain.train(config)
    finally:
        pretrain._sample = sample
    seconds = time.perf_counter() - began
    checkpoint = Path(config.out) / "checkpoint.pt"
    teacher, _ = load_network(checkpoint)
    teacher.load_state_dict(load_checkpoint(checkpoint)["target"])
    views = pretrain.probe_set(config, val_images=256).val.views[:256]
    with torch.no_grad():  # in train mode, as the loss runs the target network (batch statistics in BatchNorm)
        phi = teacher.phi(teacher.encode(views).pooled)
        rows = len(phi)
        cosine = float(((phi @ phi.T).sum() - phi.pow(2).sum()) / (rows * (rows - 1)))
        logits = phi @ teacher.source.psi(None).T
        assignments = torch.softmax((logits - teacher.source.center) / config.teacher_temperature, dim=-1)
        entropy = float(-(assignments * assignments.clamp_min(1e-12).log()).sum(-1).mean())
        used = int(assignments.argmax(-1).unique().numel())
    base = [m["base"] for m in summary["metrics"]]
    return {"variant": name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in
                                           VARIANTS[name].items()},
            "base": sum(base[-10:]) / 10, "log_k": math.log(config.num_prototypes), "cosine": cosine,
            "teacher_entropy": entropy, "prototypes_used": used, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(CollapseArgs, argv, description=__doc__)
    results = []
    print(f"{'variant':<28}{'base':>8}{'cosine':>9}{'teacher H':>11}{'used':>6}{'s':>6}   (log K = "
          f"{math.log(PretrainConfig.num_prototypes):.3f})", flush=True)
    for name in args.variants:
        r = run_variant(name, args)
        results.append(r)
        print(f"{name:<28}{r['base']:>8.3f}{r['cosine']:>9.3f}{r['teacher_entropy']:>11.3f}"
              f"{r['prototypes_used']:>6}{r['seconds']:>6.0f}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "seed": args.seed, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
