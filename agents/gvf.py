r"""The annotation-bootstrapping update: a general value function over annotations, trained by TD.

Notation (Ghosh & Levine 2025). A transition is ``(x, a, x')``: a view ``x``, the relative-box action ``a`` that
leads to the next view ``x'``. The annotations ``l_1 .. l_L`` of a batch (other views, prototypes, captions or
category labels, see :mod:`agents.sources`) are scored by

.. math::

    p(l \mid x) = \mathrm{softmax}_l\big(t\, \phi(x)^\top \psi(l)\big), \qquad
    Q(l \mid x, a) = \mathrm{softmax}_l\big(t_{AB}\, \phi_{AB}(x, a)^\top \psi_{AB}(l)\big).

The TD target, from the target network (an EMA of the online network), with ``K`` next actions ``a'_k`` drawn from
a fixed distribution (uniform over relative boxes; never the logged next action):

.. math::

    y(l) = (1 - \gamma)\, p_{\mathrm{tgt}}(l \mid x') + \gamma\, \mathcal{B}_{a'} Q_{\mathrm{tgt}}(l \mid x', a'),

with the backup :math:`\mathcal{B}` either ``max`` over the ``K`` actions, per annotation (the optimal GVF, as in
the paper; the maxima no longer sum to one, so they are renormalised to a distribution) or ``mean`` (the GVF of the
uniform policy). Neither depends on the policy that logged the data: that is what policy-agnostic means here.
``gamma = 0`` gives the one-step target ``y = p_target(. | x')`` of the preprint.

The loss is the base method's loss plus ``lambda`` times the cross-entropy between ``Q(. | x, a)`` and ``y``:

.. math::

    \mathcal{L} = \mathcal{L}_{\mathrm{base}} + \lambda\, \mathrm{CE}\big(y, Q(\cdot \mid x, a)\big)
               = \mathcal{L}_{\mathrm{base}} - \lambda \sum_l y(l) \log Q(l \mid x, a).

Each function below computes one of these pieces; :func:`td_target` is the equation for ``y``,
:func:`bootstrap_loss` the cross-entropy, :func:`ema_update` and :func:`ema_momentum` the target network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BACKUPS = ("max", "mean")


def td_target(p_next: torch.Tensor, q_next: torch.Tensor, gamma: float, backup: str = "max") -> torch.Tensor:
    r"""``y = (1 - gamma) p_target(. | x') + gamma B_{a'}[Q_target(. | x', a')]``.

    Args:
        p_next: ``float32 [B, L]`` target-network annotation distribution at the next view (rows sum to 1).
        q_next: ``float32 [B, K, L]`` target-network value distributions at the next view, for ``K`` sampled
            next actions (each row over ``L`` sums to 1).
        gamma: Discount in ``[0, 1)``.
        backup: ``"max"`` (per-annotation maximum over the ``K`` actions, renormalised) or ``"mean"``.

    Returns:
        ``float32 [B, L]`` target distributions (rows sum to 1). No gradient flows through it.
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma={gamma!r} is invalid: expected a discount in [0, 1)")
    if backup not in BACKUPS:
        raise ValueError(f"backup={backup!r} is invalid: expected one of {BACKUPS}")
    if q_next.dim() != 3 or p_next.dim() != 2 or q_next.shape[0] != p_next.shape[0] or q_next.shape[2] != \
            p_next.shape[1]:
        raise ValueError(f"expected p_next [B, L] and q_next [B, K, L]; got {tuple(p_next.shape)} and "
                         f"{tuple(q_next.shape)}")
    with torch.no_grad():
        if backup == "max":
            boot = q_next.amax(dim=1)  # (B, L)
            boot = boot / boot.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            boot = q_next.mean(dim=1)  # (B, L)
        return (1.0 - gamma) * p_next + gamma * boot


def bootstrap_loss(q_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-sum_l y(l) log Q(l | x, a)``, averaged over the batch.

    Args:
        q_logits: ``float32 [B, L]`` logits of ``Q(. | x, a)`` for the logged actions.
        target: ``float32 [B, L]`` the TD target ``y``.
    """
    return -(target * torch.log_softmax(q_logits, dim=-1)).sum(dim=-1).mean()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_l target(l) log softmax(logits)(l)``, averaged over rows: the base losses' building block."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter; buffers are copied.

    Both modules must have the same structure (the target is a deep copy of the online network).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r} is invalid: expected a value in [0, 1]")
    online_params = dict(online.named_parameters())
    for name, param in target.named_parameters():
        param.mul_(momentum).add_(online_params[name].detach(), alpha=1.0 - momentum)
    online_buffers = dict(online.named_buffers())
    for name, buffer in target.named_buffers():
        buffer.copy_(online_buffers[name])


def ema_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule of the EMA momentum from ``base`` at step 0 to ``final`` at ``total_steps`` (as in BYOL/DINO).

    The paper's rate 0.004 is ``base = 0.996``; annealing towards 1 is its schedule for the SimCLR and DINO variants.
    """
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
