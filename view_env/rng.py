"""Counter-based random numbers: every draw is a pure hash of (seed, environment, episode, draw number).

A shared torch generator would make environment ``i``'s randomness depend on how many environments draw before
it. Hashing the coordinates of each draw instead makes the trajectory of environment ``i`` a function of
``(seed, i)`` alone, the same for any ``num_envs`` and on any device, with no state beyond a per-environment
episode counter. The mixer is Wellons' 32-bit ``lowbias32`` (bias about 0.17 of a perfect hash), computed in int64
with 32-bit masking so it is exact on CPU and CUDA alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Key:
    """The random stream of a batch of environments: environment ``i``'s draws are a pure function of
    ``(seed, env_ids[i], episode, draw)``.

    Attributes:
        seed: The vector environment's seed (any Python int; reduced to 64 bits).
        env_ids: ``int64 [N]`` global environment indices.
    """

    seed: int
    env_ids: torch.Tensor


def _mix(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` on the low 32 bits of an int64 tensor; the result is in ``[0, 2**32)``."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def hash_counters(seed: int, env_ids: torch.Tensor, episodes: torch.Tensor, draws: int) -> torch.Tensor:
    """Hash ``draws`` independent 32-bit values for each environment.

    Args:
        seed: The vector environment's seed (any Python int; reduced to 64 bits).
        env_ids: ``int64 [N]`` environment indices.
        episodes: ``int64 [N]`` per-environment episode counters.
        draws: Number of values per environment.

    Returns:
        ``int64 [N, draws]`` in ``[0, 2**32)``.
    """
    seed = int(seed) % 2**64
    seed_hi, seed_lo = seed >> 32, seed & _MASK
    h = _mix(_mix(torch.full_like(env_ids, seed_lo) ^ _mix(torch.full_like(env_ids, seed_hi) + 0x9E3779B9)) ^ env_ids)
    h = _mix(h ^ _mix(episodes + 0x632BE5AB))
    counter = torch.arange(draws, dtype=torch.int64, device=env_ids.device)
    return _mix(h[:, None] ^ _mix(counter + 0x85EBCA6B)[None, :])


def uniform(seed: int, env_ids: torch.Tensor, episodes: torch.Tensor, draws: int) -> torch.Tensor:
    """``float32 [N, draws]`` uniform in ``[0, 1)``, a pure function of its arguments (see :func:`hash_counters`)."""
    bits = hash_counters(seed, env_ids, episodes, draws) >> 8  # 24 bits: exact in float32
    return bits.to(torch.float32) * (1.0 / 2**24)
