"""Pretrain an encoder by annotation bootstrapping: ``python -m agents.pretrain [--preset NAME] [--flags]``.

The data flow is one-way: collect (or load) logged view transitions -> train the GVF (:mod:`agents.gvf`) with an
EMA target network -> checkpoint -> probe the frozen encoder against a random-init one.

    python -m agents.pretrain                                      # the default: labels GVF on Shapes, CPU
    python -m agents.pretrain --annotations views --gamma 0.9 --out runs/ab-simclr
    python -m agents.pretrain --out runs/ab-simclr --resume        # continue after a kill
    torchrun --nproc_per_node 2 -m agents.pretrain --out runs/ddp  # DDP: gloo on CPU, nccl on GPU

Determinism: the replay buffer is collected from environments seeded by ``(seed, rank)`` and the batch of step
``s`` is drawn with a generator seeded by ``(seed, rank, s)``, so a run resumed from its checkpoint continues
exactly as the uninterrupted run would have on CPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from agents import gvf
from agents.checkpoint import CheckpointError, config_to_dict, load_checkpoint, save_checkpoint
from agents.collect import TransitionCollector
from agents.config import PretrainConfig, parse_config
from agents.data import ReplayBuffer, ShardDataset
from agents.models import CaptionTokenizer, build_encoder
from agents.sources import CaptionSource, LabelSource, PrototypeSource, ViewSource
from view_env.data import ImageDataset, load_dataset
from view_env.vector import ViewTransformVectorEnv

#: Fields that define the network: a checkpoint resumes only under the same values.
MODEL_FIELDS = ("annotations", "encoder", "encoder_depth", "encoder_dim", "patch_size", "pool", "obs_size", "embed_dim",
                "action_tokens", "action_bins", "value_depth", "num_prototypes")


def build_network(config: PretrainConfig, num_categories: int, tokenizer: CaptionTokenizer | None = None
                  ) -> gvf.GVFNetwork:
    """The online network described by ``config`` (parameters drawn from the current torch seed)."""
    overrides = {}
    if config.encoder.startswith("vit"):
        overrides = {k: v for k, v in {"depth": config.encoder_depth, "dim": config.encoder_dim}.items()
                     if v is not None}
        overrides["pool"] = config.pool
        if "dim" in overrides:
            overrides["heads"] = max(1, overrides["dim"] // 64)
    encoder = build_encoder(config.encoder, config.obs_size, config.patch_size, **overrides)
    d = config.embed_dim
    if config.annotations == "views":
        source: nn.Module = ViewSource(encoder.dim, d)
    elif config.annotations == "prototypes":
        source = PrototypeSource(encoder.dim, d, num_prototypes=config.num_prototypes)
    elif config.annotations == "captions":
        if tokenizer is None:
            raise ValueError("annotations='captions' needs a caption tokenizer built from the dataset's captions")
        source = CaptionSource(tokenizer, d)
    else:
        source = LabelSource(num_categories, d)
    return gvf.GVFNetwork(encoder, source, d, action_bins=config.action_bins, value_depth=config.value_depth,
                          action_tokens=config.action_tokens)


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` then a cosine decay to 0 at ``total_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Objective(nn.Module):
    """Wraps the online network so that DistributedDataParallel sees the whole loss in one ``forward``."""

    def __init__(self, online: gvf.GVFNetwork, config: PretrainConfig) -> None:
        super().__init__()
        self.online = online
        self.config = config

    def forward(self, target: gvf.GVFNetwork, batch: dict[str, torch.Tensor], generator: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        return gvf.gvf_loss(self.online, target, batch, c.gamma, c.backup, c.bootstrap_weight, c.num_next_actions,
                            c.augmentations, generator)


def _distributed() -> tuple[int, int]:
    """Rank and world size, initialising the process group under torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("VIEW_ENV_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _device(config: PretrainConfig, rank: int) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {config.device}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _dataset(config: PretrainConfig, split: str) -> ImageDataset:
    kwargs: dict[str, Any] = {"root": config.root}
    if config.env in ("shapes", "coco"):
        kwargs["split"] = split
    if config.env == "shapes":
        kwargs["progress"] = config.progress
    return load_dataset(config.env, **kwargs)


def collect_buffer(config: PretrainConfig, rank: int, device: torch.device) -> tuple[ReplayBuffer, ImageDataset]:
    """Fill a replay buffer with ``num_transitions`` transitions: from shards, or by stepping the environment."""
    if config.data is not None:
        shards = ShardDataset(config.data)
        meta = shards.metadata
        if meta["obs_size"] != config.obs_size:
            raise ValueError(f"--data {config.data} holds {meta['obs_size']}-px views but --obs-size is "
                             f"{config.obs_size}")
        buffer = ReplayBuffer(len(shards), meta["obs_size"], meta["num_categories"], device)
        shards.fill(buffer)
        return buffer, _dataset(config, config.split)
    dataset = _dataset(config, config.split)
    env = ViewTransformVectorEnv(
        config.num_envs, dataset=dataset, device=device, obs_size=config.obs_size, action_mode="continuous",
        augmentations=config.augmentations, max_episode_steps=config.max_episode_steps, max_pan=config.max_pan,
        progress=config.progress,
    )
    buffer = ReplayBuffer(config.num_transitions, config.obs_size, env.num_categories, device)
    steps = math.ceil(config.num_transitions / config.num_envs)
    collector = TransitionCollector(env, None, seed=config.seed * 1000 + rank)
    collector.collect(buffer, steps, progress=config.progress and rank == 0)
    env.close()
    return buffer, dataset


def _captions(dataset: ImageDataset, index: torch.Tensor, tokenizer: CaptionTokenizer, generator: torch.Generator
              ) -> torch.Tensor:
    """One caption per sample, drawn with ``generator`` among its image's captions, as tokens ``int64 [B, T]``."""
    picks = torch.rand(len(index), generator=generator).tolist()
    texts = []
    for i, u in zip(index.tolist(), picks, strict=True):
        captions = dataset.records[i].captions or ("",)
        texts.append(captions[int(u * len(captions))])
    return tokenizer.encode(texts)


def train(config: PretrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining; returns a summary (final step, losses, probe results).

    Args:
        config: The run.
        stop_after: Stop after this many steps of the run without finishing it (tests use it to simulate a kill
            between checkpoints).
    """
    rank, world = _distributed()
    device = _device(config, rank)
    out = Path(config.out)
    checkpoint_path = out / "checkpoint.pt"
    resumed = None
    if config.resume:
        resumed = load_checkpoint(checkpoint_path, map_location=device)
        saved = resumed["config"]
        changed = [f for f in MODEL_FIELDS if getattr(saved, f) != getattr(config, f)]
        if changed:
            raise CheckpointError(f"{checkpoint_path} was written by another model: {changed} differ "
                                  f"({[getattr(saved, f) for f in changed]} there, "
                                  f"{[getattr(config, f) for f in changed]} now)")

    buffer, dataset = collect_buffer(config, rank, device)
    tokenizer = None
    if config.annotations == "captions":
        if resumed is not None and "tokenizer" in resumed["extra"]:
            tokenizer = CaptionTokenizer.from_state_dict(resumed["extra"]["tokenizer"])
        else:
            tokenizer = CaptionTokenizer.build(c for r in dataset.records for c in r.captions)
    torch.manual_seed(config.seed)  # the same initial parameters on every rank
    online = build_network(config, dataset.num_categories, tokenizer).to(device)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.AdamW(online.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if resumed is not None:
        online.load_state_dict(resumed["model"])
        target.load_state_dict(resumed["target"])
        optimizer.load_state_dict(resumed["optimizer"])
        start = resumed["step"]
    objective: nn.Module = _Objective(online, config)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.bootstrap_weight == 0)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else nullcontext())
    extra: dict[str, Any] = {"num_categories": dataset.num_categories}
    if tokenizer is not None:
        extra["tokenizer"] = tokenizer.state_dict()

    def save(step: int) -> None:
        if rank == 0:
            save_checkpoint(checkpoint_path, config=config, step=step, model=online.state_dict(),
                            target=target.state_dict(), optimizer=optimizer.state_dict(), extra=extra)

    end = config.total_steps if stop_after is None else min(config.total_steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=config.total_steps, desc="pretrain", unit="step",
               disable=not (config.progress and rank == 0))
    history: list[dict[str, float]] = []
    began = time.perf_counter()
    for step in bar:
        generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + rank * 7919 + step)
        host_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + rank * 7919 + step)
        batch = buffer.sample(config.batch_size, generator)
        if tokenizer is not None:
            batch["captions"] = _captions(dataset, batch["image_index"].cpu(), tokenizer, host_generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with autocast:
            loss, metrics = objective(target, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        gvf.ema_update(target, online, gvf.ema_momentum(step, config.total_steps, base=config.ema_momentum))
        history.append(metrics)
        views_per_second = (step + 1 - start) * config.batch_size * world / (time.perf_counter() - began)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", views_s=f"{views_per_second:.0f}", refresh=False)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.total_steps:
            save(step + 1)
    bar.close()
    summary: dict[str, Any] = {"step": end, "first_loss": history[0]["loss"] if history else None,
                               "last_loss": history[-1]["loss"] if history else None,
                               "losses": [m["loss"] for m in history], "config": config_to_dict(config)}
    if world > 1:
        # Every rank must hold the same parameters after each step; check it once at the end.
        checksum = torch.stack([p.detach().double().sum() for p in online.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(gathered, checksum)
        summary["rank_checksums"] = [float(c) for c in gathered]
    if end == config.total_steps and config.probe and rank == 0:
        summary["probes"] = probe_against_random_init(config, online, dataset.num_categories, tokenizer, device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return summary


def probe_against_random_init(config: PretrainConfig, online: gvf.GVFNetwork, num_categories: int,
                              tokenizer: CaptionTokenizer | None, device: torch.device) -> dict[str, dict[str, float]]:
    """Run every probe on the pretrained encoder and on a freshly initialised one; print a table, write JSON."""
    from agents.probe import probe_data, run_probes
    from view_env.data import ImageBank

    if config.env not in ("shapes", "coco"):
        print(f"probes need a split with object annotations (shapes or coco); skipped for --env {config.env}")
        return {}
    train_set, val_set = _dataset(config, "train"), _dataset(config, "val")
    rng = np.random.default_rng(config.seed)
    train_indices = np.sort(rng.permutation(len(train_set))[: config.probe_train_images])
    canvas = min(256, max(128, 2 * config.obs_size))
    bank_train = ImageBank.from_dataset(train_set, canvas_size=canvas, indices=train_indices.tolist(),
                                        progress=False)
    bank_val = ImageBank.from_dataset(val_set, canvas_size=canvas, progress=False)
    data = probe_data(bank_train, bank_val, config.obs_size, seed=config.seed)
    torch.manual_seed(config.seed + 1)
    random_net = build_network(config, num_categories, tokenizer).to(device)
    results = {}
    for name, net in (("pretrained", online), ("random init", random_net)):
        encoder = net.encoder.eval()
        results[name] = run_probes(lambda x, e=encoder: e(x).pooled, data, device=device, progress=config.progress)
        encoder.train()
    keys = list(results["pretrained"])
    print("\nprobe".ljust(22) + "".join(k.rjust(14) for k in keys))
    for name, scores in results.items():
        print(name.ljust(21) + "".join(f"{scores[k]:14.3f}" for k in keys))
    path = Path(config.out) / "probe.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"probe results written to {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        summary = train(config)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary.get("first_loss") is not None:
        print(f"steps {summary['step']}: loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; "
              f"checkpoint {Path(config.out) / 'checkpoint.pt'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
