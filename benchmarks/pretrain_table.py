"""The paper's comparison at CPU scale on Shapes: every annotation source with and without bootstrapping, the labels
GVF, and the ablations of AB-SimCLR, at equal budget, probed with the same frozen-feature probes over several seeds.

Rows (``--rows`` takes these names, comma-separated):

- ``random-init``: the encoder of the same architecture at its initialisation (probed only, no training);
- ``colour-grid``: the floor, the mean colour of each cell of a 4 x 4 grid (``agents.probe.ColourGridEncoder``,
  probed only): what colour and coarse layout alone score;
- ``chance``: what each probe scores without looking at the image (``agents.probe.chance_scores``: the val
  prevalence for presence, the most frequent train label for box and k-NN, the train mean count);
- ``simclr`` / ``ab-simclr``: ``annotations="views"``, bootstrap weight 0 / 1, with random grayscale beside the
  base recipe's flips and colour jitter (:data:`VIEWS`);
- ``dino`` / ``ab-dino``: ``annotations="prototypes"``, 0 / 1, with a Sinkhorn-Knopp teacher and flips only
  (:data:`PROTOTYPES`);
- ``clip`` / ``ab-clip``: ``annotations="captions"``, 0 / 1, at lr 5e-4 and crops only (:data:`CAPTIONS`);
- ``labels`` / ``labels-gvf``: ``annotations="labels"``, 0 / 1 (the default preset's GVF);
- ablations of AB-SimCLR (gamma 0.5, max backup, action tokens): ``ab-simclr-gamma0``, ``ab-simclr-gamma0.9``,
  ``ab-simclr-mean`` (the mean backup: the GVF of the uniform policy), ``ab-simclr-no-tokens``
  (``action_tokens=False``) and ``ab-simclr-no-target`` (``target_network=False``: the TD target from the online
  network of the step, without a gradient). Gamma 0.5 and the max backup are the ``ab-simclr`` row itself;
- ``ab-dino-no-tokens`` and ``ab-dino-gamma0``: AB-DINO without action tokens, and at gamma 0 (the one-step target,
  the sharpest TD targets of the AB-SimCLR ablations), compared with ``ab-dino`` (the one bootstrapped row with a
  gain on an attentive probe beyond the seed spread);
- ``simclr-no-gray`` / ``ab-simclr-no-gray``: SimCLR and AB-SimCLR with the base recipe's augmentations alone
  (no grayscale: :data:`VIEWS_NO_GRAY`), the SimCLR rows of the table before grayscale was added;
- ``dino-gray`` / ``ab-dino-gray``: DINO and AB-DINO with random grayscale beside the flips
  (:data:`PROTOTYPES_GRAY`): the recipe that gives DINO's features shape, against the flip-only rows where
  AB-DINO's bootstrapped targets are sharpest; ``ab-dino-gray-gamma0``: AB-DINO with grayscale at gamma 0 (the
  one-step target, which kept AB-DINO's attentive gain flip-only with the sharpest targets), against ``ab-dino-gray``;
- ``dino-gray-t0.02`` / ``ab-dino-gray-t0.02``: the same with the teacher's temperature halved to 0.02
  (:data:`PROTOTYPES_GRAY_SHARP`): grayscale flattens the teacher at 0.04, and AB-DINO's gain came with a sharp
  one (at 0.02 the gain did not come back).

Equal budget: every row is one :class:`agents.config.PretrainConfig` built from the same base (the defaults of
``python -m agents.pretrain``, the CPU recipe) with the same ``total_steps`` (``--steps``), plus the row's few
overrides; ``--set FIELD=VALUE`` changes the base of every row. All rows of a seed (but the DINO and CLIP rows,
whose views are augmented less) train on the same transitions:
each run streams them from the environment while it trains, and the stream is a pure function of the seed (rounds
seeded by ``(seed, round)``, the same replay ratio and batch), so every row sees exactly the same views. The budget
is equal in optimiser steps and views, not in compute: a base method skips the value head and so runs faster per
step.

The views' area law: the runs of docs/results/pretrain_table.json (and of its reprobe on every train image,
docs/results/pretrain_table_all_images.json) drew each view's area log-uniformly in ``crop_scale``, before
``crop_area`` existed; the pretrainer now draws it uniformly, as torchvision's RandomResizedCrop (larger views, a mean
area of 0.46 against 0.32). Those JSONs resume, and their runs are probed again, only with ``--set
crop_area=log-uniform``; new rows are trained under the uniform law into a new JSON,
docs/results/pretrain_table_uniform.json (probed on all 10,000 train images; its own docs section), which grows
row by row with ``--resume-json`` until it can replace the first table.

Probes: the same as ``agents.pretrain --probe`` (``agents.probe.run_probes``: presence mAP, box top-1, k-NN top-1,
count accuracy and MAE, and the attentive probes' box top-1 and presence mAP) on the same images
(``--probe-train-images`` train images drawn with the seed, the whole val
split unless ``--probe-val-images``). Each trained row probes only its pretrained encoder (from its checkpoint); the
random-init encoder and the colour-grid floor are probed once per seed (the random-init encoder is the same for every
row: it is built first from the torch seed ``seed + 1``, as in ``agents.pretrain``), and probed again on every
other machine that probes a trained run of the seed, since the same encoder's scores differ by up to about 0.01
between CPUs: each trained run is set against the floors probed on its own machine (:data:`MACHINE_REFERENCES`;
the table shows a floor's other machines in rows under it). The table gives the mean and
the sample standard deviation over seeds; each run also records the diagnostics of its last 10% of steps (the
bootstrap cross-entropy, the entropy of the TD targets against that of a uniform target, the DINO teacher's entropy
and feature cosine, the overlap of the batches' two views (mean IoU, fraction of disjoint pairs), the target network's
drift and the fraction of time spent collecting). The loss runs under bf16 autocast only on hardware that computes
bf16 natively (``agents.pretrain.use_bf16``), so each run records the ``precision`` it ran in and the reading names
it per row (and per seed where a row's seeds differ); ``--set bf16=false`` keeps a machine with native bf16 in
float32, to continue a table of float32 runs (the flag is not among the settings a resumed JSON must match).

Outputs: the table and a plain reading on stdout; the raw per-seed results as JSON (``--json``, written after every
run, so ``--resume-json`` can continue a killed run, skipping the (row, seed) pairs it already holds); a PNG of
grouped bars (``--plot``); with ``--write-docs``, the section of docs/benchmarks.md between the pretrain_table
markers.

    python benchmarks/pretrain_table.py --write-docs     # every row x 3 seeds at 1,200 steps: some 11 h on 2 cores
                                                         # (the JSON's 75 runs: 39,306 s, on two machines)
    python benchmarks/pretrain_table.py --rows random-init,colour-grid,simclr,ab-simclr --steps 1200 --write-docs
                                                         # 3 seeds: 2,319 s on 2 cores (docs/benchmarks.md)
    python benchmarks/pretrain_table.py --quick          # 7 rows, 1 seed, 40 steps, small probes
    python benchmarks/pretrain_table.py --resume-json runs/pretrain_table.json --write-docs   # continue a run
    python benchmarks/pretrain_table.py --resume-json runs/pretrain_table.json --reprobe --write-docs
                                 # a probe changed: probe every held run again from its checkpoint in --out-dir
                                 # (51 runs of docs/benchmarks.md's table: 674 s on 2 cores)
    python benchmarks/pretrain_table.py --rows ROWS --resume-json docs/results/pretrain_table.json --reprobe \
        --probe-train-images 10000 --json docs/results/pretrain_table_all_images.json \
        --docs-section pretrain_table_all_images --write-docs
                                 # other probe settings: the runs of ROWS probed again into a new JSON (the old
                                 # one keeps its own protocol's scores) and a docs section of their own
    python benchmarks/pretrain_table.py --rows ROWS --seeds 3 --probe-train-images 10000 \
        --out-dir runs/pretrain_uniform --resume-json docs/results/pretrain_table_uniform.json \
        --json docs/results/pretrain_table_uniform.json --docs-section pretrain_table_uniform --write-docs
                                 # the table under torchvision's area law, a few rows at a time (floors, SimCLR
                                 # and AB-SimCLR x 3 seeds: 5,528 s on 2 AMD EPYC cores)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DOCS, ROOT, commit, machine, relative, write_section

from agents import cli
from agents.checkpoint import CheckpointError, config_to_dict, load_checkpoint, load_encoder
from agents.cli import check, flag_name, option
from agents.config import DEFAULT_AUGMENTATIONS, LEGACY_DEFAULTS, PretrainConfig
from agents.network import random_init_encoder
from agents.pretrain import curve_log_dir, probe_set, read_curves, tail_means, train, use_bf16
from agents.probe import ColourGridEncoder, ProbeData, chance_scores, run_probes

FIGURE = ROOT / "docs" / "figures" / "pretrain_table.png"
#: Training curves of the rows that logged them (read from each run's TensorBoard log, stored in the JSON).
CURVES_FIGURE = ROOT / "docs" / "figures" / "pretrain_curves.png"
#: TensorBoard tags kept per run (at most CURVE_POINTS points each): the diagnostics of the bootstrapped target.
CURVE_TAGS = ("loss/base", "loss/bootstrap", "bootstrap/target_entropy", "bootstrap/uniform", "target/drift")
CURVE_POINTS = 60
#: The docs section ``--write-docs`` writes by default; another ``--docs-section`` (e.g. the table under other probe
#: settings) gets its own markers, heading, figure and curves figure.
SECTION = "pretrain_table"
HEADING = "Pretraining comparison on Shapes"


def markers(section: str) -> tuple[str, str]:
    """The HTML comments around a generated docs section."""
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


START, END = markers(SECTION)

#: Probe keys, their column names, and whether higher is better.
PROBES = {"presence_map": ("presence mAP", True), "box_top1": ("box top-1", True), "knn_top1": ("k-NN top-1", True),
          "count_acc": ("count acc", True), "count_mae": ("count MAE", False),
          "attn_presence_map": ("attentive presence mAP", True), "attn_box_top1": ("attentive box top-1", True)}
#: Training diagnostics every run records: means over its last 10% of steps (:func:`agents.pretrain.tail_means`)...
TAIL_DIAGNOSTICS = ("bootstrap", "target_entropy", "uniform", "pair_iou", "pair_disjoint")
#: ... and the summary's values at its end.
END_DIAGNOSTICS = ("target_drift", "collect_fraction", "ema_base_momentum")
DIAGNOSTICS = (*TAIL_DIAGNOSTICS, *END_DIAGNOSTICS)
#: The DINO rows' teacher diagnostics (means over the last 10% of steps), recorded where the run logs them: the
#: teacher's entropy over the prototypes and the mean cosine between the target's features of a batch.
TEACHER_DIAGNOSTICS = ("teacher_entropy", "teacher_cosine")
DEFAULT_STEPS = PretrainConfig.total_steps
DEFAULT_SEEDS = 3
QUICK = {"seeds": 1, "steps": 40, "rows": "random-init,colour-grid,chance,simclr,ab-simclr,labels,labels-gvf",
         "buffer_size": 2048, "probe_train_images": 500, "probe_val_images": 300}


@dataclass(frozen=True)
class Row:
    """One row of the table: ``overrides`` of the base config, or ``None`` for a probed-only encoder (random init,
    colour grid)."""

    name: str
    label: str
    overrides: dict[str, Any] | None


#: SimCLR's rows: random grayscale (each view grey with probability 1/2) beside the base recipe's jitter, as
#: SimCLR's own augmentations include it (at 0.2 there): the hue jitter (+-0.15) leaves each object's and each
#: scene's colour recognisable across two views, so "same image" can be told by colour alone; grey views take that
#: shortcut away half of the time. Without it SimCLR's k-NN stayed at the colour-grid floor (``simclr-no-gray``).
VIEWS = {"annotations": "views", "bootstrap_weight": 1.0, "augmentations": (*DEFAULT_AUGMENTATIONS, "grayscale")}
#: DINO's rows: with the colour jitter of the base recipe DINO's teacher is uniform within 100 steps whatever the
#: teacher (centring or Sinkhorn-Knopp), its temperature, the EMA or KoLeo; without it a Sinkhorn-Knopp teacher
#: learns (benchmarks/dino_collapse.py, docs/benchmarks.md).
PROTOTYPES = {"annotations": "prototypes", "dino_teacher": "sinkhorn", "augmentations": ("flip",)}
#: DINO's rows with random grayscale (each view grey with probability 1/2) beside the flips: colour becomes a
#: nuisance without the hue jitter that makes the teacher uniform, so the features must carry shape.
PROTOTYPES_GRAY = {**PROTOTYPES, "augmentations": ("flip", "grayscale")}
#: DINO's rows with grayscale and a sharper teacher: at the default temperature (0.04) the grayscale runs' teacher
#: ends nearly flat (entropy 4.4-4.6 of log 256 = 5.55), and so do AB-DINO's TD targets; at 0.02 it ends at 1.7-1.8
#: and AB-DINO's targets at 3.8, yet AB-DINO still ties DINO (docs/benchmarks.md; 0.01: entropy 0.9, box top-1 lower).
PROTOTYPES_GRAY_SHARP = {**PROTOTYPES_GRAY, "teacher_temperature": 0.02}
#: CLIP's rows: at the base lr (2e-3) both towers collapse to one constant embedding within 20 steps and the loss
#: stays at log B; at 5e-4 (CLIP's own rate) it leaves that plateau. Crops only, as CLIP trains: the hue jitter
#: would falsify the captions' colour words and the flip their "left of" / "right of" (docs/gvf.md).
CAPTIONS = {"annotations": "captions", "lr": 5e-4, "augmentations": ()}
#: SimCLR's rows of the base recipe's augmentations (flips and colour jitter, no grayscale).
VIEWS_NO_GRAY = {"annotations": "views", "augmentations": DEFAULT_AUGMENTATIONS}
ROWS: dict[str, Row] = {r.name: r for r in (
    Row("random-init", "random init", None),
    Row("colour-grid", "colour-grid floor", None),
    Row("chance", "chance (image-blind)", None),
    Row("simclr", "SimCLR", {**VIEWS, "bootstrap_weight": 0.0}),
    Row("ab-simclr", "AB-SimCLR", VIEWS),
    Row("dino", "DINO (Sinkhorn-Knopp, flip only)", {**PROTOTYPES, "bootstrap_weight": 0.0}),
    Row("ab-dino", "AB-DINO (Sinkhorn-Knopp, flip only)", {**PROTOTYPES, "bootstrap_weight": 1.0}),
    Row("clip", "CLIP (lr 5e-4, crops only)", {**CAPTIONS, "bootstrap_weight": 0.0}),
    Row("ab-clip", "AB-CLIP (lr 5e-4, crops only)", {**CAPTIONS, "bootstrap_weight": 1.0}),
    Row("labels", "labels base", {"annotations": "labels", "bootstrap_weight": 0.0}),
    Row("labels-gvf", "labels GVF", {"annotations": "labels", "bootstrap_weight": 1.0}),
    Row("ab-simclr-gamma0", "AB-SimCLR, gamma 0", {**VIEWS, "gamma": 0.0}),
    Row("ab-simclr-gamma0.9", "AB-SimCLR, gamma 0.9", {**VIEWS, "gamma": 0.9}),
    Row("ab-simclr-mean", "AB-SimCLR, mean backup", {**VIEWS, "backup": "mean"}),
    Row("ab-simclr-no-tokens", "AB-SimCLR, no action tokens", {**VIEWS, "action_tokens": False}),
    Row("ab-simclr-no-target", "AB-SimCLR, no target network", {**VIEWS, "target_network": False}),
    Row("ab-dino-no-tokens", "AB-DINO, no action tokens", {**PROTOTYPES, "bootstrap_weight": 1.0,
                                                           "action_tokens": False}),
    Row("ab-dino-gamma0", "AB-DINO, gamma 0", {**PROTOTYPES, "bootstrap_weight": 1.0, "gamma": 0.0}),
    Row("simclr-no-gray", "SimCLR (no grayscale)", {**VIEWS_NO_GRAY, "bootstrap_weight": 0.0}),
    Row("ab-simclr-no-gray", "AB-SimCLR (no grayscale)", {**VIEWS_NO_GRAY, "bootstrap_weight": 1.0}),
    Row("dino-gray", "DINO (Sinkhorn-Knopp, flip and grayscale)", {**PROTOTYPES_GRAY, "bootstrap_weight": 0.0}),
    Row("ab-dino-gray", "AB-DINO (Sinkhorn-Knopp, flip and grayscale)", {**PROTOTYPES_GRAY, "bootstrap_weight": 1.0}),
    Row("ab-dino-gray-gamma0", "AB-DINO, grayscale, gamma 0", {**PROTOTYPES_GRAY, "bootstrap_weight": 1.0,
                                                                "gamma": 0.0}),
    Row("dino-gray-t0.02", "DINO (flip and grayscale, teacher T 0.02)", {**PROTOTYPES_GRAY_SHARP,
                                                                         "bootstrap_weight": 0.0}),
    Row("ab-dino-gray-t0.02", "AB-DINO (flip and grayscale, teacher T 0.02)", {**PROTOTYPES_GRAY_SHARP,
                                                                               "bootstrap_weight": 1.0}),
)}
#: The rows that train nothing, drawn as lines across the figure's panels.
FLOORS = ("random-init", "colour-grid", "chance")
#: The floors whose probes depend on the machine: an encoder's features and the probes fitted on them are float32
#: computations whose rounding differs between CPUs (random init, 3 seeds, on an AMD EPYC / an Intel Xeon: presence
#: mAP 0.419 / 0.423, count accuracy 0.174 / 0.186, attentive presence mAP 0.418 / 0.421). They are probed again on
#: every machine that probes a trained run of the seed, and each trained run is set against the ones probed on its
#: own machine. Chance is image-blind arithmetic.
MACHINE_REFERENCES = ("random-init", "colour-grid")
#: (source, base row, bootstrapped row).
PAIRS = (("SimCLR", "simclr", "ab-simclr"), ("DINO", "dino", "ab-dino"), ("CLIP", "clip", "ab-clip"),
         ("labels", "labels", "labels-gvf"), ("SimCLR, no gray", "simclr-no-gray", "ab-simclr-no-gray"),
         ("DINO, gray", "dino-gray", "ab-dino-gray"), ("DINO, gray, T 0.02", "dino-gray-t0.02", "ab-dino-gray-t0.02"))
#: (what the ablation changes, row, the full row it is compared with): ``ab-simclr`` (gamma 0.5, max backup, action
#: tokens), ``ab-dino``, the one source whose bootstrapped row beats its base on an attentive probe, or
#: ``ab-dino-gray``.
ABLATIONS = (("gamma 0", "ab-simclr-gamma0", "ab-simclr"), ("gamma 0.9", "ab-simclr-gamma0.9", "ab-simclr"),
             ("mean backup", "ab-simclr-mean", "ab-simclr"), ("no action tokens", "ab-simclr-no-tokens", "ab-simclr"),
             ("no target network", "ab-simclr-no-target", "ab-simclr"),
             ("no action tokens", "ab-dino-no-tokens", "ab-dino"), ("gamma 0", "ab-dino-gamma0", "ab-dino"),
             ("gamma 0", "ab-dino-gray-gamma0", "ab-dino-gray"))
#: How the reading names each full row of :data:`ABLATIONS`.
FULL_ROWS = {"ab-simclr": "AB-SimCLR (gamma 0.5, max backup, action tokens)",
             "ab-dino": "AB-DINO (gamma 0.5, max backup, action tokens)",
             "ab-dino-gray": "AB-DINO, grayscale (gamma 0.5, max backup, action tokens)"}
#: Fields each row sets, or the script sets per run: ``--set`` may not change them.
RESERVED = {"annotations", "bootstrap_weight", "gamma", "backup", "action_tokens", "target_network", "seed", "out",
            "data", "resume", "total_steps", "probe", "probe_train_images", "root", "env", "split", "progress"}


# ----------------------------------------------------------------------------------------------------- settings


def base_config(args: TableArgs) -> PretrainConfig:
    """The settings every row shares (seed, output and data are set per run).

    Raises:
        ValueError: :class:`PretrainConfig` refuses a value; the message names the flag it came from (a ``--set``
            item, or this script's own flag).
    """
    values: dict[str, Any] = {"env": "shapes", "root": args.shapes_root, "total_steps": args.steps, "probe": False,
                              "probe_train_images": args.probe_train_images, "progress": args.progress}
    if args.buffer_size is not None:
        values["buffer_size"] = args.buffer_size
    values.update(args.config_overrides)
    try:
        return PretrainConfig(**values)
    except ValueError as error:
        for name in args.config_overrides:  # PretrainConfig names its own flag; say which --set item that is
            if str(error).startswith(flag_name(name) + " "):
                raise ValueError(f"--set {name}=...: {error}") from None
        raise


#: The settings of the probes alone: a JSON's runs may be probed again under others (``--reprobe --json NEW``).
PROBE_SETTINGS = ("probe_train_images", "probe_val_images")


#: Config fields of how a run executes, not of what it computes: not part of a JSON's settings. ``bf16`` is one of
#: them because autocast follows the hardware (only where bf16 is native): each run records the ``precision`` its
#: loss ran in, the table's reading names it per row and seed, and ``--set bf16=false`` on a machine with native
#: bf16 continues a table of float32 runs in float32.
EXECUTION_FIELDS = ("seed", "out", "data", "resume", "progress", "probe", "device", "num_workers", "bf16")


def settings(base: PretrainConfig, args: TableArgs) -> dict[str, Any]:
    """What must match for results to be comparable (and for ``--resume-json`` to continue them)."""
    config = config_to_dict(base)
    for name in EXECUTION_FIELDS:
        config.pop(name)
    return {"config": config, "probe_train_images": args.probe_train_images,
            "probe_val_images": args.probe_val_images}


def row_config(base: PretrainConfig, row: Row, seed: int, out_dir: Path) -> PretrainConfig:
    assert row.overrides is not None
    return dataclasses.replace(base, **row.overrides, seed=seed, out=str(out_dir / row.name / f"seed{seed}"))


# ------------------------------------------------------------------------------------------- data and the runs


def probe_only(name: str, base: PretrainConfig, seed: int, data: ProbeData) -> dict[str, float]:
    """The probes of an encoder that is not trained: the one every row starts from for ``seed`` (built as
    ``agents.pretrain`` builds it), or the colour-grid floor; or the image-blind chance scores."""
    if name == "chance":
        return chance_scores(data)
    if name == "colour-grid":
        return run_probes(ColourGridEncoder(), data, device=base.device, progress=base.progress, seed=seed)
    # The encoder is built first from the torch seed, so the annotation source does not change it.
    config = dataclasses.replace(base, annotations="labels", seed=seed)
    encoder = random_init_encoder(config).to(base.device)
    return run_probes(encoder, data, device=base.device, progress=base.progress, seed=seed)


def differing(saved: PretrainConfig, config: PretrainConfig,
              ignore: Sequence[str] = ("resume", "progress")) -> list[str]:
    """The fields, other than ``ignore``, in which a checkpoint's config differs from a run's (empty: the same run)."""
    old, new = (config_to_dict(c) for c in (saved, config))
    return sorted(k for k in {*old, *new} if k not in ignore and old.get(k) != new.get(k))


def reprobe(config: PretrainConfig, data: ProbeData) -> dict[str, float]:
    """The probes of a finished run, again, from its checkpoint (``--reprobe``: for when a probe changes).

    Raises:
        ValueError: The checkpoint is missing or unreadable, of another run, or of an unfinished one; the message
            says which.
    """
    checkpoint = Path(config.out) / "checkpoint.pt"
    try:
        payload = load_checkpoint(checkpoint)
    except CheckpointError as error:
        raise ValueError(f"--reprobe: {error}") from None
    # What the run was: every field but where it was written and how it was watched (the checkpoints may have moved).
    differ = differing(payload["config"], config, ("out", "resume", "progress", "device", "num_workers",
                                                    "probe_train_images"))
    if differ:
        raise ValueError(f"--reprobe: {checkpoint} is of another run ({', '.join(differ)} differ); point --out-dir "
                         "at the checkpoints of the JSON's runs")
    if payload["step"] != config.total_steps:
        raise ValueError(f"--reprobe: {checkpoint} stopped at step {payload['step']} of {config.total_steps}; "
                         "finish the run (drop --reprobe and the run from the JSON) first")
    encoder, _ = load_encoder(checkpoint, config.device)
    return run_probes(encoder, data, device=config.device, progress=config.progress, seed=config.seed)


def probed_on(result: dict[str, Any]) -> str | None:
    """The machine whose probes a run's ``probes`` are: the last ``--reprobe``'s, or the run's own."""
    return (result.get("reprobed") or {}).get("machine") or result.get("machine")


def reference_probes(result: dict[str, Any]) -> dict[str | None, dict[str, float]]:
    """A floor run's probes per machine (:data:`MACHINE_REFERENCES`): its ``probes`` on the machine that made them
    (``None`` where the run recorded none), and those of other machines under ``by_machine``."""
    found = {name: entry["probes"] for name, entry in result.get("by_machine", {}).items()}
    found[probed_on(result)] = result["probes"]
    return found


def machine_label(name: str | None) -> str:
    """A machine string of :func:`common.machine` without its software: the CPU model and core count."""
    return "an unrecorded machine" if name is None else name.split(", torch")[0]


def recorded_overrides(row: Row) -> dict[str, Any]:
    """``row.overrides`` as the JSON stores them (tuples as lists): what each run records, and resuming checks."""
    return json.loads(json.dumps(row.overrides))


def run_diagnostics(summary: dict[str, Any]) -> dict[str, float]:
    """A run's diagnostics from :func:`agents.pretrain.train`'s summary: the means over the last 10% of its steps of
    :data:`TAIL_DIAGNOSTICS` and :data:`TEACHER_DIAGNOSTICS` (each where the run logged it), and the summary's
    :data:`END_DIAGNOSTICS` at the end."""
    diagnostics = tail_means(summary["metrics"], (*TAIL_DIAGNOSTICS, *TEACHER_DIAGNOSTICS))
    return diagnostics | {key: summary[key] for key in END_DIAGNOSTICS}


def missing_references(runs: dict[str, dict[str, Any]], here: str) -> list[tuple[int, str]]:
    """The (seed, floor) pairs to probe on machine ``here``: a trained run of the seed was probed here, and the
    floor's run of that seed (held in ``runs``) has no probes of this machine."""
    todo = []
    for name in MACHINE_REFERENCES:
        for seed, result in runs.get(name, {}).items():
            trained_here = any(probed_on(per_row[seed]) == here for row, per_row in runs.items()
                               if row in ROWS and ROWS[row].overrides is not None and seed in per_row)
            if trained_here and here not in reference_probes(result):
                todo.append((int(seed), name))
    return sorted(todo)


def pretrain_and_probe(config: PretrainConfig, data: ProbeData) -> dict[str, Any]:
    """Train one row for one seed (continuing its checkpoint when it is of this exact run) and probe it."""
    checkpoint = Path(config.out) / "checkpoint.pt"
    if checkpoint.is_file():
        try:
            same = not differing(load_checkpoint(checkpoint)["config"], config)
        except CheckpointError:
            same = False
        config = dataclasses.replace(config, resume=same)
    began, cpu = time.perf_counter(), time.process_time()
    summary = train(config)
    train_seconds, train_cpu = time.perf_counter() - began, time.process_time() - cpu
    began = time.perf_counter()
    encoder, _ = load_encoder(checkpoint, config.device)
    probes = run_probes(encoder, data, device=config.device, progress=config.progress, seed=config.seed)
    diagnostics = run_diagnostics(summary)
    log_dir = curve_log_dir(config)  # the run's own TensorBoard log, read back: what the curves figure plots
    curves = read_curves(log_dir, CURVE_TAGS, CURVE_POINTS) if log_dir is not None and log_dir.is_dir() else {}
    return {"probes": probes, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "curves": curves,
            "probe_seconds": time.perf_counter() - began, "diagnostics": diagnostics,
            "steps": summary["step"], "first_loss": summary["first_loss"], "last_loss": summary["last_loss"],
            "resumed_checkpoint": config.resume,
            # What the loss ran in: ``--bf16`` autocasts only where the hardware computes bf16 natively.
            "precision": "bf16" if use_bf16(config, torch.device(config.device)) else "float32"}


# ------------------------------------------------------------------------------------------ table and reading


def _statistics(probes: list[dict[str, float]]) -> dict[str, Any]:
    """``n`` and, per probe, the mean and sample std (ddof 1; 0 for one value)."""
    entry: dict[str, Any] = {"n": len(probes)}
    for key in PROBES:
        values = np.array([p[key] for p in probes], dtype=float)
        entry[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return entry


def aggregate(runs: dict[str, dict[str, Any]], seeds: int) -> dict[str, dict[str, Any]]:
    """Per row: the seeds used, and the mean and sample std (ddof 1; 0 for one seed) of every probe.

    A floor of :data:`MACHINE_REFERENCES` also gets ``primary`` (the machines of its own ``probes``) and
    ``machines``: its statistics per machine that probed any of its seeds, the primary one left out when there is a
    single one. A trained row gets ``precision`` (per precision its runs' losses ran in, ``"bf16"``, ``"float32"``
    or ``"not recorded"``, the seeds that ran in it) and ``versus``: per floor, the floor's
    statistics over the seeds both hold, each seed's probes from the machine that probed the row's run of that seed
    (``unmatched``: seeds whose machine has none, which fall back to the floor's own ``probes``; ``missing``: seeds
    of the row the floor does not hold).
    """
    table = {}
    for name in ROWS:
        per_seed = {str(s): runs[name][str(s)] for s in range(seeds) if str(s) in runs.get(name, {})}
        if not per_seed:
            continue
        entry = _statistics([r["probes"] for r in per_seed.values()])
        seconds = [r.get("train_seconds") for r in per_seed.values() if r.get("train_seconds") is not None]
        entry["train_seconds"] = float(np.mean(seconds)) if seconds else None
        if name in MACHINE_REFERENCES:
            primary = {probed_on(r) for r in per_seed.values()}
            others: dict[str | None, list[dict[str, float]]] = {}
            for result in per_seed.values():
                for machine_name, probes in reference_probes(result).items():
                    if len(primary) > 1 or machine_name not in primary:
                        others.setdefault(machine_name, []).append(probes)
            entry["primary"] = primary
            entry["machines"] = {m: _statistics(v) for m, v in sorted(others.items(), key=lambda i: str(i[0]))}
        elif ROWS[name].overrides is not None:
            kinds: dict[str, list[int]] = {}
            for seed, result in per_seed.items():
                kinds.setdefault(result.get("precision", "not recorded"), []).append(int(seed))
            entry["precision"] = {kind: kinds[kind] for kind in sorted(kinds)}
            entry["versus"] = {}
            for reference in MACHINE_REFERENCES:
                held = runs.get(reference, {})
                matched, unmatched = [], 0
                for seed, result in per_seed.items():
                    if seed in held:
                        probes = reference_probes(held[seed]).get(probed_on(result))
                        unmatched += probes is None
                        matched.append(held[seed]["probes"] if probes is None else probes)
                if matched:
                    entry["versus"][reference] = {**_statistics(matched), "unmatched": unmatched,
                                                  "missing": len(per_seed) - len(matched)}
        table[name] = entry
    return table


def render_table(table: dict[str, dict[str, Any]]) -> str:
    head = "| row | seeds | " + " | ".join(label + ("" if up else " (lower better)") for label, up in
                                            PROBES.values()) + " | pretrain s / seed |"
    lines = [head, "|" + "---|" * (len(PROBES) + 3)]
    for name, entry in table.items():
        cells = []
        for key in PROBES:
            mean, std = entry[key]
            cells.append(f"{mean:.3f} ± {std:.3f}" if entry["n"] > 1 else f"{mean:.3f}")
        seconds = "" if entry["train_seconds"] is None else f"{entry['train_seconds']:.0f}"
        label = ROWS[name].label
        if entry.get("machines"):  # a floor probed on several machines: say which machine each row is
            primary = entry["primary"]
            label += (", mixed machines" if len(primary) > 1 else f", probed on {machine_label(next(iter(primary)))}")
        lines.append(f"| {label} | {entry['n']} | " + " | ".join(cells) + f" | {seconds} |")
        for machine_name, other in entry.get("machines", {}).items():  # the same floor, probed on another machine
            cells = [f"{m:.3f} ± {sd:.3f}" if other["n"] > 1 else f"{m:.3f}" for m, sd in (other[k] for k in PROBES)]
            lines.append(f"| {ROWS[name].label}, probed on {machine_label(machine_name)} | {other['n']} | "
                         + " | ".join(cells) + " |  |")
    return "\n".join(lines)


def compare(table: dict[str, dict[str, Any]], other: str, reference: str) -> dict[str, Any]:
    """Differences ``other - reference`` per probe, whether each is an improvement, and whether it exceeds the
    seed spread (the standard deviation of a difference of two independent runs)."""
    out = {}
    # A floor probed on several machines: the one probed where ``other`` was (aggregate's ``versus``).
    ref = table[other].get("versus", {}).get(reference, table[reference])
    for key, (_, up) in PROBES.items():
        (a, sa), (b, sb) = table[other][key], ref[key]
        delta = a - b
        spread = math.hypot(sa, sb)
        out[key] = {"delta": delta, "better": delta > 0 if up else delta < 0,
                    "beyond_spread": min(table[other]["n"], ref["n"]) > 1 and abs(delta) > spread}
    return out


def _sentence(name: str, ref: str, diff: dict[str, Any], seeded: bool) -> str:
    parts = ", ".join(f"{d['delta']:+.3f} {PROBES[k][0]}" for k, d in diff.items())
    better = [PROBES[k][0] for k, d in diff.items() if d["better"]]
    text = f"{name} vs {ref}: {parts}; better on {len(better)} of {len(diff)} probes"
    if seeded:
        beyond = [f"{PROBES[k][0]} ({'better' if d['better'] else 'worse'})" for k, d in diff.items()
                  if d["beyond_spread"]]
        text += (f"; beyond the seed spread on {', '.join(beyond)}" if beyond
                 else "; every difference is within the seed spread")
    return text + "."


def _pairs_reading(table: dict[str, dict[str, Any]], seeded: bool) -> list[str]:
    """Each bootstrapped row against its base: an overall count, one sentence per source, presence mAP, and where
    bootstrapping does not win."""
    lines = []
    not_better: dict[str, list[str]] = {key: [] for key in PROBES}
    compared, diffs = [], []
    for source, base, boot in PAIRS:
        if base in table and boot in table:
            diff = compare(table, boot, base)
            lines.append(_sentence(ROWS[boot].label, ROWS[base].label, diff, seeded))
            compared.append(source)
            diffs += diff.values()
            for key, d in diff.items():
                if not d["better"]:
                    not_better[key].append(source)
    if not compared:
        return lines
    text = (f"Over all {len(diffs)} (source, probe) pairs, the bootstrapped row is better than its base in "
            f"{sum(d['better'] for d in diffs)}")
    if seeded:
        beyond = [d["better"] for d in diffs if d["beyond_spread"]]
        text += (f"; the difference exceeds the seed spread in {sum(beyond)} in its favour and "
                 f"{len(beyond) - sum(beyond)} against it")
    lines.insert(0, text + ".")
    wins = [s for s in compared if s not in not_better["presence_map"]]
    text = (f"On presence mAP the bootstrapped row is above its base for {len(wins)} of {len(compared)} sources "
            f"({', '.join(wins) or 'none'})")
    if not_better["presence_map"]:
        text += f" and not for {', '.join(not_better['presence_map'])}"
    lines.append(text + ".")
    lines.append("Where bootstrapping does not beat its base (per probe, sources whose bootstrapped row is not "
                 "better): " + "; ".join(f"{PROBES[k][0]}: {', '.join(v) or 'none'}" for k, v in not_better.items())
                 + ".")
    return lines


def _random_init_reading(table: dict[str, dict[str, Any]], seeded: bool) -> list[str]:
    """The trained rows against the random-init encoder: on presence mAP, and every probe where one is below it."""
    lines: list[str] = []
    versus_init = {name: compare(table, name, "random-init") for name in table if ROWS[name].overrides is not None}
    above, not_above = [], []
    for name, diffs_init in versus_init.items():
        diff = diffs_init["presence_map"]
        ok = diff["better"] and (diff["beyond_spread"] or not seeded)
        (above if ok else not_above).append(ROWS[name].label)
    if above or not_above:
        qualifier = " by more than the seed spread" if seeded else ""
        lines.append(f"Above the random-init encoder on presence mAP{qualifier}: {'; '.join(above) or 'none'}. "
                     f"Not: {'; '.join(not_above) or 'none'}.")
    if seeded:  # a trained encoder losing to its own initialisation on a probe is worth saying plainly
        for key, (label, _) in PROBES.items():
            worse = [ROWS[name].label for name, d in versus_init.items()
                     if d[key]["beyond_spread"] and not d[key]["better"]]
            if worse:
                lines.append(f"Below the random-init encoder on {label} by more than the seed spread: "
                             f"{'; '.join(worse)}.")
    return lines


def _floors_reading(table: dict[str, dict[str, Any]], seeded: bool) -> list[str]:
    """Per floor (random init, colour grid, chance): the trained rows above it on every probe, and the others."""
    lines = []
    trained = [name for name in table if ROWS[name].overrides is not None]
    for floor in FLOORS:
        if floor not in table or not trained:
            continue
        qualifier = " by more than the seed spread" if seeded else ""
        everywhere, short = [], []
        for name in trained:
            diff = compare(table, name, floor)
            failed = [PROBES[k][0] for k, d in diff.items() if not (d["better"] and (d["beyond_spread"] or not seeded))]
            (short if failed else everywhere).append(f"{ROWS[name].label} ({', '.join(failed)})" if failed
                                                     else ROWS[name].label)
        lines.append(f"Above the {ROWS[floor].label} on every probe{qualifier}: {'; '.join(everywhere) or 'none'}. "
                     f"Not (the probes where not): {'; '.join(short) or 'none'}.")
    return lines


def _attentive_reading(table: dict[str, dict[str, Any]]) -> list[str]:
    """AB-X minus X on the attentive probes, where the paper's gains show."""
    attentive = [k for k in PROBES if k.startswith("attn_")]
    verdicts = []
    for source, base, boot in PAIRS:
        if attentive and base in table and boot in table:
            diff = compare(table, boot, base)
            verdicts.append(f"{source}: " + ", ".join(
                f"{diff[k]['delta']:+.3f} {PROBES[k][0]}"
                + (" (beyond the spread)" if diff[k]["beyond_spread"] else "") for k in attentive))
    if not verdicts:
        return []
    return ["On the attentive probes, where the paper's gains show, AB-X minus X: " + "; ".join(verdicts) + "."]


def _machines_reading(table: dict[str, dict[str, Any]]) -> list[str]:
    """Which floors were probed on more than one machine, the trained rows set against a floor of another machine
    or over fewer seeds, and the precision each trained row's loss ran in."""
    several = [ROWS[name].label for name in MACHINE_REFERENCES if table.get(name, {}).get("machines")]
    lines = []
    if several:
        lines.append(f"Probed on more than one machine: {', '.join(several)} (the rows under them); each trained "
                     "row is set against the ones probed on the machine that probed it.")
    unmatched = [f"{ROWS[name].label} ({ROWS[ref].label}, {v['unmatched']} of {v['n']} seeds)"
                 for name, e in table.items() for ref, v in e.get("versus", {}).items() if v["unmatched"]]
    if unmatched:
        lines.append("Set against a floor probed on another machine (no probes of theirs on the run's machine): "
                     f"{'; '.join(unmatched)}.")
    missing = [f"{ROWS[name].label} ({ROWS[ref].label} lacks {v['missing']} of its seeds)"
               for name, e in table.items() for ref, v in e.get("versus", {}).items() if v["missing"]]
    if missing:
        lines.append(f"Set against a floor over fewer seeds than the row: {'; '.join(missing)}.")
    kinds: dict[str, list[str]] = {}
    for name, e in table.items():
        mixed = len(e.get("precision", {})) > 1  # its seeds ran on machines of either kind: say which seeds
        for kind, seeds in e.get("precision", {}).items():
            which = f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if mixed else ""
            kinds.setdefault(kind, []).append(ROWS[name].label + which)
    if len(kinds) > 1:  # bf16 autocast runs only where the CPU computes it natively: say which rows ran in what
        lines.append("The loss ran in " + "; in ".join(f"{kind} for {', '.join(rows)}" if kind != "not recorded"
                                                      else f"a precision not recorded (older runs) for "
                                                           f"{', '.join(rows)}" for kind, rows in sorted(kinds.items()))
                     + ".")
    return lines


def reading(table: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences of what the table shows, from its numbers only."""
    seeded = min((e["n"] for e in table.values()), default=0) > 1
    lines = _pairs_reading(table, seeded)
    for what, name, full in ABLATIONS:
        if name in table and full in table:
            lines.append(_sentence(f"{FULL_ROWS[full].split(' (')[0]} with {what}", FULL_ROWS[full],
                                   compare(table, name, full), seeded))
    if "random-init" in table:
        lines += _random_init_reading(table, seeded)
    lines += _floors_reading(table, seeded)
    lines += _attentive_reading(table)
    lines += _machines_reading(table)
    if not seeded and lines:
        lines.append("One seed only: no spread is measured, so no difference here can be told apart from seed noise.")
    return lines


def plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    """Grouped bars per probe: base vs bootstrapped per source (upper panels), the ablations (lower panels, when run:
    each full row in orange, then its ablations in blue); error bars are the seed std; the dashed line is the
    random-init encoder, the dotted one the colour-grid floor, the dash-dotted one chance (a floor probed on several
    machines is drawn as its own row's, the legend naming the machine; the reading compares each row with its own
    machine's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in PAIRS if p[1] in table or p[2] in table]
    ablations = []  # (bar label, row): each full row with an ablation in the table, then its ablations
    for full, name in FULL_ROWS.items():
        short = name.split(" (")[0]
        done = [(what, row) for what, row, reference in ABLATIONS if reference == full and row in table]
        if full in table and done:
            ablations += [(short, full)] + [(what, row) for what, row in done]  # the ablations follow their row
    show_ablations = bool(ablations)
    columns = min(4, len(PROBES))
    rows = math.ceil(len(PROBES) / columns)
    blocks = 2 if show_ablations else 1
    figure, axes = plt.subplots(rows * blocks, columns, figsize=(4 * columns, 3.4 * rows * blocks), squeeze=False)
    for index, (key, (label, up)) in enumerate(PROBES.items()):
        row, column = divmod(index, columns)
        ax = axes[row, column]
        x = np.arange(len(pairs))
        for offset, which, colour, name in ((-0.2, 1, "#9aa5b1", "base"), (0.2, 2, "#d9622b", "bootstrapped")):
            means = [table[p[which]][key][0] if p[which] in table else np.nan for p in pairs]
            stds = [table[p[which]][key][1] if p[which] in table else 0.0 for p in pairs]
            ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, color=colour, label=name)
        ax.set_xticks(x, [p[0] for p in pairs], fontsize=8, rotation=20, ha="right")
        ax.set_title(f"{label} ({'higher' if up else 'lower'} is better)", fontsize=10)
        panels = [ax]
        if show_ablations:
            ax2 = axes[rows + row, column]
            present = [a for a in ablations if a[1] in table]
            x2 = np.arange(len(present))
            ax2.bar(x2, [table[a[1]][key][0] for a in present], 0.6, yerr=[table[a[1]][key][1] for a in present],
                    capsize=3, color=["#d9622b" if a[1] in FULL_ROWS else "#4c78a8" for a in present])
            ax2.set_xticks(x2, [a[0] for a in present], fontsize=7, rotation=40, ha="right")
            ax2.set_title(f"{label}: ablations", fontsize=9)
            panels.append(ax2)
        for a in panels:
            for floor, style in zip(FLOORS, ("--", ":", "-."), strict=True):
                if floor in table:
                    primary = table[floor].get("primary", set())
                    where = (f" ({machine_label(next(iter(primary)))})"
                             if table[floor].get("machines") and len(primary) == 1 else "")
                    a.axhline(table[floor][key][0], color="black", linestyle=style, linewidth=1,
                              label=ROWS[floor].label + where)
    for index in range(len(PROBES), rows * columns):  # empty cells of the grid
        for block in range(blocks):
            axes[block * rows + index // columns, index % columns].axis("off")
    axes[0, 0].legend(fontsize=8)
    seeds = max(e["n"] for e in table.values())
    figure.suptitle(f"Pretraining on Shapes at equal budget: mean and std over {seeds} seed(s)", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    """The training curves of every row whose runs logged them (the ``curves`` the JSON keeps from each run's
    TensorBoard log): the bootstrapped target's cross-entropy against the uniform one (dashed), the base loss and
    the target network's drift, mean over seeds. Returns whether there was anything to plot."""
    rows = {name: [r["curves"] for r in per_seed.values() if r.get("curves")] for name, per_seed in runs.items()}
    rows = {name: curves for name, curves in rows.items() if curves and name in ROWS}
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_curve(curves: list[dict[str, Any]], tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        found = [c[tag] for c in curves if c.get(tag)]
        if not found:
            return None
        length = min(len(f) for f in found)
        steps = np.array([point[0] for point in found[0][:length]])
        return steps, np.mean([[point[1] for point in f[:length]] for f in found], axis=0)

    panels = (("bootstrap/target_entropy", "TD target entropy (nats; dashed: uniform)"),
              ("loss/base", "base loss"), ("target/drift", "target network drift"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, curves) in enumerate(rows.items()):
        colour = colours[index % len(colours)]
        label = f"{ROWS[name].label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        for ax, (tag, _) in zip(axes[0], panels, strict=True):
            line = mean_curve(curves, tag)
            if line is not None:
                ax.plot(*line, color=colour, label=label)
            uniform = mean_curve(curves, "bootstrap/uniform") if tag == "bootstrap/target_entropy" else None
            if uniform is not None:
                ax.plot(*uniform, color=colour, linestyle="--", linewidth=0.8)
    for ax, (_, title) in zip(axes[0], panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0, 1].legend(fontsize=7)  # every row has a base loss; base-method rows have no TD target
    figure.suptitle("Training curves, read from each run's TensorBoard log (mean over seeds)", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_docs(table_text: str, lines: list[str], meta: dict[str, Any], figure: Path, section_name: str = SECTION
               ) -> None:
    figure_ref = relative(figure, DOCS.parent)
    base = meta["settings"]["config"]
    invocations = meta["invocations"]  # every command that added runs to the JSON (or only rewrote this section)
    commands = "; then ".join(f"`{i['command']}` ({i['runs']} runs"
                              + (f", {i['reprobed']} probed again" if i.get("reprobed") else "")
                              + (f", {i['floors_probed_here']} floor probes on its machine"
                                 if i.get("floors_probed_here") else "")
                              + f", wall time {i['wall_seconds']:.0f} s, commit {i['commit']})" for i in invocations)
    machines = "; ".join(dict.fromkeys(i["machine"] for i in invocations))
    start, end = markers(section_name)
    area = base.get("crop_area", LEGACY_DEFAULTS["crop_area"])  # JSONs written before the field: log-uniform
    scale = "-".join(f"{bound:g}" for bound in base["crop_scale"])  # [0.05, 1.0] as 0.05-1
    heading = HEADING if section_name == SECTION else (
        f"{HEADING}: {area} view areas, probes fitted on {meta['settings']['probe_train_images']:,} train images")
    section = "\n".join([
        start,
        f"Measured with {commands} on {machines}. The {meta['runs_total']} runs in the JSON took "
        f"{meta['run_seconds']:.0f} s of pretraining and probing.",
        "",
        f"Equal budget for every row: {base['total_steps']} steps x {base['batch_size']} transitions "
        f"({base['total_steps'] * base['batch_size']:,} samples), the same stream of transitions per seed "
        f"(policy {base['policy']}, {base['views']} views per image, every ordered pair; a replay buffer of "
        f"{base['buffer_size']:,} at replay ratio {base['replay_ratio']}), the `{base['encoder']}` encoder at "
        f"{base['obs_size']} px, views of {area} area in {scale} of the image, "
        f"augmentations {', '.join(base['augmentations']) or 'none'}, lr {base['lr']}, "
        f"gamma {base['gamma']} and {base['backup']} backup unless the row says otherwise. Probes on the Shapes val "
        f"split ({meta['settings']['probe_val_images'] or 'all'} images), fitted on "
        f"{meta['settings']['probe_train_images']} train images; mean ± sample std over seeds; higher is better "
        f"except count MAE. Raw per-seed results: `{meta['json']}`.",
        "",
        table_text,
        "",
        f"![pretraining comparison]({figure_ref})",
        "",
        *([f"![training curves]({relative(meta['curves_figure'], DOCS.parent)}) Training curves of the rows "
           f"whose runs logged TensorBoard curves ({', '.join(meta['curve_rows'])}; runs of older code did not).", ""]
          if meta.get("curves_figure") else []),
        "What it shows (generated from the numbers above; \"beyond the seed spread\" means the difference of the "
        "means exceeds the standard deviation of a difference of two runs, a rough yardstick rather than a test):",
        "",
        *[f"- {line}" for line in lines],
        "",
        f"At this scale ({base['total_steps']} CPU steps of a small encoder) the paper's gains need not show: its "
        "results come from ViT-S trained for far longer on COCO or CC12M. Where a bootstrapped row does not beat its "
        "base above, that is the measured result at this budget, not a claim about the method at scale. The "
        "pretraining seconds are wall time on a machine shared with other work: compare them within a run only.",
        *(["", f"Rows not in this run: {'; '.join(meta['missing'])} "
               "(`python benchmarks/pretrain_table.py --write-docs` runs every row with 3 seeds)."]
          if meta["missing"] else []),
        end,
    ])
    write_section(DOCS, start, end, section, heading)


# ------------------------------------------------------------------------------------------------ command line


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1))
    os.replace(temporary, path)


@dataclass
class TableArgs:
    """Arguments of ``benchmarks/pretrain_table.py``; ``None`` takes the default, or the ``--quick`` value."""

    steps: int | None = option(None, f"optimiser steps of every row (default {DEFAULT_STEPS}; --quick: "
                               f"{QUICK['steps']})")
    seeds: int | None = option(None, f"seeds 0..N-1 (default {DEFAULT_SEEDS}; --quick: 1)")
    rows: str | None = option(None, f"comma-separated subset of: {', '.join(ROWS)} (default: all; --quick: "
                              f"{QUICK['rows']})")
    shapes_root: str | None = option(None, "a Shapes set (default: the cached default set)")
    buffer_size: int | None = option(None, f"replay buffer of every run (default {PretrainConfig.buffer_size}; "
                                     f"--quick: {QUICK['buffer_size']})")
    probe_train_images: int | None = option(None, "train images the probes are fitted on (default "
                                            f"{PretrainConfig.probe_train_images}; --quick: "
                                            f"{QUICK['probe_train_images']})")
    probe_val_images: int | None = option(None, "val images the probes are scored on (default: all; --quick: "
                                          f"{QUICK['probe_val_images']})")
    overrides: list[str] = option([], "change a PretrainConfig field of every row, e.g. --set encoder_depth=2 "
                                  f"lr=1e-3 (not {', '.join(sorted(RESERVED))}); a row that sets the field itself "
                                  "keeps its own value (the DINO rows' teacher and augmentations, the CLIP rows' lr "
                                  "and augmentations)", flag="--set", action="extend", metavar="FIELD=VALUE")
    quick: bool = option(False, "1 seed, 40 steps, 7 rows (random init, colour grid, chance, SimCLR vs AB-SimCLR, "
                         "labels base vs GVF), a 2,048-transition buffer, probes on 500 train and 300 val images; "
                         "explicit flags override these")
    out_dir: Path = option(Path("runs/pretrain_table"), "checkpoints (OUT_DIR/ROW/seedN)")
    json: Path | None = option(None, "raw per-seed results (default: --resume-json when given, else "
                               "runs/pretrain_table.json)")
    resume_json: Path | None = option(None, "continue from this JSON: skip the (row, seed) runs it already holds")
    reprobe: bool = option(False, "with --resume-json: probe again the runs it holds, from their checkpoints under "
                           "OUT_DIR (each must be of this exact run, finished), keeping their training results; for "
                           "when a probe changes")
    plot: Path | None = option(None, f"the PNG (default: {FIGURE.relative_to(ROOT)} with --write-docs, else "
                               "OUT_DIR/pretrain_table.png)")
    write_docs: bool = option(False, f"write the section of {DOCS.relative_to(ROOT)}")
    docs_section: str = option(SECTION, f"the section --write-docs writes (its markers <!-- NAME:start/end -->); "
                               f"another than {SECTION} (e.g. a table under other probe settings) is appended under "
                               "its own heading the first time, with its figures docs/figures/NAME.png and "
                               "NAME_curves.png")
    progress: bool = option(False, "progress bars of pretraining and probes")
    #: ``rows`` as a list, and ``overrides`` as PretrainConfig values (set from the fields above).
    row_names: list[str] = field(init=False)
    config_overrides: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        defaults = {"steps": DEFAULT_STEPS, "seeds": DEFAULT_SEEDS, "rows": ",".join(ROWS),
                    "probe_train_images": PretrainConfig.probe_train_images}
        for name in ("steps", "seeds", "rows", "buffer_size", "probe_train_images", "probe_val_images"):
            if getattr(self, name) is None:
                setattr(self, name, QUICK[name] if self.quick else defaults.get(name))
        self.row_names = [r.strip() for r in self.rows.split(",") if r.strip()]
        unknown = [r for r in self.row_names if r not in ROWS]
        check(bool(self.row_names) and not unknown, "rows", self.rows,
              f"comma-separated names among {', '.join(ROWS)} (unknown: {unknown})")
        for name in ("steps", "seeds", "probe_train_images"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        check(self.probe_val_images is None or self.probe_val_images >= 1, "probe_val_images",
              self.probe_val_images, "an integer >= 1 (or none: the whole val split)")
        check(self.buffer_size is None or self.buffer_size >= 1, "buffer_size", self.buffer_size, "an integer >= 1")
        self.config_overrides = dict(self._override(item) for item in self.overrides)
        check(re.fullmatch(r"[a-z0-9_]+", self.docs_section) is not None, "docs_section", self.docs_section,
              "a name of lower-case letters, digits and underscores")
        check(not self.reprobe or self.resume_json is not None, "reprobe", self.reprobe,
              "used with --resume-json (the JSON whose runs are probed again)")
        if self.json is None:
            self.json = self.resume_json or Path("runs/pretrain_table.json")
        if self.plot is None:
            self.plot = ((FIGURE if self.docs_section == SECTION else FIGURE.with_name(f"{self.docs_section}.png"))
                         if self.write_docs else self.out_dir / "pretrain_table.png")

    @staticmethod
    def _override(item: str) -> tuple[str, Any]:
        """``FIELD=VALUE`` of ``--set`` as a PretrainConfig field and its value."""
        name, sep, text = item.partition("=")
        fields = {f.name for f in dataclasses.fields(PretrainConfig)}
        check(bool(sep) and name in fields, "--set", item, "FIELD=VALUE with FIELD a PretrainConfig field")
        check(name not in RESERVED, "--set", item, f"a field other than {name}, which the rows or this script's own "
              "flags set")
        try:
            return name, cli.convert(PretrainConfig, name, text)
        except ValueError as error:
            raise ValueError(f"--set {item!r} is invalid: {error}") from None


def _resumed_document(args: TableArgs, wanted: dict[str, Any]) -> dict[str, Any]:
    """The JSON ``--resume-json`` continues, checked to be of this script and of the same settings.

    Raises:
        ValueError: The file is missing, not a JSON of this script, or written with other settings.
    """
    path = args.resume_json
    check(path.is_file(), "resume_json", path, "an existing JSON written by this script (it does not exist)")
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous.get("runs"), dict) or not isinstance(previous.get("invocations"), list):
            raise ValueError("it has no 'runs' object or no 'invocations' list")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"--resume-json {path} is not a JSON written by this script ({error}); start a new one "
                         "with --json") from None
    old = previous.get("settings", {})
    if isinstance(old.get("config"), dict):
        old["config"] = {k: v for k, v in old["config"].items() if k not in EXECUTION_FIELDS}  # older JSONs held bf16
        # A field added to PretrainConfig after the JSON was written takes its default there: defaults keep the
        # behaviour the code had before the field existed.
        defaults = {**config_to_dict(PretrainConfig()), **LEGACY_DEFAULTS}
        old["config"] = {**{k: defaults[k] for k in wanted["config"] if k not in old["config"] and k in defaults},
                         **old["config"]}
    if old != wanted:
        differ = sorted({k for k in (*wanted["config"], *old.get("config", {}))
                         if wanted["config"].get(k) != old.get("config", {}).get(k)}
                        | {k for k in PROBE_SETTINGS if wanted[k] != old.get(k)})
        if args.reprobe and set(differ) <= set(PROBE_SETTINGS):
            return _under_new_probes(args, previous, wanted, differ)
        raise ValueError(f"--resume-json {path} was written with other settings ({', '.join(differ)} differ); "
                         "rerun with the same flags, start a new JSON, or (when only the probe settings differ) "
                         "probe its runs again into a new one with --reprobe --json NEW")
    return previous


def _under_new_probes(args: TableArgs, previous: dict[str, Any], wanted: dict[str, Any], differ: Sequence[str]
                      ) -> dict[str, Any]:
    """A new document for ``--reprobe`` under other probe settings (``differ``, among :data:`PROBE_SETTINGS`): the
    runs of ``--rows`` x ``--seeds`` that ``previous`` holds, to be probed again from their checkpoints, and
    nothing else (a run not probed again has the old protocol's scores, which do not compare). The commands that
    trained the runs stay in its ``invocations``; ``reprobed_from`` names the old JSON and its settings.

    Raises:
        ValueError: ``--json`` is ``--resume-json`` itself (the old protocol's results would be lost), or the old
            JSON holds none of the runs asked for.
    """
    path = args.resume_json
    if Path(args.json).resolve() == Path(path).resolve():
        raise ValueError(f"--reprobe under other probe settings ({', '.join(differ)} differ from {path}'s) writes "
                         f"a new JSON: pass --json NEW (then {path} keeps the scores of its own protocol)")
    seeds = {str(seed) for seed in range(args.seeds)}
    runs = {name: {seed: run for seed, run in previous["runs"].get(name, {}).items() if seed in seeds}
            for name in args.row_names}
    runs = {name: per_seed for name, per_seed in runs.items() if per_seed}
    if not runs:
        raise ValueError(f"--reprobe: {path} holds no run of the rows {', '.join(args.row_names)} for seeds "
                         f"0-{args.seeds - 1}; nothing to probe again under the new settings")
    return {"settings": wanted, "runs": runs, "invocations": list(previous["invocations"]),
            "reprobed_from": {"json": relative(Path(path)), "settings": previous.get("settings", {}),
                              "differ": list(differ)}}


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = cli.parse(TableArgs, argv, description=__doc__)
    try:
        base = base_config(args)
        wanted = settings(base, args)
        document = (_resumed_document(args, wanted) if args.resume_json is not None
                    else {"settings": wanted, "runs": {}, "invocations": []})
    except ValueError as error:
        parser.error(str(error))
    runs: dict[str, dict[str, Any]] = document["runs"]
    for name, per_seed in runs.items():  # a row whose recipe changed since its runs: they are not its runs now
        held = {json.dumps(r["overrides"], sort_keys=True) for r in per_seed.values() if "overrides" in r}
        if name in ROWS and ROWS[name].overrides is not None and held - {
                json.dumps(recorded_overrides(ROWS[name]), sort_keys=True)}:
            parser.error(f"--resume-json {args.resume_json}: the runs of row {name!r} were trained with other "
                         f"overrides ({', '.join(sorted(held))}) than the row has now "
                         f"({json.dumps(recorded_overrides(ROWS[name]), sort_keys=True)}); move them to another row "
                         "name in the JSON or start a new one")
    command = "python benchmarks/pretrain_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    command = command.strip()
    started = time.perf_counter()
    code = commit()  # the code that runs is the code loaded now, whatever HEAD is when a run ends
    todo = [(seed, name) for seed in range(args.seeds) for name in args.row_names
            if str(seed) not in runs.get(name, {})]
    skipped = [(seed, name) for seed in range(args.seeds) for name in args.row_names if str(seed) in runs.get(name, {})]
    for seed, name in skipped:
        print(f"{'probe again' if args.reprobe else 'skip'} {name} seed {seed}: in {args.resume_json}")
    fresh = len(todo)
    if args.reprobe:  # probe the held runs first, from their checkpoints; then train what is missing
        todo = skipped + todo
    again = f" and {len(skipped)} probed again" if args.reprobe else ""
    print(f"{fresh} runs{again}: {args.steps} steps x batch {base.batch_size}, a {base.buffer_size:,}-transition "
          f"buffer at replay ratio {base.replay_ratio}, probes on {args.probe_train_images} train images; "
          f"checkpoints in {args.out_dir}", flush=True)
    probe_cache: dict[int, ProbeData] = {}
    for number, (seed, name) in enumerate(todo, 1):
        row = ROWS[name]
        if seed not in probe_cache:
            probe_cache.clear()
            probe_cache[seed] = probe_set(dataclasses.replace(base, seed=seed), args.probe_val_images)
        data = probe_cache[seed]
        began = time.perf_counter()
        held = runs.get(name, {}).get(str(seed))
        if held is not None:  # --reprobe: new probes, the training results (and their commit) kept
            try:
                probes = (probe_only(name, base, seed, data) if row.overrides is None
                          else reprobe(row_config(base, row, seed, args.out_dir), data))
            except ValueError as error:
                parser.error(str(error))
            result = {**held, "probes": probes, "probe_seconds": time.perf_counter() - began,
                      "reprobed": {"machine": machine(), "commit": code}}
            result.pop("by_machine", None)  # other machines' probes of a floor are of the probes before the change
            if row.overrides is not None:  # this machine's floors of the seed are too: probed again below
                for floor in MACHINE_REFERENCES:
                    runs.get(floor, {}).get(str(seed), {}).get("by_machine", {}).pop(machine(), None)
        elif row.overrides is None:
            result = {"probes": probe_only(name, base, seed, data), "train_seconds": None,
                      "probe_seconds": time.perf_counter() - began}
        else:
            result = pretrain_and_probe(row_config(base, row, seed, args.out_dir), data)
        if held is None:
            result.update(machine=machine(), commit=code)
            if row.overrides is not None:
                result["overrides"] = recorded_overrides(row)
        runs.setdefault(name, {})[str(seed)] = result
        _write_json(args.json, document)
        scores = ", ".join(f"{PROBES[k][0]} {v:.3f}" for k, v in result["probes"].items())
        loss = (f", loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}"
                if result.get("first_loss") is not None else "")
        print(f"[{number}/{len(todo)}] {name} seed {seed}: {time.perf_counter() - began:.0f} s{loss}; {scores}",
              flush=True)
    references = missing_references(runs, machine())
    for number, (seed, name) in enumerate(references, 1):  # the floors of seeds trained here, probed here too
        if seed not in probe_cache:
            probe_cache.clear()
            probe_cache[seed] = probe_set(dataclasses.replace(base, seed=seed), args.probe_val_images)
        began = time.perf_counter()
        probes = probe_only(name, base, seed, probe_cache[seed])
        runs[name][str(seed)].setdefault("by_machine", {})[machine()] = {
            "probes": probes, "commit": code, "probe_seconds": time.perf_counter() - began}
        _write_json(args.json, document)
        print(f"[{number}/{len(references)}] {name} seed {seed} probed on this machine too (a run of the seed was "
              f"probed here): {time.perf_counter() - began:.0f} s", flush=True)
    wall = time.perf_counter() - started
    document["invocations"].append({"command": command, "wall_seconds": wall, "runs": fresh,
                                    "reprobed": len(skipped) if args.reprobe else 0,
                                    "floors_probed_here": len(references),
                                    "machine": machine(), "commit": code})
    _write_json(args.json, document)

    table = aggregate(runs, args.seeds)
    if not table:
        print("no results to tabulate")
        return 0
    table_text = render_table(table)
    lines = reading(table)
    print("\n" + table_text + "\n")
    for line in lines:
        print(line)
    plot(table, args.plot)
    curves_path = (CURVES_FIGURE if args.plot == FIGURE else args.plot.with_name(
        "pretrain_curves.png" if args.docs_section == SECTION else f"{args.docs_section}_curves.png"))
    curves_drawn = plot_curves(runs, curves_path)
    run_seconds = sum((r.get("train_seconds") or 0) + (r.get("probe_seconds") or 0)
                      + sum(e.get("probe_seconds", 0) for e in r.get("by_machine", {}).values())
                      for per_row in runs.values() for r in per_row.values())
    print(f"\nwall time {wall:.0f} s on {machine()}, commit {code}; results {args.json}, figure {args.plot}")
    if args.write_docs:
        meta = {"invocations": document["invocations"], "settings": wanted, "json": relative(args.json),
                "runs_total": sum(len(v) for v in runs.values()), "run_seconds": run_seconds,
                "missing": [ROWS[n].label for n in ROWS if n not in table],
                "curves_figure": curves_path if curves_drawn else None,
                "curve_rows": [ROWS[n].label for n in ROWS if any(r.get("curves") for r in runs.get(n, {}).values())]}
        write_docs(table_text, lines, meta, args.plot, args.docs_section)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
