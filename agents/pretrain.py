"""Pretrain an encoder by annotation bootstrapping: ``python -m agents.pretrain [--preset NAME] [--flags]``.

The data flow is one-way: a stream of view transitions (the vector environment stepped under the behaviour policy,
or logged shards read in order) -> a bounded replay ring buffer fed at a stated replay ratio -> the GVF update
(:mod:`agents.gvf`) with an EMA target network -> checkpoint -> probes of the frozen encoder against a random-init
one and the colour-grid floor. The environment is the data loader: it is stepped while the learner trains, and the
fraction of step time spent collecting is measured and printed.

    python -m agents.pretrain                                      # the default recipe on Shapes, CPU
    python -m agents.pretrain --annotations views --gamma 0.9 --out runs/ab-simclr
    python -m agents.pretrain --out runs/ab-simclr --resume        # continue after a kill
    torchrun --nproc_per_node 2 -m agents.pretrain --out runs/ddp  # DDP: gloo on CPU, nccl on GPU

Determinism: collection runs in rounds seeded by ``(seed, rank, round)`` and the batch of step ``s`` is drawn with
a generator seeded by ``(seed, rank, s)``; a checkpoint stores how many transitions the stream has delivered, and
resuming replays the last ``buffer_size`` of them into the same buffer rows, so a resumed run continues exactly as
the uninterrupted run would have on CPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from agents import gvf
from agents.checkpoint import CheckpointError, config_to_dict, load_checkpoint, save_checkpoint
from agents.collect import TransitionCollector, rrc_env_kwargs
from agents.config import PretrainConfig, parse_config
from agents.data import ReplayBuffer, ReplayFeeder, ShardDataset, Transitions, pair_iou
from agents.models import CaptionTokenizer, ViewEncoder
from agents.network import MODEL_FIELDS, build_network, random_init_encoder
from agents.probe import LABELLED_DATASETS, ProbeData, ProbeProtocol, format_probe_table, probe_encoder
from view_env import EnvParams
from view_env.data import ImageDataset, load_dataset
from view_env.vector import ViewTransformVectorEnv

#: Fields that define the data stream: a resumed run replays its buffer only under the same values.
STREAM_FIELDS = ("env", "root", "split", "data", "policy", "views", "crop_scale", "crop_ratio", "crop_area",
                 "num_envs", "max_episode_steps", "augmentations", "max_pan", "buffer_size", "seed", "max_images")


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up over ``config.warmup`` steps to ``lr``, then a cosine decay to 0 at ``total_steps``."""
    warmup = config.warmup
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.total_steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def ema_base_momentum(config: PretrainConfig) -> float:
    """The EMA schedule's initial momentum: ``ema_momentum``, or :func:`agents.gvf.auto_ema_momentum` of the run;
    0 without a target network (``target_network=False``: the target is the online network of the step)."""
    if not config.target_network:
        return 0.0
    return config.ema_momentum if config.ema_momentum is not None else gvf.auto_ema_momentum(config.total_steps)


#: Parameter names (suffixes) that never get weight decay, whatever their shape: tokens and position embeddings.
NO_DECAY_NAMES = ("cls_token", "pos_embed", "action_pos", "readout")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the weight matrices and kernels (``ndim >= 2``) only; none on biases, norms,
    temperatures (``ndim < 2``), tokens and position embeddings (:data:`NO_DECAY_NAMES`)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def next_view_params(config: PretrainConfig) -> EnvParams:
    """The distribution of the backup's candidate next views: RandomResizedCrop views in ``crop_scale`` (area drawn
    by ``crop_area``) and ``crop_ratio`` with the run's augmentations (the default behaviour policy's own
    distribution)."""
    return EnvParams(**{key: value for key, value in collector_env_kwargs(config).items()
                        if key in ("init_scale", "init_area", "init_aspect", "min_scale", "max_aspect")},
                     augmentations=config.augmentations)


def collector_env_kwargs(config: PretrainConfig) -> dict[str, Any]:
    """Environment arguments of the collecting environments for ``config.policy``."""
    kwargs = rrc_env_kwargs(config.views, tuple(config.crop_scale), tuple(config.crop_ratio), config.augmentations,
                            config.crop_area)
    if config.policy == "uniform":  # the random walk: relative moves from an RRC-drawn first view
        kwargs.update(action_mode="continuous", max_episode_steps=config.max_episode_steps, max_pan=config.max_pan)
    return kwargs


class _Objective(nn.Module):
    """Wraps the online network so that DistributedDataParallel sees the whole loss in one ``forward``."""

    def __init__(self, online: gvf.GVFNetwork, config: PretrainConfig) -> None:
        super().__init__()
        self.online = online
        self.config = config
        self.next_views = next_view_params(config)

    def forward(self, target: gvf.GVFNetwork, batch: dict[str, torch.Tensor], generator: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        return gvf.gvf_loss(self.online, target, batch, c.gamma, c.backup, c.bootstrap_weight, c.num_next_actions,
                            self.next_views, generator)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles).

    Not oneDNN's ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: that is true on any AVX512 CPU, where oneDNN
    emulates bf16 with AVX512BW and is slower than float32: on 2 cores of an Intel Xeon of 2.8 GHz without
    AVX512-BF16, ``python -m agents.pretrain --annotations views --total-steps 80 --no-probe --out DIR`` trained at
    187 to 203 transitions/s under the emulated bf16 and at 321 to 337 in float32 (docs/gvf.md).
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def use_bf16(config: PretrainConfig, device: torch.device) -> bool:
    """Whether the loss runs under bf16 autocast: ``config.bf16`` on CUDA, and on CPUs with native bf16 kernels
    (:func:`native_cpu_bf16`: AVX512-BF16 or AMX; elsewhere CPU bf16 is emulated and slower than float32)."""
    if not config.bf16:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and native_cpu_bf16()


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


def open_stream(config: PretrainConfig, rank: int, world: int, device: torch.device
                ) -> tuple[Callable[[int], Iterator[Transitions]], ImageDataset, int, Callable[[], None]]:
    """The run's transition stream: logged shards in order (``--data``) or the environment stepped under the policy.

    Returns:
        ``open(start)`` (see :class:`agents.data.ReplayFeeder`), the image dataset, the category count, and a
        function that releases the environment.
    """
    if config.data is not None:
        shards = ShardDataset(config.data)
        if shards.obs_size != config.obs_size:
            raise ValueError(f"--data {config.data} holds {shards.obs_size}-px views but --obs-size is "
                             f"{config.obs_size}: collect shards at this view size or pass --obs-size "
                             f"{shards.obs_size}")

        def from_shards(start: int) -> Iterator[Transitions]:
            return shards.stream(start, rank=rank, world_size=world, num_workers=config.num_workers)

        return from_shards, _dataset(config, config.split), shards.num_categories, lambda: None
    dataset = _dataset(config, config.split)
    env = ViewTransformVectorEnv(config.num_envs, dataset=dataset, device=device, obs_size=config.obs_size,
                                 max_images=config.max_images, autoreset_mode="disabled", progress=config.progress,
                                 **collector_env_kwargs(config))
    collector = TransitionCollector(env, config.policy, seed=config.seed * 1000 + rank)
    return collector.stream, dataset, env.num_categories, env.close


def _captions(dataset: ImageDataset, index: torch.Tensor, tokenizer: CaptionTokenizer, generator: torch.Generator
              ) -> torch.Tensor:
    """One caption per sample, drawn with ``generator`` among its image's captions, as tokens ``int64 [B, T]``."""
    picks = torch.rand(len(index), generator=generator).tolist()
    texts = []
    for i, u in zip(index.tolist(), picks, strict=True):
        captions = dataset.records[i].captions or ("",)
        texts.append(captions[int(u * len(captions))])
    return tokenizer.encode(texts)


def _fill(feeder: ReplayFeeder, resumed_delivered: int | None, progress: bool) -> None:
    """Fill the buffer before the first step (or rebuild it on resume), with a progress bar."""
    capacity = feeder.buffer.capacity
    with tqdm(total=capacity, desc="fill replay buffer", unit="transition", unit_scale=True,
              disable=not progress) as bar:
        if resumed_delivered is not None:
            feeder.resume(resumed_delivered)
            bar.update(len(feeder.buffer))
            return
        chunk = max(1, capacity // 20)
        while feeder.delivered < capacity:
            bar.update(feeder.take(min(chunk, capacity - feeder.delivered)))


def _resume_from(config: PretrainConfig, checkpoint_path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` continues (``None`` without it), after checking that it is of this model and
    this data stream.

    Raises:
        CheckpointError: The checkpoint is missing or unreadable, or its model or data-stream fields differ.
    """
    if not config.resume:
        return None
    resumed = load_checkpoint(checkpoint_path, map_location=device)
    saved = resumed["config"]
    for fields, what in ((MODEL_FIELDS, "model"), (STREAM_FIELDS, "data stream")):
        changed = [f for f in fields if getattr(saved, f) != getattr(config, f)]
        if changed:
            raise CheckpointError(f"{checkpoint_path} was written by another {what}: {changed} differ "
                                  f"({[getattr(saved, f) for f in changed]} there, "
                                  f"{[getattr(config, f) for f in changed]} now)")
    return resumed


def _caption_tokenizer(config: PretrainConfig, dataset: ImageDataset, resumed: dict[str, Any] | None
                       ) -> CaptionTokenizer | None:
    """The captions source's vocabulary: the checkpoint's when resuming, else built from the dataset's captions."""
    if config.annotations != "captions":
        return None
    if resumed is not None and "tokenizer" in resumed["extra"]:
        return CaptionTokenizer.from_state_dict(resumed["extra"]["tokenizer"])
    return CaptionTokenizer.build(c for r in dataset.records for c in r.captions)


def _networks(config: PretrainConfig, num_categories: int, tokenizer: CaptionTokenizer | None,
              device: torch.device, resumed: dict[str, Any] | None
              ) -> tuple[gvf.GVFNetwork, gvf.GVFNetwork, torch.optim.Optimizer, int]:
    """The online network, its target copy, the optimiser and the first step: fresh (torch seed ``seed``, the
    same initial parameters on every rank) or as the checkpoint left them."""
    torch.manual_seed(config.seed)
    online = build_network(config, num_categories, tokenizer).to(device)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.AdamW(parameter_groups(online, config.weight_decay), lr=config.lr)
    if resumed is None:
        return online, target, optimizer, 0
    online.load_state_dict(resumed["model"])
    target.load_state_dict(resumed["target"])
    optimizer.load_state_dict(resumed["optimizer"])
    return online, target, optimizer, resumed["step"]


@dataclass
class _Learner:
    """What one optimiser step needs: the networks, the optimiser, the loss (DDP-wrapped across processes) and the
    autocast context."""

    config: PretrainConfig
    online: gvf.GVFNetwork
    target: gvf.GVFNetwork
    optimizer: torch.optim.Optimizer
    objective: nn.Module
    autocast: AbstractContextManager
    base_momentum: float

    def step(self, step: int, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        """One update at ``step``: learning rate, loss, AdamW step, EMA of the target; returns the step's metrics."""
        config = self.config
        lr = learning_rate(config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            loss, metrics = self.objective(self.target, batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        momentum = gvf.ema_momentum(step, config.total_steps, base=self.base_momentum) if config.target_network else 0.0
        gvf.ema_update(self.target, self.online, momentum)
        iou = pair_iou(batch["box"], batch["next_box"])
        overlap, disjoint = torch.stack([iou.mean(), (iou == 0).float().mean()]).tolist()  # one device sync
        metrics.update(lr=lr, momentum=momentum, pair_iou=overlap, pair_disjoint=disjoint)
        return metrics


def _learner(config: PretrainConfig, online: gvf.GVFNetwork, target: gvf.GVFNetwork,
             optimizer: torch.optim.Optimizer, device: torch.device, world: int) -> _Learner:
    """The run's :class:`_Learner`: the loss in one module (wrapped in DistributedDataParallel under torchrun),
    bf16 autocast where :func:`use_bf16` allows it, and the EMA schedule's initial momentum."""
    objective: nn.Module = _Objective(online, config)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.bootstrap_weight == 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(config, device) else nullcontext()
    return _Learner(config, online, target, optimizer, objective, autocast, ema_base_momentum(config))


def _sample(config: PretrainConfig, rank: int, step: int, buffer: ReplayBuffer, dataset: ImageDataset,
            tokenizer: CaptionTokenizer | None, device: torch.device
            ) -> tuple[dict[str, torch.Tensor], torch.Generator]:
    """The batch of ``step`` and the generator the loss draws from, both seeded by ``(seed, rank, step)``."""
    step_seed = config.seed * 1_000_003 + rank * 7919 + step
    generator = torch.Generator(device=device).manual_seed(step_seed)
    host_generator = torch.Generator().manual_seed(step_seed)
    batch = buffer.sample(config.batch_size, generator)
    if tokenizer is not None:
        batch["captions"] = _captions(dataset, batch["image_index"].cpu(), tokenizer, host_generator).to(device)
    return batch, generator


#: The per-step metrics a run is summarised by, averaged over its last 10% of steps (:func:`tail_means`): the loss
#: terms, the TD targets' entropy against a uniform target's, the DINO teacher's entropy and feature cosine, and the
#: overlap of the batches' two views (mean IoU, fraction of disjoint pairs).
TAIL_METRICS = ("base", "bootstrap", "target_entropy", "uniform", "teacher_entropy", "teacher_cosine", "pair_iou",
                "pair_disjoint")


def tail_means(metrics: Sequence[dict[str, float]], keys: Sequence[str] = TAIL_METRICS) -> dict[str, float]:
    """The mean of each of ``keys`` over the last 10% of ``metrics`` (a run's per-step metrics, ``summary["metrics"]``
    of :func:`train`; at least the last step), for the keys the run logged; ``{}`` for a run of no steps."""
    tail = metrics[-max(1, len(metrics) // 10):]
    return {key: sum(m[key] for m in tail) / len(tail) for key in keys if tail and key in tail[0]}


def _print_run(summary: dict[str, Any], start: int, world: int, batch_size: int) -> None:
    """One line: steps, speed, the time spent collecting, the last 10% of the loss terms, the target's drift."""
    end, elapsed = summary["step"], summary["train_seconds"]
    parts = [f"{key} {value:.3f}" for key, value in tail_means(summary["metrics"]).items()]
    rate = (end - start) * batch_size * world / elapsed
    print(f"trained steps {start}-{end} in {elapsed:.0f} s ({rate:,.0f} transitions/s); collecting took "
          f"{summary['collect_fraction']:.1%} of it; last 10%: {', '.join(parts)}; target drift "
          f"{summary['target_drift']:.3f} (EMA from {summary['ema_base_momentum']:.4f})")


def _rank_checksums(online: nn.Module, world: int) -> list[float]:
    """Every rank's parameter sum (every rank must hold the same parameters after each step)."""
    checksum = torch.stack([p.detach().double().sum() for p in online.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    return [float(c) for c in gathered]


class CurveLog:
    """The run's TensorBoard curves (``SummaryWriter`` under ``log_dir``); a no-op when logging is off.

    Tags: ``loss/total``, ``loss/base``, ``loss/bootstrap``, ``bootstrap/target_entropy`` and ``bootstrap/uniform``
    (a target entropy near ``log L`` means the bootstrapped targets say little), ``schedule/lr``,
    ``schedule/ema_momentum``, ``target/drift`` (every ``drift_every`` steps), ``speed/views_per_second``,
    ``speed/collect_fraction``, for the prototypes source ``dino/teacher_entropy`` and ``dino/teacher_cosine``
    (collapse: the entropy at ``log K``, the cosine near 1), ``data/pair_iou`` and ``data/pair_disjoint`` (the
    overlap of the batch's two views: :func:`agents.data.pair_iou`), and at the end ``probe/<encoder>/<probe>``.
    """

    METRICS = {"loss": "loss/total", "base": "loss/base", "bootstrap": "loss/bootstrap",
               "target_entropy": "bootstrap/target_entropy", "uniform": "bootstrap/uniform", "lr": "schedule/lr",
               "momentum": "schedule/ema_momentum", "teacher_entropy": "dino/teacher_entropy",
               "teacher_cosine": "dino/teacher_cosine", "pair_iou": "data/pair_iou",
               "pair_disjoint": "data/pair_disjoint"}

    def __init__(self, log_dir: str | Path | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is imported only when logging

            self.writer = SummaryWriter(str(log_dir))

    def step(self, step: int, metrics: dict[str, float], views_per_second: float, collect_fraction: float,
             drift: float | None = None) -> None:
        if self.writer is None:
            return
        for key, tag in self.METRICS.items():
            if key in metrics:
                self.writer.add_scalar(tag, metrics[key], step)
        self.writer.add_scalar("speed/views_per_second", views_per_second, step)
        self.writer.add_scalar("speed/collect_fraction", collect_fraction, step)
        if drift is not None:
            self.writer.add_scalar("target/drift", drift, step)

    def probes(self, step: int, results: dict[str, dict[str, float]]) -> None:
        if self.writer is None:
            return
        for encoder, scores in results.items():
            for probe, value in scores.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"probe/{encoder.replace(' ', '_')}/{probe}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_curves(log_dir: str | Path, tags: Sequence[str] | None = None, points: int | None = None
                ) -> dict[str, list[tuple[int, float]]]:
    """The scalar curves a run logged to TensorBoard (:class:`CurveLog`), read back with TensorBoard's own reader.

    Args:
        log_dir: The run's log directory (``<out>/tensorboard`` by default).
        tags: Tags to read (e.g. ``["loss/base", "bootstrap/target_entropy"]``); all scalar tags by default. A tag
            the run did not log is left out of the result.
        points: Keep at most this many evenly spaced points per curve (the first and last included).

    Returns:
        ``{tag: [(step, value), ...]}`` in step order.

    Raises:
        FileNotFoundError: ``log_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir()):
        raise FileNotFoundError(f"{log_dir} holds no TensorBoard event file (was the run started with "
                                "--no-tensorboard, or with --log-dir elsewhere?)")
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    available = events.Tags()["scalars"]
    curves = {}
    for tag in (available if tags is None else [t for t in tags if t in available]):
        curve = [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
        if points is not None and len(curve) > points:
            keep = sorted({round(i * (len(curve) - 1) / (points - 1)) for i in range(points)})
            curve = [curve[i] for i in keep]
        curves[tag] = curve
    return curves


def curve_log_dir(config: PretrainConfig) -> Path | None:
    """Where the run's TensorBoard curves go: ``log_dir``, else ``<out>/tensorboard``; ``None`` when off."""
    if not config.tensorboard:
        return None
    return Path(config.log_dir) if config.log_dir is not None else Path(config.out) / "tensorboard"


def train(config: PretrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining; returns a summary (final step, losses, timings, probe results) and the network.

    Args:
        config: The run.
        stop_after: Stop after this many steps of the run without finishing it (tests use it to simulate a kill
            between checkpoints).

    Returns:
        What ``<out>/summary.json`` holds (``step``, ``losses``, ``metrics``, ``train_seconds``, ``target_drift``,
        ``probes``, ``timings``: ``fill_s`` before the first step, ``collect_s`` collecting during the steps,
        ``optimise_s`` the rest of the steps, ``probe_s`` the end-of-run probes), plus ``network``: the trained
        :class:`agents.gvf.GVFNetwork` (``ViewEncoder(summary["network"].encoder)`` is its encoder, ``uint8`` in).
    """
    rank, world = _distributed()
    device = _device(config, rank)
    out = Path(config.out)
    checkpoint_path = out / "checkpoint.pt"
    resumed = _resume_from(config, checkpoint_path, device)
    stream, dataset, num_categories, close_stream = open_stream(config, rank, world, device)
    buffer = ReplayBuffer(config.buffer_size, config.obs_size, num_categories, device)
    feeder = ReplayFeeder(buffer, stream, config.batch_size, config.replay_ratio)
    tokenizer = _caption_tokenizer(config, dataset, resumed)
    online, target, optimizer, start = _networks(config, num_categories, tokenizer, device, resumed)
    _fill(feeder, resumed["extra"]["delivered"] if resumed is not None else None, config.progress and rank == 0)
    learner = _learner(config, online, target, optimizer, device, world)
    extra: dict[str, Any] = {"num_categories": num_categories,
                             **({"tokenizer": tokenizer.state_dict()} if tokenizer is not None else {})}

    end = config.total_steps if stop_after is None else min(config.total_steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=config.total_steps, desc="pretrain", unit="step",
               disable=not (config.progress and rank == 0))
    history: list[dict[str, float]] = []
    curves = CurveLog(curve_log_dir(config) if rank == 0 else None)
    drift_every = max(1, config.total_steps // 100)
    collect_seconds = feeder.seconds
    began = time.perf_counter()
    for step in bar:
        feeder.advance(step)
        metrics = learner.step(step, *_sample(config, rank, step, buffer, dataset, tokenizer, device))
        history.append(metrics)
        elapsed = time.perf_counter() - began
        collecting = (feeder.seconds - collect_seconds) / max(elapsed, 1e-9)
        views_per_second = (step + 1 - start) * config.batch_size * world / max(elapsed, 1e-9)
        drift = gvf.target_drift(target, online) if curves.writer is not None and step % drift_every == 0 else None
        curves.step(step, metrics, views_per_second, collecting, drift)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", views_s=f"{views_per_second:.0f}",
                        collect=f"{collecting:.0%}", refresh=False)
        if rank == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.total_steps):
            save_checkpoint(checkpoint_path, config=config, step=step + 1, model=online.state_dict(),
                            target=target.state_dict(), optimizer=optimizer.state_dict(),
                            extra={**extra, "delivered": feeder.delivered})
    bar.close()
    close_stream()
    elapsed = time.perf_counter() - began
    collect_total = feeder.seconds - collect_seconds
    summary: dict[str, Any] = {
        "step": end, "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None, "losses": [m["loss"] for m in history],
        "metrics": history, "train_seconds": elapsed,
        "collect_fraction": collect_total / elapsed if end > start else 0.0,
        "delivered": feeder.delivered, "ema_base_momentum": learner.base_momentum,
        "target_drift": gvf.target_drift(target, online), "config": config_to_dict(config),
        "timings": {"fill_s": collect_seconds, "collect_s": collect_total,
                    "optimise_s": max(0.0, elapsed - collect_total), "probe_s": 0.0},
    }
    if rank == 0 and end > start:
        _print_run(summary, start, world, config.batch_size)
    if world > 1:
        summary["rank_checksums"] = _rank_checksums(online, world)
    if end == config.total_steps and config.probe and rank == 0:
        _end_of_run_probes(config, summary, curves, online, num_categories, tokenizer, device)
    curves.close()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    summary["network"] = online  # after summary.json: the trained online network itself, for a caller
    return summary


def _end_of_run_probes(config: PretrainConfig, summary: dict[str, Any], curves: CurveLog, online: gvf.GVFNetwork,
                       num_categories: int, tokenizer: CaptionTokenizer | None, device: torch.device) -> None:
    """Probe at the end of the run: ``summary["probes"]``, ``summary["timings"]["probe_s"]`` and the curves."""
    began = time.perf_counter()
    summary["probes"] = probe_against_random_init(config, online, num_categories, tokenizer, device)
    summary["timings"]["probe_s"] = time.perf_counter() - began
    curves.probes(summary["step"], summary["probes"])


def probe_set(config: PretrainConfig, val_images: int | None = None) -> ProbeData:
    """The probes' images for a run: :class:`agents.probe.ProbeProtocol` ``.from_pretrain(config)`` rendered
    (``probe_train_images`` train images drawn with ``seed``, the whole val split or ``val_images`` of it drawn with
    ``seed + 7``, the canvas the environment fits to ``obs_size``, object crops of at least ``crop_scale[0]`` of
    the image: the smallest view the encoder was trained on).

    Raises:
        ValueError: ``env`` has no split with object annotations (only ``shapes`` and ``coco`` have).
    """
    return ProbeProtocol.from_pretrain(config, val_images=val_images).data(progress=False)


def probe_against_random_init(config: PretrainConfig, online: gvf.GVFNetwork, num_categories: int,
                              tokenizer: CaptionTokenizer | None, device: torch.device) -> dict[str, dict[str, float]]:
    """Run every probe under the run's protocol (:meth:`agents.probe.ProbeProtocol.from_pretrain`, the protocol of
    ``python -m agents.probe --checkpoint``) on the pretrained encoder, on a freshly initialised one
    (:func:`agents.network.random_init_encoder`) and on the colour-grid floor; print the table and write it as
    JSON to ``<out>/probe.json``. Returns the table (empty, after a message, for data without object
    annotations)."""
    if config.env not in LABELLED_DATASETS:
        print(f"probes need a split with object annotations (shapes or coco); skipped for --env {config.env}")
        return {}
    protocol = ProbeProtocol.from_pretrain(config)
    began = time.perf_counter()
    rows = {"pretrained": ViewEncoder(online.encoder), "random init": random_init_encoder(config).to(device)}
    record = probe_encoder(rows, protocol, device, progress=config.progress)
    online.encoder.train()
    results = record["scores"]
    print(f"\nprobes on {config.env} val ({record['images']['val']} images, fitted on {record['images']['train']} "
          f"train images; {time.perf_counter() - began:.0f} s):\n{format_probe_table(results, digits=3)}")
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
