"""agents: the annotation-bootstrapping GVF pretrainer and the probes that measure its encoder.

Modules, in the order they depend on each other (each imports only modules above it, and only the public API of
view_env): ``cli`` (command lines from typed dataclasses), ``models`` (encoders, heads, tokenizers), ``data``
(transitions, replay buffer, shards), ``sources`` (annotation sources and base losses), ``gvf`` (the GVF update),
``config`` (a run's configuration and presets), ``network`` (the network a config describes), ``checkpoint``,
``collect`` (behaviour policies, collection; stable-baselines3 only when an SB3 policy is used), ``probe``
(frozen-feature probes of a checkpoint), ``pretrain`` (the training loop).
"""

from __future__ import annotations
