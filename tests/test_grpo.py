"""GRPO math against hand-computed numbers."""
import math

import pytest
import torch

from trainer.grpo import group_advantages, kl_penalty, policy_loss


def test_grpo_advantage_unbiased_std():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "grpo", eps=0.0)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    assert adv.tolist()[0] == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])


def test_grpo_constant_group_is_zero_and_eps():
    assert group_advantages(torch.tensor([[2.0, 2.0, 2.0]])).abs().max() == 0
    adv = group_advantages(torch.tensor([[1.0, 3.0]]), eps=1e-6)
    assert adv.tolist()[0] == pytest.approx([-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)])


def test_drgrpo_and_rloo():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert group_advantages(r, "drgrpo").flatten().tolist() == pytest.approx([-2.0, -1.0, 3.0, -1.0, -1.0, 2.0])
    assert group_advantages(r, "rloo").flatten().tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, -1.5, -1.5, 3.0])


def test_kl_kinds():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(expected)


def _case():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]]))  # ratios (old = 0)
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logp, old, adv, mask


def test_policy_loss_clipping_and_token_mean():
    logp, old, adv, mask = _case()
    # seq 0 (A=1): ratio 1.5 -> min(1.5, 1.2)=1.2; ratio 0.5 -> min(0.5, 0.8)=0.5 -> losses -1.2, -0.5
    # seq 1 (A=-2): ratio 1.1 -> min(-2.2, -2.2)=-2.2; 1.0 -> -2 ; 1.0 -> -2 -> losses 2.2, 2, 2
    loss = policy_loss(logp, old, adv, mask, 0.2, 0.2, "token-mean")
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2 + 2 + 2) / 5)


def test_policy_loss_asymmetric_clip():
    logp, old, adv, mask = _case()
    loss = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg="token-mean")
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 2.2 + 2 + 2) / 5)


def test_policy_loss_aggregations():
    logp, old, adv, mask = _case()
    seq = policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    assert seq.item() == pytest.approx(((-1.7) / 2 + 6.2 / 3) / 2)
    norm = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert norm.item() == pytest.approx((-1.7 / 3 + 6.2 / 3) / 2)
    norm10 = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=10)
    assert norm10.item() == pytest.approx((-1.7 / 10 + 6.2 / 10) / 2)


def test_policy_loss_has_gradient():
    logp, old, adv, mask = _case()
    logp = logp.clone().requires_grad_(True)
    policy_loss(logp, old, adv, mask).backward()
    # unclipped tokens get -A*ratio/5; clipped (seq0 tok0) get 0; masked get 0
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 5, 0.0])
    assert logp.grad[1].tolist() == pytest.approx([2 * 1.1 / 5, 2 / 5, 2 / 5])
