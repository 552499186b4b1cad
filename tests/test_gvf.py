"""The TD target against a plain Python loop, the one-step reduction, the losses and the EMA target network."""

from __future__ import annotations

import copy

import pytest
import torch

from agents import gvf
from agents.config import PretrainConfig
from agents.network import build_network
from agents.pretrain import learning_rate, next_view_params, parameter_groups
from agents.sources import soft_cross_entropy


def _distributions(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g) * 2, dim=-1)


def _td_reference(p_next, q_next, gamma, backup):
    """y(l) = (1 - gamma) p(l | x') + gamma B_k Q(l | x', a'_k), one number at a time."""
    batch, actions, annotations = q_next.shape
    y = torch.zeros(batch, annotations)
    for b in range(batch):
        boot = []
        for l_ in range(annotations):
            values = [q_next[b, k, l_].item() for k in range(actions)]
            boot.append(max(values) if backup == "max" else sum(values) / actions)
        if backup == "max":
            total = sum(boot)
            boot = [v / total for v in boot]
        for l_ in range(annotations):
            y[b, l_] = (1 - gamma) * p_next[b, l_].item() + gamma * boot[l_]
    return y


@pytest.mark.parametrize("backup", ["max", "mean"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_td_target_matches_python_loop(backup, gamma):
    p_next = _distributions(5, 7, seed=1)
    q_next = _distributions(5, 4, 7, seed=2)
    y = gvf.td_target(p_next, q_next, gamma, backup)
    torch.testing.assert_close(y, _td_reference(p_next, q_next, gamma, backup))
    torch.testing.assert_close(y.sum(-1), torch.ones(5))


def test_gamma_zero_is_the_one_step_target():
    p_next = _distributions(3, 6, seed=3)
    q_next = _distributions(3, 8, 6, seed=4)
    for backup in gvf.BACKUPS:
        torch.testing.assert_close(gvf.td_target(p_next, q_next, 0.0, backup), p_next)


def test_td_target_has_no_gradient_and_checks_arguments():
    p_next = _distributions(2, 3).requires_grad_()
    q_next = _distributions(2, 4, 3)
    assert not gvf.td_target(p_next, q_next, 0.5).requires_grad
    with pytest.raises(ValueError, match="gamma=1.0"):
        gvf.td_target(p_next, q_next, 1.0)
    with pytest.raises(ValueError, match="backup='softmax'"):
        gvf.td_target(p_next, q_next, 0.5, "softmax")
    with pytest.raises(ValueError, match=r"\[B, K, L\]"):
        gvf.td_target(p_next, q_next[:, :, :2], 0.5)


def test_bootstrap_loss_is_cross_entropy():
    """The bootstrapping loss CE(y, Q) is sources.soft_cross_entropy, the function of the base losses."""
    logits = torch.randn(4, 5)
    target = _distributions(4, 5)
    expected = -sum((target[i] * torch.log_softmax(logits[i], -1)).sum() for i in range(4)) / 4
    torch.testing.assert_close(soft_cross_entropy(logits, target), expected)
    # Minimised when Q equals the target.
    at_target = soft_cross_entropy(target.log(), target)
    assert at_target < soft_cross_entropy(logits, target)


def test_ema_update():
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(5.0)
    before = [p.clone() for p in target.parameters()]
    gvf.ema_update(target, online, 0.9)
    for old, new, live in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * live)
    assert (target[1].running_mean == 5.0).all()
    gvf.ema_update(target, online, 0.0)
    for new, live in zip(target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, live)
    with pytest.raises(ValueError, match="momentum=1.5"):
        gvf.ema_update(target, online, 1.5)


def test_ema_momentum_schedule():
    assert gvf.ema_momentum(0, 100) == pytest.approx(0.996)
    assert gvf.ema_momentum(100, 100) == pytest.approx(1.0)
    assert gvf.ema_momentum(50, 100) == pytest.approx(0.998)
    assert gvf.ema_momentum(200, 100) == pytest.approx(1.0)


def test_symmetric_info_nce_against_a_loop():
    from agents.sources import symmetric_info_nce

    logits = torch.randn(4, 4)
    image = torch.tensor([0, 1, 1, 2])
    same = image[:, None] == image[None, :]
    total = 0.0
    for matrix in (logits, logits.T):
        for i in range(4):
            positives = [j for j in range(4) if image[i] == image[j]]
            log_p = torch.log_softmax(matrix[i], -1)
            total += -sum(log_p[j] for j in positives) / len(positives) / 4
    torch.testing.assert_close(symmetric_info_nce(logits, same), total / 2)


def test_label_distribution_adds_background_and_normalises():
    from agents.sources import label_distribution

    coverage = torch.tensor([[0.0, 0.0], [0.25, 0.25], [0.9, 0.6]])
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.25, 0.25, 0.5], [0.6, 0.4, 0.0]])
    torch.testing.assert_close(label_distribution(coverage), expected)


def test_caption_source_runs_the_text_tower_once_per_network_and_step(monkeypatch):
    from agents.models import CaptionTokenizer
    from agents.sources import CaptionSource

    captions = ["a red circle left of a blue square", "two green triangles", "a yellow star above a red square"]
    tokenizer = CaptionTokenizer.build(captions)
    config = PretrainConfig(annotations="captions", encoder="vit_tiny", encoder_depth=1, encoder_dim=64, obs_size=32,
                            embed_dim=32, value_depth=1)
    torch.manual_seed(0)
    # In float64, so that the one shared pass and the separate passes agree to rounding far below the tolerance
    # (in float32 their sums of gradients differ by ~1e-6 from the order of additions alone).
    online = build_network(config, num_categories=30, tokenizer=tokenizer).double()
    target = copy.deepcopy(online)
    batch = {**_batch(3), "captions": tokenizer.encode(captions, max_len=16)}
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}

    def loss_and_grads():
        online.zero_grad()
        loss, _ = gvf.gvf_loss(online, target, batch, gamma=0.5, backup="max", bootstrap_weight=1.0,
                               num_next_actions=4, next_views=next_view_params(config),
                               generator=torch.Generator().manual_seed(2))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in online.parameters() if p.grad is not None]

    calls = []
    hooks = [net.source.text.register_forward_hook(lambda *_: calls.append(1)) for net in (online, target)]
    cached_loss, cached_grads = loss_and_grads()
    assert len(calls) == 2  # psi and psi_ab share one pass per network: online (x) and target (x')

    # Reference: the tower run afresh for every embedding (no cache) gives the same loss and gradients.
    monkeypatch.setattr(CaptionSource, "text_features", lambda self, enc: self.text(enc.captions))
    calls.clear()
    fresh_loss, fresh_grads = loss_and_grads()
    assert len(calls) == 4
    torch.testing.assert_close(cached_loss, fresh_loss)
    assert len(cached_grads) == len(fresh_grads)
    for a, b in zip(cached_grads, fresh_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for hook in hooks:
        hook.remove()


def _batch(n: int, obs: int = 32, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch of ``n`` random transitions with every field the loss reads (two views of each image)."""
    g = torch.Generator().manual_seed(seed)

    def views() -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, obs, obs), dtype=torch.uint8, generator=g)

    aug = torch.zeros(n, 7)
    aug[:, 1:4] = 1.0
    return {"view": views(), "next_view": views(), "anchor_view": views(),
            "rel_box": torch.rand(n, 4, generator=g), "box": torch.tensor([[0.0, 0.0, 0.5, 0.5]]).repeat(n, 1),
            "next_box": torch.tensor([[0.2, 0.2, 0.9, 0.9]]).repeat(n, 1), "aug": aug, "next_aug": aug.clone(),
            "next_image_size": torch.tensor([[64, 64]]).repeat(n, 1), "image_index": torch.arange(n) // 2,
            "annotation": torch.rand(n, 5, generator=g) / 5, "view_annotation": torch.rand(n, 5, generator=g) / 5}


def _networks(annotations: str, **overrides):
    config = PretrainConfig(annotations=annotations, embed_dim=32, value_depth=1, value_dim=32, num_prototypes=16,
                            **overrides)
    torch.manual_seed(0)
    online = build_network(config, num_categories=5)
    return config, online, copy.deepcopy(online).requires_grad_(False)


@pytest.mark.parametrize("annotations, target_passes", [("views", 0), ("labels", 0), ("prototypes", 1)])
def test_a_base_method_run_computes_only_the_target_passes_its_loss_reads(annotations, target_passes):
    config, online, target = _networks(annotations)
    calls = []
    target.encoder.register_forward_hook(lambda *_: calls.append(1))
    online.encoder.register_forward_hook(lambda *_: calls.append(0))
    gvf.gvf_loss(online, target, _batch(8), 0.5, "max", 0.0, 4, next_view_params(config))
    assert calls.count(1) == target_passes, "a base-method run runs no target pass its loss does not read"
    assert calls.count(0) == (2 if annotations == "views" else 1)  # the anchors are online only for SimCLR
    calls.clear()
    gvf.gvf_loss(online, target, _batch(8), 0.5, "max", 1.0, 4, next_view_params(config))
    assert calls.count(1) == {"views": 2, "labels": 1, "prototypes": 2}[annotations]


def test_dino_teacher_is_the_target_networks_head():
    config, online, target = _networks("prototypes")
    batch = _batch(8)

    def base() -> float:
        return gvf.gvf_loss(online, target, batch, 0.5, "max", 0.0, 4, next_view_params(config))[1]["base"]

    before = base()
    online.source.center.zero_()
    with torch.no_grad():  # the target's prototypes define the teacher: changing them changes the loss
        target.source.prototypes.parametrizations.weight.original1.normal_()
    changed = base()
    assert changed != pytest.approx(before)
    online.source.center.zero_()
    target_copy = copy.deepcopy(target)
    with torch.no_grad():
        online.source.prototypes_ab.parametrizations.weight.original1.normal_()  # not read by the base loss
    assert base() == pytest.approx(changed)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), target_copy.parameters(), strict=True))


@pytest.mark.parametrize("annotations", ["views", "prototypes", "labels"])
def test_every_embedding_is_normalised_so_the_temperature_bounds_the_logits(annotations):
    from agents.gvf import _encoded

    config, online, _ = _networks(annotations)
    batch = _batch(6)
    out = online.encode(batch["view"])
    enc = _encoded(online, out, batch, online.encode(batch["anchor_view"]), "view_annotation")
    for psi in (online.source.psi(enc), online.source.psi_ab(enc)):
        torch.testing.assert_close(psi.norm(dim=-1), torch.ones(psi.shape[0]))
    torch.testing.assert_close(enc.phi.norm(dim=-1), torch.ones(6))


def test_caption_embeddings_are_normalised():
    from agents.models import CaptionTokenizer
    from agents.sources import CaptionSource, Encoded

    tokenizer = CaptionTokenizer.build(["a red circle", "two squares"])
    source = CaptionSource(tokenizer, 16, text_dim=32, text_depth=1)
    enc = Encoded(phi=None, captions=tokenizer.encode(["a red circle", "two squares"], max_len=8))
    for psi in (source.psi(enc), source.psi_ab(enc)):
        torch.testing.assert_close(psi.norm(dim=-1), torch.ones(2))


def test_no_weight_decay_on_temperatures_norms_biases_and_tokens():
    _, online, _ = _networks("views", encoder="vit_tiny", encoder_depth=1, encoder_dim=64)
    decay, no_decay = parameter_groups(online, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in online.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "source.temperature.log_t" in skipped and "source.value_temperature.log_t" in skipped
    assert any(n.endswith("norm1.weight") for n in skipped) and any(n.endswith("qkv.bias") for n in skipped)
    # The ViT is timm's (under encoder.model); its position embedding and CLS token are not decayed either.
    assert {"encoder.model.pos_embed", "encoder.model.cls_token", "value_head.action_pos",
            "value_head.readout"} <= skipped
    assert any(n.endswith("qkv.weight") for n in decayed) and "encoder.model.patch_embed.proj.weight" in decayed
    assert not skipped & decayed and len(skipped) + len(decayed) == len(names)


@pytest.mark.parametrize("total_steps", [40, 200, 800, 3000])
def test_auto_ema_momentum_lets_the_target_forget_its_initialisation(total_steps):
    base = gvf.auto_ema_momentum(total_steps)
    share = 1.0
    for step in range(total_steps):
        share *= gvf.ema_momentum(step, total_steps, base=base)
    assert share <= 1.5 * gvf.EMA_INITIAL_SHARE, "the initial weights' share of the target at the end of the run"
    assert base <= 0.996
    assert gvf.auto_ema_momentum(100_000) == 0.996  # long runs keep the paper's momentum
    old = 1.0
    for step in range(800):
        old *= gvf.ema_momentum(step, 800, base=0.996)
    assert old > 0.15, "momentum 0.996 annealed over 800 steps keeps about a fifth of the initial weights"


def test_target_drift_measures_the_lag():
    online = torch.nn.Linear(4, 4)
    target = copy.deepcopy(online)
    assert gvf.target_drift(target, online) == 0.0
    with torch.no_grad():
        target.weight.add_(online.weight)  # target = 2 * online for the weight, biases equal
    with torch.no_grad():
        expected = (online.weight.pow(2).sum() / (online.weight.pow(2).sum() + online.bias.pow(2).sum())).sqrt()
    assert gvf.target_drift(target, online) == pytest.approx(float(expected), rel=1e-5)


def test_warmup_scales_with_the_run():
    short = PretrainConfig(total_steps=40)
    assert short.warmup == 2 and learning_rate(short, 1) == pytest.approx(short.lr)
    assert PretrainConfig(total_steps=2000).warmup == 100
    assert PretrainConfig(total_steps=40, warmup_steps=10).warmup == 10


def test_dino_loss_against_a_plain_reference():
    """Student ``softmax(s / 0.1)`` against the centred, sharpened teacher ``softmax((t - c) / 0.04)`` with
    ``t`` the target's anchor features on the target's prototypes; the centre moves towards the batch mean."""
    config, online, target = _networks("prototypes")
    with torch.no_grad():
        target.source.prototypes.parametrizations.weight.original1.normal_()
    online.source.center.fill_(0.01)
    batch = _batch(6)
    loss = gvf.gvf_loss(online, target, batch, 0.5, "max", 0.0, 4, next_view_params(config))[0]
    with torch.no_grad():
        student_w = torch.nn.functional.normalize(online.source.prototypes.weight, dim=-1)
        teacher_w = torch.nn.functional.normalize(target.source.prototypes.weight, dim=-1)
        s_feat = online.phi(online.encode(batch["view"]).pooled)
        t_feat = target.phi(target.encode(batch["anchor_view"]).pooled)
    expected, center = 0.0, torch.full((16,), 0.01)
    for i in range(6):
        t_logits = t_feat[i] @ teacher_w.T
        teacher = torch.softmax((t_logits - center) / 0.04, -1)
        student = torch.log_softmax(s_feat[i] @ student_w.T / 0.1, -1)
        expected += -(teacher * student).sum() / 6
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    mean = (t_feat @ teacher_w.T).mean(0)
    torch.testing.assert_close(online.source.center, 0.9 * center + 0.1 * mean, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- DINO's teachers


def test_sinkhorn_knopp_against_a_python_loop_and_it_balances_a_collapsed_batch():
    import math

    from agents.sources import sinkhorn_knopp

    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    temperature, iterations = 0.1, 3
    # SwAV's algorithm written out with Python floats: Q = exp(logits / t)^T, then alternate row/column scaling.
    q = [[math.exp(logits[b, k].item() / temperature) for b in range(6)] for k in range(4)]  # (K, B)
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / 4 for v in row] for row in q]
        columns = [sum(q[k][b] for k in range(4)) for b in range(6)]
        q = [[q[k][b] / columns[b] / 6 for b in range(6)] for k in range(4)]
    expected = torch.tensor([[q[k][b] * 6 for k in range(4)] for b in range(6)])
    got = sinkhorn_knopp(logits, temperature, iterations)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(6))  # each row a distribution
    # Every row prefers prototype 0 (a collapsing teacher): the assignments still spread over every prototype,
    # where a softmax would put the whole batch on prototype 0.
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(8, 1) + 0.01 * torch.randn(8, 4)
    balanced = sinkhorn_knopp(collapsed, 0.05, iterations=50)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((4,), 2.0), rtol=1e-3, atol=1e-3)
    assert torch.softmax(collapsed / 0.05, dim=-1).argmax(dim=-1).tolist() == [0] * 8


def test_koleo_against_a_python_loop():
    from agents.sources import koleo

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    unit = [(row / row.norm()).tolist() for row in x]
    nearest = [min(sum((a - b) ** 2 for a, b in zip(unit[i], unit[j], strict=True)) ** 0.5 for j in range(5) if j != i)
               for i in range(5)]
    expected = -sum(torch.log(torch.tensor(d) + 1e-8) for d in nearest) / 5
    torch.testing.assert_close(koleo(x), expected)
    spread, bunched = torch.eye(4), torch.eye(4) * 0.1 + 1.0
    assert koleo(spread) < koleo(bunched)  # lower when the features are spread out


def test_the_prototype_teachers_and_their_bad_values():
    from agents.sources import PrototypeSource

    config = PretrainConfig(annotations="prototypes", dino_teacher="sinkhorn", koleo_weight=0.1,
                            teacher_temperature=0.07)
    source = build_network(config, 3).source
    assert (source.teacher_kind, source.koleo_weight, source.teacher_temperature) == ("sinkhorn", 0.1, 0.07)
    with pytest.raises(ValueError, match="--dino-teacher 'softmax' is invalid"):
        PretrainConfig(dino_teacher="softmax")
    with pytest.raises(ValueError, match="--koleo-weight -1.0 is invalid"):
        PretrainConfig(koleo_weight=-1.0)
    with pytest.raises(ValueError, match="--teacher-temperature 0.0 is invalid"):
        PretrainConfig(teacher_temperature=0.0)
    with pytest.raises(ValueError, match="teacher='x' is invalid"):
        PrototypeSource(8, 8, teacher="x")


def test_the_text_tower_has_the_configured_size():
    from agents.models import CaptionTokenizer

    tokenizer = CaptionTokenizer.build(["a red circle", "two blue squares"])
    source = build_network(PretrainConfig(annotations="captions", text_dim=64, text_depth=3), 3, tokenizer).source
    assert source.text.dim == 64 and len(source.text.blocks) == 3
    default = build_network(PretrainConfig(annotations="captions"), 3, tokenizer).source
    assert default.text.dim == 128 and len(default.text.blocks) == 2
    with pytest.raises(ValueError, match="--text-dim 130 is invalid: expected a multiple of 4"):
        PretrainConfig(text_dim=130)


def test_the_prototype_source_reports_its_collapse_diagnostics():
    import math

    import torch.nn.functional as F

    from agents.sources import Encoded, PrototypeSource

    torch.manual_seed(0)
    source = PrototypeSource(8, 16, num_prototypes=32)
    student = Encoded(phi=F.normalize(torch.randn(6, 16), dim=-1))
    same = F.normalize(torch.randn(1, 16), dim=-1).repeat(6, 1)  # a collapsed teacher: one feature for all
    source.base_loss(student, Encoded(phi=None, anchor_phi=same), source)
    assert source.diagnostics["teacher_cosine"] == pytest.approx(1.0, abs=1e-5)
    spread = F.normalize(torch.randn(6, 16), dim=-1)
    source.center.zero_()
    source.base_loss(student, Encoded(phi=None, anchor_phi=spread), source)
    pairs = [(spread[i] @ spread[j]).item() for i in range(6) for j in range(6) if i != j]
    assert source.diagnostics["teacher_cosine"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    teacher = torch.softmax(spread @ source.psi(None).T / source.teacher_temperature, dim=-1)
    entropy = -(teacher * teacher.log()).sum(-1).mean().item()
    assert source.diagnostics["teacher_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert 0 < entropy < math.log(32)
    # The pretrainer logs them with every step's metrics.
    _, metrics = gvf.gvf_loss(*_networks("prototypes")[1:], _batch(4), gamma=0.5, backup="max", bootstrap_weight=0.0,
                              num_next_actions=2, next_views=next_view_params(PretrainConfig()))
    assert {"teacher_entropy", "teacher_cosine"} <= set(metrics)
