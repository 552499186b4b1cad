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
import torch.nn.functional as F
from torch import nn

from agents.models import ActionTokenizer, EncoderOutput, ProjectionHead, ValueHead
from agents.sources import AnnotationSource, Encoded, LabelSource, label_distribution
from view_env.core import AUGMENTATIONS, IDENTITY, strength_to_aug

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


# ----------------------------------------------------------------------------------------------------------------
# The network and the update


def sample_next_actions(batch: int, k: int, augmentations: tuple[str, ...], generator: torch.Generator | None,
                        device: torch.device, max_pan: float = 0.5, max_log_scale: float = math.log(1.5),
                        max_log_aspect: float = math.log(1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` actions per view from the fixed target distribution: uniform over relative boxes and strengths.

    The centre moves by ``U(-max_pan, max_pan)`` view widths/heights, the log-scale is ``U(-1, 1) * max_log_scale``
    and the log-aspect ``U(-1, 1) * max_log_aspect``, as the environment's continuous actions (before the legal-box
    projection, which needs the image and does not matter to a value query); each enabled augmentation gets a
    uniform strength through :func:`view_env.core.strength_to_aug`, the others their identity.

    Returns:
        ``float32 [B, K, 4]`` relative boxes and ``float32 [B, K, 7]`` augmentation states.
    """
    u = torch.rand((batch, k, 4 + len(AUGMENTATIONS)), generator=generator, device=device) * 2 - 1
    scale = torch.exp(u[..., 2] * max_log_scale)
    stretch = torch.exp(u[..., 3] * max_log_aspect / 2)
    w, h = scale * stretch, scale / stretch
    cx, cy = 0.5 + u[..., 0] * max_pan, 0.5 + u[..., 1] * max_pan
    rel_box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    columns = []
    for j, name in enumerate(AUGMENTATIONS):
        if name in augmentations:
            columns.append(strength_to_aug(name, u[..., 4 + j]))
        else:
            columns.append(torch.full_like(u[..., 0], IDENTITY[name]))
    return rel_box, torch.stack(columns, dim=-1)


class GVFNetwork(nn.Module):
    """Encoder, view projection ``phi``, value head ``phi_AB`` and the annotation source (``psi``, ``psi_AB``).

    Views enter as ``uint8 [B, 3, S, S]`` and are scaled to ``[0, 1]`` and normalised with ImageNet statistics
    inside :meth:`encode`.
    """

    def __init__(self, encoder: nn.Module, source: AnnotationSource, embed_dim: int, action_bins: int = 16,
                 value_depth: int = 2, action_tokens: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.phi_head = ProjectionHead(encoder.dim, embed_dim, normalize=True)
        self.tokenizer = ActionTokenizer(num_bins=action_bins)
        grid = math.isqrt(encoder.num_tokens)
        self.value_head = ValueHead(encoder.dim, self.tokenizer.vocab_size, embed_dim, dim=min(encoder.dim, 192),
                                    depth=value_depth, actionless=not action_tokens,
                                    memory_positions=grid * grid == encoder.num_tokens)
        self.source = source
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def encode(self, views: torch.Tensor) -> EncoderOutput:
        """``uint8 [B, 3, S, S]`` -> tokens ``[B, T, D]`` and pooled ``[B, D]``."""
        return self.encoder((views.float() - self.mean) / self.std)

    def phi(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, d]`` normalised view features."""
        return self.phi_head(pooled)

    def value(self, tokens: torch.Tensor, rel_box: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """``phi_AB(x, a)``: tokens ``[B, T, D]``, actions ``[B, K, 4]``, ``[B, K, 7]`` -> normalised ``[B, K, d]``."""
        return F.normalize(self.value_head(tokens, self.tokenizer(rel_box, aug)), dim=-1)


def _encoded(net: GVFNetwork, out: EncoderOutput, batch: dict[str, torch.Tensor], anchor: EncoderOutput | None,
             annotation_key: str) -> Encoded:
    source = net.source
    enc = Encoded(phi=net.phi(out.pooled), captions=batch.get("captions"),
                  same_image=batch["image_index"][:, None] == batch["image_index"][None, :])
    if anchor is not None:
        enc.anchor, enc.anchor_phi = anchor.pooled, net.phi(anchor.pooled)
    if isinstance(source, LabelSource):
        enc.annotation = label_distribution(batch[annotation_key])
    return enc


def gvf_loss(online: GVFNetwork, target: GVFNetwork, batch: dict[str, torch.Tensor], gamma: float, backup: str,
             bootstrap_weight: float, num_next_actions: int, augmentations: tuple[str, ...],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss ``L = L_base + lambda * CE(y, Q(. | x, a))``, read top to bottom.

    Args:
        online: The network being trained.
        target: Its EMA copy (no gradient flows into it).
        batch: Transitions: ``view``, ``next_view`` (``uint8 [B, 3, S, S]``), ``rel_box`` ``[B, 4]``, ``next_aug``
            ``[B, 7]``, ``image_index`` ``[B]``, and per source ``anchor_view`` (views, prototypes), ``captions``
            (``int64 [B, T]``), ``view_annotation`` / ``annotation`` (``[B, A]``, labels of ``x`` and ``x'``).
        gamma, backup: The TD target's discount and backup.
        bootstrap_weight: ``lambda``; 0 trains the base method alone (and skips the value computation).
        num_next_actions: ``K``.
        augmentations: The augmentations the next actions may set.
        generator: Draws the next actions.

    Returns:
        The loss and a dict of its parts (floats) for logging.
    """
    source = online.source
    # Online network on the current views x (and the anchors): phi(x), psi(l), the base loss.
    out_x = online.encode(batch["view"])
    anchor = online.encode(batch["anchor_view"]) if source.uses_anchor else None
    online_enc = _encoded(online, out_x, batch, anchor, "view_annotation")
    with torch.no_grad():
        # Target network on the next views x' (and the anchors): p_target(l | x') and its annotations.
        out_next = target.encode(batch["next_view"])
        target_anchor = target.encode(batch["anchor_view"]) if source.uses_anchor else None
        next_enc = _encoded(target, out_next, batch, target_anchor, "annotation")
    base = source.base_loss(online_enc, next_enc)
    metrics = {"base": float(base.detach())}
    if bootstrap_weight == 0:
        metrics["loss"] = metrics["base"]
        return base, metrics

    # Q(l | x, a) for the logged relative-box action a: logits [B, L].
    q_features = online.value(out_x.tokens, batch["rel_box"][:, None], batch["next_aug"][:, None])[:, 0]
    q_logits = source.logits(q_features, source.psi_ab(online_enc), value=True)
    with torch.no_grad():
        # y = (1 - gamma) p_target(l | x') + gamma B_a' Q_target(l | x', a') over K sampled next actions.
        p_next = target.source.target_distribution(next_enc, target.source.psi(next_enc))  # (B, L)
        rel_box, aug = sample_next_actions(len(q_logits), num_next_actions, augmentations, generator,
                                           q_logits.device)
        q_next_features = target.value(out_next.tokens, rel_box, aug)  # (B, K, d)
        q_next = torch.softmax(target.source.logits(q_next_features, target.source.psi_ab(next_enc), value=True),
                               dim=-1)  # (B, K, L)
        y = td_target(p_next, q_next, gamma, backup)
    boot = bootstrap_loss(q_logits, y)
    loss = base + bootstrap_weight * boot
    metrics.update(bootstrap=float(boot.detach()), loss=float(loss.detach()))
    return loss, metrics
