"""What a GVF training step costs beyond the encoder passes the method needs, measured in the same run.

For a pretraining recipe (default: the CPU preset of ``make run``), on batches sampled from its own replay buffer:

- ``step``: one whole optimiser step (:meth:`agents.pretrain._Learner.step`: the loss of
  :func:`agents.gvf.gvf_loss`, backward, AdamW, the EMA of the target network);
- ``encoder passes``: only the encoder passes that loss needs, on the same views: the online encoder forward and
  backward on ``x`` (and on the anchors where the source reads them), and the target encoder forward on ``x'``
  (and on the anchors for DINO's teacher or a bootstrapped ``views`` source), with nothing else.

The two are called in turn and their medians compared. The ratio ``step / encoder passes`` is what the rest of
the method costs (the heads, the value of the logged action and of ``K`` candidate next actions, the TD target, the
optimiser and the EMA); the issue's aim is at most 1.25.

    python benchmarks/gvf_step.py                      # the default recipe, 20 timed steps
    python benchmarks/gvf_step.py --preset shapes-simclr-ab-cpu --steps 10
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agents import cli, pretrain
from agents.cli import check, option
from agents.config import PRESETS, PretrainConfig, parse_config
from agents.data import ReplayBuffer, ReplayFeeder


@dataclass
class GVFStepArgs:
    """Arguments of ``benchmarks/gvf_step.py``."""

    preset: str = option("shapes-labels-cpu", "the pretraining preset to measure", choices=sorted(PRESETS))
    steps: int = option(20, "timed steps of each kind (after 3 untimed ones)")
    buffer_size: int = option(2048, "replay buffer (filled once from the recipe's own stream)")
    root: str | None = option(None, "the dataset root (default: the preset's, for Shapes the cached default set)")
    batch_size: int | None = option(None, "override the preset's batch size")

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        check(self.buffer_size >= 1, "buffer_size", self.buffer_size, "an integer >= 1")


def interleaved_medians(first: Callable[[int], object], second: Callable[[int], object], steps: int,
                        warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``first(i)`` and of ``second(i)``, called in turn (so that both meet the same machine)."""
    for i in range(warmup):
        first(i)
        second(i)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup, warmup + steps):
        for work, spent in ((first, times[0]), (second, times[1])):
            began = time.perf_counter()
            work(i)
            spent.append(time.perf_counter() - began)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(config: PretrainConfig, steps: int) -> dict[str, float]:
    """Seconds of a whole step and of the encoder passes alone, on batches of the recipe's own stream."""
    device = torch.device(config.device)
    stream, dataset, num_categories, close = pretrain.open_stream(config, 0, 1, device)
    buffer = ReplayBuffer(config.buffer_size, config.obs_size, num_categories, device)
    feeder = ReplayFeeder(buffer, stream, config.batch_size, config.replay_ratio)
    feeder.take(config.buffer_size)
    close()
    online, target, optimizer, _ = pretrain._networks(config, num_categories, None, device, None)
    learner = pretrain._learner(config, online, target, optimizer, device, 1)
    batches = [pretrain._sample(config, 0, s, buffer, dataset, None, device) for s in range(steps + 3)]
    source = online.source
    bootstrap = config.bootstrap_weight > 0
    online_anchor = source.uses_anchor
    target_anchor = source.teacher_reads_anchor or (bootstrap and source.uses_anchor)

    def whole(i: int) -> None:
        learner.step(i, *batches[i])

    def encoders(i: int) -> None:
        batch = batches[i][0]
        with learner.autocast:
            out = online.encode(batch["view"])
            total = out.pooled.float().sum() + out.tokens.float().sum()
            if online_anchor:
                anchor = online.encode(batch["anchor_view"])
                total = total + anchor.pooled.float().sum()
            with torch.no_grad():
                if bootstrap:
                    target.encode(batch["next_view"])
                if target_anchor:
                    target.encode(batch["anchor_view"])
        online.zero_grad(set_to_none=True)
        total.backward()

    step, passes = interleaved_medians(whole, encoders, steps)
    return {"step": step, "encoder_passes": passes, "ratio": step / passes}


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(GVFStepArgs, argv, description=__doc__)
    overrides = {"buffer_size": args.buffer_size, "progress": False, "probe": False}
    if args.root is not None:
        overrides["root"] = args.root
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = dataclasses.replace(parse_config(["--preset", args.preset]), **overrides)
    result = measure(config, args.steps)
    print(f"{args.preset}: batch {config.batch_size}, {config.encoder} at {config.obs_size} px, "
          f"{torch.get_num_threads()} threads: step {1000 * result['step']:.1f} ms, encoder passes "
          f"{1000 * result['encoder_passes']:.1f} ms, ratio {result['ratio']:.2f} (aim: <= 1.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
