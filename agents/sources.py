"""Annotation sources: what the value function predicts, each with the base method's loss.

Every source defines, for a batch, the annotations ``l_1 .. l_L`` and two embeddings of them, ``psi(l)`` (scored
against the view features ``phi(x)`` for ``p(l | x)`` and the base loss) and ``psi_AB(l)`` (scored against the value
features ``phi_AB(x, a)`` for ``Q(l | x, a)``), plus the target distribution ``p_target(l | x')`` that the TD target
mixes in. With the bootstrapping weight at 0, training a source alone is its base method.

=============  ===============================  ===========================================================
source         annotations of a batch            base loss
=============  ===============================  ===========================================================
``views``      an independent view of each       SimCLR-style InfoNCE between ``phi(x)`` and ``psi(anchor)``;
               sample's image (the anchor)       views of the same image are all positives
``prototypes`` ``K`` learned prototypes          DINO-style: the student ``softmax(phi(x) . psi / 0.1)``
                                                 matches the teacher's centred, sharpened
                                                 ``softmax((phi_t(anchor) . psi_t - c) / 0.04)``, with
                                                 ``phi_t`` and ``psi_t`` the *target network's*
``captions``   one caption of each sample's      CLIP-style InfoNCE between ``phi(x)`` and a text tower
               image                             trained from scratch; captions of the same image positives
``labels``     the ``A`` categories and          cross-entropy between ``p(. | x)`` and the environment's
               background                        annotation vector of ``x``, normalised to a distribution
=============  ===============================  ===========================================================

For ``labels``, ``p_target(l | x')`` is the environment's annotation of ``x'`` itself (the true cumulant); for the
others it is the target network's own ``p(l | x')``. Every ``phi``, ``psi`` and ``psi_AB`` is L2-normalised (as
CLIP normalises both towers), so ``t * phi . psi`` lies in ``[-t, t]`` and the temperature's clamp bounds the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agents.models import CaptionTokenizer, ProjectionHead, Temperature, TextTransformer

SOURCES = ("views", "prototypes", "captions", "labels")


@dataclass
class Encoded:
    """What a network computed for one batch, shared by the source's functions.

    Attributes:
        phi: ``float32 [B, d]`` normalised view features ``phi(x)`` (or of ``x'`` for the target network; ``None``
            where the target network did not encode ``x'``, in a base-method run).
        anchor: ``float32 [B, D]`` pooled encoder features of the anchor views, when the source uses them.
        anchor_phi: ``float32 [B, d]`` their normalised view features ``phi(anchor)``.
        captions: ``int64 [B, T]`` caption tokens, when the source uses them.
        same_image: ``bool [B, B]`` whether samples ``i`` and ``j`` show the same image.
        annotation: ``float32 [B, A + 1]`` label distribution of the views, for ``labels``.
        text: The text tower that embedded ``captions`` and its ``float32 [B, text_dim]`` output, kept so that
            ``psi`` and ``psi_ab`` of one network share one pass of the tower (filled by :class:`CaptionSource`).
    """

    phi: torch.Tensor | None
    anchor: torch.Tensor | None = None
    anchor_phi: torch.Tensor | None = None
    captions: torch.Tensor | None = None
    same_image: torch.Tensor | None = None
    annotation: torch.Tensor | None = None
    text: tuple[nn.Module, torch.Tensor] | None = None


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_l target(l) log softmax(logits)(l)``, averaged over rows: the base losses' building block."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def label_distribution(annotation: torch.Tensor) -> torch.Tensor:
    """``float32 [B, A + 1]``: coverages with a background entry ``max(0, 1 - sum)``, normalised to sum to 1.

    Args:
        annotation: ``float32 [B, A]`` the environment's coverage of each category (overlaps may sum above 1).
    """
    background = (1.0 - annotation.sum(dim=-1, keepdim=True)).clamp_min(0.0)
    full = torch.cat([annotation, background], dim=-1)
    return full / full.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def symmetric_info_nce(logits: torch.Tensor, same_image: torch.Tensor) -> torch.Tensor:
    """InfoNCE in both directions (rows and columns of ``logits [B, B]``), as SimCLR and CLIP use it.

    Every pair from the same image (``same_image``, ``bool [B, B]``) is a positive; each row's target is uniform over
    its positives, so a batch holding two samples of one image does not push them apart.
    """
    weights = same_image.float()
    positives = weights / weights.sum(dim=-1, keepdim=True)
    return (soft_cross_entropy(logits, positives) + soft_cross_entropy(logits.T, positives)) / 2


class AnnotationSource(nn.Module):
    """Base class: subclasses set :attr:`name`, the flags, and implement the four methods."""

    name = "source"
    #: The annotations are the anchor views: the online network encodes them (``Encoded.anchor``), and the target
    #: network too when it computes the TD target.
    uses_anchor = False
    #: The base loss reads the target network's encoding of the anchors (a teacher, as DINO's).
    teacher_reads_anchor = False
    #: The source needs caption tokens (``Encoded.captions``).
    uses_captions = False

    def psi(self, enc: Encoded) -> torch.Tensor:
        """``float32 [L, d]`` annotation embeddings scored against ``phi``."""
        raise NotImplementedError

    def psi_ab(self, enc: Encoded) -> torch.Tensor:
        """``float32 [L, d]`` annotation embeddings scored against ``phi_AB``."""
        raise NotImplementedError

    def logits(self, features: torch.Tensor, psi: torch.Tensor, value: bool = False) -> torch.Tensor:
        """``float32 [..., L]``: ``t * features . psi`` for ``features [..., d]``."""
        temperature = self.value_temperature() if value else self.temperature()
        return temperature * features @ psi.T

    def base_loss(self, online: Encoded, target: Encoded, teacher: AnnotationSource) -> torch.Tensor:
        """The base method's loss on the batch.

        Args:
            online: The online network's encodings.
            target: The target network's encodings (its anchors when :attr:`teacher_reads_anchor`).
            teacher: The target network's source (its heads), for losses with a teacher.
        """
        raise NotImplementedError

    def target_distribution(self, next_target: Encoded, psi: torch.Tensor) -> torch.Tensor:
        """``p_target(. | x')`` as ``float32 [B, L]``, from the target network's encodings of the next views."""
        return torch.softmax(self.logits(next_target.phi, psi), dim=-1)


class ViewSource(AnnotationSource):
    """Other views as annotations (AB-SimCLR). ``psi`` is the view projection itself, as SimCLR's two branches share
    theirs; ``psi_AB`` is a head of its own on the anchor's encoder features."""

    name = "views"
    uses_anchor = True

    def __init__(self, encoder_dim: int, dim: int) -> None:
        super().__init__()
        self.psi_ab_head = ProjectionHead(encoder_dim, dim)
        self.temperature = Temperature()
        self.value_temperature = Temperature()

    def psi(self, enc: Encoded) -> torch.Tensor:
        return enc.anchor_phi

    def psi_ab(self, enc: Encoded) -> torch.Tensor:
        return F.normalize(self.psi_ab_head(enc.anchor), dim=-1)

    def base_loss(self, online: Encoded, target: Encoded, teacher: AnnotationSource) -> torch.Tensor:
        return symmetric_info_nce(self.logits(online.phi, self.psi(online)), online.same_image)  # views vs anchors


def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """``float32 [B, K]`` teacher assignments with equal mass on every prototype (SwAV; DINOv2's teacher).

    ``exp(logits / temperature)`` is normalised alternately over the batch (each prototype gets ``1 / K`` of the
    mass) and over the prototypes (each row sums to 1), ``iterations`` times, ending on rows: a batch whose rows
    are all alike cannot put every row on one prototype, nor spread every row uniformly, as a centred softmax can.
    Computed in float32 with the logits shifted by their maximum (the result does not depend on the shift).
    """
    with torch.no_grad():
        q = torch.exp((logits.float() - logits.float().max()) / temperature).T  # (K, B)
        q = q / q.sum()
        prototypes, rows = q.shape
        for _ in range(iterations):
            q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30) / prototypes
            q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / rows
        return (q * rows).T


def koleo(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The KoLeo spreading term (Sablayrolles et al. 2019; DINOv2): ``-mean_i log min_{j != i} ||x_i - x_j||`` over
    L2-normalised ``features [B, d]``; lower when the batch's features are spread out."""
    x = F.normalize(features.float(), dim=-1)
    distances = torch.cdist(x, x)  # (B, B)
    distances = distances + torch.eye(len(x), device=x.device, dtype=x.dtype) * 1e3  # not one's own neighbour
    return -torch.log(distances.min(dim=1).values + eps).mean()


#: Teachers of the ``prototypes`` source: DINO's centred, sharpened softmax, or Sinkhorn-Knopp (DINOv2, SwAV).
DINO_TEACHERS = ("centering", "sinkhorn")


class PrototypeSource(AnnotationSource):
    """Learned prototypes as annotations (AB-DINO): a student/teacher pair.

    The teacher is the target network's features of the anchor views scored against the target network's
    prototypes, sharpened at ``teacher_temperature`` and either centred (DINO: an EMA of the teacher's mean logits
    is subtracted) or balanced over the batch by :func:`sinkhorn_knopp` (DINOv2). ``koleo_weight`` adds
    :func:`koleo` on the student's view features (DINOv2 uses 0.1).

    After each :meth:`base_loss`, :attr:`diagnostics` holds the collapse diagnostics the pretrainer logs:
    ``teacher_entropy`` (nats; ``log K`` is a uniform teacher) and ``teacher_cosine``, the mean cosine between the
    target network's view features of different samples of the batch (1: every feature the same).
    """

    name = "prototypes"
    teacher_reads_anchor = True

    def __init__(self, encoder_dim: int, dim: int, num_prototypes: int = 256, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04, center_momentum: float = 0.9, teacher: str = "centering",
                 koleo_weight: float = 0.0) -> None:
        super().__init__()
        if teacher not in DINO_TEACHERS:
            raise ValueError(f"teacher={teacher!r} is invalid: expected one of {DINO_TEACHERS}")
        if koleo_weight < 0:
            raise ValueError(f"koleo_weight={koleo_weight!r} is invalid: expected a weight >= 0")
        self.teacher_kind, self.koleo_weight = teacher, koleo_weight
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(dim, num_prototypes, bias=False))
        self.prototypes_ab = nn.utils.parametrizations.weight_norm(nn.Linear(dim, num_prototypes, bias=False))
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(num_prototypes))

    def _weights(self, layer: nn.Linear) -> torch.Tensor:
        return F.normalize(layer.weight, dim=-1)  # (K, d)

    def psi(self, enc: Encoded) -> torch.Tensor:
        return self._weights(self.prototypes)

    def psi_ab(self, enc: Encoded) -> torch.Tensor:
        return self._weights(self.prototypes_ab)

    def logits(self, features: torch.Tensor, psi: torch.Tensor, value: bool = False) -> torch.Tensor:
        return features @ psi.T / self.student_temperature

    def teacher(self, features: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Centred and sharpened teacher distribution ``float32 [B, K]`` (no gradient)."""
        with torch.no_grad():
            return torch.softmax((features @ psi.T - self.center) / self.teacher_temperature, dim=-1)

    def base_loss(self, online: Encoded, target: Encoded, teacher: AnnotationSource) -> torch.Tensor:
        # The teacher is the target network: its features of the anchor views scored against its prototypes.
        teacher_logits = (target.anchor_phi @ teacher.psi(target).T).detach()  # (B, K)
        if self.teacher_kind == "sinkhorn":
            assignments = sinkhorn_knopp(teacher_logits, self.teacher_temperature)
        else:
            assignments = torch.softmax((teacher_logits - self.center) / self.teacher_temperature, dim=-1)
            with torch.no_grad():
                self.center.mul_(self.center_momentum).add_(teacher_logits.mean(dim=0),
                                                            alpha=1 - self.center_momentum)
        with torch.no_grad():  # collapse diagnostics: a uniform teacher, features that all point one way
            features = target.anchor_phi.float()
            rows = len(features)
            cosine = (features @ features.T).sum() - features.pow(2).sum()
            self.diagnostics = {
                "teacher_entropy": float(-(assignments * assignments.clamp_min(1e-12).log()).sum(-1).mean()),
                "teacher_cosine": float(cosine / max(1, rows * (rows - 1))),
            }
        loss = soft_cross_entropy(self.logits(online.phi, self.psi(online)), assignments)
        if self.koleo_weight > 0:
            loss = loss + self.koleo_weight * koleo(online.phi)
        return loss

    def target_distribution(self, next_target: Encoded, psi: torch.Tensor) -> torch.Tensor:
        if self.teacher_kind == "sinkhorn":
            return sinkhorn_knopp(next_target.phi @ psi.T, self.teacher_temperature)
        return self.teacher(next_target.phi, psi)


class CaptionSource(AnnotationSource):
    """Captions as annotations (AB-CLIP), embedded by a text tower trained from scratch."""

    name = "captions"
    uses_captions = True

    def __init__(self, tokenizer: CaptionTokenizer, dim: int, text_dim: int = 256, text_depth: int = 4,
                 max_len: int = 32) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text = TextTransformer(tokenizer.vocab_size, dim=text_dim, depth=text_depth, heads=4, max_len=max_len)
        self.text_head = ProjectionHead(text_dim, dim)
        self.text_head_ab = ProjectionHead(text_dim, dim)
        self.temperature = Temperature()
        self.value_temperature = Temperature()

    def text_features(self, enc: Encoded) -> torch.Tensor:
        """``float32 [B, text_dim]``: this source's text tower on ``enc.captions``, computed once per ``enc``."""
        if enc.text is None or enc.text[0] is not self.text:
            enc.text = (self.text, self.text(enc.captions))
        return enc.text[1]

    def psi(self, enc: Encoded) -> torch.Tensor:
        return F.normalize(self.text_head(self.text_features(enc)), dim=-1)

    def psi_ab(self, enc: Encoded) -> torch.Tensor:
        return F.normalize(self.text_head_ab(self.text_features(enc)), dim=-1)

    def base_loss(self, online: Encoded, target: Encoded, teacher: AnnotationSource) -> torch.Tensor:
        return symmetric_info_nce(self.logits(online.phi, self.psi(online)), online.same_image)  # images vs captions


class LabelSource(AnnotationSource):
    """The environment's annotation vector as annotations: one learned embedding per category and background."""

    name = "labels"

    def __init__(self, num_categories: int, dim: int) -> None:
        super().__init__()
        if num_categories < 1:
            raise ValueError("annotations='labels' needs a dataset with object categories; this one has none")
        self.embedding = nn.Parameter(torch.randn(num_categories + 1, dim) * 0.02)
        self.embedding_ab = nn.Parameter(torch.randn(num_categories + 1, dim) * 0.02)
        self.temperature = Temperature()
        self.value_temperature = Temperature()

    def psi(self, enc: Encoded) -> torch.Tensor:
        return F.normalize(self.embedding, dim=-1)

    def psi_ab(self, enc: Encoded) -> torch.Tensor:
        return F.normalize(self.embedding_ab, dim=-1)

    def base_loss(self, online: Encoded, target: Encoded, teacher: AnnotationSource) -> torch.Tensor:
        return soft_cross_entropy(self.logits(online.phi, self.psi(online)), online.annotation)

    def target_distribution(self, next_target: Encoded, psi: torch.Tensor) -> torch.Tensor:
        return next_target.annotation
