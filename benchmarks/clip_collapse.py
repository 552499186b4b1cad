"""Why CLIP sits at chance on Shapes: short runs of the captions source's base method under variants of the recipe.

Each variant trains CLIP (``--annotations captions --bootstrap-weight 0``) for ``--steps`` steps from the table's
recipe plus the variant's overrides, and reports:

- ``base``: the mean base loss over the last 10 steps (``log B`` = 5.545 at batch 256 is a model that matches no
  view to its caption better than to any other: chance);
- ``view cos`` / ``caption cos``: the mean cosine between the online network's view features ``phi`` (and between
  the text tower's caption embeddings ``psi``) of 256 val images (whole-image views, each image's first caption),
  run as the loss runs them (train mode); 1 is every input mapped to one embedding (the collapse);
- ``@20``: the same two cosines on the training batch of step 20 (the last step of shorter runs), when the default
  recipe has already collapsed;
- ``i->t``: image-to-caption top-1 retrieval among those 256 val pairs (chance 1/256 = 0.004).

    python benchmarks/clip_collapse.py --json docs/results/clip_collapse.json     # the variants of docs/gvf.md
    python benchmarks/clip_collapse.py --variants default lr-5e-4-crops-only --steps 300
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
from agents.checkpoint import load_network
from agents.cli import check, option
from agents.config import PretrainConfig
from agents.gvf import Encoded
from view_env import default_canvas_size, render_views
from view_env.data import ImageBank, load_dataset

#: name -> PretrainConfig overrides of the table's base recipe (lr 2e-3, flip and colour jitter).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "crops-only": {"augmentations": ()},
    "lr-1e-3-crops-only": {"lr": 1e-3, "augmentations": ()},
    "lr-5e-4": {"lr": 5e-4},
    "lr-5e-4-crops-only": {"lr": 5e-4, "augmentations": ()},
}
#: The training step whose batch cosines are reported beside the end-of-run ones.
EARLY_STEP = 20
VAL_PAIRS = 256


@dataclass
class CollapseArgs:
    """Arguments of ``benchmarks/clip_collapse.py``."""

    variants: list[str] = option(list(VARIANTS), f"variants to run, among {', '.join(VARIANTS)}")
    steps: int = option(300, "optimiser steps per variant")
    seed: int = option(0, "seed of every variant")
    out_dir: Path = option(Path("runs/clip_collapse"), "checkpoints (OUT_DIR/VARIANT)")
    root: str | None = option(None, "Shapes root (default: the cache)")
    json: Path | None = option(None, "also write the results as JSON here")

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        check(not unknown, "variants", self.variants, f"names among {', '.join(VARIANTS)} (unknown: {unknown})")
        check(self.steps >= 10, "steps", self.steps, "an integer >= 10 (the loss is averaged over the last 10)")


def mean_cosine(z: torch.Tensor) -> float:
    """Mean off-diagonal cosine of the rows of ``z [N, d]`` (rows L2-normalised)."""
    n = len(z)
    return float(((z @ z.T).sum() - z.pow(2).sum()) / (n * (n - 1)))


def _embeddings(net: Any, views: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi [N, d]`` of ``views`` (uint8) and ``psi [N, d]`` of the caption tokens, without a gradient."""
    with torch.no_grad():
        phi = net.phi(net.encode(views).pooled)
        psi = net.source.psi(Encoded(phi=phi, captions=captions, same_image=None))
    return phi, psi


def _early_trace(early: dict[str, float], at: int) -> Any:
    """``agents.pretrain._Learner.step`` that also records the batch cosines after step ``at``."""
    step_fn = pretrain._Learner.step

    def step(self: Any, index: int, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        metrics = step_fn(self, index, batch, generator)
        if index == at:
            phi, psi = _embeddings(self.online, batch["view"], batch["captions"])
            early.update(view_cosine=mean_cosine(phi), caption_cosine=mean_cosine(psi))
        return metrics

    return step


def val_pairs(config: PretrainConfig) -> tuple[torch.Tensor, list[str]]:
    """The first :data:`VAL_PAIRS` val images as whole-image views ``uint8 [N, 3, S, S]`` and their first captions."""
    dataset = load_dataset("shapes", split="val", root=config.root, progress=False)
    n = min(VAL_PAIRS, len(dataset))
    bank = ImageBank.from_dataset(dataset, canvas_size=default_canvas_size(config.obs_size),
                                  indices=torch.arange(n), progress=False)
    rows = torch.arange(n)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(n, 4).contiguous()
    views = render_views(bank.images, rows, whole, config.obs_size)
    return views, [(dataset.records[int(i)].captions or ("",))[0] for i in bank.dataset_index[rows]]


def run_variant(name: str, args: CollapseArgs) -> dict[str, Any]:
    """Train one variant and measure its two towers on the val pairs (see the module docstring)."""
    config = PretrainConfig(annotations="captions", bootstrap_weight=0.0, total_steps=args.steps, probe=False,
                            progress=False, tensorboard=False, seed=args.seed, root=args.root,
                            out=str(args.out_dir / name), **VARIANTS[name])
    early: dict[str, float] = {}
    step_fn = pretrain._Learner.step
    early_step = min(EARLY_STEP, args.steps - 1)
    pretrain._Learner.step = _early_trace(early, early_step)
    began = time.perf_counter()
    try:
        summary = pretrain.train(config)
    finally:
        pretrain._Learner.step = step_fn
    seconds = time.perf_counter() - began
    net, _ = load_network(Path(config.out) / "checkpoint.pt")
    views, texts = val_pairs(config)
    phi, psi = _embeddings(net, views, net.source.tokenizer.encode(texts))
    retrieval = float((torch.argmax(phi @ psi.T, dim=1) == torch.arange(len(phi))).float().mean())
    base = [m["base"] for m in summary["metrics"]]
    return {"variant": name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in
                                           VARIANTS[name].items()},
            "base": sum(base[-10:]) / 10, "log_b": math.log(config.batch_size), "view_cosine": mean_cosine(phi),
            "caption_cosine": mean_cosine(psi), "early_step": early_step, "early": early,
            "image_to_caption_top1": retrieval, "pairs": len(phi), "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(CollapseArgs, argv, description=__doc__)
    results = []
    print(f"{'variant':<22}{'base':>8}{'view cos':>10}{'caption cos':>13}{'@20 view':>10}{'@20 caption':>13}"
          f"{'i->t':>7}{'s':>6}   (log B = {math.log(PretrainConfig.batch_size):.3f})", flush=True)
    for name in args.variants:
        r = run_variant(name, args)
        results.append(r)
        early = r["early"]
        print(f"{name:<22}{r['base']:>8.3f}{r['view_cosine']:>10.3f}{r['caption_cosine']:>13.3f}"
              f"{early.get('view_cosine', math.nan):>10.3f}{early.get('caption_cosine', math.nan):>13.3f}"
              f"{r['image_to_caption_top1']:>7.3f}{r['seconds']:>6.0f}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "seed": args.seed, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
