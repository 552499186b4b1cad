"""The TD target against a plain Python loop, the one-step reduction, the losses and the EMA target network."""

from __future__ import annotations

import copy

import pytest
import torch

from agents import gvf


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
    logits = torch.randn(4, 5)
    target = _distributions(4, 5)
    expected = -sum((target[i] * torch.log_softmax(logits[i], -1)).sum() for i in range(4)) / 4
    torch.testing.assert_close(gvf.bootstrap_loss(logits, target), expected)
    # Minimised when Q equals the target.
    at_target = gvf.bootstrap_loss(target.log(), target)
    assert at_target < gvf.bootstrap_loss(logits, target)


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


def test_next_actions_follow_the_environment_ranges():
    g = torch.Generator().manual_seed(0)
    rel_box, aug = gvf.sample_next_actions(64, 8, ("flip",), g, torch.device("cpu"))
    assert rel_box.shape == (64, 8, 4) and aug.shape == (64, 8, 7)
    centre = (rel_box[..., :2] + rel_box[..., 2:]) / 2
    assert (centre - 0.5).abs().max() <= 0.5 + 1e-6
    width = rel_box[..., 2] - rel_box[..., 0]
    assert width.min() >= 1 / 1.5 / 1.5**0.5 - 1e-5 and width.max() <= 1.5 * 1.5**0.5 + 1e-5
    assert set(aug[..., 0].unique().tolist()) == {0.0, 1.0}  # flip drawn
    assert (aug[..., 1:] == torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])).all()  # the others at identity


def test_caption_source_runs_the_text_tower_once_per_network_and_step(monkeypatch):
    from agents.config import PretrainConfig
    from agents.models import CaptionTokenizer
    from agents.pretrain import build_network
    from agents.sources import CaptionSource

    captions = ["a red circle left of a blue square", "two green triangles", "a yellow star above a red square"]
    tokenizer = CaptionTokenizer.build(captions)
    config = PretrainConfig(annotations="captions", encoder_depth=1, encoder_dim=64, obs_size=32, embed_dim=32,
                            value_depth=1)
    torch.manual_seed(0)
    online = build_network(config, num_categories=30, tokenizer=tokenizer)
    target = copy.deepcopy(online)
    g = torch.Generator().manual_seed(1)
    batch = {"view": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g),
             "next_view": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g),
             "rel_box": torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5], [0.2, 0.3, 1.2, 1.1]]),
             "next_aug": torch.zeros(3, 7), "image_index": torch.tensor([0, 1, 2]),
             "captions": tokenizer.encode(captions, max_len=16)}

    def loss_and_grads():
        online.zero_grad()
        loss, _ = gvf.gvf_loss(online, target, batch, gamma=0.5, backup="max", bootstrap_weight=1.0,
                               num_next_actions=4, augmentations=("flip",), generator=torch.Generator().manual_seed(2))
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
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for hook in hooks:
        hook.remove()
