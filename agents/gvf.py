r"""The annotation-bootstrapping update: a general value function over annotations, trained by TD.

Notation (Ghosh & Levine 2025). A transition is ``(x, a, x')``: a view ``x``, the relative-box action ``a`` that
leads to the next view ``x'``. The annotations ``l_1 .. l_L`` of a batch (other views, prototypes, captions or
category labels, see :mod:`agents.sources`) are scored by

.. math::

    p(l \mid x) = \mathrm{softmax}_l\big(t\, \phi(x)^\top \psi(l)\big), \qquad
    Q(l \mid x, a) = \mathrm{softmax}_l\big(t_{AB}\, \phi_{AB}(x, a)^\top \psi_{AB}(l)\big).

The TD target, from the target network (an EMA of the online network), with ``K`` next actions ``a'_k`` drawn from
a fixed distribution over legal next views of ``x'`` (independent RandomResizedCrop views of its image, the
behaviour distribution of the default policy; never the logged next action, see :func:`sample_next_actions`):

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

An action ``a`` is the next view's box in the current view's own frame, its flip included
(:func:`agents.data.relative_box`), and the next view's augmentation with its flip relative to the current view's
(:func:`agents.data.relative_aug`).

Each function below computes one of these pieces; :func:`td_target` is the equation for ``y``,
:func:`agents.sources.soft_cross_entropy` the cross-entropy (the one the base losses use too), :func:`ema_update`
and :func:`ema_momentum` the target network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agents.data import random_resized_crops, relative_aug, relative_box
from agents.models import IMAGENET_MEAN, IMAGENET_STD, ActionTokenizer, EncoderOutput, ProjectionHead, ValueHead
from agents.sources import AnnotationSource, Encoded, LabelSource, label_distribution, soft_cross_entropy
from view_env import AUGMENTATIONS, EnvParams, augment, identity_aug, retry_columns

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


#: The share of the initial weights that :func:`auto_ema_momentum` leaves in the target network at the end of a run.
EMA_INITIAL_SHARE = 1e-3


def auto_ema_momentum(total_steps: int, paper: float = 0.996, initial_share: float = EMA_INITIAL_SHARE) -> float:
    """The base momentum that lets the target track the online network at a run of ``total_steps`` steps.

    Rule: the paper's 0.996, or less where a run is too short for it: at most the momentum ``m0`` under which the
    cosine schedule of :func:`ema_momentum` leaves ``initial_share`` (0.1%) of the initial weights in the target at
    the end. The share is ``prod_t m_t ~ exp(-sum_t (1 - m_t)) = exp(-(1 - m0) T / 2)`` (the cosine averages half of
    ``1 - m0``), so ``m0 = 1 - 2 ln(1 / initial_share) / T``: 0.983 at 800 steps, 0.996 from about 3,500 steps on.
    (Momentum 0.996 annealed over 800 steps leaves about 20% of the initial weights.)
    """
    if total_steps < 1 or not 0 < initial_share < 1:
        raise ValueError(f"need total_steps >= 1 and 0 < initial_share < 1, got {total_steps}, {initial_share}")
    return max(0.0, min(paper, 1 - 2 * math.log(1 / initial_share) / total_steps))


@torch.no_grad()
def target_drift(target: nn.Module, online: nn.Module) -> float:
    """``||theta_target - theta_online|| / ||theta_online||`` over all parameters: how far the target lags."""
    online_params = dict(online.named_parameters())
    diff = sum(float((p - online_params[n]).pow(2).sum()) for n, p in target.named_parameters())
    norm = sum(float(p.pow(2).sum()) for p in online_params.values())
    return math.sqrt(diff / max(norm, 1e-12))


# ----------------------------------------------------------------------------------------------------------------
# The network and the update


def sample_next_actions(next_box: torch.Tensor, next_aug: torch.Tensor, next_image_size: torch.Tensor, k: int,
                        params: EnvParams, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``K`` actions per next view ``x'`` from the fixed target distribution over its *legal* next views.

    Each candidate is an independent RandomResizedCrop view of x''s image, drawn exactly as the default behaviour
    policy draws its views (:func:`view_env.initial_boxes` with ``params.init_scale`` and ``params.init_aspect``,
    then the legal projection, so every box lies inside the image; each augmentation in ``params.augmentations`` at
    a uniform strength, the others at their identity), and is expressed as the learner sees actions: the box in
    x''s own (possibly mirrored) frame and the augmentation with its flip relative to x''s.

    Args:
        next_box: ``float32 [B, 4]`` x''s box.
        next_aug: ``float32 [B, 7]`` x''s augmentation state.
        next_image_size: ``int64 [B, 2]`` ``(height, width)`` of x''s image.
        k: ``K``.
        params: The distribution's ranges (``init_scale``, ``init_aspect``, ``min_scale``, ``max_aspect``,
            ``augmentations``).
        generator: Source of randomness (on the boxes' device).

    Returns:
        ``float32 [B, K, 4]`` relative boxes, ``float32 [B, K, 7]`` relative augmentations (the value head's
        queries), and ``float32 [B, K, 4]`` the candidates' boxes in image coordinates.
    """
    b = next_box.shape[0]
    device = next_box.device
    u = torch.rand((b, k, 4 + len(params.augmentations)), generator=generator, device=device)
    extra = retry_columns(params)  # drawn after u: the log-uniform law's candidates do not change
    retries = torch.rand((b, k, extra), generator=generator, device=device) if extra else None
    boxes, strengths = random_resized_crops(u, next_image_size.to(device)[:, None].expand(b, k, 2), params, retries)
    augs = augment(identity_aug(b * k, device), strengths.reshape(b * k, -1), params).view(b, k, -1)  # (B, K, 7)
    flip = next_aug[:, None, AUGMENTATIONS.index("flip")].expand(b, k)
    rel_box = relative_box(next_box[:, None].expand(b, k, 4), boxes, flip)  # (B, K, 4) in x''s own frame
    return rel_box, relative_aug(next_aug[:, None].expand(b, k, -1), augs), boxes


class GVFNetwork(nn.Module):
    """Encoder, view projection ``phi``, value head ``phi_AB`` and the annotation source (``psi``, ``psi_AB``).

    Views enter as ``uint8 [B, 3, S, S]`` and are scaled to ``[0, 1]`` and normalised with ImageNet statistics
    (:data:`agents.models.IMAGENET_MEAN`, :data:`agents.models.IMAGENET_STD`) inside :meth:`encode`.
    ``value_dim`` is the value head's width (default ``min(encoder.dim, 192)``).
    """

    def __init__(self, encoder: nn.Module, source: AnnotationSource, embed_dim: int, action_bins: int = 16,
                 value_depth: int = 2, action_tokens: bool = True, value_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.phi_head = ProjectionHead(encoder.dim, embed_dim, normalize=True)
        self.tokenizer = ActionTokenizer(num_bins=action_bins)
        grid = math.isqrt(encoder.num_tokens)
        self.value_head = ValueHead(encoder.dim, self.tokenizer.vocab_size, embed_dim,
                                    dim=value_dim or min(encoder.dim, 192), depth=value_depth,
                                    actionless=not action_tokens,
                                    memory_positions=grid * grid == encoder.num_tokens)
        self.source = source
        # In uint8 units, so that encode normalises with one subtraction and one division.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def encode(self, views: torch.Tensor) -> EncoderOutput:
        """``uint8 [B, 3, S, S]`` -> tokens ``[B, T, D]`` and pooled ``[B, D]``."""
        return self.encoder((views.float() - self.mean) / self.std)

    def phi(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, d]`` normalised view features."""
        return self.phi_head(pooled)

    def value(self, tokens: torch.Tensor, rel_box: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """``phi_AB(x, a)``: tokens ``[B, T, D]``, actions ``[B, K, 4]``, ``[B, K, 7]`` -> normalised ``[B, K, d]``."""
        return F.normalize(self.value_head(tokens, self.tokenizer(rel_box, aug)), dim=-1)


def _encoded(net: GVFNetwork, out: EncoderOutput | None, batch: dict[str, torch.Tensor],
             anchor: EncoderOutput | None, annotation_key: str) -> Encoded:
    source = net.source
    enc = Encoded(phi=None if out is None else net.phi(out.pooled), captions=batch.get("captions"),
                  same_image=batch["image_index"][:, None] == batch["image_index"][None, :])
    if anchor is not None:
        enc.anchor, enc.anchor_phi = anchor.pooled, net.phi(anchor.pooled)
    if isinstance(source, LabelSource):
        enc.annotation = label_distribution(batch[annotation_key])
    return enc


def gvf_loss(online: GVFNetwork, target: GVFNetwork, batch: dict[str, torch.Tensor], gamma: float, backup: str,
             bootstrap_weight: float, num_next_actions: int, next_views: EnvParams,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss ``L = L_base + lambda * CE(y, Q(. | x, a))``, read top to bottom.

    The target network runs only where a loss reads it: on the anchors for DINO's teacher, and on x' (and, for
    the ``views`` source, the anchors) for the TD target; a base-method run (``lambda = 0``) of SimCLR, CLIP or
    labels runs no target-network pass at all.

    Args:
        online: The network being trained.
        target: Its EMA copy (no gradient flows into it).
        batch: Transitions (:mod:`agents.data`): ``view``, ``next_view``, ``anchor_view`` (``uint8 [B, 3, S, S]``),
            ``rel_box`` ``[B, 4]``, ``aug``, ``next_aug`` ``[B, 7]``, ``next_box`` ``[B, 4]``, ``next_image_size``
            ``int64 [B, 2]``, ``image_index`` ``[B]``, ``view_annotation`` / ``annotation`` (``[B, A]``, labels of
            ``x`` and ``x'``), and ``captions`` (``int64 [B, T]``) for the captions source.
        gamma, backup: The TD target's discount and backup.
        bootstrap_weight: ``lambda``; 0 trains the base method alone (and skips the value computation).
        num_next_actions: ``K``.
        next_views: The distribution of the candidate next views (:func:`sample_next_actions`).
        generator: Draws the next actions.

    Returns:
        The loss and a dict of floats for logging: ``base``, ``loss``, the source's ``diagnostics`` (the
        prototypes source's ``teacher_entropy`` and ``teacher_cosine``), and with bootstrapping ``bootstrap`` (the
        cross-entropy), ``target_entropy`` (of ``y``) and ``uniform`` (``log L``, the entropy of a uniform target:
        a ``target_entropy`` close to it means the bootstrapped targets say little).
    """
    source = online.source
    bootstrap = bootstrap_weight > 0
    # Online network on the current views x (and the anchors, when they are the annotations): phi(x), psi(l).
    out_x = online.encode(batch["view"])
    anchor = online.encode(batch["anchor_view"]) if source.uses_anchor else None
    online_enc = _encoded(online, out_x, batch, anchor, "view_annotation")
    with torch.no_grad():
        # Target network on the next views x' (for the TD target) and the anchors (DINO's teacher, psi of views).
        out_next = target.encode(batch["next_view"]) if bootstrap else None
        reads_anchor = source.teacher_reads_anchor or (bootstrap and source.uses_anchor)
        target_anchor = target.encode(batch["anchor_view"]) if reads_anchor else None
        target_enc = _encoded(target, out_next, batch, target_anchor, "annotation")
    base = source.base_loss(online_enc, target_enc, target.source)
    metrics = {"base": float(base.detach()), **getattr(source, "diagnostics", {})}
    if not bootstrap:
        metrics["loss"] = metrics["base"]
        return base, metrics

    # Q(l | x, a) for the logged action a (the relative box and augmentation of x'): logits [B, L].
    action_aug = relative_aug(batch["aug"], batch["next_aug"])
    q_features = online.value(out_x.tokens, batch["rel_box"][:, None], action_aug[:, None])[:, 0]
    q_logits = source.logits(q_features, source.psi_ab(online_enc), value=True)
    with torch.no_grad():
        # y = (1 - gamma) p_target(l | x') + gamma B_a' Q_target(l | x', a') over K legal next views of x'.
        p_next = target.source.target_distribution(target_enc, target.source.psi(target_enc))  # (B, L)
        rel_box, aug, _ = sample_next_actions(batch["next_box"], batch["next_aug"], batch["next_image_size"],
                                              num_next_actions, next_views, generator)
        q_next_features = target.value(out_next.tokens, rel_box, aug)  # (B, K, d)
        q_next = torch.softmax(target.source.logits(q_next_features, target.source.psi_ab(target_enc), value=True),
                               dim=-1)  # (B, K, L)
        y = td_target(p_next, q_next, gamma, backup)
        entropy = -(y * y.clamp_min(1e-12).log()).sum(-1).mean()
    boot = soft_cross_entropy(q_logits, y)  # CE(y, Q(. | x, a)), averaged over the batch
    loss = base + bootstrap_weight * boot
    metrics.update(bootstrap=float(boot.detach()), loss=float(loss.detach()), target_entropy=float(entropy),
                   uniform=math.log(y.shape[-1]))
    return loss, metrics
